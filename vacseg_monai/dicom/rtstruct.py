"""RT Structure Set writer and reader.

:func:`write_rtstruct` turns a label map in a CT series' geometry into an RT
Structure Set (one ROI per entry of the label table, CLOSED_PLANAR contours per
slice with every island and every hole, even-odd convention), written with
pydicom. :func:`read_rtstruct` rasterises an RT Structure Set back onto the CT
grid, mapping ROI names to label numbers.

What every written object shares (UID root, patient/study copy, label-map
coercion, atomic save, file name) comes from :mod:`vacseg_monai.dicom.outputs`,
whose :func:`~vacseg_monai.dicom.outputs.write_outputs` is how the project writes it.

Geometry comes only from the series' LPS affine (``CTSeries.affine_lps``):
index ``(row, col, slice)`` -> patient LPS millimetres and back. Nothing is
re-derived from SliceLocation or InstanceNumber.

Overlap rule of the reader: ROIs are painted in decreasing label number, so where
ROIs overlap the lowest label number wins (Vacbag 1 over Couch 2 over Body 3): the
thin objects the project cares about are not swallowed by the body outline.
"""

from __future__ import annotations

import datetime
import logging
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydicom import Dataset, FileMetaDataset, dcmread
from pydicom.dataelem import RawDataElement
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, UID, generate_uid

from vacseg_monai import __version__
from vacseg_monai.dicom.contours import contours_to_mask, format_ds_chunks, simplify_contour, volume_to_contours
from vacseg_monai.dicom.geometry import index_to_lps, lps_to_index
from vacseg_monai.dicom.outputs import (
    DEFAULT_ROOT_UID,
    check_root_uid,
    copy_patient_and_study,
    save_atomic,
    series_label_map,
)
from vacseg_monai.labels import LABELS, Label

if TYPE_CHECKING:
    from vacseg_monai.dicom.profiles import RoiPhysicalProperty
    from vacseg_monai.dicom.series import CTSeries

__all__ = [
    "DEFAULT_ROI_ALIASES",
    "DEFAULT_SERIES_DESCRIPTION",
    "ROI_NAME_MARKERS",
    "RTSTRUCT_SOP_CLASS_UID",
    "RTStructContents",
    "normalize_roi_name",
    "read_rtstruct",
    "read_rtstruct_contents",
    "resolve_roi_label",
    "write_rtstruct",
]

logger = logging.getLogger(__name__)

RTSTRUCT_SOP_CLASS_UID = UID("1.2.840.10008.5.1.4.1.1.481.3")
# SOP class named by RTReferencedStudySequence / ReferencedStudySequence items
# (Detached Study Management, retired but the value the standard's RT examples and every TPS use).
_STUDY_SOP_CLASS_UID = UID("1.2.840.10008.3.1.2.3.1")
DEFAULT_SERIES_DESCRIPTION = "vacseg_monai automatic structures (not reviewed)"
_CONTOUR_DATA_TAG = Tag(0x3006, 0x0050)
_CONTOUR_SEQUENCE_TAG = Tag(0x3006, 0x0040)
# Explicit VR representations with a 4-byte length (PS3.5 7.1.2).
_LONG_LENGTH_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
# Contour Geometric Type (3006,0042) CS "CLOSED_PLANAR", encoded explicit VR little endian.
_CLOSED_PLANAR = struct.pack("<HH", 0x3006, 0x0042) + b"CS" + struct.pack("<H", 14) + b"CLOSED_PLANAR "

#: Suffixes the node appends to ROI names (the review mark of ``--review-policy send-marked``, a validation
#: label): a structure set sent back with them still matches its labels.
ROI_NAME_MARKERS: tuple[str, ...] = (" CHECK", " NOT FOR CLINICAL USE")

