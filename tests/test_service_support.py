"""Helpers for the service tests: ports, tiny series, DCMTK peers, test processors.

Collected by pytest but holds no tests; the worker process imports the test
processors from here by dotted path ("test_service_support:...").
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from vacseg_monai.service.worker import StandInProcessor

TESTS_DIR = Path(__file__).resolve().parent
REPO = TESTS_DIR.parent
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
needs_dcmtk = pytest.mark.skipif(shutil.which("storescu") is None, reason="DCMTK (storescu/storescp/echoscu) not installed")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05):
    """Bounded wait for a condition observable only on disk or on a peer's folder."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"Timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def write_series(out_dir: Path, n_slices: int = 3, *, study_uid: str | None = None,
                 series_uid: str | None = None, description: str = "Synthetic CT") -> list[Path]:
    """A tiny CT series (16x16 pixels) written by the project's synthetic writer."""
    from vacseg_monai.dicom.synthetic import write_ct_series

    image = np.full((16, 16, n_slices), -1000, np.int16)
    image[4:12, 4:12, :] = 40
    return write_ct_series(
        image, out_dir, pixel_spacing=(1.0, 1.0), slice_thickness=2.0,
        study_instance_uid=study_uid or generate_uid(), series_instance_uid=series_uid or generate_uid(),
        series_description=description,
    )


def storescu(port: int, files: list[Path], *, aet: str = "STORESCU", aec: str = "VACSEG", timeout: float = 30,
             verbosity: str = "-v"):
    """Send files with DCMTK storescu (one association); returns the CompletedProcess."""
    return subprocess.run(
        ["storescu", verbosity, "-aet", aet, "-aec", aec, "-to", "10", "127.0.0.1", str(port), *map(str, files)],
        env=DCMTK_ENV, capture_output=True, text=True, timeout=timeout,
    )


def echoscu(port: int, *, aet: str = "ECHOSCU", aec: str = "VACSEG", timeout: float = 20):
    return subprocess.run(
        ["echoscu", "-v", "-aet", aet, "-aec", aec, "-to", "10", "127.0.0.1", str(port)],
        env=DCMTK_ENV, capture_output=True, text=True, timeout=timeout,
    )


class StoreSCP:
    """A DCMTK storescp destination on a free port, writing into ``folder``."""

    def __init__(self, folder: Path, port: int | None = None, aet: str = "DEST") -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.aet = aet
        self.proc: subprocess.Popen | None = None

    def start(self) -> StoreSCP:
        self.proc = subprocess.Popen(
            ["storescp", "-aet", self.aet, "+xa", "-od", str(self.folder), str(self.port)],
            env=DCMTK_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_until(self._listening, 10, f"storescp on port {self.port}")
        return self

    def _listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def files(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.is_file())

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def modalities(files: list[Path]) -> list[str]:
    return sorted(str(dcmread(p, stop_before_pixels=True).Modality) for p in files)


class BlockingProcessor:
    """Marks ``<job_dir>/started`` then blocks (bounded) so a test can kill the node mid-job."""

    def __init__(self, **_: object) -> None:
        pass

    def __call__(self, series_dir: Path, job_dir: Path) -> list[Path]:
        (job_dir / "started").write_text("started")
        threading.Event().wait(120)
        raise RuntimeError("BlockingProcessor was not killed within 120 s")


class FailOnDescriptionProcessor(StandInProcessor):
    """Stand-in processor that raises for series described "please fail"."""

    def __call__(self, series_dir: Path, job_dir: Path) -> list[Path]:
        first = dcmread(sorted(series_dir.glob("*.dcm"))[0], stop_before_pixels=True)
        if first.get("SeriesDescription") == "please fail":
            raise ValueError(f"refusing series {first.SeriesInstanceUID} as asked")
        return super().__call__(series_dir, job_dir)
