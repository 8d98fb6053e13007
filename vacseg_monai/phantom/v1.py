"""Phantom generator version 1: the clean world the first shipped model was trained on.

Kept bit-identical so that v1 data can still be made for comparison; new work goes
into version 2 (:mod:`vacseg_monai.phantom.v2`).

Every patient is a deterministic function of one integer seed: the same seed
gives byte-identical images and label maps. The anatomy is built slice by slice
from smooth per-slice parameters (body outline, lungs, spine, ribs, bowel gas)
using row-wise outline profiles and small local ellipses, so a 512 x 512 x 100
patient takes well under a second of numpy work.

The dog lies in dorsal recumbency on a carbon-fibre couch at the bottom of the
image, cradled by a U-shaped vacuum bag that covers about 70 % of the series and
ends part way along the patient. Lungs (about -850 HU) and bag beads (about
-750 HU) overlap in density, so only context separates them.

Arrays follow the project convention ``[row, col, slice]``; the label numbers
come from :mod:`vacseg_monai.labels`.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from vacseg_monai.labels import BACKGROUND, label_by_name
from vacseg_monai.phantom.model import Phantom, Tissue, phantom_patient_id
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

__all__ = ["generate_phantom_v1"]

_VACBAG = label_by_name("Vacbag").value
_COUCH = label_by_name("Couch").value
_BODY = label_by_name("Body").value

_AIR_HU = -1000.0
_OUTSIDE_HU = -1024
_REFERENCE_SIZE = 512

_BREEDS = (
    "Labrador Retriever",
    "German Shepherd",
    "Golden Retriever",
    "Boxer",
    "Beagle",
    "Border Collie",
    "Mixed Breed",
    "Staffordshire Bull Terrier",
)
_NAMES = ("Rex", "Bella", "Max", "Luna", "Charlie", "Daisy", "Buddy", "Molly", "Rocky", "Nala", "Finn", "Rosie")




# Canonical trunk coordinate u in [0, 1]: neck 0..0.15, thorax 0.15..0.55, abdomen 0.55..0.88, pelvis beyond.
_U_KNOTS = (-0.2, 0.0, 0.12, 0.2, 0.35, 0.5, 0.6, 0.75, 0.88, 1.0, 1.2)
_WIDTH = (0.45, 0.48, 0.55, 0.82, 1.0, 0.98, 0.92, 0.86, 0.82, 0.7, 0.6)
_HEIGHT = (0.45, 0.5, 0.6, 0.95, 1.08, 1.02, 0.92, 0.85, 0.8, 0.7, 0.6)


class _V1:
    """The parameters of one v1 patient, filled in stage by stage (lengths in mm, arrays per slice)."""


def generate_phantom_v1(seed: int, *, size: int = 512) -> Phantom:
    """Generate one synthetic canine planning CT patient (generator version 1).

    Args:
        seed: non-negative integer; the same seed gives byte-identical output.
        size: rows and columns of each slice (default 512). Smaller sizes (e.g. 128, for fast
            tests) keep the field of view: the pixel spacing scales by ``512 / size``. The
            anatomy does not depend on ``size``.

    Returns:
        the :class:`Phantom`.

    Raises:
        ValueError: if ``seed`` is negative or ``size`` is below 32.
    """
    if int(seed) != seed or seed < 0:
        raise ValueError(f"`seed` must be a non-negative integer, got {seed!r}.")
    if int(size) != size or size < 32:
        raise ValueError(f"`size` must be an integer >= 32, got {size!r}.")
    seed = int(seed)
    size = int(size)
    # Geometry and patient data come from one stream, pixel textures from another, so the
    # patient is the same at every `size`.
    geom_seq, tex_seq = np.random.SeedSequence(seed).spawn(2)
    rng = np.random.default_rng(geom_seq)
    trng = np.random.default_rng(tex_seq)
    v = _V1()
    _draw_trunk(rng, v)
    _draw_bag(rng, v)
    _draw_tissues_and_couch(rng, v)
    _place(rng, v, size)
    _draw_textures(trng, v, size)
    _draw_scanner(trng, v, size)
    return _render(v, seed, size)


def _draw_trunk(rng: np.random.Generator, v: _V1) -> None:
    """Weight, series length, trunk outline along the trunk coordinate ``u`` and region weights."""
    v.weight = float(np.round(rng.uniform(6.0, 42.0), 1))
    v.n_slices = int(rng.integers(60, 141))
    v.thickness = float(rng.choice([2.0, 2.5, 3.0]))
    v.a_max = 52.0 + 2.1 * v.weight + rng.normal(0, 5)  # thoracic half-width, mm
    depth_ratio = rng.uniform(0.82, 1.05)
    trunk_len = v.a_max * rng.uniform(5.5, 7.0)
    series_len = v.n_slices * v.thickness
    span = series_len / trunk_len
    lo, hi = max(-0.1, 0.36 - span), min(0.42, 1.05 - span)
    u_start = rng.uniform(lo, hi) if lo < hi else 0.5 * (lo + hi)
    v.cranial_first = bool(rng.integers(0, 2))
    z = v.z = np.arange(v.n_slices) * v.thickness
    frac = z / series_len
    u = v.u = u_start + span * (frac if v.cranial_first else 1.0 - frac)

    a = v.a_max * interp_profile(rng, u, _U_KNOTS, _WIDTH, 0.04) * (1 + smooth_random(rng, z, 0.03, 180))
    height = 2 * v.a_max * depth_ratio * interp_profile(rng, u, _U_KNOTS, _HEIGHT, 0.04)
    height *= 1 + smooth_random(rng, z, 0.03, 150)
    sigma_slices = max(6.0 / v.thickness, 1.0)
    v.a = ndimage.gaussian_filter1d(a, sigma_slices, mode="nearest")
    v.height = ndimage.gaussian_filter1d(height, sigma_slices, mode="nearest")
    bot_share = rng.uniform(0.42, 0.5)
    v.b_bot = v.height * bot_share
    v.b_top = v.height - v.b_bot
    p_top = np.where((u > 0.15) & (u < 0.55), rng.uniform(1.7, 2.1), rng.uniform(2.0, 2.4)) + 0 * u
    v.p_top = ndimage.gaussian_filter1d(p_top, sigma_slices * 2, mode="nearest")
    v.p_bot = rng.uniform(2.4, 3.2)
    v.asym = smooth_random(rng, z, 0.03, 200)
    v.mod_amp = rng.uniform(0.01, 0.04, 3)
    v.mod_phase = rng.uniform(0, 2 * np.pi, 3)

    # Region weights along the trunk.
    v.lung_w = smoothstep((u - 0.15) / 0.08) * smoothstep((0.56 - u) / 0.12)
    v.heart_w = smoothstep((u - 0.22) / 0.06) * smoothstep((0.46 - u) / 0.06)
    v.abdomen_w = smoothstep((u - 0.52) / 0.06) * smoothstep((0.95 - u) / 0.06)
    v.liver_w = smoothstep((u - 0.48) / 0.04) * smoothstep((0.66 - u) / 0.05)
    v.neck_w = smoothstep((0.2 - u) / 0.05)
    v.rib_w = smoothstep((u - 0.17) / 0.03) * smoothstep((0.6 - u) / 0.03)


def _draw_bag(rng: np.random.Generator, v: _V1) -> None:
    """The vacuum bag: a contiguous run from one end of the series, ending part way along."""
    n_slices, thickness, z = v.n_slices, v.thickness, v.z
    bag_frac = rng.uniform(0.62, 0.78)
    n_bag = int(round(bag_frac * n_slices))
    bag_at_start = bool(rng.integers(0, 2))
    v.bag_start, v.bag_stop = (0, n_bag) if bag_at_start else (n_slices - n_bag, n_slices)
    v.in_bag = np.zeros(n_slices, bool)
    v.in_bag[v.bag_start:v.bag_stop] = True
    # Distance (mm) from the bag end, positive inside the bag.
    end_z = (v.bag_stop - 0.5) * thickness if bag_at_start else (v.bag_start - 0.5) * thickness
    inside_dist = (end_z - z) if bag_at_start else (z - end_z)
    v.t_bottom = rng.uniform(22.0, 55.0)
    v.t_wall = rng.uniform(22.0, 55.0, 2)  # left, right
    v.wall_frac = rng.uniform(0.38, 0.62, 2)
    v.end_taper = smoothstep((inside_dist + 8.0) / 30.0)  # 1 deep in the bag, small at its end
    v.lift = 2.0 + (v.t_bottom - 2.0) * smoothstep((inside_dist + 10.0) / 40.0)
    v.lift *= 1 + smooth_random(rng, z, 0.08, 160)
    v.wall_var = [1 + smooth_random(rng, z, 0.12, 120) for _ in range(2)]
    v.gap_runs = []
    for _ in range(int(rng.integers(0, 3))):
        centre = rng.uniform(v.bag_start, v.bag_stop)
        v.gap_runs.append((centre, rng.uniform(4, 14) / thickness * 3, rng.uniform(2.0, 6.0),
                           int(rng.integers(0, 2)), rng.uniform(0.15, 0.85)))
    v.fold_runs = []
    for _ in range(int(rng.integers(1, 4))):
        centre = rng.uniform(v.bag_start, v.bag_stop)
        v.fold_runs.append((centre, rng.uniform(5, 20) / thickness, int(rng.integers(0, 2)),
                            rng.uniform(10, 25), rng.uniform(4, 8), rng.uniform(0.4, 1.1)))
    v.corner_r = rng.uniform(10.0, 25.0)
    v.bead_mean = rng.uniform(-790.0, -720.0)
    v.bead_std = rng.uniform(35.0, 55.0)


def _draw_tissues_and_couch(rng: np.random.Generator, v: _V1) -> None:
    """Tissue densities, bone rhythm and the couch (fixed in the patient frame)."""
    v.fat_t = rng.uniform(3.0, 10.0) * (1 + smooth_random(rng, v.z, 0.2, 140))
    v.skin_t = 1.5
    v.soft_hu = rng.uniform(35.0, 50.0)
    v.fat_hu = rng.uniform(-115.0, -90.0)
    v.lung_hu = rng.uniform(-870.0, -835.0)
    v.cortex_hu = rng.uniform(850.0, 1000.0)
    v.cancellous_hu = rng.uniform(420.0, 520.0)
    v.vert_len = rng.uniform(14.0, 24.0) * v.a_max / 100
    v.vert_phase = rng.uniform(0, v.vert_len)
    v.rib_phase = rng.uniform(0, 2 * np.pi)
    v.rib_pitch = rng.uniform(0.012, 0.02)  # radians of angular drift per mm along z
    v.couch_t = rng.uniform(40.0, 60.0)
    v.shell_t = rng.uniform(1.8, 3.0)
    v.couch_hw = rng.uniform(245.0, 270.0)
    v.shell_hu = rng.uniform(450.0, 750.0)
    v.core_hu = rng.uniform(-960.0, -880.0)


def _radius_needed(v: _V1, y_couch: float, cx: float) -> float:
    """Radius (mm) of the circle round the image centre that holds the patient, bag and couch top."""
    pts = np.array([
        [y_couch - v.max_height - 8.0, cx],
        [y_couch + v.shell_t + 6.0, cx - v.need_w],
        [y_couch + v.shell_t + 6.0, cx + v.need_w],
        [y_couch - 0.5 * v.max_height, cx - v.need_w],
        [y_couch - 0.5 * v.max_height, cx + v.need_w],
    ])
    return float(np.max(np.hypot(pts[:, 0], pts[:, 1])))


def _place(rng: np.random.Generator, v: _V1, size: int) -> None:
    """Field of view, couch height, patient data, shrink of very large dogs, pixel grids and crop."""
    v.max_height = float(np.max(v.height + v.lift))
    bag_hw = float(np.max(v.a)) + float(np.max(v.t_wall))
    body_hw = float(np.max(v.a)) * 1.08
    v.need_w = max(bag_hw, body_hw) + 14.0
    # Couch top at y_c (mm below the image centre); stack spans y_c - max_height .. y_c.
    y_c = 0.5 * v.max_height - rng.uniform(-5.0, 25.0)
    cx0 = rng.normal(0.0, 12.0)
    r_need = _radius_needed(v, y_c, cx0)
    if r_need > _REFERENCE_SIZE * 1.0 / 2:
        cx0 = 0.0
        y_c = 0.5 * v.max_height
        r_need = _radius_needed(v, y_c, cx0)
    spacing_512 = float(np.clip(max(2 * r_need / _REFERENCE_SIZE, rng.uniform(0.6, 1.0)), 0.6, 1.0))
    spacing_512 = round(spacing_512, 4)
    scale = 1.0
    if 2 * r_need / _REFERENCE_SIZE > 1.0:
        scale = (_REFERENCE_SIZE / (2 * r_need)) * 0.98  # a very large dog: shrink to fit a 512 mm FOV
    v.scale = scale
    v.spacing = spacing_512 * _REFERENCE_SIZE / size

    v.sex = str(rng.choice(["M", "F"]))
    v.neutered = str(rng.choice(["ALTERED", "UNALTERED"], p=[0.7, 0.3]))
    v.breed = str(rng.choice(_BREEDS))
    v.name = str(rng.choice(_NAMES))

    # Apply the shrink, if any, to every length.
    v.a, v.b_top, v.b_bot, v.lift = v.a * scale, v.b_top * scale, v.b_bot * scale, v.lift * scale
    v.t_wall, v.t_bottom, v.fat_t = v.t_wall * scale, v.t_bottom * scale, v.fat_t * scale
    v.y_c, cx0 = y_c * scale, cx0 * scale
    v.cx_z = cx0 + smooth_random(rng, v.z, 6.0, 250)

    # Pixel grids (mm, relative to the image centre; rows grow downwards = towards the couch)
    idx = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    v.ys = idx * v.spacing
    v.xs = idx * v.spacing
    radius = size / 2.0 * v.spacing
    v.circle = (v.ys[:, None] ** 2 + v.xs[None, :] ** 2) <= radius**2

    # Everything but the couch and the air lies in a fixed crop around the patient and bag.
    margin = v.need_w + 30.0
    r0 = int(np.searchsorted(v.ys, v.y_c - v.max_height * scale - 20.0))
    r1 = int(np.searchsorted(v.ys, v.y_c + v.shell_t + 4.0)) + 1
    c0 = int(np.searchsorted(v.xs, float(np.min(v.cx_z)) - margin * scale))
    c1 = int(np.searchsorted(v.xs, float(np.max(v.cx_z)) + margin * scale)) + 1
    v.r0, v.r1, v.c0, v.c1 = max(r0, 0), min(r1, size), max(c0, 0), min(c1, size)
    v.ysc, v.xsc = v.ys[v.r0:v.r1], v.xs[v.c0:v.c1]
    v.crop = (slice(v.r0, v.r1), slice(v.c0, v.c1))


def _window(v: _V1, tile: np.ndarray, off: tuple[int, int]) -> np.ndarray:
    """The crop-sized window of a texture tile at offset ``off``."""
    return tile[off[0] + v.r0:off[0] + v.r1, off[1] + v.c0:off[1] + v.c1]


def _draw_textures(trng: np.random.Generator, v: _V1, size: int) -> None:
    """Bead, fine, organ and gut texture tiles with their per-slice offsets."""
    v.pad = pad = size // 2
    v.bead_tile = texture_tile(trng, (size + pad, size + pad), 0.9 / v.spacing)
    v.fine_tile = texture_tile(trng, (size + pad, size + pad), 0.6 / v.spacing)
    v.organ_tile = texture_tile(trng, (size + pad, size + pad), 6.0 / v.spacing)
    v.gut_tile = texture_tile(trng, (size + pad, size + pad), 4.0 / v.spacing)
    v.bead_offsets = trng.integers(0, pad, (v.n_slices, 2))
    v.drift = trng.uniform(-0.6, 0.6, 2) * 2.0 / v.spacing * v.thickness / 2.5


def _draw_scanner(trng: np.random.Generator, v: _V1, size: int) -> None:
    """Blur kernel and correlated noise tiles.

    Mild blur (partial volume) is a 3-tap kernel per axis (variance 2w = sigma**2, sigma
    0.55..0.8 px, close to a Gaussian at this width); the noise is correlated by the same
    kernel and drawn as windows of a few noise tiles.
    """
    pad = v.pad
    v.noise_sd = trng.uniform(10.0, 25.0)
    sigma_px = trng.uniform(0.55, 0.8)
    w = 0.5 * sigma_px**2
    v.kernel = np.array([w, 1.0 - 2.0 * w, w])
    gain = float(np.sum(v.kernel**2))  # 1D variance gain; equals the 2D standard-deviation gain
    v.noise_tiles = trng.standard_normal((3, size + pad, size + pad), dtype=np.float32)
    v.noise_tiles *= np.float32(v.noise_sd / gain)
    for axis in (1, 2):
        ndimage.correlate1d(v.noise_tiles, v.kernel, axis=axis, output=v.noise_tiles, mode="wrap")
    v.noise_offsets = trng.integers(0, pad, (v.n_slices, 2))


def _blur(v: _V1, plane: np.ndarray) -> np.ndarray:
    """Apply the scanner's blur kernel along both axes, in place."""
    for axis in (0, 1):
        ndimage.correlate1d(plane, v.kernel, axis=axis, output=plane, mode="nearest")
    return plane