#: Normalised ROI names (see :func:`normalize_roi_name`) recognised for each label name.
DEFAULT_ROI_ALIASES: Mapping[str, tuple[str, ...]] = {
    "Vacbag": (
        "vacbag",
        "vacuumbag",
        "vaclok",
        "vaclock",
        "vacfix",
        "vacuumcushion",
        "vacuumpillow",
        "bag",
        "immobilisation",
        "immobilization",
        "immobilisationbag",
        "immobilizationbag",
    ),
    "Couch": (
        "couch",
        "couchtop",
        "couchsurface",
        "couchinterior",
        "couchexterior",
        "table",
        "tabletop",
        "treatmentcouch",
    ),
    "Body": ("body", "external", "skin", "outline", "bodyoutline", "externalcontour", "patient"),
}


# --------------------------------------------------------------------------- writer


def write_rtstruct(
    labels: Any,
    series: CTSeries,
    out_path: str | Path | None = None,
    *,
    label_table: Sequence[Label] = LABELS,
    root_uid: str = DEFAULT_ROOT_UID,
    simplify_tolerance_mm: float | None = None,
    series_description: str = DEFAULT_SERIES_DESCRIPTION,
    series_number: int = 901,
    structure_set_label: str = "VACSEG AUTO",
    now: datetime.datetime | None = None,
    roi_notes: Mapping[int, str] | None = None,
    model_version: str | None = None,
    physical_properties: Mapping[int, RoiPhysicalProperty] | None = None,
    structure_set_name: str | None = None,
) -> Dataset:
    """Write a label map in a CT series' geometry as an RT Structure Set.

    Every label of ``label_table`` becomes one ROI (name, number = label value,
    display colour, RT ROI Interpreted Type, generation algorithm AUTOMATIC). Each
    slice that holds the label gets one CLOSED_PLANAR contour per island and one per
    hole (even-odd convention), traced with marching squares at sub-pixel precision
    and referencing that slice's SOP instance. A label without voxels gives an ROI
    with no ContourSequence.

    Args:
        labels: label map, numpy array ``(rows, cols, n_slices)`` or channel-first
            ``(1, rows, cols, n_slices)`` (MetaTensor / tensor / array), integer values.
            A MetaTensor's affine must match the series.
        series: the CT series (:class:`vacseg_monai.dicom.series.CTSeries`) the labels
            were computed on.
        out_path: file to save to atomically (explicit VR little endian, with file meta); ``None``
            (default) only returns the dataset. :func:`vacseg_monai.dicom.outputs.write_outputs` names
            the file and saves it.
        label_table: labels to write (default :data:`vacseg_monai.labels.LABELS`).
        root_uid: UID root for the new series and SOP instance (default
            :data:`~vacseg_monai.dicom.outputs.DEFAULT_ROOT_UID`; see
            :func:`~vacseg_monai.dicom.outputs.check_root_uid`).
        simplify_tolerance_mm: Douglas-Peucker tolerance in mm applied to every contour
            (default None: no simplification beyond dropping collinear points).
        series_description: SeriesDescription (default says structures are automatic).
        series_number: SeriesNumber (default 901).
        structure_set_label: StructureSetLabel, at most 16 characters (default "VACSEG AUTO").
        now: creation date/time (default: the current local time).
        roi_notes: a short note per label value (e.g. its quality score), written as the ROI Observation
            Description and appended to the ROI Generation Description within its 64 characters (default None).
        model_version: the model that drew the contours (:func:`vacseg_monai.paths.model_version`), a value of
            Software Versions (default None).
        physical_properties: label value -> the ROI Physical Properties Sequence item of its observation
            (:meth:`vacseg_monai.dicom.profiles.OutputProfile.physical_properties`); where the value came from
            is added to the ROI Observation Description (default None: no physical properties).
        structure_set_name: Structure Set Name, at most 64 characters (default None: not written).

    Returns:
        the RT Structure Set dataset (with ``file_meta``).

    Raises:
        ValueError: when the label map's shape or affine does not match the series,
            its values are not integers, or an argument is invalid.
    """
    label_map = series_label_map(labels, series)
    check_root_uid(root_uid)
    if simplify_tolerance_mm is not None and simplify_tolerance_mm < 0:
        raise ValueError(f"`simplify_tolerance_mm` must be None or >= 0, got {simplify_tolerance_mm}.")
    if len(structure_set_label) > 16:
        raise ValueError(f"`structure_set_label` must have at most 16 characters, got {structure_set_label!r}.")
    if structure_set_name is not None and len(structure_set_name) > 64:
        raise ValueError(f"`structure_set_name` must have at most 64 characters, got {structure_set_name!r}.")
    _warn_unknown_values(label_map, label_table)

    ds = _structure_set_header(
        series, now or datetime.datetime.now(), root_uid=root_uid, series_description=series_description,
        series_number=series_number, structure_set_label=structure_set_label, model_version=model_version,
    )
    if structure_set_name:
        ds.StructureSetName = structure_set_name
    _add_rois(ds, label_map, series, label_table, simplify_tolerance_mm, dict(roi_notes or {}),
              dict(physical_properties or {}))
    # Approval: automatic contours are never approved by this software.
    ds.ApprovalStatus = "UNAPPROVED"
    ds.file_meta = _file_meta(ds.SOPInstanceUID)
    if out_path is not None:
        save_atomic(ds, out_path)
    return ds


