"""The worker process: loads the processor once, runs queued jobs in arrival order, exports.

The processor is pluggable: ``config.processor`` names a factory
``"package.module:callable"`` that is called once in the worker as
``factory(bundle=..., output=..., root_uid=..., **config.processor_args)`` and
returns a callable ``processor(series_dir: Path, job_dir: Path) -> list[Path]``
giving the DICOM files to export. An exception from it fails the job with the
reason recorded; the worker carries on with the next job.

The disk is the queue: the worker is woken through a pipe but always takes the
oldest pending job from :class:`~vacseg_monai.service.jobs.JobStore`, so jobs
left ``queued``, ``inferring`` or ``exporting`` by a crash are resumed.

The SCP also tells the worker when a series starts to arrive. While it waits,
the worker hands such a series' folder to the processor's optional ``prefetch``
hook, which reads and decodes the files already there, so that the job's own
read, once the series is complete, mostly checks and assembles them.

Between jobs the worker also measures the corrections the SCP stored (corrected RT
Structure Sets sent back by the planning system,
:func:`~vacseg_monai.service.corrections.measure_pending_corrections`): at start, when
the SCP says one arrived, and after each job it finished.
"""

from __future__ import annotations

import importlib
import logging
import multiprocessing
import multiprocessing.connection
import json
import os
import threading
import time
from pathlib import Path
from typing import Callable, Mapping, Protocol

from vacseg_monai.logs import setup_logging
from vacseg_monai.service.config import NodeConfig, ReviewPolicy
from vacseg_monai.service.jobs import PENDING_STATES, Job, JobState, JobStore

__all__ = [
    "MAX_ATTEMPTS",
    "QUALITY_FILE",
    "Processor",
    "ProcessorError",
    "WorkerProcess",
    "check_modalities",
    "load_processor",
    "load_quality",
    "process_job",
    "worker_main",
]

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
#: Where a processor leaves the result's quality block (:meth:`vacseg_monai.quality.QualityReport.as_dict`).
QUALITY_FILE = "quality.json"
#: Message tag: the SCP started receiving a job (``(RECEIVING, job_id)`` on the worker's pipe).
RECEIVING = "receiving"
#: Message tag: the SCP stored a correction of a job (``(CORRECTION, job_id)``).
CORRECTION = "correction"
#: Seconds the worker waits for a message between looks at series that are still arriving.
PREFETCH_POLL_S = 0.05


class Processor(Protocol):
    """What a processor factory returns.

    A processor may also have ``after_export(job_dir)``: work for the person reading
    the job later (a QA picture) that need not delay the result. The worker calls it
    once the results are sent (or kept, without a destination), before the job is
    recorded as done; its failure is logged and does not fail the job.

    It may also have ``prefetch(series_dir) -> int``: the worker calls it while it
    waits, as long as the SCP is still receiving that series, so that work on the
    files already there (reading, decoding) is done before the series is complete.
    It returns how many files it handled (0: nothing new); a failure is logged.
    """

    def __call__(self, series_dir: Path, job_dir: Path) -> list[Path]: ...


def _after_export(processor: Processor, job_dir: Path) -> None:
    hook = getattr(processor, "after_export", None)
    if hook is None:
        return
    try:
        hook(job_dir)
    except Exception:
        logger.exception("after_export of %s failed; the job's results are not affected", job_dir)


class ProcessorError(RuntimeError):
    """A processor could not be loaded or produced unusable output."""


def load_processor(spec: str, **kwargs) -> Processor:
    """Create the processor named by ``spec``.

    Args:
        spec: ``"package.module:factory"``.
        **kwargs: keyword arguments for the factory.

    Raises:
        ProcessorError: if the module or attribute cannot be found or the factory fails.
    """
    module_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ProcessorError(f"Cannot import processor factory {spec!r}: {exc}") from exc
    try:
        return factory(**kwargs)
    except Exception as exc:
        raise ProcessorError(f"Processor factory {spec!r} failed: {exc}") from exc


