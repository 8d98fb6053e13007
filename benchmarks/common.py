"""Shared pieces of the benchmarks: test series, the node as they run it, timing and output helpers.

The DICOM peers themselves (the node, DCMTK's and pynetdicom's storescp, storescu) and the
bounded waits are :mod:`vacseg_monai.testing.peers`, which the tests share.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from vacseg_monai.logs import setup_logging
from vacseg_monai.testing.peers import NodeProcess

__all__ = [
    "BENCH_AET",
    "CACHE_DIR",
    "REPO_ROOT",
    "RESULTS_DIR",
    "add_series_options",
    "bench_node",
    "bench_parser",
    "chart_pyplot",
    "emit",
    "machine_info",
    "parse_cli",
    "phantom_series",
    "proc_status_kb",
    "real_ct_series",
    "run_cli",
    "save_chart",
    "seconds_cell",
    "small_series",
    "stats",
    "table",
    "verdict",
    "work_root",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
CACHE_DIR = RESULTS_DIR / "cache"
PYTHON = sys.executable
#: Called AE title of every SCP a benchmark starts.
BENCH_AET = "BENCH_SCP"


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


def verdict(met: bool, measured: float, target: float, unit: str, higher_is_better: bool = False) -> str:
    """A target's verdict in the report: met, or missed by how much (``unit`` written after the numbers)."""
    if met:
        return f"**met** ({measured:.2f}{unit} vs target {target:g}{unit})"
    if higher_is_better:
        return f"**missed** by {target - measured:.2f}{unit} ({measured / target:.0%} of the target {target:g}{unit})"
    return f"**missed** by {measured - target:.2f}{unit} ({measured / target:.2f} x the target {target:g}{unit})"


def seconds_cell(stats: dict[str, Any]) -> str:
    """A table cell of :func:`stats` in seconds: the median, then min, max and n."""
    return f"{stats['median']:.3f} s (min {stats['min']:.3f}, max {stats['max']:.3f}, n = {stats['n']})"


def chart_pyplot() -> Any:
    """matplotlib's pyplot on the Agg back end, which needs no display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_chart(fig: Any, path: Path) -> Path:
    """Lay out ``fig``, write it to ``path`` as a PNG at 110 dpi and close it; return ``path``."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def emit(result: dict[str, Any], summary: str, out: str | os.PathLike[str] | None) -> dict[str, Any]:
    """Print the JSON (one line) and the summary table; write the JSON to ``out`` if given."""
    text = json.dumps(result)
    print(text)
    print(summary, flush=True)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=1))
    return result


def bench_parser(doc: str | None, *, out_help: str = "also write the JSON here") -> argparse.ArgumentParser:
    """The command line a bench module starts from: its docstring as the help, and ``--out``.

    Args:
        doc: the module's docstring.
        out_help: help of ``--out`` (default "also write the JSON here").
    """
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help=out_help)
    return parser


def add_series_options(parser: argparse.ArgumentParser, *, slices: int = 100,
                       slices_help: str = "slices of the series", size_help: str = "rows = columns") -> None:
    """Add ``--slices`` (default ``slices``) and ``--size`` (default 512), the test series' shape."""
    parser.add_argument("--slices", type=int, default=slices, help=f"{slices_help} (default {slices})")
    parser.add_argument("--size", type=int, default=512, help=f"{size_help} (default 512)")


def parse_cli(parser: argparse.ArgumentParser, args: list[str] | None, *, level: int = logging.WARNING
              ) -> argparse.Namespace:
    """Parse ``args`` (None: the command line) and set up this process's logging at ``level`` (default WARNING)."""
    opts = parser.parse_args(args)
    setup_logging(level)
    return opts


def run_cli(parser: argparse.ArgumentParser, args: list[str] | None,
            measure: Callable[[argparse.Namespace], dict[str, Any]], summary: Callable[[dict[str, Any]], str], *,
            level: int = logging.WARNING) -> dict[str, Any]:
    """A bench module's ``main``: parse (:func:`parse_cli`), ``measure(opts)``, then :func:`emit` with ``summary``.

    Returns:
        The result of ``measure``.
    """
    opts = parse_cli(parser, args, level=level)
    result = measure(opts)
    return emit(result, summary(result), opts.out)


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


def _cached_files(folder: Path) -> list[Path] | None:
    """The files a cached series folder lists in its ``files.json``, when all are there; else None, and the
    folder is cleared for a fresh write."""
    done = folder / "files.json"
    if done.is_file():
        files = [folder / p for p in json.loads(done.read_text())]
        if all(p.is_file() for p in files):
            return files
    shutil.rmtree(folder, ignore_errors=True)
    return None


