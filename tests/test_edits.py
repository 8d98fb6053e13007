"""Edit metrics on synthetic masks with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vacseg_monai.edits import added_path_length, edit_metrics, most_edited_slices, save_edit_picture

N = 20  # side of the node's square in pixels
SPACING = (1.0, 1.0, 3.0)


def square_box(grow: int = 0, slices: range = range(2, 7), shape=(48, 48, 9)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[14 - grow : 14 + N + grow, 14 - grow : 14 + N + grow, slices.start : slices.stop] = True
    return mask


def traced_perimeter(side: int) -> float:
    """Length of the marching-squares contour of a side x side pixel square (1 mm pixels): corners cut."""
    return 4 * (side - 1) + 4 * math.sqrt(0.5)


def test_square_grown_by_two_pixels():
    node, corrected = square_box(), square_box(grow=2)
    measure = edit_metrics({1: node}, {1: corrected}, SPACING)
    vacbag = measure.rois[0]
    assert vacbag.roi == "Vacbag" and vacbag.status == "edited"
    assert vacbag.dice == pytest.approx(2 * N**2 / (N**2 + (N + 4) ** 2))
    assert vacbag.volume_change_cm3 == pytest.approx(((N + 4) ** 2 - N**2) * 5 * 3.0 / 1000)
    # every point of the grown contour is 2 mm or more from the node's: all of it is added, on 5 slices
    assert vacbag.added_path_mm == pytest.approx(5 * traced_perimeter(N + 4), rel=1e-6)
    assert vacbag.edited_slices == 5
    # surface distances are 2 mm on the sides, at most 2*sqrt(2) mm at the corners
    assert 2.0 <= vacbag.hd95_mm <= 2 * math.sqrt(2) + 1e-6
    assert 0.0 < vacbag.surface_dice < 1.0
    wide = edit_metrics({1: node}, {1: corrected}, SPACING, surface_tolerance_mm=3.0, apl_tolerance_mm=3.0).rois[0]
    assert wide.surface_dice == pytest.approx(1.0)
    assert wide.added_path_mm == pytest.approx(0.0)
    # the other labels were not sent back: nothing is said about them
    assert [(r.roi, r.status, r.dice) for r in measure.rois[1:]] == [
        ("Couch", "not in correction", None), ("Body", "not in correction", None)]


def test_untouched_roi_and_one_new_slice():
    node = square_box()
    measure = edit_metrics({1: node, 3: node}, {1: node, 3: square_box(slices=range(2, 8))}, SPACING)
    vacbag, body = measure.rois[0], measure.rois[2]
    assert (vacbag.status, vacbag.dice, vacbag.surface_dice, vacbag.hd95_mm, vacbag.added_path_mm) == (
        "unchanged", 1.0, 1.0, 0.0, 0.0)
    assert body.dice == pytest.approx(2 * 5 / 11)
    # the slice the node left empty: its whole contour was drawn
    assert body.added_path_mm == pytest.approx(traced_perimeter(N))
    assert body.volume_change_cm3 == pytest.approx(N**2 * 3.0 / 1000)
    assert body.hd95_mm == pytest.approx(3.0)  # one slice of 3 mm
    assert most_edited_slices(measure) == [7]


def test_added_removed_and_spacing():
    node = square_box()
    measure = edit_metrics({1: node}, {1: np.zeros_like(node), 2: square_box(grow=1)}, (0.5, 0.5, 2.0))
    vacbag, couch = measure.rois[0], measure.rois[1]
    assert (vacbag.status, vacbag.dice, vacbag.surface_dice, vacbag.added_path_mm) == ("removed", 0.0, 0.0, 0.0)
    assert vacbag.volume_change_cm3 == pytest.approx(-(N**2) * 5 * 0.5 / 1000)
    assert couch.status == "added" and couch.hd95_mm is None
    assert couch.added_path_mm == pytest.approx(5 * 0.5 * traced_perimeter(N + 2))


def test_added_path_of_a_shrunk_side_only():
    """Only the right side moved in by 3 pixels: the added path is that side, not the untouched ones."""
    node = square_box()
    corrected = node.copy()
    corrected[:, 14 + N - 3 : 14 + N, :] = False
    apl = added_path_length(node, corrected, (1.0, 1.0))
    # the new right side runs N - 1 mm between its cut corners; its last 0.5 mm at each end, and the cut
    # corners, lie within 1 mm of the node's top and bottom sides, as do those sides themselves
    assert apl[2] == pytest.approx(N - 1 - 2 * 0.5)
    assert apl[0] == 0.0 and apl.sum() == pytest.approx(5 * apl[2])


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="spacing"):
        edit_metrics({1: square_box()}, {1: square_box()}, (1.0, 1.0))
    with pytest.raises(ValueError, match="one 3D shape"):
        edit_metrics({1: square_box()}, {1: square_box(shape=(40, 40, 9))}, SPACING)


def test_edit_picture(tmp_path):
    node, corrected = square_box(), square_box(grow=2)
    measure = edit_metrics({1: node}, {1: corrected}, SPACING)
    image = np.full(node.shape, -1000.0, np.float32)
    path = save_edit_picture(image, node.astype(np.uint8), corrected.astype(np.uint8), measure,
                             tmp_path / "edit.png", title="job x")
    assert path is not None and path.stat().st_size > 5_000
    same = edit_metrics({1: node}, {1: node}, SPACING)
    assert save_edit_picture(image, node.astype(np.uint8), node.astype(np.uint8), same, tmp_path / "none.png",
                             title="job y") is None


def test_surface_metrics_agree_with_monai_metrics():
    """One edge computation for both numbers gives what MONAI's two metric functions give."""
    import torch
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    rng = np.random.default_rng(0)
    node = square_box(slices=range(1, 8))
    corrected = node.copy()
    corrected[10:40, 30:40, 3:6] = rng.random((30, 10, 3)) > 0.3  # a ragged edit
    spacing = (0.8, 0.8, 2.5)
    roi = edit_metrics({2: node}, {2: corrected}, spacing).rois[1]
    p, t = torch.from_numpy(corrected)[None, None], torch.from_numpy(node)[None, None]
    assert roi.surface_dice == pytest.approx(float(compute_surface_dice(p, t, [2.0], include_background=True,
                                                                       spacing=spacing)[0, 0]))
    assert roi.hd95_mm == pytest.approx(float(compute_hausdorff_distance(p, t, include_background=True, percentile=95,
                                                                         spacing=spacing)[0, 0]))
    assert 0 < roi.surface_dice < 1 and roi.hd95_mm > 0


