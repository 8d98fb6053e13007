#!/usr/bin/env python
"""Convert clinic CT + RTSTRUCT exports into the training layout (npy and/or NIfTI).

Every CT series under the input folder that an RT Structure Set references becomes one
patient folder; a table of what was converted or skipped (and why) is printed and saved
as conversion_report.json / .csv in the output folder.

Example:
    python scripts/convert_dicom_rt.py exports/ -od training_data --format both --name-map "Table=Couch"
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from vacseg_monai.dicom.exports import add_conversion_options, convert_exports, parse_conversion_options
from vacseg_monai.logs import add_verbosity_options, setup_script_logging

__all__ = ["main"]

logger = logging.getLogger("convert_dicom_rt")


def _setup_argparser(args: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Convert a folder of clinic DICOM exports (CT series + RTSTRUCT referencing it, any folder "
        "structure) into the vacseg_monai training layout, with a report of what was skipped and why.",
    )
    parser.add_argument("input", type=Path, help="folder with the DICOM exports (searched recursively)")
    out = parser.add_argument_group("Output")
    out.add_argument("-od", "--output-directory", type=Path, required=True, help="training data folder to write")
    add_conversion_options(parser, out)
    add_verbosity_options(parser, quiet_help="only warnings and errors, no progress bar")
    ns = parser.parse_args(args)
    if not ns.input.is_dir():
        parser.error(f"input folder {ns.input} does not exist")
    return parse_conversion_options(parser, ns)


def main(args: list[str] | None = None) -> int:
    """Run the conversion; returns 0 when at least one series was converted, 1 otherwise."""
    ns = _setup_argparser(args)
    setup_script_logging(ns)
    try:
        report = convert_exports(
            ns.input, ns.output_directory, fmt=ns.format, name_map=ns.name_map, overwrite=ns.overwrite,
            progress=not ns.quiet,
        )
    except (ValueError, FileExistsError) as exc:
        logger.error("%s", exc)
        return 2
    print(report.table())
    print(f"Report: {ns.output_directory / 'conversion_report.json'} (and .csv)")
    return 0 if report.converted else 1


if __name__ == "__main__":
    sys.exit(main())
