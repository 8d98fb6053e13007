"""The simulated clinic: its conventions built from the phantom's truth, and the whole loop on a small scale.

The loop test runs :func:`vacseg_monai.clinic.run_clinic_loop`, the code path of
``benchmarks/clinic_loop.py``: real nodes serving the shipped model and then the fine-tuned
weights, DCMTK storescu for the series and the corrections, ``monai.bundle run training`` with
train.json + finetune.json. Small: 256 x 256 series of 6 slices, 2 training patients, 1 epoch.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import BUNDLE, dice
from scipy import ndimage
from test_service_support import needs_dcmtk

from vacseg_monai.clinic import ClinicConventions, clinic_case, edit_summary, run_clinic_loop
from vacseg_monai.datasets import discover_patients, load_slice
from vacseg_monai.paths import model_version
from vacseg_monai.phantom import Tissue, generate_dataset, generate_phantom

VACBAG, COUCH, BODY = 1, 2, 3


def test_clinic_truth_adds_the_mattress_to_the_couch_and_a_margin_to_the_vacbag():
    conventions = ClinicConventions()
    case = clinic_case(2000, size=256, conventions=conventions)
    original = generate_phantom(2000, size=256, version=1)
    clinic, project, tissues = case.phantom.labels, case.project_labels, case.phantom.tissues
    spacing = case.phantom.pixel_spacing
    # Lifted onto the mattress, the patient keeps every voxel of its project truth.
    for value in (VACBAG, COUCH, BODY):
        assert int((project == value).sum()) == int((original.labels == value).sum()), value
    lift = int(round(conventions.mattress_mm / spacing[0]))
    top = int(np.flatnonzero((original.labels == COUCH).any(axis=(1, 2)))[0])
    idx = np.arange(256) - 127.5
    inside = (idx[:, None] ** 2 + idx[None, :] ** 2 <= 128**2)[: top - lift]  # the reconstruction circle
    np.testing.assert_array_equal(case.phantom.image[: top - lift][inside], original.image[lift:top][inside])
    # The mattress: on the couch top, Couch for the clinic, background for the project.
    mattress = tissues == Tissue.PAD
    assert mattress.any() and np.flatnonzero(mattress.any(axis=(1, 2))).tolist() == list(range(top - lift, top))
    assert (clinic[mattress] == COUCH).all() and (project[mattress] == 0).all()
    assert np.abs(case.phantom.image[mattress].mean() - conventions.mattress_hu) < 10
    # The Vacbag: grown by the margin into the air only; Body untouched.
    np.testing.assert_array_equal(clinic == BODY, project == BODY)
    grown = (clinic == VACBAG) & (project != VACBAG)
    assert (project[grown] == 0).all() and ((project == VACBAG) <= (clinic == VACBAG)).all()
    for k in np.flatnonzero((project == VACBAG).any(axis=(0, 1)))[::10]:
        distance = ndimage.distance_transform_edt(project[:, :, k] != VACBAG, sampling=spacing)
        free = (project[:, :, k] == 0) & ~mattress[:, :, k]
        np.testing.assert_array_equal(grown[:, :, k], free & (distance <= conventions.vacbag_margin_mm))
    assert grown.sum() > 0.05 * (project == VACBAG).sum()


@needs_dcmtk
def test_clinic_loop_small(tmp_path):
    generate_dataset(tmp_path / "replay", 1, seed=0, size=256, progress=False, version=1)
    result = run_clinic_loop(tmp_path / "loop", [2000, 2001], [3000], size=256, n_slices=6,
                             replay_dir=tmp_path / "replay", replay_share=0.2,
                             finetune_overrides={"max_epochs": "1", "k_folds": "2", "num_workers": "0"})
    shipped = model_version(BUNDLE, BUNDLE / "models" / "model.pt")
    tuned = model_version(BUNDLE, result.finetune.ckpt_path)
    assert tuned != shipped and result.finetune.ckpt_path.is_relative_to(tmp_path)

    # The shipped model's contours, measured against the physicist's: the clinic's habits show as edits.
    assert [r["patient"] for r in result.train_round] == ["clinic_2000", "clinic_2001"]
    for case in result.train_round:
        assert case["model_version"] == shipped and case["entry"]["status"] == "measured"
        rois = {roi["roi"]: roi for roi in case["entry"]["rois"]}
        vacbag, couch = rois["Vacbag"], rois["Couch"]  # the margin adds to the bag; the mattress is couch
        assert vacbag["volume_change_cm3"] > 0 and vacbag["added_path_mm"] > 50 and vacbag["surface_dice"] < 0.99
        assert couch["volume_change_cm3"] > 0 and couch["added_path_mm"] > 50 and couch["surface_dice"] < 0.95
    summary = edit_summary(result.train_round)
    assert summary["all"]["added_path_mm"] == pytest.approx(
        sum(roi["added_path_mm"] for case in result.train_round for roi in case["entry"]["rois"]))

    # The corrections became the training data: the clinic's truth, every label annotated.
    assert [r.annotated_labels for r in result.training_data.converted] == [["Vacbag", "Couch", "Body"]] * 2
    patients = discover_patients(tmp_path / "loop" / "data")
    assert len(patients) == 2 and not any(p.partial for p in patients)
    truth = clinic_case(2000, size=256, n_slices=6).phantom.labels
    mask = np.stack([load_slice(f)[0] for f in patients[0].label_files], axis=-1)
    assert patients[0].patient_id.startswith("clinic_2000_")
    for value in (VACBAG, COUCH, BODY):
        assert dice(mask == value, truth == value) > 0.97, value

    # The new series went through a node serving the shipped weights and one serving the tuned ones.
    assert [r["model_version"] for r in result.eval_baseline] == [shipped]
    assert [r["model_version"] for r in result.eval_tuned] == [tuned]
    assert result.eval_tuned[0]["entry"]["status"] == "measured"
    assert result.eval_baseline[0]["job_id"] != result.eval_tuned[0]["job_id"]
    assert 0 < result.finetune.seconds < 240
