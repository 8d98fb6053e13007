"""Clinic DICOM exports (CT series + RT Structure Sets) to the training layout.

The input of :func:`convert_exports` is a folder holding, per patient, a CT
series and an RT Structure Set that references it, in any folder structure and
with any file names. Every file's header is read once (with the series reader's
own reader, :mod:`vacseg_monai.dicom.series`); CT Image Storage instances are
grouped by SeriesInstanceUID and every RTSTRUCT is matched to the CT series it
references (the series UIDs of its Referenced Frame of Reference Sequence, else
the SOP instances its contours reference, else the one CT series that shares its
FrameOfReferenceUID). Each matched series is read from its files with
:func:`vacseg_monai.dicom.series.read_series_files`, the structure set is
rasterised onto it with :func:`vacseg_monai.dicom.rtstruct.read_rtstruct_contents`
(ROI names mapped to labels by its ``name_map`` rules), and the patient is
written by the training-layout writers of :mod:`vacseg_monai.datasets`::

    npy   (default)   <out>/<patient>/img/<i>.npy     int16 HU,     (1, rows, cols)
                      <out>/<patient>/mask/<i>.npy    uint8 labels, (1, rows, cols)
    nifti             <out>/<patient>/image.nii.gz    int16 HU,     (rows, cols, n_slices)
                      <out>/<patient>/label.nii.gz    uint8 labels, same shape, same RAS affine
    both              <out>/npy/<patient>/...  and  <out>/nifti/<patient>/...

which is what :func:`vacseg_monai.datasets.discover_patients` reads (one layout per
patient folder, hence the two trees for ``both``). ``<patient>`` is the PatientID
made safe for a file name, with ``_1``, ``_2``, ... appended when a patient has
several series. A report of what was converted and what was skipped, and why, is
written to ``<out>/conversion_report.json`` and ``.csv``.

Each patient's annotation is what its structure set really contains: the labels that
one of its ROIs maps to (by the label table's names and aliases, or ``name_map``).
A label no ROI maps to is unknown for that patient, not background: the patient
folder gets an ``annotation.json`` listing the labels it has (partial labels, see
:mod:`vacseg_monai.partial_labels`), and the report's ``annotated_labels`` says the
same. A listed label without a voxel (an ROI left empty) is known absent.

:func:`convert_series_files` converts one series given as files with the structure
set(s) drawn on it, by the same steps; the node's corrections come in through it
(:mod:`vacseg_monai.service.training_data`).
"""

from __future__ import annotations

import argparse
import csv
import enum
import io
import json
import logging
import os
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage

from vacseg_monai.datasets import write_nifti_patient, write_npy_patient
from vacseg_monai.dicom.errors import UnreadableFileError
from vacseg_monai.dicom.rtstruct import RTSTRUCT_SOP_CLASS_UID, read_rtstruct_contents
from vacseg_monai.dicom.series import _read as read_dicom_header
from vacseg_monai.dicom.series import _sop_class as sop_class_of
from vacseg_monai.dicom.series import read_series_files
from vacseg_monai.labels import BACKGROUND, LABELS, label_by_name

__all__ = [
    "REPORT_CSV",
    "REPORT_JSON",
    "ConversionRecord",
    "ConversionReport",
    "OutputFormat",
    "SkipReason",
    "add_conversion_options",
    "convert_exports",
    "convert_series_files",
    "name_map_from_args",
    "parse_conversion_options",
    "parse_name_map",
    "patient_folder_name",
]

logger = logging.getLogger(__name__)

#: Report file names inside the output folder.
REPORT_JSON = "conversion_report.json"
REPORT_CSV = "conversion_report.csv"

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_SKIP_WORDS = frozenset({"", "0", "none", "null", "skip", "ignore", "-"})


class OutputFormat(str, enum.Enum):
    """Training layouts :func:`convert_exports` writes."""

    NPY = "npy"
    NIFTI = "nifti"
    BOTH = "both"


class SkipReason(str, enum.Enum):
    """Why an input item was not converted (the ``reason`` column of the report)."""

    NO_RTSTRUCT = "no_rtstruct"
    MISSING_SERIES = "missing_series"
    NO_KNOWN_ROI = "no_known_roi"
    EMPTY_LABELS = "empty_labels"
    UNREADABLE_SERIES = "unreadable_series"
    UNREADABLE_RTSTRUCT = "unreadable_rtstruct"
    UNREADABLE_FILE = "unreadable_file"
    SUPERSEDED_RTSTRUCT = "superseded_rtstruct"
    NO_CORRECTION = "no_correction"
    CORRECTION_NOT_MEASURED = "correction_not_measured"


