"""The quality benchmark's pure parts: ROC and AUROC on known inputs, the truth of a structure, the corruptions."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.bench_quality import (
    PADDING_HU,
    auroc,
    flip_up_down,
    fov_truncate,
    metal_streaks,
    noise_x3,
    roc_curve,
    structure_truth,
    surface_dice,
    transpose_slices,
    wrong_rescale,
)

SPACING = (1.0, 1.0, 2.0)


def _volume() -> tuple[np.ndarray, np.ndarray]:
    """64 x 64 x 6: air at -1000 HU, a body disk at 40 HU (label 3), a couch strip below it (label 2)."""
    rows, cols = np.mgrid[:64, :64]
    body = (rows - 28) ** 2 + (cols - 32) ** 2 <= 16**2
    truth = np.zeros((64, 64), np.uint8)
    truth[body] = 3
    truth[50:54, 6:58] = 2
    hu = np.where(body, 40.0, -1000.0).astype(np.float32)
    return np.repeat(hu[..., None], 6, 2), np.repeat(truth[..., None], 6, 2)


def test_roc_and_auroc_on_known_inputs():
    # Perfect separation, then a single swap of one positive below one negative (1 of 4 pairs wrong).
    assert auroc([0.9, 0.8, 0.2, 0.1], [True, True, False, False]) == 1.0
    assert auroc([0.9, 0.2, 0.8, 0.1], [True, True, False, False]) == 0.75
    assert auroc([0.1, 0.2, 0.8, 0.9], [True, True, False, False]) == 0.0
    # Ties count half: every score equal gives chance.
    assert auroc([0.5, 0.5, 0.5, 0.5], [True, False, True, False]) == 0.5
    fpr, tpr, thresholds = roc_curve([0.9, 0.2, 0.8, 0.1], [True, True, False, False])
    assert fpr.tolist() == [0.0, 0.0, 0.5, 0.5, 1.0]
    assert tpr.tolist() == [0.0, 0.5, 0.5, 1.0, 1.0]
    assert thresholds[1:].tolist() == [0.9, 0.8, 0.2, 0.1]
    with pytest.raises(ValueError, match="needs both classes; got 2 positive and 0 negative"):
        roc_curve([0.1, 0.2], [True, True])


def test_surface_dice_and_structure_truth():
    _, truth = _volume()
    body = truth == 3
    assert surface_dice(body, body, SPACING) == pytest.approx(1.0)
    shifted_1mm = np.roll(body, 1, axis=1)
    assert surface_dice(shifted_1mm, body, SPACING) == pytest.approx(1.0)  # within the 2 mm tolerance
    shifted_6mm = np.roll(body, 6, axis=1)
    assert 0.6 < surface_dice(shifted_6mm, body, SPACING) < 0.9  # the sides along the shift stay within 2 mm
    assert structure_truth(shifted_6mm, body, SPACING)["bad"] is True
    body_cm3 = round(np.count_nonzero(body) * 2.0 / 1000.0, 3)  # 797 pixels x 6 slices x 2 mm3
    assert body_cm3 == 9.564
    assert structure_truth(body, body, SPACING) == {"surface_dice": 1.0, "fp_cm3": None, "drawn_cm3": body_cm3,
                                                    "bad": False}
    # Absent from the truth: the drawn volume is all false positive; 1 cm3 = 500 voxels of 2 mm3.
    small, large = np.zeros_like(body), np.zeros_like(body)
    small.flat[:400], large.flat[:600] = True, True
    assert structure_truth(small, None, SPACING) == {"surface_dice": None, "fp_cm3": 0.8, "drawn_cm3": 0.8,
                                                     "bad": False}
    assert structure_truth(large, None, SPACING)["bad"] is True
    assert structure_truth(np.zeros_like(body), body, SPACING)["surface_dice"] == 0.0


def test_wrong_rescale_moves_air_to_about_plus_24_hu():
    hu, truth = _volume()
    out, out_truth = wrong_rescale(hu, truth, np.random.default_rng(0))
    assert out[0, 0, 0] == pytest.approx(24.0)
    assert out[28, 32, 0] == pytest.approx(1064.0)
    assert out_truth is truth


def test_noise_x3_triples_the_noise():
    rng = np.random.default_rng(1)
    hu = rng.normal(0.0, 20.0, (64, 64, 6)).astype(np.float32)
    out, _ = noise_x3(hu, np.zeros(hu.shape, np.uint8), rng, noise_sd_hu=20.0)
    assert out.std() == pytest.approx(60.0, rel=0.03)


def test_fov_truncation_pads_outside_a_circle_that_cuts_the_body():
    hu, truth = _volume()
    out, out_truth = fov_truncate(hu, truth, np.random.default_rng(0), keep=0.85)
    padded = out == PADDING_HU
    assert padded[0, 0].all() and not padded[31, 31].any()
    assert (padded & (truth == 3)).any()  # the body is cut
    assert (padded & (truth == 2)).any()  # and the couch
    assert out_truth is truth  # the patient is still whole


def test_metal_streaks_are_bright_and_dark_in_the_middle_slices_only():
    hu, truth = _volume()
    out, _ = metal_streaks(hu, truth, np.random.default_rng(0))
    diff = out - hu
    assert np.array_equal(out[..., 0], hu[..., 0]) and np.array_equal(out[..., 5], hu[..., 5])
    assert diff[..., 2].max() > 500 and diff[..., 2].min() < -500
    assert out[..., 2].max() == pytest.approx(3071.0)


def test_flip_and_transpose_move_the_truth_with_the_image():
    hu, truth = _volume()
    flipped, flipped_truth = flip_up_down(hu, truth, np.random.default_rng(0))
    assert np.array_equal(flipped_truth[::-1], truth) and np.array_equal(flipped[::-1], hu)
    assert flipped_truth[64 - 52, 10, 0] == 2  # the couch now lies above the body
    turned, turned_truth = transpose_slices(hu, truth, np.random.default_rng(0))
    assert np.array_equal(turned_truth, truth.transpose(1, 0, 2)) and turned_truth[10, 52, 0] == 2
