"""Corrections in: corrected RT Structure Sets that come back from the planning system.

The SCP side (:class:`CorrectionInbox`) runs in the handler threads and does only
light work: it reads the references of a received RT Structure Set (its header is
already parsed), finds the job whose series it was drawn on, and stores the bytes
as received, fsync'ed before the acknowledgement, as for CT::

    corrections/<job_id>/<arrival ns>-<SOPInstanceUID>.dcm     a job's corrections, in arrival order
    corrections/unmatched/<arrival ns>-<SOPInstanceUID>.dcm    no job matched (kept, never lost)
    corrections/unmatched/<arrival ns>-<SOPInstanceUID>.json   why not, and what it referenced

A structure set matches a job through the series it references
(ReferencedFrameOfReferenceSequence > RTReferencedStudySequence >
RTReferencedSeriesSequence), or, when it names no series the node holds, through its
frame of reference; among several jobs of that series the newest finished one wins.

The worker side (:func:`measure_pending_corrections`) runs in the worker process between
jobs: every stored correction not yet in its job's record is compared with the node's own
RT Structure Set (:func:`vacseg_monai.edits.compare_structure_sets`), and the record gets an
entry with the edit metrics per ROI, or the reason it could not be measured (a malformed
structure set is kept and recorded as ``failed``). A picture of the most-edited slices is
written beside the file. The latest correction supersedes the earlier ones: the record's
``correction`` names it and the others are marked ``superseded``; all are kept.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydicom import Dataset, dcmread

from vacseg_monai.service.jobs import (
    Job,
    JobState,
    JobStateError,
    JobStore,
    fsync_dir,
    move_atomic,
    write_atomic,
)
from vacseg_monai.service.uids import InvalidUIDError, sanitize_uid

__all__ = [
    "CORRECTIONS_DIR",
    "CorrectionInbox",
    "CorrectionReferences",
    "REPORT_COLUMNS",
    "StoredCorrection",
    "UNMATCHED_DIR",
    "correction_references",
    "corrections_report",
    "measure_correction",
    "measure_pending_corrections",
    "write_corrections_csv",
]

logger = logging.getLogger(__name__)

CORRECTIONS_DIR = "corrections"
UNMATCHED_DIR = "unmatched"
#: Job states in which the node's own result is not there yet: corrections wait.
_WAITING_STATES = (JobState.RECEIVED, JobState.QUEUED, JobState.INFERRING)


@dataclass(frozen=True)
class CorrectionReferences:
    """What a structure set says it was drawn on (sanitised UIDs; invalid ones are left out)."""

    series_uids: tuple[str, ...]
    frame_of_reference_uids: tuple[str, ...]

    def describe(self) -> str:
        """``"series A, frame of reference B"`` for log lines and records."""
        return (f"series {', '.join(self.series_uids) or '(none)'}, "
                f"frame of reference {', '.join(self.frame_of_reference_uids) or '(none)'}")


def _uids(values: list[object], what: str) -> tuple[str, ...]:
    result = []
    for value in values:
        if value in (None, ""):
            continue
        try:
            uid = sanitize_uid(str(value), what=what)
        except InvalidUIDError:
            logger.warning("Ignoring invalid %s %r in a structure set", what, value)
            continue
        if uid not in result:
            result.append(uid)
    return tuple(result)


def correction_references(ds: Dataset) -> CorrectionReferences:
    """The series and frames of reference an RT Structure Set refers to.

    Args:
        ds: the structure set (its header is enough).
    """
    series, frames = [], []
    for frame in ds.get("ReferencedFrameOfReferenceSequence", []) or []:
        frames.append(frame.get("FrameOfReferenceUID"))
        for study in frame.get("RTReferencedStudySequence", []) or []:
            series += [item.get("SeriesInstanceUID") for item in study.get("RTReferencedSeriesSequence", []) or []]
    frames += [roi.get("ReferencedFrameOfReferenceUID") for roi in ds.get("StructureSetROISequence", []) or []]
    return CorrectionReferences(_uids(series, "SeriesInstanceUID"), _uids(frames, "FrameOfReferenceUID"))


@dataclass(frozen=True)
class StoredCorrection:
    """Where :meth:`CorrectionInbox.store` put a structure set.

    Args:
        path: the stored file.
        job_id: the job it corrects, or None when it matched none.
        reason: why it matched none (None when matched).
    """

    path: Path
    job_id: str | None
    reason: str | None = None


def _ensure_dir(folder: Path) -> None:
    """Create ``folder`` (and its parent) durably if missing."""
    if folder.is_dir():
        return
    folder.mkdir(parents=True, exist_ok=True)
    fsync_dir(folder.parent)
    fsync_dir(folder.parent.parent)


class CorrectionInbox:
    """SCP side of the corrections: match a received structure set to a job and store it durably.

    Args:
        store: the job store (``corrections/`` lives beside ``jobs/``).
        on_stored: called with the job id after a correction of that job is stored (the node wakes
            the worker with it; default None).
    """

    def __init__(self, store: JobStore, on_stored: Callable[[str], None] | None = None) -> None:
        self.job_store = store
        self.on_stored = on_stored
        self.root = store.root / CORRECTIONS_DIR

    def _frame_of_reference(self, job: Job) -> str:
        """The job's FrameOfReferenceUID: from its record, or from its first instance for older records."""
        if job.frame_of_reference_uid:
            return job.frame_of_reference_uid
        first = next(iter(sorted(self.job_store.series_dir(job.job_id).glob("*.dcm"))), None)
        if first is None:
            return ""
        try:
            header = dcmread(first, stop_before_pixels=True, specific_tags=["FrameOfReferenceUID"])
            value = header.get("FrameOfReferenceUID")
        except Exception:  # noqa: BLE001 - an unreadable instance just does not match
            logger.warning("Cannot read the frame of reference of job %s from %s", job.job_id, first)
            return ""
        return str(value or "")

    def match(self, refs: CorrectionReferences) -> Job | None:
        """The job a structure set corrects: same series, else same frame of reference; newest done first.

        Args:
            refs: what the structure set refers to.
        """
        jobs = self.job_store.jobs()
        series = set(refs.series_uids)
        candidates = [job for job in jobs if job.series_uid in series]
        if not candidates and refs.frame_of_reference_uids:
            frames = set(refs.frame_of_reference_uids)
            candidates = [job for job in jobs if self._frame_of_reference(job) in frames]
        if not candidates:
            return None
        return max(candidates, key=lambda job: (job.state is JobState.DONE, job.job_id))

    def store(self, ds: Dataset | None, data: bytes | Path, *, synced: bool = False, calling_aet: str = "",
              problem: str | None = None) -> StoredCorrection:
        """Store a received structure set under its job, or as unmatched; durable when this returns.

        Args:
            ds: its data set (the header is enough), or None when it could not be decoded.
            data: the encoded instance with file meta, as bytes or as a complete file (moved).
            synced: True if the file ``data`` is already fsync'ed.
            calling_aet: the sender, for the record.
            problem: why it cannot be used at all (it is then kept as unmatched with that reason).

        Raises:
            OSError: if it cannot be written.
        """
        try:
            sop_uid = sanitize_uid(str(ds.get("SOPInstanceUID", "")), what="SOPInstanceUID") if ds is not None else ""
        except InvalidUIDError:
            sop_uid = ""
        refs = correction_references(ds) if ds is not None else CorrectionReferences((), ())
        job = self.match(refs) if problem is None else None
        reason = problem
        if job is None and reason is None:
            reason = f"it references {refs.describe()}, which no job of this node has"
        folder = self.root / (job.job_id if job is not None else UNMATCHED_DIR)
        _ensure_dir(folder)
        target = folder / f"{time.time_ns():020d}-{sop_uid or 'no-sop-instance-uid'}.dcm"
        if isinstance(data, Path):
            move_atomic(data, target, synced=synced)
        else:
            write_atomic(target, data)
        if job is None:
            record = {"file": target.name, "sop_instance_uid": sop_uid, "calling_aet": calling_aet,
                      "received": time.time(), "reason": reason, "series_uids": list(refs.series_uids),
                      "frame_of_reference_uids": list(refs.frame_of_reference_uids)}
            write_atomic(target.with_suffix(".json"), json.dumps(record, indent=1).encode())
            logger.warning("Structure set %s from %s kept as unmatched in %s: %s", sop_uid or "?", calling_aet,
                           target, reason)
            return StoredCorrection(target, None, reason)
        logger.info("Structure set %s from %s stored as a correction of job %s (%s)", sop_uid, calling_aet,
                    job.job_id, target.name)
        if self.on_stored is not None:
            self.on_stored(job.job_id)
        return StoredCorrection(target, job.job_id)