# --------------------------------------------------------------------------- report


@dataclass
class ConversionRecord:
    """One line of the conversion report: a converted series or a skipped item.

    Attributes:
        status: ``"converted"`` or ``"skipped"``.
        reason: a :class:`SkipReason` value for skipped items, ``""`` when converted.
        detail: human-readable explanation (the reader's error message for unreadable input).
        patient_id: PatientID from the DICOM header.
        output: patient folder name in the output (converted only).
        series_instance_uid: the CT series (or the one an RTSTRUCT references).
        rtstruct: path of the RT Structure Set used or skipped.
        ct_folder: common parent folder of the CT files.
        n_slices: slices written.
        rows: rows per slice.
        cols: columns per slice.
        roi_labels: ROI name -> label number for the ROIs that were rasterised.
        roi_names: every ROI name of the structure set.
        voxels: label name -> voxel count in the written label map.
        annotated_labels: names of the labels the structure set contains (an ROI maps to them), in label
            order; the others are unknown for this patient (written to ``annotation.json`` when some are).
    """

    status: str
    reason: str = ""
    detail: str = ""
    patient_id: str = ""
    output: str = ""
    series_instance_uid: str = ""
    rtstruct: str = ""
    ct_folder: str = ""
    n_slices: int = 0
    rows: int = 0
    cols: int = 0
    roi_labels: dict[str, int] = field(default_factory=dict)
    roi_names: list[str] = field(default_factory=list)
    voxels: dict[str, int] = field(default_factory=dict)
    annotated_labels: list[str] = field(default_factory=list)

    @property
    def converted(self) -> bool:
        """True when this record is a converted series."""
        return self.status == "converted"


