#!/usr/bin/env python
"""Measure the bundle on held-out synthetic phantoms and write the performance table.

Each phantom is segmented by the bundle's inference workflow (configs/inference.json) and
compared with its truth: Dice, HD95 (mm), surface Dice at 2 mm, precision, sensitivity per
label. Writes <out>/performance.csv (one row per patient and label) and
<out>/performance.md (mean +- sd per label); --update-docs also rewrites the generated
part of the bundle's docs/README.md "Performance" section.

Example (from the repository root, after training):
    python scripts/bundle_performance.py --n-patients 5 --update-docs
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import shlex
import sys
import time
from pathlib import Path

from vacseg_monai.evaluation import (
    DEFAULT_SEEDS,
    DEFAULT_TOLERANCE_MM,
    PhantomSegmenter,
    evaluate_phantoms,
    markdown_table,
    update_performance_section,
    write_csv,
)
from vacseg_monai.logs import add_verbosity_options, setup_script_logging
from vacseg_monai.paths import default_bundle_root
from vacseg_monai.phantom import DEFAULT_VERSION, VERSIONS, phantom_patient_id

__all__ = ["main"]

logger = logging.getLogger("bundle_performance")


def _override(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (VALUE as JSON or a plain string), got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _setup_argparser(args: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Performance table of the vacbag_ct_segmentation bundle on held-out synthetic phantoms.",
    )
    model = parser.add_argument_group("Model")
    model.add_argument("--bundle", type=Path, default=None, help="bundle folder (default: found as the configs do)")
    model.add_argument("--ckpt", type=Path, default=None, help="checkpoint (default <bundle>/models/model.pt)")
    model.add_argument(
        "--override",
        type=_override,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="inference.json override, VALUE as JSON, e.g. channels=[4,8,16] (repeatable)",
    )
    data = parser.add_argument_group("Data")
    data.add_argument("--seeds", type=int, nargs="+", default=None, help="phantom seeds (default 1000 .. 999+n)")
    data.add_argument("--n-patients", type=int, default=len(DEFAULT_SEEDS), help="phantoms when --seeds is not given (default 5)")
    data.add_argument("--size", type=int, default=512, help="rows and columns per phantom slice (default 512)")
    data.add_argument("--phantom-version", type=int, choices=VERSIONS, default=DEFAULT_VERSION, help=f"phantom generator version (default {DEFAULT_VERSION})")
    data.add_argument(
        "--train-data",
        type=Path,
        default=None,
        help="training data folder; seeds whose phantom_<seed> patient is in it are refused "
        "(default <bundle>/../../test_dataset when it exists)",
    )
    data.add_argument("--tolerance-mm", type=float, default=DEFAULT_TOLERANCE_MM, help="surface Dice tolerance (default 2)")
    out = parser.add_argument_group("Output")
    out.add_argument("-od", "--out", type=Path, default=Path("performance"), help="output folder (default performance)")
    out.add_argument("--update-docs", action="store_true", help="rewrite the Performance section of <bundle>/docs/README.md")
    add_verbosity_options(parser)
    ns = parser.parse_args(args)

    ns.bundle = Path(ns.bundle or default_bundle_root()).resolve()
    if not (ns.bundle / "configs" / "inference.json").is_file():
        parser.error(f"--bundle {ns.bundle} holds no configs/inference.json")
    if ns.seeds is None:
        if ns.n_patients < 1:
            parser.error(f"--n-patients must be >= 1, got {ns.n_patients}")
        ns.seeds = list(range(DEFAULT_SEEDS[0], DEFAULT_SEEDS[0] + ns.n_patients))
    if min(ns.seeds) < 0 or len(set(ns.seeds)) != len(ns.seeds):
        parser.error(f"--seeds must be distinct non-negative integers, got {ns.seeds}")
    if ns.size < 32:
        parser.error(f"--size must be >= 32, got {ns.size}")
    if not ns.tolerance_mm > 0:
        parser.error(f"--tolerance-mm must be > 0, got {ns.tolerance_mm}")
    train_data = ns.train_data or ns.bundle / ".." / ".." / "test_dataset"
    if train_data.is_dir():
        leaked = [s for s in ns.seeds if (train_data / phantom_patient_id(s)).exists()]
        if leaked:
            parser.error(
                f"--seeds {leaked} are training patients in {train_data.resolve()}; pick held-out seeds (default 1000..)"
            )
    return ns


def _hardware() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    text = f"{cpu}, {os.cpu_count()} CPU cores"
    if torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name(0)}"
    return text


def _docs_body(table: str, command: str, ns: argparse.Namespace, seconds: float) -> str:
    import monai
    import torch

    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    ckpt = ns.ckpt or Path("models/model.pt")
    return (
        f"Held-out synthetic phantoms (generator v{ns.phantom_version}, seeds {ns.seeds[0]}..{ns.seeds[-1]}, "
        f"{len(ns.seeds)} patients, "
        f"{ns.size}x{ns.size} slices), checkpoint `{ckpt}`, full inference workflow "
        f"(`configs/inference.json`: window, resize, SliceInferer, resample, clean-up). "
        f"Mean ± sd over patients; 3D metrics per patient.\n\n"
        f"{table}\n"
        f"Produced on {date} by\n\n    {command}\n\n"
        f"Hardware: {_hardware()}; MONAI {monai.__version__}, PyTorch {torch.__version__}; "
        f"{seconds:.0f} s in all. Per-patient values: `performance.csv` from the same command. "
        "Synthetic phantoms are not clinical data: these numbers check the pipeline, not clinical accuracy.\n"
    )


def main(args: list[str] | None = None) -> int:
    """Run the evaluation; returns the exit status."""
    argv = list(sys.argv[1:] if args is None else args)
    ns = _setup_argparser(argv)
    setup_script_logging(ns)
    start = time.perf_counter()
    try:
        segmenter = PhantomSegmenter(ns.bundle, ns.ckpt, dict(ns.override))
    except FileNotFoundError as exc:
        logger.error("%s", exc)
        return 2
    rows = evaluate_phantoms(segmenter, seeds=ns.seeds, size=ns.size, tolerance_mm=ns.tolerance_mm,
                             phantom_version=ns.phantom_version)  # fmt: skip
    seconds = time.perf_counter() - start
    table = markdown_table(rows)
    csv_path = write_csv(rows, ns.out / "performance.csv")
    command = "python scripts/bundle_performance.py " + shlex.join(argv)
    body = _docs_body(table, command.strip(), ns, seconds)
    md_path = ns.out / "performance.md"
    md_path.write_text("## Performance\n\n" + body)
    logger.info("Wrote %s and %s (%d patients, %.0f s)", csv_path, md_path, len(ns.seeds), seconds)
    if ns.update_docs:
        readme = update_performance_section(ns.bundle / "docs" / "README.md", body)
        logger.info("Updated the Performance section of %s", readme)
    sys.stdout.write(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
