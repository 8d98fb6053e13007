"""Phantom generator version 2: a world as varied as real planning CT.

One seed draws a :class:`Scene`: the animal (:mod:`~vacseg_monai.phantom.anatomy`), what it
lies on (:mod:`~vacseg_monai.phantom.devices`) and the scanner
(:mod:`~vacseg_monai.phantom.scanner`). :func:`generate_phantom_v2` then paints it slice by
slice: the couch, the slabs under the animal, the vacuum bag (or a head rest), wedges,
towels and blankets, the animal, then the scanner's blur, artefacts, noise and padding.

The painted world is truth: ``tissues`` holds the material of each pixel before the
scanner, ``labels`` the structures (Vacbag = beads, film and valve; Couch = the couch top;
Body = the animal with its lungs and gas; all else background).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from vacseg_monai.labels import BACKGROUND, label_by_name
from vacseg_monai.phantom import devices
from vacseg_monai.phantom.anatomy import Animal, BodyPatch, Recumbency, draw_animal, paint_animal
from vacseg_monai.phantom.devices import Couch, Support, SupportKind, VacuumBag
from vacseg_monai.phantom.model import Phantom, Tissue, phantom_patient_id
from vacseg_monai.phantom.scanner import Scanner, ScannerModel, draw_scanner
from vacseg_monai.phantom.shapes import smooth_random, texture_tile

__all__ = ["BAG_FREE_LAST_DIGITS", "Scene", "draw_scene", "generate_phantom_v2"]

_VACBAG = label_by_name("Vacbag").value
_COUCH = label_by_name("Couch").value
_BODY = label_by_name("Body").value
_REFERENCE_SIZE = 512
_THICKNESSES = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 3.75, 5.0)
_THICKNESS_P = (0.08, 0.07, 0.1, 0.25, 0.15, 0.2, 0.05, 0.1)
_VALVE_HU = 250.0
#: Patients whose seed ends in one of these digits have no vacuum bag: 30 % of any ten consecutive seeds.
BAG_FREE_LAST_DIGITS = (2, 5, 8)


@dataclass
class Scene:
    """Everything one seed draws, in mm with the image centre at (0, 0) and rows towards the couch."""

    n_slices: int
    thickness: float
    animal: Animal
    couch: Couch
    supports: list[Support]
    bag: VacuumBag | None
    scanner: Scanner
    y_c: float
    cx: np.ndarray
    lift: np.ndarray
    slab_t: np.ndarray
    spacing_512: float
    truncated: bool

    def active(self, kind: SupportKind, k: int) -> list[Support]:
        """Supports of ``kind`` present in slice ``k``."""
        return [s for s in self.supports if s.kind == kind and s.k0 <= k < s.k1]

    def in_bag(self, k: int) -> bool:
        """Whether slice ``k`` lies within the vacuum bag."""
        return self.bag is not None and self.bag.k0 <= k < self.bag.k1


def _lift(n: int, thickness: float, supports: list[Support], bag: VacuumBag | None) -> tuple[np.ndarray, np.ndarray]:
    """Per slice: slab thickness under the animal, and total lift of its lowest point above the couch."""
    slab = np.zeros(n)
    rest = np.zeros(n)
    for s in supports:
        if s.kind in devices.SLABS:
            slab[s.k0:s.k1] = np.maximum(slab[s.k0:s.k1], s.thickness)
        elif s.kind == SupportKind.HEADREST:
            rest[s.k0:s.k1] = s.thickness
    under = np.full(n, 1.0)
    if bag is not None:
        for k in range(bag.k0, bag.k1):
            under[k] = bag.t_bottom * (0.3 + 0.7 * bag.taper(k, thickness))
            rest[k] = 0.0
    lift = ndimage.gaussian_filter1d(np.maximum(under, rest) + 1.0, max(8.0 / thickness, 1.0), mode="nearest")
    return slab, lift + slab


def draw_scene(rng: np.random.Generator, with_bag: bool = True) -> Scene:
    """Draw a patient, its devices, its placement in the field of view and the scanner.

    Args:
        rng: the geometry stream.
        with_bag: whether the patient lies in a vacuum bag (default True).

    Returns:
        the :class:`Scene`.
    """
    n = int(rng.integers(60, 141))
    thickness = float(rng.choice(_THICKNESSES, p=_THICKNESS_P))
    animal = draw_animal(rng, n, thickness)
    couch = devices.draw_couch(rng, n * thickness)
    head = np.flatnonzero((animal.u < 0.0) & animal.has_body)
    supports = devices.draw_supports(rng, n, thickness, animal.a_max, head)
    bag = devices.draw_bag(rng, n, thickness, animal.a_max) if with_bag else None
    slab_t, lift = _lift(n, thickness, supports, bag)
    hh, hw = animal.half_extent()
    wall = float(np.max(bag.t_wall)) if bag is not None else 0.0
    y_c = float(np.mean(lift)) + hh + rng.uniform(-30.0, 45.0)
    cx0 = float(np.clip(rng.normal(0.0, 30.0), -90.0, 90.0))
    cx = cx0 + smooth_random(rng, np.arange(n) * thickness, 6.0, 250)
    top = y_c - float(np.max(lift)) - 2 * hh
    r_body = float(np.hypot(max(abs(top), abs(y_c - float(np.min(lift)))), abs(cx0) + hw))
    r_need = float(np.hypot(max(abs(top - 5.0), abs(y_c)), abs(cx0) + hw + wall + 5.0))
    if rng.uniform() < 0.15:  # a field of view that cuts the body
        fov = float(np.clip(2 * r_body * rng.uniform(0.7, 0.88), 205.0, 614.0))
    else:
        fov = float(np.clip(max(2 * r_need * 1.03, rng.uniform(250.0, 500.0)), 205.0, 614.0))
    truncated = fov < 2 * r_need
    fov = round(fov / _REFERENCE_SIZE, 4) * _REFERENCE_SIZE
    return Scene(
        n_slices=n, thickness=thickness, animal=animal, couch=couch, supports=supports, bag=bag,
        scanner=draw_scanner(rng, fov, truncated), y_c=y_c, cx=cx, lift=lift, slab_t=slab_t,
        spacing_512=fov / _REFERENCE_SIZE, truncated=truncated,
    )


@dataclass
class _Canvas:
    """Per-patient render state: grids, crop, device textures and the static couch planes.

    ``couch[bar]`` holds the HU, tissue and label planes of the couch top without (False) or
    with (True) an indexing bar, and the HU plane as the scanner blurs it.
    """

    ys: np.ndarray
    xs: np.ndarray
    couch: dict[bool, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]
    crop: tuple[slice, slice]
    textures: dict[str, np.ndarray]
    offsets: np.ndarray
    patch: BodyPatch
    model: ScannerModel

    @property
    def ysc(self) -> np.ndarray:
        """Row centres of the crop."""
        return self.ys[self.crop[0]]

    @property
    def xsc(self) -> np.ndarray:
        """Column centres of the crop."""
        return self.xs[self.crop[1]]

    def texture(self, name: str, k: int) -> np.ndarray:
        """The crop-sized window of texture ``name`` for slice ``k``."""
        r, c = (int(v) for v in self.offsets[k])
        n_r = self.crop[0].stop - self.crop[0].start
        n_c = self.crop[1].stop - self.crop[1].start
        return self.textures[name][r:r + n_r, c:c + n_c]


def _canvas(scene: Scene, size: int, trng: np.random.Generator) -> _Canvas:
    """Grids, couch planes, the crop round the patient and its devices, textures and scanner planes."""
    spacing = scene.spacing_512 * _REFERENCE_SIZE / size
    idx = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    ys, xs = idx * spacing, idx * spacing
    hh, hw = scene.animal.half_extent()
    reach = hw + (float(np.max(scene.bag.t_wall)) if scene.bag is not None else 0.0) + 90.0
    r0 = int(np.searchsorted(ys, scene.y_c - float(np.max(scene.lift)) - 2 * hh - 30.0))
    r1 = int(np.searchsorted(ys, scene.y_c + 2.0)) + 1
    c0 = int(np.searchsorted(xs, float(np.min(scene.cx)) - reach))
    c1 = int(np.searchsorted(xs, float(np.max(scene.cx)) + reach)) + 1
    r0, r1, c0, c1 = max(r0, 0), min(max(r1, r0 + 2), size), max(c0, 0), min(c1, size)
    r0 = min(r0, r1 - 2)
    shape = (r1 - r0 + 32, c1 - c0 + 32)
    textures = {
        "beads": devices.granular_tile(trng, shape, trng.uniform(1.5, 3.5), spacing),
        "foam": texture_tile(trng, shape, 2.5 / spacing),
        "fabric": texture_tile(trng, shape, 0.5 / spacing),
        "drift": texture_tile(trng, shape, 12.0 / spacing),
    }
    centre = (scene.y_c - float(np.mean(scene.lift)) - hh, float(np.mean(scene.cx)))
    model = ScannerModel(scene.scanner, ys, xs, centre, max(hh, hw) * 1.3, scene.n_slices, trng)
    return _Canvas(
        ys=ys, xs=xs, couch=_couch_planes(scene.couch, ys, xs, scene.y_c, model),
        crop=(slice(r0, r1), slice(c0, c1)), textures=textures, offsets=trng.integers(0, 32, (scene.n_slices, 2)),
        patch=BodyPatch.for_animal(scene.animal, spacing, trng), model=model,
    )


def _couch_planes(couch: Couch, ys: np.ndarray, xs: np.ndarray, y_c: float,
                  model: ScannerModel) -> dict[bool, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Couch planes without and with an indexing bar (HU, tissue, label, blurred HU)."""
    hu, tissue, label = devices.couch_planes(couch, ys, xs, y_c)
    planes = {False: (hu, tissue, label, model.static(hu))}
    if couch.bars:
        hu, tissue, label = hu.copy(), tissue.copy(), label.copy()
        bar = devices.indexing_bar(couch, ys, xs, y_c) & (tissue != Tissue.COUCH_SHELL)
        _paint(hu, tissue, label, bar, couch.bar_hu, Tissue.COUCH_SHELL, _COUCH)
        planes[True] = (hu, tissue, label, model.static(hu))
    return planes