@dataclass
class ConversionReport:
    """What :func:`convert_exports` did.

    Attributes:
        input_dir: the export folder.
        output_dir: the training data folder.
        format: the :class:`OutputFormat` value written.
        records: converted series first (by output folder), then skipped items.
    """

    input_dir: str
    output_dir: str
    format: str
    records: list[ConversionRecord] = field(default_factory=list)

    @property
    def converted(self) -> list[ConversionRecord]:
        """The converted series."""
        return [r for r in self.records if r.converted]

    @property
    def skipped(self) -> list[ConversionRecord]:
        """The skipped items."""
        return [r for r in self.records if not r.converted]

    def as_dict(self) -> dict[str, Any]:
        """The report as plain JSON-serialisable data."""
        return {
            "input_dir": self.input_dir,
            "output_dir": self.output_dir,
            "format": self.format,
            "converted": len(self.converted),
            "skipped": len(self.skipped),
            "records": [asdict(r) for r in self.records],
        }

    def table(self) -> str:
        """A plain-text table of the report, one line per record."""
        header = ("STATUS", "OUTPUT", "PATIENT ID", "SERIES UID", "SLICES", "LABELS / REASON")
        rows = [header]
        for r in self.records:
            if r.converted:
                what = ", ".join(
                    f"{name} {r.voxels.get(name, 0)}" if name in r.annotated_labels else f"{name} unknown"
                    for name in (label.name for label in LABELS)
                )
            else:
                what = f"{r.reason}: {r.detail}"
            rows.append((r.status, r.output or "-", r.patient_id or "-", r.series_instance_uid or "-",
                         str(r.n_slices) if r.n_slices else "-", what))
        widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths)) + "  " + row[-1] for row in rows]
        lines.append(f"{len(self.converted)} converted, {len(self.skipped)} skipped.")
        return "\n".join(lines)

    def save(self, folder: str | Path) -> tuple[Path, Path]:
        """Write :data:`REPORT_JSON` and :data:`REPORT_CSV` into ``folder``.

        Returns:
            the JSON and CSV paths.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        json_path, csv_path = folder / REPORT_JSON, folder / REPORT_CSV
        json_path.write_text(json.dumps(self.as_dict(), indent=2) + "\n", encoding="utf-8")
        columns = list(ConversionRecord.__dataclass_fields__)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for record in self.records:
            row = asdict(record)
            row["roi_labels"] = json.dumps(row["roi_labels"])
            row["voxels"] = json.dumps(row["voxels"])
            row["roi_names"] = ";".join(row["roi_names"])
            row["annotated_labels"] = ";".join(row["annotated_labels"])
            writer.writerow(row)
        csv_path.write_text(buffer.getvalue(), encoding="utf-8")
        return json_path, csv_path


# --------------------------------------------------------------------------- name map


def _label_target(value: Any, key: str, where: str) -> int | None:
    """Validate one name-map target: a label number, a label name, or a skip word."""
    values = {label.value for label in LABELS}
    if value is None or (isinstance(value, str) and value.strip().lower() in _SKIP_WORDS):
        return None
    if isinstance(value, bool):
        raise ValueError(f"{where}: ROI {key!r} maps to {value!r}; expected a label number, name or null.")
    if isinstance(value, (int, np.integer)) or (isinstance(value, str) and value.strip().isdigit()):
        number = int(value)
        if number == BACKGROUND:
            return None
        if number not in values:
            raise ValueError(
                f"{where}: ROI {key!r} maps to label {number}, which is not in the label table "
                f"{sorted(values)} ({', '.join(f'{lb.value} {lb.name}' for lb in LABELS)})."
            )
        return number
    if isinstance(value, str):
        try:
            return label_by_name(value.strip()).value
        except KeyError:
            raise ValueError(
                f"{where}: ROI {key!r} maps to unknown label {value!r}; known labels are "
                f"{[lb.name for lb in LABELS]} (or a number, or 'none' to skip the ROI)."
            ) from None
    raise ValueError(f"{where}: ROI {key!r} maps to {value!r}; expected a label number, name or null.")


def parse_name_map(
    pairs: Iterable[str] = (), json_file: str | Path | None = None
) -> dict[str, int | None]:
    """Build an ROI name map from ``KEY=LABEL`` strings and/or a JSON file.

    ``LABEL`` is a label number or name from :data:`vacseg_monai.labels.LABELS`, or
    ``none``/``skip``/``0`` to ignore that ROI on purpose. The JSON file holds one
    object ``{"ROI name": label number | "label name" | null}``. ``pairs`` override the
    file. Keys are matched by :func:`vacseg_monai.dicom.rtstruct.resolve_roi_label`
    (exact, then normalised), before the built-in aliases.

    Args:
        pairs: ``KEY=LABEL`` strings (default none).
        json_file: path of a JSON object (default None).

    Returns:
        ROI name -> label number (None = skip).

    Raises:
        ValueError: for a malformed pair, an unreadable or non-object JSON file, or an
            unknown label.
    """
    mapping: dict[str, int | None] = {}
    if json_file is not None:
        path = Path(json_file)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"Cannot read name map JSON file {path}: {exc}.") from exc
        if not isinstance(data, dict):
            raise ValueError(
                f"Name map JSON file {path} must hold one object {{\"ROI name\": label}}, got {type(data).__name__}."
            )
        for key, value in data.items():
            mapping[str(key)] = _label_target(value, str(key), f"name map {path}")
    for pair in pairs:
        key, sep, value = str(pair).rpartition("=")
        if not sep or not key.strip():
            raise ValueError(f"Name map entry {pair!r} must look like 'ROI name=LABEL' (e.g. 'PTV=none', 'Table=Couch').")
        mapping[key.strip()] = _label_target(value.strip(), key.strip(), f"name map entry {pair!r}")
    return mapping


def name_map_from_args(items: Iterable[str]) -> dict[str, int | None]:
    """The name map of repeated ``--name-map`` arguments: ``ROI=LABEL`` pairs, or ``.json`` files read whole.

    Pairs override the files, as in :func:`parse_name_map`.

    Raises:
        ValueError: as :func:`parse_name_map`.
    """
    pairs, files = [], []
    for item in items:
        (files if item.lower().endswith(".json") and "=" not in item else pairs).append(item)
    mapping: dict[str, int | None] = {}
    for path in files:
        mapping.update(parse_name_map(json_file=path))
    mapping.update(parse_name_map(pairs))
    return mapping


def add_conversion_options(parser: argparse.ArgumentParser, output_group: Any = None, *,
                           format_help: str | None = None) -> None:
    """The options every writer of training data from DICOM shares: ``--format``, ``--overwrite``, ``--name-map``.

    Args:
        parser: the script's parser.
        output_group: the argument group to add ``--format`` and ``--overwrite`` to (default: a new "Output" group).
        format_help: help of ``--format`` (default: the layouts written).
    """
    out = output_group if output_group is not None else parser.add_argument_group("Output")
    out.add_argument("--format", choices=[f.value for f in OutputFormat], default=OutputFormat.NPY.value,
                     help=format_help or "npy (per-slice <patient>/img|mask/<i>.npy, default), nifti "
                     "(<patient>/image.nii.gz + label.nii.gz) or both (<out>/npy/... and <out>/nifti/...)")
    out.add_argument("--overwrite", action="store_true", help="replace patient folders that already exist")
    parser.add_argument_group("ROI names").add_argument(
        "--name-map", action="append", default=[], metavar="ROI=LABEL",
        help="map an ROI name to a label number or name, or to 'none' to ignore it; a .json file holding "
        "{\"ROI\": label} is read as a whole; may be repeated")


def parse_conversion_options(parser: argparse.ArgumentParser, ns: argparse.Namespace) -> argparse.Namespace:
    """Turn ``ns.name_map`` (the repeated ``--name-map`` values) into the name map, or None when none was given.

    A bad pair or file ends the script through ``parser.error`` with the reason.
    """
    try:
        ns.name_map = name_map_from_args(ns.name_map) or None
    except ValueError as exc:
        parser.error(str(exc))
    return ns


# --------------------------------------------------------------------------- scanning


@dataclass
class _CTInfo:
    uid: str
    files: list[Path] = field(default_factory=list)
    sop_uids: set[str] = field(default_factory=set)
    patient_id: str = ""
    study_uid: str = ""
    study_date: str = ""
    frame_of_reference_uid: str = ""
    series_number: int = 0


@dataclass
class _RTInfo:
    path: Path
    sop_uid: str
    patient_id: str
    referenced_series: list[str]
    referenced_sops: set[str]
    frame_of_reference_uids: set[str]
    when: str


@dataclass
class _Index:
    ct: dict[str, _CTInfo] = field(default_factory=dict)
    rtstructs: list[_RTInfo] = field(default_factory=list)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)


def _rt_info(path: Path, ds: Dataset) -> _RTInfo:
    series: list[str] = []
    sops: set[str] = set()
    fors: set[str] = set()
    if ds.get("FrameOfReferenceUID"):
        fors.add(str(ds.FrameOfReferenceUID))
    for ref_for in ds.get("ReferencedFrameOfReferenceSequence", []) or []:
        if ref_for.get("FrameOfReferenceUID"):
            fors.add(str(ref_for.FrameOfReferenceUID))
        for study in ref_for.get("RTReferencedStudySequence", []) or []:
            for ref_series in study.get("RTReferencedSeriesSequence", []) or []:
                uid = str(ref_series.get("SeriesInstanceUID", ""))
                if uid and uid not in series:
                    series.append(uid)
                for image in ref_series.get("ContourImageSequence", []) or []:
                    sops.add(str(image.get("ReferencedSOPInstanceUID", "")))
    for roi in ds.get("StructureSetROISequence", []) or []:
        if roi.get("ReferencedFrameOfReferenceUID"):
            fors.add(str(roi.ReferencedFrameOfReferenceUID))
    when = "".join(
        str(ds.get(k, "")) for k in ("StructureSetDate", "StructureSetTime", "InstanceCreationDate", "InstanceCreationTime")
    )
    return _RTInfo(
        path=path,
        sop_uid=str(ds.get("SOPInstanceUID", "")),
        patient_id=str(ds.get("PatientID", "")),
        referenced_series=series,
        referenced_sops=sops - {""},
        frame_of_reference_uids=fors,
        when=when,
    )


def _scan(input_dir: Path, exclude: Path | None) -> _Index:
    index = _Index()
    for path in sorted(p for p in input_dir.rglob("*") if p.is_file()):
        if exclude is not None and exclude in path.parents:
            continue
        _index_file(index, path)
    return index


def _index_file(index: _Index, path: Path) -> None:
    """Read one file's header into ``index``: a CT instance, an RT Structure Set, or an unreadable file."""
    try:
        ds = read_dicom_header(path)
    except UnreadableFileError as exc:
        index.unreadable.append((path, str(exc)))
        return
    if ds is None:
        logger.debug("Skipping non-DICOM file %s", path)
        return
    sop_class = sop_class_of(ds)
    if sop_class == CTImageStorage:
        uid = str(ds.get("SeriesInstanceUID", ""))
        if not uid:
            index.unreadable.append((path, f"CT file {path} has no SeriesInstanceUID."))
            return
        info = index.ct.get(uid)
        if info is None:
            number = ds.get("SeriesNumber")
            info = index.ct[uid] = _CTInfo(
                uid=uid,
                patient_id=str(ds.get("PatientID", "")),
                study_uid=str(ds.get("StudyInstanceUID", "")),
                study_date=f"{ds.get('StudyDate', '')}{ds.get('StudyTime', '')}",
                frame_of_reference_uid=str(ds.get("FrameOfReferenceUID", "")),
                series_number=int(number) if number not in (None, "") else 0,
            )
        info.files.append(path)
        info.sop_uids.add(str(ds.get("SOPInstanceUID", "")))
    elif sop_class == RTSTRUCT_SOP_CLASS_UID:
        try:
            index.rtstructs.append(_rt_info(path, ds))
        except Exception as exc:  # noqa: BLE001 - malformed references
            index.unreadable.append((path, f"Cannot parse RT Structure Set {path}: {type(exc).__name__}: {exc}"))
    else:
        logger.debug("Skipping %s: SOP class %s", path, pydicom.uid.UID(sop_class).name if sop_class else "none")


