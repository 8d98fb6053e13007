"""Persistent job queue: one directory and one JSON record per series job.

Layout under the node's output directory::

    jobs/<job_id>/job.json      the record (state, history, reason, outputs)
    jobs/<job_id>/series/       the received instances, <SOPInstanceUID>.dcm
    jobs/<job_id>/output/       what the processor wrote

``job_id`` starts with the arrival time in nanoseconds, so sorting ids gives
arrival order. Every state change rewrites ``job.json`` atomically (temporary
file, fsync, :func:`os.replace`, fsync of the directory): after a crash, even
``kill -9``, each record is either the old or the new version, never half.

States::

    received -> queued -> inferring -> exporting -> done
         \\          \\          \\            \\-> failed (reason recorded)
                               \\-> review -> exporting (approved) | rejected

``inferring`` and ``exporting`` may be re-entered when a restarted node resumes
a job; ``done``, ``failed`` and ``rejected`` are final, so a finished job is never
exported again. ``review`` holds a doubtful result (review policy ``hold``) until a
person approves or rejects it; like every state it survives restarts.
"""

from __future__ import annotations

import enum
import errno
import fcntl
import json
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from vacseg_monai.labels import LABELS

__all__ = [
    "Job",
    "JobState",
    "JobStateError",
    "JobStore",
    "PENDING_STATES",
    "format_status",
    "fsync_file",
    "is_valid_job_id",
    "move_atomic",
    "write_atomic",
]

logger = logging.getLogger(__name__)

LABEL_NAMES = frozenset(label.name for label in LABELS)

RECORD_NAME = "job.json"

#: Lock file of a job (see :meth:`JobStore.locked`); empty.
LOCK_NAME = ".lock"

#: What :meth:`JobStore.create` names a job: 20 digits of arrival time in ns, a dash, 6 hex digits.
_JOB_ID_RE = re.compile(r"^[0-9]{20}-[0-9a-f]{6}$")


def is_valid_job_id(job_id: object) -> bool:
    """True if ``job_id`` is shaped like the ids :meth:`JobStore.create` makes (so it is one safe folder name).

    Args:
        job_id: the value to check, e.g. from a URL; anything but a ``str`` is invalid.
    """
    return isinstance(job_id, str) and _JOB_ID_RE.fullmatch(job_id) is not None


class JobState(str, enum.Enum):
    """Lifecycle of a series job."""

    RECEIVED = "received"
    QUEUED = "queued"
    INFERRING = "inferring"
    EXPORTING = "exporting"
    DONE = "done"
    FAILED = "failed"
    REVIEW = "review"
    REJECTED = "rejected"


PENDING_STATES = (JobState.QUEUED, JobState.INFERRING, JobState.EXPORTING)

_ALLOWED: dict[JobState, tuple[JobState, ...]] = {
    JobState.RECEIVED: (JobState.QUEUED, JobState.FAILED),
    JobState.QUEUED: (JobState.INFERRING, JobState.FAILED),
    JobState.INFERRING: (JobState.INFERRING, JobState.EXPORTING, JobState.DONE, JobState.FAILED, JobState.REVIEW),
    JobState.EXPORTING: (JobState.EXPORTING, JobState.DONE, JobState.FAILED),
    JobState.REVIEW: (JobState.EXPORTING, JobState.DONE, JobState.REJECTED),
    JobState.DONE: (),
    JobState.FAILED: (),
    JobState.REJECTED: (),
}


class JobStateError(RuntimeError):
    """A job record is missing, unreadable or asked for a transition its state forbids."""


