"""The node's read-only dashboard: a page, a JSON API and Prometheus metrics, served over HTTP.

``serve_scp.py --http-port PORT`` starts a :class:`DashboardServer` in the node's process, on
threads of its own. It only reads: the job records (``jobs/<id>/job.json``), the files the worker
leaves beside them (``timings.json``, ``qa.png``, the outputs), the free disk space, and what
the node's process knows (the worker process, the SCP's :class:`~vacseg_monai.service.counters.NodeCounters`).
It takes none of the SCP's locks, and no request can change a job.

Routes (GET and HEAD; any other method is answered 405):

- ``/`` and ``/jobs/<id>``: the page (``dashboard_static/``: HTML, script, style sheet; no CDN).
  It fetches the API every few seconds and redraws itself without a reload.
- ``/api/jobs``: the newest jobs (``?limit=N``, default 200) and the count of every state;
  ``/api/jobs/<id>``: one job with its history, timings, outputs, export and corrections;
  ``/api/jobs/<id>/qa.png``: its QA picture; ``/api/health``: disk, queue, worker, last export.
- ``/metrics``: Prometheus text format.

The server is the standard library's :class:`http.server.ThreadingHTTPServer`: a handful of
read-only routes need no framework, and a node often runs where nothing may be installed but
what the package already pulls in.

Security: a dashboard on anything but a loopback address needs a bearer token or TLS
(:meth:`vacseg_monai.service.config.NodeConfig` refuses to start otherwise, and so does
:class:`DashboardServer`). With a token, every API route, the QA pictures and ``/metrics`` ask
for ``Authorization: Bearer <token>`` (401 otherwise); the page itself holds no data, asks for
the token once and keeps it in the browser tab's ``sessionStorage``. With the node's TLS
certificate the dashboard speaks HTTPS (and, with ``--tls-ca``, asks for a client certificate
too). Job ids must have the shape :meth:`~vacseg_monai.service.jobs.JobStore.create` gives them,
and a file is served only from a fixed list of names inside that job's folder, so no path of a
request reaches the file system: ``..``, ``%2e%2e``, absolute paths and other ids get 404.
Patient names appear only with ``--http-show-names``.
"""

from __future__ import annotations

import hmac
import json
import logging
import shutil
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from itertools import pairwise
from pathlib import Path
from typing import Any, Self
from urllib.parse import parse_qs, unquote, urlsplit

from vacseg_monai.service.config import NodeConfig, is_loopback
from vacseg_monai.service.counters import NodeCounters
from vacseg_monai.service.jobs import RECORD_NAME, JobState, is_valid_job_id

__all__ = [
    "DEFAULT_JOB_LIMIT",
    "DashboardError",
    "DashboardServer",
    "JobReader",
    "render_metrics",
]

logger = logging.getLogger(__name__)

#: Jobs ``/api/jobs`` lists when the request gives no ``limit`` (the newest first).
DEFAULT_JOB_LIMIT = 200
#: Seconds a connection may stay silent before the server drops it.
REQUEST_TIMEOUT_S = 10.0
#: Requests answered at once; more wait in the listen backlog (a flood cannot start threads without bound
#: in the SCP's process).
MAX_CONCURRENT_REQUESTS = 8
#: Buckets (seconds) of the latency histogram: series complete -> results sent.
LATENCY_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
#: Buckets (seconds) of the stage histograms.
STAGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)
#: What the time spent in each state of a job's history is called in the stage histogram.
_STAGE_OF_STATE = {"received": "receive", "queued": "queue", "inferring": "inference", "exporting": "export",
                   "review": "review"}
_STATIC = {"/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
           "/static/style.css": ("style.css", "text/css; charset=utf-8")}
_QA_PICTURE = "qa.png"
_TIMINGS = "timings.json"
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; object-src 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class DashboardError(ValueError):
    """The dashboard cannot be started as configured (an unprotected non-loopback address, a port in use)."""