# --------------------------------------------------------------------------- worker side


def _node_result(store: JobStore, job: Job) -> Path:
    """The node's own result among the job's outputs: its RTSTRUCT, else its DICOM-SEG (``--output seg``).

    Raises:
        ValueError: when the job has neither (it failed, or it is not done yet).
    """
    job_dir = store.job_dir(job.job_id)
    found: dict[str, Path] = {}
    for name in job.outputs:
        path = job_dir / name
        try:
            modality = dcmread(path, stop_before_pixels=True, specific_tags=["Modality"]).get("Modality")
        except (OSError, ValueError):
            logger.warning("Cannot read output %s of job %s", path, job.job_id)
            continue
        found.setdefault(str(modality), path)
    for modality in ("RTSTRUCT", "SEG"):
        if modality in found:
            return found[modality]
    raise ValueError(
        f"job {job.job_id} ({job.state.value}) has no RT Structure Set or Segmentation of the node's to compare with"
        + (f": {job.reason}" if job.reason else " (outputs: " + (", ".join(job.outputs) or "none") + ")")
    )


def measure_correction(store: JobStore, job: Job, path: Path, *, picture: bool = True) -> dict:
    """Compare one stored correction with the node's result of ``job`` (RTSTRUCT or SEG); return its record entry.

    Never raises for a bad structure set: the entry then has ``status`` ``failed`` and the ``reason``.

    Args:
        store: the job store.
        job: the job corrected.
        path: the stored correction.
        picture: draw the most-edited slices beside the file (default True).
    """
    from vacseg_monai.dicom.series import read_series
    from vacseg_monai.edits import compare_structure_sets, save_edit_picture

    stem = path.name.split("-", 1)
    entry: dict = {
        "file": path.relative_to(store.root).as_posix(),
        "sop_instance_uid": stem[1].removesuffix(".dcm") if len(stem) == 2 else "",
        "received": int(stem[0]) / 1e9 if stem[0].isdigit() else path.stat().st_mtime,
        "status": "failed", "reason": None, "rois": [], "unmatched_rois": [], "picture": None, "superseded": False,
    }
    start = time.perf_counter()
    try:
        node = _node_result(store, job)
        series = read_series(store.series_dir(job.job_id))
        result = compare_structure_sets(node, path, series)
        entry.update(status="measured", rois=[roi.as_dict() for roi in result.measure.rois],
                     unmatched_rois=result.unmatched_rois)
        if picture:
            png = save_edit_picture(series.volume[0].numpy(), result.node_labels, result.corrected_labels,
                                    result.measure, path.with_suffix(".png"), title=f"job {job.job_id}: {path.name}")
            entry["picture"] = png.relative_to(store.root).as_posix() if png is not None else None
    except ValueError as exc:  # a malformed structure set, or no result to compare with: the caller logs it
        entry["reason"] = f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # noqa: BLE001 - anything else is recorded too, never fatal
        logger.exception("Correction %s of job %s cannot be measured", path, job.job_id)
        entry["reason"] = f"{type(exc).__name__}: {exc}"
    entry["seconds"] = round(time.perf_counter() - start, 3)
    return entry