def _place_patch(scene: Scene, canvas: _Canvas, k: int, y_bottom: float) -> tuple[np.ndarray, int, int] | None:
    """Where the patch of slice ``k`` goes: its (flipped) mask and the crop row/col of its corner."""
    patch = canvas.patch
    mask = patch.mask[::-1] if scene.animal.recumbency == Recumbency.STERNAL else patch.mask
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    ysc, xsc = canvas.ysc, canvas.xsc
    spacing = float(ysc[1] - ysc[0])
    target = int(round((y_bottom - ysc[0]) / spacing))
    col = int(round((scene.cx[k] - xsc[0]) / spacing))
    return mask, target - int(rows[-1]), col - (mask.shape[1] - 1) // 2


def _paste(dst: np.ndarray, src: np.ndarray, where: np.ndarray, r0: int, c0: int) -> None:
    """``dst[r0:, c0:][where] = src[where]``, clipped to ``dst``."""
    h, w = src.shape
    a0, b0 = max(r0, 0), max(c0, 0)
    a1, b1 = min(r0 + h, dst.shape[0]), min(c0 + w, dst.shape[1])
    if a0 >= a1 or b0 >= b1:
        return
    np.copyto(dst[a0:a1, b0:b1], src[a0 - r0:a1 - r0, b0 - c0:b1 - c0], where=where[a0 - r0:a1 - r0, b0 - c0:b1 - c0])


