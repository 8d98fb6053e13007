"""The real-CT check: reference body, metrics, reading public scans, one scan through the bundle."""

from __future__ import annotations

import importlib.util
import math

import nibabel as nib
import numpy as np
import pytest

from conftest import REPO, dice, fetched_or_skip
from vacseg_monai import public_data, realct
from vacseg_monai.phantom import generate_phantom

VACBAG, COUCH, BODY = 1, 2, 3


def _body_on_couch(rows: int = 80, cols: int = 80, slices: int = 6) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """1 mm voxels: a 20 mm-radius soft-tissue cylinder with an air 'lung' inside, lying on a 3 mm couch plate.

    Returns the HU volume, the truth body (cylinder, hole filled) and the couch plate.
    """
    yy, xx = np.mgrid[:rows, :cols]
    disk = (yy - 40) ** 2 + (xx - 40) ** 2 <= 20**2
    lung = (yy - 38) ** 2 + (xx - 40) ** 2 <= 6**2
    plate = (yy >= 61) & (yy < 64)  # touches the cylinder's lowest row (60)
    hu = np.full((rows, cols), -1000.0, np.float32)
    hu[disk] = 40.0
    hu[lung] = -850.0
    hu[plate] = 300.0
    stack = lambda a: np.repeat(a[:, :, None], slices, axis=2)  # noqa: E731
    return stack(hu), stack(disk), stack(plate)


def test_reference_body_drops_the_touching_couch_plate_and_fills_the_lung():
    hu, truth, plate = _body_on_couch()
    ref = realct.reference_body(hu, (1.0, 1.0, 2.0))
    dice = 2 * np.count_nonzero(ref & truth) / (np.count_nonzero(ref) + np.count_nonzero(truth))
    assert dice > 0.99
    assert not (ref & plate).any()
    assert ref[38, 40, :].all()  # the lung is inside the body
    # Without the opening the plate touches the body and is part of its component.
    unopened = realct.reference_body(hu, (1.0, 1.0, 2.0), opening_radius_mm=0.0)
    assert (unopened & plate).sum() == plate.sum()


def test_reference_body_opening_follows_the_pixel_spacing():
    hu, truth, plate = _body_on_couch()
    # A 1 mm disk is 1 pixel at 1 mm spacing (the 3-pixel plate survives and joins the body) but
    # 4 pixels at 0.25 mm spacing (the plate, 0.75 mm thick there, is opened away).
    coarse = realct.reference_body(hu, (1.0, 1.0, 1.0), opening_radius_mm=1.0)
    assert (coarse & plate).sum() > 0.95 * plate.sum()  # all but the ends the image border erodes
    fine = realct.reference_body(hu, (0.25, 0.25, 1.0), opening_radius_mm=1.0)
    assert not (fine & plate).any()
    assert np.count_nonzero(fine & truth) / np.count_nonzero(truth) > 0.98


@pytest.mark.parametrize("seed", [1000, 1001])
def test_reference_body_matches_the_phantom_body_and_excludes_couch_and_bag(seed):
    phantom = generate_phantom(seed, size=128, version=1)  # the clean world: a bag film of -350 HU joins v2 bodies
    spacing = (*phantom.pixel_spacing, phantom.slice_thickness_mm)
    ref = realct.reference_body(phantom.image, spacing)
    body, couch, bag = (phantom.labels == v for v in (BODY, COUCH, VACBAG))
    dice = 2 * np.count_nonzero(ref & body) / (np.count_nonzero(ref) + np.count_nonzero(body))
    assert dice >= 0.98
    assert np.count_nonzero(ref & couch) / np.count_nonzero(couch) < 0.01
    assert np.count_nonzero(ref & bag) / np.count_nonzero(bag) < 0.1


def test_reference_body_rejects_bad_input():
    with pytest.raises(ValueError, match=r"3D \(rows, cols, n_slices\) volume, got shape \(4, 4\)"):
        realct.reference_body(np.zeros((4, 4)), (1, 1, 1))
    with pytest.raises(ValueError, match="three positive"):
        realct.reference_body(np.zeros((4, 4, 2)), (1, 0, 1))
    assert not realct.reference_body(np.full((8, 8, 2), -1000.0), (1, 1, 1)).any()


