"""Real exports through the series reader and the node: public scanner CT fetched at run time, never committed.

The files come from :mod:`vacseg_monai.public_data` (the TotalSegmentator 2.18.0 example export, pydicom-data's
CT slices); compressed variants are made by DCMTK's own encoders. Every decoded slice is compared, pixel for
pixel, with the HU of the uncompressed original.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    CTImageStorage,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from vacseg_monai.dicom.errors import NoSeriesError
from vacseg_monai.dicom.series import decode_slice, fill_missing_uids, read_series
from vacseg_monai.public_data import PublicDataError, scan_path

LOGGER = "vacseg_monai.dicom.series"
needs_dcmtk_codecs = pytest.mark.skipif(
    any(shutil.which(tool) is None for tool in ("dcmcjpls", "dcmcrle", "dcmcjpeg", "dcmmkdir")),
    reason="DCMTK encoders (dcmcjpls, dcmcrle, dcmcjpeg) or dcmmkdir not installed",
)


def _public(key: str) -> Path:
    try:
        return scan_path(key)
    except PublicDataError as exc:
        pytest.skip(f"public scan {key} not available: {exc}")


def _pydicom_data(name: str) -> Path:
    return _public("pydicom_693_uncompressed").parent / name


def _hu(path: Path) -> np.ndarray:
    """HU of an uncompressed slice straight from its stored values (no codec involved)."""
    ds = pydicom.dcmread(path)
    return ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def _with_frame_of_reference(source: Path, target: Path) -> Path:
    """Copy a real slice that lacks a frame of reference, giving it one (the reader needs it to place slices)."""
    ds = pydicom.dcmread(source)
    ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.693"
    target.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(target, enforce_file_format=True)
    return target


@pytest.fixture(scope="module")
def slice693(tmp_path_factory) -> Path:
    """pydicom-data's 693 scanner slice, uncompressed, in a folder of its own, with no file name suffix."""
    return _with_frame_of_reference(_pydicom_data("693_UNCR.dcm"), tmp_path_factory.mktemp("s693") / "IM000001")


@pytest.fixture(scope="module")
def totalseg(tmp_path_factory) -> dict:
    """The TotalSegmentator export plus the 693 slice as a second, smaller CT series; read once for the module."""
    folder = tmp_path_factory.mktemp("totalseg") / "export"
    shutil.copytree(_public("totalseg_dicom"), folder)
    other = _with_frame_of_reference(_pydicom_data("693_UNCR.dcm"), folder / "other" / "IM000001")
    records = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logging.getLogger(LOGGER).addHandler(handler)
    try:
        series = read_series(folder)
        decoded = {path: decode_slice(path) for path in series.files}
        ahead = read_series(folder, decoded=decoded)
    finally:
        logging.getLogger(LOGGER).removeHandler(handler)
    return {"folder": folder, "other": other, "series": series, "decoded": decoded, "ahead": ahead,
            "log": [r.getMessage() for r in records]}


# --------------------------------------------------------------------------- the TotalSegmentator export


def test_export_without_suffix_or_uids_is_read(totalseg):
    series, folder = totalseg["series"], totalseg["folder"]
    files = sorted(p for p in folder.iterdir() if p.is_file())
    assert len(files) == 20 and not any(p.name.endswith(".dcm") for p in files)
    raw = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert raw.SOPClassUID == "" and raw.SOPInstanceUID == "" and raw.SeriesInstanceUID == ""  # as exported
    assert raw.file_meta.MediaStorageSOPClassUID == CTImageStorage
    assert raw.file_meta.TransferSyntaxUID == JPEG2000Lossless

    assert series.shape == (512, 512, 20)
    assert series.sop_class_uid == CTImageStorage
    metas = {p: str(pydicom.dcmread(p, stop_before_pixels=True).file_meta.MediaStorageSOPInstanceUID) for p in files}
    assert series.sop_instance_uids == [metas[p] for p in series.files]
    z = [float(ds.ImagePositionPatient[2]) for ds in series.datasets]
    assert z == sorted(z) and series.slice_spacing == pytest.approx(2.0)
    # Series and study UIDs are derived from shared tags: the same for every slice, for every reader.
    assert fill_missing_uids(raw) == ["SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID"]
    assert (raw.SeriesInstanceUID, raw.StudyInstanceUID) == (series.series_instance_uid, series.study_instance_uid)
    assert pydicom.uid.UID(series.series_instance_uid).is_valid and series.study_instance_uid != series.series_instance_uid
    filled = [m for m in totalseg["log"] if "empty or missing UIDs filled" in m]
    assert len(filled) == 2  # once per read, not once per file
    assert "SOPClassUID in 20 of 20 files" in filled[0] and series.series_instance_uid in filled[0]
    hu = series.volume[0].numpy()
    assert hu.min() == -1024.0 and 1000 < hu.max() < 3072  # HU: air padding to bone
    assert float(np.mean(hu[200:300, 200:300, :])) > -200  # soft tissue in the middle of the body