@dataclass
class Job:
    """One series job as stored in ``job.json``.

    Args:
        job_id: arrival-ordered identifier, also the directory name.
        study_uid: sanitised StudyInstanceUID.
        series_uid: sanitised SeriesInstanceUID.
        calling_aet: AE title of the sender of the first instance.
        state: current :class:`JobState`.
        created: UNIX time the first instance arrived.
        updated: UNIX time of the last state change.
        reason: why the job failed, None otherwise.
        n_instances: number of distinct instances stored.
        outputs: files to export, relative to the job directory.
        attempts: how many times inference was started (a crash loop guard).
        history: ``{"state", "time"}`` entries, oldest first.
        quality: the result's quality block (:meth:`vacseg_monai.quality.QualityReport.as_dict`), once scored.
        frame_of_reference_uid: FrameOfReferenceUID of the first instance ("" when it had none).
        corrections: one entry per corrected structure set received for this job, oldest first
            (:mod:`vacseg_monai.service.corrections`): file, status, edit metrics per ROI.
        correction: the file of the latest correction (the one that supersedes the others), or None.
        modalities: each Modality value the SCP stored in the series, with the file of the first instance that
            had it; None until the series is complete, and for a job recovered after a crash (the worker then
            reads the headers).
        export: the last export of the results: ``{"destination", "attempts", "ok", "time", "error"}``
            (None until the worker tried to send them).
    """

    job_id: str
    study_uid: str
    series_uid: str
    calling_aet: str = ""
    state: JobState = JobState.RECEIVED
    created: float = 0.0
    updated: float = 0.0
    reason: str | None = None
    n_instances: int = 0
    outputs: list[str] = field(default_factory=list)
    attempts: int = 0
    history: list[dict] = field(default_factory=list)
    quality: dict | None = None
    frame_of_reference_uid: str = ""
    corrections: list[dict] = field(default_factory=list)
    correction: str | None = None
    modalities: dict[str, str] | None = None
    export: dict | None = None

    def to_dict(self) -> dict:
        """Return the JSON-serialisable record."""
        data = asdict(self)
        data["state"] = self.state.value
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Job:
        """Build a job from a record read from disk.

        Args:
            data: the decoded ``job.json``.

        Raises:
            JobStateError: if a required key is missing or the state is unknown.
        """
        try:
            fields = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
            fields["state"] = JobState(data["state"])
            return cls(**fields)
        except (KeyError, ValueError, TypeError) as exc:
            raise JobStateError(f"Invalid job record {data.get('job_id', '?')!r}: {exc}") from exc


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves the old or the new file.

    Args:
        path: destination file; its directory must exist.
        data: the complete new content.

    Raises:
        OSError: if writing or renaming fails (the temporary file is removed).
    """
    _replace_via_temporary(path, lambda tmp: tmp.write_bytes(data))
    fsync_dir(path.parent)


def _replace_via_temporary(path: Path, fill: Callable[[Path], object]) -> None:
    """Let ``fill`` write a temporary file beside ``path``, fsync it, rename it to ``path``; remove it on failure."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        fill(tmp)
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def fsync_file(path: Path) -> None:
    """fsync the file ``path`` (its data as written so far by any writer, and its size).

    Args:
        path: the file.

    Raises:
        OSError: if it cannot be opened or synced.
    """
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def move_atomic(source: Path, path: Path, *, synced: bool = False) -> None:
    """Move the complete file ``source`` to ``path`` durably: fsync it, rename it, fsync the directory.

    On another file system (no rename possible) the file is copied with :func:`shutil.copyfile`
    to a temporary name beside ``path``, fsync'ed and renamed; ``source`` is then left to its owner.

    Args:
        source: the file, fully written (flushed) by its writer.
        path: destination; its directory must exist.
        synced: True if the caller already ran :func:`fsync_file` on the complete ``source``
            (the rename and the directory are still synced here).

    Raises:
        OSError: if syncing, renaming or copying fails.
    """
    if not synced:
        fsync_file(source)
    try:
        os.replace(source, path)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        _replace_via_temporary(path, lambda tmp: shutil.copyfile(source, tmp))
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """fsync a directory so that a rename or a new entry in it is durable.

    Args:
        directory: the directory to sync.
    """
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class JobStore:
    """The on-disk job queue; safe to use from several processes for different jobs.

    Each job is mostly written by one party at a time (the SCP while ``received``, the worker
    afterwards); a review decision (``--approve``/``--reject``, another process) and the worker's
    recording of a correction may meet on a held job, so every read-change-write of a record
    (:meth:`transition`, :meth:`update`) holds the job's lock (:meth:`locked`), and neither change is lost.

    Args:
        root: the node's output directory; jobs live in ``root/jobs``.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.jobs_dir = self.root / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)

    def job_dir(self, job_id: str) -> Path:
        """Directory of one job."""
        return self.jobs_dir / job_id

    def series_dir(self, job_id: str) -> Path:
        """Directory holding the received instances of one job."""
        return self.job_dir(job_id) / "series"

    def output_dir(self, job_id: str) -> Path:
        """Directory where the processor writes its outputs."""
        return self.job_dir(job_id) / "output"

    def create(
        self, *, study_uid: str, series_uid: str, calling_aet: str = "", frame_of_reference_uid: str = ""
    ) -> Job:
        """Create a new job in state ``received`` with an empty series directory.

        Args:
            study_uid: sanitised StudyInstanceUID.
            series_uid: sanitised SeriesInstanceUID.
            calling_aet: AE title of the sender (default "").
            frame_of_reference_uid: FrameOfReferenceUID of the series (default "").
        """
        now = time.time()
        job_id = f"{time.time_ns():020d}-{secrets.token_hex(3)}"
        job = Job(
            job_id=job_id,
            study_uid=study_uid,
            series_uid=series_uid,
            calling_aet=calling_aet,
            frame_of_reference_uid=frame_of_reference_uid,
            created=now,
            updated=now,
            history=[{"state": JobState.RECEIVED.value, "time": now}],
        )
        self.job_dir(job_id).mkdir(parents=True)
        self.save(job)
        self.series_dir(job_id).mkdir()
        fsync_dir(self.job_dir(job_id))
        fsync_dir(self.jobs_dir)
        logger.info("Job %s created for series %s", job_id, series_uid)
        return job

    def save(self, job: Job) -> None:
        """Write the record of ``job`` atomically.

        Args:
            job: the job to persist.
        """
        payload = json.dumps(job.to_dict(), indent=1, sort_keys=True).encode()
        write_atomic(self.job_dir(job.job_id) / RECORD_NAME, payload)

    @contextmanager
    def locked(self, job_id: str) -> Iterator[None]:
        """Hold the job's lock (``flock`` on ``<job>/.lock``, across processes) for a read-change-write.

        Args:
            job_id: the job.
        """
        fd = os.open(self.job_dir(job_id) / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def load(self, job_id: str) -> Job:
        """Read one job record.

        Args:
            job_id: the job to read.

        Raises:
            JobStateError: if the record does not exist or cannot be decoded.
        """
        path = self.job_dir(job_id) / RECORD_NAME
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError as exc:
            raise JobStateError(f"No job record at {path}.") from exc
        except (OSError, ValueError) as exc:
            raise JobStateError(f"Cannot read job record {path}: {exc}") from exc
        return Job.from_dict(data)

    def transition(self, job_id: str, state: JobState | str, *, reason: str | None = None, **fields) -> Job:
        """Move a job to ``state`` and persist it atomically.

        Args:
            job_id: the job to change.
            state: the new state.
            reason: failure reason, stored with ``failed`` (default None).
            **fields: other :class:`Job` fields to update in the same write
                (e.g. ``n_instances``, ``outputs``, ``attempts``).

        Raises:
            JobStateError: if the transition is not allowed from the current state.
        """
        state = JobState(state)
        with self.locked(job_id):
            return self._transition(job_id, state, reason, fields)

    def _transition(self, job_id: str, state: JobState, reason: str | None, fields: dict) -> Job:
        """:meth:`transition`, with the job's lock held."""
        job = self.load(job_id)
        if state not in _ALLOWED[job.state]:
            raise JobStateError(
                f"Job {job_id}: transition {job.state.value} -> {state.value} is not allowed."
            )
        for key, value in fields.items():
            if key not in Job.__dataclass_fields__ or key in ("job_id", "state", "history"):
                raise JobStateError(f"Job {job_id}: cannot set field {key!r}.")
            setattr(job, key, value)
        now = time.time()
        job.state = state
        job.updated = now
        if reason is not None:
            job.reason = reason
        entry = {"state": state.value, "time": now}
        if reason is not None:
            entry["reason"] = reason
        job.history.append(entry)
        self.save(job)
        log = logger.warning if state in (JobState.FAILED, JobState.REVIEW, JobState.REJECTED) else logger.info
        log("Job %s -> %s%s", job_id, state.value, f" ({reason})" if reason else "")
        return job

    def update(self, job_id: str, **fields) -> Job:
        """Change fields of a job's record without changing its state, and persist it atomically.

        The worker calls it for the corrections of a finished job; the job's lock is held throughout.

        Args:
            job_id: the job to change.
            **fields: :class:`Job` fields to set (not ``job_id``, ``state`` or ``history``).

        Raises:
            JobStateError: if the record cannot be read or a field cannot be set.
        """
        with self.locked(job_id):
            job = self.load(job_id)
            for key, value in fields.items():
                if key not in Job.__dataclass_fields__ or key in ("job_id", "state", "history"):
                    raise JobStateError(f"Job {job_id}: cannot set field {key!r}.")
                setattr(job, key, value)
            self.save(job)
        return job

    def jobs(self) -> list[Job]:
        """All readable jobs in arrival order; unreadable records are logged and skipped."""
        result = []
        for entry in sorted(self.jobs_dir.iterdir()):
            if not entry.is_dir():
                continue
            try:
                result.append(self.load(entry.name))
            except JobStateError:
                logger.exception("Skipping job directory %s", entry)
        return result

    def in_states(self, *states: JobState) -> list[Job]:
        """Jobs whose state is one of ``states``, in arrival order.

        Args:
            *states: the states to select.
        """
        return [job for job in self.jobs() if job.state in states]