def test_metrics_on_known_volumes():
    labels = np.zeros((10, 10, 4), np.uint8)
    reference = np.zeros_like(labels, dtype=bool)
    reference[2:6, 2:6, :] = True  # 64 voxels
    labels[2:6, 2:6, :] = BODY
    labels[2:6, 5, :] = COUCH  # 16 couch voxels inside the reference, 48 body voxels left
    labels[8:10, :, :] = COUCH  # 80 couch voxels outside
    labels[0, 0:5, 0] = VACBAG  # 5 voxels
    m = realct.real_ct_metrics(labels, reference, (2.0, 2.0, 2.5))  # 10 mm^3 per voxel
    assert m.vacbag_cm3 == pytest.approx(0.05)
    assert m.couch_cm3 == pytest.approx(0.96)
    assert m.couch_inside_body_share == pytest.approx(16 / 96)
    assert m.body_dice == pytest.approx(2 * 48 / (48 + 64))
    assert (m.vacbag_ok, m.body_ok, m.couch_ok, m.passed) == (True, False, False, False)
    empty = realct.real_ct_metrics(np.zeros_like(labels), np.zeros_like(reference), (1, 1, 1))
    assert math.isnan(empty.body_dice) and empty.couch_inside_body_share == 0.0 and not empty.passed
    with pytest.raises(ValueError, match=r"Label map \(10, 10, 4\) and reference body \(10, 10\)"):
        realct.real_ct_metrics(labels, reference[:, :, 0], (1, 1, 1))


def test_thresholds_pass_exactly_at_the_limits():
    m = realct.RealCTMetrics(vacbag_cm3=1.0, couch_cm3=5.0, couch_inside_body_share=0.0099, body_dice=0.98,
                             body_cm3=1.0, reference_body_cm3=1.0)
    assert m.passed
    assert not realct.RealCTMetrics(1.01, 5.0, 0.0, 0.99, 1.0, 1.0).passed
    assert not realct.RealCTMetrics(0.0, 5.0, 0.01, 0.99, 1.0, 1.0).passed


def test_nifti_is_brought_to_the_display_order(tmp_path):
    """A RAS-stored volume with a marker at the anterior right: after loading it is at low row, low column."""
    data = np.zeros((20, 30, 5), np.int16)  # axes: +x right, +y anterior, +z superior
    data[17, 25, 2] = 1000  # right (high x) and anterior (high y)
    affine = np.diag([2.0, 1.5, 3.0, 1.0])
    loaded_path = realct._display_order_nifti(nib.Nifti1Image(data, affine), tmp_path / "v.nii.gz")
    from vacseg_monai.inference import load_input

    source = load_input(loaded_path)
    hu = source.image[0].numpy()
    assert hu.shape == (30, 20, 5)
    assert np.unravel_index(np.argmax(hu), hu.shape) == (30 - 1 - 25, 20 - 1 - 17, 2)
    assert source.spacing == pytest.approx((1.5, 2.0, 3.0))


def test_nrrd_is_read_with_its_lps_geometry(tmp_path):
    itk = pytest.importorskip("itk")
    array = np.zeros((4, 6, 8), np.int16)  # ITK order (z, y, x)
    array[1, 0, 7] = 500  # LPS: high x = left, y = 0 anterior
    image = itk.image_from_array(array)
    image.SetSpacing((0.5, 0.75, 2.0))
    itk.imwrite(image, str(tmp_path / "v.nrrd"))
    nifti = realct._nrrd_as_nifti(tmp_path / "v.nrrd")
    assert nib.aff2axcodes(nifti.affine) == ("L", "P", "S")
    out = realct._display_order_nifti(nifti, tmp_path / "v.nii.gz")
    data = np.asarray(nib.load(out).dataobj)
    assert data.shape == (6, 8, 4)
    assert np.unravel_index(np.argmax(data), data.shape) == (0, 7, 1)  # anterior row 0, left column 7