def test_the_largest_series_is_read_and_series_uid_chooses(totalseg):
    other_uid = str(pydicom.dcmread(totalseg["other"], stop_before_pixels=True).SeriesInstanceUID)
    chosen = [m for m in totalseg["log"] if "holds 2 CT series" in m]
    assert len(chosen) == 2
    assert f"{totalseg['series'].series_instance_uid} (20 slices, #None, 'CT Body 3.0')" in chosen[0]
    assert f"not read: {other_uid} (1 slices, #2, '5/5mm Plain')" in chosen[0]
    one = read_series(totalseg["folder"], series_uid=other_uid)
    assert one.shape == (512, 512, 1) and one.files == [totalseg["other"]]
    with pytest.raises(NoSeriesError, match=r"CT series 1\.2\.3 not found in ") as err:
        read_series(totalseg["folder"], series_uid="1.2.3")
    assert "(20 slices, #None, 'CT Body 3.0')" in str(err.value) and other_uid in str(err.value)


def test_worker_decodes_ahead_with_the_same_rules(totalseg):
    assert all(item is not None for item in totalseg["decoded"].values())  # no suffix, empty SOPClassUID
    ahead = totalseg["ahead"]
    np.testing.assert_array_equal(ahead.volume.numpy(), totalseg["series"].volume.numpy())
    assert ahead.sop_instance_uids == totalseg["series"].sop_instance_uids
    assert ahead.series_instance_uid == totalseg["series"].series_instance_uid


# --------------------------------------------------------------------------- transfer syntaxes


