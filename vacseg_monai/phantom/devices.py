"""What the animal lies on in phantom v2: couches, pads and blankets, vacuum bags.

Labels follow :mod:`vacseg_monai.labels` as a treatment planning system's structures would:

- **Couch**: the couch top, with its carbon-fibre shell, foam core, inner walls, side rails
  and indexing bars. The pedestal below it is background, as a TPS couch model holds the top only.
- **Vacbag**: the vacuum bag: polystyrene beads, the wall film and the valve.
- background: mattresses, foam and gel pads, wedges, head rests, towel rolls and blankets. Not
  every foam is a bag.

Geometry is in mm in the scene frame (rows grow towards the couch); the couch top at the
midline is at ``y_c``. Masks of one slice come from the ``*_slice`` functions; the scene
paints them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from vacseg_monai.labels import label_by_name
from vacseg_monai.phantom.model import Tissue
from vacseg_monai.phantom.shapes import ellipse_window, smoothstep, texture_tile

__all__ = [
    "Couch",
    "CouchDesign",
    "Support",
    "SupportKind",
    "VacuumBag",
    "bag_slice",
    "boundary",
    "couch_planes",
    "cradle",
    "draw_bag",
    "draw_couch",
    "draw_supports",
    "granular_tile",
    "has_bar",
    "indexing_bar",
    "support_slice",
]


class CouchDesign(str, enum.Enum):
    """Couch top designs."""

    FLAT = "flat"  # carbon-fibre shells round a foam core with inner walls
    CURVED = "curved"  # PET/CT-style trough
    RAILS = "rails"  # flat top with side rails, the pedestal below in view


class SupportKind(str, enum.Enum):
    """Background positioning aids."""

    MATTRESS = "mattress"
    GEL_PAD = "gel_pad"
    WEDGE = "wedge"
    HEADREST = "headrest"
    TOWEL_ROLL = "towel_roll"
    BLANKET = "blanket"


#: Supports that lie under the animal and lift it.
SLABS = (SupportKind.MATTRESS, SupportKind.GEL_PAD)


@dataclass
class Couch:
    """A couch top (and optionally its pedestal); lengths in mm."""

    design: CouchDesign
    half_width: float
    thickness: float
    shell_t: float
    shell_hu: float
    core_hu: float
    curve_r: float
    wall_xs: tuple[float, ...]
    rail: tuple[float, float, float] | None
    base: tuple[float, float, float, float] | None
    bars: list[tuple[float, float]]
    bar_height: float
    bar_hu: float


@dataclass
class Support:
    """One background support over slices ``[k0, k1)``."""

    kind: SupportKind
    k0: int
    k1: int
    thickness: float
    half_width: float
    hu: float
    hu_std: float
    side: float = 1.0
    wall_t: float = 0.0
    wall_frac: float = 0.0


@dataclass
class VacuumBag:
    """A vacuum bag over slices ``[k0, k1)``.

    ``t_wall`` and ``wall_frac`` are (left, right); ``flare`` widens the walls towards their
    foot (mm); ``relief`` is (amplitude mm, period down the wall mm, period along the table mm,
    phase) of the bumps of the outer surface; ``gaps``, ``creases`` and ``valve`` are runs of
    slices with an air gap at the body, a wrinkle of film, the valve.
    """

    k0: int
    k1: int
    t_bottom: float
    t_wall: np.ndarray
    wall_frac: np.ndarray
    corner_r: float
    bead_mean: float
    bead_std: float
    film_hu: float
    flare: float = 0.0
    relief: tuple[float, float, float, float] = (0.0, 30.0, 100.0, 0.0)
    gaps: list[tuple[float, float, float, int, float]] = field(default_factory=list)
    creases: list[tuple[int, int, int, float, float, float]] = field(default_factory=list)
    valve: tuple[int, int, int, float, float] | None = None

    def taper(self, k: int, thickness: float) -> float:
        """1 deep inside the bag, falling towards an end of the bag that lies inside the series."""
        inside = min(k - self.k0 + 0.5, self.k1 - 0.5 - k) * thickness
        return float(smoothstep(np.asarray((inside + 8.0) / 30.0)))


# --------------------------------------------------------------------------- couch


def draw_couch(rng: np.random.Generator, series_len: float) -> Couch:
    """Draw a couch design with its dimensions, materials and indexing bars."""
    design = CouchDesign(rng.choice([d.value for d in CouchDesign], p=[0.45, 0.25, 0.3]))
    curved = design == CouchDesign.CURVED
    n_walls = int(rng.integers(0, 4)) if design != CouchDesign.CURVED else 0
    hw = rng.uniform(200.0, 275.0)
    bars = []
    for _ in range(int(rng.choice([0, 1, 2], p=[0.5, 0.35, 0.15]))):
        z0 = rng.uniform(-0.1, 1.0) * series_len
        bars.append((z0, z0 + rng.uniform(12.0, 22.0)))
    base = None
    if design == CouchDesign.RAILS or rng.uniform() < 0.25:
        base = (rng.uniform(30.0, 120.0), rng.uniform(0.35, 0.7) * hw, rng.uniform(3.0, 8.0), rng.uniform(200.0, 900.0))
    return Couch(
        design=design,
        half_width=hw,
        thickness=rng.uniform(15.0, 30.0) if curved else rng.uniform(35.0, 65.0),
        shell_t=rng.uniform(1.5, 3.5),
        shell_hu=rng.uniform(300.0, 800.0),
        core_hu=rng.uniform(-1000.0, -940.0) if curved and rng.uniform() < 0.5 else rng.uniform(-960.0, -860.0),
        curve_r=rng.uniform(500.0, 1200.0) if curved else np.inf,
        wall_xs=tuple(np.sort(rng.uniform(-0.7, 0.7, n_walls)) * hw),
        rail=(rng.uniform(8.0, 15.0), rng.uniform(20.0, 40.0), rng.uniform(1200.0, 2500.0))
        if design == CouchDesign.RAILS else None,
        base=base,
        bars=bars,
        bar_height=rng.uniform(8.0, 16.0),
        bar_hu=rng.uniform(250.0, 900.0),
    )


def _sag(couch: Couch, xs: np.ndarray) -> np.ndarray:
    """How far the top surface rises above its midline at each column (0 for a flat top)."""
    if not np.isfinite(couch.curve_r):
        return np.zeros_like(xs)
    return couch.curve_r - np.sqrt(np.clip(couch.curve_r**2 - xs**2, 0, None))


def couch_planes(couch: Couch, ys: np.ndarray, xs: np.ndarray,
                 y_c: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HU, tissue and label planes of the couch top (label Couch) and pedestal (background).

    Args:
        couch: the design.
        ys: row centres (mm).
        xs: column centres (mm).
        y_c: row position of the top surface at the midline (mm).

    Returns:
        float32 HU (air elsewhere), uint8 tissue and uint8 label planes.
    """
    rows, ax = ys[:, None], np.abs(xs)[None, :]
    top = y_c - _sag(couch, xs)[None, :]
    edge = np.clip(ax / couch.half_width, 0, 1)
    bottom = top + couch.thickness * (1 - 0.25 * edge**4)
    outer = (rows >= top) & (rows <= bottom) & (ax <= couch.half_width)
    t = couch.shell_t
    inner = (rows >= top + t) & (rows <= bottom - t) & (ax <= couch.half_width - t)
    for x in couch.wall_xs:
        inner &= np.abs(xs[None, :] - x) > 0.5 * t
    hu = np.full(outer.shape, -1000.0, np.float32)
    tissue = np.zeros(outer.shape, np.uint8)
    hu[outer], tissue[outer] = couch.shell_hu, Tissue.COUCH_SHELL
    hu[inner], tissue[inner] = couch.core_hu, Tissue.COUCH_CORE
    couch_mask = outer.copy()
    if couch.rail is not None:
        w, h, rail_hu = couch.rail
        rail = (np.abs(ax - couch.half_width - 0.5 * w) <= 0.5 * w) & (rows >= y_c + 3.0) & (rows <= y_c + 3.0 + h)
        hu[rail], tissue[rail] = rail_hu, Tissue.COUCH_RAIL
        couch_mask |= rail
    if couch.base is not None:
        gap, base_hw, base_t, base_hu = couch.base
        y0 = y_c + couch.thickness + gap
        box = (rows >= y0) & (ax <= base_hw)
        hollow = (rows >= y0 + base_t) & (ax <= base_hw - base_t)
        shell = box & ~hollow
        hu[shell], tissue[shell] = base_hu, Tissue.COUCH_BASE
    label = np.where(couch_mask, np.uint8(label_by_name("Couch").value), np.uint8(0)).astype(np.uint8)
    return hu, tissue, label


