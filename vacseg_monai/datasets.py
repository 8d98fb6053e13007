"""The training data layout: discovery, validation, the patient-level k-fold split, and the writers.

Two on-disk layouts are understood, one patient per sub-folder of ``data_dir``:

``npy`` (the original per-slice layout)::

    <data_dir>/<patient>/img/<i>.npy    shape (1, rows, cols), HU (int16 in practice)
    <data_dir>/<patient>/mask/<i>.npy   shape (1, rows, cols), label numbers (uint8)

File names are integers; slices are ordered numerically (``2.npy`` before ``10.npy``).

``nifti`` (one volume per patient)::

    <data_dir>/<patient>/image.nii.gz   shape (rows, cols, n_slices), HU
    <data_dir>/<patient>/label.nii.gz   same shape, label numbers

(``.nii`` works as well.) The NIfTI data array follows the project convention:
``data[:, :, k]`` is the k-th slice as displayed, row 0 at the top. No
reorientation is applied, so a volume written by ``vacseg_monai`` (or any tool
that keeps (row, col, slice) order) reads back unchanged.

Label maps hold the numbers of :data:`vacseg_monai.labels.LABELS` (0 background).
A binary mask from an existing user (uint8/bool/float 0 and 1) therefore reads as
Vacbag (1). Label values are checked when a slice is loaded
(:func:`as_label_map`), not at discovery, so that discovery only reads headers.

:func:`write_npy_patient` and :func:`write_nifti_patient` write one patient in
either layout (used by :mod:`vacseg_monai.dicom.exports`), so that the folder and
file names above are defined here once (:data:`IMG_DIR`, :data:`MASK_DIR`,
:data:`NIFTI_IMAGE_NAMES`, :data:`NIFTI_LABEL_NAMES`).

A patient folder may hold ``annotation.json``, ``{"annotated_labels": ["Vacbag", "Body"]}``: the labels its
annotation really covers. A label not listed is unknown in that patient, not absent: training does not teach it
as background there (:mod:`vacseg_monai.partial_labels`). A listed label with no voxel is known absent (a scan
without a bag). Without the file every label is annotated. The writers take ``annotated=``.

Discovery (:func:`discover_patients`) reads every file header once (``np.load``
with ``mmap_mode="r"``, NIfTI headers via nibabel's lazy proxy) and raises
:class:`DataLayoutError` naming the patient, the file and the problem.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vacseg_monai.labels import BACKGROUND, LABELS, checked_label_map
from vacseg_monai.partial_labels import ANNOTATED_KEY, check_annotated

__all__ = [
    "ANNOTATION_FILE",
    "IMG_DIR",
    "MASK_DIR",
    "NIFTI_IMAGE_NAMES",
    "NIFTI_LABEL_NAMES",
    "DataLayoutError",
    "Layout",
    "PatientRecord",
    "as_label_map",
    "discover_patients",
    "finetune_datalists",
    "fold_datalists",
    "load_nifti_volume",
    "load_slice",
    "nifti_slice",
    "read_annotation",
    "slice_items",
    "split_patients",
    "write_nifti_patient",
    "write_npy_patient",
]

logger = logging.getLogger(__name__)

NIFTI_IMAGE_NAMES = ("image.nii.gz", "image.nii")
NIFTI_LABEL_NAMES = ("label.nii.gz", "label.nii")
#: Sub-folders of a patient in the npy layout: CT slices and label slices.
IMG_DIR = "img"
MASK_DIR = "mask"
#: Optional file in a patient folder naming the labels its annotation covers.
ANNOTATION_FILE = "annotation.json"
_ALL_LABELS = tuple(label.name for label in LABELS)
_LAYOUTS_LOOKED_FOR = (
    "<patient>/img/<i>.npy + <patient>/mask/<i>.npy (npy layout) or "
    "<patient>/image.nii.gz + <patient>/label.nii.gz (nifti layout)"
)


class DataLayoutError(ValueError):
    """A training data folder does not follow one of the supported layouts."""


class Layout:
    """Names of the supported on-disk layouts."""

    NPY = "npy"
    NIFTI = "nifti"


@dataclass(frozen=True)
class PatientRecord:
    """One patient found by :func:`discover_patients`.

    Args:
        patient_id: the patient folder name.
        layout: ``"npy"`` or ``"nifti"``.
        rows: image rows of every slice.
        cols: image columns of every slice.
        slice_indices: slice numbers in increasing order (npy file names; 0..n-1 for NIfTI).
        image_files: per-slice ``.npy`` files (npy) or the single volume (nifti).
        label_files: same for the labels.
        annotated: names of the labels the annotation covers (all by default; see the module docstring).
    """

    patient_id: str
    layout: str
    rows: int
    cols: int
    slice_indices: tuple[int, ...]
    image_files: tuple[Path, ...]
    label_files: tuple[Path, ...]
    annotated: tuple[str, ...] = _ALL_LABELS

    @property
    def partial(self) -> bool:
        """Whether some label is not annotated in this patient."""
        return self.annotated != _ALL_LABELS

    @property
    def n_slices(self) -> int:
        """Number of slices of this patient."""
        return len(self.slice_indices)


def _allowed_label_values() -> tuple[int, ...]:
    return (BACKGROUND, *(label.value for label in LABELS))


def _npy_header(path: Path, patient_id: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of a ``.npy`` file without reading its data."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataLayoutError(
            f"Patient {patient_id!r}: cannot read {path} as a .npy array ({exc}); "
            "the file is corrupt or not written by numpy.save."
        ) from exc
    if not isinstance(array, np.ndarray):  # an .npz archive
        raise DataLayoutError(f"Patient {patient_id!r}: {path} is not a single .npy array.")
    shape, dtype = tuple(int(s) for s in array.shape), array.dtype
    del array  # release the memory map
    return shape, dtype


def _check_image_dtype(dtype: np.dtype, path: Path, patient_id: str) -> None:
    if dtype == np.bool_ or not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise DataLayoutError(
            f"Patient {patient_id!r}: image {path} has dtype {dtype}; expected integer or float HU values "
            "(int16 in the original layout)."
        )


def _check_label_dtype(dtype: np.dtype, path: Path, patient_id: str) -> None:
    if not (dtype == np.bool_ or np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise DataLayoutError(
            f"Patient {patient_id!r}: label {path} has dtype {dtype}; expected integer label numbers "
            f"{list(_allowed_label_values())} (uint8), bool or float 0/1."
        )


def _numbered_npy_files(folder: Path, patient_id: str) -> dict[int, Path]:
    files: dict[int, Path] = {}
    for path in folder.iterdir():
        if path.name.startswith(".") or path.suffix != ".npy":
            continue
        try:
            index = int(path.stem)
        except ValueError:
            raise DataLayoutError(
                f"Patient {patient_id!r}: slice file {path} is not named by an integer; "
                "slice files must be named <i>.npy (0.npy, 1.npy, ...)."
            ) from None
        if index < 0 or index in files:
            raise DataLayoutError(
                f"Patient {patient_id!r}: slice file {path} repeats or has a negative index {index}."
            )
        files[index] = path
    return files


def _discover_npy_patient(patient_dir: Path) -> PatientRecord:
    patient_id = patient_dir.name
    img_dir, mask_dir = patient_dir / IMG_DIR, patient_dir / MASK_DIR
    for present, missing in ((img_dir, mask_dir), (mask_dir, img_dir)):
        if present.is_dir() and not missing.is_dir():
            raise DataLayoutError(
                f"Patient {patient_id!r}: found {present.name}/ but no {missing.name}/ folder at {missing}; "
                f"each patient needs {IMG_DIR}/<i>.npy and {MASK_DIR}/<i>.npy."
            )
    images = _numbered_npy_files(img_dir, patient_id)
    masks = _numbered_npy_files(mask_dir, patient_id)
    if not images:
        raise DataLayoutError(f"Patient {patient_id!r}: no <i>.npy slice files in {img_dir}.")
    if images.keys() != masks.keys():
        no_mask = sorted(images.keys() - masks.keys())
        no_image = sorted(masks.keys() - images.keys())
        raise DataLayoutError(
            f"Patient {patient_id!r}: {img_dir} has {len(images)} slices and {mask_dir} has {len(masks)}; "
            f"indices without a mask: {no_mask}; indices without an image: {no_image}."
        )
    indices = sorted(images)
    expected_shape: tuple[int, ...] | None = None
    first_file: Path | None = None
    for index in indices:
        for kind, path in (("image", images[index]), ("label", masks[index])):
            shape, dtype = _npy_header(path, patient_id)
            if len(shape) != 3 or shape[0] != 1:
                raise DataLayoutError(
                    f"Patient {patient_id!r}: {kind} {path} has shape {shape}; expected (1, H, W) "
                    "(one slice, channel first)."
                )
            if kind == "image":
                _check_image_dtype(dtype, path, patient_id)
            else:
                _check_label_dtype(dtype, path, patient_id)
            if expected_shape is None:
                expected_shape, first_file = shape, path
            elif shape != expected_shape:
                raise DataLayoutError(
                    f"Patient {patient_id!r}: {kind} {path} has shape {shape} but {first_file} has "
                    f"{expected_shape}; all slices of a patient (images and masks) must have the same shape."
                )
    rows, cols = expected_shape[1:] if expected_shape is not None else (0, 0)
    return PatientRecord(
        patient_id=patient_id,
        layout=Layout.NPY,
        rows=rows,
        cols=cols,
        slice_indices=tuple(indices),
        image_files=tuple(images[i] for i in indices),
        label_files=tuple(masks[i] for i in indices),
    )


def _first_existing(folder: Path, names: Sequence[str]) -> Path | None:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    return None


def _nifti_header(path: Path, patient_id: str) -> tuple[tuple[int, ...], np.dtype]:
    import nibabel as nib

    try:
        image = nib.load(str(path))
        shape, dtype = tuple(int(s) for s in image.shape), np.dtype(image.get_data_dtype())
    except Exception as exc:  # nibabel raises several unrelated types for corrupt files
        raise DataLayoutError(f"Patient {patient_id!r}: cannot read NIfTI file {path} ({exc}).") from exc
    return shape, dtype


def _discover_nifti_patient(patient_dir: Path) -> PatientRecord:
    patient_id = patient_dir.name
    image_path = _first_existing(patient_dir, NIFTI_IMAGE_NAMES)
    label_path = _first_existing(patient_dir, NIFTI_LABEL_NAMES)
    if image_path is None or label_path is None:
        have, lack = ("image", "label") if label_path is None else ("label", "image")
        raise DataLayoutError(
            f"Patient {patient_id!r}: found a NIfTI {have} in {patient_dir} but no {lack} "
            f"({' or '.join(NIFTI_IMAGE_NAMES if lack == 'image' else NIFTI_LABEL_NAMES)})."
        )
    image_shape, image_dtype = _nifti_header(image_path, patient_id)
    label_shape, label_dtype = _nifti_header(label_path, patient_id)
    if len(image_shape) != 3:
        raise DataLayoutError(
            f"Patient {patient_id!r}: image {image_path} has shape {image_shape}; expected a 3D volume "
            "(rows, cols, n_slices)."
        )
    if label_shape != image_shape:
        raise DataLayoutError(
            f"Patient {patient_id!r}: label {label_path} has shape {label_shape} but image {image_path} has "
            f"{image_shape}; they must match."
        )
    _check_image_dtype(image_dtype, image_path, patient_id)
    _check_label_dtype(label_dtype, label_path, patient_id)
    n_slices = image_shape[2]
    if n_slices == 0:
        raise DataLayoutError(f"Patient {patient_id!r}: image {image_path} has no slices.")
    return PatientRecord(
        patient_id=patient_id,
        layout=Layout.NIFTI,
        rows=image_shape[0],
        cols=image_shape[1],
        slice_indices=tuple(range(n_slices)),
        image_files=(image_path,),
        label_files=(label_path,),
    )


def _patient_layout(patient_dir: Path) -> str | None:
    has_npy = (patient_dir / IMG_DIR).is_dir() or (patient_dir / MASK_DIR).is_dir()
    has_nifti = any((patient_dir / n).is_file() for n in NIFTI_IMAGE_NAMES + NIFTI_LABEL_NAMES)
    if has_npy and has_nifti:
        raise DataLayoutError(
            f"Patient {patient_dir.name!r}: {patient_dir} holds both img/ or mask/ folders and NIfTI files; "
            "keep one layout per patient."
        )
    if has_npy:
        return Layout.NPY
    if has_nifti:
        return Layout.NIFTI
    return None


def discover_patients(data_dir: str | os.PathLike[str]) -> list[PatientRecord]:
    """Find and validate every patient under ``data_dir``, sorted by patient id.

    Only headers are read; label values are checked when slices are loaded.
    Sub-folders that match neither layout are skipped with a warning.

    Args:
        data_dir: folder with one sub-folder per patient (see the module docstring).

    Returns:
        One :class:`PatientRecord` per patient, sorted by ``patient_id``.

    Raises:
        DataLayoutError: if ``data_dir`` does not exist, holds no patient, or a
            patient's files are missing, unreadable, of the wrong shape or dtype.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise DataLayoutError(f"data_dir {str(root)!r} does not exist or is not a folder.")
    patients: list[PatientRecord] = []
    for patient_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        layout = _patient_layout(patient_dir)
        if layout == Layout.NPY:
            record = _discover_npy_patient(patient_dir)
        elif layout == Layout.NIFTI:
            record = _discover_nifti_patient(patient_dir)
        else:
            logger.warning("Skipping %s: it matches neither layout (%s).", patient_dir, _LAYOUTS_LOOKED_FOR)
            continue
        patients.append(dataclasses.replace(record, annotated=read_annotation(patient_dir)))
    if not patients:
        raise DataLayoutError(f"No patients found in data_dir {str(root)!r}; looked for {_LAYOUTS_LOOKED_FOR}.")
    partial = [f"{p.patient_id} ({', '.join(p.annotated) or 'none'})" for p in patients if p.partial]
    logger.info(
        "Found %d patients (%d slices) in %s; partly annotated: %s.",
        len(patients),
        sum(p.n_slices for p in patients),
        root,
        ", ".join(partial) or "none",
    )
    return patients


