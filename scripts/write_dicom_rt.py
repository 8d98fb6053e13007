#!/usr/bin/env python
"""Write a NIfTI label map as an RT Structure Set and/or DICOM-SEG of a CT series.

The label map may have any affine that covers the series: it is resampled onto the CT
grid with nearest neighbour (a warning is logged when it covers the series only partly).

Example:
    python scripts/write_dicom_rt.py --series ct/ --labels labels.nii.gz --out rt/ --format both
    python scripts/write_dicom_rt.py --series ct/ --labels labels.nii.gz --out rt/ --profile eclipse
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from vacseg_monai.dicom.labelmap import write_label_map_dicom
from vacseg_monai.dicom.outputs import OutputKind, check_root_uid
from vacseg_monai.dicom.profiles import load_profile
from vacseg_monai.logs import add_verbosity_options, setup_script_logging

__all__ = ["main"]

logger = logging.getLogger("write_dicom_rt")


def _setup_argparser(args: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Write a NIfTI label map (values from the vacseg_monai label table) as an RTSTRUCT and/or "
        "DICOM-SEG referencing a CT series.",
    )
    source = parser.add_argument_group("Input")
    source.add_argument("--series", type=Path, required=True, metavar="CT_DIR", help="folder with the CT series")
    source.add_argument("--series-uid", default=None, help="SeriesInstanceUID when CT_DIR holds several series")
    source.add_argument("--labels", type=Path, required=True, metavar="LABELS.nii.gz", help="NIfTI label map")
    out = parser.add_argument_group("Output")
    out.add_argument("-od", "--out", "--output-directory", dest="out", type=Path, required=True, metavar="OUT_DIR",
                     help="output folder (created)")
    out.add_argument("--format", choices=[f.value for f in OutputKind if f is not OutputKind.NONE], default=OutputKind.RTSTRUCT.value,
                     help="rtstruct (default), seg or both")
    out.add_argument("--root-uid", default=None, help="UID root for the new objects (must end with '.')")
    out.add_argument("--profile", default=None, metavar="NAME|FILE",
                     help="output profile: generic (default), eclipse, raystation or a TOML file (docs/profiles.md)")
    out.add_argument("--label-suffix", dest="label_suffix", default=None, metavar="TEXT",
                     help="append TEXT to every ROI name and segment label, e.g. ' NOT FOR CLINICAL USE'")
    add_verbosity_options(parser)
    ns = parser.parse_args(args)
    if not ns.series.is_dir():
        parser.error(f"--series {ns.series} is not a folder")
    if not ns.labels.is_file():
        parser.error(f"--labels {ns.labels} is not a file")
    if ns.root_uid is not None:
        try:
            check_root_uid(ns.root_uid)
        except ValueError as exc:
            parser.error(f"--root-uid: {exc}")
    try:
        ns.profile = load_profile(ns.profile, label_suffix=ns.label_suffix)
    except ValueError as exc:
        parser.error(f"--profile: {exc}")
    return ns


def main(args: list[str] | None = None) -> int:
    """Write the objects; returns the exit status (0 on success, 2 on bad input)."""
    ns = _setup_argparser(args)
    setup_script_logging(ns)
    try:
        written = write_label_map_dicom(
            ns.series, ns.labels, ns.out, fmt=ns.format, root_uid=ns.root_uid, series_uid=ns.series_uid,
            profile=ns.profile,
        )
    except ValueError as exc:
        logger.error("%s", exc)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
