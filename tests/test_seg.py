"""Tests for vacseg_monai.dicom.seg: DICOM-SEG round trips, validity and input checks."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from pydicom.uid import RLELossless

from vacseg_monai import __version__
from vacseg_monai.dicom.outputs import DEFAULT_ROOT_UID
from vacseg_monai.dicom.seg import write_seg
from vacseg_monai.dicom.series import read_series
from vacseg_monai.dicom.synthetic import write_ct_series
from vacseg_monai.labels import LABELS, label_by_name

ROWS, COLS, N_SLICES = 64, 64, 8
ROOT = "1.2.826.0.1.3680043.8.498.77."
DCIODVFY_TIMEOUT_S = 60


def _ct_series(folder: Path, orientation: str = "HFS", pixel_spacing: tuple[float, float] = (1.0, 1.0)):
    image = np.full((ROWS, COLS, N_SLICES), -1000, dtype=np.int16)
    write_ct_series(image, folder, pixel_spacing=pixel_spacing, slice_thickness=2.5, orientation=orientation)
    return read_series(folder)


def _label_map() -> np.ndarray:
    """An asymmetric map (differs under any flip of rows, cols or slices)."""
    labels = np.zeros((ROWS, COLS, N_SLICES), dtype=np.uint8)
    labels[48:56, 4:60, :] = label_by_name("Vacbag").value
    labels[56:62, :, :] = label_by_name("Couch").value
    for k in range(1, N_SLICES - 1):  # body grows with k and sits left of centre
        labels[20 : 30 + k, 8 : 20 + 3 * k, k] = label_by_name("Body").value
    labels[2, 3, 0] = label_by_name("Body").value
    return labels


def _dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    result = subprocess.run(
        ["dciodvfy", str(path)], capture_output=True, text=True, timeout=DCIODVFY_TIMEOUT_S, check=False
    )
    lines = (result.stdout + result.stderr).splitlines()
    return [ln for ln in lines if ln.startswith("Error")], [ln for ln in lines if ln.startswith("Warning")]


needs_dciodvfy = pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools dciodvfy not installed")


def _volume_in_series_order(seg: hd.seg.Segmentation, series) -> np.ndarray:
    """Read the SEG with get_volume and resample its slices to the series' slice order by position."""
    volume = seg.get_volume(combine_segments=True)
    inverse = np.linalg.inv(volume.affine)
    out = np.zeros((ROWS, COLS, N_SLICES), dtype=volume.array.dtype)
    for k, ds in enumerate(series.datasets):
        index = inverse @ np.append(np.asarray(ds.ImagePositionPatient, dtype=float), 1.0)
        np.testing.assert_allclose(index[1:3], 0.0, atol=1e-4)
        out[:, :, k] = volume.array[int(round(index[0]))]
    return out


