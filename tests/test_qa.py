"""The QA montage: label colours drawn where the labels are, and a montage of unlabelled slices."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vacseg_monai.labels import LABELS
from vacseg_monai.qa import OverlayPanel, save_overlay_montage, window_ct


def _slice() -> np.ndarray:
    image = np.full((64, 64), -1000.0, np.float32)
    image[16:48, 16:48] = 40.0
    return image


def _colour_fraction(path, colour: tuple[int, int, int], tol: int = 40) -> float:
    rgb = np.asarray(Image.open(path).convert("RGB"), np.int32)
    close = np.all(np.abs(rgb - np.asarray(colour)) <= tol, axis=-1)
    return float(close.mean())


def test_montage_without_labels_is_written_grey(tmp_path):
    path = save_overlay_montage([OverlayPanel(_slice(), title="a"), OverlayPanel(_slice(), title="b")],
                                tmp_path / "plain.png")
    rgb = np.asarray(Image.open(path).convert("RGB"), np.int32)
    assert rgb.shape[0] > 100 and rgb.shape[1] > 200
    # no label colour anywhere: every pixel is grey (the three channels agree)
    assert int(np.abs(rgb[..., 0] - rgb[..., 2]).max()) <= 2


def test_montage_with_labels_shows_each_label_colour(tmp_path):
    labels = np.zeros((64, 64), np.uint8)
    for i, label in enumerate(LABELS):
        labels[4 + 20 * i: 16 + 20 * i, 4:60] = label.value
    path = save_overlay_montage([OverlayPanel(_slice(), labels=labels, title="labelled")], tmp_path / "l.png",
                                alpha=1.0)
    for label in LABELS:
        assert _colour_fraction(path, label.color) > 0.01, label.name


def test_montage_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        save_overlay_montage([], tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"Panel 0 \('bad'\): labels shape \(8, 8\)"):
        save_overlay_montage([OverlayPanel(_slice(), labels=np.zeros((8, 8)), title="bad")], tmp_path / "x.png")
    with pytest.raises(ValueError, match="width"):
        window_ct(_slice(), width=0)
