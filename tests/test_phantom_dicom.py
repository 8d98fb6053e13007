"""Tests for writing phantoms as DICOM CT + ground-truth RTSTRUCT (vacseg_monai.dicom.phantom_dicom)."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess

import numpy as np
import pydicom
import pytest

from vacseg_monai.dicom.phantom_dicom import generate_dicom_dataset, phantom_patient_attributes, write_phantom_dicom
from vacseg_monai.dicom.rtstruct import RTSTRUCT_SOP_CLASS_UID, read_rtstruct
from vacseg_monai.dicom.series import read_series
from vacseg_monai.labels import LABELS
from vacseg_monai.phantom import Phantom, generate_phantom

N_SLICES = 16
TOOL_TIMEOUT_S = 120
VET_ATTRIBUTES = {
    "PatientName": lambda p: p.patient_name,
    "PatientID": lambda p: p.patient_id,
    "PatientSex": lambda p: p.sex,
    "PatientSpeciesDescription": lambda p: p.species_description,
    "PatientBreedDescription": lambda p: p.breed_description,
    "PatientSexNeutered": lambda p: p.neutered,
    "ResponsiblePerson": lambda p: p.responsible_person,
    "ResponsiblePersonRole": lambda p: p.responsible_person_role,
    "ResponsibleOrganization": lambda p: p.responsible_organization,
}


def cropped_phantom(seed: int, size: int = 128, n_slices: int = N_SLICES) -> Phantom:
    """A phantom cut to ``n_slices`` slices around the end of the vacuum bag (all labels present)."""
    phantom = generate_phantom(seed, size=size)
    start, stop = phantom.bag_slices
    end = stop if start == 0 else start
    first = int(np.clip(end - n_slices // 2, 0, phantom.n_slices - n_slices))
    cut = slice(first, first + n_slices)
    return dataclasses.replace(
        phantom, image=phantom.image[:, :, cut], labels=phantom.labels[:, :, cut], tissues=phantom.tissues[:, :, cut]
    )


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    phantom = cropped_phantom(3)
    out = tmp_path_factory.mktemp("phantom_dicom")
    return phantom, write_phantom_dicom(phantom, out, orientation="HFS"), out


def test_layout_and_ct_round_trip(written):
    phantom, result, out = written
    assert result.patient_dir == out / phantom.patient_id
    assert result.ct_dir == result.patient_dir / "CT"
    assert result.rtstruct_path.parent == result.patient_dir
    assert result.rtstruct_path.name.startswith("RS.") and result.rtstruct_path.suffix == ".dcm"
    assert sorted(result.ct_dir.iterdir()) == sorted(result.ct_files)
    assert len(result.ct_files) == N_SLICES
    series = read_series(result.ct_dir)
    np.testing.assert_array_equal(series.volume[0].numpy(), phantom.image)
    assert series.pixel_spacing == pytest.approx(phantom.pixel_spacing)
    assert series.slice_spacing == pytest.approx(phantom.slice_thickness_mm)
    assert series.datasets[0].PatientPosition == "HFS"


def test_rtstruct_is_the_truth(written):
    phantom, result, _ = written
    series = read_series(result.ct_dir)
    labels = read_rtstruct(result.rtstruct_path, series)
    for label in LABELS:
        truth = phantom.labels == label.value
        assert truth.sum() > 100, f"cropped phantom lacks {label.name}"
        assert dice(labels == label.value, truth) >= 0.99, label.name
    rs = pydicom.dcmread(result.rtstruct_path)
    assert rs.SOPClassUID == RTSTRUCT_SOP_CLASS_UID
    assert [roi.ROIName for roi in rs.StructureSetROISequence] == [label.name for label in LABELS]
    assert rs.FrameOfReferenceUID == series.frame_of_reference_uid
    referenced = rs.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == series.series_instance_uid


def test_veterinary_attributes_in_ct_and_rtstruct(written):
    phantom, result, _ = written
    ct = pydicom.dcmread(result.ct_files[0], stop_before_pixels=True)
    rs = pydicom.dcmread(result.rtstruct_path)
    for keyword, expected in VET_ATTRIBUTES.items():
        assert str(ct.data_element(keyword).value) == expected(phantom), keyword
        assert str(rs.data_element(keyword).value) == expected(phantom), keyword
    for ds in (ct, rs):
        assert float(ds.PatientWeight) == pytest.approx(phantom.weight_kg)
        assert ds.PatientSpeciesCodeSequence[0].CodeValue == "448771007"
        assert "PatientBreedCodeSequence" in ds and len(ds.PatientBreedCodeSequence) == 0
    assert phantom_patient_attributes(phantom)["PatientID"] == phantom.patient_id


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) not installed")
def test_ct_and_rtstruct_pass_dciodvfy(written):
    _, result, _ = written
    for path in (result.ct_files[0], result.rtstruct_path):
        run = subprocess.run(["dciodvfy", "-new", str(path)], capture_output=True, text=True, timeout=TOOL_TIMEOUT_S)
        errors = [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]
        assert not errors, f"{path.name}: {errors}"


def test_auto_orientation_follows_scan_direction(tmp_path):
    phantom = cropped_phantom(1, size=64, n_slices=4)
    result = write_phantom_dicom(phantom, tmp_path, orientation="auto", root_uid="1.2.826.0.1.3680043.8.498.77.")
    expected = "FFS" if phantom.extra["cranial_first"] else "HFS"
    ct = pydicom.dcmread(result.ct_files[0], stop_before_pixels=True)
    assert ct.PatientPosition == expected
    assert ct.SeriesInstanceUID.startswith("1.2.826.0.1.3680043.8.498.77.")
    np.testing.assert_array_equal(read_series(result.ct_dir).volume[0].numpy(), phantom.image)


def test_bad_arguments(tmp_path):
    phantom = cropped_phantom(1, size=64, n_slices=4)
    with pytest.raises(ValueError, match="orientation"):
        write_phantom_dicom(phantom, tmp_path, orientation="SUPINE")
    with pytest.raises(ValueError, match="root_uid"):
        write_phantom_dicom(phantom, tmp_path, root_uid="1.2.3")
    broken = dataclasses.replace(phantom, labels=phantom.labels[:, :, :2])
    with pytest.raises(ValueError, match="phantom_001"):
        write_phantom_dicom(broken, tmp_path)


def test_generate_dicom_dataset(tmp_path):
    written = generate_dicom_dataset(tmp_path, n_patients=2, seed=5, size=32, progress=False)
    assert [w.patient_dir.name for w in written] == ["phantom_005", "phantom_006"]
    for w in written:
        phantom = generate_phantom(int(w.patient_dir.name[-3:]), size=32)
        assert len(w.ct_files) == phantom.n_slices
        ct = pydicom.dcmread(w.ct_files[0], stop_before_pixels=True)
        assert ct.PatientPosition == ("FFS" if phantom.extra["cranial_first"] else "HFS")
        assert w.rtstruct_path.is_file()
    with pytest.raises(ValueError, match="n_patients"):
        generate_dicom_dataset(tmp_path, n_patients=0)


def test_make_test_dataset_cli_writes_dicom_beside_npy(tmp_path):
    """`make_test_dataset.py --dicom` writes the same patient as npy layout and as CT + truth RTSTRUCT."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "make_test_dataset.py"
    spec = importlib.util.spec_from_file_location("make_test_dataset", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    npy_dir, dicom_dir = tmp_path / "npy", tmp_path / "dicom"
    assert module.main(["--out", str(npy_dir), "--patients", "1", "--size", "64", "--dicom", str(dicom_dir), "-q"]) == 0

    (patient,) = sorted(p for p in npy_dir.iterdir() if p.is_dir())
    masks = sorted((patient / "mask").glob("*.npy"), key=lambda p: int(p.stem))
    series = read_series(dicom_dir / patient.name / "CT")
    assert series.shape == (64, 64, len(masks))
    (rtstruct_path,) = sorted((dicom_dir / patient.name).glob("RS.*.dcm"))
    truth = np.stack([np.load(m)[0] for m in masks], axis=-1)
    read_back = read_rtstruct(rtstruct_path, series)
    # The npy layout is in slice order; the DICOM series may run the other way along the normal.
    if not np.array_equal(read_back, truth):
        truth = truth[:, :, ::-1]
    for label in LABELS:
        a, b = read_back == label.value, truth == label.value
        assert 2 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1) >= 0.98, label.name
