"""Quality score: each signal flags what it should, names the slices, and leaves a clean case alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vacseg_monai.quality import QualityConfig, assess_quality, slice_ranges

SPACING = (1.0, 1.0, 2.0)
N = 8


def _case() -> tuple[np.ndarray, np.ndarray]:
    """A 256 x 256 x 8 CT: air, a body, a bead bag under and beside it, a couch below (label, HU)."""
    rows, cols = np.mgrid[:256, :256]
    body = ((rows - 110) / 50.0) ** 2 + ((cols - 128) / 70.0) ** 2 <= 1
    bag = (((rows - 125) / 60.0) ** 2 + ((cols - 128) / 90.0) ** 2 <= 1) & ~body & (rows > 110) & (rows < 180)
    couch = (rows >= 180) & (rows < 192) & (cols > 30) & (cols < 226)
    labels2d = np.zeros((256, 256), np.uint8)
    labels2d[bag], labels2d[couch], labels2d[body] = 1, 2, 3
    hu2d = np.full((256, 256), -1000.0, np.float32)
    hu2d[bag], hu2d[couch], hu2d[body] = -850.0, -300.0, 40.0
    return np.repeat(labels2d[..., None], N, 2), np.repeat(hu2d[..., None], N, 2)


def _confident_logits(labels: np.ndarray) -> torch.Tensor:
    low = torch.from_numpy(labels[::2, ::2].astype(np.int64))
    return torch.nn.functional.one_hot(low, 4).permute(3, 0, 1, 2).float() * 10.0


def test_slice_ranges():
    assert slice_ranges([3, 4, 5, 9, 11, 12]) == "3-5, 9, 11-12"
    assert slice_ranges([0, 1, 7], one_based=True) == "1-2, 8"
    assert slice_ranges([]) == ""


def test_a_clean_case_scores_one_and_flags_nothing():
    labels, hu = _case()
    report = assess_quality(_confident_logits(labels), labels, hu, SPACING)
    assert report.flagged == [] and report.input_reasons == []
    assert all(s.score == 1.0 and s.reasons == [] for s in report.structures.values())
    bag_cm3 = np.count_nonzero(labels == 1) * 2.0 / 1000
    assert report.structures["Vacbag"].volume_cm3 == pytest.approx(bag_cm3, abs=1e-3)
    assert report.note("Vacbag") == "QA 1.00 ok"


def test_uncertain_slices_are_flagged_and_named():
    labels, hu = _case()
    logits = _confident_logits(labels)
    bag = torch.from_numpy(labels[::2, ::2] == 1)
    for s in (3, 4, 5):  # Vacbag and background nearly tied inside the bag on slices 4-6 (1-based)
        logits[0, ..., s][bag[..., s]] = 9.9
    report = assess_quality(logits, labels, hu, SPACING)
    bag_q = report.structures["Vacbag"]
    assert report.flagged == ["Vacbag"]
    assert bag_q.flagged_slices == [3, 4, 5]
    assert bag_q.uncertain_fraction == pytest.approx(3 / 8, abs=0.01)
    assert bag_q.score == pytest.approx(1 - (3 / 8) / 0.5, abs=0.02)
    assert bag_q.reasons == ["38% of its voxels are uncertain; most on slices 4-6"]
    assert report.note("Vacbag") == f"QA {bag_q.score:.2f} FLAGGED sl 4-6"
    assert report.structures["Body"].score == 1.0


def test_wrong_rescale_flags_every_structure_with_the_reason():
    labels, hu = _case()
    report = assess_quality(_confident_logits(labels), labels, hu + 1024.0, SPACING)
    assert sorted(report.flagged) == ["Body", "Couch", "Vacbag"]
    assert report.input_reasons == ["air reads 24 HU (expected -1100 to -850): check the rescale"]
    assert "Vacbag mean 174 HU is outside -1000 to -450 HU (not bead foam)" in report.structures["Vacbag"].reasons


def test_couch_above_or_beside_the_body_flags_every_structure():
    labels, hu = _case()
    flipped_labels, flipped_hu = labels[::-1].copy(), hu[::-1].copy()
    report = assess_quality(_confident_logits(flipped_labels), flipped_labels, flipped_hu, SPACING)
    above = "the Couch lies above the body on slices 1-8: is the image flipped?"
    # The network's trained orientation is broken: every structure is in doubt, not the couch alone.
    assert sorted(report.flagged) == ["Body", "Couch", "Vacbag"]
    assert report.structures["Couch"].reasons == [above]
    assert above in report.structures["Body"].reasons and above in report.structures["Vacbag"].reasons
    turned_labels, turned_hu = labels.transpose(1, 0, 2).copy(), hu.transpose(1, 0, 2).copy()
    report = assess_quality(_confident_logits(turned_labels), turned_labels, turned_hu, SPACING)
    assert sorted(report.flagged) == ["Body", "Couch", "Vacbag"]
    assert report.structures["Couch"].reasons == ["the Couch lies beside the body on slices 1-8: is the image turned?"]


def test_a_couch_narrower_than_the_body_flags_every_structure():
    labels, hu = _case()
    labels[(labels == 2) & (np.arange(256)[None, :, None] % 256 > 100)] = 0  # couch 70 columns, body 141
    report = assess_quality(_confident_logits(labels), labels, hu, SPACING)
    assert sorted(report.flagged) == ["Body", "Couch", "Vacbag"]
    assert report.structures["Couch"].reasons == [
        "the Couch is narrower than 0.75 x the body on slices 1-8: is the image turned, or is it no couch?"]
    assert assess_quality(_confident_logits(labels), labels, hu, SPACING,
                          QualityConfig(couch_body_width_ratio=0.4)).flagged == []


def test_no_couch_flags_every_structure():
    labels, hu = _case()
    labels[labels == 2] = 0
    report = assess_quality(_confident_logits(labels), labels, hu, SPACING)
    assert sorted(report.flagged) == ["Body", "Couch", "Vacbag"]
    assert report.structures["Body"].reasons == [
        "no Couch was found (a planning CT has one under the patient): is this the right input?"]


def test_body_cut_by_the_field_of_view_flags_what_lies_around_it():
    labels, hu = _case()
    cut_labels, cut_hu = labels.copy(), hu.copy()
    cut_hu[:, :90, 6:] = -3024.0  # padding outside the reconstruction circle reaches into the body
    cut_labels[:, :90, 6:] = 0
    report = assess_quality(_confident_logits(cut_labels), cut_labels, cut_hu, SPACING)
    body = report.structures["Body"]
    assert body.flagged and body.flagged_slices == [6, 7]
    assert body.reasons == ["the body is cut by the edge of the field of view on slices 7-8"]
    assert report.structures["Couch"].reasons == [
        "the field of view cuts the body on slices 7-8: what lies around it is likely cut too"]
    assert sorted(report.flagged) == ["Body", "Couch", "Vacbag"]


def test_a_structure_not_drawn_is_not_judged_by_leftover_uncertainty():
    labels, hu = _case()
    labels[labels == 1] = 0  # no Vacbag in the final label map ...
    logits = _confident_logits(labels)
    logits[1, 100:104, 10:14, :] = 10.0  # ... but a few Vacbag pixels tied with background in the logits
    report = assess_quality(logits, labels, hu, SPACING)
    bag = report.structures["Vacbag"]
    assert bag.uncertain_fraction == pytest.approx(1.0) and bag.volume_cm3 == 0.0
    assert (bag.score, bag.flagged, bag.reasons) == (1.0, False, [])


def test_vacbag_far_from_the_body_is_flagged():
    labels, hu = _case()
    labels[labels == 3] = 0  # no body on any slice: every bag slice is far from it
    report = assess_quality(_confident_logits(labels), labels, hu, SPACING)
    assert "the Vacbag lies more than 20 mm from the body on slices 1-8" in report.structures["Vacbag"].reasons
    assert report.structures["Body"].reasons == ["no Body was found"]


def test_input_outside_the_trained_ranges():
    labels, hu = _case()
    report = assess_quality(_confident_logits(labels), labels, hu, (3.0, 3.0, 8.0))
    assert report.input_reasons == [
        "pixel spacing 3.00 mm is outside the trained 0.2-2.5 mm",
        "slice spacing 8.00 mm is outside the trained 0.4-6 mm",
        "field of view 768.00 mm is outside the trained 150-650 mm",
    ]
    assert report.min_score == 0.25


def test_config_is_checked():
    with pytest.raises(ValueError, match=r"Unknown quality settings \['treshold'\]"):
        QualityConfig.from_mapping({"treshold": 0.4})
    with pytest.raises(ValueError, match=r"`threshold` must be in \(0, 1\], got 1.5"):
        QualityConfig(threshold=1.5)
    with pytest.raises(ValueError, match=r"`min_structure_cm3` must be >= 0, got -1"):
        QualityConfig(min_structure_cm3=-1)
    with pytest.raises(ValueError, match=r"`vacbag_hu` must be a \(low, high\) range"):
        QualityConfig.from_mapping({"vacbag_hu": [-400, -900]})
    assert QualityConfig.from_mapping({"vacbag_hu": [-990, -500]}).vacbag_hu == (-990, -500)
    labels, hu = _case()
    with pytest.raises(ValueError, match=r"`logits` must be \(C, h, w, 8\)"):
        assess_quality(_confident_logits(labels)[..., :4], labels, hu, SPACING)