def _render(v: _V1, seed: int, size: int) -> Phantom:
    """Paint every slice, apply blur and noise, and wrap the volumes as a :class:`Phantom`."""
    n_slices = v.n_slices
    couch_hu, couch_tissue, couch_label = _couch_slice(v.ys, v.xs, v.y_c, v.couch_t, v.shell_t, v.couch_hw,
                                                       v.shell_hu, v.core_hu)
    couch_blurred = _blur(v, couch_hu.copy())

    image = np.empty((n_slices, size, size), np.int16)
    tissue_vol = np.empty((n_slices, size, size), np.uint8)
    label_vol = np.empty((n_slices, size, size), np.uint8)
    plane = np.empty((size, size), np.float32)

    for k in range(n_slices):
        tissue_vol[k] = couch_tissue
        label_vol[k] = couch_label
        hu = couch_hu[v.crop].copy()
        _paint_slice(v, k, hu, tissue_vol[k][v.crop], label_vol[k][v.crop])
        plane[...] = couch_blurred
        plane[v.crop] = _blur(v, hu)
        plane += v.noise_tiles[k % 3, v.noise_offsets[k, 0]:v.noise_offsets[k, 0] + size,
                               v.noise_offsets[k, 1]:v.noise_offsets[k, 1] + size]
        np.rint(plane, out=plane)
        np.clip(plane, _OUTSIDE_HU, 3071, out=plane)
        image[k] = plane

    image[:, ~v.circle] = _OUTSIDE_HU
    label_vol[:, ~v.circle] = BACKGROUND
    tissue_vol[:, ~v.circle] = Tissue.AIR

    lung_counts = (tissue_vol == Tissue.LUNG).sum(axis=(1, 2))
    lung_slices = np.flatnonzero(lung_counts > 0.01 * size * size)
    return Phantom(
        patient_id=phantom_patient_id(seed),
        seed=seed,
        image=np.moveaxis(image, 0, -1),
        labels=np.moveaxis(label_vol, 0, -1),
        tissues=np.moveaxis(tissue_vol, 0, -1),
        pixel_spacing=(float(v.spacing), float(v.spacing)),
        slice_thickness_mm=v.thickness,
        bag_slices=(v.bag_start, v.bag_stop),
        lung_slices=lung_slices,
        patient_name=f"Phantom^{v.name}",
        breed_description=v.breed,
        sex=v.sex,
        neutered=v.neutered,
        weight_kg=v.weight,
        extra={"noise_sd_hu": float(v.noise_sd), "cranial_first": v.cranial_first, "scale": float(v.scale)},
    )