def _boxes(shape=(40, 40, 6), vacbag_rows=(8, 20)) -> np.ndarray:
    labels = np.zeros(shape, np.uint8)
    labels[24:34, 4:36, 1:5] = 2  # Couch
    labels[vacbag_rows[0]:vacbag_rows[1], 8:32, 1:5] = 1  # Vacbag
    labels[12:18, 14:26, 1:5] = 3  # Body inside it: overlap-free label map
    return labels


def test_the_node_seg_compares_with_a_correction_as_its_rtstruct_does(tmp_path):
    """A node run with --output seg: the correction (an RTSTRUCT) is measured against the node's SEG, with
    the same metrics as against the node's RTSTRUCT of the same labels."""
    from vacseg_monai.dicom.outputs import write_outputs
    from vacseg_monai.dicom.rtstruct import write_rtstruct
    from vacseg_monai.dicom.series import read_series
    from vacseg_monai.dicom.seg import read_seg_masks
    from vacseg_monai.dicom.synthetic import write_ct_series
    from vacseg_monai.edits import compare_structure_sets

    image = np.full((40, 40, 6), -1000, np.int16)
    write_ct_series(image, tmp_path / "ct", pixel_spacing=(1.0, 1.0), slice_thickness=2.0)
    series = read_series(tmp_path / "ct")
    node_labels = _boxes()
    outputs = write_outputs(node_labels, series, tmp_path / "node", kind="both")
    seg = next(p for p in outputs if p.name.startswith("SEG"))
    own = next(p for p in outputs if p.name.startswith("RS"))
    masks = read_seg_masks(seg, series)
    for value in (1, 2, 3):
        assert np.array_equal(masks[value], node_labels == value), value
    corrected = write_rtstruct(_boxes(vacbag_rows=(6, 20)), series, tmp_path / "corrected.dcm")
    from_seg = compare_structure_sets(seg, tmp_path / "corrected.dcm", series)
    from_rt = compare_structure_sets(own, tmp_path / "corrected.dcm", series)
    assert corrected.Modality == "RTSTRUCT"
    assert np.array_equal(from_seg.node_labels, node_labels)
    seg_rois = {roi.roi: roi.as_dict() for roi in from_seg.measure.rois}
    assert seg_rois == {roi.roi: roi.as_dict() for roi in from_rt.measure.rois}
    assert seg_rois["Vacbag"]["dice"] < 1.0 and seg_rois["Vacbag"]["added_path_mm"] > 0
    assert seg_rois["Couch"]["dice"] == 1.0 and seg_rois["Couch"]["added_path_mm"] == 0.0


def test_a_seg_of_another_series_is_refused_by_name(tmp_path):
    from vacseg_monai.dicom.outputs import write_outputs
    from vacseg_monai.dicom.series import read_series
    from vacseg_monai.dicom.seg import read_seg_masks
    from vacseg_monai.dicom.synthetic import write_ct_series

    image = np.full((40, 40, 6), -1000, np.int16)
    write_ct_series(image, tmp_path / "a")
    write_ct_series(image, tmp_path / "b")
    first, other = read_series(tmp_path / "a"), read_series(tmp_path / "b")
    seg = write_outputs(_boxes(), first, tmp_path / "out", kind="seg")[0]
    with pytest.raises(ValueError, match=rf"{seg.name}: the segmentation references none of the instances of series "
                                         rf"{other.series_instance_uid}"):
        read_seg_masks(seg, other)