def read_annotation(patient_dir: str | os.PathLike[str]) -> tuple[str, ...]:
    """The labels a patient's annotation covers, from its ``annotation.json`` (every label without one).

    Raises:
        DataLayoutError: if the file is not JSON of the form ``{"annotated_labels": [names]}`` or names an unknown
            label.
    """
    path = Path(patient_dir) / ANNOTATION_FILE
    if not path.is_file():
        return _ALL_LABELS
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
        names = content["annotated_labels"]
        if not isinstance(names, list):
            raise TypeError("`annotated_labels` is not a list")
        return check_annotated(names, str(path))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataLayoutError(
            f"Patient {Path(patient_dir).name!r}: {path} must read "
            f'{{"annotated_labels": [label names from {list(_ALL_LABELS)}]}}: {exc}'
        ) from exc


def _checked_annotation(annotated: Sequence[str] | None, labels: np.ndarray) -> tuple[str, ...] | None:
    """Canonical names of ``annotated``; refuses a label map that holds a label said not to be annotated."""
    if annotated is None:
        return None
    names = check_annotated(annotated, "annotated")
    present = {label.name for label in LABELS if label.name not in names and bool((labels == label.value).any())}
    if present:
        raise ValueError(
            f"The label map holds {sorted(present)} but `annotated` {list(names)} does not list them; "
            "list every label the annotation contains."
        )
    return names