def test_real_chest_ct_is_read_with_the_couch_below_the_body(tmp_path):
    source = realct.load_real_scan("lung2", tmp_path)
    hu = source.image[0].numpy()
    assert hu.shape == (512, 512, 61)
    spacing = source.spacing
    assert spacing == pytest.approx((0.6269531, 0.6269531, 5.0))
    body = realct.reference_body(hu, spacing)
    body_rows = np.nonzero(body)[0]
    table_row = int(np.argmax(np.count_nonzero((hu > -400) & ~body, axis=(1, 2))))
    assert table_row > body_rows.max()  # the scanner table lies below the patient
    assert np.nonzero(body & (hu > 250))[0].mean() > body_rows.mean()  # the spine is posterior
    assert 15000 < np.count_nonzero(body) * np.prod(spacing) / 1000 < 25000  # an adult chest, cm^3


@pytest.fixture(scope="module")
def segmenter():
    from vacseg_monai.segmenter import BundleSegmenter

    return BundleSegmenter(device="cpu")


def test_one_real_slice_through_the_bundle(segmenter, tmp_path):
    check = realct.check_scan("pydicom_explicit_vr_un", segmenter, workdir=tmp_path, picture_dir=tmp_path)
    assert check.error is None, check.error
    assert check.shape == (512, 512, 1)
    assert check.spacing == pytest.approx((0.859375, 0.859375, realct.NOMINAL_SLICE_THICKNESS_MM))
    assert (check.source, check.licence, check.used_in_training) == ("pydicom-data 1.0.0", "MIT", False)
    assert check.notes[0] == "states no slice thickness; read as 5 mm"
    assert check.notes[1].startswith("stored with the couch at the top")  # its IOP column direction is (0, -1, 0)
    m = check.metrics
    assert 0.5 < m.body_dice <= 1.0
    assert m.reference_body_cm3 == pytest.approx(m.body_cm3, rel=0.2)
    assert check.picture == tmp_path / "real_ct_pydicom_explicit_vr_un.png"
    assert check.picture.stat().st_size > 10_000


@pytest.mark.slow
def test_the_shipped_model_draws_no_bag_on_the_held_out_real_export(segmenter, tmp_path):
    """Issue 11's bar on the TotalSegmentator example DICOM export (a real anonymised export, no bag in it)."""
    assert "totalseg_dicom" not in realct.TRAINING_SCANS
    check = realct.check_scan("totalseg_dicom", segmenter, workdir=tmp_path)
    assert check.error is None, check.error
    m = check.metrics
    assert m.vacbag_cm3 <= realct.MAX_VACBAG_CM3, m
    assert m.body_dice >= realct.MIN_BODY_DICE, m
    assert m.couch_inside_body_share <= realct.MAX_COUCH_INSIDE_SHARE, m
    assert m.couch_cm3 > 100  # the real couch under the patient is found, not only the bag suppressed


def test_an_unreadable_scan_is_reported_not_raised(segmenter, tmp_path, monkeypatch):
    monkeypatch.setitem(public_data.SCANS, "mr_slice", public_data.PublicScan(
        "mr_slice", "pydicom-data", "data_store/data/MR2_UNCR.dcm", public_data.ScanKind.DICOM_FILE, "an MR slice"))
    check = realct.check_scan("mr_slice", segmenter, workdir=tmp_path)
    assert check.metrics is None
    assert check.error.startswith("not readable: ")
    assert "No CT Image Storage series found" in check.error
    assert realct.check_scan("mr_slice", segmenter, workdir=tmp_path, training_scans={"mr_slice"}).used_in_training
    with pytest.raises(public_data.PublicDataError, match="Unknown public scan 'nope'"):
        realct.check_scan("nope", segmenter)


# --------------------------------------------------------------------------- hard negatives


