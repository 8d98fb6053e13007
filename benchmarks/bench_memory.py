"""Memory: the worker's peak RSS on a long series, and the SCP's RSS while it receives many instances.

1. Worker: a fresh subprocess loads the bundle (BundleSegmenter), reads a
   ``--slices`` (default 300) slice 512 x 512 phantom series, segments it and
   writes the RTSTRUCT; it reports ``ru_maxrss`` (peak RSS) after loading the
   model and at the end, and VmHWM. Target: peak <= 3 GB.
2. SCP: the node (``scripts/serve_scp.py``, stand-in processor) receives
   ``--instances`` (default 1,000) small CT images (``--scp-size`` 64 x 64) of one
   series over one DCMTK storescu association; the SCP process's VmRSS is
   sampled every 50 ms during the send. Target: flat, i.e. growth over the send
   small (reported in MiB, total and over the second half).
3. SCP, one large instance: the node receives a single CT image of
   ``--large-size`` (default 8192 x 8192, 128 MiB of pixel data); the growth of the
   SCP process's peak RSS (VmHWM) shows whether the instance was held in memory
   (it should not be: it is received straight into a file).

    .venv/bin/python -m benchmarks.bench_memory [--slices 300] [--instances 1000] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    PYTHON,
    REPO_ROOT,
    add_series_options,
    bench_node,
    bench_parser,
    chart_pyplot,
    emit,
    machine_info,
    parse_cli,
    phantom_series,
    proc_status_kb,
    save_chart,
    small_series,
    table,
    work_root,
)
from vacseg_monai.testing.peers import storescu_send

__all__ = [
    "main",
    "report_chart",
    "report_ideas",
    "report_section",
    "run",
    "scp_large_instance",
    "scp_rss",
    "worker_peak",
]

logger = logging.getLogger(__name__)

GB = 1e9
STAND_IN = "vacseg_monai.testing.processors:StandInProcessor"


def _child_segment(series_dir: str) -> dict[str, Any]:
    """Runs in the child: load, segment, write; return memory and timing figures."""
    from vacseg_monai.dicom.outputs import OutputKind
    from vacseg_monai.inputs import load_input
    from vacseg_monai.segmenter import BundleSegmenter

    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    start = time.perf_counter()
    segmenter = BundleSegmenter()
    after_model = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    source = load_input(series_dir)
    after_read = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = segmenter.segment(source)
    after_segment = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with tempfile.TemporaryDirectory() as out:
        written = segmenter.write(source, result.labels, out, OutputKind.RTSTRUCT)
        n_written = len(written)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "ru_maxrss_kib": {"start": kib, "after_model": after_model, "after_read": after_read,
                          "after_segment": after_segment, "end": peak},
        "vmhwm_kib": proc_status_kb(os.getpid(), "VmHWM"),
        "seconds": round(time.perf_counter() - start, 2),
        "timings": {k: round(v, 3) for k, v in result.timings.items()},
        "files_written": n_written,
    }


def worker_peak(slices: int = 300, size: int = 512) -> dict[str, Any]:
    """Peak RSS of a fresh process segmenting a ``slices`` slice series and writing the RTSTRUCT."""
    files = phantom_series(slices, size=size)
    proc = subprocess.run([PYTHON, "-m", "benchmarks.bench_memory", "--child-segment", str(files[0].parent)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"Segmenting child failed ({proc.returncode}): {proc.stderr[-3000:]}")
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    peak_bytes = child["ru_maxrss_kib"]["end"] * 1024
    return {
        "series": {"slices": slices, "rows": size, "cols": size,
                   "ct_bytes_int16": slices * size * size * 2},
        **child,
        "peak_gb": round(peak_bytes / GB, 3),
        "target_gb": 3.0,
        "met": peak_bytes <= 3.0 * GB,
    }


def scp_rss(instances: int = 1000, size: int = 64, interval: float = 0.05) -> dict[str, Any]:
    """VmRSS of the node's SCP process sampled while it receives ``instances`` images over one association."""
    files = small_series(instances, size=size)
    samples: list[tuple[float, int]] = []
    with tempfile.TemporaryDirectory(dir=work_root()) as tmp, bench_node(Path(tmp) / "node", "--processor",
                                                                         STAND_IN) as node:
        pid = node.proc.pid
        time.sleep(1.0)  # let start-up settle
        idle = proc_status_kb(pid)
        done = threading.Event()

        def sample() -> None:
            t0 = time.perf_counter()
            while not done.is_set():
                value = proc_status_kb(pid)
                if value is not None:
                    samples.append((time.perf_counter() - t0, value))
                done.wait(interval)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            seconds = storescu_send(files, node.port, node.ae_title, timeout=600)
        finally:
            done.set()
            sampler.join(5)
        after = proc_status_kb(pid)
    values = [v for _, v in samples]
    half = values[len(values) // 2:]
    mib = 1024.0
    return {
        "instances": instances,
        "image_size": [size, size],
        "send_s": round(seconds, 3),
        "images_per_s": round(instances / seconds, 1),
        "samples": len(values),
        "rss_mib": {
            "idle_before": round(idle / mib, 1),
            "first_sample": round(values[0] / mib, 1),
            "max": round(max(values) / mib, 1),
            "last_sample": round(values[-1] / mib, 1),
            "after_send": round(after / mib, 1) if after is not None else None,
        },
        "growth_mib": round((values[-1] - values[0]) / mib, 1),
        "growth_second_half_mib": round((half[-1] - half[0]) / mib, 1),
        "growth_vs_idle_mib": round((max(values) - idle) / mib, 1),
        "trace": [[round(t, 2), round(v / mib, 1)] for t, v in samples[:: max(1, len(samples) // 200)]],
    }


def scp_large_instance(size: int = 8192) -> dict[str, Any]:
    """Growth of the node's SCP peak RSS (VmHWM) while it receives one ``size`` x ``size`` CT image."""
    import numpy as np

    from vacseg_monai.dicom.synthetic import write_ct_series

    with tempfile.TemporaryDirectory(dir=work_root()) as tmp:
        image = np.full((size, size, 1), -1000, np.int16)
        image[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 40
        sent = write_ct_series(image, Path(tmp) / "large", pixel_spacing=(0.05, 0.05), slice_thickness=1.0)[0]
        del image
        with bench_node(Path(tmp) / "node", "--processor", STAND_IN) as node:
            time.sleep(1.0)  # let start-up settle
            before = proc_status_kb(node.proc.pid, "VmHWM")
            seconds = storescu_send([sent], node.port, node.ae_title, timeout=600)
            after = proc_status_kb(node.proc.pid, "VmHWM")
        mib = 1024.0
        return {
            "image_size": [size, size],
            "file_mib": round(sent.stat().st_size / 2**20, 1),
            "send_s": round(seconds, 3),
            "vmhwm_mib": {"before": round(before / mib, 1), "after": round(after / mib, 1)},
            "peak_growth_mib": round((after - before) / mib, 1),
        }


def run(slices: int = 300, size: int = 512, instances: int = 1000, scp_size: int = 64,
        large_size: int = 8192) -> dict[str, Any]:
    """The three measurements; see the module docstring."""
    worker = worker_peak(slices, size)
    scp = scp_rss(instances, scp_size)
    large = scp_large_instance(large_size)
    return {
        "benchmark": "memory",
        "worker": worker,
        "scp": scp,
        "scp_large": large,
        "met": {"worker_peak": worker["met"], "scp_flat": scp["growth_second_half_mib"] <= 20.0},
        "targets": {"worker_peak_gb": 3.0, "scp_growth_second_half_mib_max": 20.0},
        "machine": machine_info(),
    }


def summary(result: dict[str, Any]) -> str:
    """The human-readable table."""
    w, s = result["worker"], result["scp"]
    rows = [
        [f"worker peak RSS, {w['series']['slices']} slices (GB)", w["peak_gb"], "<= 3.0"],
        ["worker RSS after model load (GB)", round(w["ru_maxrss_kib"]["after_model"] * 1024 / GB, 3), ""],
        ["worker RSS after read (GB)", round(w["ru_maxrss_kib"]["after_read"] * 1024 / GB, 3), ""],
        ["worker RSS after segment (GB)", round(w["ru_maxrss_kib"]["after_segment"] * 1024 / GB, 3), ""],
        ["SCP RSS idle (MiB)", s["rss_mib"]["idle_before"], ""],
        [f"SCP RSS max during {s['instances']} instances (MiB)", s["rss_mib"]["max"], ""],
        ["SCP RSS growth over the send (MiB)", s["growth_mib"], ""],
        ["SCP RSS growth, second half (MiB)", s["growth_second_half_mib"], "<= 20"],
        [f"SCP peak RSS growth, one {result['scp_large']['file_mib']} MiB instance (MiB)",
         result["scp_large"]["peak_growth_mib"], ""],
    ]
    return table(rows, ["measure", "value", "target"])


def report_chart(result: dict[str, Any], docs: Path) -> Path:
    """The worker's peak RSS by stage and the SCP's RSS over the send: ``docs/bench_memory.png``; returns its path."""
    plt = chart_pyplot()
    mem = result
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    w = mem["worker"]["ru_maxrss_kib"]
    keys = ["after_model", "after_read", "after_segment", "end"]
    a1.bar(["model\nloaded", "series\nread", "segmented", "RTSTRUCT\nwritten"], [w[k] * 1024 / 1e9 for k in keys])
    a1.axhline(3.0, color="red", ls="--", lw=1, label="target 3 GB")
    a1.set_ylabel("peak RSS so far (GB)")
    a1.set_title(f"Worker, {mem['worker']['series']['slices']}-slice series")
    a1.legend(fontsize=8)
    trace = mem["scp"]["trace"]
    a2.plot([t for t, _ in trace], [v for _, v in trace])
    a2.set_xlabel("seconds into the send")
    a2.set_ylabel("SCP VmRSS (MiB)")
    a2.set_ylim(0, max(v for _, v in trace) * 1.2)
    a2.set_title(f"SCP receiving {mem['scp']['instances']} images "
                 f"({mem['scp']['image_size'][0]}x{mem['scp']['image_size'][1]})")
    return save_chart(fig, docs / "bench_memory.png")


def report_section(result: dict[str, Any]) -> list[str]:
    """Section 5 of docs/benchmarks.md: the memory of the worker and of the SCP."""
    mem = result
    w, s = mem["worker"], mem["scp"]
    out = ["## 5. Memory", "",
           f"Worker: a fresh process loads the bundle, reads a {w['series']['slices']}-slice "
           f"{w['series']['rows']} x {w['series']['cols']} series, segments it and writes the RTSTRUCT "
           f"(`ru_maxrss`; VmHWM {w['vmhwm_kib'] * 1024 / 1e9:.3f} GB; GB = 10^9 bytes). SCP: the node receives "
           f"{s['instances']} images of {s['image_size'][0]} x {s['image_size'][1]} over one storescu "
           f"association; its VmRSS is sampled {s['samples']} times during the send.", "",
           "![memory](bench_memory.png)", "",
           "| measure | value |", "|---|---|",
           f"| worker peak RSS | **{w['peak_gb']:.3f} GB** (target <= 3 GB: "
           f"{'met' if w['met'] else 'missed by %.2f GB' % (w['peak_gb'] - 3.0)}) |",
           f"| worker RSS after model load / read / segment | {w['ru_maxrss_kib']['after_model'] * 1024 / 1e9:.3f} / "
           f"{w['ru_maxrss_kib']['after_read'] * 1024 / 1e9:.3f} / {w['ru_maxrss_kib']['after_segment'] * 1024 / 1e9:.3f} GB |",
           "| worker stage seconds | " + ", ".join(f"{k} {v:.2f}" for k, v in w["timings"].items()) + " |",
           f"| SCP RSS idle / max during send | {s['rss_mib']['idle_before']:.1f} / {s['rss_mib']['max']:.1f} MiB |",
           f"| SCP RSS growth over the send / second half | {s['growth_mib']:.1f} / "
           f"**{s['growth_second_half_mib']:.1f} MiB** (flat if <= 20 MiB: "
           f"{'met' if mem['met']['scp_flat'] else 'missed'}) |",
           f"| SCP receive rate of the small images | {s['images_per_s']} images/s |"]
    if "scp_large" in mem:
        big = mem["scp_large"]
        out += [f"| SCP peak RSS (VmHWM) growth receiving one {big['image_size'][0]} x {big['image_size'][1]} "
                f"instance ({big['file_mib']:.0f} MiB) | **{big['peak_growth_mib']:.1f} MiB** "
                f"({big['vmhwm_mib']['before']:.1f} -> {big['vmhwm_mib']['after']:.1f} MiB; the instance is "
                f"received into a file, not held in memory) |"]
    out += [""]
    return out


def report_ideas(result: dict[str, Any], machine: dict[str, Any]) -> list[str]:
    """Its lines of "What could help": none, it has no target of its own."""
    return []


def main(args: list[str] | None = None) -> dict[str, Any]:
    """Command line; see the module docstring."""
    parser = bench_parser(__doc__)
    add_series_options(parser, slices=300, slices_help="slices of the worker's series",
                       size_help="rows = columns of that series")
    parser.add_argument("--instances", type=int, default=1000, help="instances sent to the SCP (default 1000)")
    parser.add_argument("--scp-size", type=int, default=64, help="rows = columns of those instances (default 64)")
    parser.add_argument("--large-size", type=int, default=8192, help="rows = columns of the large instance (default 8192)")
    parser.add_argument("--child-segment", metavar="SERIES_DIR", help=argparse.SUPPRESS)
    opts = parse_cli(parser, args)
    if opts.child_segment:
        child = _child_segment(opts.child_segment)
        print(json.dumps(child))
        return child
    result = run(opts.slices, opts.size, opts.instances, opts.scp_size, opts.large_size)
    return emit(result, summary(result), opts.out)


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