def _structure_set_header(
    series: CTSeries,
    now: datetime.datetime,
    *,
    root_uid: str,
    series_description: str,
    series_number: int,
    structure_set_label: str,
    model_version: str | None,
) -> Dataset:
    """The structure set's modules other than its ROIs: a documented table of DICOM attributes.

    SOP Common, Patient and Study (copied from the CT), RT Series, General Equipment, Frame of
    Reference (shared with the CT) and the Structure Set's own label, date and time.
    """
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ct = series.datasets[0]
    ds = Dataset()
    ds.SpecificCharacterSet = ct.get("SpecificCharacterSet", "ISO_IR 100")
    ds.InstanceCreationDate = date
    ds.InstanceCreationTime = time
    ds.SOPClassUID = RTSTRUCT_SOP_CLASS_UID
    ds.SOPInstanceUID = generate_uid(prefix=root_uid)
    copy_patient_and_study(ct, ds)
    ref_study = Dataset()
    ref_study.ReferencedSOPClassUID = _STUDY_SOP_CLASS_UID
    ref_study.ReferencedSOPInstanceUID = str(series.study_instance_uid)
    ds.ReferencedStudySequence = DicomSequence([ref_study])
    # RT Series
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = generate_uid(prefix=root_uid)
    ds.SeriesNumber = series_number
    ds.SeriesDate = date
    ds.SeriesTime = time
    ds.SeriesDescription = series_description
    ds.OperatorsName = ""
    # General Equipment
    ds.Manufacturer = "vacseg_monai"
    ds.ManufacturerModelName = "vacseg_monai"
    ds.SoftwareVersions = [__version__, model_version[:64]] if model_version else __version__
    # Frame of Reference (shared with the CT)
    ds.FrameOfReferenceUID = str(series.frame_of_reference_uid)
    ds.PositionReferenceIndicator = ct.get("PositionReferenceIndicator", "")
    # Structure Set
    ds.StructureSetLabel = structure_set_label
    ds.StructureSetDate = date
    ds.StructureSetTime = time
    ds.InstanceNumber = 1
    return ds