def _body_slice(scene: Scene, canvas: _Canvas, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list]:
    """Paint the animal of slice ``k``; returns crop-sized HU, tissue, mask and metal centres (scene mm)."""
    shape = (canvas.crop[0].stop - canvas.crop[0].start, canvas.crop[1].stop - canvas.crop[1].start)
    hu = np.full(shape, -1000.0, np.float32)
    tissue = np.zeros(shape, np.uint8)
    mask = np.zeros(shape, bool)
    metal = paint_animal(scene.animal, k, canvas.patch)
    placed = _place_patch(scene, canvas, k, scene.y_c - scene.lift[k])
    if placed is None:
        return hu, tissue, mask, []
    pmask, r0, c0 = placed
    flip = scene.animal.recumbency == Recumbency.STERNAL
    patch = canvas.patch
    _paste(hu, patch.hu[::-1] if flip else patch.hu, pmask, r0, c0)
    _paste(tissue, patch.tissue[::-1] if flip else patch.tissue, pmask, r0, c0)
    _paste(mask, pmask, pmask, r0, c0)
    spacing = float(patch.ys[1] - patch.ys[0])
    centres = []
    for y, x in metal:
        row = (patch.ys.size - 1 - (y - patch.ys[0]) / spacing) if flip else (y - patch.ys[0]) / spacing
        col = (x - patch.xs[0]) / spacing
        centres.append((float(canvas.ysc[0] + (row + r0) * spacing), float(canvas.xsc[0] + (col + c0) * spacing)))
    return hu, tissue, mask, centres


