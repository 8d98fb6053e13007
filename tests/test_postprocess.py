"""Tests of the post-processing steps (vacseg_monai.postprocess): resample + argmax, connected-component clean-up."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vacseg_monai.labels import BACKGROUND, label_by_name
from vacseg_monai.postprocess import (
    CleanUpLabelsd,
    _drop_small_components,
    _fill_holes_per_slice,
    _large_components,
    _largest_component,
    _relabel_in_box,
    clean_up_labels,
    resample_argmax,
)

VACBAG = label_by_name("Vacbag").value
COUCH = label_by_name("Couch").value
BODY = label_by_name("Body").value


def test_resample_argmax_matches_full_resolution_argmax():
    logits = torch.randn(4, 8, 10, 7)
    full = torch.nn.functional.interpolate(
        logits.permute(3, 0, 1, 2), size=(16, 20), mode="bilinear", align_corners=False
    ).argmax(dim=1)
    labels = resample_argmax(logits, (16, 20, 7), chunk_slices=3)
    assert labels.shape == (1, 16, 20, 7) and labels.dtype == torch.uint8
    torch.testing.assert_close(labels[0].long(), full.permute(1, 2, 0))
    with pytest.raises(ValueError, match="Logits have 7 slices but the CT grid has 6"):
        resample_argmax(logits, (16, 20, 6))

def test_resample_argmax_runs_on_its_own_thread_count_and_restores_the_process_setting(monkeypatch):
    logits = _smooth_logits(4, 12, 12, n=5, seed=3)
    expected = resample_argmax(logits, (30, 30, 5), num_threads=None)
    seen = []
    real = torch.nn.functional.interpolate

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    before = torch.get_num_threads()
    monkeypatch.setattr(torch.nn.functional, "interpolate", spy)
    dense = resample_argmax(logits, (30, 30, 5), max_mixed_fraction=0.0)  # the dense path calls interpolate
    assert seen and set(seen) == {1}
    assert torch.get_num_threads() == before
    torch.testing.assert_close(dense, expected)
    with pytest.raises(ValueError, match="`num_threads` must be None or >= 1, got 0"):
        resample_argmax(logits, (30, 30, 5), num_threads=0)


def _smooth_logits(n_classes: int, h: int, w: int, n: int, seed: int) -> torch.Tensor:
    """Logits with label regions and boundaries like a network's: noise blurred over a few pixels."""
    coarse = torch.randn(n, n_classes, max(2, h // 4), max(2, w // 4), generator=torch.Generator().manual_seed(seed))
    fine = torch.nn.functional.interpolate(coarse * 4, size=(h, w), mode="bicubic", align_corners=False)
    return fine.permute(1, 2, 3, 0).contiguous()  # (C, h, w, n)

@pytest.mark.parametrize(
    ("low", "high"), [((32, 32), (64, 64)), ((24, 30), (50, 77)), ((40, 36), (31, 36)), ((16, 16), (16, 16))]
)
def test_resample_argmax_boundary_only_path_is_exactly_the_dense_resize(low, high):
    """Interpolating only near label boundaries gives the dense bilinear resize's argmax, pixel for pixel."""
    logits = _smooth_logits(4, *low, n=9, seed=sum(low) + sum(high))
    dense = torch.nn.functional.interpolate(logits.permute(3, 0, 1, 2), size=high, mode="bilinear", align_corners=False)
    expected = dense.argmax(dim=1).permute(1, 2, 0)
    sparse = resample_argmax(logits, (*high, 9), chunk_slices=4, max_mixed_fraction=1.0)[0]
    fallback = resample_argmax(logits, (*high, 9), chunk_slices=4, max_mixed_fraction=0.0)[0]
    assert len(torch.unique(expected[..., 0])) >= 3  # several labels, so boundaries, within a slice
    torch.testing.assert_close(sparse.long(), expected)
    torch.testing.assert_close(fallback.long(), expected)
    rows, cols = high
    assert sparse.stride() == (cols, 1, rows * cols)  # slice-major memory: each slice is contiguous
    with pytest.raises(ValueError, match=r"`max_mixed_fraction` must be in \[0, 1\], got 1.5"):
        resample_argmax(logits, (*high, 9), max_mixed_fraction=1.5)

def test_clean_up_removes_components_and_fills_body_holes():
    labels = np.zeros((40, 40, 6), dtype=np.uint8)
    labels[5:25, 5:35, :] = BODY  # body: 20 x 30 x 6
    labels[12:16, 12:16, 2] = BACKGROUND  # a hole inside the body on slice 2 (16 voxels)
    labels[14, 30, 3] = VACBAG  # a stray Vacbag voxel inside the body on slice 3
    labels[36:39, 36:39, 0] = BODY  # a second, small body component (9 voxels)
    labels[30:33, 2:38, :] = COUCH  # couch slab 3 x 36 x 6 = 648 voxels
    labels[36:38, 2:4, 5] = COUCH  # a stray couch blob (4 voxels)
    labels[26:29, 2:12, :] = VACBAG  # bag piece: 3 x 10 x 6 = 180 voxels of 8 mm^3 = 1440 mm^3
    labels[26:28, 30:32, 1] = VACBAG  # tiny bag piece: 4 voxels = 32 mm^3
    before = labels.copy()

    cleaned, changed = clean_up_labels(labels, voxel_volume_mm3=8.0, min_vacbag_volume_mm3=1000.0)

    np.testing.assert_array_equal(labels, before)  # input untouched
    assert changed == {"Body": 9 + 16 + 1, "Couch": 4, "Vacbag": 4}
    assert np.all(cleaned[5:25, 5:35, :] == BODY)  # hole and stray voxel filled
    assert np.all(cleaned[36:39, 36:39, 0] == BACKGROUND)
    assert np.count_nonzero(cleaned == COUCH) == 648
    assert np.count_nonzero(cleaned == VACBAG) == 180
    assert np.count_nonzero(cleaned == BODY) == 20 * 30 * 6

def test_clean_up_gives_the_same_result_for_either_memory_layout():
    """The clean-up works slice-major; a (rows, cols, n)-contiguous map and a slice-major view agree."""
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, size=(30, 26, 7)).astype(np.uint8)
    labels[5:20, 4:22, :] = BODY
    labels[9:13, 9:14, 2] = BACKGROUND  # a hole to fill
    slice_major = np.moveaxis(np.ascontiguousarray(np.moveaxis(labels, 2, 0)), 0, 2)
    assert not slice_major.flags.c_contiguous
    cleaned_a, changed_a = clean_up_labels(labels, min_vacbag_volume_mm3=3.0)
    cleaned_b, changed_b = clean_up_labels(slice_major, min_vacbag_volume_mm3=3.0)
    np.testing.assert_array_equal(cleaned_a, cleaned_b)
    assert changed_a == changed_b and changed_a["Body"] > 0
    assert np.all(cleaned_a[9:13, 9:14, 2] == BODY)

def test_clean_up_keeps_body_open_at_the_edge_and_handles_empty_labels():
    labels = np.zeros((20, 20, 2), dtype=np.uint8)
    labels[0:10, 5:15, :] = BODY
    labels[0:4, 8:12, :] = BACKGROUND  # a notch open to the image edge: not a hole
    cleaned, changed = clean_up_labels(labels)
    np.testing.assert_array_equal(cleaned, labels)
    assert changed == {"Body": 0, "Couch": 0, "Vacbag": 0}
    empty, changed = clean_up_labels(np.zeros((4, 4, 3), dtype=np.uint8))
    assert not empty.any() and changed == {"Body": 0, "Couch": 0, "Vacbag": 0}

def test_clean_up_on_the_bounding_box_equals_the_whole_grid():
    """Cropping to each label's box is only a speed-up: every operation gives what it gives on the whole grid."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(7)
    mask = ndi.binary_opening(rng.random((48, 40, 9)) > 0.55, iterations=1)
    mask[:5] = False  # keep the mask off some edges so the box is smaller than the grid
    mask[:, -7:] = False
    mask[20:30, 10:25, 3] = True
    mask[23:27, 14:20, 3] = False  # a hole in one slice, enclosed by the ring above
    assert 0 < mask.sum() < mask.size
    operations = {
        "largest": _largest_component,
        "fill holes": _fill_holes_per_slice,
        "body": lambda m: _fill_holes_per_slice(_large_components(m, 0.1)),
        "drop small": lambda m: _drop_small_components(m, 5),
    }
    for name, operation in operations.items():
        labels = mask.astype(np.uint8) * BODY
        removed, added = _relabel_in_box(labels, BODY, operation)
        whole = operation(mask)
        np.testing.assert_array_equal(labels == BODY, whole, err_msg=name)
        assert (removed, added) == (np.count_nonzero(mask & ~whole), np.count_nonzero(whole & ~mask)), name
    assert _fill_holes_per_slice(mask)[23:27, 14:20, 3].all()  # the case above really has a hole to fill
    np.testing.assert_array_equal(
        np.moveaxis(_fill_holes_per_slice(np.moveaxis(mask, 2, 0), slice_axis=0), 0, 2), _fill_holes_per_slice(mask)
    )
    empty = np.zeros((4, 4, 2), dtype=np.uint8)
    assert _relabel_in_box(empty, BODY, _largest_component) == (0, 0) and not empty.any()


def test_clean_up_keeps_every_large_body_part():
    """Body parts lying apart (two hind limbs, a tail) stay; a stray piece below the share of the largest goes."""
    labels = np.zeros((40, 60, 5), dtype=np.uint8)
    labels[5:25, 5:25, :] = BODY  # left limb: 2000 voxels
    labels[5:24, 35:55, :] = BODY  # right limb, apart from the left: 1900 voxels
    labels[30:34, 30:35, 2] = BODY  # a stray piece: 20 voxels, 1 % of the largest part
    cleaned, changed = clean_up_labels(labels)
    assert np.count_nonzero(cleaned == BODY) == 3900 and changed["Body"] == 20
    largest_only, _ = clean_up_labels(labels, min_body_share=1.0)
    assert np.count_nonzero(largest_only == BODY) == 2000
    everything, changed = clean_up_labels(labels, min_body_share=0.0)
    assert np.count_nonzero(everything == BODY) == 3920 and changed["Body"] == 0
    with pytest.raises(ValueError, match="min_body_share"):
        clean_up_labels(labels, min_body_share=1.5)
    with pytest.raises(ValueError, match="min_body_share"):
        CleanUpLabelsd(min_body_share=-0.1)


def test_clean_up_keeps_both_limbs_of_a_limb_phantom():
    """A v2 limb phantom's true labels hold two body components of equal size: the clean-up leaves both."""
    from vacseg_monai.phantom import generate_phantom

    phantom = generate_phantom(1004, size=128, version=2)
    assert phantom.extra["region"] == "limb"
    truth = phantom.labels
    cleaned, changed = clean_up_labels(truth, float(np.prod(phantom.pixel_spacing) * phantom.slice_thickness_mm))
    np.testing.assert_array_equal(cleaned == BODY, truth == BODY)
    assert changed["Body"] == 0
    assert np.count_nonzero(_largest_component(truth == BODY)) * 2 == np.count_nonzero(truth == BODY)  # the old rule