class JobReader:
    """Reads the job folders of a node's output directory for the dashboard; never writes.

    Records are parsed again only when their file changed (size and modification time), and the DICOM
    headers it reads (patient, model version) once per job; the caches are this object's own and
    guarded by its own lock, held only to look up or store an entry.

    Args:
        root: the node's output directory.
        show_names: include patient names (default False: patient IDs only).
    """

    def __init__(self, root: str | Path, *, show_names: bool = False) -> None:
        self.root = Path(root)
        self.jobs_dir = self.root / "jobs"
        self.show_names = show_names
        self._lock = threading.Lock()
        self._records: dict[str, tuple[tuple[int, int], dict]] = {}
        self._timings: dict[str, tuple[tuple[int, int], dict]] = {}
        self._headers: dict[tuple[str, str], dict] = {}

    def job_dir(self, job_id: str) -> Path | None:
        """The folder of ``job_id`` if the id is valid and the job exists inside the jobs folder, else None."""
        if not is_valid_job_id(job_id):
            return None
        folder = self.jobs_dir / job_id
        try:
            if folder.resolve().parent != self.jobs_dir.resolve() or not (folder / RECORD_NAME).is_file():
                return None
        except OSError:
            return None
        return folder

    def _cached_json(self, cache: dict, job_id: str, path: Path) -> dict | None:
        try:
            info = path.stat()
        except OSError:
            return None
        key = (info.st_mtime_ns, info.st_size)
        with self._lock:
            hit = cache.get(job_id)
        if hit is not None and hit[0] == key:
            return hit[1]
        try:
            data = json.loads(path.read_bytes())
        except (OSError, ValueError):
            logger.debug("Cannot read %s (being replaced?)", path)
            return hit[1] if hit is not None else None
        if not isinstance(data, dict):
            return None
        with self._lock:
            cache[job_id] = (key, data)
        return data

    def record(self, job_id: str) -> dict | None:
        """The decoded ``job.json`` of a valid, existing job; None otherwise."""
        folder = self.job_dir(job_id)
        return None if folder is None else self._cached_json(self._records, job_id, folder / RECORD_NAME)

    def job_ids(self) -> list[str]:
        """Ids of the jobs on disk, oldest first."""
        try:
            names = [entry.name for entry in self.jobs_dir.iterdir() if is_valid_job_id(entry.name)]
        except OSError:
            return []
        names.sort()
        with self._lock:  # forget jobs deleted from disk
            present = set(names)
            for cache in (self._records, self._timings):
                for gone in set(cache) - present:
                    del cache[gone]
            for key in [key for key in self._headers if key[0] not in present]:
                del self._headers[key]
        return names

    def _header(self, job_id: str, kind: str, path: Path | None) -> dict:
        """Patient fields (``kind="series"``) or the model version (``"output"``) from one DICOM header."""
        with self._lock:
            cached = self._headers.get((job_id, kind))
        if cached is not None or path is None:
            return cached or {}
        from pydicom import dcmread

        try:
            ds = dcmread(path, stop_before_pixels=True, specific_tags=[
                "PatientID", "PatientName", "SeriesDescription", "Modality", "SoftwareVersions"])
        except Exception:
            logger.debug("Cannot read the header of %s", path, exc_info=True)
            return {}
        if kind == "output":
            versions = ds.get("SoftwareVersions")
            values = [versions] if isinstance(versions, str) else [str(v) for v in (versions or [])]
            info = {"model_version": values[1] if len(values) > 1 else (values[0] if values else None)}
        else:
            info = {"patient_id": str(ds.get("PatientID", "") or ""), "patient_name": str(ds.get("PatientName", "") or ""),
                    "series_description": str(ds.get("SeriesDescription", "") or ""),
                    "modality": str(ds.get("Modality", "") or "")}
        with self._lock:
            self._headers[(job_id, kind)] = info
        return info

    def _first_instance(self, job_id: str, record: dict) -> Path | None:
        series = self.jobs_dir / job_id / "series"
        recorded = record.get("modalities") or {}
        for name in recorded.values():
            if (series / name).is_file():
                return series / name
        try:
            return next(series.glob("*.dcm"), None)
        except OSError:
            return None

    def _count_received(self, job_id: str, record: dict) -> int:
        """Instances stored so far in a job still receiving (its record counts them once complete)."""
        if record.get("state") != JobState.RECEIVED.value:
            return 0
        try:
            return sum(1 for entry in (self.jobs_dir / job_id / "series").iterdir() if entry.suffix == ".dcm")
        except OSError:
            return 0

    def summary(self, job_id: str, record: dict) -> dict:
        """The list row of one job: what the job list shows."""
        history = record.get("history") or []
        times = {entry.get("state"): entry.get("time") for entry in history}
        queued, finished = times.get("queued"), times.get("done")
        patient = self._header(job_id, "series", self._first_instance(job_id, record))
        outputs = record.get("outputs") or []
        model = self._header(job_id, "output", (self.jobs_dir / job_id / outputs[0]) if outputs else None)
        quality = record.get("quality") or {}
        structures = {name: {"score": s.get("score"), "flagged": bool(s.get("flagged"))}
                      for name, s in (quality.get("structures") or {}).items()}
        flagged = list(quality.get("flagged") or [])
        return {
            "job_id": job_id,
            "state": record.get("state"),
            "study_uid": record.get("study_uid"),
            "series_uid": record.get("series_uid"),
            "calling_aet": record.get("calling_aet"),
            "n_instances": record.get("n_instances") or self._count_received(job_id, record),
            "received": record.get("created"),
            "updated": record.get("updated"),
            "latency_s": round(finished - queued, 3) if queued is not None and finished is not None else None,
            "total_s": round(finished - record["created"], 3) if finished is not None and record.get("created") else None,
            "reason": record.get("reason"),
            "flagged": flagged,
            "held": record.get("state") == JobState.REVIEW.value,
            "quality": structures,
            "model_version": model.get("model_version"),
            "patient_id": patient.get("patient_id"),
            "patient_name": patient.get("patient_name") if self.show_names else None,
            "series_description": patient.get("series_description"),
            "modality": patient.get("modality"),
            "n_corrections": len(record.get("corrections") or []),
            "export_ok": (record.get("export") or {}).get("ok"),
        }

    def jobs(self, limit: int | None = None) -> tuple[list[dict], Counter]:
        """The newest ``limit`` jobs' rows (newest first; None: all) and the count of every state."""
        rows, counts = [], Counter()
        for job_id in reversed(self.job_ids()):
            record = self.record(job_id)
            if record is None:
                continue
            counts[record.get("state")] += 1
            if limit is None or len(rows) < limit:
                rows.append(self.summary(job_id, record))
        return rows, counts

    def timings(self, job_id: str) -> dict:
        """The processor's seconds per stage (``timings.json``), or {}."""
        folder = self.job_dir(job_id)
        data = None if folder is None else self._cached_json(self._timings, job_id, folder / _TIMINGS)
        return data or {}

    def detail(self, job_id: str) -> dict | None:
        """Everything the job page shows, or None for an invalid or unknown id."""
        record = self.record(job_id)
        if record is None:
            return None
        folder = self.jobs_dir / job_id
        history = []
        entries = record.get("history") or []
        for i, entry in enumerate(entries):
            end = entries[i + 1].get("time") if i + 1 < len(entries) else None
            history.append({**entry, "seconds": round(end - entry["time"], 3) if end and entry.get("time") else None})
        outputs = []
        for name in record.get("outputs") or []:
            path = folder / name
            outputs.append({"file": name, "bytes": path.stat().st_size if path.is_file() else None})
        quality = record.get("quality") or {}
        return {
            **self.summary(job_id, record),
            "history": history,
            "timings": self.timings(job_id),
            "outputs": outputs,
            "qa_picture": (folder / _QA_PICTURE).is_file(),
            "quality_threshold": quality.get("threshold"),
            "quality_input_reasons": quality.get("input_reasons") or [],
            "quality_detail": quality.get("structures") or {},
            "export": record.get("export"),
            "corrections": record.get("corrections") or [],
            "correction": record.get("correction"),
            "attempts": record.get("attempts", 0),
            "frame_of_reference_uid": record.get("frame_of_reference_uid"),
        }

    def qa_picture(self, job_id: str) -> Path | None:
        """The QA picture of a valid, existing job, if it has one."""
        folder = self.job_dir(job_id)
        if folder is None:
            return None
        path = folder / _QA_PICTURE
        return path if path.is_file() else None

    def records(self) -> list[tuple[str, dict]]:
        """``(job_id, record)`` of every readable job, oldest first (for the metrics)."""
        return [(job_id, rec) for job_id in self.job_ids() if (rec := self.record(job_id)) is not None]


