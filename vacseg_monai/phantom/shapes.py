"""Geometric and texture primitives shared by the phantom generators.

Lengths are in mm on pixel-centre grids ``ys`` (rows, growing towards the couch)
and ``xs`` (columns); planes are float32 HU and uint8 class maps.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

__all__ = [
    "ellipse_window",
    "fill",
    "halfwidth",
    "interp_profile",
    "paint_ellipse",
    "row_mask",
    "smooth_random",
    "smoothstep",
    "texture_tile",
]


def smooth_random(rng: np.random.Generator, z: np.ndarray, amplitude: float, period_mm: float) -> np.ndarray:
    """A smooth random function of slice position: two sinusoids with random phase."""
    out = np.zeros_like(z)
    for k in (1.0, 2.3):
        phase = rng.uniform(0, 2 * np.pi)
        weight = rng.uniform(0.3, 1.0)
        out += weight * np.sin(2 * np.pi * z * k / period_mm + phase)
    return amplitude * out / 2.0


def halfwidth(
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


def row_mask(xs: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """2D mask of the pixels between ``left`` and ``right`` (per row, in mm)."""
    return (xs[None, :] >= left[:, None]) & (xs[None, :] <= right[:, None])


def ellipse_window(
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


def paint_ellipse(
    hu: np.ndarray,
    tissue: np.ndarray,
    ys: np.ndarray,
    xs: np.ndarray,
    geometry: tuple[float, float, float, float, float],
    value: float,
    tissue_class: int,
    within: np.ndarray | None = None,
) -> None:
    """Set ``value``/``tissue_class`` inside an ellipse (cy, cx, ry, rx, angle), optionally only within a mask."""
    found = ellipse_window(ys, xs, *geometry)
    if found is None:
        return
    window, mask = found
    if within is not None:
        mask = mask & within[window]
    np.copyto(hu[window], np.float32(value), where=mask)
    np.copyto(tissue[window], np.uint8(tissue_class), where=mask)


def texture_tile(rng: np.random.Generator, shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    """Gaussian-filtered white noise with unit standard deviation (float32)."""
    noise = rng.standard_normal(shape, dtype=np.float32)
    if sigma_px > 0.3:
        noise = ndimage.gaussian_filter(noise, sigma_px, mode="wrap")
    noise -= noise.mean()
    noise /= max(float(noise.std()), 1e-6)
    return noise


def fill(dst: np.ndarray, mask: np.ndarray, value: float | np.ndarray) -> None:
    """``dst[mask] = value`` (value scalar or full-size array), without fancy indexing."""
    np.copyto(dst, np.asarray(value, dtype=dst.dtype) if np.ndim(value) == 0 else value, where=mask, casting="unsafe")


def smoothstep(x: np.ndarray) -> np.ndarray:
    """Cubic step from 0 (x <= 0) to 1 (x >= 1) with zero slope at both ends."""
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def interp_profile(rng: np.random.Generator, u: np.ndarray, knots: Sequence[float], values: Sequence[float],
                    jitter: float) -> np.ndarray:
    """Piecewise-linear profile through ``values`` at ``knots``, each value jittered by up to ``jitter``."""
    vals = np.asarray(values, dtype=float) * (1.0 + rng.uniform(-jitter, jitter, len(values)))
    return np.interp(u, np.asarray(knots, dtype=float), vals)