def _quality_column(quality: dict | None) -> str:
    """``"Vacbag 0.31! Couch 0.98 Body 0.99"``: each structure's score, flagged ones marked ``!``."""
    if not quality:
        return "-"
    structures = quality.get("structures", {})
    order = [label.name for label in LABELS if label.name in structures] + sorted(set(structures) - LABEL_NAMES)
    return " ".join(f"{n} {structures[n]['score']:.2f}{'!' if structures[n]['flagged'] else ''}" for n in order)


def _edits_column(job: Job) -> str:
    """``"#2 Vacbag 0.87 +45mm"``: how many corrections, and the most edited structure of the latest.

    That structure is the one with the longest added path; its Dice follows. ``"#1 none"`` when the
    latest correction changed nothing, ``"#1 failed"`` or ``"#1 pending"`` when it was not measured.
    """
    if not job.corrections:
        return "-"
    latest = next((e for e in job.corrections if e.get("file") == job.correction), job.corrections[-1])
    count = f"#{len(job.corrections)}"
    if latest.get("status") != "measured":
        return f"{count} {latest.get('status', 'pending')}"
    edited = [r for r in latest.get("rois", []) if r.get("dice") is not None and r.get("status") != "unchanged"]
    if not edited:
        return f"{count} none"
    top = max(edited, key=lambda r: (r.get("added_path_mm") or 0.0, -(r.get("dice") or 0.0)))
    return f"{count} {top['roi']} {top['dice']:.2f} +{top.get('added_path_mm') or 0.0:.0f}mm"


def format_status(jobs: list[Job]) -> str:
    """Return a plain-text table of jobs for ``serve_scp.py --status``.

    The EDITS column shows the corrections received for a job (see :func:`_edits_column`).

    Args:
        jobs: jobs to list, usually :meth:`JobStore.jobs`.
    """
    header = (f"{'JOB':<27} {'STATE':<9} {'N':>4} {'UPDATED':<19} {'SERIES':<40} {'QUALITY':<34} "
              f"{'EDITS':<22} REASON")
    lines = [header]
    for job in jobs:
        updated = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.updated))
        lines.append(
            f"{job.job_id:<27} {job.state.value:<9} {job.n_instances:>4} {updated:<19} "
            f"{job.series_uid:<40} {_quality_column(job.quality):<34} {_edits_column(job):<22} {job.reason or ''}"
        )
    if not jobs:
        lines.append("(no jobs)")
    return "\n".join(lines)