def _shrunk(v: _V1, k: int, cy: float, mod: np.ndarray, d: float) -> np.ndarray:
    """The body outline of slice ``k`` shrunk by ``d`` mm (in the crop)."""
    h = halfwidth(v.ysc, cy, v.a[k] - d, v.b_top[k] - d, v.b_bot[k] - d, v.p_top[k], v.p_bot) * (1 + mod)
    cx = v.cx_z[k]
    return row_mask(v.xsc, cx - h * (1 - v.asym[k]), cx + h * (1 + v.asym[k]))


def _paint_slice(v: _V1, k: int, hu: np.ndarray, tissue: np.ndarray, lab: np.ndarray) -> None:
    """Paint slice ``k`` (crop views): bag, body tissues, abdomen, thorax, trachea and bones."""
    ys, xs = v.ysc, v.xsc
    # Body outline
    cx = v.cx_z[k]
    y_bottom = v.y_c - v.lift[k]
    cy = y_bottom - v.b_bot[k]
    ty = np.clip((ys - cy) / np.where(ys < cy, v.b_top[k], v.b_bot[k]), -1, 1)
    mod = sum(v.mod_amp[j] * np.cos((j + 2) * np.pi * ty + v.mod_phase[j]) for j in range(3))
    hw = halfwidth(ys, cy, v.a[k], v.b_top[k], v.b_bot[k], v.p_top[k], v.p_bot) * (1 + mod)
    left_edge = cx - hw * (1 - v.asym[k])
    right_edge = cx + hw * (1 + v.asym[k])
    body = row_mask(xs, left_edge, right_edge)

    if v.in_bag[k]:
        bag, skin = _bag_slice(
            ys, xs, body, hw, cx, v.asym[k], cy, y_bottom, v.y_c, v.b_top[k] + v.b_bot[k],
            v.t_wall * v.wall_var[0][k] * (0.55 + 0.45 * v.end_taper[k]),
            v.wall_frac * v.wall_var[1][k] * (0.45 + 0.55 * v.end_taper[k]),
            v.corner_r, k, v.gap_runs, v.fold_runs,
        )
        off = (int(v.bead_offsets[k, 0]), int(v.bead_offsets[k, 1]))
        tex = _window(v, v.bead_tile, off)
        fill(hu, bag, tex * np.float32(v.bead_std) + np.float32(v.bead_mean))
        fill(tissue, bag, Tissue.BAG)
        fill(hu, skin, -150.0)
        fill(tissue, skin, Tissue.BAG_SKIN)
        fill(lab, bag, _VACBAG)

    # Body tissues: skin, subcutaneous fat, soft tissue
    fill(hu, body, v.soft_hu)
    fill(tissue, body, Tissue.SOFT)
    fill(lab, body, _BODY)
    under_skin = _shrunk(v, k, cy, mod, v.skin_t)
    fill(hu, under_skin, v.fat_hu)
    fill(tissue, under_skin, Tissue.FAT)
    inner = _shrunk(v, k, cy, mod, v.skin_t + v.fat_t[k])
    o0 = (int(k * v.drift[0]) % v.pad, int(k * v.drift[1]) % v.pad)
    organ = _window(v, v.organ_tile, o0)
    soft = organ * np.float32(9.0) + np.float32(v.soft_hu + 18.0 * v.liver_w[k])
    fill(hu, inner, soft)
    fill(tissue, inner, Tissue.SOFT)
    _paint_cavities(v, k, hu, tissue, cy, mod, organ, o0)
    _paint_bones(hu, tissue, ys, xs, k, v.z[k], cx, cy, v.a[k], v.b_top[k], v.b_bot[k], y_bottom, v.fat_t[k],
                 v.scale * v.a_max, v.vert_len, v.vert_phase, v.rib_w[k], v.rib_phase + v.rib_pitch * v.z[k],
                 v.cortex_hu, v.cancellous_hu, body)


