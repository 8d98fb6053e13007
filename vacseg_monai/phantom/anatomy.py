"""The animal of phantom v2: cats and dogs, any body region, sternal or dorsal recumbency.

An :class:`Animal` holds smooth per-slice parameters (outline, tissue weights along the
trunk coordinate ``u``: head below 0, neck 0-0.15, thorax 0.15-0.55, abdomen 0.55-0.9,
pelvis and tail beyond) drawn once per patient by :func:`draw_animal`. :func:`paint_animal`
paints one slice into a :class:`BodyPatch`, a small grid centred on the body in the
canonical frame (rows grow towards the dorsum, columns to the animal's left); the scene
flips it for sternal recumbency and places it on the devices.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from vacseg_monai.phantom.model import Tissue
from vacseg_monai.phantom.shapes import (
    ellipse_window,
    fill,
    halfwidth,
    interp_profile,
    paint_ellipse,
    row_mask,
    smooth_random,
    smoothstep,
    texture_tile,
)

__all__ = [
    "Animal",
    "BodyPatch",
    "Limb",
    "Recumbency",
    "Region",
    "Species",
    "draw_animal",
    "paint_animal",
]

METAL_HU = 3071.0

_DOG_BREEDS = ("Labrador Retriever", "German Shepherd", "Golden Retriever", "Boxer", "Beagle", "Border Collie",
               "Mixed Breed", "Staffordshire Bull Terrier", "Jack Russell Terrier", "Great Dane", "Dachshund",
               "Bernese Mountain Dog")
_CAT_BREEDS = ("Domestic Shorthair", "Domestic Longhair", "Maine Coon", "Siamese", "British Shorthair")
_NAMES = ("Rex", "Bella", "Max", "Luna", "Charlie", "Daisy", "Buddy", "Molly", "Rocky", "Nala", "Finn", "Rosie",
          "Milo", "Tiger", "Simba", "Cleo", "Oscar", "Misty")

# Outline along u: nose tip at -0.45, braincase -0.2..0, neck, thorax, abdomen, pelvis, tail stump.
_U_KNOTS = (-0.5, -0.45, -0.38, -0.28, -0.18, -0.08, 0.0, 0.12, 0.2, 0.35, 0.5, 0.6, 0.75, 0.88, 1.0, 1.12, 1.25,
            1.33, 1.4)
_WIDTH = (0.0, 0.03, 0.16, 0.26, 0.40, 0.46, 0.42, 0.55, 0.82, 1.0, 0.98, 0.92, 0.86, 0.82, 0.72, 0.55, 0.2, 0.06, 0.0)
_HEIGHT = (0.0, 0.03, 0.16, 0.28, 0.42, 0.5, 0.5, 0.6, 0.95, 1.08, 1.02, 0.92, 0.85, 0.8, 0.7, 0.55, 0.2, 0.06, 0.0)
_MIN_HALF_WIDTH_MM = 3.0


class Species(str, enum.Enum):
    """Patient Species Description values of the phantoms."""

    CANINE = "Canine"
    FELINE = "Feline"


class Recumbency(str, enum.Enum):
    """How the animal lies: on its back (dorsal) or on its belly (sternal)."""

    DORSAL = "dorsal"
    STERNAL = "sternal"


class Region(str, enum.Enum):
    """The scanned body region; it sets where along the animal the series lies."""

    HEAD_NECK = "head_neck"
    THORAX = "thorax"
    ABDOMEN = "abdomen"
    PELVIS = "pelvis"
    TRUNK = "trunk"
    LIMB = "limb"


# Range of the series' middle along u per region; head and pelvis scans may run past the nose or the tail.
_REGION_CENTRE_U = {Region.HEAD_NECK: (-0.32, -0.04), Region.THORAX: (0.28, 0.44), Region.ABDOMEN: (0.64, 0.8),
                    Region.PELVIS: (0.94, 1.25), Region.TRUNK: (0.42, 0.58), Region.LIMB: (0.42, 0.58)}


@dataclass
class Limb:
    """A pair (or one) of limb cross-sections beside the trunk, present while ``weight > 0``.

    Args:
        weight: per-slice presence in [0, 1].
        radius: limb radius per slice in mm.
        lateral: centre offset from the midline in units of the trunk half-width (plus radius).
        vertical: centre offset from the trunk centre towards the dorsum, in units of its half-height.
        sides: the sides that carry a limb, (-1, 1) for a pair.
    """

    weight: np.ndarray
    radius: np.ndarray
    lateral: float
    vertical: float
    sides: tuple[float, ...] = (-1.0, 1.0)


@dataclass
class Animal:
    """Everything drawn about the patient; arrays are per slice (length ``n_slices``), lengths in mm."""

    species: Species
    breed: str
    name: str
    sex: str
    neutered: str
    weight_kg: float
    region: Region
    recumbency: Recumbency
    cranial_first: bool
    u: np.ndarray
    a: np.ndarray
    b_top: np.ndarray
    b_bot: np.ndarray
    p_top: np.ndarray
    p_bot: float
    asym: np.ndarray
    fat_t: np.ndarray
    a_max: float
    hu: dict[str, float]
    limbs: list[Limb]
    chip_slices: tuple[int, int]
    implant_slices: tuple[int, int]
    contrast_hu: float | None
    bowel_contrast_hu: float | None
    mod_amp: np.ndarray
    mod_phase: np.ndarray
    z: np.ndarray
    shape: dict[str, float] = field(default_factory=dict)

    @property
    def has_body(self) -> np.ndarray:
        """Per slice: whether any part of the animal lies in the slice."""
        trunk = self.a > _MIN_HALF_WIDTH_MM
        for limb in self.limbs:
            trunk = trunk | (limb.weight > 0.05)
        return trunk

    def half_extent(self) -> tuple[float, float]:
        """Largest half-height and half-width (mm) of the body in any slice, limbs included."""
        hh = float(np.max(np.maximum(self.b_top, self.b_bot)))
        hw = float(np.max(self.a * (1 + np.abs(self.asym)) * 1.1))
        for limb in self.limbs:
            reach = limb.lateral * float(np.max(self.a)) + 2.2 * float(np.max(limb.radius))
            hw = max(hw, float(reach))
            hh = max(hh, float(np.max(limb.radius)) * 1.2 + abs(limb.vertical) * hh)
        return hh + 6.0, hw + 6.0


@dataclass
class BodyPatch:
    """Canonical-frame buffers one slice of the animal is painted into (reused across slices)."""

    ys: np.ndarray
    xs: np.ndarray
    hu: np.ndarray
    tissue: np.ndarray
    mask: np.ndarray
    organ_tile: np.ndarray
    gut_tile: np.ndarray
    fine_tile: np.ndarray
    offsets: np.ndarray

    @classmethod
    def for_animal(cls, animal: Animal, spacing: float, trng: np.random.Generator) -> BodyPatch:
        """Buffers large enough for every slice of ``animal`` at ``spacing`` mm, with their textures."""
        hh, hw = animal.half_extent()
        nr = 2 * int(np.ceil(hh / spacing)) + 1
        nc = 2 * int(np.ceil(hw / spacing)) + 1
        pad = 64
        tiles = [texture_tile(trng, (nr + pad, nc + pad), s / spacing) for s in (6.0, 4.0, 0.6)]
        return cls(
            ys=(np.arange(nr) - (nr - 1) / 2.0) * spacing,
            xs=(np.arange(nc) - (nc - 1) / 2.0) * spacing,
            hu=np.empty((nr, nc), np.float32),
            tissue=np.empty((nr, nc), np.uint8),
            mask=np.empty((nr, nc), bool),
            organ_tile=tiles[0],
            gut_tile=tiles[1],
            fine_tile=tiles[2],
            offsets=trng.integers(0, pad, (animal.u.size, 2)),
        )

    def window(self, tile: np.ndarray, k: int, swap: bool = False) -> np.ndarray:
        """The patch-sized window of ``tile`` for slice ``k``."""
        r, c = (int(v) for v in self.offsets[k])
        if swap:
            r, c = c, r
        return tile[r:r + self.hu.shape[0], c:c + self.hu.shape[1]]


def _draw_identity(rng: np.random.Generator) -> tuple[Species, float, str, str, str, str]:
    """Species, weight (cats 3-7 kg, dogs log-uniform 4-60 kg), breed, name, sex, neutered status."""
    if rng.uniform() < 0.25:
        species, weight, breed = Species.FELINE, rng.uniform(3.0, 7.0), str(rng.choice(_CAT_BREEDS))
    else:
        species, weight, breed = Species.CANINE, float(np.exp(rng.uniform(np.log(4.0), np.log(60.0)))), str(
            rng.choice(_DOG_BREEDS))
    sex = str(rng.choice(["M", "F"]))
    neutered = str(rng.choice(["ALTERED", "UNALTERED"], p=[0.7, 0.3]))
    return species, float(np.round(weight, 1)), breed, str(rng.choice(_NAMES)), sex, neutered


def _draw_limbs(rng: np.random.Generator, u: np.ndarray, a_max: float, region: Region,
                recumbency: Recumbency) -> list[Limb]:
    """Fore- and hind-limb cross-sections where the series meets them; a limb scan is limbs only."""
    n = u.size
    if region == Region.LIMB:
        r = a_max * rng.uniform(0.2, 0.3) * (1 + smooth_random(rng, np.arange(n) * 1.0, 0.08, 80))
        sides = (-1.0, 1.0) if rng.uniform() < 0.5 else (0.0,)
        return [Limb(np.ones(n), r, rng.uniform(0.0, 0.2) if sides != (0.0,) else 0.0, 0.0, sides)]
    limbs = []
    # Dorsal recumbency: limbs pulled forward beside the neck and back behind the pelvis, on the
    # ventral side (up). Sternal: forelimbs forward under the head, hind limbs folded beside the
    # abdomen, also ventral, which is down once the scene flips the patch.
    if recumbency == Recumbency.DORSAL:
        spans = ((-0.28, 0.16, -0.45), (0.98, 1.45, -0.35))
    else:
        spans = ((-0.3, 0.2, -0.55), (0.78, 1.12, -0.5))
    for u0, u1, vertical in spans:
        w = smoothstep((u - u0) / 0.04) * smoothstep((u1 - u) / 0.04)
        if np.max(w) <= 0.05 or rng.uniform() < 0.15:
            continue
        r = a_max * rng.uniform(0.16, 0.24) * (0.7 + 0.3 * smoothstep((u - u0) / max(u1 - u0, 1e-6)))
        limbs.append(Limb(w, r, rng.uniform(0.75, 1.05), vertical + rng.uniform(-0.1, 0.1)))
    return limbs


def _tissue_hu(rng: np.random.Generator) -> dict[str, float]:
    """Mean HU of the animal's tissues."""
    return {
        "soft": rng.uniform(35.0, 55.0),
        "fat": rng.uniform(-120.0, -85.0),
        "lung": rng.uniform(-880.0, -780.0),
        "cortex": rng.uniform(800.0, 1300.0),
        "cancellous": rng.uniform(300.0, 550.0),
        "brain": rng.uniform(28.0, 42.0),
        "marrow": rng.uniform(-60.0, 80.0),
        "tooth": rng.uniform(1500.0, 2500.0),
    }


