"""End-to-end latency of the node, its stage breakdown, and the bare network time as the reference.

A phantom CT series (cropped/padded to ``--slices`` slices of 512 x 512) is sent
in-process with pynetdicom to a :class:`~vacseg_monai.service.scp.DicomNode`
running the shipped bundle; the RTSTRUCT comes back to a
:class:`~vacseg_monai.service.receiver.ResultReceiver`, which records its
arrival time. Latency runs from the last C-STORE response to that arrival.

The reference, measured in the same run and interleaved with the node runs, is
the network stage of :class:`~vacseg_monai.segmenter.BundleSegmenter` (the
bundle's SliceInferer over the preprocessed 256 x 256 slices) on the same
volume in this process. Target: latency <= 2 x network and <= 10 s.

The breakdown adds the job's ``timings.json`` (worker stages) to the gaps read
from the job history: release + queueing, worker wake-up, export.

    .venv/bin/python -m benchmarks.bench_latency [--repeats 5] [--slices 100] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import emit, machine_info, phantom_series, stats, table, wait_until, work_root

__all__ = ["main", "run"]

logger = logging.getLogger(__name__)

# Stages in the order they happen; the chart stacks them in this order.
STAGE_GROUPS = {
    "release + queue": ["release_queue"],
    "worker wake-up": ["wakeup"],
    "read/decode": ["read"],
    "preprocess": ["preprocess"],
    "network": ["network"],
    "postprocess": ["resample_argmax", "clean_up"],
    "contours + RTSTRUCT": ["write"],
    "job bookkeeping": ["job_other"],
    "export": ["export"],
}


def _send(files: list[Path], port: int, ae_title: str) -> tuple[float, float, float]:
    """Send over one association; return (perf at start, perf and wall time after the last response)."""
    from pynetdicom import AE

    from vacseg_monai.service.export import presentation_contexts_for

    ae = AE(ae_title="BENCH_TPS")
    for sop_class, syntax in presentation_contexts_for(files):
        ae.add_requested_context(sop_class, syntax)
    assoc = ae.associate("127.0.0.1", port, ae_title=ae_title)
    if not assoc.is_established:
        raise RuntimeError(f"Cannot associate with the node on port {port}.")
    start = time.perf_counter()
    try:
        for path in files:
            rsp = assoc.send_c_store(path)
            if int(rsp.get("Status", -1)) != 0:
                raise RuntimeError(f"The node refused {path.name}: {rsp}")
        acked, acked_wall = time.perf_counter(), time.time()
    finally:
        assoc.release()
    return start, acked, acked_wall


def _breakdown(job: Any, job_dir: Path, acked_wall: float, arrived_wall: float) -> dict[str, float]:
    """Seconds per stage between the last response and the RTSTRUCT's arrival (sums to the latency)."""
    when = {}
    for entry in job.history:
        when.setdefault(entry["state"], entry["time"])  # first time each state was entered
    timings = {  # work done after the export (the QA picture) is not part of the latency
        k: v for k, v in json.loads((job_dir / "timings.json").read_text()).items() if not k.endswith("_after_export")
    }
    parts = {
        "release_queue": when["queued"] - acked_wall,
        "wakeup": when["inferring"] - when["queued"],
        **{k: float(v) for k, v in timings.items()},
    }
    parts["job_other"] = (when["exporting"] - when["inferring"]) - sum(timings.values())
    parts["export"] = arrived_wall - when["exporting"]
    return {k: round(v, 4) for k, v in parts.items()}