def _remember_files(folder: Path, files: list[Path]) -> list[Path]:
    """Write the ``files.json`` of a freshly written series folder (last, so a half-written folder is redone)."""
    (folder / "files.json").write_text(json.dumps([str(p.relative_to(folder)) for p in files]))
    return files


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
    if (files := _cached_files(folder)) is not None:
        return files
    phantom = generate_phantom(seed, size=size, version=version)
    bag = phantom.bag_slices
    phantom = dataclasses.replace(
        phantom,
        image=_fit_slices(phantom.image, n_slices),
        labels=_fit_slices(phantom.labels, n_slices),
        tissues=_fit_slices(phantom.tissues, n_slices),
        bag_slices=(max(0, min(bag[0], n_slices)), min(bag[1], n_slices)),
    )
    return _remember_files(folder, write_phantom_dicom(phantom, folder).ct_files)


def small_series(n_instances: int, *, size: int = 64, cache: Path = CACHE_DIR) -> list[Path]:
    """``n_instances`` small CT images of one series (a smooth synthetic volume; cached on disk)."""
    from vacseg_monai.dicom.synthetic import write_ct_series

    folder = cache / f"small_{size}x{size}x{n_instances}"
    if (files := _cached_files(folder)) is not None:
        return files
    yy, xx = np.mgrid[:size, :size]
    disk = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (size / 3) ** 2
    volume = np.full((size, size, n_instances), -1000, np.int16)
    volume[disk] = 40
    return _remember_files(folder, write_ct_series(volume, folder / "CT", pixel_spacing=(2.0, 2.0),
                                                   slice_thickness=1.0))


#: The real scan of the latency benchmark: a held-out check scan (never trained on), 61 chest CT slices of
#: 512 x 512 with its couch (:data:`vacseg_monai.public_data.SCANS`).
BENCH_REAL_SCAN = "lung2"


def real_ct_series(key: str = BENCH_REAL_SCAN, *, max_slices: int | None = None, cache: Path = CACHE_DIR,
                   data_cache: Path | None = None) -> list[Path]:
    """A public real CT scan written as a DICOM CT series with the project's writer (cached on disk).

    The scan is read as the real CT check reads it (:func:`vacseg_monai.realct.load_real_scan`: DICOM as
    stored, NIfTI/NRRD reoriented to the display order of a head-first-supine series) and written slice by
    slice by :func:`vacseg_monai.dicom.synthetic.write_ct_series` with its own pixel spacing and slice
    spacing, HU as read (clipped to the stored type's range), uncompressed.

    Args:
        key: a key of :data:`vacseg_monai.public_data.SCANS` (default :data:`BENCH_REAL_SCAN`).
        max_slices: keep at most this many central slices (default None: all); for quick tests.
        cache: cache folder of the written series (default ``benchmarks/results/cache``).
        data_cache: the public data cache (default :func:`vacseg_monai.public_data.cache_dir`).

    Returns:
        The CT files in slice order.

    Raises:
        vacseg_monai.public_data.PublicDataError: unknown key or the package cannot be fetched.
        ValueError: if ``max_slices`` is below 1 or the scan cannot be read.
    """
    import tempfile

    from vacseg_monai.dicom.synthetic import write_ct_series
    from vacseg_monai.realct import load_real_scan

    if max_slices is not None and max_slices < 1:
        raise ValueError(f"`max_slices` must be None or >= 1, got {max_slices}.")
    folder = cache / (f"real_{key}" + (f"_{max_slices}" if max_slices else ""))
    if (files := _cached_files(folder)) is not None:
        return files
    with tempfile.TemporaryDirectory() as tmp:
        source = load_real_scan(key, tmp, data_cache)
        image = source.image[0].numpy()
        spacing = source.spacing
    if max_slices is not None and image.shape[2] > max_slices:
        image = _fit_slices(image, max_slices)
    hu = np.clip(np.rint(image), -1024, 32767 - 1024).astype(np.int16)
    files = write_ct_series(hu, folder / "CT", pixel_spacing=(spacing[0], spacing[1]), slice_thickness=spacing[2],
                            series_description=f"Real CT ({key})", study_description="Public real CT scan")
    return _remember_files(folder, files)


def bench_node(folder: Path, *args: str) -> NodeProcess:
    """The node as the benchmarks run it: AE title BENCH_SCP, quiet, a 100 MiB disk floor, its log beside ``folder``.

    Args:
        folder: the node's output directory.
        *args: more ``serve_scp.py`` arguments, e.g. ``"--processor", STAND_IN``.
    """
    return NodeProcess(folder, folder.parent / f"{folder.name}.node.log", ["-q", "--min-free-mb", "100", *args],
                       ae_title=BENCH_AET)


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