def _draw_series_span(rng: np.random.Generator, region: Region, n_slices: int, thickness: float,
                      trunk_len: float) -> tuple[np.ndarray, bool]:
    """Trunk coordinate ``u`` of each slice and whether slice 0 is the cranial end."""
    span = n_slices * thickness / trunk_len
    centre = rng.uniform(*_REGION_CENTRE_U[region])
    cranial_first = bool(rng.integers(0, 2))
    frac = np.arange(n_slices) / max(n_slices - 1, 1)
    u = centre - 0.5 * span + span * (frac if cranial_first else 1.0 - frac)
    return u, cranial_first


def draw_animal(rng: np.random.Generator, n_slices: int, thickness: float) -> Animal:
    """Draw one patient: identity, region, recumbency, outline and tissue parameters per slice.

    Args:
        rng: the geometry stream.
        n_slices: slices in the series.
        thickness: slice spacing in mm.

    Returns:
        the :class:`Animal`.
    """
    species, weight, breed, name, sex, neutered = _draw_identity(rng)
    region = Region(rng.choice([r.value for r in Region], p=[0.18, 0.22, 0.2, 0.14, 0.16, 0.1]))
    recumbency = Recumbency.DORSAL if rng.uniform() < 0.6 else Recumbency.STERNAL
    a_max = (38.0 if species == Species.FELINE else 41.0) * weight ** (1 / 3) * rng.uniform(0.9, 1.1)
    z = np.arange(n_slices) * thickness
    u, cranial_first = _draw_series_span(rng, region, n_slices, thickness, a_max * rng.uniform(5.5, 7.0))
    depth = rng.uniform(0.82, 1.08)
    a = a_max * interp_profile(rng, u, _U_KNOTS, _WIDTH, 0.04) * (1 + smooth_random(rng, z, 0.03, 180))
    height = 2 * a_max * depth * interp_profile(rng, u, _U_KNOTS, _HEIGHT, 0.04)
    height *= 1 + smooth_random(rng, z, 0.03, 150)
    if region == Region.LIMB:
        a, height = np.zeros_like(a), np.zeros_like(height)
    sigma = max(6.0 / thickness, 1.0)
    a = ndimage.gaussian_filter1d(a, sigma, mode="nearest")
    height = ndimage.gaussian_filter1d(height, sigma, mode="nearest")
    bot_share = rng.uniform(0.42, 0.52)
    p_top = np.where((u > 0.15) & (u < 0.55), rng.uniform(1.7, 2.1), rng.uniform(2.0, 2.4))
    p_top = ndimage.gaussian_filter1d(p_top.astype(float), sigma * 2, mode="nearest")
    chip = _draw_metal_run(rng, u, z, (0.1, 0.22), 12.0, 0.6 if species == Species.CANINE else 0.4)
    implant = _draw_metal_run(rng, u, z, (0.0, 1.2), rng.uniform(30.0, 80.0), 0.12)
    return Animal(
        species=species, breed=breed, name=name, sex=sex, neutered=neutered, weight_kg=weight, region=region,
        recumbency=recumbency, cranial_first=cranial_first, u=u, a=a, b_top=height * (1 - bot_share),
        b_bot=height * bot_share, p_top=p_top, p_bot=rng.uniform(2.4, 3.2), asym=smooth_random(rng, z, 0.03, 200),
        fat_t=rng.uniform(2.0, 14.0) * (weight / 20.0) ** 0.3 * (1 + smooth_random(rng, z, 0.2, 140)),
        a_max=a_max, hu=_tissue_hu(rng), limbs=_draw_limbs(rng, u, a_max, region, recumbency),
        chip_slices=chip, implant_slices=implant,
        contrast_hu=rng.uniform(150.0, 320.0) if rng.uniform() < 0.3 else None,
        bowel_contrast_hu=rng.uniform(300.0, 900.0) if rng.uniform() < 0.12 else None,
        mod_amp=rng.uniform(0.01, 0.04, 3), mod_phase=rng.uniform(0, 2 * np.pi, 3), z=z,
        shape={"vert_len": rng.uniform(14.0, 24.0) * a_max / 100, "vert_phase": rng.uniform(0, 20.0),
               "rib_phase": rng.uniform(0, 2 * np.pi), "rib_pitch": rng.uniform(0.012, 0.02),
               "chip_x": rng.uniform(-0.3, 0.3), "implant_x": rng.uniform(-0.5, 0.5)},
    )


