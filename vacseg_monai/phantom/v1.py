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

    # ---- patient and series
    weight = float(np.round(rng.uniform(6.0, 42.0), 1))
    n_slices = int(rng.integers(60, 141))
    thickness = float(rng.choice([2.0, 2.5, 3.0]))
    a_max = 52.0 + 2.1 * weight + rng.normal(0, 5)  # thoracic half-width, mm
    depth_ratio = rng.uniform(0.82, 1.05)
    trunk_len = a_max * rng.uniform(5.5, 7.0)
    series_len = n_slices * thickness
    span = series_len / trunk_len
    lo, hi = max(-0.1, 0.36 - span), min(0.42, 1.05 - span)
    u_start = rng.uniform(lo, hi) if lo < hi else 0.5 * (lo + hi)
    cranial_first = bool(rng.integers(0, 2))
    z = np.arange(n_slices) * thickness
    frac = z / series_len
    u = u_start + span * (frac if cranial_first else 1.0 - frac)

    a = a_max * interp_profile(rng, u, _U_KNOTS, _WIDTH, 0.04) * (1 + smooth_random(rng, z, 0.03, 180))
    height = 2 * a_max * depth_ratio * interp_profile(rng, u, _U_KNOTS, _HEIGHT, 0.04)
    height *= 1 + smooth_random(rng, z, 0.03, 150)
    sigma_slices = max(6.0 / thickness, 1.0)
    a = ndimage.gaussian_filter1d(a, sigma_slices, mode="nearest")
    height = ndimage.gaussian_filter1d(height, sigma_slices, mode="nearest")
    bot_share = rng.uniform(0.42, 0.5)
    b_bot = height * bot_share
    b_top = height - b_bot
    p_top = np.where((u > 0.15) & (u < 0.55), rng.uniform(1.7, 2.1), rng.uniform(2.0, 2.4)) + 0 * u
    p_top = ndimage.gaussian_filter1d(p_top, sigma_slices * 2, mode="nearest")
    p_bot = rng.uniform(2.4, 3.2)
    asym = smooth_random(rng, z, 0.03, 200)
    mod_amp = rng.uniform(0.01, 0.04, 3)
    mod_phase = rng.uniform(0, 2 * np.pi, 3)

    # Region weights along the trunk.
    lung_w = smoothstep((u - 0.15) / 0.08) * smoothstep((0.56 - u) / 0.12)
    heart_w = smoothstep((u - 0.22) / 0.06) * smoothstep((0.46 - u) / 0.06)
    abdomen_w = smoothstep((u - 0.52) / 0.06) * smoothstep((0.95 - u) / 0.06)
    liver_w = smoothstep((u - 0.48) / 0.04) * smoothstep((0.66 - u) / 0.05)
    neck_w = smoothstep((0.2 - u) / 0.05)
    rib_w = smoothstep((u - 0.17) / 0.03) * smoothstep((0.6 - u) / 0.03)

    # ---- vacuum bag: contiguous run from one end of the series, ending part way along.
    bag_frac = rng.uniform(0.62, 0.78)
    n_bag = int(round(bag_frac * n_slices))
    bag_at_start = bool(rng.integers(0, 2))
    bag_start, bag_stop = (0, n_bag) if bag_at_start else (n_slices - n_bag, n_slices)
    in_bag = np.zeros(n_slices, bool)
    in_bag[bag_start:bag_stop] = True
    # Distance (mm) from the bag end, positive inside the bag.
    end_z = (bag_stop - 0.5) * thickness if bag_at_start else (bag_start - 0.5) * thickness
    inside_dist = (end_z - z) if bag_at_start else (z - end_z)
    t_bottom = rng.uniform(22.0, 55.0)
    t_wall = rng.uniform(22.0, 55.0, 2)  # left, right
    wall_frac = rng.uniform(0.38, 0.62, 2)
    end_taper = smoothstep((inside_dist + 8.0) / 30.0)  # 1 deep in the bag, small at its end
    lift = 2.0 + (t_bottom - 2.0) * smoothstep((inside_dist + 10.0) / 40.0)
    lift *= 1 + smooth_random(rng, z, 0.08, 160)
    wall_var = [1 + smooth_random(rng, z, 0.12, 120) for _ in range(2)]
    gap_runs = []
    for _ in range(int(rng.integers(0, 3))):
        centre = rng.uniform(bag_start, bag_stop)
        gap_runs.append((centre, rng.uniform(4, 14) / thickness * 3, rng.uniform(2.0, 6.0),
                         int(rng.integers(0, 2)), rng.uniform(0.15, 0.85)))
    fold_runs = []
    for _ in range(int(rng.integers(1, 4))):
        centre = rng.uniform(bag_start, bag_stop)
        fold_runs.append((centre, rng.uniform(5, 20) / thickness, int(rng.integers(0, 2)),
                          rng.uniform(10, 25), rng.uniform(4, 8), rng.uniform(0.4, 1.1)))
    corner_r = rng.uniform(10.0, 25.0)
    bead_mean = rng.uniform(-790.0, -720.0)
    bead_std = rng.uniform(35.0, 55.0)

    # ---- tissues
    fat_t = rng.uniform(3.0, 10.0) * (1 + smooth_random(rng, z, 0.2, 140))
    skin_t = 1.5
    soft_hu = rng.uniform(35.0, 50.0)
    fat_hu = rng.uniform(-115.0, -90.0)
    lung_hu = rng.uniform(-870.0, -835.0)
    cortex_hu = rng.uniform(850.0, 1000.0)
    cancellous_hu = rng.uniform(420.0, 520.0)
    vert_len = rng.uniform(14.0, 24.0) * a_max / 100
    vert_phase = rng.uniform(0, vert_len)
    rib_phase = rng.uniform(0, 2 * np.pi)
    rib_pitch = rng.uniform(0.012, 0.02)  # radians of angular drift per mm along z

    # ---- couch (fixed in the patient frame)
    couch_t = rng.uniform(40.0, 60.0)
    shell_t = rng.uniform(1.8, 3.0)
    couch_hw = rng.uniform(245.0, 270.0)
    shell_hu = rng.uniform(450.0, 750.0)
    core_hu = rng.uniform(-960.0, -880.0)

    # ---- field of view and placement
    max_height = float(np.max(height + lift))
    bag_hw = float(np.max(a)) + float(np.max(t_wall))
    body_hw = float(np.max(a)) * 1.08
    need_w = max(bag_hw, body_hw) + 14.0
    # Couch top at y_c (mm below the image centre); stack spans y_c - max_height .. y_c.
    y_c = 0.5 * max_height - rng.uniform(-5.0, 25.0)
    cx0 = rng.normal(0.0, 12.0)

    def radius_needed(y_couch: float, cx: float) -> float:
        pts = np.array([
            [y_couch - max_height - 8.0, cx],
            [y_couch + shell_t + 6.0, cx - need_w],
            [y_couch + shell_t + 6.0, cx + need_w],
            [y_couch - 0.5 * max_height, cx - need_w],
            [y_couch - 0.5 * max_height, cx + need_w],
        ])
        return float(np.max(np.hypot(pts[:, 0], pts[:, 1])))

    r_need = radius_needed(y_c, cx0)
    if r_need > _REFERENCE_SIZE * 1.0 / 2:
        cx0 = 0.0
        y_c = 0.5 * max_height
        r_need = radius_needed(y_c, cx0)
    spacing_512 = float(np.clip(max(2 * r_need / _REFERENCE_SIZE, rng.uniform(0.6, 1.0)), 0.6, 1.0))
    spacing_512 = round(spacing_512, 4)
    scale = 1.0
    if 2 * r_need / _REFERENCE_SIZE > 1.0:
        scale = (_REFERENCE_SIZE / (2 * r_need)) * 0.98  # a very large dog: shrink to fit a 512 mm FOV
    spacing = spacing_512 * _REFERENCE_SIZE / size

    sex = str(rng.choice(["M", "F"]))
    neutered = str(rng.choice(["ALTERED", "UNALTERED"], p=[0.7, 0.3]))
    breed = str(rng.choice(_BREEDS))
    name = str(rng.choice(_NAMES))

    # Apply the shrink, if any, to every length.
    a, b_top, b_bot, lift = a * scale, b_top * scale, b_bot * scale, lift * scale
    t_wall, t_bottom, fat_t, y_c, cx0 = t_wall * scale, t_bottom * scale, fat_t * scale, y_c * scale, cx0 * scale
    cx_z = cx0 + smooth_random(rng, z, 6.0, 250)

    # ---- pixel grids (mm, relative to the image centre; rows grow downwards = towards the couch)
    idx = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    ys = idx * spacing
    xs = idx * spacing
    radius = size / 2.0 * spacing
    circle = (ys[:, None] ** 2 + xs[None, :] ** 2) <= radius**2

    # Everything but the couch and the air lies in a fixed crop around the patient and bag.
    margin = need_w + 30.0
    r0 = int(np.searchsorted(ys, y_c - max_height * scale - 20.0))
    r1 = int(np.searchsorted(ys, y_c + shell_t + 4.0)) + 1
    c0 = int(np.searchsorted(xs, float(np.min(cx_z)) - margin * scale))
    c1 = int(np.searchsorted(xs, float(np.max(cx_z)) + margin * scale)) + 1
    r0, r1, c0, c1 = max(r0, 0), min(r1, size), max(c0, 0), min(c1, size)
    ysc, xsc = ys[r0:r1], xs[c0:c1]

    def window(tile: np.ndarray, off: tuple[int, int]) -> np.ndarray:
        return tile[off[0] + r0:off[0] + r1, off[1] + c0:off[1] + c1]

    pad = size // 2
    bead_tile = texture_tile(trng, (size + pad, size + pad), 0.9 / spacing)
    fine_tile = texture_tile(trng, (size + pad, size + pad), 0.6 / spacing)
    organ_tile = texture_tile(trng, (size + pad, size + pad), 6.0 / spacing)
    gut_tile = texture_tile(trng, (size + pad, size + pad), 4.0 / spacing)
    bead_offsets = trng.integers(0, pad, (n_slices, 2))
    drift = trng.uniform(-0.6, 0.6, 2) * 2.0 / spacing * thickness / 2.5

    # Scanner: mild blur (partial volume) as a 3-tap kernel per axis (variance 2w = sigma**2,
    # sigma 0.55..0.8 px, close to a Gaussian at this width) and noise correlated by the same
    # kernel, drawn as windows of a few noise tiles.
    noise_sd = trng.uniform(10.0, 25.0)
    sigma_px = trng.uniform(0.55, 0.8)
    w = 0.5 * sigma_px**2
    kernel = np.array([w, 1.0 - 2.0 * w, w])
    gain = float(np.sum(kernel**2))  # 1D variance gain; equals the 2D standard-deviation gain
    noise_tiles = trng.standard_normal((3, size + pad, size + pad), dtype=np.float32)
    noise_tiles *= np.float32(noise_sd / gain)
    for axis in (1, 2):
        ndimage.correlate1d(noise_tiles, kernel, axis=axis, output=noise_tiles, mode="wrap")
    noise_offsets = trng.integers(0, pad, (n_slices, 2))

    def blur(plane: np.ndarray) -> np.ndarray:
        for axis in (0, 1):
            ndimage.correlate1d(plane, kernel, axis=axis, output=plane, mode="nearest")
        return plane

    couch_hu, couch_tissue, couch_label = _couch_slice(ys, xs, y_c, couch_t, shell_t, couch_hw, shell_hu, core_hu)
    couch_blurred = blur(couch_hu.copy())

    image = np.empty((n_slices, size, size), np.int16)
    tissue_vol = np.empty((n_slices, size, size), np.uint8)
    label_vol = np.empty((n_slices, size, size), np.uint8)
    plane = np.empty((size, size), np.float32)
    crop = (slice(r0, r1), slice(c0, c1))

    for k in range(n_slices):
        tissue_vol[k] = couch_tissue
        label_vol[k] = couch_label
        hu = couch_hu[crop].copy()
        tissue, lab = tissue_vol[k][crop], label_vol[k][crop]
        ys, xs = ysc, xsc
        # Body outline
        cx = cx_z[k]
        y_bottom = y_c - lift[k]
        cy = y_bottom - b_bot[k]
        ty = np.clip((ys - cy) / np.where(ys < cy, b_top[k], b_bot[k]), -1, 1)
        mod = sum(mod_amp[j] * np.cos((j + 2) * np.pi * ty + mod_phase[j]) for j in range(3))
        hw = halfwidth(ys, cy, a[k], b_top[k], b_bot[k], p_top[k], p_bot) * (1 + mod)
        left_edge = cx - hw * (1 - asym[k])
        right_edge = cx + hw * (1 + asym[k])
        body = row_mask(xs, left_edge, right_edge)

        def shrunk(d: float, kk: int = k, cy_: float = cy) -> np.ndarray:
            h = halfwidth(ys, cy_, a[kk] - d, b_top[kk] - d, b_bot[kk] - d, p_top[kk], p_bot) * (1 + mod)
            return row_mask(xs, cx - h * (1 - asym[kk]), cx + h * (1 + asym[kk]))

        if in_bag[k]:
            bag, skin = _bag_slice(
                ys, xs, body, hw, cx, asym[k], cy, y_bottom, y_c, b_top[k] + b_bot[k],
                t_wall * wall_var[0][k] * (0.55 + 0.45 * end_taper[k]),
                wall_frac * wall_var[1][k] * (0.45 + 0.55 * end_taper[k]),
                corner_r, k, gap_runs, fold_runs,
            )
            off = (int(bead_offsets[k, 0]), int(bead_offsets[k, 1]))
            tex = window(bead_tile, off)
            fill(hu, bag, tex * np.float32(bead_std) + np.float32(bead_mean))
            fill(tissue, bag, Tissue.BAG)
            fill(hu, skin, -150.0)
            fill(tissue, skin, Tissue.BAG_SKIN)
            fill(lab, bag, _VACBAG)

        # Body tissues: skin, subcutaneous fat, soft tissue
        fill(hu, body, soft_hu)
        fill(tissue, body, Tissue.SOFT)
        fill(lab, body, _BODY)
        under_skin = shrunk(skin_t)
        fill(hu, under_skin, fat_hu)
        fill(tissue, under_skin, Tissue.FAT)
        inner = shrunk(skin_t + fat_t[k])
        o0 = (int(k * drift[0]) % pad, int(k * drift[1]) % pad)
        organ = window(organ_tile, o0)
        soft = organ * np.float32(9.0) + np.float32(soft_hu + 18.0 * liver_w[k])
        fill(hu, inner, soft)
        fill(tissue, inner, Tissue.SOFT)

        wall = skin_t + fat_t[k] + 0.09 * a[k]
        cavity = shrunk(wall)

        # Abdomen: mesenteric fat and bowel gas (tubes that drift slowly along the patient)
        if abdomen_w[k] > 0.05:
            gut = window(gut_tile, (o0[1], o0[0]))
            fat_in = cavity & (organ > 1.1 - 0.5 * abdomen_w[k])
            fill(hu, fat_in, gut * np.float32(10.0) + np.float32(fat_hu))
            fill(tissue, fat_in, Tissue.FAT)
            gas = cavity & (gut > 2.45 - 0.25 * abdomen_w[k]) & (ys[:, None] < cy + 0.3 * b_bot[k])
            fill(hu, gas, -960.0)
            fill(tissue, gas, Tissue.GAS)

        # Thorax: lungs around heart and mediastinum
        if lung_w[k] > 0.03:
            lw = lung_w[k]
            lcy = cy + (1 - lw) * 0.5 * b_bot[k]
            hl = halfwidth(ys, lcy, (a[k] - wall) * np.sqrt(lw), (b_top[k] - wall) * lw,
                            (b_bot[k] - wall - 0.22 * b_bot[k]) * max(lw, 0.5), 2.0, 2.2) * (1 + mod)
            lungs = row_mask(xs, cx - hl, cx + hl) & cavity
            lungs &= np.abs(xs[None, :] - cx) > 0.035 * a[k] + 2.0
            if heart_w[k] > 0.02:
                hf = ellipse_window(ys, xs, cy - 0.1 * b_top[k], cx + 0.05 * a[k], 0.36 * b_top[k] * heart_w[k],
                                     0.34 * a[k] * heart_w[k], 0.2)
                if hf is not None:
                    lungs[hf[0]] &= ~hf[1]
            fine = window(fine_tile, (int(bead_offsets[k, 0]), o0[1]))
            vessels = (organ > 1.6) & (fine > 1.0)
            fill(hu, lungs, fine * np.float32(15.0) + np.float32(lung_hu))
            fill(hu, lungs & vessels, np.float32(lung_hu + 450.0))
            fill(tissue, lungs & ~vessels, Tissue.LUNG)
            fill(tissue, lungs & vessels, Tissue.SOFT)
        # Trachea in the neck and cranial thorax
        tw = max(neck_w[k], 0.6 * heart_w[k] * (u[k] < 0.3))
        if tw > 0.3:
            # Ventral (top) in the neck, between heart and spine (dorsal = down) in the thorax.
            y_tr = cy - 0.35 * b_top[k] * neck_w[k] + 0.3 * b_bot[k] * (1 - neck_w[k])
            paint_ellipse(hu, tissue, ys, xs, (y_tr, cx, 0.09 * a_max * scale,
                                                0.09 * a_max * scale, 0.0), -980.0, Tissue.GAS)

        _paint_bones(hu, tissue, ys, xs, k, z[k], cx, cy, a[k], b_top[k], b_bot[k], y_bottom, fat_t[k],
                     scale * a_max, vert_len, vert_phase, rib_w[k], rib_phase + rib_pitch * z[k],
                     cortex_hu, cancellous_hu, body)

        plane[...] = couch_blurred
        plane[crop] = blur(hu)
        plane += noise_tiles[k % 3, noise_offsets[k, 0]:noise_offsets[k, 0] + size,
                             noise_offsets[k, 1]:noise_offsets[k, 1] + size]
        np.rint(plane, out=plane)
        np.clip(plane, _OUTSIDE_HU, 3071, out=plane)
        image[k] = plane

    image[:, ~circle] = _OUTSIDE_HU
    label_vol[:, ~circle] = BACKGROUND
    tissue_vol[:, ~circle] = Tissue.AIR

    lung_counts = (tissue_vol == Tissue.LUNG).sum(axis=(1, 2))
    lung_slices = np.flatnonzero(lung_counts > 0.01 * size * size)
    return Phantom(
        patient_id=phantom_patient_id(seed),
        seed=seed,
        image=np.moveaxis(image, 0, -1),
        labels=np.moveaxis(label_vol, 0, -1),
        tissues=np.moveaxis(tissue_vol, 0, -1),
        pixel_spacing=(float(spacing), float(spacing)),
        slice_thickness_mm=thickness,
        bag_slices=(bag_start, bag_stop),
        lung_slices=lung_slices,
        patient_name=f"Phantom^{name}",
        breed_description=breed,
        sex=sex,
        neutered=neutered,
        weight_kg=weight,
        extra={"noise_sd_hu": float(noise_sd), "cranial_first": cranial_first, "scale": float(scale)},
    )


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

