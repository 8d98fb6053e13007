"""Shared test support: repository paths and the Dice used to check contours against truth.

Test modules import these names (``from conftest import BUNDLE, dice``); the peers (DCMTK, the node as a
subprocess) are in ``test_service_support.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vacseg_monai.labels import LABELS

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "vacbag_ct_segmentation"


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two masks; 1.0 when both are empty."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def dice_per_label(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Dice of every label of the label table, by name (1.0 where both lack it)."""
    return {label.name: dice(truth == label.value, pred == label.value) for label in LABELS}