def _draw_metal_run(rng: np.random.Generator, u: np.ndarray, z: np.ndarray, u_range: tuple[float, float],
                    length_mm: float, probability: float) -> tuple[int, int]:
    """Slices (start, stop) of a metal object of ``length_mm`` placed where ``u`` is in ``u_range``."""
    candidates = np.flatnonzero((u >= u_range[0]) & (u <= u_range[1]))
    if rng.uniform() >= probability or candidates.size == 0:
        return (0, 0)
    centre = z[int(rng.choice(candidates))]
    inside = np.flatnonzero(np.abs(z - centre) <= 0.5 * length_mm)
    return (int(inside[0]), int(inside[-1]) + 1)


# --------------------------------------------------------------------------- painting


def _outline(animal: Animal, k: int, ys: np.ndarray, xs: np.ndarray, inset: float) -> np.ndarray:
    """The trunk cross-section of slice ``k`` shrunk by ``inset`` mm (canonical frame, centre 0)."""
    bt, bb = animal.b_top[k], animal.b_bot[k]
    ty = np.clip(ys / np.where(ys < 0, bt, bb), -1, 1)
    mod = sum(animal.mod_amp[j] * np.cos((j + 2) * np.pi * ty + animal.mod_phase[j]) for j in range(3))
    hw = halfwidth(ys, 0.0, animal.a[k] - inset, bt - inset, bb - inset, animal.p_top[k], animal.p_bot) * (1 + mod)
    return row_mask(xs, -hw * (1 - animal.asym[k]), hw * (1 + animal.asym[k]))


