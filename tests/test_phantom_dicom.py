"""Tests for writing phantoms as DICOM CT + ground-truth RTSTRUCT (vacseg_monai.dicom.phantom_dicom)."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess

import numpy as np
import pydicom
import pytest

from conftest import dice
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


def cropped_phantom(seed: int, size: int = 128, n_slices: int = N_SLICES, version: int = 2) -> Phantom:
    """A phantom cut to ``n_slices`` slices around the end of the vacuum bag (all labels present)."""
    phantom = generate_phantom(seed, size=size, version=version)
    start, stop = phantom.bag_slices
    end = start if start > 0 else stop
    first = int(np.clip(end - n_slices // 2, 0, phantom.n_slices - n_slices))
    cut = slice(first, first + n_slices)
    return dataclasses.replace(
        phantom, image=phantom.image[:, :, cut], labels=phantom.labels[:, :, cut], tissues=phantom.tissues[:, :, cut]
    )



def first_v2_seed(wanted, seeds=range(100)) -> int:
    """The first seed whose (32 x 32) v2 phantom satisfies ``wanted``; the scene does not depend on the size."""
    return next(s for s in seeds if wanted(generate_phantom(s, size=32, version=2)))


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A v2 dog in a bag whose scanner pads with -3024 HU (stored -2000 with intercept -1024)."""
    phantom = cropped_phantom(first_v2_seed(lambda p: p.species_description == "Canine" and p.has_bag
                                            and p.padding_hu == -3024))
    assert phantom.species_description == "Canine" and (phantom.padding_hu, phantom.rescale_intercept) == (-3024, -1024)
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
    with pytest.raises(ValueError, match="without leading zeros.*got '1.2.03.'"):  # the output layer's rule
        write_phantom_dicom(phantom, tmp_path, root_uid="1.2.03.")
    broken = dataclasses.replace(phantom, labels=phantom.labels[:, :, :2])
    with pytest.raises(ValueError, match="phantom_001"):
        write_phantom_dicom(broken, tmp_path)


def test_generate_dicom_dataset(tmp_path):
    written = generate_dicom_dataset(tmp_path, n_patients=2, seed=5, size=32, progress=False)
    assert [w.patient_dir.name for w in written] == ["phantom_005", "phantom_006"]
    for w in written:
        phantom = generate_phantom(int(w.patient_dir.name[-3:]), size=32, version=2)
        assert len(w.ct_files) == phantom.n_slices
        ct = pydicom.dcmread(w.ct_files[0], stop_before_pixels=True)
        assert ct.PatientPosition == ("FFS" if phantom.extra["cranial_first"] else "HFS")
        assert w.rtstruct_path.is_file()
    with pytest.raises(ValueError, match="n_patients"):
        generate_dicom_dataset(tmp_path, n_patients=0)
    (v1,) = generate_dicom_dataset(tmp_path / "v1", n_patients=1, seed=5, size=32, progress=False, version=1)
    np.testing.assert_array_equal(read_series(v1.ct_dir).volume[0].numpy(),
                                  generate_phantom(5, size=32, version=1).image)


@pytest.mark.parametrize(("intercept", "padding"), [(0.0, -2000), (-1024.0, -3024), (-1024.0, -1024), (0.0, -1024)])
def test_rescale_intercept_and_padding_round_trip(tmp_path, intercept, padding):
    seed = first_v2_seed(lambda p: (p.rescale_intercept, p.padding_hu) == (intercept, padding))
    phantom = cropped_phantom(seed, size=64, n_slices=3)
    assert (phantom.rescale_intercept, phantom.padding_hu) == (intercept, padding)
    result = write_phantom_dicom(phantom, tmp_path)
    np.testing.assert_array_equal(read_series(result.ct_dir).volume[0].numpy(), phantom.image)
    ds = pydicom.dcmread(result.ct_files[0])
    assert float(ds.RescaleIntercept) == intercept and float(ds.RescaleSlope) == 1.0
    stored = ds.pixel_array
    assert stored[0, 0] == padding - intercept  # a corner lies outside the reconstruction circle
    if padding == -1024:
        assert "PixelPaddingValue" not in ds
    else:
        assert ds.PixelPaddingValue == padding - intercept and ds["PixelPaddingValue"].VR == "SS"


def test_feline_species_code(tmp_path):
    phantom = cropped_phantom(first_v2_seed(lambda p: p.species_description == "Feline"), size=32, n_slices=2)
    assert phantom.species_description == "Feline"
    attributes = phantom_patient_attributes(phantom)
    assert attributes["PatientSpeciesCodeSequence"] == [("448169003", "SCT", "Felis catus")]
    ct = pydicom.dcmread(write_phantom_dicom(phantom, tmp_path).ct_files[0], stop_before_pixels=True)
    assert ct.PatientSpeciesCodeSequence[0].CodeValue == "448169003"
    assert ct.PatientSpeciesDescription == "Feline"


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