def _mould(scene: Scene, canvas: _Canvas, k: int) -> np.ndarray:
    """The body's impression for the bag in slice ``k``: the nearest slice whose painted animal is not empty."""
    present = np.flatnonzero(scene.animal.has_body)
    for nearest in present[np.argsort(np.abs(present - k), kind="stable")][:12]:
        mask = _body_slice(scene, canvas, int(nearest))[2]
        if mask.any():
            return mask
    return np.zeros((canvas.ysc.size, canvas.xsc.size), bool)


def _paint(hu: np.ndarray, tissue: np.ndarray, label: np.ndarray, mask: np.ndarray, value: float | np.ndarray,
           cls: Tissue, lab: int) -> None:
    """Set HU, tissue and label under ``mask``."""
    np.copyto(hu, np.asarray(value, np.float32), where=mask, casting="unsafe")
    np.copyto(tissue, np.uint8(cls), where=mask)
    np.copyto(label, np.uint8(lab), where=mask)


def _paint_bag(scene: Scene, canvas: _Canvas, k: int, planes: tuple, body: np.ndarray, y_base: float) -> None:
    """Beads, wall film and valve of the vacuum bag in slice ``k``."""
    hu, tissue, label = planes
    bag = scene.bag
    mould = body if body.any() else _mould(scene, canvas, k)
    mask, film, valve = devices.bag_slice(bag, k, scene.thickness, mould, canvas.ysc, canvas.xsc, y_base)
    free = (tissue == Tissue.AIR) & ~body
    beads = canvas.texture("beads", k) * np.float32(bag.bead_std) + np.float32(bag.bead_mean)
    beads += canvas.texture("drift", k) * np.float32(15.0)
    _paint(hu, tissue, label, mask & free, np.clip(beads, -990.0, -650.0), Tissue.BAG, _VACBAG)
    _paint(hu, tissue, label, film & free, bag.film_hu, Tissue.BAG_SKIN, _VACBAG)
    _paint(hu, tissue, label, valve & free, _VALVE_HU, Tissue.BAG_VALVE, _VACBAG)


def _paint_supports(scene: Scene, canvas: _Canvas, k: int, planes: tuple, body: np.ndarray,
                    y_base: float) -> None:
    """Head rests (where there is no bag), wedges, towel rolls and blankets: background."""
    hu, tissue, label = planes
    kinds = [SupportKind.WEDGE, SupportKind.TOWEL_ROLL, SupportKind.BLANKET]
    if not scene.in_bag(k):
        kinds.insert(0, SupportKind.HEADREST)
    for kind in kinds:
        for support in scene.active(kind, k):
            mask = devices.support_slice(support, body, canvas.ysc, canvas.xsc, float(scene.cx[k]), y_base)
            mask &= (tissue == Tissue.AIR) & ~body
            fabric = kind in (SupportKind.TOWEL_ROLL, SupportKind.BLANKET)
            tex = canvas.texture("fabric" if fabric else "foam", k)
            cls = Tissue.FABRIC if fabric else Tissue.PAD
            _paint(hu, tissue, label, mask, tex * np.float32(support.hu_std) + np.float32(support.hu), cls,
                   BACKGROUND)


def _render_slice(scene: Scene, canvas: _Canvas, k: int, planes: tuple) -> tuple[list, np.ndarray]:
    """Paint slice ``k`` into full-size (HU, tissue, label) planes.

    Returns:
        the metal centres (scene mm) and the blurred static couch plane of the slice.
    """
    couch = canvas.couch[devices.has_bar(scene.couch, k * scene.thickness)]
    for dst, src in zip(planes, couch[:3]):
        dst[...] = src
    hu, tissue, label = (plane[canvas.crop] for plane in planes)
    body_hu, body_tissue, body, metal = _body_slice(scene, canvas, k)
    ysc, xsc = canvas.ysc, canvas.xsc
    for slab in scene.active(SupportKind.MATTRESS, k) + scene.active(SupportKind.GEL_PAD, k):
        mask = devices.support_slice(slab, body, ysc, xsc, float(scene.cx[k]), scene.y_c)
        mask &= (label == BACKGROUND) & (tissue == Tissue.AIR) & ~body
        _paint(hu, tissue, label, mask, canvas.texture("foam", k) * np.float32(slab.hu_std) + np.float32(slab.hu),
               Tissue.PAD, BACKGROUND)
    y_base = scene.y_c - float(scene.slab_t[k])
    if scene.in_bag(k):
        _paint_bag(scene, canvas, k, (hu, tissue, label), body, y_base)
    _paint_supports(scene, canvas, k, (hu, tissue, label), body, y_base)
    np.copyto(hu, body_hu, where=body)
    np.copyto(tissue, body_tissue, where=body)
    np.copyto(label, np.uint8(_BODY), where=body)
    return metal, couch[3]