def _weights(u: float) -> dict[str, float]:
    """Region weights at trunk coordinate ``u``."""
    s = smoothstep
    return {
        "lung": float(s((u - 0.15) / 0.08) * s((0.56 - u) / 0.12)),
        "heart": float(s((u - 0.22) / 0.06) * s((0.46 - u) / 0.06)),
        "abdomen": float(s((u - 0.52) / 0.06) * s((0.95 - u) / 0.06)),
        "liver": float(s((u - 0.48) / 0.04) * s((0.66 - u) / 0.05)),
        "kidney": float(s((u - 0.62) / 0.03) * s((0.76 - u) / 0.03)),
        "neck": float(s((0.2 - u) / 0.05) * s((u + 0.02) / 0.03)),
        "rib": float(s((u - 0.17) / 0.03) * s((0.6 - u) / 0.03)),
        "spine": float(s((u + 0.01) / 0.02) * s((1.3 - u) / 0.03)),
        "cranium": float(s((u + 0.22) / 0.03) * s((0.0 - u) / 0.02)),
        "muzzle": float(s((-0.17 - u) / 0.03)),
        "pelvis": float(s((u - 0.92) / 0.03) * s((1.18 - u) / 0.03)),
    }


def paint_animal(animal: Animal, k: int, patch: BodyPatch) -> list[tuple[float, float]]:
    """Paint slice ``k`` of the animal into ``patch`` (canonical frame: dorsum towards +rows).

    Args:
        animal: the patient.
        k: slice index.
        patch: buffers; ``hu``, ``tissue`` and ``mask`` are overwritten.

    Returns:
        (row, col) patch coordinates in mm of the metal in this slice, for the scanner's streaks.
    """
    patch.hu.fill(-1000.0)
    patch.tissue.fill(Tissue.AIR)
    patch.mask.fill(False)
    metal: list[tuple[float, float]] = []
    w = _weights(float(animal.u[k]))
    if animal.a[k] > _MIN_HALF_WIDTH_MM:
        body = _paint_trunk(animal, k, patch)
        patch.mask |= body
        if w["cranium"] > 0.05 or w["muzzle"] > 0.05:
            _paint_head(animal, k, patch, w)
        else:
            _paint_cavities(animal, k, patch, w)
            _paint_spine_and_ribs(animal, k, patch, w, body)
        if animal.chip_slices[0] <= k < animal.chip_slices[1]:
            metal.append(_paint_metal(patch, animal.b_bot[k] - 0.6 * animal.fat_t[k] - 1.5,
                                      animal.shape["chip_x"] * animal.a[k], 1.1, 1.1))
    _paint_limbs(animal, k, patch)
    if animal.implant_slices[0] <= k < animal.implant_slices[1] and patch.mask.any():
        metal.append(_paint_implant(animal, k, patch))
    return metal


