"""Input reading of the bundle's inference workflow: one path in, one HU volume with its grid out.

:func:`load_input` is the ``input_data`` component of ``configs/inference.json``
and the first step of the DICOM node's processor. Input conventions:

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

The loaded volume's meta holds ``spatial_shape`` and ``original_affine``: the CT
grid that :class:`vacseg_monai.postprocess.ResampleArgmaxd` maps predictions back to.
"""

from __future__ import annotations

import enum
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from monai.data import MetaTensor

from vacseg_monai.datasets import IMG_DIR
from vacseg_monai.dicom.geometry import affine_lps, lps_to_ras

if TYPE_CHECKING:
    from vacseg_monai.dicom.series import CTSeries, DecodedSlice

__all__ = ["InferenceInput", "InferenceInputError", "InputKind", "couch_at_top", "load_input", "voxel_spacing"]

logger = logging.getLogger(__name__)

# Orientation of a head-first-supine series: rows run along +x (L), columns along +y (P).
_HFS_IOP = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
_LOOKED_FOR = (
    "a DICOM CT series folder, a NIfTI volume (.nii / .nii.gz) or a patient folder in the npy "
    f"layout (<patient>/{IMG_DIR}/<i>.npy)"
)


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
        rows_flipped: the DICOM series stores its images with the couch at the top (e.g. a supine
            patient with the columns running anteriorly); ``image`` (and its affine) is flipped up-down
            so that the couch lies at the bottom, as the model was trained, and the DICOM writers flip
            the label map back to the stored order (:func:`couch_at_top`).
    """

    path: Path
    kind: InputKind
    image: MetaTensor
    name: str
    series: CTSeries | None = None
    slice_indices: tuple[int, ...] | None = None
    rows_flipped: bool = False

    @property
    def shape(self) -> tuple[int, int, int]:
        """(rows, cols, n_slices)."""
        return tuple(int(s) for s in self.image.shape[1:])  # type: ignore[return-value]

    @property
    def affine(self) -> np.ndarray:
        """4x4 RAS affine (index -> mm), float64."""
        return np.asarray(self.image.affine, dtype=np.float64)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """(row, col, slice) voxel spacing in mm, from the affine."""
        return voxel_spacing(self.affine)


def voxel_spacing(affine: np.ndarray) -> tuple[float, float, float]:
    """(row, col, slice) voxel spacing in mm from a 4x4 affine (the norms of its first three columns)."""
    matrix = np.asarray(affine, dtype=np.float64)[:3, :3]
    return tuple(float(v) for v in np.linalg.norm(matrix, axis=0))  # type: ignore[return-value]


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
    img_dir = path / IMG_DIR
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
    volume, affine = series.volume.as_tensor(), np.asarray(series.affine_ras, dtype=np.float64)
    flipped = couch_at_top(series)
    if flipped:
        logger.info("Series %s stores its images with the couch at the top; segmenting them flipped up-down",
                    series.series_instance_uid)  # fmt: skip
        volume = volume.flip(1)
        flip = np.eye(4)
        flip[0, 0], flip[0, 3] = -1.0, volume.shape[1] - 1
        affine = affine @ flip
    return InferenceInput(
        path=path,
        kind=InputKind.DICOM,
        image=_as_image(volume, affine, path),
        name=_safe_name(path.name),
        series=series,
        rows_flipped=flipped,
    )


#: Where the couch lies, as a direction in the patient's LPS axes, by Patient Position (0018,5100).
_COUCH_DIRECTION = {"S": (0.0, 1.0, 0.0), "P": (0.0, -1.0, 0.0), "DL": (1.0, 0.0, 0.0), "DR": (-1.0, 0.0, 0.0)}


def couch_at_top(series: CTSeries) -> bool:
    """True when the series' rows run away from the couch, i.e. the couch is at the top of each stored image.

    The couch lies posterior to a supine (HFS/FFS) patient, anterior to a prone one (HFP/FFP) and to the left
    or right in decubitus (HFDL/HFDR/...); a series without Patient Position is taken as supine. The column
    direction of Image Orientation (Patient) then says whether row numbers grow towards the couch.
    """
    first = series.datasets[0]
    position = str(first.get("PatientPosition", "") or "HFS").upper()
    couch = _COUCH_DIRECTION.get(position[2:], _COUCH_DIRECTION["S"])
    column_direction = np.asarray([float(v) for v in first.ImageOrientationPatient][3:6])
    return float(column_direction @ np.asarray(couch)) < -0.5


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
    elif (path / IMG_DIR).is_dir():
        loaded = _load_npy(path, npy_spacing)
    else:
        loaded = _load_dicom(path, decoded, series_uid)
    logger.info("Read %s input %s: %s voxels", loaded.kind.value, path, "x".join(map(str, loaded.shape)))
    return loaded