def _add_rois(
    ds: Dataset,
    label_map: np.ndarray,
    series: CTSeries,
    label_table: Sequence[Label],
    simplify_tolerance_mm: float | None,
    notes: Mapping[int, str],
    physical_properties: Mapping[int, RoiPhysicalProperty],
) -> None:
    """Add the referenced frame of reference, one ROI per label, its contours and its observation to ``ds``."""
    sop_class = UID(str(series.sop_class_uid))
    sop_uids = [str(uid) for uid in series.sop_instance_uids]
    for_uid = str(series.frame_of_reference_uid)
    ds.ReferencedFrameOfReferenceSequence = DicomSequence(
        [_referenced_frame_of_reference(for_uid, str(series.study_instance_uid), str(series.series_instance_uid), sop_class, sop_uids)]
    )
    ds.StructureSetROISequence = DicomSequence(
        [_structure_set_roi(label, for_uid, notes.get(label.value)) for label in label_table]
    )
    # ROI Contour
    spacing = tuple(float(v) for v in series.pixel_spacing)
    affine = np.asarray(series.affine_lps, dtype=np.float64)
    ds.ROIContourSequence = DicomSequence(
        [
            _roi_contour(label_map, label, affine, spacing, sop_class, sop_uids, simplify_tolerance_mm)
            for label in label_table
        ]
    )
    _keep_raw_contours(ds)
    # RT ROI Observations
    ds.RTROIObservationsSequence = DicomSequence(
        [
            _observation(index + 1, label, notes.get(label.value), physical_properties.get(label.value))
            for index, label in enumerate(label_table)
        ]
    )