def _paint_trunk(animal: Animal, k: int, patch: BodyPatch) -> np.ndarray:
    """Skin, subcutaneous fat and textured soft tissue of the trunk (or head); returns its mask."""
    ys, xs, hu, tissue = patch.ys, patch.xs, patch.hu, patch.tissue
    body = _outline(animal, k, ys, xs, 0.0)
    fill(hu, body, animal.hu["soft"])
    fill(tissue, body, Tissue.SOFT)
    under_skin = _outline(animal, k, ys, xs, 1.5)
    fill(hu, under_skin, animal.hu["fat"])
    fill(tissue, under_skin, Tissue.FAT)
    inner = _outline(animal, k, ys, xs, 1.5 + animal.fat_t[k])
    liver = _weights(float(animal.u[k]))["liver"]
    organ = patch.window(patch.organ_tile, k)
    fill(hu, inner, organ * np.float32(9.0) + np.float32(animal.hu["soft"] + 18.0 * liver))
    fill(tissue, inner, Tissue.SOFT)
    return body


def _paint_cavities(animal: Animal, k: int, patch: BodyPatch, w: dict[str, float]) -> None:
    """Abdomen (fat, bowel gas, kidneys, contrast), thorax (lungs, heart, vessels) and trachea."""
    ys, xs, hu, tissue = patch.ys, patch.xs, patch.hu, patch.tissue
    a, bt, bb = animal.a[k], animal.b_top[k], animal.b_bot[k]
    wall = 1.5 + animal.fat_t[k] + 0.09 * a
    cavity = _outline(animal, k, ys, xs, wall)
    organ = patch.window(patch.organ_tile, k)
    if w["abdomen"] > 0.05:
        gut = patch.window(patch.gut_tile, k, swap=True)
        fat_in = cavity & (organ > 1.1 - 0.5 * w["abdomen"])
        fill(hu, fat_in, gut * np.float32(10.0) + np.float32(animal.hu["fat"]))
        fill(tissue, fat_in, Tissue.FAT)
        gas = cavity & (gut > 2.45 - 0.25 * w["abdomen"]) & (ys[:, None] < 0.3 * bb)
        fill(hu, gas, -960.0)
        fill(tissue, gas, Tissue.GAS)
        if animal.bowel_contrast_hu is not None:
            loops = cavity & (gut < -2.3 + 0.2 * w["abdomen"])
            fill(hu, loops, animal.bowel_contrast_hu)
            fill(tissue, loops, Tissue.CONTRAST)
        if w["kidney"] > 0.2:
            kid_hu = animal.hu["soft"] + (animal.contrast_hu or 0.0)
            for sign in (-1.0, 1.0):
                paint_ellipse(hu, tissue, ys, xs, (0.45 * bb, sign * 0.42 * a, 0.16 * a * w["kidney"],
                                                   0.1 * a * w["kidney"], sign * 0.3), kid_hu,
                              Tissue.CONTRAST if animal.contrast_hu else Tissue.SOFT, within=cavity)
    if w["lung"] > 0.03:
        _paint_lungs(animal, k, patch, w, cavity, wall)
    vessel_hu = animal.hu["soft"] + (animal.contrast_hu or 0.0)
    vessel_tissue = Tissue.CONTRAST if animal.contrast_hu else Tissue.SOFT
    if w["spine"] > 0.5 and w["neck"] < 0.5:
        r_v = float(np.clip(0.11 * animal.a_max, 5.0, 20.0))
        paint_ellipse(hu, tissue, ys, xs, (0.58 * bb - 1.4 * r_v, 0.25 * r_v, 0.45 * r_v, 0.45 * r_v, 0.0),
                      vessel_hu, vessel_tissue, within=cavity)
    tw = max(w["neck"], 0.6 * w["heart"] * (animal.u[k] < 0.3))
    if tw > 0.3:
        y_tr = -0.35 * bt * w["neck"] + 0.3 * bb * (1 - w["neck"])
        r_tr = 0.09 * animal.a_max
        paint_ellipse(hu, tissue, ys, xs, (y_tr, 0.0, r_tr, r_tr, 0.0), -980.0, Tissue.GAS)


