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

import json
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    add_series_options,
    bench_parser,
    chart_pyplot,
    machine_info,
    phantom_series,
    run_cli,
    save_chart,
    seconds_cell,
    stats,
    table,
    verdict,
    work_root,
)
from vacseg_monai.testing.peers import wait_until

__all__ = ["main", "report_chart", "report_ideas", "report_section", "run"]

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


def report_chart(result: dict[str, Any], docs: Path) -> Path:
    """The stage breakdown of the latency against the network alone and the targets: ``docs/bench_latency_stages.png``; returns its path."""
    plt = chart_pyplot()
    lat = result
    groups = lat["stage_groups_median_s"]
    ref = lat["reference_network_s"]["median"]
    fig, ax = plt.subplots(figsize=(8, 4.2))
    bottom = 0.0
    colours = plt.get_cmap("tab20").colors
    for i, (name, seconds) in enumerate(groups.items()):
        ax.barh(["node, end to end"], [seconds], left=bottom, color=colours[i % 20], label=f"{name} {seconds:.2f} s")
        bottom += seconds
    ax.barh(["reference: network only"], [ref], color="grey", label=f"reference network {ref:.2f} s")
    ax.axvline(2 * ref, color="red", ls="--", lw=1, label=f"target 2 x network = {2 * ref:.2f} s")
    ax.axvline(10.0, color="black", ls=":", lw=1, label="target 10 s")
    ax.set_xlabel("seconds (medians)")
    ax.set_title(f"Latency from last C-STORE response to RTSTRUCT stored ({lat['series']['slices']} slices, "
                 f"median of {lat['repeats']}): {lat['latency_s']['median']:.2f} s")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return save_chart(fig, docs / "bench_latency_stages.png")


def report_section(result: dict[str, Any]) -> list[str]:
    """Sections 1 and 2 of docs/benchmarks.md: the end-to-end latency and where it goes."""
    lat = result
    ratio, lat_s = lat["ratio_latency_to_network"], lat["latency_s"]["median"]
    ref = lat["reference_network_s"]
    out = [
        "## 1. End-to-end latency", "",
        f"A {lat['series']['slices']}-slice {lat['series']['rows']} x {lat['series']['cols']} phantom CT series is "
        "sent in-process with pynetdicom (one association) to an in-process `DicomNode` running the shipped "
        "bundle; the RTSTRUCT goes to a `ResultReceiver`, which records its arrival. Latency runs from the last "
        "C-STORE response to that arrival. Reference: the network stage of `BundleSegmenter` (SliceInferer over "
        "the 256 x 256 preprocessed slices) on the same series in the benchmark process, interleaved with the "
        f"node runs. {lat['warmup']} unmeasured warm-up run first.", "",
        "| measure | value |", "|---|---|",
        f"| latency, last C-STORE response to RTSTRUCT stored | {seconds_cell(lat['latency_s'])} |",
        f"| reference: network forward | {seconds_cell(ref)} |",
        f"| latency / network | **{ratio:.2f}** |",
        f"| sending the series ({lat['series']['instances']} C-STOREs, pynetdicom SCU) | {seconds_cell(lat['send_s'])} "
        f"({lat['send_images_per_s']} images/s) |",
    ]
    if lat.get("first_job"):
        out.append(f"| first job once the worker is ready (warm-up, not in the median) | {lat['first_job']['latency_s']:.3f} s |")
    out += ["",
            f"- Target latency <= 2 x network: {verdict(lat['met']['ratio'], ratio, 2.0, ' x')}",
            f"- Target latency <= 10 s: {verdict(lat['met']['absolute'], lat_s, 10.0, ' s')}", ""]

    out += ["## 2. Where the latency goes", "",
            "Worker stages from the job's `timings.json`; gaps from the job history (`job.json`) and the "
            "receiver's arrival time. Medians per stage over the measured runs (the parts of each run sum to its "
            "latency; medians need not sum exactly to the median latency).", "",
            "![stage breakdown](bench_latency_stages.png)", "",
            "| stage | seconds (median) | share |", "|---|---|---|"]
    total = lat["stage_groups_sum_s"]
    for name, seconds in lat["stage_groups_median_s"].items():
        out.append(f"| {name} | {seconds:.3f} | {seconds / total:.0%} |")
    out += [f"| **sum** | {total:.3f} | |", "",
            f"Dominant stage: **{lat['dominant_stage']}**. Single stages: " +
            ", ".join(f"{k} {v:.3f} s" for k, v in lat["stages_median_s"].items()) + ".", ""]
    return out


def report_ideas(result: dict[str, Any], machine: dict[str, Any]) -> list[str]:
    """Its lines of "What could help" (``machine``: the report's machine)."""
    ideas = []
    lat = result
    total = lat["stage_groups_sum_s"]
    groups = lat["stage_groups_median_s"]
    non_network = total - groups["network"]
    ideas.append(f"Latency: the network is {groups['network']:.2f} s of {total:.2f} s; everything else "
                 f"adds {non_network:.2f} s ({non_network / groups['network']:.2f} x network).")
    if groups.get("worker wake-up", 0) > 0.1 * total:
        ideas.append(f"The worker started the job {groups['worker wake-up']:.2f} s after it was queued: the worker "
                     "was still busy (or loading); check the wake-up path.")
    if groups.get("QA picture", 0) > 0.1 * total:
        ideas.append(f"The QA picture ({groups['QA picture']:.2f} s) is on the latency path: write it after the "
                     "export, or in a thread.")
    if groups.get("contours + RTSTRUCT", 0) > 0.1 * total:
        ideas.append(f"Contour extraction + RTSTRUCT writing takes {groups['contours + RTSTRUCT']:.2f} s: "
                     "parallelise per slice/label or vectorise the contour tracing.")
    if groups.get("postprocess", 0) > 0.1 * total:
        stages = lat["stages_median_s"]
        ideas.append(f"Post-processing takes {groups['postprocess']:.2f} s (resample + argmax "
                     f"{stages.get('resample_argmax', 0):.2f} s, clean-up {stages.get('clean_up', 0):.2f} s): "
                     "the resample already interpolates only near label boundaries and the clean-up works "
                     "on bounding boxes; cleaning at the network's 256 grid would cut it further but changes "
                     "the result near boundaries.")
    if groups.get("read/decode", 0) > 0.1 * total:
        ideas.append(f"Reading the series takes {groups['read/decode']:.2f} s (one parse per file, pixel data "
                     "read when decoded): read while the series is still arriving, when the worker is idle.")
    return ideas


def main(args: list[str] | None = None) -> dict[str, Any]:
    """Command line; see the module docstring."""
    parser = bench_parser(__doc__)
    parser.add_argument("--repeats", type=int, default=5, help="measured runs (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured first runs (default 1)")
    add_series_options(parser)
    return run_cli(parser, args, lambda opts: run(opts.repeats, opts.slices, opts.size, opts.warmup), summary)


if __name__ == "__main__":
    main()
