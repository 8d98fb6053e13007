"""Write the model's label map (or class probabilities) as a DICOM Segmentation.

The Segmentation (SEG) is built with highdicom and references the CT series it
was derived from, frame by frame. The project's array convention makes the
mapping direct: ``labels[:, :, k]`` is the k-th slice of ``series.datasets``, so
frame ``k`` of the array handed to highdicom (``(frames, rows, cols)``) is
derived from source image ``k`` and carries that image's position.

What every written object shares (UID root, veterinary attributes, label-map
coercion, atomic save, file name) comes from :mod:`vacseg_monai.dicom.outputs`,
whose :func:`~vacseg_monai.dicom.outputs.write_outputs` is how the project writes it.

Segment numbers, labels, property codes and display colours come from the label
table (:mod:`vacseg_monai.labels`). Every label of the table is described even
when it has no voxel; frames without any voxel of a segment are omitted
(``omit_empty_frames``), so an empty segment is a described segment with no
frames. An entirely empty label map is encoded with all frames (highdicom cannot
omit every frame). :func:`read_seg_masks` reads a Segmentation back onto the series,
for comparing the node's SEG with a clinic's corrected structure set.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code as PydicomCode
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from vacseg_monai import __version__
from vacseg_monai.dicom.outputs import (
    DEFAULT_ROOT_UID,
    check_root_uid,
    complete_veterinary_attributes,
    output_file_name,
    save_atomic,
    series_label_map,
)
from vacseg_monai.labels import LABELS, Label, checked_label_map

if TYPE_CHECKING:
    from vacseg_monai.dicom.series import CTSeries

__all__ = [
    "SEG_MANUFACTURER",
    "read_seg_masks",
    "write_seg",
]

logger = logging.getLogger(__name__)

#: Manufacturer (0008,0070) and Manufacturer's Model Name of written objects.
SEG_MANUFACTURER = "vacseg_monai"

_DEFAULT_SERIES_DESCRIPTION = "vacseg_monai automatic segmentation - review before use"
_DEFAULT_CONTENT_LABEL = "VACSEG"
_DEFAULT_SERIES_NUMBER = 901

# Coding schemes defined in PS3.16; any other designator gets an entry in the
# Coding Scheme Identification Sequence.
_STANDARD_SCHEMES = frozenset({"DCM", "SCT", "SRT", "LN", "FMA", "UCUM", "NCIt", "RADLEX", "UMLS"})

def write_seg(
    labels: Any,
    series: CTSeries,
    out_path: str | os.PathLike[str] | None = None,
    *,
    label_table: Sequence[Label] = LABELS,
    root_uid: str = DEFAULT_ROOT_UID,
    probabilities: Any | None = None,
    series_description: str = _DEFAULT_SERIES_DESCRIPTION,
    series_number: int = _DEFAULT_SERIES_NUMBER,
    content_label: str = _DEFAULT_CONTENT_LABEL,
    content_description: str | None = None,
    instance_number: int = 1,
    device_serial_number: str = "0",
    omit_empty_frames: bool = True,
    transfer_syntax_uid: str = ExplicitVRLittleEndian,
    model_version: str | None = None,
) -> hd.seg.Segmentation:
    """Encode a label map (or per-label probabilities) as a DICOM Segmentation.

    Args:
        labels: label map, numpy array ``(rows, cols, n_slices)`` or a tensor /
            MetaTensor ``(1, rows, cols, n_slices)``, integer-valued, with values
            0 (background) or a ``value`` of ``label_table``. Slice ``k`` must be
            ``series.datasets[k]``.
        series: the source CT series (:class:`vacseg_monai.dicom.series.CTSeries`).
        out_path: file to write (parent folders are created; written via a
            temporary file and an atomic rename), or an existing folder, where the
            file is named ``SEG.<SOPInstanceUID>.dcm``
            (:func:`~vacseg_monai.dicom.outputs.output_file_name`). ``None`` (default)
            writes nothing.
        label_table: labels to describe, default :data:`vacseg_monai.labels.LABELS`.
            Segment numbers are 1..N in order of increasing label value; every
            label is described even when it has no voxel.
        root_uid: UID root for the new series and instance UIDs, default
            :data:`~vacseg_monai.dicom.outputs.DEFAULT_ROOT_UID` (see
            :func:`~vacseg_monai.dicom.outputs.check_root_uid`).
        probabilities: optional class probabilities ``(C, rows, cols, n_slices)``
            in [0, 1] with ``C == len(label_table) + 1`` (channel 0 = background,
            dropped) or ``C == len(label_table)`` (in label-table order). When
            given, a FRACTIONAL (PROBABILITY, max value 255) segmentation is
            written from them instead of a BINARY one from ``labels``; ``labels``
            is still validated. Default ``None``.
        series_description: Series Description, default says the series was
            produced automatically and needs review.
        series_number: Series Number, default 901.
        content_label: Content Label (a DICOM CS: upper case, digits, ``_``,
            space; at most 16 characters), default ``"VACSEG"``.
        content_description: Content Description, default names the software
            version and the segmented structures.
        instance_number: Instance Number, default 1.
        device_serial_number: Device Serial Number (Type 1), default ``"0"``.
        omit_empty_frames: leave out frames in which a segment has no pixel
            (default ``True``; an all-empty map still gets every frame).
        transfer_syntax_uid: default Explicit VR Little Endian; a FRACTIONAL
            SEG may also use RLE Lossless, JPEG 2000 Lossless or JPEG-LS Lossless
            (highdicom raises ``ValueError`` for other combinations).

    Returns:
        The :class:`highdicom.seg.Segmentation` (saved if ``out_path`` is given).

    Raises:
        ValueError: if the label map's or the probabilities' shape does not match
            the series, the label map holds values not in ``label_table`` or
            non-integers, probabilities are outside [0, 1], the label table is
            empty or has duplicate values, or ``root_uid`` is not a valid root.
    """
    table = _check_label_table(label_table)
    check_root_uid(root_uid)
    label_map = series_label_map(labels, series)
    segmentation_type, pixel_array = _frames(label_map, table, series, probabilities)
    del label_map
    if omit_empty_frames and not pixel_array.any():
        # highdicom cannot omit every frame; say so here rather than let it warn.
        logger.info("Label map for series %s has no foreground; encoding all frames.", series.series_instance_uid)
        omit_empty_frames = False

    descriptions = _segment_descriptions(table)
    if content_description is None:
        names = ", ".join(label.name for label in table)
        content_description = f"{SEG_MANUFACTURER} {__version__} automatic: {names}"[:64]

    # A documented table: the attributes highdicom takes, each from an argument above or from this software.
    seg = hd.seg.Segmentation(
        source_images=_source_images(series),
        pixel_array=pixel_array,
        segmentation_type=segmentation_type,
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(prefix=root_uid),
        series_number=series_number,
        sop_instance_uid=generate_uid(prefix=root_uid),
        instance_number=instance_number,
        manufacturer=SEG_MANUFACTURER,
        manufacturer_model_name=SEG_MANUFACTURER,
        software_versions=[__version__, f"highdicom {hd.__version__}"] + ([model_version[:64]] if model_version else []),
        device_serial_number=device_serial_number,
        fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY,
        max_fractional_value=255,
        content_description=content_description,
        content_label=content_label,
        transfer_syntax_uid=transfer_syntax_uid,
        omit_empty_frames=omit_empty_frames,
        series_description=series_description,
    )
    complete_veterinary_attributes(seg)
    _add_coding_scheme_identification(seg, table)
    logger.info("Built %s SEG %s (%d frames, %d segments) for series %s.", segmentation_type.value,
                seg.SOPInstanceUID, int(seg.NumberOfFrames), len(table), series.series_instance_uid)
    if out_path is not None:
        out_path = Path(out_path)
        save_atomic(seg, out_path / output_file_name(seg) if out_path.is_dir() else out_path)
    return seg


def _frames(
    label_map: np.ndarray, table: list[Label], series: CTSeries, probabilities: Any | None
) -> tuple[hd.seg.SegmentationTypeValues, np.ndarray]:
    """The segmentation type and its frames ``(n_slices, rows, cols)``: segment numbers, or fractions if given."""
    segment_map = _to_segment_numbers(label_map, table, series.series_instance_uid)
    if probabilities is None:
        # (rows, cols, n) -> (frames, rows, cols): frame k is source image k.
        return hd.seg.SegmentationTypeValues.BINARY, np.ascontiguousarray(np.moveaxis(segment_map, 2, 0))
    del segment_map
    pixel_array = _as_fractional_frames(probabilities, label_map.shape, len(table), series.series_instance_uid)
    return hd.seg.SegmentationTypeValues.FRACTIONAL, pixel_array


def _segment_descriptions(table: list[Label]) -> list[hd.seg.SegmentDescription]:
    """One segment description per label, numbered 1..N, each naming this software as its algorithm."""
    algorithm = hd.AlgorithmIdentificationSequence(
        name=SEG_MANUFACTURER,
        family=codes.DCM.ArtificialIntelligence,
        version=__version__,
    )
    return [_segment_description(number, label, algorithm) for number, label in enumerate(table, start=1)]


def _check_label_table(label_table: Sequence[Label]) -> list[Label]:
    """Return the table sorted by value; reject empty tables, duplicates and values < 1."""
    table = sorted(label_table, key=lambda label: label.value)
    if not table:
        raise ValueError("`label_table` must hold at least one label, got an empty table.")
    values = [label.value for label in table]
    if len(set(values)) != len(values) or values[0] < 1 or values[-1] > 255:
        raise ValueError(f"`label_table` values must be unique and in [1, 255], got {values}.")
    return table


def _to_numpy(array: Any) -> np.ndarray:
    """Convert a numpy array, torch tensor or MetaTensor to numpy without copying when possible."""
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def _to_segment_numbers(label_map: np.ndarray, table: list[Label], series_uid: str) -> np.ndarray:
    """Check the label values against ``table`` and map them to segment numbers 1..N (0 stays background)."""
    label_map = checked_label_map(label_map, f"Label map for series {series_uid}", table)
    known = {0} | {label.value for label in table}
    if all(label.value == number for number, label in enumerate(table, start=1)):
        return label_map.astype(np.uint8, copy=False)
    lookup = np.zeros(max(known) + 1, dtype=np.uint8)
    for number, label in enumerate(table, start=1):
        lookup[label.value] = number
    return lookup[label_map.astype(np.intp)]


def _as_fractional_frames(
    probabilities: Any, expected_shape: tuple[int, int, int], n_labels: int, series_uid: str
) -> np.ndarray:
    """Return probabilities as float32 ``(frames, rows, cols, segments)`` after validation."""
    prob = _to_numpy(probabilities)
    if prob.ndim != 4 or prob.shape[1:] != expected_shape or prob.shape[0] not in (n_labels, n_labels + 1):
        raise ValueError(
            f"`probabilities` shape {tuple(prob.shape)} does not match series {series_uid}: expected "
            f"({n_labels + 1} or {n_labels}, *{expected_shape})."
        )
    if prob.shape[0] == n_labels + 1:
        prob = prob[1:]
    prob = prob.astype(np.float32, copy=False)
    if not np.all(np.isfinite(prob)) or prob.min() < 0.0 or prob.max() > 1.0:
        raise ValueError(
            f"`probabilities` for series {series_uid} must be finite and in [0, 1], got range "
            f"[{np.nanmin(prob):.4g}, {np.nanmax(prob):.4g}]."
        )
    # (segments, rows, cols, n) -> (frames, rows, cols, segments)
    return np.ascontiguousarray(np.transpose(prob, (3, 1, 2, 0)))


def _segment_description(
    number: int, label: Label, algorithm: hd.AlgorithmIdentificationSequence
) -> hd.seg.SegmentDescription:
    """Describe one label as a segment: codes, AUTOMATIC algorithm, CIELab display colour."""
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=label.name,
        segmented_property_category=PydicomCode(label.category.value, label.category.scheme, label.category.meaning),
        segmented_property_type=PydicomCode(label.type.value, label.type.scheme, label.type.meaning),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        display_color=hd.color.CIELabColor.from_rgb(*label.color),
    )


def _source_images(series: CTSeries) -> list[Dataset]:
    """Return header-only source datasets in slice order.

    ``series.datasets`` already holds headers without pixel data; if any lacks
    the attributes highdicom needs, the headers are re-read from
    ``series.files`` with ``stop_before_pixels``.
    """
    needed = ("SOPClassUID", "SOPInstanceUID", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")
    if all(all(keyword in ds for keyword in needed) for ds in series.datasets):
        return list(series.datasets)
    logger.debug("Re-reading headers of series %s for the SEG source images.", series.series_instance_uid)
    return [pydicom.dcmread(path, stop_before_pixels=True) for path in series.files]


def _add_coding_scheme_identification(seg: hd.seg.Segmentation, table: list[Label]) -> None:
    """Identify non-PS3.16 coding schemes (e.g. the project scheme ``99VACSEG``)."""
    schemes = sorted(
        {code.scheme for label in table for code in (label.category, label.type)} - _STANDARD_SCHEMES
    )
    if not schemes:
        return
    items = []
    for scheme in schemes:
        item = Dataset()
        item.CodingSchemeDesignator = scheme
        item.CodingSchemeName = f"{SEG_MANUFACTURER} local codes"
        item.CodingSchemeResponsibleOrganization = SEG_MANUFACTURER
        items.append(item)
    seg.CodingSchemeIdentificationSequence = items


def read_seg_masks(
    path: str | os.PathLike[str], series: CTSeries, *, label_table: Sequence[Label] = LABELS
) -> dict[int, np.ndarray]:
    """Read a DICOM Segmentation of ``series`` back as one mask per label, on the series' grid.

    Segments are matched to labels by their SegmentLabel, with the names and aliases an RT
    Structure Set's ROIs are matched by (:func:`vacseg_monai.dicom.rtstruct.resolve_roi_label`),
    so the node's own SEG, whatever profile named its segments, compares with a correction.
    A FRACTIONAL segment counts where its value is at least 0.5; frames the file omits are empty.

    Args:
        path: the SEG file.
        series: the CT series it segments (:class:`vacseg_monai.dicom.series.CTSeries`).
        label_table: labels to map to (default :data:`vacseg_monai.labels.LABELS`).

    Returns:
        label number -> bool mask ``(rows, cols, n_slices)``; several segments of one label are merged.

    Raises:
        ValueError: naming the file, when it is no Segmentation, references no instance of the series,
            or none of its segments matches a label.
    """
    from vacseg_monai.dicom.rtstruct import resolve_roi_label

    try:
        seg = hd.seg.segread(path)
    except (AttributeError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable DICOM Segmentation ({exc}).") from exc
    uids = [str(ds.SOPInstanceUID) for ds in series.datasets]
    referenced = {str(uid) for _, _, uid in seg.get_source_image_uids()}
    if not referenced & set(uids):
        raise ValueError(f"{path}: the segmentation references none of the instances of series "
                         f"{series.series_instance_uid}.")
    numbers: dict[int, int] = {}
    for number in seg.get_segment_numbers():
        label = resolve_roi_label(seg.get_segment_description(number).segment_label, label_table=label_table)
        if label:
            numbers[number] = label
    if not numbers:
        names = [seg.get_segment_description(n).segment_label for n in seg.get_segment_numbers()]
        raise ValueError(f"{path}: none of its segments {names} matches a label "
                         f"({', '.join(label.name for label in label_table)}) or one of their aliases.")
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=list(numbers),
                                               assert_missing_frames_are_empty=True, dtype=np.float32)
    masks: dict[int, np.ndarray] = {}
    for channel, label in enumerate(numbers.values()):
        mask = np.moveaxis(pixels[..., channel] >= 0.5, 0, -1)  # (slices, rows, cols) -> (rows, cols, slices)
        masks[label] = masks[label] | mask if label in masks else mask
    return masks
