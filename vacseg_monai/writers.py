"""The last step of the bundle's inference workflow: a label map on the input grid -> files.

:func:`write_inference_outputs` writes, for one loaded input
(:func:`vacseg_monai.inputs.load_input`):

- a NIfTI label map ``<output_dir>/<name>_labels.nii.gz`` (uint8, the input's grid and
  RAS affine), unless ``nifti=False``;
- for npy input, ``<output_dir>/<name>/mask/<i>.npy`` (``(1, rows, cols)`` uint8, the
  input's file numbers);
- for DICOM input, the RTSTRUCT and/or DICOM-SEG chosen by ``output``, through the DICOM
  output layer (:func:`vacseg_monai.dicom.outputs.write_outputs`: ``RS.<SOPInstanceUID>.dcm``,
  ``SEG.<SOPInstanceUID>.dcm``).

:class:`SaveInferenceOutputsd` is the same step as a MONAI transform, the ``writer``
of ``configs/inference.json``; the DICOM node calls the function through
:meth:`vacseg_monai.segmenter.BundleSegmenter.write`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from vacseg_monai.datasets import MASK_DIR
from vacseg_monai.dicom.outputs import DEFAULT_ROOT_UID, OutputKind, write_outputs
from vacseg_monai.dicom.profiles import DEFAULT_PROFILE, OutputProfile, load_profile
from vacseg_monai.inputs import InferenceInput, InputKind
from vacseg_monai.labels import LABELS, Label, checked_label_map

__all__ = ["SaveInferenceOutputsd", "write_inference_outputs"]

logger = logging.getLogger(__name__)


def _check(labels: np.ndarray, source: InferenceInput, label_table: Sequence[Label]) -> None:
    if labels.shape != source.shape:
        raise ValueError(f"Label map shape {labels.shape} differs from the input {source.path} {source.shape}.")
    checked_label_map(labels, f"Label map for {source.path}", label_table)


def _write_nifti(labels: np.ndarray, source: InferenceInput, output_dir: Path) -> Path:
    import nibabel as nib

    path = output_dir / f"{source.name}_labels.nii.gz"
    image = nib.Nifti1Image(labels, source.affine)
    image.header.set_xyzt_units("mm")
    nib.save(image, str(path))
    logger.info("Wrote NIfTI label map %s", path)
    return path


def _write_mask_slices(labels: np.ndarray, source: InferenceInput, output_dir: Path) -> list[Path]:
    mask_dir = output_dir / source.name / MASK_DIR
    mask_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for k, index in enumerate(source.slice_indices or ()):
        path = mask_dir / f"{index}.npy"
        np.save(path, labels[None, :, :, k])
        logger.debug("Wrote %s", path)
        written.append(path)
    logger.info("Wrote %d label slices %s/<i>.npy", len(written), mask_dir)
    return written


def write_quality_json(quality: Any, path: str | os.PathLike[str]) -> Path:
    """Write a :class:`~vacseg_monai.quality.QualityReport` as JSON (temporary file, then rename); return the path."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(quality.as_dict(), indent=1))
    os.replace(tmp, path)
    logger.info("Quality %s -> %s", quality.summary(), path)
    return path