def _histogram(name: str, help_text: str, buckets: tuple[float, ...], series: dict[str, list[float]],
               label: str | None = None) -> list[str]:
    """Prometheus text of one histogram; ``series`` maps a label value (or "" without ``label``) to observations."""
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
    for key in sorted(series):
        values = series[key]
        prefix = f'{label}="{key}",' if label else ""
        for bound in buckets:
            lines.append(f'{name}_bucket{{{prefix}le="{bound:g}"}} {sum(1 for v in values if v <= bound)}')
        lines.append(f'{name}_bucket{{{prefix}le="+Inf"}} {len(values)}')
        tail = f"{{{prefix[:-1]}}}" if prefix else ""
        lines.append(f"{name}_sum{tail} {sum(values):.6g}")
        lines.append(f"{name}_count{tail} {len(values)}")
    return lines


def _scalar(name: str, kind: str, help_text: str, values: dict[str, float] | float, label: str | None = None) -> list[str]:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    if isinstance(values, dict):
        lines += [f'{name}{{{label}="{key}"}} {value:g}' for key, value in sorted(values.items())]
    else:
        lines.append(f"{name} {values:g}")
    return lines


def _stage_observations(reader: JobReader, records: list[tuple[str, dict]]) -> tuple[dict, dict, list]:
    """Seconds per history stage, per processor stage (``timings.json``), and latencies, over ``records``."""
    stages: dict[str, list[float]] = {}
    processor: dict[str, list[float]] = {}
    latencies: list[float] = []
    for job_id, record in records:
        history = record.get("history") or []
        spent: dict[str, float] = {}
        for entry, following in pairwise(history):
            stage = _STAGE_OF_STATE.get(entry.get("state"))
            if stage is not None:
                spent[stage] = spent.get(stage, 0.0) + max(following["time"] - entry["time"], 0.0)
        for stage, seconds in spent.items():
            stages.setdefault(stage, []).append(seconds)
        times = {entry.get("state"): entry.get("time") for entry in history}
        if record.get("state") == JobState.DONE.value and times.get("queued") is not None:
            latencies.append(times["done"] - times["queued"])
            for stage, seconds in reader.timings(job_id).items():
                if isinstance(seconds, (int, float)):
                    processor.setdefault(stage, []).append(float(seconds))
    return stages, processor, latencies