def _match(rt: _RTInfo, index: _Index, sop_to_series: Mapping[str, str]) -> tuple[str | None, str]:
    """The CT series an RTSTRUCT belongs to, and how it was matched."""
    present = [uid for uid in rt.referenced_series if uid in index.ct]
    if present:
        if len(present) > 1:
            counts = {uid: len(rt.referenced_sops & index.ct[uid].sop_uids) for uid in present}
            present.sort(key=lambda uid: -counts[uid])
        return present[0], "referenced series"
    by_sop = sorted({sop_to_series[s] for s in rt.referenced_sops if s in sop_to_series})
    if len(by_sop) == 1:
        return by_sop[0], "referenced images"
    same_for = [uid for uid, ct in index.ct.items() if ct.frame_of_reference_uid in rt.frame_of_reference_uids]
    if len(same_for) == 1:
        return same_for[0], "frame of reference"
    return None, ""


def patient_folder_name(patient_id: str) -> str:
    """A file-system-safe folder name for a PatientID.

    Letters, digits, ``.``, ``_`` and ``-`` are kept; every other run of characters
    becomes ``_``; leading/trailing dots and underscores are dropped; an empty result
    becomes ``"patient"``.
    """
    name = _UNSAFE.sub("_", str(patient_id).strip()).strip("._")
    return name[:128] or "patient"