def _paint_lungs(animal: Animal, k: int, patch: BodyPatch, w: dict[str, float], cavity: np.ndarray,
                 wall: float) -> None:
    """Two lungs around the heart and mediastinum, with vessels; the heart enhances with contrast."""
    ys, xs, hu, tissue = patch.ys, patch.xs, patch.hu, patch.tissue
    a, bt, bb, lw = animal.a[k], animal.b_top[k], animal.b_bot[k], w["lung"]
    lcy = (1 - lw) * 0.5 * bb
    hl = halfwidth(ys, lcy, (a - wall) * np.sqrt(lw), (bt - wall) * lw, (bb - wall - 0.22 * bb) * max(lw, 0.5),
                   2.0, 2.2)
    lungs = row_mask(xs, -hl, hl) & cavity
    lungs &= np.abs(xs[None, :]) > 0.035 * a + 2.0
    if w["heart"] > 0.02:
        heart = (-0.1 * bt, 0.05 * a, 0.36 * bt * w["heart"], 0.34 * a * w["heart"], 0.2)
        paint_ellipse(hu, tissue, ys, xs, heart, animal.hu["soft"] + 0.8 * (animal.contrast_hu or 0.0),
                      Tissue.CONTRAST if animal.contrast_hu else Tissue.SOFT, within=cavity)
        found = ellipse_window(ys, xs, *heart)
        if found is not None:
            lungs[found[0]] &= ~found[1]
    fine = patch.window(patch.fine_tile, k)
    organ = patch.window(patch.organ_tile, k)
    vessels = (organ > 1.6) & (fine > 1.0)
    fill(hu, lungs, fine * np.float32(15.0) + np.float32(animal.hu["lung"]))
    fill(hu, lungs & vessels, np.float32(animal.hu["lung"] + 450.0))
    fill(tissue, lungs & ~vessels, Tissue.LUNG)
    fill(tissue, lungs & vessels, Tissue.SOFT)


