"""Custom pieces of the bundle's inference workflow (``configs/inference.json``).

The workflow is a ``SupervisedEvaluator`` over one input volume::

    load_input(path)            DICOM series folder, NIfTI file or npy patient folder
      -> inference_transforms   HU window to [0, 1], in-plane resize to spatial_size (area)
      -> AutocastSliceInferer   the 2D network over the slice axis, sw_batch_size slices a batch
                                (MONAI's SliceInferer; optionally under bf16/fp16 autocast, ``amp``)
      -> ResampleArgmaxd        logits resized back to the CT grid (bilinear), argmax
      -> CleanUpLabelsd         connected-component clean-up per label
      -> SaveInferenceOutputsd  NIfTI label map (+ npy masks, RTSTRUCT, DICOM-SEG)

Input conventions (see :func:`load_input`):

- DICOM: :func:`vacseg_monai.dicom.series.read_series`; its RAS affine is kept.
- NIfTI: the data array is used as stored, which must be the project's display
  order ``(rows, cols, slices)`` (row 0 at the top of the displayed slice, the
  couch at high row numbers) as written by this project and read by
  :mod:`vacseg_monai.datasets` for training. It is not reoriented from its
  affine: the model is fed exactly the orientation it is trained on, and the
  output label map lies on the input's voxel grid with the input's affine.
  NIfTI files from converters that reorder axes (dcm2niix, ITK) must be brought
  to this order first.
- npy: ``<patient>/img/<i>.npy`` slices ``(1, rows, cols)`` stacked in numeric
  order of ``i``. The files carry no geometry, so the affine is that of a
  head-first-supine DICOM series with origin 0 and spacing ``npy_spacing``
  (default 1 mm in all three directions); volumes used by the clean-up
  thresholds (mm^3) are then voxel counts unless the spacing is given.
"""

from __future__ import annotations

import enum
import logging
import os
import re
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.inferers import SliceInferer
from monai.transforms import MapTransform
from scipy import ndimage

from vacseg_monai.dicom.geometry import affine_lps, lps_to_ras
from vacseg_monai.dicom.outputs import OutputKind
from vacseg_monai.labels import BACKGROUND, LABELS, Label, checked_label_map

if TYPE_CHECKING:
    from vacseg_monai.dicom.series import CTSeries, DecodedSlice

__all__ = [
    "DEFAULT_MIN_VACBAG_VOLUME_MM3",
    "AutocastSliceInferer",
    "CleanUpLabelsd",
    "InferenceInput",
    "InferenceInputError",
    "InputKind",
    "OutputKind",
    "ResampleArgmaxd",
    "SaveInferenceOutputsd",
    "clean_up_labels",
    "load_input",
    "resample_argmax",
]

logger = logging.getLogger(__name__)

#: Vacbag components smaller than this (mm^3, i.e. 1 ml) are dropped by the clean-up.
DEFAULT_MIN_VACBAG_VOLUME_MM3 = 1000.0

# Orientation of a head-first-supine series: rows run along +x (L), columns along +y (P).
_HFS_IOP = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
_IMG_DIR = "img"
_MASK_DIR = "mask"
_LOOKED_FOR = (
    "a DICOM CT series folder, a NIfTI volume (.nii / .nii.gz) or a patient folder in the npy "
    "layout (<patient>/img/<i>.npy)"
)
# 26-connectivity in 3D: diagonal neighbours join thin structures (couch shells) across slices.
_CONNECTIVITY_3D = np.ones((3, 3, 3), dtype=bool)
_CONNECTIVITY_3D.setflags(write=False)


class InferenceInputError(ValueError):
    """The inference input path is missing or is none of the supported inputs."""


class InputKind(str, enum.Enum):
    """Kinds of input the workflow reads."""

    DICOM = "dicom"
    NIFTI = "nifti"
    NPY = "npy"


@dataclass
class InferenceInput:
    """One loaded input volume.

    Attributes:
        path: the input path as given.
        kind: what it was read as.
        image: float32 HU ``MetaTensor`` ``(1, rows, cols, n_slices)`` with a RAS affine;
            its meta holds ``spatial_shape`` and ``original_affine`` (the CT grid that
            predictions are resampled back to).
        name: stem for output file names (input folder or file name, sanitised).
        series: the DICOM series (DICOM input only), for the RTSTRUCT / SEG writers.
        slice_indices: npy file numbers in slice order (npy input only).
    """

    path: Path
    kind: InputKind
    image: MetaTensor
    name: str
    series: CTSeries | None = None
    slice_indices: tuple[int, ...] | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        """(rows, cols, n_slices)."""
        return tuple(int(s) for s in self.image.shape[1:])  # type: ignore[return-value]

    @property
    def affine(self) -> np.ndarray:
        """4x4 RAS affine (index -> mm), float64."""
        return np.asarray(self.image.affine, dtype=np.float64)