def _record(store: JobStore, job_id: str, entry: dict) -> Job:
    """Add ``entry`` to the job's corrections; the latest by arrival supersedes the others."""
    job = store.load(job_id)
    entries = sorted([e for e in job.corrections if e.get("file") != entry["file"]] + [entry], key=lambda e: e["file"])
    for item in entries:
        item["superseded"] = item is not entries[-1]
    return store.update(job_id, corrections=entries, correction=entries[-1]["file"])


def measure_pending_corrections(store: JobStore, *, picture: bool = True) -> list[dict]:
    """Measure every stored correction that its job's record does not list yet (the worker calls it).

    Corrections of a job whose own result is not there yet wait for it.

    Args:
        store: the job store.
        picture: draw the most-edited slices (default True).

    Returns:
        The entries recorded by this call.
    """
    root = store.root / CORRECTIONS_DIR
    if not root.is_dir():
        return []
    recorded = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name != UNMATCHED_DIR):
        try:
            job = store.load(folder.name)
        except JobStateError:
            logger.exception("Corrections in %s belong to no readable job", folder)
            continue
        known = {entry.get("file") for entry in job.corrections}
        pending = [p for p in sorted(folder.glob("*.dcm")) if p.relative_to(store.root).as_posix() not in known]
        if not pending or job.state in _WAITING_STATES:
            continue
        for path in pending:
            entry = measure_correction(store, job, path, picture=picture)
            job = _record(store, job.job_id, entry)
            summary = ", ".join(
                f"{r['roi']} Dice {r['dice']:.3f} APL {r['added_path_mm']:.0f} mm"
                for r in entry["rois"] if r.get("dice") is not None
            )
            log = logger.info if entry["status"] == "measured" else logger.warning
            log("Job %s: correction %s %s%s", job.job_id, path.name, entry["status"],
                f" ({summary or entry['reason']})" if summary or entry["reason"] else "")
            recorded.append(entry)
    return recorded


