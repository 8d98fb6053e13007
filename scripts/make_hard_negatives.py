#!/usr/bin/env python
"""Write the public real CT scans without a bag as hard-negative training patients, plus a montage.

Each scan of ``vacseg_monai.public_data.HARD_NEGATIVE_SCANS`` becomes ``OUT_DIR/real_<key>/`` in the npy
layout: HU slices, Body = the reference body, ``annotation.json`` saying Vacbag and Body are annotated (the
Couch is unknown). The scans held out for the real-CT check are refused.

Example:
    python scripts/make_hard_negatives.py hard_negatives
    python scripts/make_hard_negatives.py hard_negatives --montage docs/hard_negatives.png
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from vacseg_monai.logs import add_verbosity_options, setup_script_logging
from vacseg_monai.public_data import HARD_NEGATIVE_SCANS, PublicDataError
from vacseg_monai.realct import save_hard_negative_montage, write_hard_negative

__all__ = ["PATIENT_PREFIX", "main"]

logger = logging.getLogger("make_hard_negatives")

#: Patient folder name = prefix + scan key.
PATIENT_PREFIX = "real_"


def _setup_argparser(args: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Write public real CT scans without a vacuum bag as training patients with partial labels "
        "(Body = reference body, Vacbag absent, Couch unknown) in the <out>/<patient>/img|mask/<i>.npy layout.",
    )
    parser.add_argument("out", type=Path, help="dataset folder; one real_<scan> patient folder per scan")
    parser.add_argument("--scans", nargs="+", default=list(HARD_NEGATIVE_SCANS), metavar="KEY",
                        help=f"hard-negative scans to write (default: all, {' '.join(HARD_NEGATIVE_SCANS)})")
    out = parser.add_argument_group("Output")
    out.add_argument("--montage", type=Path, default=None,
                     help="PNG with the middle slice of each patient and its Body (default <out>/hard_negatives.png)")
    out.add_argument("--cache", type=Path, default=None,
                     help="public data cache (default $VACSEG_DATA_CACHE or ~/.cache/vacseg_monai/public)")
    add_verbosity_options(parser)
    ns = parser.parse_args(args)
    unknown = sorted(set(ns.scans) - set(HARD_NEGATIVE_SCANS))
    if unknown:
        parser.error(f"--scans {' '.join(unknown)}: not hard-negative scans; choose from {' '.join(HARD_NEGATIVE_SCANS)} "
                     "(the others are held out for the real-CT check)")
    return ns


def main(args: list[str] | None = None) -> int:
    """Write the patients and the montage; returns the exit status (1 if a scan cannot be fetched or read)."""
    ns = _setup_argparser(args)
    setup_script_logging(ns)
    written = []
    for key in dict.fromkeys(ns.scans):
        try:
            written.append(write_hard_negative(key, ns.out / f"{PATIENT_PREFIX}{key}", ns.cache))
        except (PublicDataError, ValueError, OSError) as exc:
            logger.error("%s: not written: %s", key, exc)
            return 1
    montage = save_hard_negative_montage(written, ns.montage or ns.out / "hard_negatives.png")
    slices = sum(patient.shape[2] for patient in written)
    logger.info("Wrote %d hard-negative patients (%d slices) to %s and montage %s", len(written), slices, ns.out,
                montage)
    return 0


if __name__ == "__main__":
    sys.exit(main())
