"""DICOM peers run as processes, for the tests and the benchmarks.

- :func:`storescu` and :func:`echoscu` run DCMTK's SCUs against a port on 127.0.0.1;
  :func:`storescu_send` and :func:`storescu_store_all` send and check the result;
- :class:`StoreSCP` is DCMTK's ``storescp`` writing into a folder, :class:`PynetdicomSCP`
  pynetdicom's ``storescp --ignore``, :class:`NodeProcess` the node (``scripts/serve_scp.py``)
  in its own process group, so that its worker can be killed with it;
- :func:`free_port` and :func:`wait_until` (a bounded poll: a foreign process offers no event
  to wait on).

Every peer is started by :meth:`PeerProcess.start`, which returns once the peer answers
C-ECHO (or raises, with the tail of its log, if it exits first), and stopped by
:meth:`PeerProcess.stop`; each is also a context manager. DCMTK tools run with
``TCP_NODELAY=1`` (:func:`dcmtk_env`), which DCMTK reads to disable Nagle's algorithm.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Self, TypeVar

__all__ = [
    "REPO_ROOT",
    "NodeProcess",
    "PeerProcess",
    "PynetdicomSCP",
    "StoreSCP",
    "dcmtk_available",
    "dcmtk_env",
    "echo_ok",
    "echoscu",
    "free_port",
    "storescu",
    "storescu_send",
    "storescu_store_all",
    "wait_until",
]

#: The source checkout this package lives in (the node is started from its ``scripts/serve_scp.py``).
REPO_ROOT = Path(__file__).resolve().parents[2]

_T = TypeVar("_T")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate: Callable[[], _T], timeout: float, what: str, interval: float = 0.05) -> _T:
    """Poll ``predicate`` every ``interval`` s until it returns a true value; return that value.

    Args:
        predicate: the condition, observable only on disk or on a peer.
        timeout: seconds before giving up.
        what: what is waited for, for the error message.
        interval: seconds between looks (default 0.05).

    Raises:
        TimeoutError: naming ``what`` after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"Timed out after {timeout:g} s waiting for {what}.")
        time.sleep(interval)


def dcmtk_available() -> bool:
    """True when DCMTK's ``storescu``, ``storescp`` and ``echoscu`` are on the PATH."""
    return all(shutil.which(tool) for tool in ("storescu", "storescp", "echoscu"))


def dcmtk_env() -> dict[str, str]:
    """The environment for DCMTK tools: this process's, with TCP_NODELAY=1."""
    return {**os.environ, "TCP_NODELAY": "1"}


def storescu(
    port: int,
    files: Sequence[Path],
    *,
    aet: str = "STORESCU",
    aec: str = "VACSEG",
    timeout: float = 30,
    verbosity: str | None = "-v",
    connect_timeout: float = 10,
) -> subprocess.CompletedProcess:
    """Send ``files`` with DCMTK ``storescu`` over one association to 127.0.0.1:``port``.

    Args:
        port: the peer's port.
        files: the DICOM files.
        aet: calling AE title (default "STORESCU").
        aec: called AE title (default "VACSEG").
        timeout: seconds before the process is killed (default 30).
        verbosity: ``"-v"`` (one line per C-STORE response on stderr, the default), ``"-d"`` (debug) or
            None (quiet).
        connect_timeout: storescu's ``-to``, seconds it waits for the connection (default 10).

    Returns:
        The completed process, its output captured as text.
    """
    command = ["storescu", *([verbosity] if verbosity else []), "-aet", aet, "-aec", aec,
               "-to", f"{connect_timeout:g}", "127.0.0.1", str(port), *map(str, files)]
    return subprocess.run(command, env=dcmtk_env(), capture_output=True, text=True, timeout=timeout)


def storescu_send(files: Sequence[Path], port: int, aec: str, *, aet: str = "BENCH", timeout: float = 300.0) -> float:
    """Send ``files`` quietly with :func:`storescu`; return the wall seconds it took.

    Raises:
        RuntimeError: if storescu fails (its stderr is included).
    """
    start = time.perf_counter()
    proc = storescu(port, files, aet=aet, aec=aec, timeout=timeout, verbosity=None)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"storescu to port {port} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return elapsed


def storescu_store_all(port: int, files: Sequence[Path], *, aet: str = "STORESCU", aec: str = "VACSEG",
                       timeout: float = 300.0, connect_timeout: float = 10) -> None:
    """Send ``files`` with :func:`storescu` (``-v``) and require a Success C-STORE response for each of them.

    Args:
        port: the peer's port.
        files: the DICOM files, sent over one association.
        aet: calling AE title (default "STORESCU").
        aec: called AE title (default "VACSEG").
        timeout: seconds before the process is killed (default 300).
        connect_timeout: storescu's ``-to`` (default 10).

    Raises:
        RuntimeError: if ``storescu`` is missing or a store did not succeed (its output in the message).
    """
    if shutil.which("storescu") is None:
        raise RuntimeError("DCMTK storescu is not installed (Debian: apt-get install dcmtk).")
    done = storescu(port, files, aet=aet, aec=aec, timeout=timeout, verbosity="-v", connect_timeout=connect_timeout)
    stored = done.stderr.count("Received Store Response (Success)")
    if done.returncode != 0 or stored != len(files):
        raise RuntimeError(f"storescu stored {stored} of {len(files)} files (exit {done.returncode}):\n"
                           f"{done.stderr[-2000:]}")


def echoscu(port: int, *, aet: str = "ECHOSCU", aec: str = "VACSEG", timeout: float = 20,
            connect_timeout: float = 10) -> subprocess.CompletedProcess:
    """One C-ECHO with DCMTK ``echoscu -v`` to 127.0.0.1:``port``; the completed process, output as text."""
    return subprocess.run(
        ["echoscu", "-v", "-aet", aet, "-aec", aec, "-to", f"{connect_timeout:g}", "127.0.0.1", str(port)],
        env=dcmtk_env(), capture_output=True, text=True, timeout=timeout,
    )


