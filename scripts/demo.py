#!/usr/bin/env python
"""`make demo`: phantom CT -> DICOM node -> RTSTRUCT back, with Dice and timings.

Usage: python scripts/demo.py [--output-dir demo_output] [--seed 1000]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vacseg_monai.demo import run_demo
from vacseg_monai.logs import setup_logging


def _setup_argparser(args: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-od", "--output-dir", type=Path, default=Path("demo_output"),
                        help="folder for the input series, node jobs and results (default demo_output)")
    parser.add_argument("--seed", type=int, default=1000, help="phantom seed (default 1000, not a training seed)")
    parser.add_argument("--phantom-version", type=int, default=1, choices=(1, 2),
                        help="phantom generator (default 1, the world the shipped model was trained on)")
    parser.add_argument("--bundle", type=Path, default=None, help="bundle folder (default: the repository's)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the result (default 600)")
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    verbosity.add_argument("-v", "--verbose", action="store_true",
                           help="debug messages, the libraries' (highdicom, pynetdicom) included")
    return parser.parse_args(args)


def main(args: list[str] | None = None) -> int:
    """Run the demo; returns the exit status."""
    ns = _setup_argparser(args)
    level = "WARNING" if ns.quiet else "DEBUG" if ns.verbose else "INFO"
    setup_logging(level, third_party=ns.verbose)
    result = run_demo(ns.output_dir, seed=ns.seed, bundle=ns.bundle, timeout=ns.timeout, log_level=level,
                      phantom_version=ns.phantom_version)
    print(result.summary())
    print(f"Demo done: the RT Structure Set the node sent back is {result.rtstruct}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
