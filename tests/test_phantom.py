"""Tests of the synthetic CT phantom generators (v1 kept bit-identical, v2 varied) and the CLI."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from vacseg_monai.labels import label_by_name
from vacseg_monai.phantom import DEFAULT_VERSION, Tissue, generate_dataset, generate_phantom, write_npy_layout

VACBAG = label_by_name("Vacbag").value
COUCH = label_by_name("Couch").value
BODY = label_by_name("Body").value
ROOT = Path(__file__).resolve().parents[1]
SMALL = 128
SEEDS = range(6)
# sha256 of image + labels + tissues bytes of generator v1, computed before the generator became a package.
V1_SHA256 = {
    (0, 128): "fc052dc0e300f07ff6522ec7be3987df527268f0962526a077aaf88a458f1f63",
    (3, 128): "55be8152530e9105c2c2099c69bb3d796d2588dbcf53148f5eb70304e19c8f24",
    (5, 64): "4d777de086ca6f3f39d5ae327e54fdc7191ac053b77a454a4041acdd282f1b1d",
}


@pytest.fixture(scope="module")
def small_phantoms():
    return [generate_phantom(seed, size=SMALL, version=1) for seed in SEEDS]


@pytest.fixture(scope="module")
def full_phantom():
    return generate_phantom(7, size=512, version=1)


def _load_script():
    spec = importlib.util.spec_from_file_location("make_test_dataset", ROOT / "scripts" / "make_test_dataset.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_test_dataset"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("seed", "size"), sorted(V1_SHA256))
def test_v1_is_bit_identical_to_the_original_generator(seed, size):
    p = generate_phantom(seed, size=size, version=1)
    digest = hashlib.sha256(p.image.tobytes() + p.labels.tobytes() + p.tissues.tobytes()).hexdigest()
    assert digest == V1_SHA256[(seed, size)]
    assert p.extra.get("version", 1) == 1 and p.has_bag and p.padding_hu == -1024 and p.rescale_intercept == -1024


def test_same_seed_identical_bytes_and_files(tmp_path):
    a = generate_phantom(3, size=SMALL, version=1)
    b = generate_phantom(3, size=SMALL, version=1)
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
    with pytest.raises(ValueError, match="version"):
        generate_phantom(0, version=3)
    with pytest.raises(ValueError, match="version"):
        generate_dataset("unused", version=0)


def test_cli_writes_layout_and_montage(tmp_path):
    script = _load_script()
    out = tmp_path / "ds"
    montage = tmp_path / "m" / "montage.png"
    rc = script.main(["--out", str(out), "--patients", "2", "--seed", "5", "--size", "64",
                      "--montage", str(montage), "-q"])  # the default generator: v2
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
    assert DEFAULT_VERSION == 2
    ref = generate_phantom(6, size=64, version=2)
    assert np.array_equal(np.load(out / "phantom_006" / "mask" / "3.npy")[0], ref.labels[:, :, 3])
    assert np.array_equal(np.load(out / "phantom_006" / "img" / "3.npy")[0], ref.image[:, :, 3])
    assert montage.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert montage.stat().st_size > 10_000


def test_cli_phantom_version_1_writes_v1_patients(tmp_path):
    script = _load_script()
    out = tmp_path / "v1"
    assert script.main(["--out", str(out), "--patients", "1", "--seed", "4", "--size", "32",
                        "--phantom-version", "1", "-q"]) == 0
    ref = generate_phantom(4, size=32, version=1)
    assert len(list((out / "phantom_004" / "img").glob("*.npy"))) == ref.n_slices
    assert np.array_equal(np.load(out / "phantom_004" / "img" / "2.npy")[0], ref.image[:, :, 2])
    with pytest.raises(SystemExit):
        script.main(["--out", str(out), "--phantom-version", "3", "-q"])


# --------------------------------------------------------------------------- generator v2

V2_SEEDS = range(30)
V2_SIZE = 64
BODY_TISSUES = (Tissue.SOFT, Tissue.FAT, Tissue.BONE, Tissue.LUNG, Tissue.GAS, Tissue.CONTRAST, Tissue.METAL)
BAG_TISSUES = (Tissue.BAG, Tissue.BAG_SKIN, Tissue.BAG_VALVE)
COUCH_TISSUES = (Tissue.COUCH_SHELL, Tissue.COUCH_CORE, Tissue.COUCH_RAIL)
BACKGROUND_TISSUES = (Tissue.AIR, Tissue.PAD, Tissue.FABRIC, Tissue.COUCH_BASE)


@pytest.fixture(scope="module")
def v2_phantoms():
    return [generate_phantom(seed, size=V2_SIZE, version=2) for seed in V2_SEEDS]


def first_v2_seed(wanted, seeds=range(100)) -> int:
    """The first seed whose (32 x 32) v2 phantom satisfies ``wanted``; the scene does not depend on the size."""
    return next(s for s in seeds if wanted(generate_phantom(s, size=32, version=2)))


@pytest.fixture(scope="module")
def v2_full():
    """A 512 x 512 v2 dog with lungs in a vacuum bag on a couch in view, padded to -2000 HU (intercept 0)."""
    seed = first_v2_seed(lambda p: p.has_bag and p.species_description == "Canine" and p.padding_hu == -2000
                         and len(p.lung_slices) > 0 and bool((p.tissues == Tissue.COUCH_CORE).any()))
    p = generate_phantom(seed, size=512, version=2)
    assert p.has_bag and (p.padding_hu, p.rescale_intercept) == (-2000, 0.0)
    return p


def _circle(n: int) -> np.ndarray:
    idx = np.arange(n) - (n - 1) / 2
    return (idx[:, None] ** 2 + idx[None, :] ** 2) <= (n / 2) ** 2


def test_v2_same_seed_identical_and_unlike_v1():
    a = generate_phantom(11, size=V2_SIZE)
    b = generate_phantom(11, size=V2_SIZE, version=2)
    assert a.image.tobytes() == b.image.tobytes() and a.labels.tobytes() == b.labels.tobytes()
    assert a.tissues.tobytes() == b.tissues.tobytes() and a.extra == b.extra
    v1 = generate_phantom(11, size=V2_SIZE, version=1)
    assert a.image.shape != v1.image.shape or a.image.tobytes() != v1.image.tobytes()
    assert a.extra["version"] == 2


def test_v2_labels_follow_the_materials(v2_phantoms):
    """Vacbag = beads, film and valve; Couch = the top with rails and bars; Body = the animal; the rest background."""
    couch_everywhere = 0
    for p in v2_phantoms:
        assert set(np.unique(p.labels)) <= {0, VACBAG, COUCH, BODY}
        for tissues, label in ((BAG_TISSUES, VACBAG), (COUCH_TISSUES, COUCH), (BODY_TISSUES, BODY)):
            assert np.array_equal(np.isin(p.tissues, tissues), p.labels == label), (p.seed, label)
        assert np.all(p.labels[np.isin(p.tissues, BACKGROUND_TISSUES)] == 0), p.seed
        couch_everywhere += bool((p.labels == COUCH).any(axis=(0, 1)).all())
    assert couch_everywhere >= 0.7 * len(v2_phantoms)  # a small field of view may leave the couch out


def test_v2_bag_free_patients_and_contiguous_bags(v2_phantoms):
    free = [p.seed for p in v2_phantoms if not p.has_bag]
    assert len(free) / len(v2_phantoms) >= 0.2, free
    assert free == [s for s in V2_SEEDS if s % 10 in (2, 5, 8)]
    partial = 0
    for p in v2_phantoms:
        present = np.flatnonzero((p.labels == VACBAG).any(axis=(0, 1)))
        if not p.has_bag:
            assert present.size == 0 and p.bag_slices == (0, 0)
            continue
        assert (present[0], present[-1] + 1) == p.bag_slices
        # at 64 x 64 (6-10 mm pixels) a thin bag end may fall between pixels
        assert present.size >= 0.85 * (present[-1] + 1 - present[0]), p.seed
        partial += present.size < p.n_slices
    assert partial >= 5  # bags under only part of the scan
    for seed in (0, 1, 3, 4, 6, 7):
        p = generate_phantom(seed, size=128)
        present = np.flatnonzero((p.labels == VACBAG).any(axis=(0, 1)))
        assert np.array_equal(present, np.arange(*p.bag_slices)), seed


def test_v2_variety_of_animals_devices_and_scanners(v2_phantoms):
    extra = [p.extra for p in v2_phantoms]
    assert {p.species_description for p in v2_phantoms} == {"Canine", "Feline"}
    for p in v2_phantoms:
        low, high = (3.0, 7.0) if p.species_description == "Feline" else (4.0, 60.0)
        assert low <= p.weight_kg <= high, (p.seed, p.weight_kg)
        assert 60 <= p.n_slices <= 140 and 1.0 <= p.slice_thickness_mm <= 5.0
        assert 0.4 <= p.pixel_spacing[0] * V2_SIZE / 512 <= 1.2
    assert {e["recumbency"] for e in extra} == {"dorsal", "sternal"}
    assert {e["region"] for e in extra} == {"head_neck", "thorax", "abdomen", "pelvis", "trunk", "limb"}
    assert {e["couch"] for e in extra} == {"flat", "curved", "rails"}
    assert {k for e in extra for k in e["supports"]} == {"mattress", "gel_pad", "wedge", "headrest", "towel_roll",
                                                          "blanket"}
    assert {e["kernel"] for e in extra} == {"soft", "standard", "sharp"}
    assert {(p.rescale_intercept, p.padding_hu) for p in v2_phantoms} >= {(-1024.0, -1024), (-1024.0, -3024),
                                                                           (0.0, -2000)}
    assert sum(e["truncated"] for e in extra) >= 2 and sum(e["metal"] for e in extra) >= 3
    assert sum(e["contrast"] for e in extra) >= 3 and sum(e["rings"] > 0 for e in extra) >= 3
    assert any(not (p.labels == BODY).any(axis=(0, 1)).all() for p in v2_phantoms)  # bag or couch past the body


def test_v2_pads_and_blankets_are_background(v2_phantoms):
    pads = fabric = 0
    for p in v2_phantoms:
        pad, cloth = p.tissues == Tissue.PAD, p.tissues == Tissue.FABRIC
        assert np.all(p.labels[pad | cloth] == 0), p.seed
        pads += int(pad.sum())
        fabric += int(cloth.sum())
    assert pads > 1000 and fabric > 200
    # foam in the bead range: only context and texture tell it from the bag
    foam = np.concatenate([p.image[p.tissues == Tissue.PAD] for p in v2_phantoms])
    assert np.mean((foam > -950) & (foam < -700)) > 0.2


def test_v2_recumbency_puts_the_spine_towards_the_couch_or_away(v2_phantoms):
    checked = 0
    for p in v2_phantoms:
        if p.extra["region"] not in ("thorax", "abdomen", "pelvis", "trunk"):
            continue
        bone_row = np.nonzero(p.tissues == Tissue.BONE)[0].mean()
        body_row = np.nonzero(p.labels == BODY)[0].mean()
        # rows grow towards the couch: dorsal recumbency = spine below the body's middle
        assert (bone_row > body_row) == (p.extra["recumbency"] == "dorsal"), p.seed
        checked += 1
    assert checked >= 8


def test_v2_padding_outside_the_circle_and_truncation(v2_phantoms):
    inside = _circle(V2_SIZE)
    truncated = 0
    for p in v2_phantoms:
        assert np.all(p.image[~inside] == p.padding_hu), p.seed
        assert p.image[inside].min() >= -1024, p.seed
        assert np.all(p.labels[~inside] == 0)
        rim = inside & ~ndimage.binary_erosion(inside, iterations=2)
        body_at_rim = bool((p.labels[rim] == BODY).any())
        if p.extra["truncated"]:  # the field of view cuts the body
            assert body_at_rim, p.seed
            truncated += 1
    assert truncated >= 2


def test_v2_bead_texture_and_tissue_hu(v2_full):
    p = v2_full
    some = slice(p.bag_slices[0], p.bag_slices[1], 4)
    hu, tis = p.image[:, :, some], p.tissues[:, :, some]
    # bead pixels two pixels in from the film and the body: beads, blur and scanner noise only
    interior = ndimage.binary_erosion(tis == Tissue.BAG, structure=np.ones((5, 5, 1), bool))
    beads = hu[interior]
    assert beads.size > 5_000
    assert -1000 <= np.percentile(beads, 5) and np.percentile(beads, 95) <= -500
    assert -900 <= np.median(beads) <= -700
    # granular: the beads vary far more than the scanner noise in air far from everything
    air = ndimage.binary_erosion(tis == Tissue.AIR, structure=np.ones((3, 3, 1), bool), iterations=6)
    air &= _circle(512)[:, :, None]
    assert air.sum() > 10_000 and abs(np.median(hu[air]) + 1000) < 30
    assert np.std(beads) > 1.5 * np.std(hu[air]) and np.std(beads) > 30
    assert np.any(tis == Tissue.BAG_SKIN) and np.all(p.labels[:, :, some][tis == Tissue.BAG_SKIN] == VACBAG)
    assert 0 <= np.median(hu[tis == Tissue.SOFT]) <= 90
    assert np.median(hu[tis == Tissue.LUNG]) < -650
    assert np.median(hu[tis == Tissue.BONE]) > 300
    assert np.median(hu[tis == Tissue.COUCH_CORE]) < -700


def test_v2_metal_is_body_and_bright(v2_phantoms):
    with_metal = [p for p in v2_phantoms if p.extra["metal"]]
    assert with_metal
    p = generate_phantom(with_metal[0].seed, size=256, version=2)
    metal = p.tissues == Tissue.METAL
    assert metal.any() and np.all(p.labels[metal] == BODY)
    assert p.image[metal].max() > 1500


def test_v2_dataset_montage_and_layout(tmp_path):
    folders = generate_dataset(tmp_path / "ds", n_patients=3, seed=20, size=32, progress=False,
                               montage=tmp_path / "m.png", version=2)
    assert [f.name for f in folders] == ["phantom_020", "phantom_021", "phantom_022"]
    p = generate_phantom(22, size=32)
    assert not p.has_bag
    img = np.load(folders[2] / "img" / "0.npy")
    assert img.dtype == np.int16 and np.array_equal(img[0], p.image[:, :, 0])
    assert (tmp_path / "m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_phantom_is_a_dog_in_a_bag():
    import inspect

    from vacseg_monai.demo import run_demo

    seed = inspect.signature(run_demo).parameters["seed"].default
    p = generate_phantom(seed, size=64)
    assert p.species_description == "Canine" and p.has_bag
    assert (p.labels == VACBAG).any(axis=(0, 1)).sum() >= 0.4 * p.n_slices


def test_rewriting_a_patient_removes_its_earlier_slices(tmp_path):
    long, short = generate_phantom(4, size=32, version=1), generate_phantom(4, size=32, version=2)
    assert long.n_slices != short.n_slices
    write_npy_layout(long, tmp_path)
    write_npy_layout(short, tmp_path)
    for part in ("img", "mask"):
        names = sorted(int(p.stem) for p in (tmp_path / "phantom_004" / part).glob("*.npy"))
        assert names == list(range(short.n_slices))
    assert np.array_equal(np.load(tmp_path / "phantom_004" / "img" / "0.npy")[0], short.image[:, :, 0])
