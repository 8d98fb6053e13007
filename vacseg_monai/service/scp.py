"""The Storage SCP of the node: store, fsync, acknowledge, assemble series, enqueue.

The SCP never runs the model. A C-STORE is acknowledged with success only after
the bytes received from the peer (written as they came, with file meta, not
decoded and re-encoded) are on disk and fsync'ed under
``jobs/<job_id>/series/<SOPInstanceUID>.dcm``. In the node's own process
(:func:`run_node`) pynetdicom writes each instance into a file under
``incoming/`` while it arrives (:func:`receive_into_files`); the handler parses
only its header (the pixel data stay on disk) and renames the file into its job,
so no instance, however large, is held whole in memory. The node's side of each association looks for
the next PDU every :data:`DUL_LOOP_DELAY_S` rather than pynetdicom's 1 ms (:func:`handle_connection_open`),
which each C-STORE would otherwise wait on a few times. A series is complete when the
last association that sent to it ends (release, abort or dropped connection),
or ``series_timeout`` seconds after that if nothing more arrives, so a sender
may spread a series over several associations. The complete job is marked
``queued`` on disk and the worker process is woken.

An RT Structure Set is not a series to contour but a correction of one the node
contoured: :class:`~vacseg_monai.service.corrections.CorrectionInbox` stores it (fsync'ed
before the acknowledgement too) under ``corrections/<job_id>/`` or, when it matches no
job, ``corrections/unmatched/``, and wakes the worker, which measures the edit.

Handlers receive their dependencies through the ``evt_handlers`` binding
arguments; there is no module state.
"""

from __future__ import annotations

import enum
import logging
import secrets
import shutil
import signal
import ssl
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pydicom import Dataset, dcmread
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, evt
from pynetdicom.sop_class import Verification

from vacseg_monai.dicom.rtstruct import RTSTRUCT_SOP_CLASS_UID
from vacseg_monai.dicom.series import DEFER_SIZE
from vacseg_monai.service.config import NodeConfig
from vacseg_monai.service.corrections import CorrectionInbox
from vacseg_monai.service.counters import NodeCounters
from vacseg_monai.service.jobs import JobState, JobStore, fsync_file, move_atomic, write_atomic
from vacseg_monai.service.review import ControlListener
from vacseg_monai.service.uids import InvalidUIDError, sanitize_uid
from vacseg_monai.service.worker import WorkerProcess

__all__ = [
    "DicomNode",
    "SeriesAssembler",
    "StoreStatus",
    "handle_association_end",
    "handle_connection_open",
    "handle_requested",
    "handle_store",
    "handle_store_counted",
    "make_server_ssl_context",
    "receive_into_files",
    "run_node",
]

logger = logging.getLogger(__name__)


#: Folder of the store where pynetdicom writes instances as they arrive (same file system: moved by rename).
INCOMING_DIR = "incoming"

#: Seconds `run_node` waits for the worker to load the bundle before it logs an error (it keeps running).
WORKER_READY_TIMEOUT_S = 120

#: Seconds the reactor of an association's DICOM upper layer (pynetdicom's DUL) sleeps when it finds nothing
#: to read or send (pynetdicom's default is 1 ms). Each C-STORE waits on that sleep a few times (for the next
#: request after an acknowledgement, for the response to leave), so the default adds milliseconds per instance;
#: 0.2 ms costs a few per cent of a core while an association is open and idle. See :func:`handle_connection_open`.
DUL_LOOP_DELAY_S = 0.0002

#: Helper threads that parse received headers while the handlers fsync the files (one per concurrent
#: association is enough; more associations wait their turn).
HEADER_THREADS = 4


class StoreStatus(enum.IntEnum):
    """C-STORE response statuses this SCP sends (PS3.4 Table B.2-1 ranges)."""

    SUCCESS = 0x0000
    OUT_OF_RESOURCES = 0xA700  # free disk below --min-free-mb
    WRITE_FAILED = 0xA701  # OSError while writing/fsync'ing (Out of Resources range)
    CANNOT_UNDERSTAND = 0xC210  # data set cannot be decoded
    INVALID_UID = 0xC211  # Study/Series/SOP Instance UID invalid (e.g. path characters)
    MISSING_ATTRIBUTE = 0xC212  # Study/Series/SOP Instance UID missing
    PROCESSING_FAILURE = 0x0110  # anything unexpected