def has_bar(couch: Couch, z: float) -> bool:
    """Whether an indexing bar lies across the couch at table position ``z`` (mm)."""
    return any(z0 <= z < z1 for z0, z1 in couch.bars)


def indexing_bar(couch: Couch, ys: np.ndarray, xs: np.ndarray, y_c: float) -> np.ndarray:
    """Mask of an indexing bar lying across the couch top, in a slice that holds one."""
    top = (y_c - _sag(couch, xs))[None, :]
    rows = ys[:, None]
    return (rows < top) & (rows >= top - couch.bar_height) & (np.abs(xs)[None, :] <= 0.85 * couch.half_width)


# --------------------------------------------------------------------------- supports


def _run(rng: np.random.Generator, n_slices: int, min_frac: float) -> tuple[int, int]:
    """A random run of slices [k0, k1) covering at least ``min_frac`` of the series."""
    n = int(np.clip(rng.uniform(min_frac, 1.0) * n_slices, 1, n_slices))
    k0 = int(rng.integers(0, n_slices - n + 1))
    return k0, k0 + n


def draw_supports(rng: np.random.Generator, n_slices: int, thickness: float, a_max: float,
                  head_slices: np.ndarray) -> list[Support]:
    """Draw the background supports: slabs under the animal, wedges, towel rolls, blankets, head rests.

    Args:
        rng: the geometry stream.
        n_slices: slices in the series.
        thickness: slice spacing in mm.
        a_max: the animal's largest half-width (mm), which sizes the supports.
        head_slices: slice indices where the head lies (for a head rest).

    Returns:
        the supports, slabs first.
    """
    supports = []
    if rng.uniform() < 0.45:
        k0, k1 = _run(rng, n_slices, 0.5)
        if rng.uniform() < 0.8:  # foam mattress
            supports.append(Support(SupportKind.MATTRESS, k0, k1, thickness=rng.uniform(8.0, 45.0),
                                    half_width=rng.uniform(1.2, 2.5) * a_max, hu=rng.uniform(-950.0, -700.0),
                                    hu_std=rng.uniform(5.0, 30.0)))
        else:
            supports.append(Support(SupportKind.GEL_PAD, k0, k1, thickness=rng.uniform(5.0, 15.0),
                                    half_width=rng.uniform(1.2, 2.5) * a_max, hu=rng.uniform(20.0, 120.0), hu_std=8.0))
    if rng.uniform() < 0.3:
        supports.append(Support(SupportKind.WEDGE, *_run(rng, n_slices, 0.3), thickness=rng.uniform(0.4, 0.9) * a_max,
                                half_width=rng.uniform(0.4, 0.8) * a_max, hu=rng.uniform(-930.0, -750.0),
                                hu_std=rng.uniform(5.0, 25.0), side=float(rng.choice([-1.0, 1.0]))))
    if rng.uniform() < 0.25:
        supports.append(Support(SupportKind.TOWEL_ROLL, *_run(rng, n_slices, 0.3),
                                thickness=rng.uniform(0.15, 0.35) * a_max, half_width=0.0,
                                hu=rng.uniform(-600.0, -250.0), hu_std=rng.uniform(80.0, 160.0),
                                side=float(rng.choice([-1.0, 1.0]))))
    if rng.uniform() < 0.3:
        supports.append(Support(SupportKind.BLANKET, *_run(rng, n_slices, 0.4), thickness=rng.uniform(3.0, 12.0),
                                half_width=0.0, hu=rng.uniform(-650.0, -250.0), hu_std=rng.uniform(80.0, 160.0)))
    if head_slices.size and rng.uniform() < 0.6:
        k0, k1 = int(head_slices[0]), int(head_slices[-1]) + 1
        foam = rng.uniform() < 0.6
        supports.append(Support(SupportKind.HEADREST, k0, k1, thickness=rng.uniform(8.0, 30.0), half_width=0.0,
                                hu=rng.uniform(-880.0, -600.0) if foam else rng.uniform(120.0, 400.0),
                                hu_std=rng.uniform(8.0, 25.0) if foam else 0.0, wall_t=rng.uniform(10.0, 30.0),
                                wall_frac=rng.uniform(0.3, 0.7)))
    return supports


