"""Tests for the synthetic CT series writer (vacseg_monai.dicom.synthetic)."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from vacseg_monai.dicom.geometry import PatientPosition, slice_normal
from vacseg_monai.dicom.synthetic import DEFAULT_ROOT_UID, edit_instances, write_ct_series

ORIENTATIONS = [p.value for p in PatientPosition]


@pytest.fixture(autouse=True)
def _strict_pydicom():
    """Fail on invalid DICOM values while these tests write files."""
    old = pydicom.config.settings.writing_validation_mode
    pydicom.config.settings.writing_validation_mode = pydicom.config.RAISE
    yield
    pydicom.config.settings.writing_validation_mode = old


def _image(rows: int = 64, cols: int = 64, n: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1024, 3000, (rows, cols, n)).astype(np.int16)


def _dciodvfy_errors(path) -> list[str]:
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60, check=False)
    lines = (result.stdout + result.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_tags_and_geometry_per_orientation(tmp_path, orientation):
    img = _image(n=4)
    paths = write_ct_series(img, tmp_path, orientation=orientation, pixel_spacing=(0.7, 0.9), slice_thickness=2.5)
    assert len(paths) == 4
    datasets = [pydicom.dcmread(p) for p in paths]
    iop = [float(v) for v in datasets[0].ImageOrientationPatient]
    row_dir, col_dir = np.array(iop[:3]), np.array(iop[3:])
    # The image "down" direction points at the couch: posterior (+y) supine, anterior prone,
    # the patient's left (+x) when lying on the left side, right when on the right side.
    couch = {"S": [0, 1, 0], "P": [0, -1, 0], "DL": [1, 0, 0], "DR": [-1, 0, 0]}[orientation[2:]]
    np.testing.assert_array_equal(col_dir, couch)
    # Head-first slices are ordered towards the head (+z), feet-first towards the feet.
    n = slice_normal(iop)
    np.testing.assert_array_equal(n, [0, 0, 1 if orientation.startswith("HF") else -1])
    assert np.linalg.det(np.stack([row_dir, col_dir, n])) == pytest.approx(1.0)
    for k, ds in enumerate(datasets):
        assert ds.PatientPosition == orientation
        assert ds.SOPClassUID == CTImageStorage
        assert ds.InstanceNumber == k + 1
        assert [float(v) for v in ds.PixelSpacing] == [0.7, 0.9]
        assert float(ds.SliceThickness) == 2.5
        ipp = np.array([float(v) for v in ds.ImagePositionPatient])
        assert ipp @ n == pytest.approx(datasets[0].ImagePositionPatient[2] * n[2] + 2.5 * k)
        assert float(ds.SliceLocation) == pytest.approx(ipp[2])
        # Same displayed image whatever the orientation.
        np.testing.assert_array_equal(ds.pixel_array.astype(np.int32) - 1024, img[:, :, k])
    # Default table position 0 for slice 0 with the image centred on the z axis.
    centre = np.array([float(v) for v in datasets[0].ImagePositionPatient]) + row_dir * 0.9 * 63 / 2 + col_dir * 0.7 * 63 / 2
    np.testing.assert_allclose(centre, [0, 0, 0], atol=1e-6)


def test_known_iop_values():
    assert PatientPosition.HFS.iop == (1, 0, 0, 0, 1, 0)
    assert PatientPosition.FFS.iop == (-1, 0, 0, 0, 1, 0)
    assert PatientPosition.HFP.iop == (-1, 0, 0, 0, -1, 0)
    assert PatientPosition.FFP.iop == (1, 0, 0, 0, -1, 0)
    assert PatientPosition.HFDL.iop == (0, -1, 0, 1, 0, 0)
    assert PatientPosition.HFDR.iop == (0, 1, 0, -1, 0, 0)
    assert PatientPosition.FFDL.iop == (0, 1, 0, 1, 0, 0)
    assert PatientPosition.FFDR.iop == (0, -1, 0, -1, 0, 0)


def test_canine_patient_and_uids(tmp_path):
    paths = write_ct_series(
        _image(n=2),
        tmp_path,
        patient={"PatientName": "Dog^Bella", "PatientID": "D42", "PatientSexNeutered": "UNALTERED"},
        study_instance_uid="1.2.3.4",
        series_instance_uid="1.2.3.5",
        frame_of_reference_uid="1.2.3.6",
    )
    ds = pydicom.dcmread(paths[1])
    assert ds.PatientName == "Dog^Bella"
    assert ds.PatientID == "D42"
    assert ds.PatientSexNeutered == "UNALTERED"
    assert ds.PatientSpeciesDescription == "Canis lupus familiaris"
    assert ds.PatientSpeciesCodeSequence[0].CodeValue == "448771007"
    assert ds.PatientBreedCodeSequence[0].CodeValue == "62137007"
    assert ds.PatientBreedCodeSequence[0].CodingSchemeDesignator == "SCT"
    assert ds.BreedRegistrationSequence[0].BreedRegistryCodeSequence[0].CodeValue == "109200"
    assert ds.ResponsiblePerson == "Owner^Jane"
    assert ds.ResponsiblePersonRole == "OWNER"
    assert (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID) == ("1.2.3.4", "1.2.3.5", "1.2.3.6")
    assert ds.SOPInstanceUID.startswith(DEFAULT_ROOT_UID)
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert paths[1].name == f"CT.{ds.SOPInstanceUID}.dcm"
    other = write_ct_series(_image(n=2), tmp_path / "b", root_uid="1.2.826.0.1.3680043.10.999.")
    assert pydicom.dcmread(other[0]).SeriesInstanceUID.startswith("1.2.826.0.1.3680043.10.999.")


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools dciodvfy not installed")
@pytest.mark.parametrize(
    ("orientation", "syntax", "signed"),
    [("HFS", ExplicitVRLittleEndian, True), ("FFDL", ExplicitVRLittleEndian, False), ("HFP", RLELossless, True)],
)
def test_dciodvfy_reports_no_errors(tmp_path, orientation, syntax, signed):
    paths = write_ct_series(_image(n=2), tmp_path, orientation=orientation, transfer_syntax=syntax, signed=signed)
    assert _dciodvfy_errors(paths[0]) == []
    # The checker does flag a broken file, so an empty list means something.
    edit_instances(paths[:1], lambda i, ds: (delattr(ds, "ImagePositionPatient"), ds)[1])
    assert any("ImagePositionPatient" in line for line in _dciodvfy_errors(paths[0]))


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless, JPEGLosslessSV1])
def test_compressed_syntaxes(tmp_path, syntax):
    if syntax == JPEGLosslessSV1 and shutil.which("dcmcjpeg") is None:
        pytest.skip("DCMTK dcmcjpeg not installed")
    img = _image(n=2)
    paths = write_ct_series(img, tmp_path, transfer_syntax=syntax)
    for k, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == syntax
        assert ds.InstanceNumber == k + 1
        np.testing.assert_array_equal(ds.pixel_array.astype(np.int32) - 1024, img[:, :, k])


def test_random_names_and_rescale(tmp_path):
    img = _image(n=6)
    paths = write_ct_series(img, tmp_path, file_names="random", rescale_intercept=0.0, signed=True, seed=3)
    assert len({p.name for p in paths}) == 6
    assert all(p.suffix == "" and len(p.name) == 16 for p in paths)
    assert [p.name for p in paths] != sorted(p.name for p in paths)
    ds = pydicom.dcmread(paths[0])
    assert float(ds.RescaleIntercept) == 0.0
    assert ds.PixelRepresentation == 1
    np.testing.assert_array_equal(ds.pixel_array, img[:, :, 0])


def test_first_position_vector(tmp_path):
    paths = write_ct_series(_image(n=3), tmp_path, orientation="FFS", first_position=(10.0, -20.0, 300.0))
    ipps = [[float(v) for v in pydicom.dcmread(p).ImagePositionPatient] for p in paths]
    assert ipps == [[10.0, -20.0, 300.0], [10.0, -20.0, 298.0], [10.0, -20.0, 296.0]]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"orientation": "XYZ"}, "`orientation` must be one of"),
        ({"pixel_spacing": (0.0, 1.0)}, "`pixel_spacing`"),
        ({"slice_thickness": -1}, "`slice_thickness`"),
        ({"file_names": "index"}, "`file_names`"),
        ({"rescale_intercept": -31000.0}, "does not fit int16"),
        ({"transfer_syntax": "1.2.840.10008.1.2.4.100"}, "Cannot encode transfer syntax"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        write_ct_series(_image(n=2), tmp_path, **kwargs)
    with pytest.raises(ValueError, match="must be 3D"):
        write_ct_series(np.zeros((4, 4)), tmp_path)


def test_edit_instances_deletes_and_rewrites(tmp_path):
    paths = write_ct_series(_image(n=4), tmp_path)

    def edit(i, ds):
        if i == 1:
            return None
        ds.SeriesDescription = f"edited {i}"
        return ds

    kept = edit_instances(paths, edit)
    assert kept == [paths[0], paths[2], paths[3]]
    assert not paths[1].exists()
    assert pydicom.dcmread(paths[3]).SeriesDescription == "edited 3"