def _paint_spine_and_ribs(animal: Animal, k: int, patch: BodyPatch, w: dict[str, float], body: np.ndarray) -> None:
    """Vertebra (body, arch, spinous process), ribs, sternum and the pelvic bones."""
    ys, xs, hu, tissue = patch.ys, patch.xs, patch.hu, patch.tissue
    a, bt, bb, cortex = animal.a[k], animal.b_top[k], animal.b_bot[k], animal.hu["cortex"]
    a_ref, fat_t = animal.a_max, animal.fat_t[k]
    r_v = float(np.clip(0.11 * a_ref, 5.0, 20.0))
    y_v = 0.58 * bb - 0.2 * r_v
    if w["spine"] > 0.3:
        disc = ((animal.z[k] + animal.shape["vert_phase"]) % animal.shape["vert_len"]) < 3.0
        paint_ellipse(hu, tissue, ys, xs, (y_v, 0.0, r_v * 0.85, r_v, 0.0), 90.0 if disc else cortex,
                      Tissue.SOFT if disc else Tissue.BONE, within=body)
        if not disc:
            paint_ellipse(hu, tissue, ys, xs, (y_v, 0.0, r_v * 0.85 - 1.8, r_v - 1.8, 0.0),
                          animal.hu["cancellous"], Tissue.BONE)
            y_canal = y_v + 1.45 * r_v
            paint_ellipse(hu, tissue, ys, xs, (y_canal, 0.0, 0.95 * r_v, 0.85 * r_v, 0.0), cortex * 0.8,
                          Tissue.BONE, within=body)
            paint_ellipse(hu, tissue, ys, xs, (y_canal, 0.0, 0.5 * r_v, 0.5 * r_v, 0.0), 30.0, Tissue.SOFT)
            paint_ellipse(hu, tissue, ys, xs, (y_canal + 1.3 * r_v, 0.0, 0.7 * r_v, 0.22 * r_v, 0.0),
                          cortex * 0.75, Tissue.BONE, within=body)
    if w["pelvis"] > 0.2:
        for sign in (-1.0, 1.0):
            paint_ellipse(hu, tissue, ys, xs, (y_v - 0.2 * bb, sign * 0.45 * a, 0.35 * bb * w["pelvis"], 0.1 * a,
                                               sign * 0.5), cortex * 0.8, Tissue.BONE, within=body)
    if w["rib"] > 0.2:
        ring_a = a - fat_t - 0.045 * a - 2.0
        angle = animal.shape["rib_phase"] + animal.shape["rib_pitch"] * animal.z[k]
        for sign in (-1.0, 1.0):
            for j in range(6):
                phi = (j + 0.5 + (angle / (2 * np.pi) * 6) % 1.0) / 6 * 0.95 * np.pi
                if phi < 0.12 * np.pi:
                    continue
                up = -np.cos(phi)
                geometry = (-up * (bt if up > 0 else bb - fat_t - 6.0) * 0.9,
                            sign * ring_a * np.sin(phi) * w["rib"] ** 0.3, 1.8 * max(0.022 * a_ref, 1.8),
                            max(0.022 * a_ref, 1.8), sign * (np.pi / 2 - phi))
                paint_ellipse(hu, tissue, ys, xs, geometry, cortex * 0.85, Tissue.BONE, within=body)
        paint_ellipse(hu, tissue, ys, xs, (-bt + fat_t + 6.0, 0.0, 0.05 * a_ref, 0.07 * a_ref, 0.0), cortex * 0.7,
                      Tissue.BONE, within=body)