def support_slice(support: Support, body: np.ndarray, ys: np.ndarray, xs: np.ndarray, cx: float,
                  y_base: float) -> np.ndarray:
    """Mask of a support in one slice (before removing what is already occupied).

    Args:
        support: the support.
        body: the animal's mask in this slice (same grid).
        ys: row centres (mm).
        xs: column centres (mm).
        cx: the animal's midline (mm).
        y_base: top of the couch (for slabs) or of the slabs (for the rest), in mm.

    Returns:
        bool mask.
    """
    rows, cols = ys[:, None], xs[None, :]
    spacing = float(ys[1] - ys[0])
    if support.kind in SLABS:
        r = min(0.5 * support.thickness, 10.0)
        dy = np.clip((y_base - support.thickness + r) - ys, 0, r)
        hw = support.half_width - (r - np.sqrt(r**2 - dy**2))
        return (rows >= y_base - support.thickness) & (rows <= y_base) & (np.abs(cols - cx) <= hw[:, None])
    if not body.any():
        return np.zeros(body.shape, bool)
    cols_any = np.flatnonzero(body.any(axis=0))
    edge = xs[cols_any[-1]] if support.side > 0 else xs[cols_any[0]]
    if support.kind == SupportKind.WEDGE:
        h, w = support.thickness, support.half_width
        frac = np.clip((rows - (y_base - h)) / h, 0, 1)
        dist = (cols - edge) * support.side
        return (rows <= y_base) & (rows >= y_base - h) & (dist >= -2.0) & (dist <= w * frac)
    if support.kind == SupportKind.TOWEL_ROLL:
        r = support.thickness
        found = ellipse_window(ys, xs, y_base - r, edge + support.side * r, r, 1.2 * r)
        mask = np.zeros(body.shape, bool)
        if found is not None:
            mask[found[0]] = found[1]
        return mask
    if support.kind == SupportKind.BLANKET:
        return _blanket(body, ys, max(int(round(support.thickness / spacing)), 1))
    rest = cradle(body, ys, xs, y_base, np.full(2, support.wall_t), np.full(2, support.wall_frac))
    if support.hu_std > 0:
        return rest
    # a plastic head rest is a shell of about 3 mm
    return rest & ~ndimage.binary_erosion(rest, iterations=max(int(round(3.0 / spacing)), 1))