def render_metrics(reader: JobReader, health: dict, counters: dict) -> str:
    """The Prometheus text exposition of the node.

    Args:
        reader: the job folders.
        health: :meth:`DashboardServer.health` (disk, queue, worker).
        counters: :meth:`~vacseg_monai.service.counters.NodeCounters.snapshot` ({} without an SCP).
    """
    records = reader.records()
    by_state = {state.value: 0 for state in JobState}
    for _, record in records:
        by_state[record.get("state")] = by_state.get(record.get("state"), 0) + 1
    stages, processor, latencies = _stage_observations(reader, records)
    exports = [record["export"] for _, record in records if record.get("export")]
    worker = health.get("worker") or {}
    lines = [
        *_scalar("vacseg_jobs", "gauge", "Jobs on disk by state.", by_state, "state"),
        *_histogram("vacseg_job_latency_seconds", "Seconds from a complete series to its results sent (done jobs).",
                    LATENCY_BUCKETS, {"": latencies}),
        *_histogram("vacseg_job_stage_seconds", "Seconds each job spent in a stage (its state history).",
                    STAGE_BUCKETS, stages, "stage"),
        *_histogram("vacseg_processor_stage_seconds", "Seconds of each processor stage (timings.json of done jobs).",
                    STAGE_BUCKETS, processor, "stage"),
        *_scalar("vacseg_instances_received_total", "counter", "Instances acknowledged with Success since start.",
                 counters.get("instances_received", 0)),
        *_scalar("vacseg_corrections_received_total", "counter", "Structure sets stored as corrections since start.",
                 counters.get("corrections_received", 0)),
        *_scalar("vacseg_store_refusals_total", "counter", "C-STOREs refused since start, by DIMSE status.",
                 counters.get("refused", {}), "status"),
        *_scalar("vacseg_export_attempts_total", "counter", "Association attempts of the recorded exports.",
                 sum(int(e.get("attempts") or 0) for e in exports)),
        *_scalar("vacseg_export_retries_total", "counter", "Export attempts after the first one, over recorded exports.",
                 sum(max(int(e.get("attempts") or 0) - 1, 0) for e in exports)),
        *_scalar("vacseg_exports_failed_total", "counter", "Recorded exports that gave up.",
                 sum(1 for e in exports if not e.get("ok"))),
        *_scalar("vacseg_flagged_jobs", "gauge", "Jobs whose quality score flags a structure.",
                 sum(1 for _, r in records if (r.get("quality") or {}).get("flagged"))),
        *_scalar("vacseg_queue_length", "gauge", "Jobs queued and not started.", health.get("queue_length", 0)),
        *_scalar("vacseg_disk_free_bytes", "gauge", "Free bytes on the output folder's file system.",
                 health.get("disk", {}).get("free_bytes", 0)),
        *_scalar("vacseg_disk_floor_bytes", "gauge", "Free bytes below which instances are refused (0xA700).",
                 health.get("disk", {}).get("floor_bytes", 0)),
        *_scalar("vacseg_worker_up", "gauge", "1 while the worker process runs.", int(bool(worker.get("alive")))),
        *_scalar("vacseg_worker_ready", "gauge", "1 once the worker has loaded its processor.",
                 int(bool(worker.get("ready")))),
        *_scalar("vacseg_worker_restarts_total", "counter", "Times the worker process was restarted.",
                 worker.get("restarts", 0)),
    ]
    return "\n".join(lines) + "\n"