def write_inference_outputs(
    source: InferenceInput,
    labels: np.ndarray,
    output_dir: str | os.PathLike[str],
    output: str | OutputKind = OutputKind.RTSTRUCT,
    root_uid: str = DEFAULT_ROOT_UID,
    *,
    nifti: bool = True,
    label_table: Sequence[Label] = LABELS,
    roi_notes: Mapping[int, str] | None = None,
    model_version: str | None = None,
    profile: str | os.PathLike[str] | OutputProfile | None = None,
    name_marks: Mapping[int, str] | None = None,
) -> list[Path]:
    """Write every output for one label map ``(rows, cols, n)`` on ``source``'s grid; return the paths.

    One log line per file (the DICOM writers log their own; one line per mask folder for npy).

    Args:
        source: the loaded input (:func:`vacseg_monai.inputs.load_input`).
        labels: the label map, any memory layout.
        output_dir: folder to write to (created).
        output: DICOM objects for DICOM input: ``"rtstruct"`` (default), ``"seg"``, ``"both"`` or ``"none"``.
        root_uid: UID root for the DICOM objects (default :data:`~vacseg_monai.dicom.outputs.DEFAULT_ROOT_UID`).
        nifti: also write the NIfTI label map (default True; the DICOM node, which only sends DICOM
            back, skips it).
        label_table: the label table (default :data:`vacseg_monai.labels.LABELS`).
        roi_notes: a short note per label value for the RTSTRUCT (default None).
        model_version: the model that made the label map, for the DICOM objects (default None).
        profile: the output profile of the DICOM objects (:mod:`vacseg_monai.dicom.profiles`; default None:
            ``generic``).
        name_marks: label value -> text appended to its ROI name before the profile's suffix (default None).

    Raises:
        ValueError: if the label map does not match the input or holds unknown values, ``output``
            is unknown, or the profile makes a name too long.
    """
    output = OutputKind.coerce(output)
    labels = np.asarray(labels, dtype=np.uint8)
    _check(labels, source, label_table)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if nifti:
        written.append(_write_nifti(labels, source, output_dir))
    if source.kind is InputKind.NPY and source.slice_indices is not None:
        written.extend(_write_mask_slices(labels, source, output_dir))
    if source.kind is InputKind.DICOM and source.series is not None:
        if source.rows_flipped:  # back to the order the series stores its pixels in
            labels = np.ascontiguousarray(labels[::-1])
        written.extend(
            write_outputs(labels, source.series, output_dir, output, root_uid, label_table=label_table,
                          roi_notes=roi_notes, model_version=model_version, profile=profile,
                          name_marks=name_marks)  # fmt: skip
        )
    return written


class SaveInferenceOutputsd(MapTransform):
    """Write the label maps under ``keys`` for ``source`` with :func:`write_inference_outputs`.

    The written paths are stored under ``<key>_files``. When the data holds a ``quality`` report
    (:class:`~vacseg_monai.postprocess.ScoreQualityd`), each RTSTRUCT ROI carries its score as a note
    and ``<name>_quality.json`` is written beside the outputs.

    Args:
        keys: keys of the label maps ``(1, rows, cols, n)``. Defaults to ``"pred"``.
        source: the loaded input (:func:`vacseg_monai.inputs.load_input`).
        output_dir: folder to write to (created).
        output: ``"rtstruct"`` (default), ``"seg"``, ``"both"`` or ``"none"``; DICOM input only.
        root_uid: UID root for the DICOM objects. Defaults to :data:`~vacseg_monai.dicom.outputs.DEFAULT_ROOT_UID`.
        label_table: the label table. Defaults to :data:`vacseg_monai.labels.LABELS`.
        model_version: the model that made the label maps (:func:`vacseg_monai.paths.model_version`), written
            into the DICOM objects. Defaults to None.
        output_profile: the output profile of the DICOM objects: ``generic``, ``eclipse``, ``raystation`` or a
            TOML file with a ``[profile]`` table (:mod:`vacseg_monai.dicom.profiles`). Defaults to ``generic``.
        label_suffix: appended to every ROI name and segment label, e.g. ``" NOT FOR CLINICAL USE"``.
            Defaults to None (the profile's suffix).
        allow_missing_keys: don't raise if a key is absent. Defaults to False.

    Raises:
        ValueError: for a missing ``source``, an unknown ``output``, or a bad profile or suffix.
    """

    def __init__(
        self,
        keys: KeysCollection = "pred",
        source: InferenceInput | None = None,
        output_dir: str | os.PathLike[str] = ".",
        output: str | OutputKind = OutputKind.RTSTRUCT,
        root_uid: str = DEFAULT_ROOT_UID,
        label_table: Sequence[Label] = LABELS,
        model_version: str | None = None,
        output_profile: str | os.PathLike[str] | OutputProfile | None = DEFAULT_PROFILE,
        label_suffix: str | None = None,
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
        self.model_version = model_version
        self.profile = load_profile(output_profile, label_suffix=label_suffix)
        if self.output is not OutputKind.NONE and source.kind is not InputKind.DICOM:
            logger.info(
                "--output %s needs a DICOM series input; %s input %s gets label maps only.",
                self.output.value,
                source.kind.value,
                source.path,
            )

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
            quality = d.get("quality")
            notes = None if quality is None else quality.roi_notes(self.label_table)
            written = write_inference_outputs(
                self.source, array, self.output_dir, self.output, self.root_uid, label_table=self.label_table,
                roi_notes=notes, model_version=self.model_version, profile=self.profile,
            )
            if quality is not None:
                written.append(write_quality_json(quality, self.output_dir / f"{self.source.name}_quality.json"))
            d[f"{key}_files"] = [str(p) for p in written]
        return d