def _file_meta(sop_instance_uid: str) -> FileMetaDataset:
    """The file meta information of an RT Structure Set (explicit VR little endian)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RTSTRUCT_SOP_CLASS_UID
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"VACSEG_{__version__}"[:16]
    return meta


def _warn_unknown_values(label_map: np.ndarray, label_table: Sequence[Label]) -> None:
    known = {0} | {label.value for label in label_table}
    if known == set(range(max(known) + 1)) and int(label_map.min()) >= 0 and int(label_map.max()) <= max(known):
        return  # cheap check for the usual contiguous table
    present = np.unique(label_map)
    unknown = sorted(int(v) for v in present if int(v) not in known)
    if unknown:
        logger.warning("Label values %s are not in the label table and are not written.", unknown)


def _referenced_frame_of_reference(
    for_uid: str, study_uid: str, series_uid: str, sop_class: UID, sop_uids: Sequence[str]
) -> Dataset:
    images = []
    for uid in sop_uids:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = uid
        images.append(item)
    ref_series = Dataset()
    ref_series.SeriesInstanceUID = series_uid
    ref_series.ContourImageSequence = DicomSequence(images)
    ref_study = Dataset()
    ref_study.ReferencedSOPClassUID = _STUDY_SOP_CLASS_UID
    ref_study.ReferencedSOPInstanceUID = study_uid
    ref_study.RTReferencedSeriesSequence = DicomSequence([ref_series])
    ref_for = Dataset()
    ref_for.FrameOfReferenceUID = for_uid
    ref_for.RTReferencedStudySequence = DicomSequence([ref_study])
    return ref_for


def _structure_set_roi(label: Label, for_uid: str, note: str | None = None) -> Dataset:
    item = Dataset()
    item.ROINumber = label.value
    item.ReferencedFrameOfReferenceUID = for_uid
    item.ROIName = label.name[:64]
    item.ROIDescription = label.description[:64]
    item.ROIGenerationAlgorithm = "AUTOMATIC"
    generation = f"vacseg_monai {__version__}" + (f"; {note}" if note else "")
    item.ROIGenerationDescription = generation[:64]  # LO
    return item


def _observation(
    number: int, label: Label, note: str | None = None, physical: RoiPhysicalProperty | None = None
) -> Dataset:
    item = Dataset()
    item.ObservationNumber = number
    item.ReferencedROINumber = label.value
    item.ROIObservationLabel = label.name[:16]  # SH
    description = "; ".join(text for text in (note, physical.note() if physical else None) if text)
    if description:
        item.ROIObservationDescription = description[:1024]  # ST
    item.RTROIInterpretedType = label.rt_roi_type.value
    item.ROIInterpreter = ""
    if physical is not None:
        prop = Dataset()
        prop.ROIPhysicalProperty = physical.property.value
        prop.ROIPhysicalPropertyValue = f"{physical.value:.6g}"  # DS: at most 16 characters
        item.ROIPhysicalPropertiesSequence = DicomSequence([prop])
    return item


def _roi_contour(
    label_map: np.ndarray,
    label: Label,
    affine: np.ndarray,
    spacing: tuple[float, float],
    sop_class: UID,
    sop_uids: Sequence[str],
    simplify_tolerance_mm: float | None,
) -> Dataset:
    item = Dataset()
    item.ROIDisplayColor = list(label.color)
    polygons = []
    for k, polygon in volume_to_contours(label_map == label.value):
        if simplify_tolerance_mm:
            polygon = simplify_contour(polygon, simplify_tolerance_mm, spacing)
            if len(polygon) < 3:
                continue
        polygons.append((k, polygon))
    if polygons:
        item[_CONTOUR_SEQUENCE_TAG] = _contour_sequence(polygons, affine, sop_class, sop_uids)
    else:
        logger.info("Label %s (%d) has no voxels: ROI written without contours.", label.name, label.value)
    item.ReferencedROINumber = label.value
    return item


def _keep_raw_contours(ds: Dataset) -> None:
    """Let pydicom write the raw Contour Sequences as they are (explicit VR little endian, ASCII only).

    pydicom decodes and re-encodes every element of a dataset whose original encoding is not the one
    it writes, nested sequences included; marking the structure set and its ROI Contour items as
    already encoded that way (with their character set, once the items are in the structure set)
    keeps the contours raw. Other sequences' items are still checked and encoded by pydicom.
    """
    ds.set_original_encoding(False, True, ds._character_set)
    for item in ds.ROIContourSequence:
        if _CONTOUR_SEQUENCE_TAG in item:
            item.set_original_encoding(False, True, item._character_set)


def _contour_sequence(
    polygons: Sequence[tuple[int, np.ndarray]], affine: np.ndarray, sop_class: UID, sop_uids: Sequence[str]
) -> RawDataElement:
    """The Contour Sequence of one ROI, encoded explicit VR little endian in one pass.

    One CLOSED_PLANAR item per ``(slice, polygon)``, numbered from 1, referencing that slice's
    image. Built as bytes rather than as one pydicom Dataset per contour: a real CT's couch and
    body give hundreds of polygons, and building and then writing their datasets took several
    times longer than tracing them. pydicom decodes the raw sequence when it is read.
    """
    counts = np.array([len(polygon) for _, polygon in polygons], dtype=np.int64)
    index = np.empty((int(counts.sum()), 3), dtype=np.float64)
    index[:, :2] = np.concatenate([polygon for _, polygon in polygons])
    index[:, 2] = np.repeat([float(k) for k, _ in polygons], counts)
    data = format_ds_chunks(index_to_lps(affine, index), counts * 3)
    class_uid = _padded(str(sop_class), b"\0")
    references: dict[int, bytes] = {}  # slice -> its encoded Contour Image Sequence
    items = []
    for number, ((k, _), n_points, values) in enumerate(zip(polygons, counts.tolist(), data), start=1):
        if k not in references:
            image = _element(0x00081150, b"UI", class_uid) + _element(0x00081155, b"UI", _padded(sop_uids[k], b"\0"))
            references[k] = _element(0x30060016, b"SQ", _item(image))
        if len(values) > 0xFFFF:  # PS3.5 6.2.2: too long for a 2-byte length, written as UN (as pydicom would)
            logger.warning("Contour %d on slice %d has %d points: its ContourData (%d bytes) is written with VR UN.",
                           number, k, n_points, len(values))
        items.append(_item(
            references[k]
            + _CLOSED_PLANAR
            + _element(0x30060046, b"IS", _padded(str(n_points), b" "))
            + _element(0x30060048, b"IS", _padded(str(number), b" "))
            + _element(0x30060050, b"DS" if len(values) <= 0xFFFF else b"UN", values)
        ))
    value = b"".join(items)
    return RawDataElement(_CONTOUR_SEQUENCE_TAG, "SQ", len(value), value, 0, False, True)


def _padded(text: str, pad: bytes) -> bytes:
    """ASCII ``text`` padded with ``pad`` to an even length."""
    value = text.encode("ascii")
    return value + pad if len(value) % 2 else value


def _element(tag: int, vr: bytes, value: bytes) -> bytes:
    """One data element, explicit VR little endian; ``value`` already of even length."""
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr
    if vr in _LONG_LENGTH_VRS:
        return head + struct.pack("<HI", 0, len(value)) + value
    return head + struct.pack("<H", len(value)) + value


def _item(body: bytes) -> bytes:
    """A sequence item of defined length holding the encoded elements ``body``."""
    return struct.pack("<HHI", 0xFFFE, 0xE000, len(body)) + body


# --------------------------------------------------------------------------- reader


@dataclass
class RTStructContents:
    """What :func:`read_rtstruct_contents` found in an RT Structure Set.

    Attributes:
        labels: label map ``(rows, cols, n_slices)`` uint8 on the CT grid.
        roi_labels: ROI name -> label number, for every ROI that was rasterised.
        skipped_rois: names of ROIs that matched no label (not rasterised).
        masks: label number -> bool mask ``(rows, cols, n_slices)`` of every ROI mapped to it, before the
            overlap rule: where ROIs overlap, each keeps its own voxels (what edit metrics compare).
    """

    labels: np.ndarray
    roi_labels: dict[str, int] = field(default_factory=dict)
    skipped_rois: list[str] = field(default_factory=list)
    masks: dict[int, np.ndarray] = field(default_factory=dict)


def normalize_roi_name(name: str) -> str:
    """Normalise an ROI name for matching: lower case, letters and digits only,
    without a trailing copy number.

    ``"VacBag"``, ``"vac bag"``, ``"Vacbag_1"`` and ``"VACBAG"`` all give ``"vacbag"``;
    ``"Couch Top"`` gives ``"couchtop"``.
    """
    text = re.sub(r"[\s_\-.]*\(?\d+\)?$", "", str(name).strip())  # "Vacbag_1", "Body (2)"
    return re.sub(r"[^0-9a-z]", "", text.lower())


def resolve_roi_label(
    roi_name: str,
    *,
    name_map: Mapping[str, int | str | None] | None = None,
    label_table: Sequence[Label] = LABELS,
) -> int | None:
    """Return the label number an ROI name maps to, or None when it matches nothing.

    Lookup order: ``name_map`` by exact name, then ``name_map`` by normalised name,
    then the label table's own names, then :data:`DEFAULT_ROI_ALIASES` (all compared
    after :func:`normalize_roi_name`), each also with a trailing :data:`ROI_NAME_MARKERS`
    suffix removed (``"Vacbag CHECK"`` is the Vacbag). A ``name_map`` value may be a label
    number, a label name, or ``None``/``0`` to skip that ROI on purpose.

    Args:
        roi_name: the ROIName as written in the structure set.
        name_map: user mapping of ROI names to labels (default None).
        label_table: labels to map to (default :data:`vacseg_monai.labels.LABELS`).

    Raises:
        ValueError: when a ``name_map`` value names no label of the table.
    """
    by_name = {normalize_roi_name(label.name): label.value for label in label_table}
    values = {label.value for label in label_table}
    key = normalize_roi_name(roi_name)
    if name_map:
        normalised_map = {normalize_roi_name(k): v for k, v in name_map.items()}
        for lookup, table in ((roi_name, name_map), (key, normalised_map)):
            if lookup in table:
                target = table[lookup]
                if target is None or target == 0:
                    return None
                if isinstance(target, str):
                    if normalize_roi_name(target) not in by_name:
                        raise ValueError(f"name_map maps {roi_name!r} to unknown label name {target!r}.")
                    return by_name[normalize_roi_name(target)]
                if int(target) not in values:
                    raise ValueError(
                        f"name_map maps {roi_name!r} to label {target}, which is not in the label table {sorted(values)}."
                    )
                return int(target)
    found = _label_of_key(key, by_name)
    if found is None:
        for marker in map(normalize_roi_name, ROI_NAME_MARKERS):
            if key.endswith(marker) and len(key) > len(marker):
                found = _label_of_key(key.removesuffix(marker), by_name)
                if found is not None:
                    break
    return found


def _label_of_key(key: str, by_name: Mapping[str, int]) -> int | None:
    """The label of a normalised ROI name: a label's own name, then :data:`DEFAULT_ROI_ALIASES`."""
    if key in by_name:
        return by_name[key]
    for label_name, aliases in DEFAULT_ROI_ALIASES.items():
        target_key = normalize_roi_name(label_name)
        if key in aliases and target_key in by_name:
            return by_name[target_key]
    return None