def _safe_name(name: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
    return name or "volume"


def _is_nifti(path: Path) -> bool:
    lower = path.name.lower()
    return lower.endswith(".nii") or lower.endswith(".nii.gz")


def _nifti_stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _as_image(array: np.ndarray | torch.Tensor, affine: np.ndarray, source: Path) -> MetaTensor:
    tensor = torch.as_tensor(np.asarray(array, dtype=np.float32) if isinstance(array, np.ndarray) else array)
    if tensor.ndim == 3:
        tensor = tensor[None]
    affine_t = torch.as_tensor(np.asarray(affine, dtype=np.float64))
    image = MetaTensor(tensor.to(torch.float32), affine=affine_t)
    image.meta["filename_or_obj"] = str(source)
    image.meta["spatial_shape"] = tuple(int(s) for s in tensor.shape[1:])
    image.meta["original_affine"] = affine_t.clone()
    return image


def _load_nifti(path: Path) -> InferenceInput:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        data = np.asarray(img.get_fdata(dtype=np.float32))
    except Exception as exc:  # nibabel raises many unrelated types for corrupt files
        raise InferenceInputError(f"Cannot read NIfTI file {path} ({exc}).") from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InferenceInputError(f"NIfTI file {path} has shape {data.shape}; expected (rows, cols, n_slices).")
    return InferenceInput(
        path=path,
        kind=InputKind.NIFTI,
        image=_as_image(data, np.asarray(img.affine, dtype=np.float64), path),
        name=_safe_name(_nifti_stem(path)),
    )


def _npy_affine(spacing: Sequence[float] | None) -> np.ndarray:
    if spacing is None:
        spacing = (1.0, 1.0, 1.0)
    values = [float(s) for s in spacing]
    if len(values) != 3 or min(values) <= 0:
        raise ValueError(f"`npy_spacing` must be (row, col, slice) spacings > 0 in mm, got {spacing!r}.")
    return lps_to_ras(affine_lps(_HFS_IOP, values[:2], values[2], (0.0, 0.0, 0.0)))


def _load_npy(path: Path, spacing: Sequence[float] | None) -> InferenceInput:
    img_dir = path / _IMG_DIR
    numbered: dict[int, Path] = {}
    for file in img_dir.iterdir():
        if file.suffix == ".npy" and file.stem.isdigit():
            numbered[int(file.stem)] = file
    if not numbered:
        raise InferenceInputError(
            f"{img_dir} holds no <i>.npy slices (integer file names); {path} is not an npy patient."
        )
    indices = tuple(sorted(numbered))
    slices = []
    for i in indices:
        file = numbered[i]
        try:
            array = np.load(file, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise InferenceInputError(f"Cannot read {file} as a .npy array ({exc}).") from exc
        if array.ndim == 2:
            array = array[None]
        if array.ndim != 3 or array.shape[0] != 1:
            raise InferenceInputError(f"{file} has shape {array.shape}; expected (1, rows, cols).")
        if slices and array.shape[1:] != slices[0].shape:
            raise InferenceInputError(
                f"{file} has shape {array.shape} but {numbered[indices[0]]} has {(1, *slices[0].shape)}; "
                "all slices of a patient must have the same size."
            )
        slices.append(array[0])
    volume = np.stack(slices, axis=-1).astype(np.float32)
    return InferenceInput(
        path=path,
        kind=InputKind.NPY,
        image=_as_image(volume, _npy_affine(spacing), path),
        name=_safe_name(path.name),
        slice_indices=indices,
    )


def _load_dicom(
    path: Path, decoded: Mapping[Path, DecodedSlice | None] | None = None, series_uid: str | None = None
) -> InferenceInput:
    from vacseg_monai.dicom.errors import NoSeriesError
    from vacseg_monai.dicom.series import read_series

    try:
        series = read_series(path, series_uid=series_uid or None, decoded=decoded)
    except NoSeriesError as exc:
        raise InferenceInputError(f"{path} is none of {_LOOKED_FOR}: {exc}") from exc
    volume = series.volume
    return InferenceInput(
        path=path,
        kind=InputKind.DICOM,
        image=_as_image(volume.as_tensor(), series.affine_ras, path),
        name=_safe_name(path.name),
        series=series,
    )


def load_input(
    path: str | os.PathLike[str],
    npy_spacing: Sequence[float] | None = None,
    decoded: Mapping[Path, DecodedSlice | None] | None = None,
    series_uid: str | None = None,
) -> InferenceInput:
    """Read the inference input: a DICOM CT series, a NIfTI volume or an npy patient folder.

    A folder with an ``img`` sub-folder is read in the npy layout, any other folder as
    a DICOM series (:func:`vacseg_monai.dicom.series.read_series`), a ``.nii`` /
    ``.nii.gz`` file with nibabel (array order used as stored; see the module docstring).

    Args:
        path: the input path.
        npy_spacing: (row, col, slice) spacing in mm for npy input (default None: 1 mm each).
        decoded: DICOM files of ``path`` already decoded (see :func:`vacseg_monai.dicom.series.read_series`).
        series_uid: SeriesInstanceUID to read from a DICOM folder (default None or "": the CT series
            with the most slices).

    Returns:
        The loaded :class:`InferenceInput`.

    Raises:
        InferenceInputError: when the path is empty, does not exist or is none of the
            supported inputs (naming the path and what was looked for), or a file in it
            cannot be read.
        vacseg_monai.dicom.errors.DicomSeriesError: for an invalid DICOM series.
        ValueError: for a bad ``npy_spacing``.
    """
    if path is None or str(path).strip() == "":
        raise InferenceInputError(f"No input given: pass --input PATH with {_LOOKED_FOR}.")
    path = Path(path)
    if not path.exists():
        raise InferenceInputError(f"Input {path} does not exist; expected {_LOOKED_FOR}.")
    if path.is_file():
        if _is_nifti(path):
            loaded = _load_nifti(path)
        else:
            raise InferenceInputError(
                f"Input {path} is a file but not a NIfTI volume (.nii / .nii.gz); expected {_LOOKED_FOR}."
            )
    elif (path / _IMG_DIR).is_dir():
        loaded = _load_npy(path, npy_spacing)
    else:
        loaded = _load_dicom(path, decoded, series_uid)
    logger.info("Read %s input %s: %s voxels", loaded.kind.value, path, "x".join(map(str, loaded.shape)))
    return loaded


# --------------------------------------------------------------------------- postprocessing


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
    logits: torch.Tensor, spatial_shape: Sequence[int], chunk_slices: int = 16, max_mixed_fraction: float = 0.25
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

    Returns:
        uint8 label map ``(1, rows, cols, n)`` on ``logits``' device: a view of slice-major
        ``(n, rows, cols)`` memory, so that each slice is contiguous.

    Raises:
        ValueError: for a logits tensor that is not 4D, a slice count mismatch, ``chunk_slices < 1``
            or ``max_mixed_fraction`` outside [0, 1].
    """
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


_AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


class AutocastSliceInferer(SliceInferer):
    """MONAI's :class:`~monai.inferers.SliceInferer`, optionally running the network under autocast.

    With ``amp`` the network runs in ``amp_dtype`` (bf16 by default) on the device of the input, CPU
    included, where MONAI's evaluator only autocasts on CUDA; the logits come back as float32. It is
    faster where the hardware computes bf16 natively (CUDA GPUs; CPUs with AVX512-BF16 or AMX) and
    changes a very small share of the labels (see docs/benchmarks.md); elsewhere bf16 can be slower
    than float32. Off by default: the same input then gives the same output on any machine.

    Args:
        *args, **kwargs: :class:`~monai.inferers.SliceInferer` arguments.
        amp: run under autocast (default False).
        amp_dtype: ``"bfloat16"`` (default) or ``"float16"`` (CUDA only).

    Raises:
        ValueError: for another ``amp_dtype``.
    """

    def __init__(self, *args: Any, amp: bool = False, amp_dtype: str = "bfloat16", **kwargs: Any) -> None:
        if amp_dtype not in _AMP_DTYPES:
            raise ValueError(f"`amp_dtype` must be one of {sorted(_AMP_DTYPES)}, got {amp_dtype!r}.")
        super().__init__(*args, **kwargs)
        self.amp = bool(amp)
        self.amp_dtype = _AMP_DTYPES[amp_dtype]

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Run :class:`~monai.inferers.SliceInferer` over ``inputs``, under autocast when ``amp`` is set."""
        if not self.amp:
            return super().__call__(inputs, network, *args, **kwargs)
        with torch.autocast(device_type=inputs.device.type, dtype=self.amp_dtype):
            out = super().__call__(inputs, network, *args, **kwargs)
        return out.float()


class ResampleArgmaxd(MapTransform):
    """Turn the low-resolution logits under ``keys`` into a label map on the CT grid.

    The CT grid (shape and affine) is read from ``d[ref_key].meta``
    (``spatial_shape`` and ``original_affine``, set by :func:`load_input`), so this
    is the inverse of the preprocessing's in-plane resize without keeping the
    full-resolution logits (see :func:`resample_argmax`).

    Args:
        keys: keys of the logits ``(C, h, w, n)``. Defaults to ``"pred"``.
        ref_key: key of the preprocessed image carrying the grid meta. Defaults to ``"image"``.
        chunk_slices: slices resized at once. Defaults to 16.
        allow_missing_keys: don't raise if a key is absent. Defaults to False.
    """

    def __init__(
        self,
        keys: KeysCollection = "pred",
        ref_key: str = "image",
        chunk_slices: int = 16,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if chunk_slices < 1:
            raise ValueError(f"`chunk_slices` must be >= 1, got {chunk_slices}.")
        self.ref_key = ref_key
        self.chunk_slices = chunk_slices

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
                "vacseg_monai.inference.load_input."
            )
        shape = tuple(int(s) for s in np.asarray(meta["spatial_shape"]).reshape(-1))
        affine = torch.as_tensor(np.asarray(meta["original_affine"], dtype=np.float64))
        for key in self.key_iterator(d):
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
) -> tuple[np.ndarray, dict[str, int]]:
    """Connected-component clean-up of a label map ``(rows, cols, n)``, by label name.

    - ``Body`` (the external outline): keep the largest 3D component, then fill its
      internal holes slice by slice (everything enclosed by the outline on a slice is
      body, whatever the network said).
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
    # Work slice-major, (n, rows, cols): the memory layout resample_argmax produces (a plain copy then), and
    # the one in which each slice is contiguous. The result is returned as a (rows, cols, n) view of it.
    out = np.array(np.moveaxis(labels, 2, 0), order="C", copy=True)
    changed: dict[str, int] = {}
    by_name = {label.name: label.value for label in label_table}
    if "Body" in by_name:
        removed, added = _relabel_in_box(
            out, by_name["Body"], lambda m: _fill_holes_per_slice(_largest_component(m), slice_axis=0)
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
    """

    def __init__(
        self,
        keys: KeysCollection = "pred",
        min_vacbag_volume_mm3: float = DEFAULT_MIN_VACBAG_VOLUME_MM3,
        label_table: Sequence[Label] = LABELS,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if min_vacbag_volume_mm3 < 0:
            raise ValueError(f"`min_vacbag_volume_mm3` must be >= 0, got {min_vacbag_volume_mm3}.")
        self.min_vacbag_volume_mm3 = float(min_vacbag_volume_mm3)
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
                array, _voxel_volume(affine), self.min_vacbag_volume_mm3, self.label_table
            )
            logger.info("Clean-up changed voxels per label: %s", changed)
            tensor = torch.from_numpy(cleaned[None])
            d[key] = MetaTensor(tensor, meta=dict(value.meta)) if isinstance(value, MetaTensor) else tensor
        return d


# --------------------------------------------------------------------------- writers


class SaveInferenceOutputsd(MapTransform):
    """Write the label map under ``keys`` for ``source``.

    Always a NIfTI label map ``<output_dir>/<name>_labels.nii.gz`` (uint8, the input's
    grid and RAS affine). For npy input also ``<output_dir>/<name>/mask/<i>.npy``
    (``(1, rows, cols)`` uint8, the input's file numbers). For DICOM input the
    RTSTRUCT (``<name>_rtstruct.dcm``) and/or DICOM-SEG (``<name>_seg.dcm``) chosen by
    ``output``. One log line per file (the DICOM writers log their own; one line per
    mask folder for npy). The written paths are stored under ``<key>_files``.

    Args:
        keys: keys of the label maps ``(1, rows, cols, n)``. Defaults to ``"pred"``.
        source: the loaded input (:func:`load_input`).
        output_dir: folder to write to (created).
        output: ``"rtstruct"`` (default), ``"seg"``, ``"both"`` or ``"none"``; DICOM input only.
        root_uid: UID root for the DICOM objects. Defaults to ``"1.2.826.0.1.3680043.8.498."``.
        label_table: the label table. Defaults to :data:`vacseg_monai.labels.LABELS`.
        allow_missing_keys: don't raise if a key is absent. Defaults to False.

    Raises:
        ValueError: for an unknown ``output``.
    """

    def __init__(
        self,
        keys: KeysCollection = "pred",
        source: InferenceInput | None = None,
        output_dir: str | os.PathLike[str] = ".",
        output: str | OutputKind = OutputKind.RTSTRUCT,
        root_uid: str = "1.2.826.0.1.3680043.8.498.",
        label_table: Sequence[Label] = LABELS,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if source is None:
            raise ValueError("`source` (the InferenceInput from load_input) is required.")
        self.source = source
        self.output_dir = Path(output_dir)
        self.output = OutputKind.coerce(output)
        self.root_uid = str(root_uid)
        self.label_table = tuple(label_table)
        if self.output is not OutputKind.NONE and source.kind is not InputKind.DICOM:
            logger.info(
                "--output %s needs a DICOM series input; %s input %s gets label maps only.",
                self.output.value,
                source.kind.value,
                source.path,
            )

    def _check(self, labels: np.ndarray) -> None:
        if labels.shape != self.source.shape:
            raise ValueError(
                f"Label map shape {labels.shape} differs from the input {self.source.path} {self.source.shape}."
            )
        checked_label_map(labels, f"Label map for {self.source.path}", self.label_table)

    def write(self, labels: np.ndarray, nifti: bool = True) -> list[Path]:
        """Write every output for one label map ``(rows, cols, n)``; return the paths.

        Args:
            labels: the label map.
            nifti: also write the NIfTI label map (default True; the DICOM node, which only
                sends DICOM back, skips it).

        Raises:
            ValueError: if the label map does not match the input or holds unknown values.
        """
        import nibabel as nib

        # Any memory layout: the writers work as fast on the slice-major view the clean-up returns.
        labels = np.asarray(labels, dtype=np.uint8)
        self._check(labels)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        name = self.source.name
        written: list[Path] = []

        if nifti:
            nifti_path = self.output_dir / f"{name}_labels.nii.gz"
            image = nib.Nifti1Image(labels, self.source.affine)
            image.header.set_xyzt_units("mm")
            nib.save(image, str(nifti_path))
            logger.info("Wrote NIfTI label map %s", nifti_path)
            written.append(nifti_path)

        if self.source.kind is InputKind.NPY and self.source.slice_indices is not None:
            mask_dir = self.output_dir / name / _MASK_DIR
            mask_dir.mkdir(parents=True, exist_ok=True)
            for k, index in enumerate(self.source.slice_indices):
                path = mask_dir / f"{index}.npy"
                np.save(path, labels[None, :, :, k])
                logger.debug("Wrote %s", path)
                written.append(path)
            logger.info("Wrote %d label slices %s/<i>.npy", len(self.source.slice_indices), mask_dir)

        series = self.source.series
        if self.source.kind is InputKind.DICOM and series is not None:
            if self.output.rtstruct:
                from vacseg_monai.dicom.rtstruct import write_rtstruct

                path = self.output_dir / f"{name}_rtstruct.dcm"
                write_rtstruct(labels, series, path, label_table=self.label_table, root_uid=self.root_uid)
                written.append(path)
            if self.output.seg:
                from vacseg_monai.dicom.seg import write_seg

                path = self.output_dir / f"{name}_seg.dcm"
                write_seg(labels, series, path, label_table=self.label_table, root_uid=self.root_uid)
                written.append(path)
        return written

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Write the outputs for each key and record the paths under ``<key>_files``.

        Raises:
            ValueError: if a label map does not match the input or holds unknown values.
        """
        d = dict(data)
        for key in self.key_iterator(d):
            value = d[key]
            array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
            if array.ndim == 4 and array.shape[0] == 1:
                array = array[0]
            d[f"{key}_files"] = [str(p) for p in self.write(array)]
        return d
