"""Tests of the synthetic canine CT phantom generator and its CLI."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from vacseg_monai.labels import label_by_name
from vacseg_monai.phantom import Tissue, generate_dataset, generate_phantom, write_npy_layout

VACBAG = label_by_name("Vacbag").value
COUCH = label_by_name("Couch").value
BODY = label_by_name("Body").value
ROOT = Path(__file__).resolve().parents[1]
SMALL = 128
SEEDS = range(6)


@pytest.fixture(scope="module")
def small_phantoms():
    return [generate_phantom(seed, size=SMALL) for seed in SEEDS]


@pytest.fixture(scope="module")
def full_phantom():
    return generate_phantom(7, size=512)


def _load_script():
    spec = importlib.util.spec_from_file_location("make_test_dataset", ROOT / "scripts" / "make_test_dataset.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_test_dataset"] = module
    spec.loader.exec_module(module)
    return module


def test_same_seed_identical_bytes_and_files(tmp_path):
    a = generate_phantom(3, size=SMALL)
    b = generate_phantom(3, size=SMALL)
    assert a.image.tobytes() == b.image.tobytes()
    assert a.labels.tobytes() == b.labels.tobytes()
    assert (a.patient_id, a.patient_name, a.breed_description, a.weight_kg) == (
        b.patient_id, b.patient_name, b.breed_description, b.weight_kg)
    da = write_npy_layout(a, tmp_path / "a")
    db = write_npy_layout(b, tmp_path / "b")
    files_a = sorted(p.relative_to(da) for p in da.rglob("*.npy"))
    files_b = sorted(p.relative_to(db) for p in db.rglob("*.npy"))
    assert files_a == files_b and len(files_a) == 2 * a.n_slices
    for rel in files_a:
        assert (da / rel).read_bytes() == (db / rel).read_bytes(), rel


def test_different_seeds_differ(small_phantoms):
    p0, p1 = small_phantoms[0], small_phantoms[1]
    assert p0.patient_id == "phantom_000" and p1.patient_id == "phantom_001"
    assert p0.image.shape != p1.image.shape or p0.image.tobytes() != p1.image.tobytes()


def test_geometry_and_dtypes(small_phantoms, full_phantom):
    for p in small_phantoms:
        rows, cols, n = p.image.shape
        assert (rows, cols) == (SMALL, SMALL)
        assert 60 <= n <= 140
        assert p.labels.shape == p.image.shape == p.tissues.shape
        assert p.image.dtype == np.int16 and p.labels.dtype == np.uint8
        # the field of view is kept at small sizes: spacing scales by 512 / size
        assert 0.6 * 4 <= p.pixel_spacing[0] == p.pixel_spacing[1] <= 1.0 * 4
        assert 2.0 <= p.slice_thickness_mm <= 3.0
        assert set(np.unique(p.labels)) <= {0, VACBAG, COUCH, BODY}
        assert p.species_description == "Canine"
        assert p.sex in ("M", "F") and p.neutered in ("ALTERED", "UNALTERED")
        assert p.patient_name.startswith("Phantom^") and 5 <= p.weight_kg <= 45
    p = full_phantom
    assert p.image.shape[:2] == (512, 512)
    assert 0.6 <= p.pixel_spacing[0] <= 1.0


def test_bag_and_body_never_overlap_and_couch_everywhere(small_phantoms, full_phantom):
    for p in [*small_phantoms, full_phantom]:
        # a label map holds one label per voxel; check the tissue truth agrees
        bag_tissue = np.isin(p.tissues, (Tissue.BAG, Tissue.BAG_SKIN))
        assert not np.any(bag_tissue & (p.labels == BODY))
        assert np.all(p.labels[bag_tissue] == VACBAG)
        # body label is the filled outline: lungs and gas lie inside it
        inner_air = np.isin(p.tissues, (Tissue.LUNG, Tissue.GAS))
        assert np.all(p.labels[inner_air] == BODY)
        couch_per_slice = (p.labels == COUCH).sum(axis=(0, 1))
        assert couch_per_slice.min() > 0.01 * p.image.shape[0] * p.image.shape[1]
        assert np.all((p.labels == BODY).any(axis=(0, 1)))


def test_bag_fraction_contiguous_and_ends_mid_series(small_phantoms):
    fractions = []
    for p in small_phantoms:
        present = (p.labels == VACBAG).any(axis=(0, 1))
        idx = np.flatnonzero(present)
        assert np.array_equal(idx, np.arange(idx[0], idx[-1] + 1)), "bag slices must be contiguous"
        assert (idx[0], idx[-1] + 1) == p.bag_slices
        # it starts at one end of the series and ends part way along
        assert idx[0] == 0 or idx[-1] == p.n_slices - 1
        assert not (idx[0] == 0 and idx[-1] == p.n_slices - 1)
        fractions.append(present.mean())
    assert all(0.55 <= f <= 0.85 for f in fractions), fractions
    assert 0.62 <= float(np.mean(fractions)) <= 0.78


def test_tissue_hounsfield_units(full_phantom):
    p = full_phantom
    hu, tis = p.image, p.tissues
    bag_median = np.median(hu[tis == Tissue.BAG])
    assert -850 <= bag_median <= -650
    assert len(p.lung_slices) > 0
    lungs = hu[:, :, p.lung_slices][tis[:, :, p.lung_slices] == Tissue.LUNG]
    assert -900 <= np.median(lungs) <= -800
    assert 0 <= np.median(hu[tis == Tissue.SOFT]) <= 80
    assert -130 <= np.median(hu[tis == Tissue.FAT]) <= -60
    assert 400 <= np.median(hu[tis == Tissue.BONE]) <= 1000
    assert np.median(hu[tis == Tissue.COUCH_CORE]) < -700
    # CT noise 10..25 HU: air inside the reconstruction circle
    n = hu.shape[0]
    idx = np.arange(n) - (n - 1) / 2
    inside = (idx[:, None] ** 2 + idx[None, :] ** 2) < (0.45 * n) ** 2
    far_air = ndimage.binary_erosion(tis[:, :, 0] == Tissue.AIR, iterations=4) & inside
    air = hu[:, :, 0][far_air]
    assert air.size > 10_000
    assert 8 <= air.std() <= 27 and -1005 <= np.median(air) <= -995
    assert p.extra["noise_sd_hu"] == pytest.approx(air.std(), rel=0.2)


def test_outside_reconstruction_circle(small_phantoms):
    for p in small_phantoms:
        n = p.image.shape[0]
        idx = np.arange(n) - (n - 1) / 2
        outside = (idx[:, None] ** 2 + idx[None, :] ** 2) > (n / 2) ** 2
        assert np.all(p.image[outside] == -1024)
        assert np.all(p.labels[outside] == 0)
        # the corners are outside and the centre is not
        assert outside[0, 0] and not outside[n // 2, n // 2]


def test_invalid_arguments():
    with pytest.raises(ValueError, match="seed"):
        generate_phantom(-1)
    with pytest.raises(ValueError, match="size"):
        generate_phantom(0, size=8)
    with pytest.raises(ValueError, match="n_patients"):
        generate_dataset("unused", n_patients=0)


def test_cli_writes_layout_and_montage(tmp_path):
    script = _load_script()
    out = tmp_path / "ds"
    montage = tmp_path / "m" / "montage.png"
    rc = script.main(["--out", str(out), "--patients", "2", "--seed", "5", "--size", "64",
                      "--montage", str(montage), "-q"])
    assert rc == 0
    patients = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert patients == ["phantom_005", "phantom_006"]
    for name in patients:
        n = len(list((out / name / "img").glob("*.npy")))
        assert 60 <= n <= 140
        assert n == len(list((out / name / "mask").glob("*.npy")))
        img = np.load(out / name / "img" / f"{n - 1}.npy")
        mask = np.load(out / name / "mask" / "0.npy")
        assert img.shape == (1, 64, 64) and img.dtype == np.int16
        assert mask.shape == (1, 64, 64) and mask.dtype == np.uint8
    ref = generate_phantom(6, size=64)
    assert np.array_equal(np.load(out / "phantom_006" / "mask" / "3.npy")[0], ref.labels[:, :, 3])
    assert montage.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert montage.stat().st_size > 10_000