def check_modalities(series_dir: Path, modalities: list[str], seen: Mapping[str, str] | None = None) -> None:
    """Raise if the series holds an instance whose modality is not in ``modalities``.

    Args:
        series_dir: the job's series directory.
        modalities: accepted Modality values, e.g. ``["CT"]``.
        seen: the modalities the SCP stored, each with the file of its first instance (:attr:`Job.modalities`),
            so that no header is read again; None (a job recovered after a crash) reads the headers (default None).

    Raises:
        ProcessorError: naming an offending file and its modality, or when the series holds no instance.
    """
    for modality, name in (_read_modalities(series_dir) if seen is None else seen).items():
        if modality not in modalities:
            raise ProcessorError(f"Series is not {'/'.join(modalities)}: {name} has Modality {modality!r}.")


def _read_modalities(series_dir: Path) -> dict[str, str]:
    """Each Modality in the headers of ``series_dir``, with its first file by name."""
    from pydicom import dcmread

    files = sorted(series_dir.glob("*.dcm"))
    if not files:
        raise ProcessorError(f"No instances in {series_dir}.")
    seen: dict[str, str] = {}
    for path in files:
        ds = dcmread(path, stop_before_pixels=True, specific_tags=["Modality"])
        seen.setdefault(str(ds.get("Modality", "")), path.name)
    return seen