# --------------------------------------------------------------------------- report

#: Columns of :func:`write_corrections_csv`, one row per correction and ROI.
REPORT_COLUMNS = (
    "job_id", "series_uid", "correction", "received", "latest", "status", "reason", "roi", "roi_status", "dice",
    "surface_dice", "hd95_mm", "node_cm3", "corrected_cm3", "volume_change_cm3", "added_path_mm", "edited_slices",
    "surface_tolerance_mm", "apl_tolerance_mm", "picture",
)


def corrections_report(output_directory: str | Path) -> list[dict]:
    """Rows of every correction a node recorded, one per ROI (one row without ROI for a failed or unmatched one).

    Args:
        output_directory: the node's output directory.

    Returns:
        dicts with the keys of :data:`REPORT_COLUMNS`, jobs in arrival order, corrections in arrival order;
        unmatched structure sets last, with status ``unmatched``.
    """
    output_directory = Path(output_directory)
    if not (output_directory / "jobs").is_dir():
        raise ValueError(f"{output_directory} is not a node output directory (no jobs/ folder in it).")
    store = JobStore(output_directory)
    rows = []
    for job in store.jobs():
        for entry in job.corrections:
            base = {"job_id": job.job_id, "series_uid": job.series_uid, "correction": entry.get("file"),
                    "received": _iso(entry.get("received")), "latest": entry.get("file") == job.correction,
                    "status": entry.get("status"), "reason": entry.get("reason") or "",
                    "picture": entry.get("picture") or ""}
            rois = [roi for roi in entry.get("rois", []) if roi.get("status") != "not in correction"]
            if not rois:
                rows.append(base)
            for roi in rois:
                rows.append({**base, **{k: roi.get(k) for k in REPORT_COLUMNS if k in roi}, "roi": roi["roi"],
                             "roi_status": roi["status"]})
    unmatched = output_directory / CORRECTIONS_DIR / UNMATCHED_DIR
    for path in sorted(unmatched.glob("*.json")) if unmatched.is_dir() else []:
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            logger.warning("Cannot read %s", path)
            continue
        rows.append({"job_id": "", "series_uid": " ".join(record.get("series_uids", [])),
                     "correction": path.with_suffix(".dcm").relative_to(output_directory).as_posix(),
                     "received": _iso(record.get("received")), "latest": "", "status": "unmatched",
                     "reason": record.get("reason", "")})
    return rows


def _iso(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(float(seconds))) + "Z"


def write_corrections_csv(rows: list[dict], path: str | Path) -> Path:
    """Write :func:`corrections_report` rows as CSV (columns :data:`REPORT_COLUMNS`); returns the path."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=REPORT_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in REPORT_COLUMNS})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(buffer.getvalue())
    return path
