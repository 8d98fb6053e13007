"""Label maps back to DICOM: a NIfTI label map -> RT Structure Set and/or DICOM-SEG of a CT series.

:func:`write_label_map_dicom` (``scripts/write_dicom_rt.py``) reads a NIfTI label
map with any affine (:func:`load_label_nifti`), resamples it onto a CT series'
grid with nearest neighbour (:func:`resample_label_map`: CT index -> RAS -> NIfTI
index, rounded; outside -> 0) and writes it through the DICOM output layer
(:func:`vacseg_monai.dicom.outputs.write_outputs`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vacseg_monai.dicom.outputs import DEFAULT_ROOT_UID, OutputKind, write_outputs
from vacseg_monai.dicom.profiles import OutputProfile
from vacseg_monai.dicom.series import read_series
from vacseg_monai.labels import checked_label_map

__all__ = ["load_label_nifti", "resample_label_map", "write_label_map_dicom"]

logger = logging.getLogger(__name__)


def load_label_nifti(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a NIfTI label map and check its values against the label table.

    Args:
        path: ``.nii`` or ``.nii.gz`` file; 3D, or 4D+ with trailing dimensions of size 1.

    Returns:
        (uint8 label array in the file's index order, 4x4 RAS affine of the file).

    Raises:
        ValueError: if the file cannot be read, is not 3D, holds non-integer values or
            values that are not label numbers.
    """
    import nibabel as nib

    path = Path(path)
    try:
        image = nib.load(str(path))
        data = np.asanyarray(image.dataobj)
    except Exception as exc:  # nibabel raises several unrelated types
        raise ValueError(f"Cannot read NIfTI label map {path}: {exc}.") from exc
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"NIfTI label map {path} has shape {data.shape}; expected a 3D volume.")
    data = checked_label_map(data, f"NIfTI label map {path}")
    return data.astype(np.uint8), np.asarray(image.affine, dtype=np.float64)


def resample_label_map(
    labels: np.ndarray,
    labels_affine_ras: np.ndarray,
    target_shape: Sequence[int],
    target_affine_ras: np.ndarray,
) -> tuple[np.ndarray, float]:
    """Nearest-neighbour resampling of a label map onto another grid.

    Each target voxel index goes through ``target_affine_ras`` to RAS mm and through
    the inverse of ``labels_affine_ras`` to a (rounded) source index; target voxels
    whose source index lies outside ``labels`` become 0.

    Args:
        labels: source label map (any 3D index order).
        labels_affine_ras: 4x4 affine of ``labels`` (index -> RAS mm).
        target_shape: (rows, cols, n_slices) of the target grid.
        target_affine_ras: 4x4 affine of the target grid (index -> RAS mm).

    Returns:
        (label map of ``target_shape`` in the dtype of ``labels``, fraction of target
        voxels that fell inside the source).

    Raises:
        ValueError: if an affine is not an invertible 4x4 matrix or ``labels`` is not 3D.
    """
    src = np.asarray(labels)
    if src.ndim != 3:
        raise ValueError(f"`labels` must be 3D, got shape {src.shape}.")
    source_affine = np.asarray(labels_affine_ras, dtype=np.float64)
    target_affine = np.asarray(target_affine_ras, dtype=np.float64)
    for name, affine in (("labels_affine_ras", source_affine), ("target_affine_ras", target_affine)):
        if affine.shape != (4, 4) or not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
            raise ValueError(f"`{name}` must be an invertible 4x4 affine, got\n{affine}.")
    rows, cols, n_slices = (int(s) for s in target_shape)
    # target index -> source index in one matrix
    transform = np.linalg.inv(source_affine) @ target_affine
    out = np.zeros((rows, cols, n_slices), dtype=src.dtype)
    base = (
        np.arange(rows, dtype=np.float64)[:, None, None] * transform[:3, 0]
        + np.arange(cols, dtype=np.float64)[None, :, None] * transform[:3, 1]
        + transform[:3, 3]
    )
    limits = np.asarray(src.shape)
    inside_total = 0
    for k in range(n_slices):
        index = np.floor(base + k * transform[:3, 2] + 0.5).astype(np.int64)  # (rows, cols, 3)
        inside = np.all((index >= 0) & (index < limits), axis=-1)
        if not inside.any():
            continue
        inside_total += int(inside.sum())
        picked = index[inside]
        out[:, :, k][inside] = src[picked[:, 0], picked[:, 1], picked[:, 2]]
    return out, inside_total / float(max(rows * cols * n_slices, 1))


def write_label_map_dicom(
    series_dir: str | Path,
    labels_path: str | Path,
    out_dir: str | Path,
    *,
    fmt: str | OutputKind = OutputKind.RTSTRUCT,
    root_uid: str | None = None,
    series_uid: str | None = None,
    profile: str | Path | OutputProfile | None = None,
) -> list[Path]:
    """Write a NIfTI label map as an RT Structure Set and/or DICOM-SEG of a CT series.

    The label map (any affine) is resampled onto the CT grid with
    :func:`resample_label_map`; a warning is logged when it does not cover the whole
    series (the uncovered voxels become background).

    Args:
        series_dir: folder with the CT series.
        labels_path: NIfTI label map (values from the label table).
        out_dir: output folder (created); files are named by
            :func:`vacseg_monai.dicom.outputs.output_file_name` (``RS.<SOPInstanceUID>.dcm``,
            ``SEG.<SOPInstanceUID>.dcm``).
        fmt: ``"rtstruct"`` (default), ``"seg"`` or ``"both"``.
        root_uid: UID root for the new objects (default: the writers' default root).
        series_uid: SeriesInstanceUID to read when ``series_dir`` holds several CT series.
        profile: the output profile (:mod:`vacseg_monai.dicom.profiles`; default None: ``generic``).

    Returns:
        the written files.

    Raises:
        ValueError: for a bad label map (see :func:`load_label_nifti`), one that does not
            overlap the series at all, an unknown ``fmt``, or an unreadable series
            (:class:`~vacseg_monai.dicom.errors.DicomSeriesError`).
    """
    fmt = OutputKind.coerce(fmt)
    labels, affine = load_label_nifti(labels_path)
    series = read_series(series_dir, series_uid=series_uid)
    resampled, covered = resample_label_map(labels, affine, series.shape, series.affine_ras)
    if covered == 0:
        raise ValueError(
            f"NIfTI label map {labels_path} does not overlap CT series {series.series_instance_uid} at all; "
            "check that its affine is in RAS (NIfTI) and belongs to this patient."
        )
    if covered < 1.0:
        logger.warning(
            "NIfTI label map %s covers only %.1f %% of CT series %s; the voxels outside it are set to background.",
            labels_path, 100.0 * covered, series.series_instance_uid,
        )
    written = write_outputs(resampled, series, out_dir, fmt, DEFAULT_ROOT_UID if root_uid is None else root_uid,
                            profile=profile)
    logger.info("Wrote %s for series %s: %s", fmt.value, series.series_instance_uid, [str(p) for p in written])
    return written