@needs_dciodvfy
@pytest.mark.parametrize(
    ("orientation", "spacing"), [("HFS", (1.0, 1.0)), ("FFS", (0.7, 1.3)), ("HFP", (1.25, 0.6))]
)
def test_binary_round_trip_and_validity(tmp_path, orientation, spacing):
    series = _ct_series(tmp_path / "ct", orientation, spacing)
    labels = _label_map()
    out = tmp_path / "seg" / "seg.dcm"
    written = write_seg(labels, series, out, root_uid=ROOT)

    seg = hd.seg.segread(out)
    assert seg.SOPInstanceUID == written.SOPInstanceUID
    assert seg.SegmentationType == "BINARY"
    pixels = seg.get_pixels_by_source_instance(series.sop_instance_uids, combine_segments=True)
    np.testing.assert_array_equal(np.moveaxis(pixels, 0, 2), labels)
    np.testing.assert_array_equal(_volume_in_series_order(seg, series), labels)

    # Frames point at the right source slices and sit at their positions.
    for frame in seg.PerFrameFunctionalGroupsSequence:
        source_uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        k = series.sop_instance_uids.index(source_uid)
        np.testing.assert_allclose(
            [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient],
            [float(v) for v in series.datasets[k].ImagePositionPatient],
            atol=1e-4,
        )
    np.testing.assert_allclose(
        [float(v) for v in seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing], spacing
    )

    # Segments come from the label table.
    assert [int(s.SegmentNumber) for s in seg.SegmentSequence] == [lb.value for lb in LABELS]
    for item, label in zip(seg.SegmentSequence, LABELS):
        assert item.SegmentLabel == label.name
        assert item.SegmentAlgorithmType == "AUTOMATIC"
        category = item.SegmentedPropertyCategoryCodeSequence[0]
        prop = item.SegmentedPropertyTypeCodeSequence[0]
        assert (category.CodeValue, category.CodingSchemeDesignator) == (label.category.value, label.category.scheme)
        assert (prop.CodeValue, prop.CodingSchemeDesignator, prop.CodeMeaning) == (
            label.type.value,
            label.type.scheme,
            label.type.meaning,
        )
        algorithm = item.SegmentationAlgorithmIdentificationSequence[0]
        assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("vacseg_monai", __version__)
        assert algorithm.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"  # DCM Artificial Intelligence
        rgb = hd.color.CIELabColor.from_dicom_value(item.RecommendedDisplayCIELabValue).to_rgb(clip=True)
        assert np.abs(np.subtract(rgb, label.color)).max() <= 2

    # Header: references, equipment, UIDs, patient.
    assert seg.Manufacturer == "vacseg_monai"
    assert seg.ManufacturerModelName == "vacseg_monai"
    assert __version__ in list(seg.SoftwareVersions)
    assert "automatic" in seg.SeriesDescription.lower()
    assert seg.ContentLabel == "VACSEG"
    assert int(seg.SeriesNumber) == 901
    assert seg.SeriesInstanceUID.startswith(ROOT) and seg.SOPInstanceUID.startswith(ROOT)
    assert seg.SeriesInstanceUID != series.series_instance_uid
    assert seg.StudyInstanceUID == series.study_instance_uid
    assert seg.FrameOfReferenceUID == series.frame_of_reference_uid
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series.series_instance_uid
    referenced = {item.ReferencedSOPInstanceUID for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == set(series.sop_instance_uids)
    assert seg.PatientID == series.datasets[0].PatientID
    assert seg.PatientSpeciesDescription == series.datasets[0].PatientSpeciesDescription

    errors, warnings = _dciodvfy(out)
    assert errors == []
    assert warnings == []


@needs_dciodvfy
def test_fractional_round_trip(tmp_path):
    series = _ct_series(tmp_path / "ct", "FFS", (0.8, 1.1))
    labels = _label_map()
    rng = np.random.default_rng(7)
    logits = rng.normal(size=(len(LABELS) + 1, ROWS, COLS, N_SLICES)).astype(np.float32)
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=0, keepdims=True)
    probabilities[2, :, :, 3] = 0.0  # an all-zero frame of segment 2 is omitted
    out = tmp_path / "frac.dcm"
    write_seg(labels, series, out, probabilities=probabilities, root_uid=ROOT)

    seg = hd.seg.segread(out)
    assert seg.SegmentationType == "FRACTIONAL"
    assert seg.SegmentationFractionalType == "PROBABILITY"
    assert int(seg.MaximumFractionalValue) == 255
    assert int(seg.NumberOfFrames) == len(LABELS) * N_SLICES - 1
    pixels = seg.get_pixels_by_source_instance(series.sop_instance_uids)  # (frames, rows, cols, segments)
    np.testing.assert_allclose(np.transpose(pixels, (3, 1, 2, 0)), probabilities[1:], atol=1.0 / 255)

    # Without the background channel (label-table order), as tensors, RLE-compressed: same pixels.
    out2 = tmp_path / "frac2.dcm"
    write_seg(
        torch.from_numpy(labels),
        series,
        out2,
        probabilities=torch.from_numpy(probabilities[1:]),
        transfer_syntax_uid=RLELossless,
    )
    seg2 = hd.seg.segread(out2)
    assert seg2.file_meta.TransferSyntaxUID == RLELossless
    np.testing.assert_array_equal(seg2.get_pixels_by_source_instance(series.sop_instance_uids), pixels)

    errors, warnings = _dciodvfy(out)
    assert errors == [] and warnings == []


