"""Review of doubtful results: approve or reject a job held in ``review``, and wake a running node.

With ``--review-policy hold`` the worker leaves a job whose quality score flags a structure in the
``review`` state (on disk, so it survives restarts). ``serve_scp.py -od DIR --approve JOB`` moves it to
``exporting``; ``--reject JOB`` to ``rejected`` (results kept, never sent). Both change the job record
atomically, then tell a running node through a Unix socket in the output folder (:data:`CONTROL_SOCKET`),
so that its worker sends an approved job at once. A node that is not running sends it when it starts,
as any other job in ``exporting``.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Callable
from pathlib import Path

from vacseg_monai.service.jobs import Job, JobState, JobStateError, JobStore

__all__ = ["CONTROL_SOCKET", "ControlListener", "ReviewError", "decide", "notify_node"]

logger = logging.getLogger(__name__)

#: Unix socket of a running node, in its output folder.
CONTROL_SOCKET = "control.sock"
_CONNECT_TIMEOUT_S = 5.0


class ReviewError(ValueError):
    """A job cannot be approved or rejected (unknown, or not in review)."""


def decide(output_directory: str | Path, job_id: str, *, approve: bool) -> Job:
    """Approve (send) or reject (keep, never send) a job held in review, and wake a running node.

    Args:
        output_directory: the node's output folder.
        job_id: the job, as ``--status`` lists it.
        approve: True to send, False to reject.

    Raises:
        ReviewError: if there is no such job, or it is not in review (naming its state).
    """
    store = JobStore(output_directory)
    try:
        job = store.load(job_id)
    except JobStateError as exc:
        raise ReviewError(f"No job {job_id!r} in {output_directory}: {exc}") from exc
    if job.state is not JobState.REVIEW:
        raise ReviewError(f"Job {job_id} is {job.state.value}, not in review: only a held job can be approved or rejected.")
    if approve:
        job = store.transition(job_id, JobState.EXPORTING, reason="approved in review")
    else:
        job = store.transition(job_id, JobState.REJECTED, reason="rejected in review")
    notify_node(output_directory, job_id)
    return job


def notify_node(output_directory: str | Path, job_id: str) -> bool:
    """Tell a node running on ``output_directory`` that ``job_id`` changed; False when none is running."""
    path = Path(output_directory) / CONTROL_SOCKET
    if not path.exists():
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(_CONNECT_TIMEOUT_S)
            sock.connect(str(path))
            sock.sendall(job_id.encode("ascii", "replace") + b"\n")
    except OSError as exc:
        logger.info("No running node answered on %s (%s); the job is picked up at its next start", path, exc)
        return False
    return True


class ControlListener:
    """The node's side of :func:`notify_node`: a thread that passes each job id it is told to ``on_job``.

    Args:
        output_directory: the node's output folder (the socket is created there, owner-only).
        on_job: called with each job id, e.g. the worker's ``submit``.
    """

    def __init__(self, output_directory: str | Path, on_job: Callable[[str], None]) -> None:
        self.path = Path(output_directory) / CONTROL_SOCKET
        self.on_job = on_job
        self._server: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Create the socket and start listening."""
        self.path.unlink(missing_ok=True)  # left by a node that was killed
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(self.path))
        self.path.chmod(0o600)
        server.listen(4)
        self._server = server
        self._thread = threading.Thread(target=self._serve, name="review-control", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        server = self._server
        while server is not None:
            try:
                conn, _ = server.accept()
            except OSError:  # closed by stop()
                return
            with conn:
                conn.settimeout(_CONNECT_TIMEOUT_S)
                try:
                    data = conn.recv(256).decode("ascii", "replace").strip()
                except OSError:
                    continue
            if data:
                logger.info("Review decision for job %s; waking the worker", data)
                self.on_job(data)

    def stop(self) -> None:
        """Stop listening and remove the socket."""
        server, self._server = self._server, None
        if server is not None:
            with contextlib.suppress(OSError):
                server.shutdown(socket.SHUT_RDWR)  # wakes the accept() of _serve; close() alone does not on Linux
            server.close()
        if self._thread is not None:
            self._thread.join(timeout=_CONNECT_TIMEOUT_S)
        self.path.unlink(missing_ok=True)
