#!/usr/bin/env python
"""Turn the physicist's corrections a node received into training data (npy and/or NIfTI).

Every job of the node whose latest corrected RT Structure Set was measured becomes one
patient, ``<PatientID>_<job id>``: the node's copy of the CT series with the correction
rasterised on it, and ``annotation.json`` naming the labels the correction contains (a
structure it leaves out is unknown, not background). A table of what was written or left
out (and why) is printed and saved as conversion_report.json / .csv in DATA_DIR.

Example (then fine-tune with the bundle's finetune.json and --data_dir corrections_data):
    python scripts/corrections_to_training.py vacseg_node corrections_data
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from vacseg_monai.dicom.exports import add_conversion_options, parse_conversion_options
from vacseg_monai.logs import add_verbosity_options, setup_script_logging
from vacseg_monai.service.training_data import corrections_to_training

__all__ = ["main"]

logger = logging.getLogger("corrections_to_training")


def _setup_argparser(args: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="corrections_to_training.py",
        description="Write the corrected structure sets a DICOM node received, on the node's own CT, as "
        "training data (partial labels where a correction leaves a structure out), with a report.",
    )
    parser.add_argument("node_dir", type=Path, metavar="NODE_OUTPUT_DIR", help="the node's output directory (-od)")
    parser.add_argument("data_dir", type=Path, metavar="DATA_DIR", help="training data folder to write")
    add_conversion_options(parser, format_help="npy (default), nifti or both, as for convert_dicom_rt.py")
    add_verbosity_options(parser)
    ns = parser.parse_args(args)
    if not (ns.node_dir / "jobs").is_dir():
        parser.error(f"{ns.node_dir} is not a node output directory (no jobs/ folder in it)")
    return parse_conversion_options(parser, ns)


def main(args: list[str] | None = None) -> int:
    """Write the training data; returns 0 when at least one patient was written, 1 when none, 2 on an error."""
    ns = _setup_argparser(args)
    setup_script_logging(ns)
    try:
        report = corrections_to_training(ns.node_dir, ns.data_dir, fmt=ns.format, name_map=ns.name_map,
                                         overwrite=ns.overwrite)
    except (ValueError, FileExistsError) as exc:
        logger.error("%s", exc)
        return 2
    print(report.table())
    print(f"Report: {ns.data_dir / 'conversion_report.json'} (and .csv)")
    return 0 if report.converted else 1


if __name__ == "__main__":
    sys.exit(main())