def load_quality(job_dir: Path) -> dict | None:
    """The quality block the processor left in ``<job>/quality.json`` (None when it scores nothing).

    Raises:
        ProcessorError: if the file exists but is not a JSON object.
    """
    path = job_dir / QUALITY_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ProcessorError(f"Cannot read the quality block {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ProcessorError(f"{path} must hold a JSON object, got {type(data).__name__}.")
    return data


def _fail(store: JobStore, job: Job, reason: str) -> Job:
    return store.transition(job.job_id, JobState.FAILED, reason=reason)


def process_job(
    store: JobStore,
    job_id: str,
    processor: Callable[[Path, Path], list[Path]],
    config: NodeConfig,
    stop: threading.Event | None = None,
) -> Job:
    """Advance one job to ``done`` or ``failed``, resuming from its stored state.

    Args:
        store: the job store.
        job_id: the job.
        processor: the loaded processor.
        config: node configuration (destination, retries, modalities, TLS).
        stop: event that interrupts export retries (default None).

    Returns:
        The job as finally stored.
    """
    from vacseg_monai.service.export import ExportError, export_with_retry, make_client_ssl_context

    job = store.load(job_id)
    job_dir = store.job_dir(job_id)
    if job.state in (JobState.QUEUED, JobState.INFERRING):
        if job.attempts >= MAX_ATTEMPTS:
            return _fail(store, job, f"processing was interrupted {job.attempts} times (worker crash?)")
        job = store.transition(job_id, JobState.INFERRING, attempts=job.attempts + 1)
        try:
            check_modalities(store.series_dir(job_id), config.modalities, job.modalities)
            outputs = [Path(p) for p in processor(store.series_dir(job_id), job_dir)]
            missing = [str(p) for p in outputs if not p.is_file()]
            if missing:
                raise ProcessorError(f"Processor returned files that do not exist: {missing[:3]}")
            quality = load_quality(job_dir)
        except Exception as exc:
            logger.exception("Processing job %s (series %s) failed", job_id, job.series_uid)
            return _fail(store, job, f"{type(exc).__name__}: {exc}")
        relative = [os.path.relpath(p.resolve(), job_dir.resolve()) for p in outputs]
        flagged = (quality or {}).get("flagged", [])
        if flagged and config.review_policy is ReviewPolicy.HOLD:
            return store.transition(job_id, JobState.REVIEW, outputs=relative, quality=quality,
                                    reason=f"held for review: {', '.join(flagged)} flagged by the quality score")
        if config.destination is None:
            logger.info("Job %s: no destination configured, results kept in %s", job_id, job_dir)
            _after_export(processor, job_dir)
            return store.transition(job_id, JobState.DONE, outputs=relative, quality=quality)
        job = store.transition(job_id, JobState.EXPORTING, outputs=relative, quality=quality)
    if job.state is JobState.EXPORTING and config.destination is None:  # approved after review, nowhere to send
        logger.info("Job %s: no destination configured, results kept in %s", job_id, job_dir)
        return store.transition(job_id, JobState.DONE)
    if job.state is JobState.EXPORTING:
        files = [job_dir / p for p in job.outputs]
        if config.export_series:
            files += sorted(store.series_dir(job_id).glob("*.dcm"))
        record = {"destination": str(config.destination), "attempts": 0, "ok": False, "time": 0.0, "error": None}
        try:
            ssl_context = None
            if config.tls_enabled:
                ssl_context = make_client_ssl_context(config.tls_ca, config.tls_cert, config.tls_key)
            record["attempts"] = export_with_retry(
                files,
                config.destination,
                give_up_after=config.export_timeout,
                initial_delay=config.export_retry_initial,
                max_delay=config.export_retry_max,
                stop=stop,
                calling_aet=config.ae_title,
                ssl_context=ssl_context,
                acse_timeout=config.acse_timeout,
                dimse_timeout=config.dimse_timeout,
                network_timeout=config.network_timeout,
            )
        except (ExportError, ValueError) as exc:
            logger.exception("Export of job %s failed; files kept in %s", job_id, job_dir)
            record.update(attempts=getattr(exc, "attempts", 0), time=time.time(), error=str(exc))
            return store.transition(job_id, JobState.FAILED, reason=f"export failed: {exc}", export=record)
        record.update(ok=True, time=time.time())
        _after_export(processor, job_dir)
        return store.transition(job_id, JobState.DONE, export=record)
    return job


def _exit_with_parent() -> None:
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def worker_main(config: NodeConfig, conn: multiprocessing.connection.Connection, ready=None) -> None:
    """Entry point of the worker process.

    Loads the processor once, processes every pending job, then waits for
    wake-ups on ``conn`` (any message; ``None`` or a closed pipe stops it).
    The process exits if its parent dies.

    Args:
        config: node configuration.
        conn: receiving end of the wake-up pipe.
        ready: a ``multiprocessing`` event set once the processor is loaded (default None).
    """
    # One highdicom line per SEG and one pynetdicom line per C-STORE are noise unless debugging.
    setup_logging(
        config.log_level,
        third_party=str(config.log_level).upper() == "DEBUG",
        fmt="%(asctime)s %(levelname)s [worker] %(name)s: %(message)s",
    )
    _exit_with_parent()
    if config.worker_nice and hasattr(os, "nice"):
        # Below the SCP: receiving goes first when both want the processor; idle cycles are all the worker's.
        os.nice(config.worker_nice)
    store = JobStore(config.output_directory)
    try:
        processor = load_processor(
            config.processor,
            bundle=config.bundle,
            output=config.output.value,
            root_uid=config.root_uid,
            review_policy=config.review_policy.value,
            review_suffix=config.review_suffix,
            **config.processor_args,
        )
    except ProcessorError:
        logger.exception("Worker cannot start")
        raise
    logger.info("Worker ready with processor %s", config.processor)
    if ready is not None:
        ready.set()
    receiving: list[str] = []  # jobs the SCP is still receiving, for `prefetch`
    corrections = True  # stored corrections may wait from a previous run
    while True:
        for job in store.in_states(*PENDING_STATES):
            try:
                process_job(store, job.job_id, processor, config)
            except Exception:
                logger.exception("Unexpected error in job %s; it stays %s", job.job_id, job.state.value)
            corrections = True  # a correction that waited for this job's result can be measured now
        if corrections:
            corrections = False
            _measure_corrections(store)
        try:
            message = _next_message(conn, store, processor, receiving)
        except (EOFError, OSError):
            return
        if message is None:
            return
        if isinstance(message, tuple) and message[0] == RECEIVING and message[1] not in receiving:
            receiving.append(message[1])
        elif isinstance(message, tuple) and message[0] == CORRECTION:
            corrections = True


def _measure_corrections(store: JobStore) -> None:
    from vacseg_monai.service.corrections import measure_pending_corrections

    try:
        measure_pending_corrections(store)
    except Exception:  # noqa: BLE001 - a correction never stops the worker; its files stay for the next look
        logger.exception("Measuring the stored corrections failed")


def _next_message(conn: multiprocessing.connection.Connection, store: JobStore, processor: Processor,
                  receiving: list[str]) -> object:
    """Wait for the next message; meanwhile let the processor decode series that are still arriving.

    Raises:
        EOFError, OSError: when the pipe is closed.
    """
    prefetch = getattr(processor, "prefetch", None)
    while prefetch is not None and receiving:
        if conn.poll(0):
            return conn.recv()
        job_id = receiving[0]
        try:
            still_receiving = store.load(job_id).state is JobState.RECEIVED
            decoded = prefetch(store.series_dir(job_id)) if still_receiving else 0
        except Exception:  # noqa: BLE001 - decoding ahead is an optimisation; the job reads its files anyway
            logger.exception("Decoding job %s ahead failed; it will be read when it is queued", job_id)
            still_receiving, decoded = False, 0
        if not still_receiving:
            receiving.pop(0)
        elif decoded == 0:
            receiving.append(receiving.pop(0))  # nothing new there: look at the next series, then wait a little
            conn.poll(PREFETCH_POLL_S)
    return conn.recv()


class WorkerProcess:
    """Parent-side handle of the worker: spawns it, wakes it, restarts it if it dies.

    Args:
        config: node configuration passed to :func:`worker_main`.
    """

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self._ctx = multiprocessing.get_context("spawn")
        self._lock = threading.Lock()
        self._process = None
        self._conn = None
        self._stopping = threading.Event()
        self._monitor: threading.Thread | None = None
        self._ready = self._ctx.Event()
        self.restarts = 0

    def start(self) -> None:
        """Spawn the worker and a thread that restarts it if it dies unexpectedly."""
        self._spawn()
        self._monitor = threading.Thread(target=self._watch, name="worker-monitor", daemon=True)
        self._monitor.start()

    def _spawn(self) -> None:
        receiver, sender = self._ctx.Pipe(duplex=False)
        self._ready.clear()
        process = self._ctx.Process(
            target=worker_main, args=(self.config, receiver, self._ready), name="vacseg-worker", daemon=True
        )
        process.start()
        receiver.close()
        with self._lock:
            self._process, self._conn = process, sender
        logger.info("Worker process %d started", process.pid)

    def _watch(self) -> None:
        while not self._stopping.is_set():
            process = self._process
            multiprocessing.connection.wait([process.sentinel])
            if self._stopping.is_set():
                return
            self.restarts += 1
            logger.error("Worker process %d died with exit code %s; restart %d", process.pid, process.exitcode, self.restarts)
            if self.restarts > MAX_ATTEMPTS * 2:
                logger.error("Worker keeps dying; not restarting it. Fix the processor and restart the node.")
                return
            self._stopping.wait(min(2.0 ** self.restarts, 30.0))
            if not self._stopping.is_set():
                self._spawn()

    @property
    def pid(self) -> int | None:
        """The worker process's id (None before :meth:`start`)."""
        process = self._process
        return process.pid if process is not None else None

    @property
    def alive(self) -> bool:
        """True while the worker process runs."""
        process = self._process
        return process is not None and process.is_alive()

    @property
    def ready(self) -> bool:
        """True once the running worker has loaded its processor (the bundle)."""
        return self._ready.is_set()

    def wait_ready(self, timeout: float) -> bool:
        """Wait until the worker has loaded its processor (the bundle); True if it has.

        Jobs that arrive earlier are not lost (they wait on disk); this only lets a caller
        that measures latency, or a script, start once the model is in memory.

        Args:
            timeout: seconds to wait.
        """
        return self._ready.wait(timeout)

    def notify_receiving(self, job_id: str) -> None:
        """Tell the worker that the SCP has started receiving ``job_id`` (it may decode it ahead).

        Args:
            job_id: the job just created.
        """
        self._send((RECEIVING, job_id))

    def _send(self, message: object) -> None:
        with self._lock:
            try:
                if self._conn is not None:
                    self._conn.send(message)
            except OSError:
                logger.warning("Worker not reachable; %s stays on disk", message)

    def submit_correction(self, job_id: str) -> None:
        """Wake the worker: a correction of ``job_id`` is stored on disk, to be measured.

        Args:
            job_id: the job corrected.
        """
        self._send((CORRECTION, job_id))

    def submit(self, job_id: str) -> None:
        """Wake the worker: ``job_id`` is queued on disk.

        Args:
            job_id: the job just queued (informational; the worker reads the disk).
        """
        self._send(job_id)

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the worker to stop after its current job; terminate it after ``timeout``.

        Args:
            timeout: seconds to wait (default 10).
        """
        self._stopping.set()
        with self._lock:
            process, conn = self._process, self._conn
            self._conn = None
        if process is None:
            return
        try:
            conn.send(None)
            conn.close()
        except OSError:
            pass
        process.join(timeout)
        if process.is_alive():
            logger.warning("Worker did not stop within %.0f s; terminating it (its job resumes at next start)", timeout)
            process.terminate()
            process.join(5)