@needs_dciodvfy
def test_empty_segment_is_described_without_frames(tmp_path):
    series = _ct_series(tmp_path / "ct")
    labels = _label_map()
    couch = label_by_name("Couch").value
    labels[labels == couch] = 0
    out = tmp_path / "empty_couch.dcm"
    write_seg(labels, series, out)

    seg = hd.seg.segread(out)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == [lb.name for lb in LABELS]
    frame_segments = [
        int(f.SegmentIdentificationSequence[0].ReferencedSegmentNumber) for f in seg.PerFrameFunctionalGroupsSequence
    ]
    assert couch not in frame_segments
    assert frame_segments.count(label_by_name("Vacbag").value) == N_SLICES
    assert frame_segments.count(label_by_name("Body").value) == N_SLICES - 1  # slice 7 has no body
    pixels = seg.get_pixels_by_source_instance(series.sop_instance_uids, combine_segments=True)
    np.testing.assert_array_equal(np.moveaxis(pixels, 0, 2), labels)
    errors, warnings = _dciodvfy(out)
    assert errors == [] and warnings == []

    # An all-background map keeps every frame (highdicom cannot omit all of them).
    seg_empty = write_seg(np.zeros((ROWS, COLS, N_SLICES), np.uint8), series)
    assert int(seg_empty.NumberOfFrames) == len(LABELS) * N_SLICES
    assert len(seg_empty.SegmentSequence) == len(LABELS)
    assert seg_empty.get_pixels_by_source_instance(series.sop_instance_uids, combine_segments=True).max() == 0


def test_metatensor_input_and_folder_output(tmp_path):
    series = _ct_series(tmp_path / "ct", "HFP")
    labels = _label_map()
    tensor = MetaTensor(torch.from_numpy(labels[None].astype(np.float32)), affine=series.volume.affine)
    folder = tmp_path / "out"
    folder.mkdir()
    seg = write_seg(tensor, series, folder)
    written = list(folder.iterdir())
    assert [p.name for p in written] == [f"SEG.{seg.SOPInstanceUID}.dcm"]
    assert seg.SOPInstanceUID.startswith(DEFAULT_ROOT_UID)
    read = hd.seg.segread(written[0])
    pixels = read.get_pixels_by_source_instance(series.sop_instance_uids, combine_segments=True)
    np.testing.assert_array_equal(np.moveaxis(pixels, 0, 2), labels)


def test_label_table_with_gaps(tmp_path):
    series = _ct_series(tmp_path / "ct")
    body = label_by_name("Body")
    labels = np.zeros((ROWS, COLS, N_SLICES), np.uint8)
    labels[10:20, 10:30, 2:5] = body.value
    seg = write_seg(labels, series, label_table=[body])
    assert [(int(s.SegmentNumber), s.SegmentLabel) for s in seg.SegmentSequence] == [(1, "Body")]
    pixels = seg.get_pixels_by_source_instance(series.sop_instance_uids, combine_segments=True)
    np.testing.assert_array_equal(np.moveaxis(pixels, 0, 2), (labels == body.value).astype(np.uint8))


def test_bad_inputs(tmp_path):
    series = _ct_series(tmp_path / "ct")
    labels = _label_map()
    uid = series.series_instance_uid

    with pytest.raises(ValueError, match=r"\(64, 64, 7\).*" + uid + r".*\(64, 64, 8\)"):
        write_seg(labels[:, :, :7], series)
    with pytest.raises(ValueError, match=r"\(64, 32, 8\)"):
        write_seg(labels[:, :32], series)
    bad = labels.copy()
    bad[0, 0, 0] = 9
    with pytest.raises(ValueError, match=r"Label map for series .*: label values \[9\] are not in the label "
                                         r"table"):
        write_seg(bad, series)
    with pytest.raises(ValueError, match=r"label values must be whole numbers .* found non-integer values \[0\.5"):
        write_seg(labels.astype(np.float32) + 0.5, series)
    with pytest.raises(ValueError, match="not in the label table"):
        write_seg(labels, series, label_table=[label_by_name("Body")])
    with pytest.raises(ValueError, match=r"`probabilities` shape \(2, 64, 64, 8\)"):
        write_seg(labels, series, probabilities=np.zeros((2, ROWS, COLS, N_SLICES), np.float32))
    probabilities = np.full((len(LABELS), ROWS, COLS, N_SLICES), 0.5, np.float32)
    probabilities[1, 2, 3, 4] = 1.5
    with pytest.raises(ValueError, match=r"in \[0, 1\], got range \[0.5, 1.5\]"):
        write_seg(labels, series, probabilities=probabilities)
    with pytest.raises(ValueError, match="root_uid"):
        write_seg(labels, series, root_uid="1.2.3")
    with pytest.raises(ValueError, match="root_uid"):
        write_seg(labels, series, root_uid="1.2.03.")
    assert not any((tmp_path / "ct").glob("SEG*"))


def test_saved_seg_is_readable_by_others(tmp_path):
    """The atomic save must not leave mkstemp's owner-only mode on the result."""
    import stat

    series = _ct_series(tmp_path / "ct")
    path = tmp_path / "seg.dcm"
    write_seg(_label_map(), series, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