@needs_dcmtk_codecs
@pytest.mark.parametrize(
    ("tool", "options", "syntax"),
    [("dcmcjpls", [], JPEGLSLossless), ("dcmcrle", [], RLELossless), ("dcmcjpeg", ["+e1"], JPEGLosslessSV1)],
)
def test_lossless_codecs_are_pixel_exact(tmp_path, slice693, tool, options, syntax):
    out = tmp_path / "coded" / "IM000001"
    out.parent.mkdir()
    subprocess.run([tool, *options, str(slice693), str(out)], check=True, capture_output=True, timeout=60)
    assert pydicom.dcmread(out, stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax
    series = read_series(out.parent)
    expected = _hu(slice693)
    assert expected.min() < -900 and expected.max() > 500
    np.testing.assert_array_equal(series.volume[0, :, :, 0].numpy(), expected)


def test_jpeg2000_is_pixel_exact(tmp_path, slice693):
    j2k = _with_frame_of_reference(_pydicom_data("693_J2KR.dcm"), tmp_path / "j2k" / "IM000001")
    assert pydicom.dcmread(j2k, stop_before_pixels=True).file_meta.TransferSyntaxUID == JPEG2000Lossless
    np.testing.assert_array_equal(read_series(j2k.parent).volume[0, :, :, 0].numpy(), _hu(slice693))


# --------------------------------------------------------------------------- what else lies in an export


def _localizer(source: Path, target: Path) -> Path:
    """A scout of the same series: ImageType LOCALIZER, a coronal plane (it would break the series if read)."""
    ds = pydicom.dcmread(source)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(target, enforce_file_format=True)
    return target


def _secondary_capture(series_of: Path, target: Path) -> Path:
    """pydicom-data's real secondary capture, filed into the series of ``series_of``."""
    ds = pydicom.dcmread(_pydicom_data("SC_rgb.dcm"))
    assert ds.SOPClassUID == SecondaryCaptureImageStorage
    ds.SeriesInstanceUID = pydicom.dcmread(series_of, stop_before_pixels=True).SeriesInstanceUID
    ds.save_as(target, enforce_file_format=True)
    return target


@needs_dcmtk_codecs
def test_dicomdir_localizer_and_secondary_capture_are_skipped(tmp_path, slice693, caplog):
    image = tmp_path / "IMAGES" / "IM000001"
    image.parent.mkdir()
    shutil.copy(slice693, image)
    subprocess.run(["dcmmkdir", "-Pgp", "+I", "--recurse", "IMAGES"], cwd=tmp_path, check=True,
                   capture_output=True, timeout=60)
    assert (tmp_path / "DICOMDIR").is_file()
    scout = _localizer(slice693, tmp_path / "IMAGES" / "SCOUT1")
    capture = _secondary_capture(slice693, tmp_path / "IMAGES" / "SC000001")
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        series = read_series(tmp_path)
    assert series.files == [image]
    np.testing.assert_array_equal(series.volume[0, :, :, 0].numpy(), _hu(slice693))
    assert f"Skipping {scout}: CT Image Storage (LOCALIZER)" in caplog.text
    assert f"Skipping {capture}: Secondary Capture Image Storage" in caplog.text
    assert f"Skipping {tmp_path / 'DICOMDIR'}: DICOMDIR" in caplog.text


def test_missing_sop_class_uid_comes_from_the_file_meta(tmp_path, slice693, caplog):
    ds = pydicom.dcmread(slice693)
    del ds.SOPClassUID
    (tmp_path / "ct").mkdir()
    ds.save_as(tmp_path / "ct" / "IM000001", enforce_file_format=True)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        series = read_series(tmp_path / "ct")
    assert series.sop_class_uid == CTImageStorage
    assert caplog.text.count("SOPClassUID in 1 of 1 files") == 1


def test_only_localizers_or_no_ct_is_a_clear_error(tmp_path, slice693):
    _localizer(slice693, tmp_path / "SCOUT1")
    _localizer(slice693, tmp_path / "SCOUT2")
    _secondary_capture(slice693, tmp_path / "SC1")
    (tmp_path / "notes.txt").write_text("not DICOM")
    expected = (
        f"No CT Image Storage series found in {tmp_path}: found 2 x CT Image Storage (LOCALIZER), "
        "1 x Secondary Capture Image Storage, 1 x non-DICOM file"
    )
    with pytest.raises(NoSeriesError) as err:
        read_series(tmp_path)
    assert str(err.value).startswith(expected)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(NoSeriesError, match=f"found in {empty}: found no files"):
        read_series(empty)


# --------------------------------------------------------------------------- the whole node


@pytest.mark.slow
def test_export_goes_through_the_node(tmp_path):
    """send_series.py (the TPS stand-in) sends the export; the node segments it; the RTSTRUCT passes dciodvfy."""
    if shutil.which("storescp") is None or shutil.which("dciodvfy") is None:
        pytest.skip("DCMTK storescp or dicom3tools dciodvfy not installed")
    from test_service_support import REPO
    from vacseg_monai.testing.peers import StoreSCP, wait_until

    from vacseg_monai.service.config import Destination, NodeConfig
    from vacseg_monai.service.jobs import JobState
    from vacseg_monai.service.scp import DicomNode

    export = _public("totalseg_dicom")
    expected = read_series(export)
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        from send_series import main as send_main
    finally:
        sys.path.remove(str(REPO / "scripts"))
    destination = StoreSCP(tmp_path / "dest").start()
    config = NodeConfig(port=0, output_directory=tmp_path / "node", min_free_mb=0, series_timeout=0,
                        destination=Destination("127.0.0.1", destination.port, destination.aet),
                        export_retry_initial=0.25, export_timeout=60, log_level="INFO")
    try:
        with DicomNode(config) as node:
            assert send_main(["127.0.0.1", str(node.port), "-aec", "VACSEG", str(export)]) == 0
            wait_until(lambda: any(j.state in (JobState.DONE, JobState.FAILED) for j in node.store.jobs()),
                       240, "the job to finish")
            job = node.store.jobs()[0]
            assert job.state is JobState.DONE, job.reason
            assert job.series_uid == expected.series_instance_uid and job.n_instances == 20
            received = wait_until(lambda: destination.files(), 30, "the RTSTRUCT at the destination")
    finally:
        destination.stop()
    rtstruct = pydicom.dcmread(received[0])
    assert rtstruct.Modality == "RTSTRUCT" and rtstruct.StudyInstanceUID == expected.study_instance_uid
    referenced = rtstruct.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
    series_ref = referenced.RTReferencedSeriesSequence[0]
    assert series_ref.SeriesInstanceUID == expected.series_instance_uid
    assert [item.ReferencedSOPInstanceUID for item in series_ref.ContourImageSequence] == expected.sop_instance_uids
    names = {roi.ROINumber: roi.ROIName for roi in rtstruct.StructureSetROISequence}
    body = next(c for c in rtstruct.ROIContourSequence if names[c.ReferencedROINumber] == "Body")
    assert len({float(c.ContourData[2]) for c in body.ContourSequence}) == 20  # the body on every slice
    report = subprocess.run(["dciodvfy", str(received[0])], capture_output=True, text=True, timeout=60)
    assert [line for line in report.stderr.splitlines() if line.startswith("Error")] == []


def test_a_series_stored_with_the_couch_at_the_top_is_segmented_upright(tmp_path):
    """pydicom-data's explicit_VR-UN slice: columns run anteriorly (IOP 1\\0\\0\\0\\-1\\0), no Patient Position.

    The loader flips it so that the couch is at the bottom, as the model was trained; the RTSTRUCT writer
    flips the labels back, so contours land where they were drawn in the stored image.
    """
    from vacseg_monai.dicom.rtstruct import read_rtstruct
    from vacseg_monai.inputs import load_input
    from vacseg_monai.writers import write_inference_outputs

    folder = tmp_path / "ct"
    folder.mkdir()
    ds = pydicom.dcmread(_public("pydicom_explicit_vr_un"))
    ds.SliceThickness = 5  # a single slice needs its thickness
    ds.save_as(folder / "CT1", enforce_file_format=True)
    upright = load_input(folder)
    assert upright.rows_flipped
    stored = upright.series.volume[0].numpy()
    np.testing.assert_array_equal(upright.image[0].numpy(), stored[::-1])
    rows = stored.shape[0]
    np.testing.assert_allclose(upright.affine @ [0, 0, 0, 1], upright.series.affine_ras @ [rows - 1, 0, 0, 1])

    labels = np.zeros(upright.shape, np.uint8)
    labels[300:400, 100:400] = 3  # drawn in the upright image's lower half
    files = write_inference_outputs(upright, labels, tmp_path / "out", "rtstruct", nifti=False)
    back = read_rtstruct(files[0], upright.series)  # in the stored order
    body_rows = np.flatnonzero((back == 3).any(axis=(1, 2)))
    assert body_rows.min() >= rows - 401 and body_rows.max() <= rows - 300  # rows 300-399 flipped: 112-211

    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PatientPosition = "HFS"
    ds.save_as(folder / "CT1", enforce_file_format=True)
    assert not load_input(folder).rows_flipped
    ds.PatientPosition = "HFP"  # prone: the couch is anterior, and these columns run posteriorly
    ds.save_as(folder / "CT1", enforce_file_format=True)
    assert load_input(folder).rows_flipped