def _common_folder(files: Sequence[Path]) -> Path:
    return Path(os.path.commonpath([str(p.parent) for p in files])) if files else Path()


def _hu_int16(volume: np.ndarray, series_uid: str) -> np.ndarray:
    rounded = np.rint(volume)
    info = np.iinfo(np.int16)
    if rounded.size and (rounded.min() < info.min or rounded.max() > info.max):
        raise ValueError(
            f"Series {series_uid}: HU range [{rounded.min()}, {rounded.max()}] does not fit int16."
        )
    return rounded.astype(np.int16)

# --------------------------------------------------------------------------- conversion


def _assign_names(candidates: Sequence[_CTInfo]) -> dict[str, str]:
    """Output folder per series UID: sanitised PatientID, suffixed _1.._n for several series."""
    by_name: dict[str, list[_CTInfo]] = {}
    for info in candidates:
        by_name.setdefault(patient_folder_name(info.patient_id), []).append(info)
    names: dict[str, str] = {}
    for base, infos in by_name.items():
        if len(infos) == 1:
            names[infos[0].uid] = base
            continue
        infos.sort(key=lambda ct: (ct.study_date, ct.series_number, ct.uid))
        for number, info in enumerate(infos, start=1):
            names[info.uid] = f"{base}_{number}"
    return names


def _targets(output_dir: Path, fmt: OutputFormat, name: str) -> list[tuple[str, Path]]:
    if fmt == OutputFormat.BOTH:
        return [("npy", output_dir / "npy" / name), ("nifti", output_dir / "nifti" / name)]
    return [(fmt.value, output_dir / name)]


def _write_patient(
    image: np.ndarray, labels: np.ndarray, affine_ras: np.ndarray, annotated: Sequence[str],
    targets: Sequence[tuple[str, Path]],
) -> None:
    """Write each target through a hidden partial folder renamed into place (``annotation.json`` when partial)."""
    names = None if len(annotated) == len(LABELS) else list(annotated)
    for kind, final in targets:
        final.parent.mkdir(parents=True, exist_ok=True)
        partial = final.parent / f".{final.name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        if kind == "npy":
            write_npy_patient(image, labels, partial, annotated=names)
        else:
            write_nifti_patient(image, labels, affine_ras, partial, annotated=names)
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)


def _annotated_names(roi_labels: Mapping[str, int]) -> list[str]:
    """Names of the labels some ROI maps to, in label order (what the structure set really contains)."""
    values = set(roi_labels.values())
    return [label.name for label in LABELS if label.value in values]