def _paint_cavities(v: _V1, k: int, hu: np.ndarray, tissue: np.ndarray, cy: float, mod: np.ndarray,
                    organ: np.ndarray, o0: tuple[int, int]) -> None:
    """Abdomen (mesenteric fat, bowel gas), thorax (lungs, heart, vessels) and trachea of slice ``k``."""
    ys, xs, cx = v.ysc, v.xsc, v.cx_z[k]
    a, b_top, b_bot = v.a[k], v.b_top[k], v.b_bot[k]
    wall = v.skin_t + v.fat_t[k] + 0.09 * a
    cavity = _shrunk(v, k, cy, mod, wall)

    # Abdomen: mesenteric fat and bowel gas (tubes that drift slowly along the patient)
    if v.abdomen_w[k] > 0.05:
        gut = _window(v, v.gut_tile, (o0[1], o0[0]))
        fat_in = cavity & (organ > 1.1 - 0.5 * v.abdomen_w[k])
        fill(hu, fat_in, gut * np.float32(10.0) + np.float32(v.fat_hu))
        fill(tissue, fat_in, Tissue.FAT)
        gas = cavity & (gut > 2.45 - 0.25 * v.abdomen_w[k]) & (ys[:, None] < cy + 0.3 * b_bot)
        fill(hu, gas, -960.0)
        fill(tissue, gas, Tissue.GAS)

    # Thorax: lungs around heart and mediastinum
    if v.lung_w[k] > 0.03:
        lw = v.lung_w[k]
        lcy = cy + (1 - lw) * 0.5 * b_bot
        hl = halfwidth(ys, lcy, (a - wall) * np.sqrt(lw), (b_top - wall) * lw,
                       (b_bot - wall - 0.22 * b_bot) * max(lw, 0.5), 2.0, 2.2) * (1 + mod)
        lungs = row_mask(xs, cx - hl, cx + hl) & cavity
        lungs &= np.abs(xs[None, :] - cx) > 0.035 * a + 2.0
        if v.heart_w[k] > 0.02:
            hf = ellipse_window(ys, xs, cy - 0.1 * b_top, cx + 0.05 * a, 0.36 * b_top * v.heart_w[k],
                                0.34 * a * v.heart_w[k], 0.2)
            if hf is not None:
                lungs[hf[0]] &= ~hf[1]
        fine = _window(v, v.fine_tile, (int(v.bead_offsets[k, 0]), o0[1]))
        vessels = (organ > 1.6) & (fine > 1.0)
        fill(hu, lungs, fine * np.float32(15.0) + np.float32(v.lung_hu))
        fill(hu, lungs & vessels, np.float32(v.lung_hu + 450.0))
        fill(tissue, lungs & ~vessels, Tissue.LUNG)
        fill(tissue, lungs & vessels, Tissue.SOFT)
    # Trachea in the neck and cranial thorax
    tw = max(v.neck_w[k], 0.6 * v.heart_w[k] * (v.u[k] < 0.3))
    if tw > 0.3:
        # Ventral (top) in the neck, between heart and spine (dorsal = down) in the thorax.
        y_tr = cy - 0.35 * b_top * v.neck_w[k] + 0.3 * b_bot * (1 - v.neck_w[k])
        paint_ellipse(hu, tissue, ys, xs, (y_tr, cx, 0.09 * v.a_max * v.scale,
                                           0.09 * v.a_max * v.scale, 0.0), -980.0, Tissue.GAS)