def _write_annotation(patient_dir: Path, names: tuple[str, ...] | None) -> None:
    path = patient_dir / ANNOTATION_FILE
    if names is None:
        path.unlink(missing_ok=True)
        return
    path.write_text(json.dumps({"annotated_labels": list(names)}, indent=1) + "\n", encoding="utf-8")


def split_patients(
    patient_ids: Sequence[str], k_folds: int = 5, k_fold_index: int = 0
) -> tuple[list[str], list[str]]:
    """Split patients into training and validation for one fold.

    The ids are sorted and cut into ``k_folds`` contiguous folds whose sizes
    differ by at most one (the first ``len % k_folds`` folds get the extra
    patient), like scikit-learn's ``KFold(shuffle=False)``. No randomness: the
    same ids always give the same folds.

    Args:
        patient_ids: unique patient ids (any order).
        k_folds: number of folds, at least 2 and at most the number of patients. Defaults to 5.
        k_fold_index: the fold used for validation, in ``[0, k_folds)``. Defaults to 0.

    Returns:
        ``(train_ids, validation_ids)``, each sorted.

    Raises:
        ValueError: for duplicate ids or out-of-range ``k_folds`` / ``k_fold_index``.
    """
    ids = sorted(str(p) for p in patient_ids)
    if len(set(ids)) != len(ids):
        duplicates = sorted({p for p in ids if ids.count(p) > 1})
        raise ValueError(f"`patient_ids` must be unique, got duplicates {duplicates}.")
    k, i = int(k_folds), int(k_fold_index)
    if k < 2:
        raise ValueError(f"`k_folds` must be at least 2, got {k}.")
    if k > len(ids):
        raise ValueError(f"`k_folds` must be at most the number of patients ({len(ids)}), got {k}.")
    if not 0 <= i < k:
        raise ValueError(f"`k_fold_index` must be in [0, {k}), got {i}.")
    sizes = [len(ids) // k + (1 if f < len(ids) % k else 0) for f in range(k)]
    start = sum(sizes[:i])
    validation = ids[start : start + sizes[i]]
    train = ids[:start] + ids[start + sizes[i] :]
    return train, validation


def slice_items(patients: Sequence[PatientRecord]) -> list[dict[str, Any]]:
    """One data dictionary per slice, in patient then slice order.

    Each item has ``image`` and ``label`` (file paths as strings), ``patient``
    (the id), ``slice`` (the slice number) and ``annotated`` (the patient's annotated
    label names, comma-separated). For NIfTI patients ``image`` and
    ``label`` are the volumes and ``slice`` selects ``data[:, :, slice]``.

    Args:
        patients: records from :func:`discover_patients`.
    """
    items: list[dict[str, Any]] = []
    for patient in patients:
        for position, index in enumerate(patient.slice_indices):
            if patient.layout == Layout.NPY:
                image, label = patient.image_files[position], patient.label_files[position]
            else:
                image, label = patient.image_files[0], patient.label_files[0]
            items.append(
                {
                    "image": str(image),
                    "label": str(label),
                    "patient": patient.patient_id,
                    "slice": index,
                    ANNOTATED_KEY: ",".join(patient.annotated),
                }
            )
    return items


def fold_datalists(
    data_dir: str | os.PathLike[str], k_folds: int = 5, k_fold_index: int = 0, train_slice_stride: int = 1
) -> dict[str, list[dict[str, Any]]]:
    """Discover ``data_dir`` and return the per-slice items of one fold.

    Args:
        data_dir: training data folder (see :func:`discover_patients`).
        k_folds: number of patient folds. Defaults to 5.
        k_fold_index: validation fold. Defaults to 0.
        train_slice_stride: train on every n-th slice of each patient (neighbouring slices are nearly alike:
            more patients at the same cost); validation keeps every slice. Defaults to 1.

    Returns:
        ``{"train": [...], "validation": [...]}`` lists of :func:`slice_items` dictionaries.

    Raises:
        DataLayoutError: see :func:`discover_patients`.
        ValueError: see :func:`split_patients`.
    """
    if int(train_slice_stride) < 1:
        raise ValueError(f"`train_slice_stride` must be >= 1, got {train_slice_stride}.")
    patients = discover_patients(data_dir)
    train_ids, val_ids = split_patients([p.patient_id for p in patients], k_folds, k_fold_index)
    logger.info(
        "Fold %d of %d: training patients %s, validation patients %s.", k_fold_index, k_folds, train_ids, val_ids
    )
    by_id = {p.patient_id: p for p in patients}
    return {
        "train": [item for p in train_ids for item in slice_items([by_id[p]])[:: int(train_slice_stride)]],
        "validation": slice_items([by_id[p] for p in val_ids]),
    }


def finetune_datalists(
    data_dir: str | os.PathLike[str],
    replay_dir: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
    replay_share: float | Sequence[float] = 0.0,
    k_folds: int = 5,
    k_fold_index: int = 0,
    train_slice_stride: int = 1,
    seed: int = 0,
) -> dict[str, list[dict[str, Any]]]:
    """:func:`fold_datalists` of ``data_dir`` with shares of slices from other folders mixed into training.

    Fine-tuning on a clinic's own patients alone can make the model forget what it knew; mixing in slices of the
    data it was trained on (the project's phantoms) keeps it. The same mechanism mixes in real scans without a
    bag as hard negatives. Validation stays on ``data_dir``'s fold, the data being tuned for.

    Args:
        data_dir: the fine-tuning data (for example a clinic's corrections).
        replay_dir: a folder to mix in, a list of them, or ``None`` for none.
        replay_share: the share of each folder's slices among all training slices (one number per folder), each
            in ``[0, 1)`` and together below 1. Defaults to 0.
        k_folds, k_fold_index, train_slice_stride: as for :func:`fold_datalists`; the stride applies to
            ``data_dir`` only, the mixed-in slices are drawn from every slice of their folder.
        seed: seed of the choice of mixed-in slices. Defaults to 0.

    Returns:
        ``{"train": [...], "validation": [...]}``; mixed-in items carry the patient id ``replay/<id>``.

    Raises:
        ValueError: for shares outside ``[0, 1)`` or summing to 1 or more, or shares and folders that do not pair.
        DataLayoutError: see :func:`discover_patients`.
    """
    if replay_dir is None:
        folders: list[str | os.PathLike[str]] = []
    else:
        folders = [replay_dir] if isinstance(replay_dir, (str, os.PathLike)) else list(replay_dir)
    shares = [float(replay_share)] if isinstance(replay_share, (int, float)) else [float(v) for v in replay_share]
    if any(not 0.0 <= v < 1.0 for v in shares) or sum(shares) >= 1.0:
        raise ValueError(f"`replay_share` must be in [0, 1) and sum below 1, got {replay_share}.")
    lists = fold_datalists(data_dir, k_folds, k_fold_index, train_slice_stride)
    if not any(shares):
        return lists
    if len(folders) != len(shares):
        raise ValueError(f"`replay_share` {replay_share} needs one `replay_dir` per share, got {replay_dir!r}.")
    n_train = len(lists["train"])
    rng = np.random.default_rng(seed)
    mixed: list[dict[str, Any]] = []
    for folder, share in zip(folders, shares):
        pool = [item | {"patient": f"replay/{item['patient']}"} for item in slice_items(discover_patients(folder))]
        wanted = round(n_train * share / (1.0 - sum(shares)))
        chosen = rng.choice(len(pool), size=wanted, replace=wanted > len(pool)) if wanted else []
        mixed += [pool[i] for i in chosen]
        logger.info(
            "Mixing in %d slices of %d patients from %s (%.0f %% of the training slices).",
            wanted, len({it["patient"] for it in pool}), folder, 100 * share,
        )  # fmt: skip
    return {"train": lists["train"] + mixed, "validation": lists["validation"]}


def _is_nifti(path: str | os.PathLike[str]) -> bool:
    name = str(path).lower()
    return name.endswith(".nii") or name.endswith(".nii.gz")


def load_slice(path: str | os.PathLike[str], slice_index: int | None = None) -> np.ndarray:
    """Read one slice as a ``(1, rows, cols)`` array in its stored dtype.

    Args:
        path: a per-slice ``.npy`` file, or a NIfTI volume.
        slice_index: slice of a NIfTI volume (``data[:, :, slice_index]``); ignored for ``.npy``.

    Raises:
        DataLayoutError: if the file cannot be read or has the wrong shape.
    """
    if _is_nifti(path):
        return nifti_slice(load_nifti_volume(path), path, slice_index)
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataLayoutError(f"Cannot read {path} as a .npy array ({exc}).") from exc
    if array.ndim != 3 or array.shape[0] != 1:
        raise DataLayoutError(f"{path} has shape {array.shape}; expected (1, H, W).")
    return array


def load_nifti_volume(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a whole NIfTI volume in its stored dtype (no scaling to float64 unless the file is scaled).

    Raises:
        DataLayoutError: if the file cannot be read or is not 3D.
    """
    import nibabel as nib

    try:
        volume = np.asanyarray(nib.load(str(path)).dataobj)
    except Exception as exc:  # nibabel raises several unrelated types for corrupt files
        raise DataLayoutError(f"Cannot read NIfTI file {path} ({exc}).") from exc
    if volume.ndim != 3:
        raise DataLayoutError(f"NIfTI file {path} has shape {volume.shape}; expected (rows, cols, n_slices).")
    return volume


def nifti_slice(volume: np.ndarray, path: str | os.PathLike[str], slice_index: int | None) -> np.ndarray:
    """Return ``volume[:, :, slice_index]`` as ``(1, rows, cols)``.

    Raises:
        DataLayoutError: if ``slice_index`` is missing or out of range.
    """
    if slice_index is None or not 0 <= int(slice_index) < volume.shape[2]:
        raise DataLayoutError(
            f"Slice index {slice_index} is not in [0, {volume.shape[2]}) for NIfTI file {path}."
        )
    return np.ascontiguousarray(volume[:, :, int(slice_index)])[None]


def as_label_map(array: np.ndarray, source: str) -> np.ndarray:
    """Check label numbers against the label table and return them as uint8.

    A binary mask (bool, or 0/1 in any numeric dtype) reads as Vacbag (1).

    Args:
        array: label values as stored.
        source: what to name in errors (patient and file).

    Raises:
        DataLayoutError: for non-integer values or numbers that are not in the label table.
    """
    try:
        return checked_label_map(array, source)
    except ValueError as exc:
        raise DataLayoutError(str(exc)) from None


# --------------------------------------------------------------------------- writers


def write_npy_patient(
    image: np.ndarray, labels: np.ndarray, patient_dir: str | Path, annotated: Sequence[str] | None = None
) -> Path:
    """Write one patient in the per-slice npy layout.

    Args:
        image: int16 HU volume (rows, cols, n_slices).
        labels: uint8 label map, same shape.
        patient_dir: the patient folder (``img/`` and ``mask/`` are created in it). Slice files beyond the
            volume's, left by an earlier patient written there, are removed.
        annotated: the labels the annotation covers, written to :data:`ANNOTATION_FILE`; ``None`` (default): all.

    Returns:
        ``patient_dir``.

    Raises:
        ValueError: if the shapes differ, the dtypes are not int16 / uint8, or ``annotated`` names an unknown
            label or misses one that the label map holds.
    """
    _check_volume_pair(image, labels)
    names = _checked_annotation(annotated, labels)
    patient_dir = Path(patient_dir)
    (patient_dir / IMG_DIR).mkdir(parents=True, exist_ok=True)
    (patient_dir / MASK_DIR).mkdir(parents=True, exist_ok=True)
    _remove_stale_slices(patient_dir, image.shape[2])
    for i in range(image.shape[2]):
        np.save(patient_dir / IMG_DIR / f"{i}.npy", np.ascontiguousarray(image[None, :, :, i]))
        np.save(patient_dir / MASK_DIR / f"{i}.npy", np.ascontiguousarray(labels[None, :, :, i]))
    _write_annotation(patient_dir, names)
    return patient_dir


def _remove_stale_slices(patient_dir: Path, n_slices: int) -> None:
    """Delete ``<i>.npy`` files with i >= n_slices, so that a rewritten patient holds only its own slices."""
    stale = [
        f
        for folder in (patient_dir / IMG_DIR, patient_dir / MASK_DIR)
        for f in folder.glob("*.npy")
        if not (f.stem.isdigit() and int(f.stem) < n_slices)
    ]
    if stale:
        logger.info("%s: removing %d slice files of an earlier patient in this folder", patient_dir.name, len(stale))
    for f in stale:
        f.unlink()


def write_nifti_patient(
    image: np.ndarray,
    labels: np.ndarray,
    affine_ras: np.ndarray,
    patient_dir: str | Path,
    annotated: Sequence[str] | None = None,
) -> Path:
    """Write one patient in the NIfTI layout (``image.nii.gz`` + ``label.nii.gz``).

    The data arrays keep the project order (rows, cols, n_slices); the affine maps
    (row, col, slice) to RAS mm and is stored as both qform and sform (scanner code).

    Args:
        image: int16 HU volume (rows, cols, n_slices).
        labels: uint8 label map, same shape.
        affine_ras: 4x4 RAS affine of the volume.
        patient_dir: the patient folder (created).
        annotated: as for :func:`write_npy_patient`.

    Returns:
        ``patient_dir``.

    Raises:
        ValueError: if the shapes differ, the dtypes are not int16 / uint8 or the affine is not 4x4.
    """
    import nibabel as nib

    _check_volume_pair(image, labels)
    names = _checked_annotation(annotated, labels)
    affine = np.asarray(affine_ras, dtype=np.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"`affine_ras` must be 4x4, got shape {affine.shape}.")
    patient_dir = Path(patient_dir)
    patient_dir.mkdir(parents=True, exist_ok=True)
    for array, name in ((image, NIFTI_IMAGE_NAMES[0]), (labels, NIFTI_LABEL_NAMES[0])):
        nifti = nib.Nifti1Image(np.asarray(array), affine)
        nifti.set_qform(affine, code=1)
        nifti.set_sform(affine, code=1)
        nifti.header.set_xyzt_units("mm")
        nib.save(nifti, str(patient_dir / name))
    _write_annotation(patient_dir, names)
    return patient_dir


def _check_volume_pair(image: np.ndarray, labels: np.ndarray) -> None:
    if image.ndim != 3 or image.shape != labels.shape:
        raise ValueError(
            f"Image {image.shape} and labels {labels.shape} must be equal 3D shapes (rows, cols, n_slices)."
        )
    if image.dtype != np.int16 or labels.dtype != np.uint8:
        raise ValueError(f"Expected an int16 image and uint8 labels, got {image.dtype} and {labels.dtype}.")
