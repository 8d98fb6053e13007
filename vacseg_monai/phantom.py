"""Synthetic canine planning CT with truth labels for the vacuum bag, couch and body.

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

import enum
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from vacseg_monai.labels import BACKGROUND, label_by_name

__all__ = [
    "Phantom",
    "Tissue",
    "generate_dataset",
    "generate_phantom",
    "montage_panels",
    "phantom_patient_id",
    "write_npy_layout",
]

logger = logging.getLogger(__name__)

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


class Tissue(enum.IntEnum):
    """Tissue classes of the phantom (finer than the labels; used by tests and QA)."""

    AIR = 0
    SOFT = 1
    FAT = 2
    BONE = 3
    LUNG = 4
    GAS = 5
    BAG = 6
    BAG_SKIN = 7
    COUCH_SHELL = 8
    COUCH_CORE = 9


@dataclass
class Phantom:
    """One synthetic patient: CT volume, truth labels, geometry and patient information.

    Args:
        patient_id: stable identifier derived from the seed, e.g. ``"phantom_000"``.
        seed: the seed the patient was generated from.
        image: CT in Hounsfield units, int16, shape (rows, cols, n_slices). It is a view on
            slice-major storage, so ``image[:, :, k]`` is contiguous.
        labels: label map, uint8, same shape: 0 background, 1 Vacbag, 2 Couch, 3 Body.
        tissues: :class:`Tissue` map, uint8, same shape (truth before blur and noise).
        pixel_spacing: (row spacing, column spacing) in mm.
        slice_thickness_mm: slice thickness, equal to the slice spacing, in mm.
        bag_slices: (start, stop) slice indices of the vacuum bag, stop exclusive.
        lung_slices: indices of the slices that contain lung.
        patient_name: DICOM person name, e.g. ``"Phantom^Rex"``.
        species_description: Patient Species Description (0010,2201).
        breed_description: Patient Breed Description (0010,2292).
        sex: Patient's Sex, ``"M"`` or ``"F"``.
        neutered: Patient's Sex Neutered (0010,2203), ``"ALTERED"`` or ``"UNALTERED"``.
        weight_kg: Patient's Weight in kg.
        responsible_person: Responsible Person (0010,2297).
        responsible_person_role: Responsible Person Role (0010,2298).
        responsible_organization: Responsible Organization (0010,2299).
        extra: generation details (noise level, scan direction, size scale) for tests and QA.
    """

    patient_id: str
    seed: int
    image: np.ndarray
    labels: np.ndarray
    tissues: np.ndarray
    pixel_spacing: tuple[float, float]
    slice_thickness_mm: float
    bag_slices: tuple[int, int]
    lung_slices: np.ndarray
    patient_name: str
    species_description: str = "Canine"
    breed_description: str = "Mixed Breed"
    sex: str = "F"
    neutered: str = "ALTERED"
    weight_kg: float = 20.0
    responsible_person: str = "Doe^Jane"
    responsible_person_role: str = "OWNER"
    responsible_organization: str = "Vacseg Phantom Veterinary Clinic"
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def n_slices(self) -> int:
        """Number of axial slices."""
        return int(self.image.shape[2])


def phantom_patient_id(seed: int) -> str:
    """Folder name and Patient ID of the phantom generated from ``seed``."""
    return f"phantom_{seed:03d}"


# --------------------------------------------------------------------------- helpers


def _smooth_random(rng: np.random.Generator, z: np.ndarray, amplitude: float, period_mm: float) -> np.ndarray:
    """A smooth random function of slice position: two sinusoids with random phase."""
    out = np.zeros_like(z)
    for k in (1.0, 2.3):
        phase = rng.uniform(0, 2 * np.pi)
        weight = rng.uniform(0.3, 1.0)
        out += weight * np.sin(2 * np.pi * z * k / period_mm + phase)
    return amplitude * out / 2.0


def _halfwidth(
    ys: np.ndarray, cy: float, a: float, b_top: float, b_bot: float, p_top: float, p_bot: float
) -> np.ndarray:
    """Half-width per row of a two-sided superellipse; -inf on rows it does not reach."""
    if a <= 0 or b_top <= 0 or b_bot <= 0:
        return np.full_like(ys, -np.inf)
    above = ys < cy
    t = np.where(above, (cy - ys) / b_top, (ys - cy) / b_bot)
    p = np.where(above, p_top, p_bot)
    inside = t < 1.0
    hw = a * np.power(np.clip(1.0 - np.power(np.minimum(t, 1.0), p), 0.0, None), 1.0 / p)
    return np.where(inside, hw, -np.inf)


def _row_mask(xs: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """2D mask of the pixels between ``left`` and ``right`` (per row, in mm)."""
    return (xs[None, :] >= left[:, None]) & (xs[None, :] <= right[:, None])


def _ellipse_window(
    ys: np.ndarray,
    xs: np.ndarray,
    cy: float,
    cx: float,
    ry: float,
    rx: float,
    angle: float = 0.0,
) -> tuple[tuple[slice, slice], np.ndarray] | None:
    """Mask of a (rotated) ellipse inside the smallest window of the slice that holds it."""
    sp_r = ys[1] - ys[0]
    sp_c = xs[1] - xs[0]
    reach = max(ry, rx)
    r0 = max(int(np.floor((cy - reach - ys[0]) / sp_r)), 0)
    r1 = min(int(np.ceil((cy + reach - ys[0]) / sp_r)) + 1, ys.size)
    c0 = max(int(np.floor((cx - reach - xs[0]) / sp_c)), 0)
    c1 = min(int(np.ceil((cx + reach - xs[0]) / sp_c)) + 1, xs.size)
    if r0 >= r1 or c0 >= c1 or ry <= 0 or rx <= 0:
        return None
    dy = ys[r0:r1, None] - cy
    dx = xs[None, c0:c1] - cx
    ca, sa = np.cos(angle), np.sin(angle)
    u = dx * ca + dy * sa
    v = -dx * sa + dy * ca
    mask = (u / rx) ** 2 + (v / ry) ** 2 <= 1.0
    return (slice(r0, r1), slice(c0, c1)), mask


def _paint_ellipse(
    hu: np.ndarray,
    tissue: np.ndarray,
    ys: np.ndarray,
    xs: np.ndarray,
    geometry: tuple[float, float, float, float, float],
    value: float,
    tissue_class: Tissue,
    within: np.ndarray | None = None,
) -> None:
    """Set ``value``/``tissue_class`` inside an ellipse (cy, cx, ry, rx, angle), optionally only within a mask."""
    found = _ellipse_window(ys, xs, *geometry)
    if found is None:
        return
    window, mask = found
    if within is not None:
        mask = mask & within[window]
    np.copyto(hu[window], np.float32(value), where=mask)
    np.copyto(tissue[window], np.uint8(tissue_class), where=mask)


def _texture_tile(rng: np.random.Generator, shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    """Gaussian-filtered white noise with unit standard deviation (float32)."""
    noise = rng.standard_normal(shape, dtype=np.float32)
    if sigma_px > 0.3:
        noise = ndimage.gaussian_filter(noise, sigma_px, mode="wrap")
    noise -= noise.mean()
    noise /= max(float(noise.std()), 1e-6)
    return noise


def _fill(dst: np.ndarray, mask: np.ndarray, value: float | np.ndarray) -> None:
    """``dst[mask] = value`` (value scalar or full-size array), without fancy indexing."""
    np.copyto(dst, np.asarray(value, dtype=dst.dtype) if np.ndim(value) == 0 else value, where=mask, casting="unsafe")


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _interp_profile(rng: np.random.Generator, u: np.ndarray, knots: Sequence[float], values: Sequence[float],
                    jitter: float) -> np.ndarray:
    vals = np.asarray(values, dtype=float) * (1.0 + rng.uniform(-jitter, jitter, len(values)))
    return np.interp(u, np.asarray(knots, dtype=float), vals)


# --------------------------------------------------------------------------- generator


# Canonical trunk coordinate u in [0, 1]: neck 0..0.15, thorax 0.15..0.55, abdomen 0.55..0.88, pelvis beyond.
_U_KNOTS = (-0.2, 0.0, 0.12, 0.2, 0.35, 0.5, 0.6, 0.75, 0.88, 1.0, 1.2)
_WIDTH = (0.45, 0.48, 0.55, 0.82, 1.0, 0.98, 0.92, 0.86, 0.82, 0.7, 0.6)
_HEIGHT = (0.45, 0.5, 0.6, 0.95, 1.08, 1.02, 0.92, 0.85, 0.8, 0.7, 0.6)


def generate_phantom(seed: int, *, size: int = 512) -> Phantom:
    """Generate one synthetic canine planning CT patient.

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

    a = a_max * _interp_profile(rng, u, _U_KNOTS, _WIDTH, 0.04) * (1 + _smooth_random(rng, z, 0.03, 180))
    height = 2 * a_max * depth_ratio * _interp_profile(rng, u, _U_KNOTS, _HEIGHT, 0.04)
    height *= 1 + _smooth_random(rng, z, 0.03, 150)
    sigma_slices = max(6.0 / thickness, 1.0)
    a = ndimage.gaussian_filter1d(a, sigma_slices, mode="nearest")
    height = ndimage.gaussian_filter1d(height, sigma_slices, mode="nearest")
    bot_share = rng.uniform(0.42, 0.5)
    b_bot = height * bot_share
    b_top = height - b_bot
    p_top = np.where((u > 0.15) & (u < 0.55), rng.uniform(1.7, 2.1), rng.uniform(2.0, 2.4)) + 0 * u
    p_top = ndimage.gaussian_filter1d(p_top, sigma_slices * 2, mode="nearest")
    p_bot = rng.uniform(2.4, 3.2)
    asym = _smooth_random(rng, z, 0.03, 200)
    mod_amp = rng.uniform(0.01, 0.04, 3)
    mod_phase = rng.uniform(0, 2 * np.pi, 3)

    # Region weights along the trunk.
    lung_w = _smoothstep((u - 0.15) / 0.08) * _smoothstep((0.56 - u) / 0.12)
    heart_w = _smoothstep((u - 0.22) / 0.06) * _smoothstep((0.46 - u) / 0.06)
    abdomen_w = _smoothstep((u - 0.52) / 0.06) * _smoothstep((0.95 - u) / 0.06)
    liver_w = _smoothstep((u - 0.48) / 0.04) * _smoothstep((0.66 - u) / 0.05)
    neck_w = _smoothstep((0.2 - u) / 0.05)
    rib_w = _smoothstep((u - 0.17) / 0.03) * _smoothstep((0.6 - u) / 0.03)

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
    end_taper = _smoothstep((inside_dist + 8.0) / 30.0)  # 1 deep in the bag, small at its end
    lift = 2.0 + (t_bottom - 2.0) * _smoothstep((inside_dist + 10.0) / 40.0)
    lift *= 1 + _smooth_random(rng, z, 0.08, 160)
    wall_var = [1 + _smooth_random(rng, z, 0.12, 120) for _ in range(2)]
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
    fat_t = rng.uniform(3.0, 10.0) * (1 + _smooth_random(rng, z, 0.2, 140))
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
    cx_z = cx0 + _smooth_random(rng, z, 6.0, 250)

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
    bead_tile = _texture_tile(trng, (size + pad, size + pad), 0.9 / spacing)
    fine_tile = _texture_tile(trng, (size + pad, size + pad), 0.6 / spacing)
    organ_tile = _texture_tile(trng, (size + pad, size + pad), 6.0 / spacing)
    gut_tile = _texture_tile(trng, (size + pad, size + pad), 4.0 / spacing)
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
        hw = _halfwidth(ys, cy, a[k], b_top[k], b_bot[k], p_top[k], p_bot) * (1 + mod)
        left_edge = cx - hw * (1 - asym[k])
        right_edge = cx + hw * (1 + asym[k])
        body = _row_mask(xs, left_edge, right_edge)

        def shrunk(d: float, kk: int = k, cy_: float = cy) -> np.ndarray:
            h = _halfwidth(ys, cy_, a[kk] - d, b_top[kk] - d, b_bot[kk] - d, p_top[kk], p_bot) * (1 + mod)
            return _row_mask(xs, cx - h * (1 - asym[kk]), cx + h * (1 + asym[kk]))

        if in_bag[k]:
            bag, skin = _bag_slice(
                ys, xs, body, hw, cx, asym[k], cy, y_bottom, y_c, b_top[k] + b_bot[k],
                t_wall * wall_var[0][k] * (0.55 + 0.45 * end_taper[k]),
                wall_frac * wall_var[1][k] * (0.45 + 0.55 * end_taper[k]),
                corner_r, k, gap_runs, fold_runs,
            )
            off = (int(bead_offsets[k, 0]), int(bead_offsets[k, 1]))
            tex = window(bead_tile, off)
            _fill(hu, bag, tex * np.float32(bead_std) + np.float32(bead_mean))
            _fill(tissue, bag, Tissue.BAG)
            _fill(hu, skin, -150.0)
            _fill(tissue, skin, Tissue.BAG_SKIN)
            _fill(lab, bag, _VACBAG)

        # Body tissues: skin, subcutaneous fat, soft tissue
        _fill(hu, body, soft_hu)
        _fill(tissue, body, Tissue.SOFT)
        _fill(lab, body, _BODY)
        under_skin = shrunk(skin_t)
        _fill(hu, under_skin, fat_hu)
        _fill(tissue, under_skin, Tissue.FAT)
        inner = shrunk(skin_t + fat_t[k])
        o0 = (int(k * drift[0]) % pad, int(k * drift[1]) % pad)
        organ = window(organ_tile, o0)
        soft = organ * np.float32(9.0) + np.float32(soft_hu + 18.0 * liver_w[k])
        _fill(hu, inner, soft)
        _fill(tissue, inner, Tissue.SOFT)

        wall = skin_t + fat_t[k] + 0.09 * a[k]
        cavity = shrunk(wall)

        # Abdomen: mesenteric fat and bowel gas (tubes that drift slowly along the patient)
        if abdomen_w[k] > 0.05:
            gut = window(gut_tile, (o0[1], o0[0]))
            fat_in = cavity & (organ > 1.1 - 0.5 * abdomen_w[k])
            _fill(hu, fat_in, gut * np.float32(10.0) + np.float32(fat_hu))
            _fill(tissue, fat_in, Tissue.FAT)
            gas = cavity & (gut > 2.45 - 0.25 * abdomen_w[k]) & (ys[:, None] < cy + 0.3 * b_bot[k])
            _fill(hu, gas, -960.0)
            _fill(tissue, gas, Tissue.GAS)

        # Thorax: lungs around heart and mediastinum
        if lung_w[k] > 0.03:
            lw = lung_w[k]
            lcy = cy + (1 - lw) * 0.5 * b_bot[k]
            hl = _halfwidth(ys, lcy, (a[k] - wall) * np.sqrt(lw), (b_top[k] - wall) * lw,
                            (b_bot[k] - wall - 0.22 * b_bot[k]) * max(lw, 0.5), 2.0, 2.2) * (1 + mod)
            lungs = _row_mask(xs, cx - hl, cx + hl) & cavity
            lungs &= np.abs(xs[None, :] - cx) > 0.035 * a[k] + 2.0
            if heart_w[k] > 0.02:
                hf = _ellipse_window(ys, xs, cy - 0.1 * b_top[k], cx + 0.05 * a[k], 0.36 * b_top[k] * heart_w[k],
                                     0.34 * a[k] * heart_w[k], 0.2)
                if hf is not None:
                    lungs[hf[0]] &= ~hf[1]
            fine = window(fine_tile, (int(bead_offsets[k, 0]), o0[1]))
            vessels = (organ > 1.6) & (fine > 1.0)
            _fill(hu, lungs, fine * np.float32(15.0) + np.float32(lung_hu))
            _fill(hu, lungs & vessels, np.float32(lung_hu + 450.0))
            _fill(tissue, lungs & ~vessels, Tissue.LUNG)
            _fill(tissue, lungs & vessels, Tissue.SOFT)
        # Trachea in the neck and cranial thorax
        tw = max(neck_w[k], 0.6 * heart_w[k] * (u[k] < 0.3))
        if tw > 0.3:
            # Ventral (top) in the neck, between heart and spine (dorsal = down) in the thorax.
            y_tr = cy - 0.35 * b_top[k] * neck_w[k] + 0.3 * b_bot[k] * (1 - neck_w[k])
            _paint_ellipse(hu, tissue, ys, xs, (y_tr, cx, 0.09 * a_max * scale,
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
        s = _smoothstep((ys - y_top) / (0.5 * (y_bottom - y_top) + 1e-6))
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
        cap = _ellipse_window(ys, xs, y_top, x_cap, r_cap, r_cap)
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
            bulge = _ellipse_window(ys, xs, y_top + 0.45 * length, x_out + sign * 0.2 * width * w,
                                    0.55 * length, width * (0.5 + 0.5 * w), -sign * 0.25 * tilt)
            if bulge is not None:
                bag[bulge[0]] |= bulge[1]
                crease = _ellipse_window(ys, xs, y_top + 0.45 * length, x_out - sign * 0.3 * width,
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
        _paint_ellipse(hu, tissue, ys, xs, (y_v, cx, r_v * 0.85, r_v, 0.0), 90.0, Tissue.SOFT)
    else:
        _paint_ellipse(hu, tissue, ys, xs, (y_v, cx, r_v * 0.85, r_v, 0.0), cortex_hu, Tissue.BONE)
        _paint_ellipse(hu, tissue, ys, xs, (y_v, cx, r_v * 0.85 - 1.8, r_v - 1.8, 0.0), cancellous_hu, Tissue.BONE)
        # Neural arch, canal and spinous process (dorsal = towards the couch).
        y_canal = y_v + 1.45 * r_v
        _paint_ellipse(hu, tissue, ys, xs, (y_canal, cx, 0.95 * r_v, 0.85 * r_v, 0.0), cortex_hu * 0.8, Tissue.BONE)
        _paint_ellipse(hu, tissue, ys, xs, (y_canal, cx, 0.5 * r_v, 0.5 * r_v, 0.0), 30.0, Tissue.SOFT)
        _paint_ellipse(hu, tissue, ys, xs, (y_canal + 1.3 * r_v, cx, 0.7 * r_v, 0.22 * r_v, 0.0), cortex_hu * 0.75,
                       Tissue.BONE, within=body)
        for sign in (-1.0, 1.0):
            _paint_ellipse(hu, tissue, ys, xs, (y_v + 0.3 * r_v, cx + sign * 1.3 * r_v, 0.25 * r_v, 0.8 * r_v,
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
                _paint_ellipse(hu, tissue, ys, xs, (y, x, 1.8 * r, r, sign * (np.pi / 2 - phi)), cortex_hu * 0.85,
                               Tissue.BONE, within=body)
        _paint_ellipse(hu, tissue, ys, xs, (cy - b_top + fat_t + 6.0, cx, 0.05 * a_ref, 0.07 * a_ref, 0.0),
                       cortex_hu * 0.7, Tissue.BONE, within=body)


# --------------------------------------------------------------------------- output


def write_npy_layout(phantom: Phantom, out_dir: str | Path) -> Path:
    """Write a phantom in the per-slice npy layout.

    Writes ``<out_dir>/<patient_id>/img/<i>.npy`` (int16 HU) and ``mask/<i>.npy`` (uint8 labels),
    each of shape (1, rows, cols), for i = 0..n_slices-1.

    Args:
        phantom: the patient to write.
        out_dir: dataset folder; created if missing.

    Returns:
        the patient folder.

    Raises:
        ValueError: if the image and label shapes or dtypes are not as the layout requires.
    """
    if phantom.image.shape != phantom.labels.shape or phantom.image.ndim != 3:
        raise ValueError(
            f"Phantom {phantom.patient_id}: image {phantom.image.shape} and labels {phantom.labels.shape} "
            "must be equal 3D shapes (rows, cols, n_slices)."
        )
    if phantom.image.dtype != np.int16 or phantom.labels.dtype != np.uint8:
        raise ValueError(
            f"Phantom {phantom.patient_id}: expected int16 image and uint8 labels, "
            f"got {phantom.image.dtype} and {phantom.labels.dtype}."
        )
    patient_dir = Path(out_dir) / phantom.patient_id
    img_dir = patient_dir / "img"
    mask_dir = patient_dir / "mask"
    img_dir.mkdir(parents=True, exist_ok=True)
    mask_dir.mkdir(parents=True, exist_ok=True)
    for i in range(phantom.n_slices):
        np.save(img_dir / f"{i}.npy", np.ascontiguousarray(phantom.image[None, :, :, i]))
        np.save(mask_dir / f"{i}.npy", np.ascontiguousarray(phantom.labels[None, :, :, i]))
    logger.debug("Wrote %d slices of %s to %s", phantom.n_slices, phantom.patient_id, patient_dir)
    return patient_dir


_PANEL_KINDS = ("thorax", "past bag end", "last bag slice", "bag middle")


def montage_panels(phantom: Phantom, kinds: Sequence[str] = _PANEL_KINDS) -> list:
    """QA montage panels of characteristic slices of a phantom.

    Args:
        phantom: the patient.
        kinds: which slices, any of "thorax" (middle lung slice), "past bag end" (first slice
            beyond the bag), "last bag slice", "bag middle". Kinds the patient lacks are skipped.

    Returns:
        a list of :class:`vacseg_monai.qa.OverlayPanel`.

    Raises:
        ValueError: for an unknown kind.
    """
    from vacseg_monai.qa import OverlayPanel

    start, stop = phantom.bag_slices
    n = phantom.n_slices
    panels = []
    for kind in kinds:
        if kind == "thorax":
            k = int(phantom.lung_slices[len(phantom.lung_slices) // 2]) if len(phantom.lung_slices) else None
        elif kind == "past bag end":
            k = stop if stop < n else (start - 1 if start > 0 else None)
        elif kind == "last bag slice":
            k = stop - 1 if stop < n else start
        elif kind == "bag middle":
            k = (start + stop) // 2
        else:
            raise ValueError(f"Unknown montage panel kind {kind!r}; expected one of {_PANEL_KINDS}.")
        if k is None:
            continue
        panels.append(OverlayPanel(
            image=phantom.image[:, :, k].copy(),
            labels=phantom.labels[:, :, k].copy(),
            title=f"{phantom.patient_id} slice {k}/{n} ({kind})",
        ))
    return panels


def generate_dataset(
    out_dir: str | Path,
    n_patients: int = 10,
    seed: int = 0,
    size: int = 512,
    progress: bool = True,
    montage: str | Path | None = None,
) -> list[Path]:
    """Generate ``n_patients`` phantoms (seeds ``seed .. seed + n_patients - 1``) in the npy layout.

    Args:
        out_dir: dataset folder; created if missing.
        n_patients: number of patients, default 10.
        seed: base seed, default 0; patient i uses ``seed + i``.
        size: rows and columns per slice, default 512.
        progress: show a tqdm progress bar over patients, default True.
        montage: optional PNG path for a QA montage of characteristic slices across the first
            patients (a thoracic slice with lungs, a slice past the end of the bag, ...); default None.

    Returns:
        the patient folders, in seed order.

    Raises:
        ValueError: if ``n_patients`` < 1 or ``seed`` < 0.
    """
    if n_patients < 1:
        raise ValueError(f"`n_patients` must be >= 1, got {n_patients}.")
    if seed < 0:
        raise ValueError(f"`seed` must be >= 0, got {seed}.")
    from tqdm.auto import tqdm

    folders = []
    panels = []
    for i in tqdm(range(n_patients), desc="phantoms", unit="patient", disable=not progress):
        phantom = generate_phantom(seed + i, size=size)
        folders.append(write_npy_layout(phantom, out_dir))
        if montage is not None and (n_patients == 1 or i < len(_PANEL_KINDS)):
            kinds = _PANEL_KINDS if n_patients == 1 else _PANEL_KINDS[i::min(n_patients, len(_PANEL_KINDS))]
            panels += montage_panels(phantom, kinds)
    if montage is not None:
        from vacseg_monai.qa import OverlayPanel, save_overlay_montage

        plain = [OverlayPanel(p.image, None, None, p.title) for p in panels]
        save_overlay_montage(plain + panels, montage, n_cols=len(panels),
                             suptitle="Synthetic canine CT phantoms: CT (top) and truth labels (bottom)")
    logger.info("Wrote %d phantom patients to %s", len(folders), out_dir)
    return folders