def generate_phantom_v2(seed: int, *, size: int = 512) -> Phantom:
    """Generate one synthetic planning CT patient (generator version 2).

    Args:
        seed: non-negative integer; the same seed gives byte-identical output.
        size: rows and columns of each slice (default 512); smaller sizes keep the field of
            view (the pixel spacing scales by ``512 / size``) and the anatomy.

    Returns:
        the :class:`~vacseg_monai.phantom.model.Phantom`; patients whose seed ends in 2, 5 or 8
        (:data:`BAG_FREE_LAST_DIGITS`) have no vacuum bag.
    """
    geom_seq, tex_seq = np.random.SeedSequence([2, int(seed)]).spawn(2)
    scene = draw_scene(np.random.default_rng(geom_seq), with_bag=int(seed) % 10 not in BAG_FREE_LAST_DIGITS)
    canvas = _canvas(scene, size, np.random.default_rng(tex_seq))
    n = scene.n_slices
    image = np.empty((n, size, size), np.int16)
    tissue_vol = np.empty((n, size, size), np.uint8)
    label_vol = np.empty((n, size, size), np.uint8)
    hu = np.empty((size, size), np.float32)
    outside = ~canvas.model.circle
    for k in range(n):
        metal, static = _render_slice(scene, canvas, k, (hu, tissue_vol[k], label_vol[k]))
        canvas.model.apply(hu, k, metal, image[k], canvas.crop, static)
        label_vol[k][outside] = BACKGROUND
        tissue_vol[k][outside] = Tissue.AIR
    return _phantom(scene, int(seed), image, label_vol, tissue_vol, size)


def scene_circle(size: int, margin_px: float = 0.0) -> np.ndarray:
    """Pixels of a ``size`` x ``size`` slice inside the reconstruction circle shrunk by ``margin_px``."""
    idx = np.arange(size) - (size - 1) / 2.0
    return (idx[:, None] ** 2 + idx[None, :] ** 2) <= (size / 2.0 - margin_px) ** 2


def _phantom(scene: Scene, seed: int, image: np.ndarray, labels: np.ndarray, tissues: np.ndarray,
             size: int) -> Phantom:
    """Wrap the volumes (slice-major) and the scene's details as a :class:`Phantom`."""
    animal, scanner = scene.animal, scene.scanner
    with_bag = np.flatnonzero((labels == _VACBAG).any(axis=(1, 2)))
    bag_slices = (int(with_bag[0]), int(with_bag[-1]) + 1) if with_bag.size else (0, 0)
    lung_counts = (tissues == Tissue.LUNG).sum(axis=(1, 2))
    rim = ~scene_circle(size, 1.5)
    spacing = scene.spacing_512 * _REFERENCE_SIZE / size
    return Phantom(
        patient_id=phantom_patient_id(seed), seed=seed,
        image=np.moveaxis(image, 0, -1), labels=np.moveaxis(labels, 0, -1), tissues=np.moveaxis(tissues, 0, -1),
        pixel_spacing=(float(spacing), float(spacing)), slice_thickness_mm=scene.thickness, bag_slices=bag_slices,
        lung_slices=np.flatnonzero(lung_counts > 0.01 * size * size), patient_name=f"Phantom^{animal.name}",
        species_description=animal.species.value, breed_description=animal.breed, sex=animal.sex,
        neutered=animal.neutered, weight_kg=animal.weight_kg, rescale_intercept=scanner.rescale_intercept,
        padding_hu=scanner.padding_hu,
        extra={
            "version": 2, "cranial_first": animal.cranial_first, "region": animal.region.value,
            "recumbency": animal.recumbency.value, "couch": scene.couch.design.value,
            "supports": sorted({s.kind.value for s in scene.supports}), "bag": scene.bag is not None,
            "fov_mm": scanner.fov_mm, "truncated": bool((labels[:, rim] == _BODY).any()),
            "kernel": scanner.kernel.value, "noise_sd_hu": scanner.noise_sd, "cupping_hu": scanner.cupping_hu,
            "rings": len(scanner.rings), "metal": bool(np.any(tissues == Tissue.METAL)),
            "contrast": animal.contrast_hu is not None, "scale": 1.0,
        },
    )