class _Handler(BaseHTTPRequestHandler):
    """One request to the dashboard (``self.server.dashboard`` is the :class:`DashboardServer`)."""

    server_version = "vacseg-dashboard"
    sys_version = ""
    timeout = REQUEST_TIMEOUT_S

    def setup(self) -> None:
        super().setup()
        if isinstance(self.request, ssl.SSLSocket):  # the TLS handshake on this thread, not the accepting one
            self.request.do_handshake()

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._respond(head=False)

    def do_HEAD(self) -> None:
        self._respond(head=True)

    def _not_allowed(self) -> None:
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, b"read-only: only GET and HEAD\n", "text/plain; charset=utf-8",
                   head=False, extra={"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _not_allowed

    def _send(self, status: HTTPStatus, body: bytes, content_type: str, *, head: bool,
              extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in {**_SECURITY_HEADERS, **(extra or {})}.items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _authorized(self) -> bool:
        token = self.server.dashboard.token
        if not token:
            return True
        given = self.headers.get("Authorization", "")
        scheme, _, value = given.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode())

    def _respond(self, *, head: bool) -> None:
        try:
            status, body, content_type = self._route()
        except Exception:
            logger.exception("Dashboard request %s failed", self.path)
            status, body, content_type = HTTPStatus.INTERNAL_SERVER_ERROR, b"internal error\n", "text/plain"
        extra = {"WWW-Authenticate": 'Bearer realm="vacseg"'} if status == HTTPStatus.UNAUTHORIZED else None
        self._send(status, body, content_type, head=head, extra=extra)

    def _route(self) -> tuple[HTTPStatus, bytes, str]:
        dashboard: DashboardServer = self.server.dashboard
        split = urlsplit(self.path)
        path = unquote(split.path)
        not_found = (HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8")
        if not path.startswith("/") or "\\" in path or "\x00" in path:
            return not_found
        parts = path.split("/")[1:]
        if path in ("/", "/index.html") or (len(parts) == 2 and parts[0] == "jobs"):
            if len(parts) == 2 and parts[0] == "jobs" and not is_valid_job_id(parts[1]):
                return not_found
            return HTTPStatus.OK, dashboard.static("index.html"), "text/html; charset=utf-8"
        if path in _STATIC:
            name, content_type = _STATIC[path]
            return HTTPStatus.OK, dashboard.static(name), content_type
        if parts[0] not in ("api", "metrics"):
            return not_found
        if not self._authorized():
            return HTTPStatus.UNAUTHORIZED, b"a bearer token is required\n", "text/plain; charset=utf-8"
        return dashboard.api(parts, parse_qs(split.query)) or not_found


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], dashboard: DashboardServer) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.dashboard = dashboard
        self._slots = threading.BoundedSemaphore(MAX_CONCURRENT_REQUESTS)
        super().__init__(address, _Handler)

    def process_request(self, request, client_address) -> None:
        self._slots.acquire()  # on the accepting thread: the next connection waits for a free slot
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def handle_error(self, request, client_address) -> None:
        """A connection that failed (a TLS handshake, a client gone): a debug line, not a traceback on stderr."""
        logger.debug("Dashboard connection from %s failed", client_address, exc_info=True)  # noqa: LOG014 - in socketserver's except

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def _json(data: Any) -> tuple[HTTPStatus, bytes, str]:
    return HTTPStatus.OK, json.dumps(data, allow_nan=False, default=str).encode(), "application/json"


