"""MONAI transform chains for training, validation and inference.

Training and validation work on 2D slices (items from
:func:`vacseg_monai.datasets.slice_items`); inference works on a whole volume
``(1, rows, cols, n_slices)`` and is run slice by slice by a ``SliceInferer``.
All chains share the same intensity window and in-plane size, so a model
trained with ``spatial_size=256`` is fed 256x256 slices at inference too.

Arguments are named like the bundle config keys (``a_min``, ``a_max``,
``spatial_size``, ...), so configs can call these functions directly.

Spatial axes of a slice tensor ``(1, rows, cols)``: axis 0 is up-down (rows,
the couch is at the bottom), axis 1 is left-right. Augmentation flips
left-right only.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    EnsureTyped,
    MapTransform,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    RandScaleIntensityd,
    RandShiftIntensityd,
    Resized,
    ScaleIntensityRanged,
)

from vacseg_monai.datasets import DataLayoutError, as_label_map, load_nifti_volume, load_slice, nifti_slice
from vacseg_monai.partial_labels import PartialLabelsd

__all__ = [
    "ClipIntensityd",
    "LoadSliced",
    "inference_transforms",
    "is_slice_wise",
    "train_transforms",
    "val_transforms",
]

logger = logging.getLogger(__name__)

#: The left-right spatial axis of a channel-first slice (rows, cols).
LEFT_RIGHT_AXIS = 1


class LoadSliced(MapTransform):
    """Load one slice per item as a float32 ``MetaTensor`` of shape ``(1, rows, cols)``.

    Items come from :func:`vacseg_monai.datasets.slice_items`: ``image`` and
    ``label`` are paths to per-slice ``.npy`` files, or to NIfTI volumes with the
    slice number in ``item[slice_key]``. NIfTI volumes are kept in a small
    per-instance cache so that the slices of one volume do not each re-read it.
    Labels are checked against the label table (:func:`vacseg_monai.datasets.as_label_map`).

    Args:
        keys: keys to load. Defaults to ``("image", "label")``.
        label_keys: which of ``keys`` hold label maps. Defaults to ``("label",)``.
        slice_key: key of the slice number. Defaults to ``"slice"``.
        patient_key: key of the patient id, used in error messages. Defaults to ``"patient"``.
        volume_cache_size: number of NIfTI volumes kept in memory. Defaults to 2.
        allow_missing_keys: don't raise if a key is absent. Defaults to False.
    """

    def __init__(
        self,
        keys: KeysCollection = ("image", "label"),
        label_keys: KeysCollection = ("label",),
        slice_key: str = "slice",
        patient_key: str = "patient",
        volume_cache_size: int = 2,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.label_keys = {label_keys} if isinstance(label_keys, str) else set(label_keys)
        self.slice_key = slice_key
        self.patient_key = patient_key
        if volume_cache_size < 0:
            raise ValueError(f"`volume_cache_size` must be >= 0, got {volume_cache_size}.")
        self.volume_cache_size = volume_cache_size
        self._volumes: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_volumes"] = OrderedDict()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _read(self, path: str, slice_index: int | None) -> np.ndarray:
        lower = path.lower()
        if not (lower.endswith(".nii") or lower.endswith(".nii.gz")) or self.volume_cache_size == 0:
            return load_slice(path, slice_index)
        with self._lock:
            volume = self._volumes.get(path)
            if volume is not None:
                self._volumes.move_to_end(path)
        if volume is None:
            volume = load_nifti_volume(path)
            with self._lock:
                self._volumes[path] = volume
                while len(self._volumes) > self.volume_cache_size:
                    self._volumes.popitem(last=False)
        return nifti_slice(volume, path, slice_index)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Replace the paths under ``keys`` by the loaded slices.

        Raises:
            DataLayoutError: if a file is unreadable, has the wrong shape, or holds unknown label values.
        """
        d = dict(data)
        slice_index = d.get(self.slice_key)
        patient = d.get(self.patient_key)
        for key in self.key_iterator(d):
            path = str(d[key])
            source = f"Patient {patient!r}, file {path}" if patient is not None else f"File {path}"
            try:
                array = self._read(path, slice_index)
            except DataLayoutError as exc:
                if patient is None:
                    raise
                raise DataLayoutError(f"Patient {patient!r}: {exc}") from exc
            if key in self.label_keys:
                array = as_label_map(array, source)
            meta = {"filename_or_obj": path, "slice": slice_index, "patient": patient}
            d[key] = MetaTensor(torch.from_numpy(np.asarray(array, dtype=np.float32)), meta=meta)
        return d