def _blanket(body: np.ndarray, ys: np.ndarray, n: int) -> np.ndarray:
    """A layer ``n`` pixels thick draped over the upper half of the body, one pixel off its skin."""
    body_rows = np.flatnonzero(body.any(axis=1))
    body_cols = np.flatnonzero(body.any(axis=0))
    r0, c0 = max(int(body_rows[0]) - n - 2, 0), max(int(body_cols[0]) - n - 2, 0)
    window = (slice(r0, int(body_rows[-1]) + n + 3), slice(c0, int(body_cols[-1]) + n + 3))
    part = body[window]
    layer = ndimage.binary_dilation(part, iterations=n + 1) & ~ndimage.binary_dilation(part, iterations=1)
    out = np.zeros(body.shape, bool)
    out[window] = layer
    y_mid = ys[int(body_rows[int(0.55 * (body_rows.size - 1))])]
    return out & (ys[:, None] <= y_mid)


# --------------------------------------------------------------------------- vacuum bag


def draw_bag(rng: np.random.Generator, n_slices: int, thickness: float, a_max: float) -> VacuumBag:
    """Draw the vacuum bag.

    The bag covers the whole series, or a run from one end, or a run in the middle; its walls
    wrap the sides to independent heights (a flat cushion up to nearly the top of the body).
    """
    coverage = rng.uniform()
    if coverage < 0.3:
        k0, k1 = 0, n_slices
    else:
        n = int(round(rng.uniform(0.35, 0.85) * n_slices))
        k0 = 0 if coverage < 0.55 else n_slices - n if coverage < 0.8 else int(rng.integers(1, n_slices - n))
        k1 = k0 + n
    size = float(np.clip(a_max / 100.0, 0.5, 1.5))
    gaps = [(rng.uniform(k0, k1), rng.uniform(4, 14) / thickness * 3, rng.uniform(2.0, 8.0), int(rng.integers(0, 2)),
             rng.uniform(0.15, 0.85)) for _ in range(int(rng.integers(0, 4)))]
    creases = []
    for _ in range(int(rng.integers(1, 7))):
        c0 = int(rng.integers(k0, k1))
        creases.append((c0, c0 + max(int(rng.uniform(4.0, 30.0) / thickness), 1), int(rng.integers(0, 2)),
                        rng.uniform(0.0, 1.0), rng.uniform(6.0, 25.0) * size, rng.uniform(-0.8, 0.8)))
    valve = None
    if rng.uniform() < 0.6:
        v0 = int(rng.integers(k0, k1))
        valve = (v0, v0 + max(int(rng.uniform(15.0, 35.0) / thickness), 1), int(rng.integers(0, 2)),
                 rng.uniform(0.3, 0.9), rng.uniform(5.0, 9.0))
    return VacuumBag(
        k0=k0, k1=k1, t_bottom=rng.uniform(12.0, 55.0) * size, t_wall=rng.uniform(15.0, 55.0, 2) * size,
        wall_frac=rng.uniform(0.05, 0.9, 2) if rng.uniform() < 0.5 else np.full(2, rng.uniform(0.1, 0.8)),
        corner_r=rng.uniform(8.0, 30.0), bead_mean=rng.uniform(-880.0, -740.0), bead_std=rng.uniform(35.0, 70.0),
        film_hu=rng.uniform(-350.0, -60.0), flare=rng.uniform(0.0, 35.0) * size,
        relief=(rng.uniform(0.0, 2.5), rng.uniform(25.0, 80.0), rng.uniform(60.0, 150.0), rng.uniform(0.0, 2 * np.pi)),
        gaps=gaps, creases=creases, valve=valve,
    )


