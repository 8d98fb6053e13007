#!/usr/bin/env python
"""Generate synthetic canine and feline CT phantoms in the per-slice npy layout, plus a QA montage.

Example:
    python scripts/make_test_dataset.py --out test_dataset --patients 10
    python scripts/make_test_dataset.py --out test_dataset_v1 --patients 10 --phantom-version 1
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from vacseg_monai.logs import add_verbosity_options, setup_script_logging
from vacseg_monai.phantom import DEFAULT_VERSION, VERSIONS, generate_dataset

__all__ = ["main"]

logger = logging.getLogger("make_test_dataset")


def _setup_argparser(args: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Generate synthetic planning CT phantoms (vacuum bag, couch, body labels) in the "
        "<out>/<patient>/img|mask/<i>.npy layout.",
    )
    out = parser.add_argument_group("Output")
    out.add_argument("-od", "--out", type=Path, default=Path("test_dataset"), help="dataset folder (default test_dataset)")
    out.add_argument("--montage", type=Path, default=None, help="QA montage PNG (default <out>/montage.png)")
    out.add_argument(
        "--dicom",
        type=Path,
        default=None,
        help="also write each phantom as a DICOM CT series + truth RTSTRUCT under this folder",
    )
    gen = parser.add_argument_group("Generation")
    gen.add_argument("-n", "--patients", type=int, default=10, help="number of patients (default 10)")
    gen.add_argument("--seed", type=int, default=0, help="base seed; patient i uses seed+i (default 0)")
    gen.add_argument("--size", type=int, default=512, help="rows and columns per slice (default 512)")
    gen.add_argument(
        "--phantom-version",
        type=int,
        choices=VERSIONS,
        default=DEFAULT_VERSION,
        help=f"generator version: 1 the clean world of the first model, 2 varied devices, animals and scanners "
        f"(default {DEFAULT_VERSION})",
    )
    add_verbosity_options(parser, quiet_help="only warnings and errors, no progress bar")
    ns = parser.parse_args(args)
    if ns.patients < 1:
        parser.error(f"--patients must be >= 1, got {ns.patients}")
    if ns.seed < 0:
        parser.error(f"--seed must be >= 0, got {ns.seed}")
    if ns.size < 32:
        parser.error(f"--size must be >= 32, got {ns.size}")
    return ns


def main(args: list[str] | None = None) -> int:
    """Run the generator; returns the exit status."""
    ns = _setup_argparser(args)
    setup_script_logging(ns)
    start = time.perf_counter()
    montage = ns.montage or ns.out / "montage.png"
    folders = generate_dataset(
        ns.out, n_patients=ns.patients, seed=ns.seed, size=ns.size, progress=not ns.quiet, montage=montage,
        version=ns.phantom_version,
    )
    written = f"{ns.out} and montage {montage}"
    if ns.dicom is not None:
        from vacseg_monai.dicom.phantom_dicom import generate_dicom_dataset

        generate_dicom_dataset(ns.dicom, n_patients=ns.patients, seed=ns.seed, size=ns.size, progress=not ns.quiet,
                               version=ns.phantom_version)
        written += f" and DICOM CT + RTSTRUCT to {ns.dicom}"
    elapsed = time.perf_counter() - start
    print(f"Wrote {len(folders)} phantom patients (generator v{ns.phantom_version}, {ns.size}x{ns.size}) to {written} "
          f"in {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