def echo_ok(port: int, aec: str) -> bool:
    """True when 127.0.0.1:``port`` answers a C-ECHO to ``aec`` with Success (a short connect timeout)."""
    return echoscu(port, aec=aec, timeout=10, connect_timeout=2).returncode == 0


class PeerProcess:
    """A DICOM peer run as a subprocess, logging to a file, ready once it answers C-ECHO.

    Args:
        command: the command line.
        port: the port it listens on.
        ae_title: its AE title (the C-ECHO's called AE title).
        log_path: file for its stdout and stderr (appended to).
        env: its environment (default :func:`dcmtk_env`).
        own_group: start it in a new session, so that :meth:`stop` also kills its children
            (default False).
    """

    #: What the error messages call the peer.
    kind = "peer"

    def __init__(self, command: Sequence[str], port: int, ae_title: str, log_path: Path, *,
                 env: dict[str, str] | None = None, own_group: bool = False) -> None:
        self.command = list(command)
        self.port = port
        self.ae_title = ae_title
        self.log_path = Path(log_path)
        self.env = env
        self.own_group = own_group
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> Self:
        """Start the process and wait until it answers C-ECHO; return self.

        Raises:
            RuntimeError: if it exits first (the tail of its log included).
            TimeoutError: if it does not answer within ``timeout`` seconds (it is then killed).
        """
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command, cwd=REPO_ROOT, env=self.env if self.env is not None else dcmtk_env(),
                start_new_session=self.own_group, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
        try:
            wait_until(lambda: self.proc.poll() is not None or echo_ok(self.port, self.ae_title), timeout,
                       f"{self.kind} on port {self.port} answering C-ECHO", interval=0.2)
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
        except BaseException:
            self.kill9()
            raise
        return self

    def log(self) -> str:
        """What the process wrote so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill9(self) -> None:
        """SIGKILL the process (its whole group if it has one, like a power cut), then reap it."""
        if self.proc is None:
            return
        try:
            if self.own_group:
                os.killpg(self.proc.pid, signal.SIGKILL)
            else:
                self.proc.kill()
        except ProcessLookupError:
            pass
        self.proc.wait(10)

    def stop(self, timeout: float = 20) -> int | None:
        """SIGTERM (a clean stop), then :meth:`kill9` after ``timeout`` s or for what outlives it; return its code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        code = self.proc.poll()
        if self.own_group or code is None:
            self.kill9()  # the children too, should they outlive the parent
        return code

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class StoreSCP(PeerProcess):
    """DCMTK ``storescp`` on a free port accepting every transfer syntax (``+xa``), writing into ``folder``.

    Args:
        folder: where received files go (created).
        port: its port (default: a free one).
        aet: its AE title (default "DEST").
        options: more storescp options, e.g. ``("+uf",)`` (default none).
        log_path: its log (default ``<folder>.storescp.log`` beside the folder).
    """

    kind = "DCMTK storescp"

    def __init__(self, folder: Path, port: int | None = None, aet: str = "DEST", options: Sequence[str] = (),
                 log_path: Path | None = None) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        port = port or free_port()
        super().__init__(["storescp", "-aet", aet, "+xa", *options, "-od", str(self.folder), str(port)], port, aet,
                         log_path or self.folder.parent / f"{self.folder.name}.storescp.log")
        self.aet = aet

    def files(self) -> list[Path]:
        """The files received so far, sorted by name."""
        return sorted(p for p in self.folder.iterdir() if p.is_file())


class PynetdicomSCP(PeerProcess):
    """pynetdicom's ``storescp --ignore`` (acknowledges and discards), the reference of the receive benchmark.

    Args:
        log_path: its log.
        aet: its AE title (default "BENCH_SCP").
        port: its port (default: a free one).
    """

    kind = "pynetdicom storescp"

    def __init__(self, log_path: Path, aet: str = "BENCH_SCP", port: int | None = None) -> None:
        port = port or free_port()
        super().__init__([sys.executable, "-m", "pynetdicom", "storescp", str(port), "-aet", aet, "--ignore"],
                         port, aet, log_path)


class NodeProcess(PeerProcess):
    """The node, ``scripts/serve_scp.py``, as a subprocess in its own process group, logging to ``log_path``.

    The worker is spawned by the node, so it shares the group and the log file:
    :meth:`kill9` kills both like a power cut, :meth:`stop` asks for a clean stop.

    Args:
        output_directory: the node's ``-od``.
        log_path: its log.
        args: more ``serve_scp.py`` arguments.
        port: its port (default: a free one).
        ae_title: its AE title (default "VACSEG", the node's default; another is passed as ``-aet``).
        pythonpath: folders put first on its PYTHONPATH, e.g. one holding test processors (default
            none); the repository root follows them.
    """

    kind = "node"

    def __init__(self, output_directory: Path, log_path: Path, args: Sequence[str] = (), *, port: int | None = None,
                 ae_title: str = "VACSEG", pythonpath: Sequence[Path] = ()) -> None:
        self.output_directory = Path(output_directory)
        port = port or free_port()
        command = [sys.executable, str(REPO_ROOT / "scripts" / "serve_scp.py"), str(port),
                   *([] if ae_title == "VACSEG" else ["-aet", ae_title]), "-od", str(self.output_directory), *args]
        env = {**dcmtk_env(), "PYTHONPATH": os.pathsep.join(map(str, [*pythonpath, REPO_ROOT]))}
        super().__init__(command, port, ae_title, log_path, env=env, own_group=True)
