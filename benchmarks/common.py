"""Shared pieces of the benchmarks: test series, DICOM peers as processes, timing and output helpers.

Waiting for peers polls with a deadline (``wait_until``): a benchmark has no
event to wait on from a foreign process, and every wait here is bounded.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

__all__ = [
    "CACHE_DIR",
    "REPO_ROOT",
    "RESULTS_DIR",
    "DicomPeer",
    "dcmtk_env",
    "emit",
    "free_port",
    "machine_info",
    "phantom_series",
    "proc_status_kb",
    "small_series",
    "stats",
    "storescu_send",
    "table",
    "wait_until",
    "work_root",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
CACHE_DIR = RESULTS_DIR / "cache"
PYTHON = sys.executable


def work_root() -> Path:
    """Scratch folder on the repository's disk (not /tmp, which may be tmpfs and make fsync free)."""
    folder = RESULTS_DIR / "work"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def stats(values: Sequence[float], digits: int = 4) -> dict[str, Any]:
    """Median, min, max and all values of a list of measurements.

    Raises:
        ValueError: if ``values`` is empty.
    """
    if not values:
        raise ValueError("No measurements to summarise.")
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
        "n": len(values),
        "values": [round(v, digits) for v in values],
    }


def machine_info() -> dict[str, Any]:
    """CPU model, cores, RAM, software versions and the date, for the report."""
    import monai
    import pydicom
    import pynetdicom
    import torch

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_gib = round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    dcmtk = None
    if shutil.which("storescu"):
        out = subprocess.run(["storescu", "--version"], capture_output=True, text=True, timeout=10).stdout
        dcmtk = out.splitlines()[0].strip("$ ").strip() if out else None
    return {
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "ram_gib": ram_gib,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "pydicom": pydicom.__version__,
        "pynetdicom": pynetdicom.__version__,
        "dcmtk": dcmtk,
        "cuda": torch.cuda.is_available(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """A plain fixed-width text table."""
    cells = [[str(h) for h in headers]] + [[f"{c:.3f}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def emit(result: dict[str, Any], summary: str, out: str | os.PathLike[str] | None) -> dict[str, Any]:
    """Print the JSON (one line) and the summary table; write the JSON to ``out`` if given."""
    text = json.dumps(result)
    print(text)
    print(summary, flush=True)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=1))
    return result


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.02) -> float:
    """Poll ``predicate`` every ``interval`` s until true; return the perf_counter time it became true.

    Raises:
        TimeoutError: naming ``what`` after ``timeout`` seconds.
    """
    deadline = time.perf_counter() + timeout
    while True:
        if predicate():
            return time.perf_counter()
        if time.perf_counter() > deadline:
            raise TimeoutError(f"Timed out after {timeout:.0f} s waiting for {what}.")
        time.sleep(interval)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def dcmtk_env() -> dict[str, str]:
    """The environment for DCMTK tools: TCP_NODELAY=1 (DCMTK reads it to disable Nagle)."""
    return {**os.environ, "TCP_NODELAY": "1"}


def proc_status_kb(pid: int, field: str = "VmRSS") -> int | None:
    """A ``/proc/<pid>/status`` memory field in KiB (None when the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _fit_slices(array: np.ndarray, n_slices: int) -> np.ndarray:
    """Centre-crop or mirror-pad the last axis to exactly ``n_slices``."""
    n = array.shape[2]
    if n >= n_slices:
        start = (n - n_slices) // 2
        return np.ascontiguousarray(array[:, :, start:start + n_slices])
    before = (n_slices - n) // 2
    return np.pad(array, ((0, 0), (0, 0), (before, n_slices - n - before)), mode="symmetric")


#: Phantom generator of the benchmark series: v1, the series every speed and memory target was set on (v2 scenes
#: hold more contours, so its RTSTRUCT and clean-up take longer and figures would not compare across sessions).
BENCH_PHANTOM_VERSION = 1


def phantom_series(
    n_slices: int, *, size: int = 512, seed: int = 1000, cache: Path = CACHE_DIR, version: int = BENCH_PHANTOM_VERSION
) -> list[Path]:
    """CT files of a phantom cropped/padded to exactly ``n_slices`` slices (cached on disk).

    Args:
        n_slices: slices wanted; the phantom is centre-cropped or mirror-padded along z.
        size: rows and columns (default 512).
        seed: phantom seed (default 1000, outside the training seeds).
        cache: cache folder (default ``benchmarks/results/cache``).
        version: phantom generator version (default :data:`BENCH_PHANTOM_VERSION`); part of the cache key.
    """
    from vacseg_monai.dicom.phantom_dicom import write_phantom_dicom
    from vacseg_monai.phantom import generate_phantom

    folder = cache / f"phantom_v{version}_s{seed}_{size}x{size}x{n_slices}"
    done = folder / "files.json"
    if done.is_file():
        files = [folder / p for p in json.loads(done.read_text())]
        if all(p.is_file() for p in files):
            return files
    shutil.rmtree(folder, ignore_errors=True)
    phantom = generate_phantom(seed, size=size, version=version)
    bag = phantom.bag_slices
    phantom = dataclasses.replace(
        phantom,
        image=_fit_slices(phantom.image, n_slices),
        labels=_fit_slices(phantom.labels, n_slices),
        tissues=_fit_slices(phantom.tissues, n_slices),
        bag_slices=(max(0, min(bag[0], n_slices)), min(bag[1], n_slices)),
    )
    written = write_phantom_dicom(phantom, folder)
    files = written.ct_files
    done.write_text(json.dumps([str(p.relative_to(folder)) for p in files]))
    return files


def small_series(n_instances: int, *, size: int = 64, cache: Path = CACHE_DIR) -> list[Path]:
    """``n_instances`` small CT images of one series (a smooth synthetic volume; cached on disk)."""
    from vacseg_monai.dicom.synthetic import write_ct_series

    folder = cache / f"small_{size}x{size}x{n_instances}"
    done = folder / "files.json"
    if done.is_file():
        files = [folder / p for p in json.loads(done.read_text())]
        if all(p.is_file() for p in files):
            return files
    shutil.rmtree(folder, ignore_errors=True)
    yy, xx = np.mgrid[:size, :size]
    disk = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (size / 3) ** 2
    volume = np.full((size, size, n_instances), -1000, np.int16)
    volume[disk] = 40
    files = write_ct_series(volume, folder / "CT", pixel_spacing=(2.0, 2.0), slice_thickness=1.0)
    done.write_text(json.dumps([str(p.relative_to(folder)) for p in files]))
    return files


def storescu_send(files: Sequence[Path], port: int, called_aet: str, *, timeout: float = 300.0) -> float:
    """Send ``files`` with DCMTK storescu over one association (TCP_NODELAY=1); return wall seconds.

    Raises:
        RuntimeError: if storescu fails (its stderr is included).
    """
    cmd = ["storescu", "-aet", "BENCH", "-aec", called_aet, "127.0.0.1", str(port), *map(str, files)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=dcmtk_env(), capture_output=True, text=True, timeout=timeout)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"storescu to port {port} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return elapsed


def _echo(port: int, aet: str) -> bool:
    proc = subprocess.run(
        ["echoscu", "-to", "2", "-aec", aet, "127.0.0.1", str(port)], capture_output=True, timeout=10
    )
    return proc.returncode == 0


class DicomPeer:
    """A Storage SCP run as a subprocess: the node, pynetdicom's storescp or DCMTK's storescp.

    Args:
        kind: ``"node"``, ``"pynetdicom"`` or ``"dcmtk"``.
        folder: output folder (the node's ``-od``, DCMTK's ``-od``; unused by pynetdicom ``--ignore``).
        node_args: extra ``serve_scp.py`` arguments (kind ``"node"``).
        ae_title: called AE title (default "BENCH_SCP").
    """

    def __init__(self, kind: str, folder: Path, *, node_args: Sequence[str] = (), ae_title: str = "BENCH_SCP") -> None:
        if kind not in ("node", "pynetdicom", "dcmtk"):
            raise ValueError(f"`kind` must be node, pynetdicom or dcmtk, got {kind!r}.")
        self.kind, self.folder, self.ae_title = kind, Path(folder), ae_title
        self.node_args = list(node_args)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self._log = None

    def command(self) -> list[str]:
        """The command line started."""
        if self.kind == "node":
            return [PYTHON, str(REPO_ROOT / "scripts" / "serve_scp.py"), str(self.port), "-aet", self.ae_title,
                    "-od", str(self.folder), "-q", "--min-free-mb", "100", *self.node_args]
        if self.kind == "pynetdicom":
            return [PYTHON, "-m", "pynetdicom", "storescp", str(self.port), "-aet", self.ae_title, "--ignore"]
        return ["storescp", "-aet", self.ae_title, "+xa", "-od", str(self.folder), str(self.port)]

    def __enter__(self) -> DicomPeer:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._log = open(self.folder.parent / f"{self.folder.name}.{self.kind}.log", "w")
        self.proc = subprocess.Popen(self.command(), cwd=REPO_ROOT, env=dcmtk_env(), stdout=self._log,
                                     stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: self.proc.poll() is not None or _echo(self.port, self.ae_title), 120,
                       f"{self.kind} SCP on port {self.port}", interval=0.2)
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} SCP exited with {self.proc.returncode}; see {self._log.name}")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self._log is not None:
            self._log.close()


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Temporarily set ``torch.set_num_threads`` (None leaves it)."""
    import torch

    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