def _convert_one(
    info: _CTInfo,
    rts: Sequence[_RTInfo],
    name_map: Mapping[str, int | str | None] | None,
) -> tuple[ConversionRecord, list[ConversionRecord], tuple[np.ndarray, np.ndarray, np.ndarray] | None]:
    """Convert one series: (record, records of superseded structure sets, arrays or None).

    The record's ``annotated_labels`` are the labels the used structure set contains.
    """
    base = ConversionRecord(
        status="skipped", patient_id=info.patient_id, series_instance_uid=info.uid,
        ct_folder=str(_common_folder(info.files)),
    )
    try:
        series = read_series_files(info.files, series_uid=info.uid)
    except Exception as exc:  # noqa: BLE001 - every reader failure is reported with its message
        base.reason, base.detail = SkipReason.UNREADABLE_SERIES.value, str(exc)
        base.rtstruct = str(rts[0].path)
        return base, [], None
    rows, cols, n_slices = series.shape
    base.rows, base.cols, base.n_slices = rows, cols, n_slices
    failures: list[ConversionRecord] = []
    for position, rt in enumerate(rts):
        record = ConversionRecord(**{**asdict(base), "rtstruct": str(rt.path)})
        try:
            rt_ds = pydicom.dcmread(rt.path)
            roi_names = [str(roi.get("ROIName", "")) for roi in rt_ds.get("StructureSetROISequence", []) or []]
            contents = read_rtstruct_contents(rt_ds, series, name_map=name_map)
        except Exception as exc:  # noqa: BLE001
            record.reason, record.detail = SkipReason.UNREADABLE_RTSTRUCT.value, f"{rt.path}: {exc}"
            failures.append(record)
            continue
        record.roi_names = roi_names
        record.roi_labels = dict(contents.roi_labels)
        if not contents.roi_labels:
            record.reason = SkipReason.NO_KNOWN_ROI.value
            record.detail = (
                f"no ROI maps to a known label ({', '.join(lb.name for lb in LABELS)}); ROI names seen: "
                f"{roi_names}; extend the mapping with --name-map NAME=LABEL"
            )
            failures.append(record)
            continue
        if not np.any(contents.labels):
            record.reason = SkipReason.EMPTY_LABELS.value
            record.detail = f"ROIs {sorted(contents.roi_labels)} map to labels but hold no contour on this series"
            failures.append(record)
            continue
        record.status = "converted"
        record.annotated_labels = _annotated_names(contents.roi_labels)
        record.voxels = {lb.name: int(np.count_nonzero(contents.labels == lb.value)) for lb in LABELS}
        for later in rts[position + 1:]:
            failures.append(ConversionRecord(
                **{**asdict(base), "rtstruct": str(later.path), "reason": SkipReason.SUPERSEDED_RTSTRUCT.value,
                   "detail": f"{rt.path} (newer or better matched) was used for this series"}
            ))
        image = _hu_int16(series.volume[0].numpy(), info.uid)
        return record, failures, (image, contents.labels.astype(np.uint8), series.affine_ras)
    # Every structure set failed: report the best one as the series' record.
    main = next((f for f in failures if f.reason != SkipReason.UNREADABLE_RTSTRUCT.value), failures[0])
    failures.remove(main)
    return main, failures, None


def _structure_sets_by_series(
    index: _Index, input_dir: Path
) -> tuple[dict[str, list[_RTInfo]], list[ConversionRecord]]:
    """The structure sets of each CT series, newest first, and a record for each that matches none."""
    sop_to_series = {sop: uid for uid, ct in index.ct.items() for sop in ct.sop_uids}
    by_series: dict[str, list[_RTInfo]] = {}
    unmatched: list[ConversionRecord] = []
    for rt in index.rtstructs:
        uid, how = _match(rt, index, sop_to_series)
        if uid is None:
            referenced = rt.referenced_series or sorted(rt.frame_of_reference_uids)
            unmatched.append(ConversionRecord(
                status="skipped", reason=SkipReason.MISSING_SERIES.value, patient_id=rt.patient_id,
                series_instance_uid=rt.referenced_series[0] if rt.referenced_series else "", rtstruct=str(rt.path),
                detail=f"RTSTRUCT {rt.path} references CT series {referenced}, which is not in {input_dir}",
            ))
            continue
        if how != "referenced series":
            logger.warning("RTSTRUCT %s matched to CT series %s by its %s.", rt.path, uid, how)
        by_series.setdefault(uid, []).append(rt)
    for rts in by_series.values():
        rts.sort(key=lambda rt: rt.when, reverse=True)
    return by_series, unmatched


