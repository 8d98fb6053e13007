"""Receive throughput: images/s the node accepts (store + fsync before the ack) vs plain Storage SCPs.

The same phantom series (``--slices`` images of 512 x 512) is sent with DCMTK
``storescu`` (TCP_NODELAY=1, one association) to four SCPs running as
processes at the same time, in rotation, ``--repeats`` times each:

- the node (``scripts/serve_scp.py``; stand-in processor, so the worker's
  reading of the finished series is quick; each send waits until that job is done);
- the node as deployed, with the shipped bundle (its worker decodes and preprocesses the series
  while it arrives, on the same cores; each send waits until the RTSTRUCT is written);
- ``python -m pynetdicom storescp PORT --ignore`` (decodes nothing, stores nothing);
- DCMTK ``storescp +xa -od DIR`` (TCP_NODELAY=1; writes files, no fsync).

Throughput is images / storescu wall time (process start to exit). Target:
node >= 0.9 x pynetdicom ``--ignore``.

    .venv/bin/python -m benchmarks.bench_receive [--repeats 5] [--slices 100] [--out FILE]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    DicomPeer,
    emit,
    machine_info,
    phantom_series,
    stats,
    storescu_send,
    table,
    wait_until,
    work_root,
)

__all__ = ["main", "run"]

logger = logging.getLogger(__name__)

PEERS = ("node", "node_bundle", "pynetdicom", "dcmtk")
STAND_IN = "vacseg_monai.service.worker:StandInProcessor"


def _jobs_finished(folder: Path, expected: int) -> bool:
    from vacseg_monai.service.jobs import JobStore

    jobs = JobStore(folder).jobs()
    return len(jobs) >= expected and all(j.state.value in ("done", "failed") for j in jobs)


def per_instance_costs(files: list[Path], folder: Path) -> dict[str, float]:
    """Milliseconds per instance (median) of the pieces of the node's store path, done here in one process.

    ``decode``: pydicom parse of the whole received file and its UIDs; ``decode_header``: the same with
    ``stop_before_pixels``; ``encode``: re-encoding the parsed data set as a file; ``write``: writing the bytes;
    ``write_fsync``: a durable write of the bytes (:func:`~vacseg_monai.service.jobs.write_atomic`: write, file
    fsync, rename, directory fsync); ``durable``: what the node adds to a file already written, as the
    received one is (fsync of the file, rename into the job, fsync of the job's folder).
    """
    import io

    from pydicom import dcmread
    from pydicom.filewriter import dcmwrite

    from vacseg_monai.service.jobs import fsync_file, move_atomic, write_atomic

    folder.mkdir(parents=True, exist_ok=True)
    costs: dict[str, list[float]] = {"decode": [], "decode_header": [], "encode": [], "write": [], "write_fsync": [], "durable": []}
    for i, path in enumerate(files):
        raw = path.read_bytes()
        start = time.perf_counter()
        ds = dcmread(io.BytesIO(raw))
        _ = (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        costs["decode"].append(time.perf_counter() - start)
        start = time.perf_counter()
        head = dcmread(io.BytesIO(raw), stop_before_pixels=True)
        _ = (head.StudyInstanceUID, head.SeriesInstanceUID, head.SOPInstanceUID)
        costs["decode_header"].append(time.perf_counter() - start)
        start = time.perf_counter()
        buffer = io.BytesIO()
        dcmwrite(buffer, ds, enforce_file_format=True)
        costs["encode"].append(time.perf_counter() - start)
        start = time.perf_counter()
        (folder / f"plain_{i}.dcm").write_bytes(raw)
        costs["write"].append(time.perf_counter() - start)
        start = time.perf_counter()
        write_atomic(folder / f"atomic_{i}.dcm", raw)
        costs["write_fsync"].append(time.perf_counter() - start)
        received = folder / f"received_{i}.dcm"
        received.write_bytes(raw)
        start = time.perf_counter()
        fsync_file(received)
        move_atomic(received, folder / f"durable_{i}.dcm", synced=True)
        costs["durable"].append(time.perf_counter() - start)
    return {k: round(statistics.median(v) * 1000, 3) for k, v in costs.items()}


def run(repeats: int = 5, slices: int = 100, size: int = 512, warmup: int = 1) -> dict[str, Any]:
    """Measure; see the module docstring. Returns the result dictionary."""
    files = phantom_series(slices, size=size)
    seconds: dict[str, list[float]] = {name: [] for name in PEERS}
    with tempfile.TemporaryDirectory(dir=work_root()) as tmp:
        node_dir = Path(tmp) / "node"
        bundle_dir = Path(tmp) / "node_bundle"
        peers = {
            "node": DicomPeer("node", node_dir, node_args=["--processor", STAND_IN]),
            "node_bundle": DicomPeer("node", bundle_dir),
            "pynetdicom": DicomPeer("pynetdicom", Path(tmp) / "pynetdicom"),
            "dcmtk": DicomPeer("dcmtk", Path(tmp) / "dcmtk"),
        }
        for peer in peers.values():
            peer.__enter__()
        try:
            sent = {"node": 0, "node_bundle": 0}
            folders = {"node": node_dir, "node_bundle": bundle_dir}
            for i in range(warmup + repeats):
                for name in PEERS:
                    elapsed = storescu_send(files, peers[name].port, peers[name].ae_title)
                    if name in sent:
                        sent[name] += 1
                        wait_until(lambda: _jobs_finished(folders[name], sent[name]), 180, "the node's job", 0.05)
                    if i >= warmup:
                        seconds[name].append(elapsed)
            costs = per_instance_costs(files, Path(tmp) / "costs")
            stored = len(list(node_dir.glob("jobs/*/series/*.dcm"))) or len(list(node_dir.rglob("*.dcm")))
        finally:
            for peer in peers.values():
                peer.__exit__()
    rates = {name: stats([len(files) / s for s in values], 2) for name, values in seconds.items()}
    ratio = rates["node"]["median"] / rates["pynetdicom"]["median"]
    return {
        "benchmark": "receive",
        "series": {"slices": slices, "rows": size, "cols": size, "instances": len(files),
                   "bytes": sum(p.stat().st_size for p in files)},
        "sender": "DCMTK storescu, TCP_NODELAY=1, one association per send",
        "repeats": repeats,
        "warmup": warmup,
        "seconds": {name: stats(values) for name, values in seconds.items()},
        "images_per_s": rates,
        "ratio_node_to_pynetdicom": round(ratio, 3),
        "ratio_node_to_dcmtk": round(rates["node"]["median"] / rates["dcmtk"]["median"], 3),
        "ratio_node_bundle_to_pynetdicom": round(rates["node_bundle"]["median"] / rates["pynetdicom"]["median"], 3),
        "targets": {"ratio_min": 0.9},
        "met": {"ratio": ratio >= 0.9},
        "node_files_seen": stored,
        "per_instance_ms": costs,
        "machine": machine_info(),
    }


def summary(result: dict[str, Any]) -> str:
    """The human-readable table."""
    labels = {"node": "node (store+fsync)", "node_bundle": "node with the bundle", "pynetdicom": "pynetdicom storescp --ignore",
              "dcmtk": "DCMTK storescp"}
    rows = [[labels[n], result["images_per_s"][n]["median"], result["seconds"][n]["median"],
             result["images_per_s"][n]["min"], result["images_per_s"][n]["max"]] for n in PEERS]
    text = table(rows, ["SCP", "images/s (median)", "seconds", "min images/s", "max images/s"])
    costs = ", ".join(f"{k} {v:.2f} ms" for k, v in result["per_instance_ms"].items())
    return f"{text}\nper instance in one process: {costs}\nnode / pynetdicom --ignore = {result['ratio_node_to_pynetdicom']:.2f} (target >= 0.9)"


def main(args: list[str] | None = None) -> dict[str, Any]:
    """Command line; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="measured sends per SCP (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured first sends per SCP (default 1)")
    parser.add_argument("--slices", type=int, default=100, help="images in the series (default 100)")
    parser.add_argument("--size", type=int, default=512, help="rows = columns (default 512)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    opts = parser.parse_args(args)
    logging.basicConfig(level=logging.WARNING)
    result = run(opts.repeats, opts.slices, opts.size, opts.warmup)
    return emit(result, summary(result), opts.out)


if __name__ == "__main__":
    main()
