"""The scanner of phantom v2: reconstruction field of view, kernel, noise, artefacts and storage.

A :class:`Scanner` is drawn per patient by :func:`draw_scanner`; a :class:`ScannerModel`
precomputes its planes (noise tiles, cupping, rings, the truncation rim) and turns each
painted HU slice into what a scanner stores (:meth:`ScannerModel.apply`):

- partial-volume blur and the kernel (soft, standard, or sharp with edge overshoot);
- beam-hardening cupping (objects darker in their middle) and ring artefacts;
- streaks radiating from metal (microchips, implants);
- correlated noise of 5-60 HU, finer and stronger for sharp kernels;
- the reconstruction circle: the field of view is 205-614 mm across (pixel spacing
  0.4-1.2 mm at 512 pixels), may cut the body (with the bright rim of truncation), and the
  pixels outside it hold the padding value: -1024 (air), -2000 or -3024 HU, as scanners
  store it with a Rescale Intercept of -1024 or 0.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["Kernel", "Scanner", "ScannerModel", "draw_scanner"]

_MIN_HU, _MAX_HU = -1024, 3071
_OBJECT_HU = -400.0


class Kernel(str, enum.Enum):
    """Reconstruction kernels."""

    SOFT = "soft"
    STANDARD = "standard"
    SHARP = "sharp"


@dataclass
class Scanner:
    """Per-patient scanner settings (lengths in mm)."""

    fov_mm: float
    kernel: Kernel
    sigma_px: float
    sharpen: float
    noise_sd: float
    cupping_hu: float
    rings: list[tuple[float, float, float]]
    streak_hu: float
    streak_orders: tuple[int, ...]
    streak_phases: tuple[float, ...]
    rescale_intercept: float
    padding_hu: int
    rim_hu: float


def draw_scanner(rng: np.random.Generator, fov_mm: float, truncated: bool) -> Scanner:
    """Draw kernel, noise, artefacts and storage conventions for a field of view of ``fov_mm``."""
    kernel = Kernel(rng.choice([k.value for k in Kernel], p=[0.3, 0.5, 0.2]))
    sigma, sharpen, noise = {
        Kernel.SOFT: (rng.uniform(0.8, 0.98), 0.0, rng.uniform(5.0, 15.0)),
        Kernel.STANDARD: (rng.uniform(0.55, 0.8), 0.0, rng.uniform(10.0, 28.0)),
        Kernel.SHARP: (rng.uniform(0.5, 0.7), rng.uniform(0.4, 1.2), rng.uniform(25.0, 60.0)),
    }[kernel]
    rings = []
    if rng.uniform() < 0.3:
        for _ in range(int(rng.integers(1, 5))):
            rings.append((rng.uniform(5.0, 0.4 * fov_mm), rng.choice([-1.0, 1.0]) * rng.uniform(8.0, 40.0),
                          rng.uniform(0.4, 1.2)))
    convention = int(rng.choice(3, p=[0.4, 0.35, 0.25]))
    intercept, padding = ((-1024.0, -1024), (-1024.0, -3024), (0.0, -2000))[convention]
    if convention == 0 and rng.uniform() < 0.3:
        intercept = 0.0
    return Scanner(
        fov_mm=fov_mm, kernel=kernel, sigma_px=sigma, sharpen=sharpen, noise_sd=noise,
        cupping_hu=rng.uniform(0.0, 40.0) if rng.uniform() < 0.6 else 0.0, rings=rings,
        streak_hu=rng.uniform(300.0, 900.0), streak_orders=tuple(int(n) for n in rng.integers(3, 10, 3)),
        streak_phases=tuple(float(p) for p in rng.uniform(0, 2 * np.pi, 3)), rescale_intercept=intercept,
        padding_hu=padding, rim_hu=rng.uniform(60.0, 250.0) if truncated else 0.0,
    )


class ScannerModel:
    """A scanner's precomputed planes for one patient on one pixel grid.

    Args:
        scanner: the settings.
        ys: row centres (mm), the image centre at 0.
        xs: column centres (mm).
        centre: (row, column) in mm of the patient's middle, where cupping is strongest.
        radius: the patient's radius in mm (the extent of cupping).
        n_slices: slices in the series (one noise window each).
        trng: the texture stream.
    """

    def __init__(self, scanner: Scanner, ys: np.ndarray, xs: np.ndarray, centre: tuple[float, float],
                 radius: float, n_slices: int, trng: np.random.Generator) -> None:
        self.scanner = scanner
        self.ys, self.xs = ys, xs
        spacing = float(ys[1] - ys[0])
        size = ys.size
        r2 = ys[:, None] ** 2 + xs[None, :] ** 2
        self.circle = r2 <= (0.5 * scanner.fov_mm) ** 2
        w = 0.5 * scanner.sigma_px**2
        self.kernel = np.array([w, 1.0 - 2.0 * w, w], np.float32)
        cup = (ys[:, None] - centre[0]) ** 2 + (xs[None, :] - centre[1]) ** 2
        self.cupping = (-scanner.cupping_hu * np.clip(1.0 - cup / radius**2, 0.0, None)).astype(np.float32)
        rings = np.zeros((size, size), np.float32)
        r = np.sqrt(r2)
        for radius_mm, amp, width_px in scanner.rings:
            rings += (amp * np.exp(-(((r - radius_mm) / (width_px * spacing)) ** 2))).astype(np.float32)
        self.rings = rings
        self.rim = None
        if scanner.rim_hu > 0:
            self.rim = (scanner.rim_hu * np.exp(-(0.5 * scanner.fov_mm - r) / 6.0) * self.circle).astype(np.float32)
        self.pad = size // 2
        self.noise = self._noise_tiles(trng, size + self.pad)
        self.offsets = trng.integers(0, self.pad, (n_slices, 3))

    def _noise_tiles(self, trng: np.random.Generator, n: int) -> np.ndarray:
        """Three noise tiles with the kernel's correlation and the scanner's standard deviation."""
        tiles = trng.standard_normal((3, n, n), dtype=np.float32)
        if self.scanner.kernel == Kernel.SHARP:
            smooth = ndimage.uniform_filter(tiles, size=(1, 3, 3), mode="wrap")
            tiles = tiles - np.float32(0.6) * smooth
        else:
            for axis in (1, 2):
                ndimage.correlate1d(tiles, self.kernel, axis=axis, output=tiles, mode="wrap")
        tiles *= np.float32(self.scanner.noise_sd / max(float(tiles.std()), 1e-6))
        return tiles

    def _blur(self, plane: np.ndarray) -> np.ndarray:
        for axis in (0, 1):
            ndimage.correlate1d(plane, self.kernel, axis=axis, output=plane, mode="nearest")
        return plane

    def _streaks(self, plane: np.ndarray, metal: list[tuple[float, float]]) -> None:
        """Bright and dark rays from each metal object, fading with distance."""
        s = self.scanner
        spacing = float(self.ys[1] - self.ys[0])
        reach = 160.0
        for cy, cx in metal:
            r0 = max(int((cy - reach - self.ys[0]) / spacing), 0)
            r1 = min(int((cy + reach - self.ys[0]) / spacing) + 1, self.ys.size)
            c0 = max(int((cx - reach - self.xs[0]) / spacing), 0)
            c1 = min(int((cx + reach - self.xs[0]) / spacing) + 1, self.xs.size)
            if r0 >= r1 or c0 >= c1:
                continue
            dy = self.ys[r0:r1, None] - cy
            dx = self.xs[None, c0:c1] - cx
            theta = np.arctan2(dy, dx)
            dist = np.hypot(dy, dx)
            rays = sum(np.cos(n * theta + p) for n, p in zip(s.streak_orders, s.streak_phases)) / 3.0
            rays = np.sign(rays) * np.abs(rays) ** 3
            fade = np.exp(-dist / 60.0) * (dist > 2.5)
            plane[r0:r1, c0:c1] += (s.streak_hu * rays * fade).astype(np.float32)

    def static(self, plane: np.ndarray) -> np.ndarray:
        """Blur (and sharpen) a plane that is the same in many slices, once: see :meth:`apply`."""
        out = self._blur(plane.copy())
        if self.scanner.sharpen > 0:
            out += np.float32(self.scanner.sharpen) * (out - self._blur(out.copy()))
        return out

    def apply(self, plane: np.ndarray, k: int, metal: list[tuple[float, float]], out: np.ndarray,
              crop: tuple[slice, slice], static: np.ndarray) -> None:
        """Turn painted slice ``k`` (float32 HU, modified in place) into stored HU in ``out`` (int16).

        Only ``crop`` is blurred here; outside it the slice equals a static plane (the couch),
        whose blurred form :meth:`static` made once.

        Args:
            plane: the painted slice.
            k: slice index (selects the noise window).
            metal: (row, column) mm centres of metal in the slice.
            out: int16 destination, same shape.
            crop: the region that differs from the static plane.
            static: the blurred static plane.
        """
        s = self.scanner
        obj = plane > _OBJECT_HU
        painted = self._blur(plane[crop].copy())
        if s.sharpen > 0:
            painted += np.float32(s.sharpen) * (painted - self._blur(painted.copy()))
        plane[...] = static
        plane[crop] = painted
        if s.cupping_hu > 0:
            plane += self.cupping * obj
        if self.rim is not None:
            plane += self.rim * obj
        if metal:
            self._streaks(plane, metal)
        plane += self.rings
        n = plane.shape[0]
        o = self.offsets[k]
        plane += self.noise[int(o[0]) % 3, o[1]:o[1] + n, o[2]:o[2] + n]
        np.rint(plane, out=plane)
        np.clip(plane, _MIN_HU, _MAX_HU, out=plane)
        out[...] = plane
        out[~self.circle] = s.padding_hu