def _output_format(fmt: str | OutputFormat) -> OutputFormat:
    try:
        return OutputFormat(getattr(fmt, "value", fmt))
    except ValueError:
        raise ValueError(f"`fmt` must be one of {[f.value for f in OutputFormat]}, got {fmt!r}.") from None


def _scan_input(input_dir: Path, output_dir: Path) -> _Index:
    """The index of ``input_dir``'s exports; an output folder inside the input folder is not scanned."""
    resolved_in, resolved_out = input_dir.resolve(), output_dir.resolve()
    exclude = input_dir / resolved_out.relative_to(resolved_in) if resolved_in in resolved_out.parents else None
    index = _scan(input_dir, exclude)
    logger.info(
        "Found %d CT series and %d RT Structure Sets in %s (%d unreadable files).",
        len(index.ct), len(index.rtstructs), input_dir, len(index.unreadable),
    )
    return index


def _refuse_existing(output_dir: Path, fmt: OutputFormat, names: Sequence[str], overwrite: bool) -> None:
    """Raise FileExistsError if a patient folder of ``names`` exists and ``overwrite`` is False."""
    existing = [str(path) for name in names for _, path in _targets(output_dir, fmt, name) if path.exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"Patient folders already exist in {output_dir}: {existing}; pass overwrite=True (--overwrite) "
            "to replace them or choose another output folder."
        )


def _convert_matched(
    index: _Index,
    by_series: Mapping[str, list[_RTInfo]],
    names: Mapping[str, str],
    input_dir: Path,
    output_dir: Path,
    *,
    fmt: OutputFormat,
    name_map: Mapping[str, int | str | None] | None,
    progress: bool,
) -> tuple[list[ConversionRecord], list[ConversionRecord]]:
    """Convert and write every CT series with a structure set; the converted records and the skipped ones."""
    from tqdm.auto import tqdm

    converted: list[ConversionRecord] = []
    skipped: list[ConversionRecord] = []
    for uid in tqdm(sorted(index.ct, key=lambda u: (index.ct[u].patient_id, u)), desc="series", unit="series",
                    disable=not progress):
        info = index.ct[uid]
        if uid not in by_series:
            skipped.append(ConversionRecord(
                status="skipped", reason=SkipReason.NO_RTSTRUCT.value, patient_id=info.patient_id,
                series_instance_uid=uid, ct_folder=str(_common_folder(info.files)), n_slices=len(info.files),
                detail=f"no RT Structure Set in {input_dir} references this CT series ({len(info.files)} files)",
            ))
            continue
        record, others, arrays = _convert_one(info, by_series[uid], name_map)
        skipped.extend(others)
        if arrays is None:
            skipped.append(record)
            continue
        record.output = names[uid]
        _write_patient(*arrays, record.annotated_labels, _targets(output_dir, fmt, names[uid]))
        converted.append(record)
        logger.info("Converted series %s of patient %r to %s.", uid, info.patient_id, names[uid])
    return converted, skipped