def granular_tile(rng: np.random.Generator, shape: tuple[int, int], bead_mm: float, spacing: float) -> np.ndarray:
    """Polystyrene-bead texture: blobs of about ``bead_mm`` with voids, values in about [-1.5, 1.5]."""
    tile = texture_tile(rng, shape, 0.35 * bead_mm / spacing)
    return np.tanh(1.6 * tile).astype(np.float32) * np.float32(1.4)


def _row_extents(body: np.ndarray, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: whether the body is present, its leftmost and rightmost column (mm; +-inf where absent)."""
    has = body.any(axis=1)
    first = np.argmax(body, axis=1)
    last = body.shape[1] - 1 - np.argmax(body[:, ::-1], axis=1)
    return has, np.where(has, xs[first], np.inf), np.where(has, xs[last], -np.inf)


def cradle(body: np.ndarray, ys: np.ndarray, xs: np.ndarray, y_base: float, t_wall: np.ndarray,
           wall_frac: np.ndarray, corner_r: float = 10.0, gaps: tuple[np.ndarray, np.ndarray] | None = None,
           flare: float = 0.0, relief: np.ndarray | None = None) -> np.ndarray:
    """A cradle moulded round the body: a floor from the body down to ``y_base`` and walls up its sides.

    Args:
        body: the body mask (the mould).
        ys: row centres (mm).
        xs: column centres (mm).
        y_base: the row (mm) the cradle stands on.
        t_wall: (left, right) wall thickness in mm at the foot of the wall.
        wall_frac: (left, right) wall height as a share of the body height.
        corner_r: radius of the rounded lower corners in mm, default 10.
        gaps: optional (left, right) per-row air gaps (mm) between the cradle and the body.
        flare: how much wider (mm) each wall is at its foot than the mould alone makes it, default 0.
        relief: optional per-row bumps (mm) of the outer surface.

    Returns:
        bool mask, never overlapping the body.
    """
    has, left, right = _row_extents(body, xs)
    mask = np.zeros(body.shape, bool)
    if not has.any():
        return mask
    rows_in = np.flatnonzero(has)
    y_top_body, y_b = ys[rows_in[0]], ys[rows_in[-1]]
    cx = 0.5 * (np.min(left) + np.max(right))
    dy = np.clip(ys - (y_base - corner_r), 0, corner_r)
    rounding = corner_r - np.sqrt(corner_r**2 - dy**2)
    below = ys <= y_base
    cols = xs[None, :]
    for side, sign, edge in ((0, -1.0, left), (1, 1.0, right)):
        y_top = y_b - wall_frac[side] * (y_b - y_top_body)
        s = smoothstep((ys - y_top) / (0.5 * (y_b - y_top) + 1e-6))
        lip = np.sqrt(np.clip((ys - y_top) / (0.2 * t_wall[side] + 1e-6), 0.0, 1.0))  # rounded upper edge
        # In the mirrored coordinate sign * x both walls grow outwards to larger values.
        reach = np.where((ys >= y_top) & has, sign * edge + t_wall[side] * (0.35 + 0.65 * s) * lip, -np.inf)
        reach = np.maximum.accumulate(reach) - rounding
        reach += flare * np.clip((ys - y_top) / (y_base - y_top + 1e-6), 0.0, 1.0)
        if relief is not None:
            reach += relief
        reach = np.where(below, reach, -np.inf)
        gap = gaps[side] if gaps is not None else 0.0
        hull = np.where(has, sign * edge + gap, -np.inf)
        half = (cols - cx) * sign >= 0
        mask |= half & (sign * cols <= reach[:, None]) & (sign * cols > hull[:, None])
    # under the body the two halves meet; between the hull edges of a body row is the body itself
    inside = has[:, None] & (cols >= left[:, None]) & (cols <= right[:, None])
    return mask & ~inside & ~body


def boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it."""
    interior = mask.copy()
    interior[1:, :] &= mask[:-1, :]
    interior[:-1, :] &= mask[1:, :]
    interior[:, 1:] &= mask[:, :-1]
    interior[:, :-1] &= mask[:, 1:]
    return mask & ~interior


def _bag_gaps(bag: VacuumBag, k: int, ys: np.ndarray, y_top: float, y_b: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-row air gaps (left, right) in mm between bag and body in slice ``k``."""
    out = [np.zeros_like(ys), np.zeros_like(ys)]
    for centre, half_len, gap, side, where in bag.gaps:
        w = 1.0 - ((k - centre) / half_len) ** 2
        if w <= 0:
            continue
        y_mid = y_top + where * (y_b - y_top)
        prof = gap * np.sqrt(w) * np.clip(1 - ((ys - y_mid) / (0.3 * (y_b - y_top) + 1e-6)) ** 2, 0, None)
        out[side] = np.maximum(out[side], prof)
    return out[0], out[1]


def bag_slice(bag: VacuumBag, k: int, thickness: float, body: np.ndarray, ys: np.ndarray, xs: np.ndarray,
              y_base: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The bag in slice ``k``: bead-filled body, wall film (incl. wrinkles) and valve masks.

    Args:
        bag: the bag.
        k: slice index (inside ``[bag.k0, bag.k1)``).
        thickness: slice spacing in mm.
        body: the mould: the animal's mask, or its impression where the bag extends past it.
        ys: row centres (mm).
        xs: column centres (mm).
        y_base: the row (mm) the bag lies on.

    Returns:
        (bag, film, valve) bool masks; film and valve lie inside bag.
    """
    taper = bag.taper(k, thickness)
    has = np.flatnonzero(body.any(axis=1))
    if has.size == 0:
        empty = np.zeros(body.shape, bool)
        return empty, empty, empty
    y_top, y_b = ys[has[0]], ys[has[-1]]
    gaps = _bag_gaps(bag, k, ys, y_top, y_b)
    amp, period, period_z, phase = bag.relief  # bumps that drift slowly along the table
    relief = amp * np.sin(2 * np.pi * (ys / period + k * thickness / period_z) + phase)
    mask = cradle(body, ys, xs, y_base, bag.t_wall * (0.55 + 0.45 * taper), bag.wall_frac * (0.45 + 0.55 * taper),
                  bag.corner_r, gaps, bag.flare * taper, relief)
    film = boundary(mask)
    valve = np.zeros(body.shape, bool)
    for c0, c1, side, frac, length, angle in bag.creases:
        if c0 <= k < c1:
            _crease(mask, film, ys, xs, side, y_top + frac * (y_base - y_top), length, angle)
    if bag.valve is not None and bag.valve[0] <= k < bag.valve[1]:
        valve = _valve(mask, ys, xs, bag.valve, y_top, y_base)
        mask |= valve
    return mask, film & mask, valve


def _outer_x(mask: np.ndarray, ys: np.ndarray, xs: np.ndarray, side: int, y: float) -> tuple[int, float] | None:
    """Row index nearest ``y`` and the outer column (mm) of the mask on ``side`` in that row."""
    r = int(np.clip(np.searchsorted(ys, y), 0, ys.size - 1))
    cols = np.flatnonzero(mask[r])
    if cols.size == 0:
        return None
    return r, float(xs[cols[0]] if side == 0 else xs[cols[-1]])


def _crease(mask: np.ndarray, film: np.ndarray, ys: np.ndarray, xs: np.ndarray, side: int, y: float,
            length: float, angle: float) -> None:
    """A wrinkle: a fold of wall film reaching into the beads from the outer surface."""
    found = _outer_x(mask, ys, xs, side, y)
    if found is None:
        return
    r, x = found
    sign = -1.0 if side == 0 else 1.0
    spacing = float(ys[1] - ys[0])
    line = ellipse_window(ys, xs, ys[r], x - sign * 0.45 * length, 0.45 * spacing, 0.5 * length, angle)
    if line is not None:
        film[line[0]] |= line[1] & mask[line[0]]


def _valve(mask: np.ndarray, ys: np.ndarray, xs: np.ndarray, valve: tuple[int, int, int, float, float],
           y_top: float, y_base: float) -> np.ndarray:
    """The valve: a plastic ring with an air core, on the bag's outer surface."""
    _, _, side, frac, radius = valve
    out = np.zeros(mask.shape, bool)
    found = _outer_x(mask, ys, xs, side, y_top + frac * (y_base - y_top))
    if found is None:
        return out
    r, x = found
    sign = -1.0 if side == 0 else 1.0
    disc = ellipse_window(ys, xs, ys[r], x + sign * 0.7 * radius, radius, radius)
    if disc is not None:
        out[disc[0]] = disc[1]
    return out