def _couch_slice(
    ys: np.ndarray, xs: np.ndarray, y_c: float, couch_t: float, shell_t: float, couch_hw: float,
    shell_hu: float, core_hu: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HU, tissue and label planes of the couch: carbon-fibre shells around a foam core."""
    size_r, size_c = ys.size, xs.size
    hu = np.full((size_r, size_c), _AIR_HU, np.float32)
    tissue = np.zeros((size_r, size_c), np.uint8)
    lab = np.zeros((size_r, size_c), np.uint8)
    # Slightly curved underside: thinner towards the edges, rounded lower corners.
    edge = np.clip(np.abs(xs) / couch_hw, 0, 1)
    bottom = y_c + couch_t * (1 - 0.25 * edge**4)
    rows = ys[:, None]
    outer = (rows >= y_c) & (rows <= bottom[None, :]) & (np.abs(xs)[None, :] <= couch_hw)
    inner = (rows >= y_c + shell_t) & (rows <= bottom[None, :] - shell_t) & (np.abs(xs)[None, :] <= couch_hw - shell_t)
    hu[outer] = shell_hu
    tissue[outer] = Tissue.COUCH_SHELL
    hu[inner] = core_hu
    tissue[inner] = Tissue.COUCH_CORE
    lab[outer] = _COUCH
    return hu, tissue, lab


def _bag_slice(
    ys: np.ndarray, xs: np.ndarray, body: np.ndarray, hw: np.ndarray, cx: float, asym: float, cy: float,
    y_bottom: float, y_c: float, body_height: float, t_wall: np.ndarray, wall_frac: np.ndarray,
    corner_r: float, k: int, gap_runs: list, fold_runs: list,
) -> tuple[np.ndarray, np.ndarray]:
    """Vacuum bag mask and its plastic skin in one slice (never overlapping the body)."""
    rows = ys[:, None]
    hw_l = np.where(np.isfinite(hw), hw * (1 - asym), 0.0)
    hw_r = np.where(np.isfinite(hw), hw * (1 + asym), 0.0)
    bag = np.zeros(body.shape, bool)
    creases = np.zeros(body.shape, bool)
    hole = body.copy()
    for side, sign, body_hw in ((0, -1.0, hw_l), (1, 1.0, hw_r)):
        y_top = y_bottom - wall_frac[side] * body_height
        # Wall thins towards its upper edge; outer edge widens monotonically downwards.
        s = smoothstep((ys - y_top) / (0.5 * (y_bottom - y_top) + 1e-6))
        thick = t_wall[side] * (0.35 + 0.65 * s)
        outer = np.where(ys >= y_top, body_hw + thick, -np.inf)
        outer = np.maximum.accumulate(outer)
        # Rounded lower corner on the couch.
        dy = np.clip(ys - (y_c - corner_r), 0, corner_r)
        outer = outer - (corner_r - np.sqrt(corner_r**2 - dy**2))
        outer = np.where(ys < y_c, outer, -np.inf)
        half = (xs[None, :] - cx) * sign >= 0
        bag |= half & (np.abs(xs[None, :] - cx) <= outer[:, None])
        # Rounded cap on the upper edge of the wall.
        r_cap = 0.5 * t_wall[side] * 0.35
        x_cap = cx + sign * (np.interp(y_top, ys, body_hw) + r_cap)
        cap = ellipse_window(ys, xs, y_top, x_cap, r_cap, r_cap)
        if cap is not None:
            bag[cap[0]] |= cap[1]
        # Air gaps between bag and skin.
        for centre, half_len, gap, g_side, where in gap_runs:
            if g_side != side:
                continue
            w = 1.0 - ((k - centre) / half_len) ** 2
            if w <= 0:
                continue
            y_mid = y_top + where * (y_bottom - y_top)
            prof = gap * np.sqrt(w) * np.clip(1 - ((ys - y_mid) / (0.3 * (y_bottom - y_top) + 1e-6)) ** 2, 0, None)
            gap_rows = np.where(prof > 0.5, body_hw + prof, -np.inf)
            hole |= half & (np.abs(xs[None, :] - cx) <= gap_rows[:, None]) & (rows <= y_bottom)
        # Folds: the upper edge rolled outwards into a bulge, with an air crease under it.
        for centre, half_len, f_side, length, width, tilt in fold_runs:
            if f_side != side or abs(k - centre) > half_len:
                continue
            w = np.sqrt(max(0.0, 1 - ((k - centre) / half_len) ** 2))
            x_out = cx + sign * np.interp(y_top + 0.5 * length, ys, np.where(np.isfinite(outer), outer, 0.0))
            bulge = ellipse_window(ys, xs, y_top + 0.45 * length, x_out + sign * 0.2 * width * w,
                                    0.55 * length, width * (0.5 + 0.5 * w), -sign * 0.25 * tilt)
            if bulge is not None:
                bag[bulge[0]] |= bulge[1]
                crease = ellipse_window(ys, xs, y_top + 0.45 * length, x_out - sign * 0.3 * width,
                                         0.4 * length, 0.6, -sign * 0.25 * tilt)
                if crease is not None:
                    creases[crease[0]] |= crease[1]
    bag &= ~hole
    bag &= rows < y_c
    # Plastic skin: the bag pixels on its outer boundary (4-neighbourhood).
    interior = bag.copy()
    interior[1:, :] &= bag[:-1, :]
    interior[:-1, :] &= bag[1:, :]
    interior[:, 1:] &= bag[:, :-1]
    interior[:, :-1] &= bag[:, 1:]
    skin = (bag & ~interior) | (creases & bag)
    return bag, skin


def _paint_bones(
    hu: np.ndarray, tissue: np.ndarray, ys: np.ndarray, xs: np.ndarray, k: int, zk: float, cx: float, cy: float,
    a: float, b_top: float, b_bot: float, y_bottom: float, fat_t: float, a_ref: float, vert_len: float,
    vert_phase: float, rib_w: float, rib_angle: float, cortex_hu: float, cancellous_hu: float, body: np.ndarray,
) -> None:
    """Spine (vertebral body, arch, spinous process), ribs and sternum."""
    r_v = float(np.clip(0.11 * a_ref, 6.0, 20.0))
    y_v = y_bottom - 0.42 * b_bot - 0.2 * r_v
    disc = ((zk + vert_phase) % vert_len) < 3.0
    if disc:
        paint_ellipse(hu, tissue, ys, xs, (y_v, cx, r_v * 0.85, r_v, 0.0), 90.0, Tissue.SOFT)
    else:
        paint_ellipse(hu, tissue, ys, xs, (y_v, cx, r_v * 0.85, r_v, 0.0), cortex_hu, Tissue.BONE)
        paint_ellipse(hu, tissue, ys, xs, (y_v, cx, r_v * 0.85 - 1.8, r_v - 1.8, 0.0), cancellous_hu, Tissue.BONE)
        # Neural arch, canal and spinous process (dorsal = towards the couch).
        y_canal = y_v + 1.45 * r_v
        paint_ellipse(hu, tissue, ys, xs, (y_canal, cx, 0.95 * r_v, 0.85 * r_v, 0.0), cortex_hu * 0.8, Tissue.BONE)
        paint_ellipse(hu, tissue, ys, xs, (y_canal, cx, 0.5 * r_v, 0.5 * r_v, 0.0), 30.0, Tissue.SOFT)
        paint_ellipse(hu, tissue, ys, xs, (y_canal + 1.3 * r_v, cx, 0.7 * r_v, 0.22 * r_v, 0.0), cortex_hu * 0.75,
                       Tissue.BONE, within=body)
        for sign in (-1.0, 1.0):
            paint_ellipse(hu, tissue, ys, xs, (y_v + 0.3 * r_v, cx + sign * 1.3 * r_v, 0.25 * r_v, 0.8 * r_v,
                                                sign * 0.3), cortex_hu * 0.7, Tissue.BONE)
    if rib_w > 0.2:
        ring_a = a - fat_t - 0.045 * a - 2.0
        n_ribs = 6
        for sign in (-1.0, 1.0):
            for j in range(n_ribs):
                # Angle measured from the spine side (bottom) round towards the sternum (top).
                phi = (j + 0.5 + (rib_angle / (2 * np.pi) * n_ribs) % 1.0) / n_ribs * 0.95 * np.pi
                if phi < 0.12 * np.pi:
                    continue
                up = -np.cos(phi)  # -1 at the spine side, +1 at the sternum
                x = cx + sign * ring_a * np.sin(phi) * rib_w**0.3
                y = cy - up * (b_top if up > 0 else b_bot - fat_t - 6.0) * 0.9
                r = max(0.022 * a_ref, 1.8)
                paint_ellipse(hu, tissue, ys, xs, (y, x, 1.8 * r, r, sign * (np.pi / 2 - phi)), cortex_hu * 0.85,
                               Tissue.BONE, within=body)
        paint_ellipse(hu, tissue, ys, xs, (cy - b_top + fat_t + 6.0, cx, 0.05 * a_ref, 0.07 * a_ref, 0.0),
                       cortex_hu * 0.7, Tissue.BONE, within=body)