def convert_exports(
    input_dir: str | Path,
    output_dir: str | Path,
    *,
    fmt: str | OutputFormat = OutputFormat.NPY,
    name_map: Mapping[str, int | str | None] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> ConversionReport:
    """Convert a folder of clinic CT + RTSTRUCT exports into the training layout.

    See the module docstring for the matching rules and the layouts. Per CT series,
    the structure sets that reference it are tried newest first (StructureSetDate/Time);
    the first with at least one ROI mapped to a label is used. Nothing in the input is
    modified. The report is saved to ``<output_dir>/conversion_report.json`` and ``.csv``.

    Args:
        input_dir: folder with the exports (any sub-folders and file names).
        output_dir: training data folder (created).
        fmt: ``"npy"`` (default), ``"nifti"`` or ``"both"`` (see :class:`OutputFormat`).
        name_map: extra ROI name -> label rules for
            :func:`vacseg_monai.dicom.rtstruct.read_rtstruct_contents` (see :func:`parse_name_map`).
        overwrite: replace patient folders that already exist in ``output_dir`` (default False).
        progress: show a tqdm progress bar over the CT series (default True).

    Returns:
        the :class:`ConversionReport`.

    Raises:
        ValueError: if ``input_dir`` is not a folder or ``fmt`` is unknown.
        FileExistsError: if a patient folder to be written exists and ``overwrite`` is False.
    """
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if not input_dir.is_dir():
        raise ValueError(f"Input folder {input_dir} does not exist or is not a folder.")
    fmt = _output_format(fmt)
    index = _scan_input(input_dir, output_dir)
    skipped: list[ConversionRecord] = [
        ConversionRecord(status="skipped", reason=SkipReason.UNREADABLE_FILE.value, detail=message,
                         ct_folder=str(path.parent))
        for path, message in index.unreadable
    ]
    by_series, unmatched = _structure_sets_by_series(index, input_dir)
    skipped.extend(unmatched)
    names = _assign_names([index.ct[uid] for uid in by_series])
    _refuse_existing(output_dir, fmt, [names[uid] for uid in by_series], overwrite)

    converted, not_converted = _convert_matched(index, by_series, names, input_dir, output_dir, fmt=fmt,
                                                name_map=name_map, progress=progress)
    skipped.extend(not_converted)
    report = ConversionReport(
        input_dir=str(input_dir), output_dir=str(output_dir), format=fmt.value,
        records=sorted(converted, key=lambda r: r.output) + skipped,
    )
    json_path, _ = report.save(output_dir)
    logger.info("%d series converted, %d items skipped; report in %s.", len(converted), len(skipped), json_path)
    return report


def convert_series_files(
    ct_files: Sequence[str | Path],
    rtstructs: Sequence[str | Path],
    output_dir: str | Path,
    name: str,
    *,
    fmt: str | OutputFormat = OutputFormat.NPY,
    name_map: Mapping[str, int | str | None] | None = None,
    overwrite: bool = False,
) -> list[ConversionRecord]:
    """Convert one CT series, given as files, and the structure set(s) drawn on it into patient ``name``.

    The same steps as :func:`convert_exports` for one series: the headers are read, each structure set is
    matched to the series (its referenced series, images or frame of reference), the newest usable one is
    rasterised on the series, and the patient is written with the labels it contains as its annotation.
    Nothing is written when none is usable; the records say why.

    Args:
        ct_files: the instances of one CT series.
        rtstructs: RT Structure Sets drawn on it (the newest by StructureSetDate/Time is tried first).
        output_dir: training data folder (created).
        name: the patient folder name (made safe with :func:`patient_folder_name`).
        fmt: as for :func:`convert_exports` (default ``"npy"``).
        name_map: as for :func:`convert_exports` (default None).
        overwrite: replace the patient folder if it exists (default False).

    Returns:
        the records: the converted series (or, when nothing was converted, why) first, then the structure
        sets not used, with the reason.

    Raises:
        ValueError: if ``ct_files`` hold no CT series or more than one, or ``fmt`` is unknown.
        FileExistsError: if the patient folder exists and ``overwrite`` is False.
    """
    fmt = _output_format(fmt)
    index = _Index()
    for path in [*ct_files, *rtstructs]:
        _index_file(index, Path(path))
    if len(index.ct) != 1:
        raise ValueError(
            f"`ct_files` must hold one CT series, found {len(index.ct)} ({sorted(index.ct) or 'none'}) "
            f"in {len(ct_files)} files{' starting ' + str(ct_files[0]) if ct_files else ''}."
        )
    info = next(iter(index.ct.values()))
    name = patient_folder_name(name)
    targets = _targets(Path(output_dir), fmt, name)
    existing = [str(path) for _, path in targets if path.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"Patient folder {existing} already exists; pass overwrite=True to replace it.")
    skipped = [
        ConversionRecord(status="skipped", reason=SkipReason.UNREADABLE_FILE.value, detail=message,
                         ct_folder=str(path.parent))
        for path, message in index.unreadable
    ]
    by_series, unmatched = _structure_sets_by_series(index, _common_folder(info.files))
    if info.uid not in by_series:
        record = ConversionRecord(
            status="skipped", reason=SkipReason.NO_RTSTRUCT.value, patient_id=info.patient_id,
            series_instance_uid=info.uid, ct_folder=str(_common_folder(info.files)), n_slices=len(info.files),
            detail=f"none of the structure sets {[str(p) for p in rtstructs]} references CT series {info.uid}",
        )
        return [record, *unmatched, *skipped]
    record, others, arrays = _convert_one(info, by_series[info.uid], name_map)
    if arrays is not None:
        record.output = name
        _write_patient(*arrays, record.annotated_labels, targets)
        logger.info("Converted series %s of patient %r to %s (%s).", info.uid, info.patient_id, name,
                    ", ".join(record.annotated_labels))
    return [record, *others, *unmatched, *skipped]
