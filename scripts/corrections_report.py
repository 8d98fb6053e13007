#!/usr/bin/env python
"""Write the edit metrics of every correction a node received as CSV: one row per correction and ROI.

Corrected RT Structure Sets sent back to the node are measured against the node's own
(Dice, surface Dice at 2 mm, HD95, volume change, added path length); see
``vacseg_monai.service.corrections`` and ``vacseg_monai.edits``.

Example:
    python scripts/corrections_report.py vacseg_node -o corrections.csv
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vacseg_monai.logs import setup_logging
from vacseg_monai.service.corrections import corrections_report, write_corrections_csv


def _setup_argparser(args: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        prog="corrections_report.py",
        description="CSV of the edit metrics of every correction recorded in a node's output directory.",
    )
    parser.add_argument("output_directory", type=Path, metavar="OUTPUT_DIR", help="the node's output directory (-od)")
    out = parser.add_argument_group("Output")
    out.add_argument("-o", "--out", type=Path, metavar="CSV",
                     help="CSV file to write (default: OUTPUT_DIR/corrections/report.csv)")
    verb = parser.add_mutually_exclusive_group()
    verb.add_argument("-q", "--quiet", dest="log_level", action="store_const", const="WARNING", default="INFO",
                      help="print warnings and errors only")
    verb.add_argument("-v", "--verbose", dest="log_level", action="store_const", const="INFO",
                      help="print what is written (default)")
    return parser.parse_args(args)


def main(args: list[str] | None = None) -> int:
    """Write the report; returns 0, or 2 when OUTPUT_DIR is not a node's output directory."""
    ns = _setup_argparser(args)
    setup_logging(ns.log_level)
    try:
        rows = corrections_report(ns.output_directory)
    except ValueError as exc:
        print(f"corrections_report.py: error: {exc}", file=sys.stderr)
        return 2
    out = ns.out or ns.output_directory / "corrections" / "report.csv"
    write_corrections_csv(rows, out)
    n = len({row["correction"] for row in rows})
    print(f"{n} correction(s), {len(rows)} row(s) written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
