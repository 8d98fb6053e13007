"""Post-processing of the bundle's inference workflow: logits -> label map on the CT grid -> cleaned label map.

Two steps, declared as ``resample_argmax`` and ``clean_up`` in ``configs/inference.json``:

- :class:`ResampleArgmaxd` (:func:`resample_argmax`): the low-resolution logits are
  resized back to the CT grid in-plane (bilinear) and the argmax taken, without
  keeping full-resolution logits for the whole volume;
- :class:`CleanUpLabelsd` (:func:`clean_up_labels`): connected-component clean-up
  per label (the body's large parts, the largest couch, no small bag fragments, body holes filled).
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from scipy import ndimage

from vacseg_monai.labels import BACKGROUND, LABELS, Label

__all__ = [
    "DEFAULT_MIN_BODY_SHARE",
    "DEFAULT_MIN_VACBAG_VOLUME_MM3",
    "CleanUpLabelsd",
    "ResampleArgmaxd",
    "ScoreQualityd",
    "clean_up_labels",
    "resample_argmax",
]

logger = logging.getLogger(__name__)

#: Vacbag components smaller than this (mm^3, i.e. 1 ml) are dropped by the clean-up.
DEFAULT_MIN_VACBAG_VOLUME_MM3 = 1000.0

#: Body components holding less than this share of the largest one's voxels are dropped by the clean-up.
#: A patient is not always one piece in a scan: two hind limbs lie apart in a limb scan (each half of the
#: body), a tail or a limb beside the pelvis holds a fifth of it; stray pieces the network calls body
#: (a towel roll, a fold of blanket) hold a few per cent.
DEFAULT_MIN_BODY_SHARE = 0.1

# 26-connectivity in 3D: diagonal neighbours join thin structures (couch shells) across slices.
_CONNECTIVITY_3D = np.ones((3, 3, 3), dtype=bool)
_CONNECTIVITY_3D.setflags(write=False)


def _source_index(n_in: int, n_out: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Source rows ``i0, i1`` and weights ``w0, w1`` of a bilinear resize ``n_in -> n_out``.

    The same pixel-centre mapping as ``F.interpolate(..., align_corners=False)``:
    ``src = (dst + 0.5) * n_in / n_out - 0.5``, clamped at 0, with ``i1 = i0 + 1``
    except on the last source row.
    """
    dst = torch.arange(n_out, dtype=torch.float32, device=device)
    src = ((dst + 0.5) * (n_in / n_out) - 0.5).clamp_min(0.0)
    i0 = src.floor().long().clamp_max(n_in - 1)
    i1 = torch.where(i0 < n_in - 1, i0 + 1, i0)
    w1 = src - i0.float()
    return i0, i1, 1.0 - w1, w1