class DashboardServer:
    """The dashboard's HTTP server, on its own threads.

    Args:
        root: the node's output directory (read only).
        address: listen address (default "127.0.0.1").
        port: listen port (default 0: any free port; see :attr:`port`).
        token: bearer token asked of API, picture and metrics requests (default None: none).
        show_names: show patient names (default False).
        ssl_context: serve HTTPS with this server context (default None: plain HTTP).
        counters: the SCP's counters (default None: the metrics show zeros).
        node_info: returns what the node's process knows for ``/api/health`` (worker, model, destination;
            default None).
        min_free_mb: the SCP's disk floor, shown against the free space (default 0).

    Raises:
        DashboardError: for a non-loopback ``address`` without ``token`` or ``ssl_context``.
    """

    def __init__(self, root: str | Path, *, address: str = "127.0.0.1", port: int = 0, token: str | None = None,
                 show_names: bool = False, ssl_context: ssl.SSLContext | None = None,
                 counters: NodeCounters | None = None, node_info: Callable[[], dict] | None = None,
                 min_free_mb: float = 0.0) -> None:
        if not is_loopback(address) and not token and ssl_context is None:
            raise DashboardError(
                f"Refusing to serve the dashboard on {address} (not a loopback address) without a token or TLS: "
                "give --http-token or --tls-cert/--tls-key, or bind it to 127.0.0.1."
            )
        self.reader = JobReader(root, show_names=show_names)
        self.address, self.token, self.ssl_context = address, token, ssl_context
        self.counters, self.node_info = counters, node_info
        self.floor_bytes = int(min_free_mb * 1024 * 1024)
        self._requested_port = port
        self._files = {name: (resources.files("vacseg_monai.service") / "dashboard_static" / name).read_bytes()
                       for name in ("index.html", "app.js", "style.css")}
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def for_node(cls, node: Any) -> DashboardServer:
        """The dashboard of a :class:`~vacseg_monai.service.scp.DicomNode`, as its configuration asks."""
        config: NodeConfig = node.config
        ssl_context = None
        if config.tls_enabled:
            from vacseg_monai.service.scp import make_server_ssl_context

            ssl_context = make_server_ssl_context(config.tls_cert, config.tls_key, config.tls_ca)
        return cls(config.output_directory, address=config.dashboard_address, port=config.http_port or 0,
                   token=config.http_token, show_names=config.http_show_names, ssl_context=ssl_context,
                   counters=node.counters, node_info=_node_info_of(node), min_free_mb=config.min_free_mb)

    @property
    def port(self) -> int:
        """The port bound."""
        if self._server is None:
            raise RuntimeError("The dashboard is not started; call start() first.")
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT/`` (https with TLS), the address a browser opens."""
        host = self.address if ":" not in self.address else f"[{self.address}]"
        return f"{'https' if self.ssl_context else 'http'}://{host}:{self.port}/"

    def start(self) -> DashboardServer:
        """Bind and serve on a daemon thread; returns self.

        Raises:
            DashboardError: if the address cannot be bound (naming it and why).
        """
        try:
            server = _Server((self.address, self._requested_port), self)
        except OSError as exc:
            raise DashboardError(f"Cannot serve the dashboard on {self.address}:{self._requested_port}: {exc}") from exc
        if self.ssl_context is not None:
            server.socket = self.ssl_context.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5},
                                        name="dashboard", daemon=True)
        self._thread.start()
        logger.info("Dashboard on %s%s", self.url, " (bearer token required)" if self.token else "")
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def static(self, name: str) -> bytes:
        """One of the page's files (read once at construction)."""
        return self._files[name]

    def health(self) -> dict:
        """Disk free against the floor, queue, worker and model, the last export, what the SCP counted."""
        try:
            free = shutil.disk_usage(self.reader.root).free
        except OSError:
            free = None
        _, counts = self.reader.jobs(limit=0)
        exports = [(r.get("export") or {}) | {"job_id": job_id} for job_id, r in self.reader.records() if r.get("export")]
        info = self.node_info() if self.node_info is not None else {}
        return {
            "time": time.time(),
            "disk": {"free_bytes": free, "floor_bytes": self.floor_bytes,
                     "ok": free is None or free >= self.floor_bytes},
            "queue_length": counts.get(JobState.QUEUED.value, 0),
            "in_progress": sum(counts.get(s.value, 0) for s in (JobState.RECEIVED, JobState.INFERRING, JobState.EXPORTING)),
            "jobs_by_state": dict(counts),
            "last_export": max(exports, key=lambda e: e.get("time") or 0.0, default=None),
            "counters": self.counters.snapshot() if self.counters is not None else {},
            **info,
        }

    def api(self, parts: list[str], query: dict[str, list[str]]) -> tuple[HTTPStatus, bytes, str] | None:
        """Answer ``/api/...`` and ``/metrics`` (``parts``: the path's segments); None for a path it does not serve."""
        if parts == ["metrics"]:
            counters = self.counters.snapshot() if self.counters is not None else {}
            body = render_metrics(self.reader, self.health(), counters).encode()
            return HTTPStatus.OK, body, "text/plain; version=0.0.4; charset=utf-8"
        if parts == ["api", "health"]:
            return _json(self.health())
        if parts == ["api", "jobs"]:
            try:
                limit = int(query.get("limit", [DEFAULT_JOB_LIMIT])[0])
            except ValueError:
                return HTTPStatus.BAD_REQUEST, b"limit must be an integer\n", "text/plain; charset=utf-8"
            rows, counts = self.reader.jobs(max(limit, 0))
            return _json({"jobs": rows, "counts": dict(counts), "show_names": self.reader.show_names})
        if len(parts) in (3, 4) and parts[:2] == ["api", "jobs"]:
            if len(parts) == 4:
                picture = self.reader.qa_picture(parts[2]) if parts[3] == _QA_PICTURE else None
                return None if picture is None else (HTTPStatus.OK, picture.read_bytes(), "image/png")
            detail = self.reader.detail(parts[2])
            return None if detail is None else _json(detail)
        return None


def _node_info_of(node: Any) -> Callable[[], dict]:
    """What a running :class:`~vacseg_monai.service.scp.DicomNode` knows, for ``/api/health``."""
    config: NodeConfig = node.config
    meta = Path(config.bundle) / "configs" / "metadata.json"
    try:
        metadata = json.loads(meta.read_text())
        bundle = {"name": metadata.get("name"), "version": metadata.get("version")}
    except (OSError, ValueError):
        bundle = {"name": None, "version": None}

    def info() -> dict:
        worker = node.worker
        return {
            "node": {"ae_title": config.ae_title, "port": node.port if node.listening else config.port, "started": node.started,
                     "destination": str(config.destination) if config.destination else None,
                     "review_policy": config.review_policy.value},
            "worker": {"pid": worker.pid, "alive": worker.alive, "ready": worker.ready, "restarts": worker.restarts,
                       "processor": config.processor, "bundle": str(config.bundle), "bundle_name": bundle["name"],
                       "bundle_version": bundle["version"]},
        }

    return info