def read_rtstruct(
    rtstruct: str | Path | Dataset,
    series: CTSeries,
    *,
    name_map: Mapping[str, int | str | None] | None = None,
    label_table: Sequence[Label] = LABELS,
    slice_tolerance: float = 0.1,
) -> np.ndarray:
    """Rasterise an RT Structure Set onto a CT series' grid as a label map.

    See :func:`read_rtstruct_contents` (this returns only its ``labels``); unknown ROIs
    are skipped with a log line.

    Returns:
        uint8 label map ``(rows, cols, n_slices)``.
    """
    return read_rtstruct_contents(
        rtstruct, series, name_map=name_map, label_table=label_table, slice_tolerance=slice_tolerance
    ).labels


def read_rtstruct_contents(
    rtstruct: str | Path | Dataset,
    series: CTSeries,
    *,
    name_map: Mapping[str, int | str | None] | None = None,
    label_table: Sequence[Label] = LABELS,
    slice_tolerance: float = 0.1,
) -> RTStructContents:
    """Rasterise an RT Structure Set onto a CT series' grid and report what was mapped.

    Each CLOSED_PLANAR contour is mapped to index space with the inverse of the
    series' LPS affine and assigned to the slice it lies on; the contours of one ROI
    on one slice are filled at pixel centres with the even-odd rule (holes stay
    empty). ROI names map to labels through :func:`resolve_roi_label`. Where ROIs
    overlap, the lowest label number wins (labels are painted in decreasing number);
    several ROIs mapping to one label are united.

    Args:
        rtstruct: path of an RTSTRUCT file or a dataset already read.
        series: the CT series the structure set refers to.
        name_map: ROI name -> label number / label name / None (skip); see
            :func:`resolve_roi_label` (default None: built-in normalisation only).
        label_table: labels to map to (default :data:`vacseg_monai.labels.LABELS`).
        slice_tolerance: largest distance of a contour point from its slice plane,
            as a fraction of the slice spacing (default 0.1).

    Returns:
        :class:`RTStructContents` with the uint8 label map, the ROI -> label mapping
        and the names of skipped ROIs.

    Raises:
        ValueError: when the file is not an RT Structure Set, an ROI refers to another
            frame of reference, or a contour lies off every slice of the series (the
            message names the ROI and the contour's z).
    """
    ds = rtstruct if isinstance(rtstruct, Dataset) else dcmread(rtstruct)
    where = getattr(ds, "filename", None) or ds.get("SOPInstanceUID", "<dataset>")
    if ds.get("SOPClassUID") != RTSTRUCT_SOP_CLASS_UID:
        raise ValueError(
            f"{where} is not an RT Structure Set (SOPClassUID {ds.get('SOPClassUID')!r}, "
            f"expected {RTSTRUCT_SOP_CLASS_UID})."
        )
    first = series.datasets[0]
    shape = (int(first.Rows), int(first.Columns), len(series.datasets))
    affine = np.asarray(series.affine_lps, dtype=np.float64)
    for_uid = str(series.frame_of_reference_uid)

    rois = {int(item.ROINumber): item for item in ds.get("StructureSetROISequence", [])}
    masks: dict[int, np.ndarray] = {}
    result = RTStructContents(labels=np.zeros(shape, dtype=np.uint8))
    for roi_contour in ds.get("ROIContourSequence", []):
        number = int(roi_contour.ReferencedROINumber)
        roi = rois.get(number)
        name = str(roi.ROIName) if roi is not None and "ROIName" in roi else f"ROI {number}"
        value = resolve_roi_label(name, name_map=name_map, label_table=label_table)
        if value is None:
            logger.info("Skipping ROI %r (number %d) of %s: no label matches its name.", name, number, where)
            result.skipped_rois.append(name)
            continue
        roi_for = roi.get("ReferencedFrameOfReferenceUID") if roi is not None else None
        if roi_for and str(roi_for) != for_uid:
            raise ValueError(
                f"ROI {name!r} of {where} refers to frame of reference {roi_for}, but series "
                f"{series.series_instance_uid} has {for_uid}."
            )
        mask = masks.setdefault(value, np.zeros(shape, dtype=bool))
        for k, polygons in _slice_polygons(
            roi_contour, name, affine, shape, slice_tolerance, where, str(series.series_instance_uid)
        ).items():
            mask[:, :, k] |= contours_to_mask(polygons, shape[:2])
        result.roi_labels[name] = value
    for value in sorted(masks, reverse=True):
        result.labels[masks[value]] = value
    result.masks = masks
    return result