@pytest.mark.parametrize("key", public_data.HARD_NEGATIVE_SCANS)
def test_a_real_scan_becomes_a_hard_negative_patient(key, tmp_path):
    from vacseg_monai.datasets import discover_patients, load_slice

    fetched_or_skip(key)
    hard = realct.write_hard_negative(key, tmp_path / "data" / f"real_{key}")
    source = realct.load_real_scan(key, tmp_path / "work")
    hu = source.image[0].numpy()
    (patient,) = discover_patients(tmp_path / "data")
    assert (patient.patient_id, patient.layout, patient.annotated) == (f"real_{key}", "npy", ("Vacbag", "Body"))
    side = max(hu.shape[:2])  # slices padded with air to a square, so that training's resize does not stretch them
    assert (patient.rows, patient.cols, patient.n_slices) == hard.shape == (side, side, hu.shape[2])
    assert patient.n_slices >= 10
    image = np.stack([load_slice(f)[0] for f in patient.image_files], axis=-1)
    labels = np.stack([load_slice(f)[0] for f in patient.label_files], axis=-1)
    assert image.dtype == np.int16 and labels.dtype == np.uint8
    top, left = (side - hu.shape[0]) // 2, (side - hu.shape[1]) // 2
    inner = (slice(top, top + hu.shape[0]), slice(left, left + hu.shape[1]))
    padding = np.ones(image.shape, dtype=bool)
    padding[inner] = False
    assert np.array_equal(image[inner], np.rint(hu))
    assert (image[padding] == realct.HARD_NEGATIVE_PAD_HU).all()
    assert set(np.unique(labels)) == {0, BODY}
    body = labels == BODY
    assert dice(body[inner], realct.reference_body(hu, source.spacing)) == 1.0
    assert not body[padding].any()
    assert hard.body_cm3 == pytest.approx(np.count_nonzero(body) * np.prod(source.spacing) / 1000)
    assert 10_000 < hard.body_cm3 < 30_000  # an adult trunk
    # HU as a scanner writes them: air outside, fat and soft tissue inside, bone, padding no lower than -3024.
    assert -3024 <= image.min() <= -1000 and 1500 < image.max() < 4000
    assert -1050 < np.median(image[~body]) < -950 and -150 < np.median(image[body]) < 50
    # The couch at the bottom: the rows richest in dense voxels outside the body lie below the body's centroid.
    table_row = int(np.argmax(np.count_nonzero((image > -400) & ~body, axis=(1, 2))))
    assert table_row > np.nonzero(body)[0].mean() and table_row > image.shape[0] / 2


def test_a_hard_negative_lies_with_the_patients_left_on_the_image_right(tmp_path):
    fetched_or_skip("totalseg_nifti")
    hard = realct.write_hard_negative("totalseg_nifti", tmp_path / "real_totalseg_nifti")
    top = hard.shape[2] - 1  # the upper abdomen: the liver lies on the patient's right
    image = np.load(hard.patient_dir / "img" / f"{top}.npy")[0]
    body = np.load(hard.patient_dir / "mask" / f"{top}.npy")[0] == BODY
    liver = body & (image > 40) & (image < 90)
    assert np.nonzero(liver)[1].mean() < np.nonzero(body)[1].mean() - 5


def test_a_check_scan_is_never_written_as_a_hard_negative(tmp_path):
    with pytest.raises(ValueError, match="'lung1' is held out for the real-CT check .*hard negatives are totalseg_nifti"):
        realct.write_hard_negative("lung1", tmp_path / "real_lung1")
    assert not (tmp_path / "real_lung1").exists()
    with pytest.raises(public_data.PublicDataError, match="Unknown public scan 'nope'"):
        realct.write_hard_negative("nope", tmp_path / "nope")


def test_make_hard_negatives_script_writes_patients_and_a_montage(tmp_path):
    from vacseg_monai.datasets import discover_patients

    spec = importlib.util.spec_from_file_location("make_hard_negatives", REPO / "scripts" / "make_hard_negatives.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    main = script.main
    fetched_or_skip("totalseg_nifti")
    montage = tmp_path / "montage.png"
    assert main([str(tmp_path / "data"), "--scans", "totalseg_nifti", "--montage", str(montage), "-q"]) == 0
    assert [p.patient_id for p in discover_patients(tmp_path / "data")] == ["real_totalseg_nifti"]
    assert montage.stat().st_size > 5_000
    with pytest.raises(SystemExit) as refused:
        main([str(tmp_path / "other"), "--scans", "lung1"])
    assert refused.value.code == 2
    assert not (tmp_path / "other").exists()
