"""Tests for the RT Structure Set writer/reader and the mask <-> polygon geometry.

Real tools only: dciodvfy (dicom3tools) judges conformance, plastimatch rasterises
our structure sets independently, highdicom.spatial cross-checks the coordinates.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from skimage.draw import disk

from conftest import dice
from vacseg_monai import __version__
from vacseg_monai.dicom.contours import (
    contours_to_mask,
    format_ds_chunks,
    format_ds_values,
    mask_to_contours,
    simplify_contour,
    volume_to_contours,
)
from vacseg_monai.dicom.geometry import index_to_lps, lps_to_index
from vacseg_monai.dicom.rtstruct import (
    RTSTRUCT_SOP_CLASS_UID,
    normalize_roi_name,
    read_rtstruct,
    read_rtstruct_contents,
    resolve_roi_label,
    write_rtstruct,
)
from vacseg_monai.dicom.series import read_series
from vacseg_monai.dicom.synthetic import write_ct_series
from vacseg_monai.labels import LABELS, label_by_name

TOOL_TIMEOUT_S = 120
ROWS, COLS, N_SLICES = 96, 96, 10
VALUE = {label.name: label.value for label in LABELS}
VET_KEYWORDS = (
    "PatientSpeciesDescription",
    "PatientSpeciesCodeSequence",
    "PatientBreedDescription",
    "PatientBreedCodeSequence",
    "BreedRegistrationSequence",
    "ResponsiblePerson",
    "ResponsiblePersonRole",
    "ResponsibleOrganization",
    "PatientSexNeutered",
)

needs_dciodvfy = pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) not installed")
needs_plastimatch = pytest.mark.skipif(shutil.which("plastimatch") is None, reason="plastimatch not installed")


# --------------------------------------------------------------------------- helpers


def phantom_labels(rows: int = ROWS, cols: int = COLS, n: int = N_SLICES) -> np.ndarray:
    """Couch across the full width (touches both borders), Vacbag as a ring (hole),
    Body as three islands per slice (absent on the first and last slice)."""
    labels = np.zeros((rows, cols, n), dtype=np.uint8)
    cr, cc = rows // 2 - 2, cols // 2
    for k in range(n):
        labels[rows - 14 : rows - 4, :, k] = VALUE["Couch"]
        rr, cc_ = disk((cr, cc), 0.32 * rows + k % 3, shape=(rows, cols))
        labels[rr, cc_, k] = VALUE["Vacbag"]
        rr, cc_ = disk((cr, cc), 0.21 * rows, shape=(rows, cols))
        labels[rr, cc_, k] = 0
        if 0 < k < n - 1:
            for centre, radius in (((cr, cc), 8.0), ((cr, cc - 14), 3.5), ((cr, cc + 14), 3.5)):
                rr, cc_ = disk(centre, radius, shape=(rows, cols))
                labels[rr, cc_, k] = VALUE["Body"]
    return labels



def run_tool(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, check=False)


def dciodvfy_report(path: Path) -> tuple[list[str], list[str]]:
    result = run_tool(["dciodvfy", str(path)])
    lines = (result.stdout + result.stderr).splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    warnings = [line for line in lines if line.startswith("Warning")]
    return errors, warnings


def plastimatch_masks(rtstruct: Path, ct_dir: Path, out_dir: Path, series) -> dict[str, np.ndarray]:
    """Rasterise with plastimatch and resample each structure onto our CT grid (nearest)."""
    import itk

    result = run_tool(
        [
            "plastimatch", "convert", "--input", str(rtstruct), "--referenced-ct", str(ct_dir),
            "--output-prefix", str(out_dir), "--prefix-format", "nrrd", "--xor-contours",
        ]
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    r, c, k = np.meshgrid(*(np.arange(s) for s in series.shape), indexing="ij")
    points = index_to_lps(series.affine_lps, np.stack([r.ravel(), c.ravel(), k.ravel()], axis=1))
    masks = {}
    for path in sorted(out_dir.glob("*.nrrd")):
        image = itk.imread(str(path))
        array = itk.GetArrayFromImage(image)  # (z, y, x)
        origin = np.asarray(itk.origin(image), dtype=np.float64)
        spacing = np.asarray(itk.spacing(image), dtype=np.float64)
        direction = np.asarray(image.GetDirection(), dtype=np.float64)
        xyz = np.linalg.solve(direction * spacing, (points - origin).T).T  # plastimatch (x, y, z) indices
        index = np.rint(xyz).astype(int)
        assert np.abs(xyz - index).max() < 1e-3, f"plastimatch grid of {path.name} is not the CT grid"
        inside = np.all((index >= 0) & (index < np.asarray(array.shape[::-1])), axis=1)
        values = np.zeros(len(points), dtype=bool)
        values[inside] = array[index[inside, 2], index[inside, 1], index[inside, 0]] > 0
        masks[path.stem] = values.reshape(series.shape)
    return masks


_SERIES_CACHE: dict = {}


@pytest.fixture(scope="module")
def make_series(tmp_path_factory):
    """Return (series, ct_dir) for an orientation and pixel spacing, written once per module."""

    def _make(orientation: str = "HFS", pixel_spacing=(0.9, 0.9), labels: np.ndarray | None = None):
        key = (orientation, tuple(pixel_spacing))
        if key not in _SERIES_CACHE:
            lab = phantom_labels() if labels is None else labels
            image = np.where(lab > 0, 0, -1000).astype(np.int16)
            ct_dir = tmp_path_factory.mktemp(f"ct_{orientation}") / "ct"
            write_ct_series(image, ct_dir, pixel_spacing=pixel_spacing, slice_thickness=2.5, orientation=orientation)
            _SERIES_CACHE[key] = (read_series(ct_dir), ct_dir)
        return _SERIES_CACHE[key]

    yield _make
    _SERIES_CACHE.clear()


# --------------------------------------------------------------------------- contours.py


def test_mask_to_contours_round_trip_exact_with_holes_islands_and_border():
    rng = np.random.default_rng(0)
    mask = np.zeros((40, 50), dtype=bool)
    mask[30:40, :] = True  # touches left, right and bottom border
    mask[5:20, 5:25] = True
    mask[9:14, 9:14] = False  # hole
    mask[11, 11] = True  # island inside the hole
    mask[2, 40] = True  # single pixel
    mask |= rng.random(mask.shape) > 0.93  # speckle: many tiny islands, diagonal contacts
    contours = mask_to_contours(mask)
    assert all(len(c) >= 3 for c in contours)
    assert all(not np.array_equal(c[0], c[-1]) for c in contours), "closing point must not repeat"
    np.testing.assert_array_equal(contours_to_mask(contours, mask.shape), mask)
    # full mask: one contour hugging the border, area kept
    full = np.ones((7, 9), dtype=bool)
    (contour,) = mask_to_contours(full)
    np.testing.assert_array_equal(contours_to_mask([contour], full.shape), full)
    assert contour[:, 0].min() == -0.5 and contour[:, 0].max() == 6.5
    assert contour[:, 1].min() == -0.5 and contour[:, 1].max() == 8.5
    assert mask_to_contours(np.zeros((5, 5))) == []
    with pytest.raises(ValueError, match="2D"):
        mask_to_contours(np.zeros((2, 2, 2)))


def test_contours_agree_with_skimage_find_contours():
    from skimage.measure import find_contours

    rng = np.random.default_rng(3)
    volume = rng.random((30, 40, 6)) > 0.6
    volume[:, :, 2] = False  # an empty slice in the middle
    traced = volume_to_contours(volume)
    assert [k for k, _ in traced] == sorted(k for k, _ in traced)
    for k in range(volume.shape[2]):
        ours = [c for kk, c in traced if kk == k]
        reference = [c - 1 for c in find_contours(np.pad(volume[:, :, k], 1).astype(float), 0.5)]
        assert len(ours) == len(reference)
        if ours:
            our_points = {tuple(p) for p in np.concatenate(ours).tolist()}
            ref_points = {tuple(p) for p in np.concatenate(reference).tolist()}
            assert our_points <= ref_points  # same vertices, collinear ones dropped
        np.testing.assert_array_equal(contours_to_mask(ours, volume.shape[:2]), volume[:, :, k])
    with pytest.raises(ValueError, match="3D"):
        volume_to_contours(np.zeros((3, 3)))


def test_contours_to_mask_matches_skimage_polygon():
    from skimage.draw import polygon

    rng = np.random.default_rng(4)
    for _ in range(50):
        vertices = rng.uniform(-5, 45, (int(rng.integers(3, 12)), 2))  # may self-intersect, leave the image
        expected = np.zeros((40, 40), dtype=bool)
        rr, cc = polygon(vertices[:, 0], vertices[:, 1], shape=expected.shape)
        expected[rr, cc] = True
        np.testing.assert_array_equal(contours_to_mask([vertices], expected.shape), expected)


def test_collinear_points_dropped():
    mask = np.zeros((30, 30), dtype=bool)
    mask[5:25, 3:28] = True
    (contour,) = mask_to_contours(mask)
    assert len(contour) == 8  # 4 sides + 4 cut corners


def test_simplify_contour_in_mm():
    mask = np.zeros((100, 100), dtype=bool)
    rr, cc = disk((50, 50), 40)
    mask[rr, cc] = True
    (contour,) = mask_to_contours(mask)
    simplified = simplify_contour(contour, 0.5, (0.8, 1.2))
    assert 3 <= len(simplified) < len(contour) / 2
    assert dice(contours_to_mask([simplified], mask.shape), mask) >= 0.99
    np.testing.assert_array_equal(simplify_contour(contour, 0.0, (1, 1)), contour)
    with pytest.raises(ValueError, match="tolerance_mm"):
        simplify_contour(contour, -1.0, (1, 1))
    with pytest.raises(ValueError, match="spacing"):
        simplify_contour(contour, 1.0, (0, 1))


def test_format_ds_values_valid_and_precise():
    from pydicom.valuerep import DSfloat

    rng = np.random.default_rng(1)
    values = np.concatenate(
        [
            rng.uniform(-2000, 2000, 5000),
            [0.0, -0.0, -0.0004, 0.0004, 0.0005, -0.0006, 12.5, -3.0, 100.0, 99999.9999, 123456789.123, 1e-9],
        ]
    )
    text = format_ds_values(values)
    assert len(text) % 2 == 0
    parts = text.decode("ascii").rstrip(" ").split("\\")
    assert len(parts) == len(values)
    assert max(len(p) for p in parts) <= 16
    for part in parts:
        DSfloat(part, validation_mode=pydicom.config.RAISE)  # valid DS
        assert part == part.strip() and not part.endswith(".")
        if "." in part:
            assert not part.endswith("0"), part
    np.testing.assert_allclose([float(p) for p in parts], values, atol=5e-4 + 1e-9)
    assert parts[-12:-6] == ["0", "0", "0", "0", "0", "-0.001"]  # 0.0005 rounds half to even
    assert parts[-6:-1] == ["12.5", "-3", "100", "100000", "123456789.123"]
    with pytest.raises(ValueError, match="finite"):
        format_ds_values(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="16-character"):
        format_ds_values(np.array([1e13]))


def test_format_ds_chunks_formats_each_run_as_format_ds_values():
    rng = np.random.default_rng(2)
    values = np.array([round(v, int(d)) for v, d in zip(rng.uniform(-500, 500, 40), rng.integers(0, 4, 40))])
    sizes = [3, 0, 1, 12, 24]
    chunks = format_ds_chunks(values, sizes)
    starts = np.cumsum([0] + sizes[:-1])
    assert chunks == [format_ds_values(values[a:a + n]) if n else b"" for a, n in zip(starts, sizes)]
    assert all(len(c) % 2 == 0 for c in chunks)
    with pytest.raises(ValueError, match="add up to 40 values, got a sum of 39"):
        format_ds_chunks(values, [39])


def _ds_numbers(value) -> np.ndarray:
    """ContourData as numbers; pydicom leaves a value written with VR UN (over 64 kB) as bytes."""
    return np.array(value.split(b"\\") if isinstance(value, bytes) else value, dtype=float)


def test_contour_sequence_written_raw_reads_back_the_same(make_series, tmp_path, caplog):
    """The Contour Sequence is encoded by the writer itself: in memory and in the file it reads as written,
    under another character set too, and a contour too long for a 2-byte DS length goes to VR UN."""
    series, _ = make_series("HFS", (0.9, 0.9))
    series.datasets[0].SpecificCharacterSet = "ISO_IR 192"
    labels = phantom_labels()
    rows, cols, _ = labels.shape
    yy, xx = np.mgrid[:rows, :cols]
    labels[:, :, 2] = np.where((yy + xx) % 2 == 0, 3, 0)  # a checkerboard slice: thousands of tiny polygons
    # Teeth with one-pixel bumps hanging from one bar: one polygon of about 5000 points (over 64 kB of DS).
    comb = (xx % 3 == 0) | ((xx % 3 == 1) & (yy % 2 == 0)) | ((xx % 3 == 2) & (yy % 2 == 1))
    labels[:, :, 3] = 0
    labels[5:-4, 4:-4, 3] = np.where(comb[5:-4, 4:-4], 3, 0)
    labels[4, 4:-4, 3] = 3
    path = tmp_path / "RS.dcm"
    with caplog.at_level("WARNING", logger="vacseg_monai.dicom.rtstruct"):
        written = write_rtstruct(labels, series, path)
    assert "is written with VR UN" in caplog.text
    ds = pydicom.dcmread(path)
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    sop_uids = list(series.sop_instance_uids)
    for roi_file, roi_memory in zip(ds.ROIContourSequence, written.ROIContourSequence):
        items = roi_file.get("ContourSequence", [])
        assert len(items) == len(roi_memory.get("ContourSequence", []))
        assert [int(c.ContourNumber) for c in items] == list(range(1, len(items) + 1))
        for c_file, c_memory in zip(items, roi_memory.get("ContourSequence", [])):
            assert c_file.ContourGeometricType == "CLOSED_PLANAR"
            data = _ds_numbers(c_file.ContourData).reshape(-1, 3)
            assert len(data) == int(c_file.NumberOfContourPoints) >= 3
            np.testing.assert_array_equal(data, _ds_numbers(c_memory.ContourData).reshape(-1, 3))
            k = int(round(lps_to_index(series.affine_lps, data[:1])[0, 2]))
            assert c_file.ContourImageSequence[0].ReferencedSOPInstanceUID == sop_uids[k]
    np.testing.assert_array_equal(read_rtstruct(ds, series), labels)


# --------------------------------------------------------------------------- writer


@needs_dciodvfy
@pytest.mark.parametrize(
    "orientation, pixel_spacing",
    [("HFS", (0.9, 0.9)), ("FFS", (0.9, 0.9)), ("HFP", (0.9, 0.9)), ("HFS", (0.8, 1.25)), ("FFP", (0.8, 1.25))],
)
def test_dciodvfy_reports_no_errors(make_series, tmp_path, orientation, pixel_spacing):
    series, _ = make_series(orientation, pixel_spacing)
    path = tmp_path / "RS.dcm"
    write_rtstruct(phantom_labels(), series, path)
    errors, warnings = dciodvfy_report(path)
    assert errors == []
    assert warnings == []  # see docs/conformance.md: none are expected


@needs_plastimatch
@pytest.mark.parametrize(
    "orientation, pixel_spacing",
    [("HFS", (0.9, 0.9)), ("FFS", (0.9, 0.9)), ("HFP", (0.9, 0.9)), ("FFP", (0.8, 1.25))],
)
def test_round_trip_plastimatch_and_own_reader(make_series, tmp_path, orientation, pixel_spacing):
    series, ct_dir = make_series(orientation, pixel_spacing)
    labels = phantom_labels()
    path = tmp_path / "RS.dcm"
    write_rtstruct(labels, series, path)

    ours = read_rtstruct(path, series)
    np.testing.assert_array_equal(ours, labels)  # pixel-aligned shapes come back exactly
    assert ours.dtype == np.uint8

    theirs = plastimatch_masks(path, ct_dir, tmp_path / "pm", series)
    assert sorted(theirs) == sorted(label.name for label in LABELS)
    for label in LABELS:
        truth = labels == label.value
        assert truth.sum() > 500  # objects of tens of pixels: Dice is meaningful
        score = dice(theirs[label.name], truth)
        assert score >= 0.99, f"{orientation} {label.name}: plastimatch Dice {score:.4f}"


def test_structure(make_series, tmp_path):
    series, _ = make_series("HFS", (0.9, 0.9))
    labels = phantom_labels()
    path = tmp_path / "RS.dcm"
    written = write_rtstruct(labels, series, path, root_uid="1.2.3.4.")
    ds = pydicom.dcmread(path)
    ct = series.datasets[0]

    assert ds.file_meta.MediaStorageSOPClassUID == RTSTRUCT_SOP_CLASS_UID == ds.SOPClassUID
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID == written.SOPInstanceUID
    assert ds.Modality == "RTSTRUCT"
    assert ds.SOPInstanceUID.startswith("1.2.3.4.") and ds.SeriesInstanceUID.startswith("1.2.3.4.")
    assert ds.SeriesInstanceUID != series.series_instance_uid
    assert ds.Manufacturer == "vacseg_monai" and ds.SoftwareVersions == __version__
    assert "automatic" in ds.SeriesDescription.lower()
    assert ds.StructureSetLabel and ds.StructureSetDate and ds.StructureSetTime
    # patient and study copied, veterinary attributes included
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyID",
                    "StudyDate", "StudyTime") + VET_KEYWORDS:  # fmt: skip
        assert keyword in ct, keyword
        assert ds[keyword].value == ct[keyword].value, keyword
    assert ds.PatientBreedCodeSequence[0].CodeValue == ct.PatientBreedCodeSequence[0].CodeValue
    assert ds.ReferencedStudySequence[0].ReferencedSOPInstanceUID == series.study_instance_uid

    # ROIs from the label table
    rois = {int(item.ROINumber): item for item in ds.StructureSetROISequence}
    observations = {int(item.ReferencedROINumber): item for item in ds.RTROIObservationsSequence}
    contours = {int(item.ReferencedROINumber): item for item in ds.ROIContourSequence}
    assert sorted(rois) == sorted(observations) == sorted(contours) == sorted(VALUE.values())
    for label in LABELS:
        assert rois[label.value].ROIName == label.name
        assert rois[label.value].ROIGenerationAlgorithm == "AUTOMATIC"
        assert rois[label.value].ReferencedFrameOfReferenceUID == series.frame_of_reference_uid
        assert observations[label.value].RTROIInterpretedType == label.rt_roi_type.value
        assert [int(v) for v in contours[label.value].ROIDisplayColor] == list(label.color)
    assert observations[label_by_name("Vacbag").value].RTROIInterpretedType == "FIXATION"
    assert observations[label_by_name("Couch").value].RTROIInterpretedType == "SUPPORT"
    assert observations[label_by_name("Body").value].RTROIInterpretedType == "EXTERNAL"

    # the referenced series lists every image with its SOP class
    (ref_for,) = ds.ReferencedFrameOfReferenceSequence
    assert ref_for.FrameOfReferenceUID == series.frame_of_reference_uid
    (ref_study,) = ref_for.RTReferencedStudySequence
    assert ref_study.ReferencedSOPInstanceUID == series.study_instance_uid
    (ref_series,) = ref_study.RTReferencedSeriesSequence
    assert ref_series.SeriesInstanceUID == series.series_instance_uid
    assert [i.ReferencedSOPInstanceUID for i in ref_series.ContourImageSequence] == list(series.sop_instance_uids)
    assert {i.ReferencedSOPClassUID for i in ref_series.ContourImageSequence} == {series.sop_class_uid}

    # contours: per slice, references, point counts, DS strings, islands and holes
    raw = pydicom.dcmread(path)  # keep the original DS strings
    counts = {}
    for roi in raw.ROIContourSequence:
        value = int(roi.ReferencedROINumber)
        counts[value] = {}
        for contour in roi.ContourSequence:
            assert contour.ContourGeometricType == "CLOSED_PLANAR"
            points = np.asarray(contour.ContourData, dtype=np.float64).reshape(-1, 3)
            assert int(contour.NumberOfContourPoints) == len(points) >= 3
            assert not np.allclose(points[0], points[-1]), "duplicate closing point"
            strings = [str(v) for v in contour.ContourData]
            assert max(len(s) for s in strings) <= 16
            (image,) = contour.ContourImageSequence
            assert image.ReferencedSOPClassUID == series.sop_class_uid
            # the referenced slice is the one whose plane holds the contour
            slice_index = list(series.sop_instance_uids).index(image.ReferencedSOPInstanceUID)
            slice_ds = series.datasets[slice_index]
            normal = np.cross(
                np.asarray(slice_ds.ImageOrientationPatient[:3], float),
                np.asarray(slice_ds.ImageOrientationPatient[3:], float),
            )
            distance = (points - np.asarray(slice_ds.ImagePositionPatient, float)) @ normal
            assert np.abs(distance).max() < 1e-3
            counts[value][slice_index] = counts[value].get(slice_index, 0) + 1
    assert counts[VALUE["Couch"]] == {k: 1 for k in range(N_SLICES)}  # full width band: one contour
    assert counts[VALUE["Vacbag"]] == {k: 2 for k in range(N_SLICES)}  # ring: outer + hole
    assert counts[VALUE["Body"]] == {k: 3 for k in range(1, N_SLICES - 1)}  # three islands, no empty slices


def test_coordinates_match_highdicom(make_series):
    from highdicom.spatial import PixelToReferenceTransformer, ReferenceToPixelTransformer

    series, _ = make_series("FFP", (0.8, 1.25))
    ds = write_rtstruct(phantom_labels(), series, None)
    checked = 0
    for roi in ds.ROIContourSequence:
        for contour in roi.ContourSequence:
            points = np.asarray(contour.ContourData, dtype=np.float64).reshape(-1, 3)
            uid = contour.ContourImageSequence[0].ReferencedSOPInstanceUID
            slice_ds = series.datasets[list(series.sop_instance_uids).index(uid)]
            to_pixel = ReferenceToPixelTransformer(
                image_position=slice_ds.ImagePositionPatient,
                image_orientation=slice_ds.ImageOrientationPatient,
                pixel_spacing=slice_ds.PixelSpacing,
                round_output=False,
            )
            col_row_z = to_pixel(points)
            assert np.abs(col_row_z[:, 2]).max() < 1e-3  # in the referenced slice's plane
            # marching-squares vertices lie on pixel edges: one coordinate is on the half-pixel lattice
            frac = np.abs(col_row_z[:, :2] * 2 - np.rint(col_row_z[:, :2] * 2))
            assert frac.max() < 1e-2
            checked += 1
    assert checked > 20
    # the pixel -> patient mapping of the writer equals highdicom's for every slice corner
    for k, slice_ds in enumerate(series.datasets):
        to_ref = PixelToReferenceTransformer(
            image_position=slice_ds.ImagePositionPatient,
            image_orientation=slice_ds.ImageOrientationPatient,
            pixel_spacing=slice_ds.PixelSpacing,
        )
        col_row = np.array([[0, 0], [COLS - 1, 0], [0, ROWS - 1], [COLS - 1, ROWS - 1], [17, 42]])
        ours = index_to_lps(series.affine_lps, np.column_stack([col_row[:, 1], col_row[:, 0], np.full(5, k)]))
        np.testing.assert_allclose(ours, to_ref(col_row), atol=1e-4)


@needs_dciodvfy
def test_empty_label_gives_roi_without_contours(make_series, tmp_path):
    series, _ = make_series("HFS", (0.9, 0.9))
    labels = phantom_labels()
    labels[labels == VALUE["Body"]] = 0
    path = tmp_path / "RS.dcm"
    write_rtstruct(labels, series, path)
    ds = pydicom.dcmread(path)
    body = VALUE["Body"]
    assert body in [int(i.ROINumber) for i in ds.StructureSetROISequence]
    assert body in [int(i.ReferencedROINumber) for i in ds.RTROIObservationsSequence]
    (roi,) = [i for i in ds.ROIContourSequence if int(i.ReferencedROINumber) == body]
    assert "ContourSequence" not in roi
    errors, _ = dciodvfy_report(path)
    assert errors == []
    back = read_rtstruct(path, series)
    np.testing.assert_array_equal(back, labels)


@needs_dciodvfy
def test_animal_type2c_attributes_added_when_missing(make_series, tmp_path):
    import copy

    series, _ = make_series("HFS", (0.9, 0.9))
    bare = copy.copy(series)
    bare.datasets = [copy.deepcopy(ds) for ds in series.datasets]
    for keyword in VET_KEYWORDS[2:]:  # keep only the species
        del bare.datasets[0][keyword]
    path = tmp_path / "RS.dcm"
    write_rtstruct(phantom_labels(), bare, path)
    ds = pydicom.dcmread(path)
    assert ds.PatientSpeciesDescription == series.datasets[0].PatientSpeciesDescription
    for keyword in ("PatientBreedDescription", "PatientBreedCodeSequence", "BreedRegistrationSequence",
                    "ResponsiblePerson", "ResponsibleOrganization", "PatientSexNeutered"):  # fmt: skip
        assert keyword in ds and not ds[keyword].value, keyword
    assert "ResponsiblePersonRole" not in ds
    errors, warnings = dciodvfy_report(path)
    assert errors == [] and warnings == []


def test_simplification_reduces_points_keeps_dice(make_series):
    series, _ = make_series("HFS", (0.9, 0.9))
    labels = phantom_labels()

    def n_points(ds):
        return sum(int(c.NumberOfContourPoints) for roi in ds.ROIContourSequence for c in roi.ContourSequence)

    full = write_rtstruct(labels, series, None)
    simple = write_rtstruct(labels, series, None, simplify_tolerance_mm=0.5)
    assert n_points(simple) < 0.7 * n_points(full)
    back = read_rtstruct(simple, series)
    for label in LABELS:
        assert dice(back == label.value, labels == label.value) >= 0.98, label.name
    with pytest.raises(ValueError, match="simplify_tolerance_mm"):
        write_rtstruct(labels, series, None, simplify_tolerance_mm=-1)


def test_deterministic_contours(make_series):
    series, _ = make_series("HFS", (0.9, 0.9))
    a = write_rtstruct(phantom_labels(), series, None)
    b = write_rtstruct(phantom_labels(), series, None)
    data_a = [c.ContourData for roi in a.ROIContourSequence for c in roi.ContourSequence]
    data_b = [c.ContourData for roi in b.ROIContourSequence for c in roi.ContourSequence]
    assert data_a == data_b


def test_label_map_validation_and_metatensor(make_series):
    from monai.data import MetaTensor

    series, _ = make_series("HFS", (0.9, 0.9))
    labels = phantom_labels()
    with pytest.raises(ValueError, match=r"\(96, 95, 10\).*\(96, 96, 10\)"):
        write_rtstruct(labels[:, :95], series, None)
    tensor = MetaTensor(labels[None].astype(np.float32), affine=series.volume.affine)
    ds = write_rtstruct(tensor, series, None)
    np.testing.assert_array_equal(read_rtstruct(ds, series), labels)
    shifted = np.array(series.volume.affine, dtype=np.float64)
    shifted[0, 3] += 5.0
    with pytest.raises(ValueError, match="affine does not match"):
        write_rtstruct(MetaTensor(labels[None], affine=shifted), series, None)
    with pytest.raises(ValueError, match="integers"):
        write_rtstruct(labels + 0.5, series, None)
    with pytest.raises(ValueError, match="root_uid"):
        write_rtstruct(labels, series, None, root_uid="1.2.3")


@pytest.mark.parametrize(
    "name, expected",
    [
        ("Vacbag", "Vacbag"), ("VacBag", "Vacbag"), ("vac bag", "Vacbag"), ("Vacbag_1", "Vacbag"),
        ("VACBAG", "Vacbag"), ("Vac-Lok", "Vacbag"), ("couch", "Couch"), ("Couch Top", "Couch"),
        ("table", "Couch"), ("CouchInterior", "Couch"), ("External", "Body"), ("BODY", "Body"),
        ("skin", "Body"), ("Body (2)", "Body"), ("PTV", None), ("GTV_1", None), ("bladder", None),
        # names the node marked (review mark, validation label) still match when sent back as corrections
        ("Vacbag CHECK", "Vacbag"), ("Couch Top CHECK", "Couch"), ("Body NOT FOR CLINICAL USE", "Body"),
        ("CHECK", None), ("PTV CHECK", None),
    ],
)  # fmt: skip
def test_name_normalisation(name, expected):
    value = resolve_roi_label(name)
    assert value == (None if expected is None else label_by_name(expected).value)


def test_name_map_overrides():
    assert normalize_roi_name(" Vac bag_2 ") == "vacbag"
    assert resolve_roi_label("Bean bag", name_map={"bean bag": "Vacbag"}) == VALUE["Vacbag"]
    assert resolve_roi_label("Bean bag", name_map={"Bean bag": 1}) == 1
    assert resolve_roi_label("skin", name_map={"skin": None}) is None
    with pytest.raises(ValueError, match="not in the label table"):
        resolve_roi_label("x", name_map={"x": 9})
    with pytest.raises(ValueError, match="unknown label name"):
        resolve_roi_label("x", name_map={"x": "Liver"})


def _rename_and_add(ds: pydicom.Dataset, renames: dict[int, str], extra_name: str | None = None) -> pydicom.Dataset:
    for item in ds.StructureSetROISequence:
        if int(item.ROINumber) in renames:
            item.ROIName = renames[int(item.ROINumber)]
    if extra_name is not None:
        import copy

        roi = copy.deepcopy(ds.StructureSetROISequence[0])
        roi.ROINumber, roi.ROIName = 99, extra_name
        ds.StructureSetROISequence.append(roi)
        contour = copy.deepcopy(ds.ROIContourSequence[0])
        contour.ReferencedROINumber = 99
        ds.ROIContourSequence.append(contour)
    return ds


def test_reader_maps_names_and_reports_unknown(make_series, caplog):
    series, _ = make_series("HFS", (0.9, 0.9))
    labels = phantom_labels()
    ds = write_rtstruct(labels, series, None)
    _rename_and_add(ds, {VALUE["Vacbag"]: "VAC BAG_1", VALUE["Couch"]: "Couch Top", VALUE["Body"]: "External"}, "PTV")
    with caplog.at_level(logging.INFO, logger="vacseg_monai.dicom.rtstruct"):
        contents = read_rtstruct_contents(ds, series)
    np.testing.assert_array_equal(contents.labels, labels)
    assert contents.skipped_rois == ["PTV"]
    assert contents.roi_labels == {"VAC BAG_1": 1, "Couch Top": 2, "External": 3}
    assert any("PTV" in record.getMessage() for record in caplog.records)
    # the name map can route the unknown ROI to a label
    mapped = read_rtstruct_contents(ds, series, name_map={"ptv": "Body"})
    assert mapped.skipped_rois == []


def test_reader_overlap_lowest_label_wins(make_series):
    series, _ = make_series("HFS", (0.9, 0.9))
    body_everywhere = np.zeros((ROWS, COLS, N_SLICES), dtype=np.uint8)
    body_everywhere[10:80, 10:90] = VALUE["Body"]
    vacbag = np.zeros_like(body_everywhere)
    vacbag[40:60, 30:60] = VALUE["Vacbag"]
    ds_body = write_rtstruct(body_everywhere, series, None)
    ds_bag = write_rtstruct(vacbag, series, None)
    # splice: Body contours from one, Vacbag contours from the other
    roi_index = {int(r.ReferencedROINumber): i for i, r in enumerate(ds_body.ROIContourSequence)}
    ds_body.ROIContourSequence[roi_index[VALUE["Vacbag"]]] = ds_bag.ROIContourSequence[roi_index[VALUE["Vacbag"]]]
    back = read_rtstruct(ds_body, series)
    expected = body_everywhere.copy()
    expected[vacbag > 0] = VALUE["Vacbag"]
    np.testing.assert_array_equal(back, expected)


def test_reader_errors(make_series, tmp_path):
    series, ct_dir = make_series("HFS", (0.9, 0.9))
    ds = write_rtstruct(phantom_labels(), series, None)
    contour = ds.ROIContourSequence[0].ContourSequence[0]
    points = np.asarray(contour.ContourData, dtype=np.float64).reshape(-1, 3)
    points[:, 2] += 1.0  # 1 mm off a 2.5 mm slice grid
    contour.ContourData = [f"{v:.3f}" for v in points.ravel()]
    name = ds.StructureSetROISequence[0].ROIName
    z = points[:, 2].mean()
    with pytest.raises(ValueError, match=rf"ROI '{name}'.*z = {z:.3f} mm.*off every slice"):
        read_rtstruct(ds, series)
    points[:, 2] += 100.0  # beyond the last slice
    contour.ContourData = [f"{v:.3f}" for v in points.ravel()]
    with pytest.raises(ValueError, match="off every slice"):
        read_rtstruct(ds, series)
    ct_file = sorted(ct_dir.glob("*"))[0]
    with pytest.raises(ValueError, match="not an RT Structure Set"):
        read_rtstruct(ct_file, series)