def _spatial_2d(spatial_size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if spatial_size is None:
        return None
    if isinstance(spatial_size, int):
        size = (spatial_size, spatial_size)
    else:
        size = tuple(int(s) for s in spatial_size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"`spatial_size` must be a positive int or (rows, cols), got {spatial_size!r}.")
    return size  # type: ignore[return-value]


class ClipIntensityd(MapTransform):
    """Clip the intensities under ``keys`` to ``[a_min, a_max]`` (no rescaling).

    Lets the inference chain clip before it shrinks the volume and rescale after
    (see :func:`inference_transforms`).

    Args:
        keys: keys of the images.
        a_min: lower bound. a_max: upper bound (must exceed ``a_min``).
        allow_missing_keys: don't raise if a key is absent. Defaults to False.

    Raises:
        ValueError: if ``a_min >= a_max``.
    """

    def __init__(self, keys: KeysCollection, a_min: float, a_max: float, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        _check_below("a_min", a_min, "a_max", a_max)
        self.a_min, self.a_max = float(a_min), float(a_max)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Return a copy of ``data`` with each image clipped (a new tensor; the input is untouched)."""
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = torch.clamp(torch.as_tensor(d[key]), self.a_min, self.a_max)
        return d


def _check_below(low_name: str, low: float, high_name: str, high: float) -> None:
    if not low < high:
        raise ValueError(f"`{low_name}` must be below `{high_name}`, got {low_name}={low}, {high_name}={high}.")


def _check_window(a_min: float, a_max: float, b_min: float, b_max: float) -> None:
    _check_below("a_min", a_min, "a_max", a_max)
    _check_below("b_min", b_min, "b_max", b_max)


def _deterministic(
    image_key: str,
    label_key: str | None,
    a_min: float,
    a_max: float,
    b_min: float,
    b_max: float,
    spatial_size: int | Sequence[int] | None,
) -> list:
    _check_window(a_min, a_max, b_min, b_max)
    keys = [image_key] if label_key is None else [image_key, label_key]
    chain: list = [LoadSliced(keys=keys, label_keys=[] if label_key is None else [label_key])]
    if label_key is not None:
        # Partly annotated patients: background becomes "background or an unannotated label".
        chain.append(PartialLabelsd(keys=label_key))
    chain.append(ScaleIntensityRanged(keys=image_key, a_min=a_min, a_max=a_max, b_min=b_min, b_max=b_max, clip=True))
    size = _spatial_2d(spatial_size)
    if size is not None:
        chain.append(
            Resized(
                keys=keys,
                spatial_size=size,
                mode=["area", "nearest"][: len(keys)],
            )
        )
    chain.append(EnsureTyped(keys=keys, dtype=torch.float32))
    return chain


def val_transforms(
    a_min: float = -1024.0,
    a_max: float = 1500.0,
    b_min: float = 0.0,
    b_max: float = 1.0,
    spatial_size: int | Sequence[int] | None = None,
    image_key: str = "image",
    label_key: str | None = "label",
) -> Compose:
    """Deterministic slice chain: load, partial labels, HU window to ``[b_min, b_max]`` (clipped), optional resize.

    A partly annotated patient's background becomes a partial code
    (:class:`vacseg_monai.partial_labels.PartialLabelsd`).

    Args:
        a_min: HU mapped to ``b_min``; lower values are clipped. Defaults to -1024.
        a_max: HU mapped to ``b_max``; higher values are clipped. Defaults to 1500.
        b_min: output intensity of ``a_min``. Defaults to 0.
        b_max: output intensity of ``a_max``. Defaults to 1.
        spatial_size: in-plane size (int or (rows, cols)) to resample to; the image by
            area averaging (anti-aliased when shrinking), the label nearest. ``None`` (default)
            keeps the size.
        image_key: key of the image. Defaults to ``"image"``.
        label_key: key of the label map, or ``None`` for images only. Defaults to ``"label"``.

    Raises:
        ValueError: for an empty intensity window or a bad ``spatial_size``.
    """
    return Compose(_deterministic(image_key, label_key, a_min, a_max, b_min, b_max, spatial_size))


def train_transforms(
    a_min: float = -1024.0,
    a_max: float = 1500.0,
    b_min: float = 0.0,
    b_max: float = 1.0,
    spatial_size: int | Sequence[int] | None = None,
    flip_prob: float = 0.5,
    affine_prob: float = 0.5,
    rotate_degrees: float = 5.0,
    scale_fraction: float = 0.1,
    translate_pixels: float = 10.0,
    intensity_prob: float = 0.5,
    intensity_shift: float = 0.05,
    intensity_scale: float = 0.05,
    noise_prob: float = 0.2,
    noise_std: float = 0.01,
    image_key: str = "image",
    label_key: str = "label",
) -> Compose:
    """:func:`val_transforms` followed by augmentation (all random steps come last so CacheDataset caches the rest).

    The output images and labels are plain :class:`torch.Tensor` (no metadata): nothing in a training step
    reads it, and MetaTensor makes every operation of the step slower.

    Augmentation: left-right flip only (never up-down: the couch is always at
    the bottom), a small affine (rotation, isotropic-ish scale, translation;
    image bilinear, label nearest, zero padding = air after windowing when
    ``b_min`` is 0), intensity shift and scale, gaussian noise. Label values stay
    in the label table.

    Args:
        a_min, a_max, b_min, b_max, spatial_size, image_key, label_key: as for :func:`val_transforms`.
        flip_prob: probability of a left-right flip. Defaults to 0.5.
        affine_prob: probability of the affine. Defaults to 0.5.
        rotate_degrees: rotation range +-degrees. Defaults to 5.
        scale_fraction: zoom range +-fraction (0.1 = 90%..110%). Defaults to 0.1.
        translate_pixels: translation range +-pixels (after resizing). Defaults to 10.
        intensity_prob: probability of each of intensity shift and scale. Defaults to 0.5.
        intensity_shift: shift range +- in output intensity units. Defaults to 0.05.
        intensity_scale: scale range +-fraction. Defaults to 0.05.
        noise_prob: probability of gaussian noise. Defaults to 0.2.
        noise_std: standard deviation of the noise in output intensity units. Defaults to 0.01.

    Raises:
        ValueError: for an empty intensity window, a bad ``spatial_size`` or a probability outside [0, 1].
    """
    for name, value in (
        ("flip_prob", flip_prob),
        ("affine_prob", affine_prob),
        ("intensity_prob", intensity_prob),
        ("noise_prob", noise_prob),
    ):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"`{name}` must be in [0, 1], got {value}.")
    keys = [image_key, label_key]
    chain = _deterministic(image_key, label_key, a_min, a_max, b_min, b_max, spatial_size)
    chain += [
        RandFlipd(keys=keys, prob=flip_prob, spatial_axis=LEFT_RIGHT_AXIS),
        RandAffined(
            keys=keys,
            prob=affine_prob,
            rotate_range=math.radians(rotate_degrees),
            scale_range=(scale_fraction, scale_fraction),
            translate_range=(translate_pixels, translate_pixels),
            mode=["bilinear", "nearest"],
            padding_mode="zeros",
        ),
        RandShiftIntensityd(keys=image_key, offsets=intensity_shift, prob=intensity_prob),
        RandScaleIntensityd(keys=image_key, factors=intensity_scale, prob=intensity_prob),
        RandGaussianNoised(keys=image_key, prob=noise_prob, mean=0.0, std=noise_std),
        # Plain tensors for the training step: MetaTensor's per-operation dispatch through the network,
        # the loss and the backward pass costs about 5 % of a CPU step (benchmarks/bench_training.py).
        EnsureTyped(keys=keys, track_meta=False),
    ]
    return Compose(chain)


def is_slice_wise(chain: Compose) -> bool:
    """True if ``chain`` treats each slice of a ``(1, rows, cols, n)`` image on its own.

    Then running it on one slice at a time (``n`` = 1) gives the slices of running it on the
    volume: the node preprocesses slices while a series arrives. Only transforms known to be
    slice-wise count: EnsureTyped, ClipIntensityd, ScaleIntensityRanged, and Resized that keeps
    the slice axis (``spatial_size`` ending in -1), as :func:`inference_transforms` builds them.
    """
    for transform in chain.transforms:
        if isinstance(transform, Resized):
            size = tuple(transform.resizer.spatial_size)
            if len(size) != 3 or size[-1] != -1:
                return False
        elif not isinstance(transform, (EnsureTyped, ClipIntensityd, ScaleIntensityRanged)):
            return False
    return True


def inference_transforms(
    a_min: float = -1024.0,
    a_max: float = 1500.0,
    b_min: float = 0.0,
    b_max: float = 1.0,
    spatial_size: int | Sequence[int] | None = None,
    image_key: str = "image",
) -> Compose:
    """Volume chain for inference on an already loaded ``(1, rows, cols, n_slices)`` image.

    Applies the same window and in-plane resize as :func:`val_transforms`
    (the slice axis is kept). With a resize it clips, shrinks, then rescales,
    which equals the training chain's rescale-then-shrink up to float rounding
    and does the rescaling on a quarter of the voxels. The image keeps the meta
    (``spatial_shape``, ``original_affine``) with which
    :class:`vacseg_monai.postprocess.ResampleArgmaxd` maps predictions back.

    Args:
        a_min, a_max, b_min, b_max, spatial_size, image_key: as for :func:`val_transforms`.

    Raises:
        ValueError: for an empty intensity window or a bad ``spatial_size``.
    """
    _check_window(a_min, a_max, b_min, b_max)
    window = ScaleIntensityRanged(keys=image_key, a_min=a_min, a_max=a_max, b_min=b_min, b_max=b_max, clip=True)
    size = _spatial_2d(spatial_size)
    if size is None:
        return Compose([EnsureTyped(keys=image_key, dtype=torch.float32), window])
    # Clip, shrink, then rescale: the window is an increasing linear map after the clip, and area
    # averaging is linear, so this equals window-then-shrink (up to float rounding) while the
    # rescaling runs on the shrunk volume (0.11 s instead of 0.31 s for 100 slices of 512 x 512).
    return Compose(
        [
            EnsureTyped(keys=image_key, dtype=torch.float32),
            ClipIntensityd(keys=image_key, a_min=a_min, a_max=a_max),
            Resized(keys=image_key, spatial_size=(*size, -1), mode="area"),
            window,
        ]
    )