def _resize_argmax_dense(chunk: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Bilinear resize of ``(slices, C, h, w)`` logits to ``(rows, cols)``, then the argmax as uint8."""
    chunk = F.interpolate(chunk, size=(rows, cols), mode="bilinear", align_corners=False)
    # max(dim).indices is the argmax (first maximum), several times faster than torch.argmax over dim 1 on CPU.
    return chunk.max(dim=1).indices.to(torch.uint8)


def resample_argmax(
    logits: torch.Tensor,
    spatial_shape: Sequence[int],
    chunk_slices: int = 16,
    max_mixed_fraction: float = 0.25,
    num_threads: int | None = 1,
) -> torch.Tensor:
    """Resize logits ``(C, h, w, n)`` in-plane to ``spatial_shape[:2]`` (bilinear) and take the argmax.

    Bilinear interpolation is a convex combination of the four source pixels
    around an output pixel, so where those four share their argmax the output's
    argmax is that label too. Only the other output pixels, those near a label
    boundary (about 2 % of a 512 x 512 CT), are interpolated; the rest copy the
    low-resolution argmax. The result is exactly that of resizing every channel
    with ``F.interpolate(mode="bilinear", align_corners=False)`` and taking the
    argmax (first maximum), at about half the cost. A chunk in which more than
    ``max_mixed_fraction`` of the pixels are near a boundary (noise, not anatomy)
    is resized densely instead.

    The work goes ``chunk_slices`` slices at a time, so full-resolution logits never
    exist for the whole volume. ``align_corners=False`` matches the pixel-centre
    geometry of the ``area`` resize used by the preprocessing, so the result lies on
    the input grid. Softmax is not applied: it does not change the argmax.

    Args:
        logits: network output for one volume, channel first.
        spatial_shape: (rows, cols, n_slices) of the CT grid; n must equal ``logits.shape[3]``.
        chunk_slices: slices resized at once (default 16).
        max_mixed_fraction: fraction of boundary pixels in a chunk above which it is resized densely
            (default 0.25).
        num_threads: torch CPU threads for this step, restored afterwards (default 1; None keeps the
            process's setting). Its operations are small and memory-bound: on a machine whose other
            cores are busy (the node receiving the next series, other processes), two threads waiting
            on each other took 0.7-1.4 s of CPU for a 61-slice 512 x 512 volume where one thread took
            0.22-0.29 s.

    Returns:
        uint8 label map ``(1, rows, cols, n)`` on ``logits``' device: a view of slice-major
        ``(n, rows, cols)`` memory, so that each slice is contiguous.

    Raises:
        ValueError: for a logits tensor that is not 4D, a slice count mismatch, ``chunk_slices < 1``,
            ``max_mixed_fraction`` outside [0, 1] or ``num_threads < 1``.
    """
    if num_threads is not None and num_threads < 1:
        raise ValueError(f"`num_threads` must be None or >= 1, got {num_threads}.")
    if num_threads is None or logits.device.type != "cpu":
        return _resample_argmax(logits, spatial_shape, chunk_slices, max_mixed_fraction)
    before = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        return _resample_argmax(logits, spatial_shape, chunk_slices, max_mixed_fraction)
    finally:
        torch.set_num_threads(before)


def _resample_argmax(
    logits: torch.Tensor, spatial_shape: Sequence[int], chunk_slices: int, max_mixed_fraction: float
) -> torch.Tensor:
    """:func:`resample_argmax` with the process's torch threads."""
    if logits.ndim != 4:
        raise ValueError(f"`logits` must be (C, h, w, n_slices), got shape {tuple(logits.shape)}.")
    rows, cols, n = (int(s) for s in spatial_shape)
    if logits.shape[3] != n:
        raise ValueError(f"Logits have {logits.shape[3]} slices but the CT grid has {n}.")
    if chunk_slices < 1:
        raise ValueError(f"`chunk_slices` must be >= 1, got {chunk_slices}.")
    if not 0.0 <= max_mixed_fraction <= 1.0:
        raise ValueError(f"`max_mixed_fraction` must be in [0, 1], got {max_mixed_fraction}.")
    if logits.shape[0] > 256:
        raise ValueError(f"Too many classes for a uint8 label map: {logits.shape[0]}.")
    logits = torch.as_tensor(logits).as_subclass(torch.Tensor) if isinstance(logits, MetaTensor) else logits
    h, w, device = int(logits.shape[1]), int(logits.shape[2]), logits.device
    out = torch.empty((n, rows, cols), dtype=torch.uint8, device=device)
    r0, r1, rw0, rw1 = _source_index(h, rows, device)
    c0, c1, cw0, cw1 = _source_index(w, cols, device)
    below = torch.clamp(torch.arange(h, device=device) + 1, max=h - 1)
    right = torch.clamp(torch.arange(w, device=device) + 1, max=w - 1)
    # The argmax over the channel axis as stored (C outermost) is 4x faster than over a permuted view.
    low_all = logits.max(dim=0).indices.to(torch.uint8).permute(2, 0, 1)  # (n, h, w) view
    if (h, w) == (rows, cols):
        out.copy_(low_all)
        return out.permute(1, 2, 0)[None]
    for start in range(0, n, chunk_slices):
        stop = min(start + chunk_slices, n)
        low = low_all[start:stop].contiguous()
        low_below = low[:, below]
        # `uniform[s, a, b]`: the source pixels (a, b), (a+1, b), (a, b+1), (a+1, b+1) share one label.
        uniform = (low == low_below) & (low == low[:, :, right]) & (low == low_below[:, :, right])
        mixed = uniform.index_select(1, r0).index_select(2, c0).logical_not_()
        s, i, j = mixed.nonzero(as_tuple=True)
        if s.numel() > max_mixed_fraction * mixed.numel():
            out[start:stop] = _resize_argmax_dense(logits[..., start:stop].permute(3, 0, 1, 2).float(), rows, cols)
            continue
        labels = low.index_select(1, r0).index_select(2, c0)
        if s.numel():
            a, b, c, d, k = r0[i], r1[i], c0[j], c1[j], s + start
            wa, wb, wc, wd = rw0[i], rw1[i], cw0[j], cw1[j]
            # Same order of operations as F.interpolate's bilinear kernel; values are (C, pixels).
            values = wa * (wc * logits[:, a, c, k].float() + wd * logits[:, a, d, k].float()) + wb * (
                wc * logits[:, b, c, k].float() + wd * logits[:, b, d, k].float()
            )
            labels[s, i, j] = values.max(dim=0).indices.to(torch.uint8)
        out[start:stop] = labels
    return out.permute(1, 2, 0)[None]



class ResampleArgmaxd(MapTransform):
    """Turn the low-resolution logits under ``keys`` into a label map on the CT grid.

    The CT grid (shape and affine) is read from ``d[ref_key].meta``
    (``spatial_shape`` and ``original_affine``, set by :func:`vacseg_monai.inputs.load_input`), so this
    is the inverse of the preprocessing's in-plane resize without keeping the
    full-resolution logits (see :func:`resample_argmax`).

    Args:
        keys: keys of the logits ``(C, h, w, n)``. Defaults to ``"pred"``.
        ref_key: key of the preprocessed image carrying the grid meta. Defaults to ``"image"``.
        chunk_slices: slices resized at once. Defaults to 16.
        logits_key: keep the low-resolution logits under this key (e.g. for :class:`ScoreQualityd`);
            None drops them. Defaults to None.
        allow_missing_keys: don't raise if a key is absent. Defaults to False.
    """

    def __init__(
        self,
        keys: KeysCollection = "pred",
        ref_key: str = "image",
        chunk_slices: int = 16,
        logits_key: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if chunk_slices < 1:
            raise ValueError(f"`chunk_slices` must be >= 1, got {chunk_slices}.")
        self.ref_key = ref_key
        self.chunk_slices = chunk_slices
        self.logits_key = logits_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Replace the logits by a uint8 ``MetaTensor`` ``(1, rows, cols, n)`` with the CT affine.

        Raises:
            KeyError: if the reference image lacks ``spatial_shape`` / ``original_affine`` meta.
        """
        d = dict(data)
        meta = getattr(d[self.ref_key], "meta", {})
        if "spatial_shape" not in meta or "original_affine" not in meta:
            raise KeyError(
                f"`{self.ref_key}` has no 'spatial_shape' / 'original_affine' meta; load it with "
                "vacseg_monai.inputs.load_input."
            )
        shape = tuple(int(s) for s in np.asarray(meta["spatial_shape"]).reshape(-1))
        affine = torch.as_tensor(np.asarray(meta["original_affine"], dtype=np.float64))
        for key in self.key_iterator(d):
            if self.logits_key is not None:
                d[self.logits_key] = d[key]
            labels = resample_argmax(d[key], shape, self.chunk_slices)
            d[key] = MetaTensor(labels.cpu(), affine=affine, meta={"filename_or_obj": meta.get("filename_or_obj")})
        return d


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
    """The smallest box holding every True voxel of a non-empty ``mask``, as slices."""
    box = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=others))
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    components, count = ndimage.label(mask, structure=_CONNECTIVITY_3D)
    if count <= 1:
        return mask
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == int(np.argmax(sizes))


def _large_components(mask: np.ndarray, min_share: float) -> np.ndarray:
    """The components of ``mask`` holding at least ``min_share`` of the largest one's voxels."""
    components, count = ndimage.label(mask, structure=_CONNECTIVITY_3D)
    if count <= 1:
        return mask
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    keep = sizes >= min_share * sizes.max()
    keep[0] = False
    return keep[components]


def _drop_small_components(mask: np.ndarray, min_voxels: float) -> np.ndarray:
    components, count = ndimage.label(mask, structure=_CONNECTIVITY_3D)
    if count == 0:
        return mask
    sizes = np.bincount(components.ravel())
    keep = sizes >= min_voxels
    keep[0] = False
    return keep[components]


def _fill_holes_per_slice(mask: np.ndarray, slice_axis: int = -1) -> np.ndarray:
    """Fill the holes of each slice of ``mask`` along ``slice_axis`` (background not connected to the slice's edge).

    One 3D labelling with in-plane 4-connectivity (the complement of an 8-connected
    outline) does every slice at once, much faster than ``binary_fill_holes`` per slice.
    """
    moved = np.moveaxis(mask, slice_axis, 0)  # (n, rows, cols) view
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = ndimage.generate_binary_structure(2, 1)
    components, count = ndimage.label(~moved, structure=structure)
    if count == 0:
        return mask
    outside = np.zeros(count + 1, dtype=bool)
    for edge in (components[:, 0], components[:, -1], components[:, :, 0], components[:, :, -1]):
        outside[np.unique(edge)] = True
    outside[0] = False
    holes = ~moved & ~outside[components]
    return np.moveaxis(moved | holes, 0, slice_axis)


def clean_up_labels(
    labels: np.ndarray,
    voxel_volume_mm3: float = 1.0,
    min_vacbag_volume_mm3: float = DEFAULT_MIN_VACBAG_VOLUME_MM3,
    label_table: Sequence[Label] = LABELS,
    *,
    min_body_share: float = DEFAULT_MIN_BODY_SHARE,
) -> tuple[np.ndarray, dict[str, int]]:
    """Connected-component clean-up of a label map ``(rows, cols, n)``, by label name.

    - ``Body`` (the external outline): keep the 3D components holding at least
      ``min_body_share`` of the largest one (the trunk, and limbs lying apart from it),
      then fill their internal holes slice by slice (everything enclosed by the outline
      on a slice is body, whatever the network said).
    - ``Couch``: keep the largest 3D component (there is one couch top).
    - ``Vacbag``: drop 3D components smaller than ``min_vacbag_volume_mm3`` (the bag
      may legitimately come in several pieces, e.g. two side walls).

    Components are 26-connected. Removed voxels become background. Labels not
    named above are left as they are. Body runs first, so a filled hole overrides
    other labels inside the body.

    Args:
        labels: integer label map (rows, cols, n_slices); not modified.
        voxel_volume_mm3: volume of one voxel in mm^3 (default 1).
        min_vacbag_volume_mm3: smallest Vacbag component kept, in mm^3 (default 1000, i.e. 1 ml).
        label_table: the label table (default :data:`vacseg_monai.labels.LABELS`).
        min_body_share: Body components smaller than this share of the largest are dropped (default
            :data:`DEFAULT_MIN_BODY_SHARE`; 1 keeps the largest only, 0 keeps every component).

    Returns:
        The cleaned label map (same dtype; a ``(rows, cols, n)`` view of slice-major memory) and, per
        label name, the number of voxels changed (removed or, for Body, removed minus filled).

    Raises:
        ValueError: if ``labels`` is not 3D or a volume argument is not positive.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"`labels` must be (rows, cols, n_slices), got shape {labels.shape}.")
    if voxel_volume_mm3 <= 0:
        raise ValueError(f"`voxel_volume_mm3` must be > 0, got {voxel_volume_mm3}.")
    if min_vacbag_volume_mm3 < 0:
        raise ValueError(f"`min_vacbag_volume_mm3` must be >= 0, got {min_vacbag_volume_mm3}.")
    _check_share(min_body_share)
    # Work slice-major, (n, rows, cols): the memory layout resample_argmax produces (a plain copy then), and
    # the one in which each slice is contiguous. The result is returned as a (rows, cols, n) view of it.
    out = np.array(np.moveaxis(labels, 2, 0), order="C", copy=True)
    changed: dict[str, int] = {}
    by_name = {label.name: label.value for label in label_table}
    if "Body" in by_name:
        removed, added = _relabel_in_box(
            out, by_name["Body"], lambda m: _fill_holes_per_slice(_large_components(m, min_body_share), slice_axis=0)
        )
        changed["Body"] = removed + added
    if "Couch" in by_name:
        changed["Couch"], _ = _relabel_in_box(out, by_name["Couch"], _largest_component)
    if "Vacbag" in by_name:
        min_voxels = min_vacbag_volume_mm3 / voxel_volume_mm3
        changed["Vacbag"], _ = _relabel_in_box(out, by_name["Vacbag"], lambda m: _drop_small_components(m, min_voxels))
    return np.moveaxis(out, 0, 2), changed


def _relabel_in_box(out: np.ndarray, value: int, operation) -> tuple[int, int]:
    """Replace label ``value`` in ``out`` (in place) by ``operation(mask)``, working on the mask's bounding box.

    Voxels the operation drops become background; voxels it adds (filled holes) take
    ``value``. Returns the numbers of voxels removed and added.

    Labelling costs time in proportion to the volume it scans, and the couch, the bag
    and the body each fill a fraction of the grid; the box also keeps the temporaries
    small. The operations used here give the same result on the box as on the whole
    grid: components are unchanged by cropping, and background on the box's border is
    background connected to the outside of the slice, which is what the hole filling tests.
    """
    mask = out == value
    if not mask.any():
        return 0, 0
    box = _bounding_box(mask)
    region, mask = out[box], mask[box]  # views
    kept = operation(mask)
    removed = mask & ~kept
    added = kept & ~mask
    region[removed] = BACKGROUND
    region[added] = value
    return int(np.count_nonzero(removed)), int(np.count_nonzero(added))


def _check_share(min_body_share: float) -> None:
    if not 0.0 <= min_body_share <= 1.0:
        raise ValueError(f"`min_body_share` must be within [0, 1], got {min_body_share}.")


def _voxel_volume(affine: Any) -> float:
    return float(abs(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3])))


class CleanUpLabelsd(MapTransform):
    """Apply :func:`clean_up_labels` to the label maps ``(1, rows, cols, n)`` under ``keys``.

    The voxel volume comes from the label map's affine.

    Args:
        keys: keys of the label maps. Defaults to ``"pred"``.
        min_vacbag_volume_mm3: smallest Vacbag component kept, mm^3. Defaults to 1000.
        label_table: the label table. Defaults to :data:`vacseg_monai.labels.LABELS`.
        allow_missing_keys: don't raise if a key is absent. Defaults to False.
        min_body_share: Body components smaller than this share of the largest are dropped.
            Defaults to :data:`DEFAULT_MIN_BODY_SHARE`.
    """

    def __init__(
        self,
        keys: KeysCollection = "pred",
        min_vacbag_volume_mm3: float = DEFAULT_MIN_VACBAG_VOLUME_MM3,
        label_table: Sequence[Label] = LABELS,
        allow_missing_keys: bool = False,
        min_body_share: float = DEFAULT_MIN_BODY_SHARE,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if min_vacbag_volume_mm3 < 0:
            raise ValueError(f"`min_vacbag_volume_mm3` must be >= 0, got {min_vacbag_volume_mm3}.")
        _check_share(min_body_share)
        self.min_vacbag_volume_mm3 = float(min_vacbag_volume_mm3)
        self.min_body_share = float(min_body_share)
        self.label_table = tuple(label_table)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Replace each label map by its cleaned copy.

        Raises:
            ValueError: if a label map is not ``(1, rows, cols, n)``.
        """
        d = dict(data)
        for key in self.key_iterator(d):
            value = d[key]
            if value.ndim != 4 or value.shape[0] != 1:
                raise ValueError(f"`{key}` must be a label map (1, rows, cols, n_slices), got {tuple(value.shape)}.")
            affine = value.affine if isinstance(value, MetaTensor) else np.eye(4)
            array = value[0].cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value[0])
            cleaned, changed = clean_up_labels(
                array, _voxel_volume(affine), self.min_vacbag_volume_mm3, self.label_table,
                min_body_share=self.min_body_share,
            )
            logger.info("Clean-up changed voxels per label: %s", changed)
            tensor = torch.from_numpy(cleaned[None])
            d[key] = MetaTensor(tensor, meta=dict(value.meta)) if isinstance(value, MetaTensor) else tensor
        return d



class ScoreQualityd(MapTransform):
    """Score the label map under ``keys`` (:func:`vacseg_monai.quality.assess_quality`) into ``d["quality"]``.

    Args:
        keys: key of the final label map ``(1, rows, cols, n)``. Defaults to ``"pred"``.
        source: the loaded input (:func:`vacseg_monai.inputs.load_input`): its HU volume and spacing.
        logits_key: key of the low-resolution logits kept by :class:`ResampleArgmaxd`. Defaults to ``"logits"``.
        quality: the thresholds (the bundle's ``quality`` block); None scores nothing. Defaults to None.
        allow_missing_keys: don't raise if a key is absent. Defaults to False.
    """

    def __init__(
        self,
        keys: KeysCollection = "pred",
        source: Any = None,
        logits_key: str = "logits",
        quality: Mapping[str, Any] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        from vacseg_monai.quality import QualityConfig

        super().__init__(keys, allow_missing_keys)
        if source is None:
            raise ValueError("`source` (the InferenceInput from load_input) is required.")
        self.source = source
        self.logits_key = logits_key
        self.config = None if quality is None else QualityConfig.from_mapping(quality)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Add ``quality`` (a :class:`~vacseg_monai.quality.QualityReport`) and drop the kept logits."""
        from vacseg_monai.quality import assess_quality

        d = dict(data)
        logits = d.pop(self.logits_key, None)
        if self.config is None or logits is None:
            return d
        hu = self.source.image[0].numpy()
        for key in self.key_iterator(d):
            labels = np.asarray(torch.as_tensor(d[key]).cpu().numpy()[0], dtype=np.uint8)
            d["quality"] = assess_quality(torch.as_tensor(logits), labels, hu, self.source.spacing, self.config)
        return d
