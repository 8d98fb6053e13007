"""Tests for the CT series reader (vacseg_monai.dicom.series) and geometry helpers."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pydicom
import pytest
import torch
from pydicom.dataset import FileMetaDataset
from pydicom.uid import JPEG2000Lossless, JPEGLosslessSV1, JPEGLSLossless, MPEG2MPML, MRImageStorage, RLELossless

from vacseg_monai.dicom import geometry
from vacseg_monai.dicom.errors import (
    DicomSeriesError,
    DuplicateSliceError,
    GantryTiltError,
    InconsistentSeriesError,
    MissingSliceError,
    MissingTagError,
    MultipleSeriesError,
    NoSeriesError,
    UndecodablePixelDataError,
    UnreadableFileError,
)
from vacseg_monai.dicom.series import list_series, read_series
from vacseg_monai.dicom.synthetic import edit_instances, write_ct_series


@pytest.fixture(autouse=True)
def _strict_pydicom():
    """Fail on invalid DICOM values while these tests write files."""
    old = pydicom.config.settings.writing_validation_mode
    pydicom.config.settings.writing_validation_mode = pydicom.config.RAISE
    yield
    pydicom.config.settings.writing_validation_mode = old


def _image(rows: int = 64, cols: int = 64, n: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1024, 3000, (rows, cols, n)).astype(np.int16)


def _ipp(path) -> np.ndarray:
    return np.array([float(v) for v in pydicom.dcmread(path, stop_before_pixels=True).ImagePositionPatient])


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("orientation", ["HFS", "FFS", "HFP", "FFP", "HFDL", "FFDR"])
def test_round_trip_and_affine(tmp_path, orientation):
    img = _image(rows=40, cols=48, n=6)
    paths = write_ct_series(
        img, tmp_path, orientation=orientation, pixel_spacing=(0.7, 0.9), slice_thickness=2.5, first_position=-100.0
    )
    series = read_series(tmp_path)
    assert series.volume.shape == (1, 40, 48, 6)
    assert series.volume.dtype == torch.float32
    np.testing.assert_array_equal(series.volume[0].numpy(), img)
    assert series.files == paths
    assert series.shape == (40, 48, 6)
    assert series.pixel_spacing == (0.7, 0.9)
    assert series.slice_spacing == pytest.approx(2.5)
    assert series.sop_instance_uids == [pydicom.dcmread(p).SOPInstanceUID for p in paths]
    assert series.sop_class_uid == "1.2.840.10008.5.1.4.1.1.2"
    assert "PixelData" not in series.datasets[0]
    ds0 = pydicom.dcmread(paths[0], stop_before_pixels=True)
    assert series.series_instance_uid == ds0.SeriesInstanceUID
    assert series.study_instance_uid == ds0.StudyInstanceUID
    assert series.frame_of_reference_uid == ds0.FrameOfReferenceUID

    aff = series.affine_lps
    np.testing.assert_allclose(series.volume.affine.numpy(), np.diag([-1, -1, 1, 1]) @ aff)
    assert series.volume.affine.dtype == torch.float64
    iop = np.array([float(v) for v in ds0.ImageOrientationPatient])
    for k, path in enumerate(paths):
        ipp = _ipp(path)
        for r, c in [(0, 0), (39, 0), (0, 47), (17, 23)]:
            expected = ipp + r * 0.7 * iop[3:] + c * 0.9 * iop[:3]
            np.testing.assert_allclose(aff @ [r, c, k, 1], [*expected, 1], atol=1e-6)


def test_shuffled_names_reversed_instance_numbers_subfolders_and_junk(tmp_path):
    img = _image(n=8)
    paths = write_ct_series(img, tmp_path / "a" / "b", file_names="random", orientation="HFP")

    def scramble(i, ds):
        ds.InstanceNumber = 8 - i
        ds.SliceLocation = str(float((i * 37) % 8))
        return ds

    edit_instances(paths, scramble)
    (tmp_path / "README.txt").write_text("not dicom")
    (tmp_path / "a" / "empty.bin").write_bytes(b"")
    mr = write_ct_series(_image(n=1), tmp_path / "other")
    edit_instances(mr, lambda i, ds: _set_sop_class(ds, MRImageStorage))
    series = read_series(tmp_path)
    np.testing.assert_array_equal(series.volume[0].numpy(), img)
    assert series.files == paths


def test_files_without_preamble_or_file_meta(tmp_path):
    img = _image(rows=16, cols=16, n=3)
    for path in write_ct_series(img, tmp_path, file_names="random"):
        ds = pydicom.dcmread(path)
        ds.file_meta = FileMetaDataset()
        ds.preamble = None
        pydicom.dcmwrite(path, ds, implicit_vr=True, little_endian=True, enforce_file_format=False)
        assert path.read_bytes()[:2] == b"\x08\x00"
    np.testing.assert_array_equal(read_series(tmp_path).volume[0].numpy(), img)


def _set_sop_class(ds, uid):
    ds.SOPClassUID = uid
    ds.file_meta.MediaStorageSOPClassUID = uid
    return ds


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless, JPEGLosslessSV1])
def test_compressed_syntaxes_decode_identically(tmp_path, syntax):
    if syntax == JPEGLosslessSV1 and shutil.which("dcmcjpeg") is None:
        pytest.skip("DCMTK dcmcjpeg not installed")
    img = _image(n=3)
    write_ct_series(img, tmp_path, transfer_syntax=syntax, orientation="FFS")
    assert pydicom.dcmread(next(tmp_path.iterdir())).file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(read_series(tmp_path).volume[0].numpy(), img)


@pytest.mark.parametrize(
    ("intercept", "slope", "signed"), [(-1024.0, 1.0, False), (0.0, 1.0, True), (-1024.0, 0.5, True)]
)
def test_rescale_honoured(tmp_path, intercept, slope, signed):
    img = _image(n=2)
    write_ct_series(img, tmp_path, rescale_intercept=intercept, rescale_slope=slope, signed=signed)
    np.testing.assert_array_equal(read_series(tmp_path).volume[0].numpy(), img)


def test_realistic_size(tmp_path):
    img = _image(rows=512, cols=512, n=12, seed=1)
    write_ct_series(img, tmp_path, pixel_spacing=(0.976562, 0.976562), slice_thickness=3.0, first_position=-612.5)
    series = read_series(tmp_path)
    np.testing.assert_array_equal(series.volume[0].numpy(), img)
    assert series.affine_lps[2, 3] == pytest.approx(-612.5)
    assert series.pixel_spacing == (0.976562, 0.976562)


def test_single_slice_uses_slice_thickness(tmp_path):
    write_ct_series(_image(n=1), tmp_path, slice_thickness=1.25)
    assert read_series(tmp_path).slice_spacing == pytest.approx(1.25)


def test_list_series_and_selection(tmp_path, caplog):
    a = write_ct_series(_image(n=4), tmp_path / "b", series_number=2, series_description="Plan", study_instance_uid="1.2.9")
    b = write_ct_series(
        _image(n=3, seed=2), tmp_path / "a", series_number=3, series_description="Scout", study_instance_uid="1.2.9"
    )
    summaries = list_series(tmp_path)
    assert [(s.count, s.description, s.series_number) for s in summaries] == [(4, "Plan", 2), (3, "Scout", 3)]
    uid_a, uid_b = pydicom.dcmread(a[0]).SeriesInstanceUID, pydicom.dcmread(b[0]).SeriesInstanceUID
    with caplog.at_level(logging.WARNING, logger="vacseg_monai.dicom.series"):
        largest = read_series(tmp_path)
    assert largest.series_instance_uid == uid_a and largest.files == a
    message = caplog.text
    assert "2 CT series" in message and f"{uid_b} (3 slices, #3, 'Scout')" in message and "series_uid=" in message
    series = read_series(tmp_path, series_uid=uid_b)
    assert series.shape == (64, 64, 3)
    assert series.files == b
    with pytest.raises(NoSeriesError, match=r"CT series 1\.2\.3 not found .*" + uid_b):
        read_series(tmp_path, series_uid="1.2.3")


# --------------------------------------------------------------------------- malformed series


@pytest.fixture
def series_paths(tmp_path):
    return write_ct_series(_image(n=8), tmp_path / "ct", pixel_spacing=(0.7, 0.9), slice_thickness=2.0)


def _edit_one(paths, index, fn):
    def edit(i, ds):
        if i == index:
            fn(ds)
        return ds

    edit_instances(paths, edit)


def test_no_ct_series(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    mr = write_ct_series(_image(n=2), tmp_path / "mr")
    edit_instances(mr, lambda i, ds: _set_sop_class(ds, MRImageStorage))
    with pytest.raises(NoSeriesError, match=f"No CT Image Storage series found in {tmp_path}"):
        read_series(tmp_path)
    with pytest.raises(NoSeriesError, match="Not a folder"):
        read_series(tmp_path / "missing")


def test_mixed_orientation(series_paths):
    c, s = np.cos(np.radians(1)), np.sin(np.radians(1))
    _edit_one(series_paths, 3, lambda ds: setattr(ds, "ImageOrientationPatient", [c, s, 0, -s, c, 0]))
    with pytest.raises(InconsistentSeriesError, match="mixes orientations") as err:
        read_series(series_paths[0].parent)
    assert series_paths[3].name in str(err.value)


def test_non_orthogonal_iop(series_paths):
    edit_instances(series_paths, lambda i, ds: (setattr(ds, "ImageOrientationPatient", [1, 0, 0, 0.196116, 0.980581, 0]), ds)[1])
    with pytest.raises(InconsistentSeriesError, match="not orthogonal") as err:
        read_series(series_paths[0].parent)
    assert any(str(p) in str(err.value) for p in series_paths)


def test_mixed_pixel_spacing(series_paths):
    _edit_one(series_paths, 2, lambda ds: setattr(ds, "PixelSpacing", [0.8, 0.9]))
    with pytest.raises(InconsistentSeriesError, match=r"mixes pixel spacing: PixelSpacing \[0.8, 0.9\]") as err:
        read_series(series_paths[0].parent)
    assert series_paths[2].name in str(err.value)


def test_mixed_matrix_size(series_paths):
    def shrink(ds):
        ds.PixelData = ds.pixel_array[:32].tobytes()
        ds.Rows = 32

    _edit_one(series_paths, 5, shrink)
    with pytest.raises(InconsistentSeriesError, match="mixes matrix sizes: 32x64") as err:
        read_series(series_paths[0].parent)
    assert series_paths[5].name in str(err.value)


def test_gantry_tilt_tag(series_paths):
    edit_instances(series_paths, lambda i, ds: (setattr(ds, "GantryDetectorTilt", 12.5), ds)[1])
    with pytest.raises(GantryTiltError, match="GantryDetectorTilt = 12.5 deg") as err:
        read_series(series_paths[0].parent)
    assert "series " + pydicom.dcmread(series_paths[0]).SeriesInstanceUID in str(err.value).replace("Series", "series")


def test_positions_off_the_normal(series_paths):
    def shear(i, ds):
        ipp = [float(v) for v in ds.ImagePositionPatient]
        ds.ImagePositionPatient = [ipp[0], ipp[1] + 0.5 * i, ipp[2]]
        return ds

    edit_instances(series_paths, shear)
    with pytest.raises(GantryTiltError, match="do not step along the slice normal") as err:
        read_series(series_paths[0].parent)
    assert series_paths[7].name in str(err.value) and "3.500 mm sideways" in str(err.value)


def test_duplicated_position(series_paths):
    ipp4 = pydicom.dcmread(series_paths[4]).ImagePositionPatient
    _edit_one(series_paths, 5, lambda ds: setattr(ds, "ImagePositionPatient", ipp4))
    with pytest.raises(DuplicateSliceError, match="same position 8.000 mm") as err:
        read_series(series_paths[0].parent)
    assert series_paths[4].name in str(err.value) and series_paths[5].name in str(err.value)


def test_missing_slice(series_paths):
    series_paths[4].unlink()
    with pytest.raises(MissingSliceError) as err:
        read_series(series_paths[0].parent)
    message = str(err.value)
    assert "gap of 4.000 mm (expected 2.000 mm, about 1 slice(s) missing)" in message
    assert "between position 6.000 mm" in message and "and 10.000 mm" in message
    assert series_paths[3].name in message and series_paths[5].name in message


def test_uneven_spacing_within_tolerance_is_accepted(series_paths):
    _edit_one(series_paths, 4, lambda ds: setattr(ds, "ImagePositionPatient", [*ds.ImagePositionPatient[:2], 8.06]))
    read_series(series_paths[0].parent)
    with pytest.raises(MissingSliceError, match="uneven spacing"):
        read_series(series_paths[0].parent, spacing_tolerance=0.01)


@pytest.mark.parametrize("keyword", ["ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "FrameOfReferenceUID"])
def test_missing_geometry_tag(series_paths, keyword):
    _edit_one(series_paths, 2, lambda ds: delattr(ds, keyword))
    with pytest.raises(MissingTagError, match=keyword) as err:
        read_series(series_paths[0].parent)
    assert str(series_paths[2]) in str(err.value)


def test_empty_geometry_tag(series_paths):
    _edit_one(series_paths, 6, lambda ds: setattr(ds, "ImagePositionPatient", None))
    with pytest.raises(MissingTagError, match="has no ImagePositionPatient") as err:
        read_series(series_paths[0].parent)
    assert series_paths[6].name in str(err.value)


def test_truncated_pixel_data(series_paths):
    data = series_paths[3].read_bytes()
    series_paths[3].write_bytes(data[:-1000])
    with pytest.raises(UnreadableFileError, match="truncated") as err:
        read_series(series_paths[0].parent)
    assert str(series_paths[3]) in str(err.value)


@pytest.mark.parametrize("keep", [150, 700])
def test_truncated_header(series_paths, keep):
    data = series_paths[1].read_bytes()
    series_paths[1].write_bytes(data[:keep])
    with pytest.raises(UnreadableFileError, match="truncated") as err:
        list_series(series_paths[0].parent)
    assert str(series_paths[1]) in str(err.value)


def test_undecodable_syntax(tmp_path):
    paths = write_ct_series(_image(n=3), tmp_path, transfer_syntax=JPEG2000Lossless)
    _edit_one(paths, 1, lambda ds: setattr(ds.file_meta, "TransferSyntaxUID", MPEG2MPML))
    with pytest.raises(UndecodablePixelDataError) as err:
        read_series(tmp_path)
    message = str(err.value)
    assert str(paths[1]) in message and MPEG2MPML in message and "MPEG2" in message


def test_all_errors_are_value_errors():
    for cls in (NoSeriesError, MultipleSeriesError, MissingSliceError, GantryTiltError, UnreadableFileError):
        assert issubclass(cls, DicomSeriesError) and issubclass(cls, ValueError)


# --------------------------------------------------------------------------- geometry helpers


def test_geometry_helpers():
    iop = geometry.iop_for_patient_position("hfdl")
    np.testing.assert_array_equal(geometry.slice_normal(iop), [0, 0, 1])
    aff = geometry.affine_lps(iop, (0.5, 0.8), 3.0, (10, 20, 30))
    pts = geometry.index_to_lps(aff, [[0, 0, 0], [2, 1, 1]])
    np.testing.assert_allclose(pts, [[10, 20, 30], [10 + 2 * 0.5, 20 - 0.8, 33]])
    np.testing.assert_allclose(geometry.lps_to_index(aff, pts), [[0, 0, 0], [2, 1, 1]], atol=1e-12)
    np.testing.assert_allclose(geometry.ras_to_lps(geometry.lps_to_ras(aff)), aff)
    assert geometry.lps_to_ras(aff)[0, 3] == -10
    with pytest.raises(ValueError, match="must be one of HFS"):
        geometry.iop_for_patient_position("SITTING")
    with pytest.raises(ValueError, match="non-unit"):
        geometry.check_iop([2, 0, 0, 0, 1, 0], where="x.dcm")
    with pytest.raises(ValueError, match="6 finite numbers"):
        geometry.check_iop([1, 0, 0, 0, 1])


def test_decoded_slices_give_the_same_series_and_bad_files_fall_back(tmp_path):
    """Files decoded ahead (while a series arrives) are used as they are; the result is the same."""
    from vacseg_monai.dicom.series import decode_slice

    image = (np.arange(24 * 20 * 5, dtype=np.int16).reshape(24, 20, 5) % 900) - 500
    paths = write_ct_series(image, tmp_path / "ct", pixel_spacing=(0.8, 0.9), slice_thickness=2.5, rescale_intercept=-1024)
    (tmp_path / "ct" / "notes.txt").write_text("not DICOM")
    plain = read_series(tmp_path / "ct")

    decoded = {path: decode_slice(path) for path in sorted((tmp_path / "ct").iterdir())}
    assert decoded[tmp_path / "ct" / "notes.txt"] is None  # not DICOM: left to read_series
    decoded[paths[2]] = None  # as if it had not been decoded in time
    again = read_series(tmp_path / "ct", decoded=decoded)
    torch.testing.assert_close(again.volume.as_tensor(), plain.volume.as_tensor(), rtol=0, atol=0)
    np.testing.assert_array_equal(again.affine_ras, plain.affine_ras)
    assert again.sop_instance_uids == plain.sop_instance_uids
    assert "PixelData" not in again.datasets[0]
    assert decoded[paths[0]].header is again.datasets[plain.files.index(paths[0])]  # reused, not re-read

    mr = pydicom.dcmread(paths[0])
    mr.SOPClassUID = mr.file_meta.MediaStorageSOPClassUID = MRImageStorage
    mr.save_as(tmp_path / "mr.dcm")
    assert decode_slice(tmp_path / "mr.dcm") is None
    (tmp_path / "cut.dcm").write_bytes(paths[1].read_bytes()[:-100])  # truncated inside the pixel data
    assert decode_slice(tmp_path / "cut.dcm") is None