def _paint_head(animal: Animal, k: int, patch: BodyPatch, w: dict[str, float]) -> None:
    """Skull vault and brain (cranium), nasal cavity and turbinates (muzzle), mandibles and teeth."""
    ys, xs, hu, tissue = patch.ys, patch.xs, patch.hu, patch.tissue
    a, bt, bb, cortex = animal.a[k], animal.b_top[k], animal.b_bot[k], animal.hu["cortex"]
    inner = _outline(animal, k, ys, xs, 1.5 + 0.3 * animal.fat_t[k])
    if w["cranium"] > 0.05:
        c = w["cranium"]
        vault = (0.3 * bb, 0.0, 0.62 * bb * c, 0.7 * a * c, 0.0)
        paint_ellipse(hu, tissue, ys, xs, vault, cortex, Tissue.BONE, within=inner)
        paint_ellipse(hu, tissue, ys, xs, (vault[0], 0.0, vault[2] - 3.0, vault[3] - 3.0, 0.0), animal.hu["brain"],
                      Tissue.SOFT, within=inner)
        for sign in (-1.0, 1.0):
            paint_ellipse(hu, tissue, ys, xs, (-0.05 * bt, sign * 0.8 * a, 0.08 * bt, 0.12 * a, 0.0), cortex * 0.9,
                          Tissue.BONE, within=inner)
    if w["muzzle"] > 0.05:
        m = w["muzzle"]
        nasal = (0.25 * bb, 0.0, 0.5 * bb * m, 0.55 * a * m, 0.0)
        paint_ellipse(hu, tissue, ys, xs, nasal, cortex * 0.7, Tissue.BONE, within=inner)
        fine = patch.window(patch.fine_tile, k)
        for sign in (-1.0, 1.0):
            cav = (nasal[0], sign * 0.25 * a, nasal[2] - 2.0, 0.22 * a * m, 0.0)
            paint_ellipse(hu, tissue, ys, xs, cav, -700.0, Tissue.GAS, within=inner & (fine < 1.2))
    for sign in (-1.0, 1.0):
        jaw = (-0.55 * bt, sign * 0.55 * a, 0.22 * bt, 0.12 * a, sign * 0.2)
        paint_ellipse(hu, tissue, ys, xs, jaw, cortex, Tissue.BONE, within=inner)
        if (animal.z[k] // 4.0) % 3 == 0:
            tooth = (-0.25 * bt, sign * 0.6 * a, 0.12 * bt, 0.06 * a, 0.0)
            paint_ellipse(hu, tissue, ys, xs, tooth, animal.hu["tooth"], Tissue.BONE, within=inner)


def _limb_centre(animal: Animal, limb: Limb, k: int, side: float) -> tuple[float, float, float]:
    """Centre row, centre column and radius (mm) of one limb cross-section in slice ``k``."""
    r = float(limb.radius[k]) * (0.5 + 0.5 * float(limb.weight[k]))
    a = max(float(animal.a[k]), 0.0)
    hh = 0.5 * (animal.b_top[k] + animal.b_bot[k])
    return limb.vertical * hh, side * (limb.lateral * a + 1.05 * r), r


def _paint_limbs(animal: Animal, k: int, patch: BodyPatch) -> None:
    """Limb cross-sections (skin, fat, muscle, cortex and marrow) beside the trunk; adds them to the mask."""
    ys, xs, hu, tissue = patch.ys, patch.xs, patch.hu, patch.tissue
    fat_t = 0.3 * float(animal.fat_t[k])
    for limb in animal.limbs:
        if limb.weight[k] <= 0.05:
            continue
        for side in limb.sides:
            cy, cx, r = _limb_centre(animal, limb, k, side)
            found = ellipse_window(ys, xs, cy, cx, r, r * 0.85)
            if found is None:
                continue
            window, mask = found
            patch.mask[window] |= mask
            np.copyto(hu[window], np.float32(animal.hu["soft"]), where=mask)
            np.copyto(tissue[window], np.uint8(Tissue.SOFT), where=mask)
            layers = ((1.5, animal.hu["fat"], Tissue.FAT), (1.5 + fat_t, animal.hu["soft"] + 8.0, Tissue.SOFT))
            for inset, value, cls in layers:
                paint_ellipse(hu, tissue, ys, xs, (cy, cx, r - inset, 0.85 * r - inset, 0.0), value, cls)
            paint_ellipse(hu, tissue, ys, xs, (cy, cx + 0.1 * r, 0.3 * r, 0.28 * r, 0.0), animal.hu["cortex"],
                          Tissue.BONE)
            paint_ellipse(hu, tissue, ys, xs, (cy, cx + 0.1 * r, 0.17 * r, 0.15 * r, 0.0), animal.hu["marrow"],
                          Tissue.BONE)


def _paint_metal(patch: BodyPatch, cy: float, cx: float, ry: float, rx: float) -> tuple[float, float]:
    """A small metal object (microchip, screw) at (cy, cx); returns its centre."""
    sp = float(patch.ys[1] - patch.ys[0])
    paint_ellipse(patch.hu, patch.tissue, patch.ys, patch.xs, (cy, cx, max(ry, 0.6 * sp), max(rx, 0.6 * sp), 0.0),
                  METAL_HU, Tissue.METAL, within=patch.mask)
    return (cy, cx)


def _paint_implant(animal: Animal, k: int, patch: BodyPatch) -> tuple[float, float]:
    """A bone plate or screw next to the spine or a limb bone."""
    if animal.a[k] > _MIN_HALF_WIDTH_MM:
        cy = 0.58 * animal.b_bot[k]
        cx = animal.shape["implant_x"] * float(np.clip(0.11 * animal.a_max, 5.0, 20.0)) * 2.0
    else:
        limb = animal.limbs[0]
        cy, cx, r = _limb_centre(animal, limb, k, limb.sides[0])
        cx += 0.42 * r
    return _paint_metal(patch, cy, cx, 1.5, 4.0)