@dataclass
class _OpenSeries:
    job_id: str
    sop_uids: set[str] = field(default_factory=set)
    associations: set[int] = field(default_factory=set)
    timer: threading.Timer | None = None
    modalities: dict[str, str] = field(default_factory=dict)  # Modality -> file of its first instance


class SeriesAssembler:
    """Groups stored instances into series jobs and decides when a series is complete.

    Args:
        store: the job store.
        on_complete: called with the job id once a job is ``queued``.
        series_timeout: seconds to wait after the last association of a series
            ended before completing it; 0 completes at once (default 0).
        min_free_mb: refuse instances below this free space (default 0).
        on_open: called with the job id when the first instance of a new series job is stored
            (default None).
    """

    def __init__(
        self,
        store: JobStore,
        on_complete: Callable[[str], None],
        *,
        series_timeout: float = 0.0,
        min_free_mb: float = 0.0,
        on_open: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.on_complete = on_complete
        self.on_open = on_open
        self.series_timeout = float(series_timeout)
        self.min_free_bytes = int(min_free_mb * 1024 * 1024)
        self._lock = threading.Lock()
        self._open: dict[tuple[str, str], _OpenSeries] = {}
        self._by_association: dict[int, set[tuple[str, str]]] = {}
        self._closed = False
        self._helpers: ThreadPoolExecutor | None = None

    def read_header_beside(self, path: Path) -> Future:
        """Start parsing the header of the received file ``path`` on a helper thread; returns the future.

        The handler fsyncs the file meanwhile: :func:`os.fsync` releases the GIL, so the parse and the
        disk flush overlap instead of adding up before the acknowledgement. The helper threads start on
        first use and stop in :meth:`close`.
        """
        with self._lock:
            if self._helpers is None:
                self._helpers = ThreadPoolExecutor(max_workers=HEADER_THREADS, thread_name_prefix="store-header")
            return self._helpers.submit(dcmread, path, defer_size=DEFER_SIZE)

    def free_space_ok(self) -> bool:
        """True if the output directory's file system has more than the floor free."""
        return shutil.disk_usage(self.store.root).free >= self.min_free_bytes

    def store_instance(
        self,
        association: int,
        calling_aet: str,
        study_uid: str,
        series_uid: str,
        sop_uid: str,
        data: bytes | Path,
        *,
        synced: bool = False,
        frame_of_reference_uid: str = "",
        modality: str = "",
    ) -> bool:
        """Write one instance durably into its series job.

        Args:
            association: identifier of the association the instance came on.
            calling_aet: the sender's AE title (recorded on a new job).
            study_uid: sanitised StudyInstanceUID.
            series_uid: sanitised SeriesInstanceUID.
            sop_uid: sanitised SOPInstanceUID, the file name.
            data: the encoded instance with preamble and file meta, as bytes or as a complete file,
                which is moved into the job (renamed when on the same file system).
            synced: True if the file ``data`` is already fsync'ed (:func:`~vacseg_monai.service.jobs.fsync_file`);
                its rename into the job is still synced here.
            frame_of_reference_uid: the instance's FrameOfReferenceUID, recorded on a new job (default "").
            modality: the instance's Modality, recorded on the job once the series is complete, so that the
                worker need not read the headers again to check it (default "").

        Returns:
            True if written, False if it was a duplicate of an instance already
            stored in the open series (a resend; nothing written).

        Raises:
            OSError: if writing fails; the instance is then not recorded.
        """
        key = (study_uid, series_uid)
        opened = None
        with self._lock:
            series = self._open.get(key)
            if series is None:
                job = self.store.create(study_uid=study_uid, series_uid=series_uid, calling_aet=calling_aet,
                                        frame_of_reference_uid=frame_of_reference_uid)
                series = self._open[key] = _OpenSeries(job.job_id)
                opened = job.job_id
            if series.timer is not None:
                series.timer.cancel()
                series.timer = None
            series.associations.add(association)
            self._by_association.setdefault(association, set()).add(key)
            if sop_uid in series.sop_uids:
                return False
            series.sop_uids.add(sop_uid)
            job_id = series.job_id
        try:
            target = self.store.series_dir(job_id) / f"{sop_uid}.dcm"
            if isinstance(data, Path):
                move_atomic(data, target, synced=synced)
            else:
                write_atomic(target, data)
        except BaseException:
            with self._lock:
                series.sop_uids.discard(sop_uid)
            raise
        with self._lock:
            series.modalities.setdefault(modality, target.name)
        if opened is not None and self.on_open is not None:
            self.on_open(opened)
        return True

    def association_ended(self, association: int) -> None:
        """Note that an association ended; complete or arm the timer of its series.

        Idempotent: release, abort and connection close may all report it.

        Args:
            association: identifier passed to :meth:`store_instance`.
        """
        to_close = []
        with self._lock:
            for key in self._by_association.pop(association, set()):
                series = self._open.get(key)
                if series is None:
                    continue
                series.associations.discard(association)
                if series.associations:
                    continue
                if self.series_timeout <= 0:
                    to_close.append(self._open.pop(key))
                else:
                    token = secrets.token_hex(4)
                    timer = threading.Timer(self.series_timeout, self._timer_fired, args=(key, series, token))
                    timer.daemon = True
                    series.timer = timer
                    timer.token = token  # type: ignore[attr-defined]
                    if not self._closed:
                        timer.start()
        for series in to_close:
            self._complete(series)

    def _timer_fired(self, key: tuple[str, str], series: _OpenSeries, token: str) -> None:
        with self._lock:
            current = self._open.get(key)
            if (
                current is not series
                or series.associations
                or series.timer is None
                or getattr(series.timer, "token", None) != token
            ):
                return
            self._open.pop(key)
        self._complete(series)

    def _complete(self, series: _OpenSeries) -> None:
        try:
            self.store.transition(series.job_id, JobState.QUEUED, n_instances=len(series.sop_uids),
                                  modalities=dict(series.modalities))
        except Exception:
            logger.exception("Cannot queue job %s", series.job_id)
            return
        self.on_complete(series.job_id)

    def recover(self) -> list[str]:
        """Queue jobs left in ``received`` by a previous run (their senders are gone).

        Returns:
            The ids of the jobs queued.
        """
        queued = []
        for job in self.store.in_states(JobState.RECEIVED):
            series_dir = self.store.series_dir(job.job_id)
            if series_dir.is_dir():
                for tmp in series_dir.glob(".*.tmp"):
                    tmp.unlink(missing_ok=True)
                n = len(list(series_dir.glob("*.dcm")))
            else:
                n = 0
            if n == 0:
                self.store.transition(job.job_id, JobState.FAILED, reason="no instance was stored before the node stopped")
                continue
            self.store.transition(job.job_id, JobState.QUEUED, n_instances=n)
            logger.info("Recovered job %s with %d instances from a previous run", job.job_id, n)
            queued.append(job.job_id)
        return queued

    def close(self) -> None:
        """Cancel the series timers; open series stay ``received`` and are recovered at next start."""
        with self._lock:
            self._closed = True
            for series in self._open.values():
                if series.timer is not None:
                    series.timer.cancel()
            helpers, self._helpers = self._helpers, None
        if helpers is not None:
            helpers.shutdown(wait=True)


def _pixel_data_problem(ds, transfer_syntax) -> str | None:
    """Say what is wrong with the native (uncompressed) pixel data of ``ds``, or None.

    Only the length is checked: native pixel data shorter than Rows x Columns x
    SamplesPerPixel x frames x BitsAllocated/8 cannot be decoded later, so the
    instance is refused now rather than accepted and failed in the worker.
    Encapsulated (compressed) pixel data is left to the series reader.
    """
    if "PixelData" not in ds or getattr(transfer_syntax, "is_encapsulated", True):
        return None
    try:
        bits = int(ds.BitsAllocated)
        expected = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * int(
            ds.get("NumberOfFrames", 1) or 1
        )
        expected = (expected * bits + 7) // 8
    except (AttributeError, TypeError, ValueError):
        return "the pixel data has no usable Rows, Columns or BitsAllocated"
    element = ds.get_item("PixelData", keep_deferred=True)  # not read: its length is in the header
    got = element.length if element.value is None else len(element.value)
    if got < expected:
        return f"the pixel data holds {got} bytes where Rows, Columns and BitsAllocated need {expected} (truncated?)"
    return None


def handle_store(event: evt.Event, assembler: SeriesAssembler, inbox: CorrectionInbox | None = None) -> int:
    """EVT_C_STORE handler: store durably, then acknowledge.

    Args:
        event: the pynetdicom event.
        assembler: the node's :class:`SeriesAssembler` (bound via ``evt_handlers``).
        inbox: where RT Structure Sets go, as corrections (default None: they are stored as series,
            and fail in the worker as not CT).

    Returns:
        A :class:`StoreStatus` value.
    """
    assoc = event.assoc
    peer = f"{assoc.requestor.ae_title}@{assoc.requestor.address}"
    try:
        if not assembler.free_space_ok():
            logger.error(
                "Refusing instance from %s: free space on %s below the floor of %d MiB",
                peer, assembler.store.root, assembler.min_free_bytes // (1024 * 1024),
            )
            return StoreStatus.OUT_OF_RESOURCES
    except OSError:
        logger.exception("Cannot check free space on %s", assembler.store.root)
        return StoreStatus.OUT_OF_RESOURCES
    # With pynetdicom's STORE_RECV_CHUNKED_DATASET (as run_node sets it) the received bytes are already
    # in a file, preceded by file meta. Its header (pixel data left on disk) is parsed on a helper thread
    # while this one fsyncs the file.
    if event.dataset_path is None:
        return _check_and_store(event, assembler, peer, lambda: event.dataset, None, None, inbox)
    received = Path(event.dataset_path)
    header = assembler.read_header_beside(received)
    try:
        fsync_file(received)
    except OSError as exc:
        sync_error = exc
    else:
        sync_error = None
    return _check_and_store(event, assembler, peer, header.result, received, sync_error, inbox)


def handle_store_counted(
    event: evt.Event, assembler: SeriesAssembler, inbox: CorrectionInbox | None, counters: NodeCounters
) -> int:
    """EVT_C_STORE handler of the node: :func:`handle_store`, its answer counted in ``counters``.

    Args:
        event: the pynetdicom event.
        assembler: the node's :class:`SeriesAssembler`.
        inbox: where RT Structure Sets go, as corrections (None: stored as series).
        counters: the node's :class:`~vacseg_monai.service.counters.NodeCounters` (read by ``/metrics``).

    Returns:
        A :class:`StoreStatus` value.
    """
    status = handle_store(event, assembler, inbox)
    counters.store_answered(status, correction=inbox is not None
                            and event.context.abstract_syntax == RTSTRUCT_SOP_CLASS_UID)
    return status


def _check_and_store(
    event: evt.Event,
    assembler: SeriesAssembler,
    peer: str,
    load: Callable[[], Dataset],
    received: Path | None,
    sync_error: OSError | None,
    inbox: CorrectionInbox | None = None,
) -> int:
    """The checks and the durable store of :func:`handle_store`; returns its status.

    ``load`` gives the data set (its header at least); ``received`` is the file holding it, already
    fsync'ed unless ``sync_error`` says why not, or None when the data set was received into memory.
    """
    assoc = event.assoc
    structure_set = inbox is not None and event.context.abstract_syntax == RTSTRUCT_SOP_CLASS_UID
    try:
        ds = load()
        raw = {name: ds.get(name) for name in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")}
    except Exception:
        logger.exception("Cannot decode the data set sent by %s", peer)
        if structure_set:  # kept, with the reason, though refused
            _store_correction(event, inbox, peer, None, received, sync_error, problem="it cannot be decoded")
        return StoreStatus.CANNOT_UNDERSTAND
    if inbox is not None and (structure_set or ds.get("SOPClassUID") == RTSTRUCT_SOP_CLASS_UID):
        return _store_correction(event, inbox, peer, ds, received, sync_error)
    missing = [name for name, value in raw.items() if value in (None, "")]
    if missing:
        logger.error("Refusing instance from %s: missing %s", peer, ", ".join(missing))
        return StoreStatus.MISSING_ATTRIBUTE
    try:
        uids = {name: sanitize_uid(value, what=name) for name, value in raw.items()}
    except InvalidUIDError:
        logger.exception("Refusing instance from %s with an invalid UID", peer)
        return StoreStatus.INVALID_UID
    try:
        problem = _pixel_data_problem(ds, event.context.transfer_syntax)
    except Exception:
        logger.exception("Cannot decode the pixel data of instance %s from %s", uids["SOPInstanceUID"], peer)
        return StoreStatus.CANNOT_UNDERSTAND
    if problem is not None:
        logger.error("Refusing instance %s from %s: %s", uids["SOPInstanceUID"], peer, problem)
        return StoreStatus.CANNOT_UNDERSTAND
    try:
        if sync_error is not None:
            raise sync_error
        data = received if received is not None else event.encoded_dataset(include_meta=True)
        written = assembler.store_instance(
            id(assoc), assoc.requestor.ae_title, uids["StudyInstanceUID"], uids["SeriesInstanceUID"],
            uids["SOPInstanceUID"], data, synced=received is not None,
            frame_of_reference_uid=str(ds.get("FrameOfReferenceUID", "") or ""),
            modality=str(ds.get("Modality", "") or ""),
        )
    except OSError:
        logger.exception("Cannot write instance %s from %s", uids["SOPInstanceUID"], peer)
        return StoreStatus.WRITE_FAILED
    except Exception:
        logger.exception("Unexpected failure storing instance %s from %s", uids["SOPInstanceUID"], peer)
        return StoreStatus.PROCESSING_FAILURE
    if not written:
        logger.info("Duplicate instance %s from %s ignored", uids["SOPInstanceUID"], peer)
    else:
        logger.debug("Stored %s of series %s", uids["SOPInstanceUID"], uids["SeriesInstanceUID"])
    return StoreStatus.SUCCESS


def _store_correction(
    event: evt.Event,
    inbox: CorrectionInbox,
    peer: str,
    ds: Dataset | None,
    received: Path | None,
    sync_error: OSError | None,
    problem: str | None = None,
) -> int:
    """Store an RT Structure Set as a correction (see :func:`_check_and_store` for the arguments)."""
    try:
        if sync_error is not None:
            raise sync_error
        data = received if received is not None else event.encoded_dataset(include_meta=True)
        inbox.store(ds, data, synced=received is not None, calling_aet=event.assoc.requestor.ae_title,
                    problem=problem)
    except OSError:
        logger.exception("Cannot write the structure set from %s", peer)
        return StoreStatus.WRITE_FAILED
    except Exception:
        logger.exception("Unexpected failure storing the structure set from %s", peer)
        return StoreStatus.PROCESSING_FAILURE
    return StoreStatus.SUCCESS


def handle_requested(event: evt.Event, allowed_aet: list[str], allowed_host: list[str]) -> None:
    """EVT_REQUESTED handler: reject peers not on the allow-lists.

    Args:
        event: the pynetdicom event.
        allowed_aet: accepted calling AE titles; empty accepts any.
        allowed_host: accepted peer addresses; empty accepts any.
    """
    assoc = event.assoc
    calling = assoc.requestor.primitive.calling_ae_title.strip()
    address = assoc.requestor.address
    if allowed_host and address not in allowed_host:
        logger.warning("Rejecting association from %s (%s): address not in --allowed-host", address, calling)
        assoc.acse.send_reject(0x01, 0x01, 0x01)
        assoc.kill()  # lets the DUL flush the A-ASSOCIATE-RJ before the socket closes
    elif allowed_aet and calling not in allowed_aet:
        logger.warning("Rejecting association from %s (%s): calling AE title not in --allowed-aet", address, calling)
        assoc.acse.send_reject(0x01, 0x01, 0x03)
        assoc.kill()


def handle_connection_open(event: evt.Event, loop_delay: float = DUL_LOOP_DELAY_S) -> None:
    """EVT_CONN_OPEN handler: shorten the idle sleep of the new association's DUL reactor to ``loop_delay`` s.

    pynetdicom keeps this delay in the DUL's ``_run_loop_delay`` attribute (private, so looked up first);
    when a pynetdicom version has no such attribute the default is left and a debug line says so.

    Args:
        event: the pynetdicom event.
        loop_delay: seconds (default :data:`DUL_LOOP_DELAY_S`).
    """
    dul = event.assoc.dul
    if hasattr(dul, "_run_loop_delay"):
        dul._run_loop_delay = loop_delay
    else:
        logger.debug("This pynetdicom has no DUL loop delay to set; its default is kept")


def handle_association_end(event: evt.Event, assembler: SeriesAssembler) -> None:
    """EVT_RELEASED / EVT_ABORTED / EVT_CONN_CLOSE handler: let the assembler complete series.

    Args:
        event: the pynetdicom event.
        assembler: the node's :class:`SeriesAssembler`.
    """
    assembler.association_ended(id(event.assoc))


def make_server_ssl_context(cert: Path, key: Path, ca: Path | None = None) -> ssl.SSLContext:
    """TLS context for the SCP; with ``ca`` the peer must present a certificate it signed.

    Args:
        cert: PEM certificate.
        key: PEM private key.
        ca: PEM CA bundle for client authentication (default None: no client certificate).

    Raises:
        ValueError: if a file cannot be loaded.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(certfile=str(cert), keyfile=str(key))
        if ca is not None:
            context.load_verify_locations(cafile=str(ca))
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"Cannot load TLS files cert={cert} key={key} ca={ca}: {exc}") from exc
    return context


class DicomNode:
    """The running node: job store, SCP server and worker process.

    Args:
        config: the node configuration.
    """

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.store = JobStore(config.output_directory)
        self.worker = WorkerProcess(config)
        self.assembler = SeriesAssembler(
            self.store, self.worker.submit, series_timeout=config.series_timeout, min_free_mb=config.min_free_mb,
            on_open=self.worker.notify_receiving,
        )
        self.corrections = CorrectionInbox(self.store, on_stored=self.worker.submit_correction)
        self.counters = NodeCounters()
        self.dashboard = None  # a DashboardServer once started with config.http_port
        self.started = 0.0
        self._server = None
        self._stop = threading.Event()
        # `serve_scp.py --approve JOB` in another process wakes the worker through this socket.
        self.control = ControlListener(config.output_directory, self.worker.submit)

    @property
    def port(self) -> int:
        """The port actually bound (useful with port 0)."""
        if self._server is None:
            raise RuntimeError("The node is not started; call start() first.")
        return self._server.server_address[1]

    @property
    def listening(self) -> bool:
        """True while the SCP listens."""
        return self._server is not None

    @property
    def incoming(self) -> Path:
        """The folder into which instances are received as files, under :func:`receive_into_files`."""
        return self.store.root / INCOMING_DIR

    def start(self) -> None:
        """Recover unfinished jobs, start the worker, then listen.

        The node changes no process-wide setting: received instances are held in memory until they
        are stored, unless the process owner receives them straight into :attr:`incoming`
        (:func:`receive_into_files`, as :func:`run_node` does). Files left there by a crash were
        never acknowledged and are removed.
        """
        cfg = self.config
        shutil.rmtree(self.incoming, ignore_errors=True)
        self.incoming.mkdir(parents=True)
        self.assembler.recover()
        self.started = time.time()
        if cfg.http_port is not None:  # first: a port in use fails the start before any DICOM is accepted
            from vacseg_monai.service.dashboard import DashboardServer

            self.dashboard = DashboardServer.for_node(self)
            self.dashboard.start()
        self.worker.start()
        self.control.start()
        ae = AE(ae_title=cfg.ae_title)
        ae.acse_timeout = cfg.acse_timeout
        ae.dimse_timeout = cfg.dimse_timeout
        ae.network_timeout = cfg.network_timeout
        ae.maximum_pdu_size = 0
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
        handlers = [
            (evt.EVT_CONN_OPEN, handle_connection_open, [DUL_LOOP_DELAY_S]),
            (evt.EVT_C_STORE, handle_store_counted, [self.assembler, self.corrections, self.counters]),
            (evt.EVT_REQUESTED, handle_requested, [cfg.allowed_aet, cfg.allowed_host]),
            (evt.EVT_RELEASED, handle_association_end, [self.assembler]),
            (evt.EVT_ABORTED, handle_association_end, [self.assembler]),
            (evt.EVT_CONN_CLOSE, handle_association_end, [self.assembler]),
        ]
        ssl_context = None
        if cfg.tls_enabled:
            ssl_context = make_server_ssl_context(cfg.tls_cert, cfg.tls_key, cfg.tls_ca)
        self._server = ae.start_server(
            (cfg.bind_address, cfg.port), block=False, evt_handlers=handlers, ssl_context=ssl_context
        )
        self._ae = ae
        logger.info(
            "%s listening on %s:%d%s, output %s, destination %s",
            cfg.ae_title, cfg.bind_address, self.port, " (TLS)" if ssl_context else "",
            cfg.output_directory, cfg.destination or "none",
        )

    def request_stop(self) -> None:
        """Ask :meth:`wait` to return (safe from a signal handler)."""
        self._stop.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until :meth:`request_stop`; returns True if stop was requested.

        Args:
            timeout: seconds to wait (default None: forever).
        """
        return self._stop.wait(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop listening, cancel series timers and stop the worker.

        Args:
            timeout: seconds to wait for the worker to finish its job (default 10).
        """
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if self.dashboard is not None:
            self.dashboard.stop()
            self.dashboard = None
        self.control.stop()
        self.assembler.close()
        self.worker.stop(timeout)

    def __enter__(self) -> DicomNode:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


@contextmanager
def receive_into_files(folder: str | Path) -> Iterator[Path]:
    """Make pynetdicom receive every C-STORE of this process straight into a file in ``folder``.

    Both settings are process-wide: pynetdicom's ``STORE_RECV_CHUNKED_DATASET`` switch and the
    :mod:`tempfile` folder in which pynetdicom creates those files. Only the owner of a process that
    runs nothing but the node should use this (:func:`run_node` does), with the node's
    :attr:`DicomNode.incoming`, so that a received file is renamed into its job rather than copied;
    any other Storage SCP in the process would receive into that folder too. Both are restored on exit.

    Args:
        folder: where the files are created (must exist).

    Yields:
        ``folder``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"Cannot receive into {folder}: not a folder; start the node first.")
    saved = (_config.STORE_RECV_CHUNKED_DATASET, tempfile.tempdir)
    _config.STORE_RECV_CHUNKED_DATASET = True
    tempfile.tempdir = str(folder)
    try:
        yield folder
    finally:
        _config.STORE_RECV_CHUNKED_DATASET, tempfile.tempdir = saved


def _report_ready(node: DicomNode) -> None:
    config = node.config
    if node.worker.wait_ready(WORKER_READY_TIMEOUT_S):
        logger.info("Ready: the worker has loaded %s", config.bundle)
    else:
        logger.error(
            "The worker has not loaded its processor (%s, bundle %s) after %d s; instances are still stored "
            "and queued on disk, and will be processed once it starts. See the worker's log lines above.",
            config.processor, config.bundle, WORKER_READY_TIMEOUT_S,
        )


def run_node(config: NodeConfig) -> None:
    """Run the node until SIGINT/SIGTERM.

    Args:
        config: the node configuration.
    """
    node = DicomNode(config)
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda *_: node.request_stop())
    node.start()
    try:
        # This process runs the node alone: it receives straight into files.
        with receive_into_files(node.incoming):
            threading.Thread(target=_report_ready, args=(node,), name="ready-report", daemon=True).start()
            node.wait()
    finally:
        logger.info("Stopping")
        node.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