def run(repeats: int = 5, slices: int = 100, size: int = 512, warmup: int = 1, timeout: float = 600.0,
        work_dir: Path | None = None) -> dict[str, Any]:
    """Measure; see the module docstring. Returns the result dictionary."""
    from vacseg_monai.inputs import load_input
    from vacseg_monai.paths import default_bundle_root
    from vacseg_monai.segmenter import BundleSegmenter
    from vacseg_monai.service.config import Destination, NodeConfig
    from vacseg_monai.service.jobs import JobStore
    from vacseg_monai.service.receiver import ResultReceiver
    from vacseg_monai.service.scp import DicomNode

    files = phantom_series(slices, size=size)
    bundle = Path(default_bundle_root())
    segmenter = BundleSegmenter(bundle)
    reference: dict[str, list[float]] = {}
    latencies, sends, parts_runs, first = [], [], [], None
    with (
        tempfile.TemporaryDirectory(dir=work_dir or work_root()) as tmp,
        ResultReceiver(Path(tmp) / "received", ae_title="BENCH_TPS") as rx,
    ):
        config = NodeConfig(port=0, output_directory=Path(tmp) / "node", bundle=bundle,
                            destination=Destination("127.0.0.1", rx.port, rx.ae_title), min_free_mb=100,
                            log_level="WARNING")
        store = JobStore(config.output_directory)
        with DicomNode(config) as node:
            if not node.worker.wait_ready(120):  # the first job should not wait for the bundle to load
                raise RuntimeError("The node's worker did not load the bundle within 120 s.")
            for i in range(warmup + repeats):
                # Reference: the segmenter in this process on the same series (the node's worker is idle).
                source = load_input(files[0].parent)
                timings = segmenter.segment(source).timings
                if i >= warmup:
                    for stage, seconds in timings.items():
                        reference.setdefault(stage, []).append(seconds)
                del source
                start, acked, acked_wall = _send(files, node.port, config.ae_title)
                received = rx.wait_for("RTSTRUCT", count=i + 1, timeout=timeout)
                arrived = max(item.arrived for item in received)
                job_id = max(store.jobs(), key=lambda j: j.job_id).job_id
                # The result may arrive a hair before the worker records the job as done.
                wait_until(lambda: store.load(job_id).state.value == "done", 30, f"job {job_id} done")
                job = store.load(job_id)
                parts = _breakdown(job, store.job_dir(job.job_id), acked_wall, acked_wall + (arrived - acked))
                if i < warmup:
                    first = {"latency_s": round(arrived - acked, 4), "parts": parts}
                    continue
                latencies.append(arrived - acked)
                sends.append(acked - start)
                parts_runs.append(parts)
                logger.info("run %d: latency %.2f s", i - warmup + 1, arrived - acked)
    network = stats(reference["network"])
    latency = stats(latencies)
    stage_names = list(parts_runs[0])
    stage_medians = {k: round(statistics.median([p[k] for p in parts_runs]), 4) for k in stage_names}
    groups = {g: round(sum(stage_medians.get(k, 0.0) for k in keys), 4) for g, keys in STAGE_GROUPS.items()}
    dominant = max(groups, key=groups.get)
    return {
        "benchmark": "latency",
        "series": {"slices": slices, "rows": size, "cols": size, "instances": len(files)},
        "repeats": repeats,
        "warmup": warmup,
        "latency_s": latency,
        "send_s": stats(sends),
        "send_images_per_s": round(len(files) / statistics.median(sends), 1),
        "reference_network_s": network,
        "reference_stages_s": {k: stats(v) for k, v in reference.items()},
        "ratio_latency_to_network": round(latency["median"] / network["median"], 3),
        "targets": {"ratio_max": 2.0, "latency_max_s": 10.0},
        "met": {"ratio": latency["median"] / network["median"] <= 2.0, "absolute": latency["median"] <= 10.0},
        "stages_median_s": stage_medians,
        "stage_groups_median_s": groups,
        "stage_groups_sum_s": round(sum(groups.values()), 4),
        "dominant_stage": dominant,
        "runs": parts_runs,
        "first_job": first,
        "machine": machine_info(),
    }


def summary(result: dict[str, Any]) -> str:
    """The human-readable table."""
    rows = [
        ["end-to-end latency", result["latency_s"]["median"], result["latency_s"]["min"], result["latency_s"]["max"]],
        ["reference: network", result["reference_network_s"]["median"], result["reference_network_s"]["min"],
         result["reference_network_s"]["max"]],
    ]
    rows += [[f"  stage: {k}", v, "", ""] for k, v in result["stage_groups_median_s"].items()]
    text = table(rows, ["seconds (median of %d)" % result["repeats"], "median", "min", "max"])
    return (f"{text}\nlatency / network = {result['ratio_latency_to_network']:.2f} (target <= 2), "
            f"latency {result['latency_s']['median']:.2f} s (target <= 10 s); dominant: {result['dominant_stage']}")


def main(args: list[str] | None = None) -> dict[str, Any]:
    """Command line; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="measured runs (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured first runs (default 1)")
    parser.add_argument("--slices", type=int, default=100, help="slices of the series (default 100)")
    parser.add_argument("--size", type=int, default=512, help="rows = columns (default 512)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    opts = parser.parse_args(args)
    logging.basicConfig(level=logging.WARNING)
    result = run(opts.repeats, opts.slices, opts.size, opts.warmup)
    return emit(result, summary(result), opts.out)


if __name__ == "__main__":
    main()