def _slice_polygons(
    roi_contour: Dataset,
    name: str,
    affine: np.ndarray,
    shape: tuple[int, int, int],
    slice_tolerance: float,
    where: Any,
    series_uid: str,
) -> dict[int, list[np.ndarray]]:
    """Group an ROI's closed contours by slice index as (row, col) polygons."""
    slice_spacing = float(np.linalg.norm(affine[:3, 2]))
    by_slice: dict[int, list[np.ndarray]] = {}
    for contour in _iter_contours(roi_contour):
        geometric_type = str(contour.get("ContourGeometricType", ""))
        if geometric_type != "CLOSED_PLANAR":
            logger.info("Skipping %s contour of ROI %r in %s (only CLOSED_PLANAR is filled).", geometric_type, name, where)
            continue
        data = _contour_data(contour)
        if data.size < 9 or data.size % 3:
            logger.warning("Skipping contour of ROI %r in %s with %d coordinates.", name, where, data.size)
            continue
        points = data.reshape(-1, 3)
        index = lps_to_index(affine, points)
        k = int(np.rint(np.median(index[:, 2])))
        off = float(np.abs(index[:, 2] - k).max())
        if k < 0 or k >= shape[2] or off > slice_tolerance:
            z = float(points[:, 2].mean())
            where_k = (
                f"beyond the series' {shape[2]} slices (index {k})"
                if k < 0 or k >= shape[2]
                else f"{off * slice_spacing:.3f} mm from the plane of slice {k} (tolerance "
                f"{slice_tolerance * slice_spacing:.3f} mm)"
            )
            raise ValueError(
                f"ROI {name!r} in {where}: a contour at z = {z:.3f} mm lies off every slice of series "
                f"{series_uid}: {where_k}. Was it drawn on another CT series?"
            )
        by_slice.setdefault(k, []).append(index[:, :2])
    return by_slice


def _contour_data(contour: Dataset) -> np.ndarray:
    """ContourData as float64, parsed straight from the raw bytes when still unread.

    pydicom would build one DSfloat object per number (seconds for a large structure
    set); numpy parses the backslash-separated ASCII in one go. A value over 64 kB, written
    with VR UN in an explicit VR file, stays bytes once pydicom has read it: parsed the same way.
    """
    element = contour.get_item(_CONTOUR_DATA_TAG)
    if element is None:
        return np.zeros(0)
    if (isinstance(element, RawDataElement) or isinstance(element.value, bytes)) and element.value is not None:
        text = bytes(element.value).strip(b" \x00")
        if not text:
            return np.zeros(0)
        try:
            return np.array(text.split(b"\\"), dtype=np.bytes_).astype(np.float64)
        except ValueError:
            pass  # unusual formatting: let pydicom parse it
    return np.asarray(contour.ContourData, dtype=np.float64)


def _iter_contours(roi_contour: Dataset) -> Iterable[Dataset]:
    return roi_contour.get("ContourSequence", []) or []
