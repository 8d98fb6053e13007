"""End-to-end latency of the node, its stage breakdown, and the bare network time as the reference.

Two series, each sent over one association (DCMTK's storescu when installed, else pynetdicom in this
process) to in-process :class:`~vacseg_monai.service.scp.DicomNode` s running the shipped bundle:

- **phantom**: a phantom CT series (cropped/padded to ``--slices`` slices of ``--size`` squared);
- **real**: a public real scanner CT (``--real-scan``, default the held-out check scan ``lung2``, 61 chest
  slices of 512 x 512 with its couch) written as a DICOM series by the project's writer
  (:func:`benchmarks.common.real_ct_series`); real anatomy and couches give ragged, many-point contours.

Each series goes to one node per output kind (``--outputs``: ``rtstruct``, RTSTRUCT only, and ``both``,
RTSTRUCT + SEG); the results come back to a :class:`~vacseg_monai.service.receiver.ResultReceiver`, which
records their arrival times. Latency runs from the last C-STORE response to the arrival of the last result
object of the job.

The reference, measured in the same run and interleaved with the node runs, is the network stage of
:class:`~vacseg_monai.segmenter.BundleSegmenter` (the bundle's SliceInferer over the preprocessed 256 x 256
slices) on the same series in this process. Target: latency <= 2 x network and <= 10 s.

The breakdown adds the job's ``timings.json`` (worker stages) to the gaps read from the job history:
release + queueing, worker wake-up, export. ``--profile FILE`` also runs the node's processor on the real
series in this process under cProfile (both outputs) and reports where its time goes, with the number of
polygons and contour points per ROI and the SEG's frames.

    .venv/bin/python -m benchmarks.bench_latency [--repeats 5] [--slices 100] [--real-scan lung2]
        [--real-slices N] [--outputs rtstruct both] [--profile FILE.prof] [--out FILE]
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import statistics
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from benchmarks.common import (
    BENCH_REAL_SCAN,
    add_series_options,
    bench_parser,
    chart_pyplot,
    machine_info,
    phantom_series,
    real_ct_series,
    run_cli,
    save_chart,
    seconds_cell,
    stats,
    table,
    verdict,
    work_root,
)
from vacseg_monai.testing.peers import wait_until

__all__ = ["CASE_OUTPUTS", "main", "profile_processing", "report_chart", "report_ideas", "report_section", "run"]

logger = logging.getLogger(__name__)

# Stages in the order they happen; the chart stacks them in this order.
STAGE_GROUPS = {
    "release + queue": ["release_queue"],
    "worker wake-up": ["wakeup"],
    "read/decode": ["read"],
    "preprocess": ["preprocess"],
    "network": ["network"],
    "postprocess": ["resample_argmax", "clean_up"],
    "quality score": ["quality"],
    "contours + RTSTRUCT/SEG": ["write"],
    "job bookkeeping": ["job_other"],
    "export": ["export"],
}
#: Output kinds a node can be run with here, and the result modalities each sends back.
CASE_OUTPUTS = {"rtstruct": ("RTSTRUCT",), "both": ("RTSTRUCT", "SEG")}
RATIO_MAX = 2.0
LATENCY_MAX_S = 10.0


def _sender() -> str:
    """The sender of the series: DCMTK's storescu when installed, else pynetdicom in this process.

    storescu runs in its own process: pynetdicom's requestor in the process that also hosts the node's
    SCP can, on a busy machine, have a C-STORE response taken by its association's reactor thread
    ("Received unexpected C-STORE service message") and then waits out the DIMSE timeout.
    """
    return "DCMTK storescu" if shutil.which("storescu") else "pynetdicom"


def _send(files: list[Path], port: int, ae_title: str) -> tuple[float, float, float]:
    """Send over one association; return (perf at start, perf and wall time after the last response).

    With storescu, "after the last response" is when storescu has released the association and exited.
    """
    if _sender() == "DCMTK storescu":
        from vacseg_monai.testing.peers import storescu_send

        start = time.perf_counter()
        storescu_send(files, port, ae_title, aet="BENCH_TPS")
        return start, time.perf_counter(), time.time()
    return _send_pynetdicom(files, port, ae_title)


def _send_pynetdicom(files: list[Path], port: int, ae_title: str) -> tuple[float, float, float]:
    """:func:`_send` with pynetdicom in this process."""
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
    """Seconds per stage between the last response and the last result's arrival (sums to the latency)."""
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


class _NodeCase:
    """One node (one output kind) of the run with its own result receiver and job store."""

    def __init__(self, output: str, node: Any, store: Any, rx: Any, ae_title: str) -> None:
        self.output, self.node, self.store, self.rx, self.ae_title = output, node, store, rx, ae_title
        self.sent = 0

    def run_once(self, files: list[Path], timeout: float) -> dict[str, Any]:
        """Send ``files``, wait for every result object; return latency, send time and the stage parts."""
        start, acked, acked_wall = _send(files, self.node.port, self.ae_title)
        self.sent += 1
        arrived = max(
            self.rx.wait_for(modality, count=self.sent, timeout=timeout)[-1].arrived
            for modality in CASE_OUTPUTS[self.output]
        )
        job_id = max(self.store.jobs(), key=lambda j: j.job_id).job_id
        # The result may arrive a hair before the worker records the job as done.
        wait_until(lambda: self.store.load(job_id).state.value == "done", 30, f"job {job_id} done")
        job = self.store.load(job_id)
        parts = _breakdown(job, self.store.job_dir(job_id), acked_wall, acked_wall + (arrived - acked))
        return {"latency": arrived - acked, "send": acked - start, "parts": parts}


def _series_info(files: list[Path], name: str) -> dict[str, Any]:
    import pydicom

    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    return {"name": name, "slices": len(files), "rows": int(ds.Rows), "cols": int(ds.Columns),
            "pixel_spacing_mm": [float(v) for v in ds.PixelSpacing], "instances": len(files),
            "description": str(ds.get("SeriesDescription", ""))}


def _start_node(stack: ExitStack, tmp: Path, output: str, bundle: Path) -> _NodeCase:
    """A node producing ``output`` and its own result receiver, both closed with ``stack``."""
    from vacseg_monai.service.config import Destination, NodeConfig
    from vacseg_monai.service.jobs import JobStore
    from vacseg_monai.service.receiver import ResultReceiver
    from vacseg_monai.service.scp import DicomNode

    rx = stack.enter_context(ResultReceiver(tmp / f"received_{output}", ae_title="BENCH_TPS"))
    config = NodeConfig(port=0, output_directory=tmp / f"node_{output}", bundle=bundle, output=output,
                        destination=Destination("127.0.0.1", rx.port, rx.ae_title), min_free_mb=100,
                        log_level="WARNING")
    node = stack.enter_context(DicomNode(config))
    return _NodeCase(output, node, JobStore(config.output_directory), rx, config.ae_title)


def _case_result(runs: list[dict[str, Any]], network: list[float], instances: int,
                 first: dict[str, Any] | None) -> dict[str, Any]:
    """Medians of one (series, output) case against the network of its series."""
    latency, net = stats([r["latency"] for r in runs]), stats(network)
    parts_runs = [r["parts"] for r in runs]
    stage_medians = {k: round(statistics.median([p.get(k, 0.0) for p in parts_runs]), 4) for k in parts_runs[0]}
    groups = {g: round(sum(stage_medians.get(k, 0.0) for k in keys), 4) for g, keys in STAGE_GROUPS.items()}
    ratio = latency["median"] / net["median"]
    sends = [r["send"] for r in runs]
    return {
        "latency_s": latency,
        "send_s": stats(sends),
        "send_images_per_s": round(instances / statistics.median(sends), 1),
        "reference_network_s": net,
        "ratio_latency_to_network": round(ratio, 3),
        # The same against the network stage of the node's own job (which ran beside the same load).
        "ratio_latency_to_job_network": round(latency["median"] / stage_medians["network"], 3),
        "met": {"ratio": ratio <= RATIO_MAX, "absolute": latency["median"] <= LATENCY_MAX_S},
        "stages_median_s": stage_medians,
        "stage_groups_median_s": groups,
        "stage_groups_sum_s": round(sum(groups.values()), 4),
        "dominant_stage": max(groups, key=groups.get),
        "runs": parts_runs,
        "first_job": first,
    }


def run(repeats: int = 5, slices: int = 100, size: int = 512, warmup: int = 1, timeout: float = 600.0,
        work_dir: Path | None = None, *, real_scan: str | None = BENCH_REAL_SCAN, real_slices: int | None = None,
        outputs: tuple[str, ...] = ("rtstruct", "both"), phantom: bool = True) -> dict[str, Any]:
    """Measure; see the module docstring. Returns the result dictionary.

    Args:
        repeats: measured runs per case (default 5).
        slices: slices of the phantom series (default 100).
        size: rows = columns of the phantom series (default 512).
        warmup: unmeasured first runs (default 1).
        timeout: seconds to wait for one job's results (default 600).
        work_dir: scratch folder (default ``benchmarks/results/work``).
        real_scan: the public real scan (default :data:`~benchmarks.common.BENCH_REAL_SCAN`); None: phantom only.
        real_slices: keep at most this many central slices of the real scan (default None: all).
        outputs: output kinds, keys of :data:`CASE_OUTPUTS` (default both).
        phantom: measure the phantom series too (default True).

    Raises:
        ValueError: for an unknown output kind or nothing to measure.
    """
    from vacseg_monai.inputs import load_input
    from vacseg_monai.paths import default_bundle_root
    from vacseg_monai.segmenter import BundleSegmenter

    unknown = [o for o in outputs if o not in CASE_OUTPUTS]
    if unknown or not outputs:
        raise ValueError(f"`outputs` must be a non-empty subset of {list(CASE_OUTPUTS)}, got {list(outputs)}.")
    series = {"phantom": phantom_series(slices, size=size)} if phantom else {}
    if real_scan:
        series["real"] = real_ct_series(real_scan, max_slices=real_slices)
    if not series:
        raise ValueError("Nothing to measure: pass a `real_scan` or keep `phantom`.")
    load_start = [round(v, 2) for v in os.getloadavg()]  # 1, 5, 15 min: how busy the machine was
    bundle = Path(default_bundle_root())
    segmenter = BundleSegmenter(bundle)
    reference: dict[str, list[float]] = {name: [] for name in series}
    runs: dict[str, list[dict[str, Any]]] = {f"{v}/{o}": [] for v in series for o in outputs}
    first: dict[str, dict[str, Any]] = {}
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=work_dir or work_root())))
        nodes = [_start_node(stack, tmp, output, bundle) for output in outputs]
        for case in nodes:  # the first job should not wait for the bundle to load
            if not case.node.worker.wait_ready(120):
                raise RuntimeError(f"The {case.output} node's worker did not load the bundle within 120 s.")
        for i in range(warmup + repeats):
            for name, files in series.items():
                # Reference: the segmenter in this process on the same series (the nodes' workers are idle).
                network = segmenter.segment(load_input(files[0].parent)).timings["network"]
                if i >= warmup:
                    reference[name].append(network)
                for case in nodes:
                    measured = case.run_once(files, timeout)
                    key = f"{name}/{case.output}"
                    if i < warmup:
                        first[key] = {"latency_s": round(measured["latency"], 4), "parts": measured["parts"]}
                        continue
                    runs[key].append(measured)
                    logger.info("run %d, %s: latency %.2f s", i - warmup + 1, key, measured["latency"])
    infos = {name: _series_info(files, name) for name, files in series.items()}
    if real_scan:
        infos["real"]["scan"] = real_scan
    cases = {key: _case_result(r, reference[key.split("/")[0]], infos[key.split("/")[0]]["instances"], first.get(key))
             for key, r in runs.items()}
    return {
        "benchmark": "latency",
        "series": infos,
        "repeats": repeats,
        "warmup": warmup,
        "outputs": list(outputs),
        "sender": _sender(),
        "targets": {"ratio_max": RATIO_MAX, "latency_max_s": LATENCY_MAX_S},
        "cases": cases,
        "load_average": {"start": load_start, "end": [round(v, 2) for v in os.getloadavg()]},
        "machine": machine_info(),
    }


def _cases(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The result's cases by ``series/output``; a result of the earlier phantom-only form is its one case."""
    return result.get("cases") or {"phantom/rtstruct": result}


def _series_of(result: dict[str, Any], key: str) -> dict[str, Any]:
    series = result["series"]
    return series.get(key.split("/")[0], series) if "cases" in result else series


def _case_label(result: dict[str, Any], key: str) -> str:
    name, output = key.split("/")
    info = _series_of(result, key)
    what = f"real CT {info.get('scan', '')}".strip() if name == "real" else "phantom"
    return f"{what} ({info['slices']} x {info['rows']}^2), {'RTSTRUCT + SEG' if output == 'both' else 'RTSTRUCT'}"


def summary(result: dict[str, Any]) -> str:
    """The human-readable table."""
    rows = []
    for key, case in _cases(result).items():
        rows.append([key, case["latency_s"]["median"], case["reference_network_s"]["median"],
                     case["ratio_latency_to_network"], case["dominant_stage"]])
        rows += [[f"  stage: {k}", v, "", "", ""] for k, v in case["stage_groups_median_s"].items() if v]
    return table(rows, [f"seconds (median of {result['repeats']})", "latency", "network", "ratio", "dominant"]) + (
        f"\ntargets: latency / network <= {RATIO_MAX:g}, latency <= {LATENCY_MAX_S:g} s")


def report_chart(result: dict[str, Any], docs: Path) -> Path:
    """The stage breakdown of each case against its network and the 2 x network target: ``docs/bench_latency_stages.png``."""
    plt = chart_pyplot()
    cases = _cases(result)
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.9 * len(cases)))
    colours = plt.get_cmap("tab20").colors
    names = list(STAGE_GROUPS)
    for row, (key, case) in enumerate(reversed(list(cases.items()))):
        bottom = 0.0
        for i, name in enumerate(names):
            seconds = case["stage_groups_median_s"].get(name, 0.0)
            ax.barh([row], [seconds], left=bottom, color=colours[i % 20], label=name if row == 0 else None)
            bottom += seconds
        net = case["reference_network_s"]["median"]
        ax.plot([RATIO_MAX * net] * 2, [row - 0.45, row + 0.45], color="red", ls="--", lw=1.2,
                label=f"{RATIO_MAX:g} x network (reference)" if row == 0 else None)
        ax.text(bottom, row, f" {case['latency_s']['median']:.2f} s = {case['ratio_latency_to_network']:.2f} x",
                va="center", fontsize=7)
    ax.set_yticks(range(len(cases)), [_case_label(result, k).replace("), ", ")\n") for k in reversed(list(cases))],
                  fontsize=7)
    longest = max(max(c["stage_groups_sum_s"], RATIO_MAX * c["reference_network_s"]["median"]) for c in cases.values())
    ax.set_xlim(0, 1.25 * longest)
    ax.set_xlabel("seconds (medians)")
    ax.set_title(f"Latency from last C-STORE response to the last result stored (median of {result['repeats']})",
                 fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return save_chart(fig, docs / "bench_latency_stages.png")


def report_section(result: dict[str, Any]) -> list[str]:
    """Sections 1 and 2 of docs/benchmarks.md: the end-to-end latency and where it goes."""
    cases = _cases(result)
    out = [
        "## 1. End-to-end latency", "",
        f"Each series is sent with {result.get('sender', 'pynetdicom')} (one association) to in-process "
        "`DicomNode`s running the "
        "shipped bundle, one producing the RTSTRUCT only, one RTSTRUCT + SEG; the results go to a "
        "`ResultReceiver`, which records their arrival. Latency runs from the last C-STORE response to the "
        "arrival of the job's last result (with storescu, from its exit after the release, which the node "
        "answers once it has queued the job: \"release + queue\" can then be a few ms below zero). Reference: the network stage of `BundleSegmenter` (SliceInferer over "
        "the 256 x 256 preprocessed slices) on the same series in the benchmark process, interleaved with the "
        f"node runs. {result['warmup']} unmeasured warm-up run first.", "",
    ]
    out += [f"- {name}: {info.get('description', '')}, {info['slices']} slices of {info['rows']} x {info['cols']}"
            + (f" (public scan `{info['scan']}`, a held-out check scan, written as a DICOM series by the "
               "project's writer)" if name == "real" else "")
            for name, info in (result["series"].items() if "cases" in result else [("phantom", result["series"])])]
    if result.get("load_average"):
        load = result["load_average"]
        out += ["", f"Load average (1, 5, 15 min) of the machine, {result['machine'].get('cpu_count')} logical cores: "
                f"{', '.join(map(str, load['start']))} at the start, {', '.join(map(str, load['end']))} at the end."]
    out += ["", "| series, output | latency | reference: network | latency / network | latency / the job's own "
            "network stage | sending the series |", "|---|---|---|---|---|---|"]
    for key, case in cases.items():
        out.append(f"| {_case_label(result, key)} | {seconds_cell(case['latency_s'])} | "
                   f"{seconds_cell(case['reference_network_s'])} | **{case['ratio_latency_to_network']:.2f}** | "
                   f"{case.get('ratio_latency_to_job_network', float('nan')):.2f} | "
                   f"{case['send_s']['median']:.3f} s ({case['send_images_per_s']} images/s) |")
    out.append("")
    for key, case in cases.items():
        out.append(f"- {_case_label(result, key)}: latency <= {RATIO_MAX:g} x network "
                   f"{verdict(case['met']['ratio'], case['ratio_latency_to_network'], RATIO_MAX, ' x')}; "
                   f"<= {LATENCY_MAX_S:g} s {verdict(case['met']['absolute'], case['latency_s']['median'], LATENCY_MAX_S, ' s')}")
    out += ["", "## 2. Where the latency goes", "",
            "Worker stages from the job's `timings.json`; gaps from the job history (`job.json`) and the "
            "receiver's arrival time. Medians per stage over the measured runs (the parts of each run sum to its "
            "latency; medians need not sum exactly to the median latency).", "",
            "![stage breakdown](bench_latency_stages.png)", "",
            "| stage (seconds, median) | " + " | ".join(_case_label(result, k) for k in cases) + " |",
            "|---|" + "---|" * len(cases)]
    for name in STAGE_GROUPS:
        out.append(f"| {name} | " + " | ".join(f"{c['stage_groups_median_s'].get(name, 0.0):.3f}" for c in cases.values()) + " |")
    out.append("| **sum** | " + " | ".join(f"{c['stage_groups_sum_s']:.3f}" for c in cases.values()) + " |")
    out.append("")
    for key, case in cases.items():
        out.append(f"- {_case_label(result, key)}: dominant **{case['dominant_stage']}**; " +
                   ", ".join(f"{k} {v:.3f} s" for k, v in case["stages_median_s"].items()) + ".")
    out.append("")
    if result.get("profile"):
        out += _profile_lines(result["profile"])
    return out


def _profile_lines(profile: dict[str, Any]) -> list[str]:
    """The report's paragraph on the profiled job (:func:`profile_processing`)."""
    written = profile["written"]
    rois = written.get("RTSTRUCT", {}).get("rois", {})
    out = ["### Profile of one real-CT job", "",
           f"The node's processor on the real series in the benchmark process under cProfile "
           f"(`--profile`, output `{profile['output']}`, one unmeasured job first; cProfile slows Python-heavy "
           "code more than numpy and torch). Stages: " +
           ", ".join(f"{k} {v:.3f} s" for k, v in profile["timings_s"].items()) + ".", ""]
    if rois:
        out.append("RTSTRUCT: " + ", ".join(f"{name} {r['polygons']} polygons / {r['points']} points"
                                           for name, r in rois.items()) +
                   f"; {written['RTSTRUCT']['bytes'] / 1e6:.2f} MB.")
    if "SEG" in written:
        out.append(f"SEG: {written['SEG']['frames']} frames, {written['SEG']['transfer_syntax']}, "
                   f"{written['SEG']['bytes'] / 1e6:.2f} MB.")
    out += ["", "| project function (cumulative) | seconds |", "|---|---|"]
    out += [f"| `{name}` | {seconds:.3f} |" for name, seconds in list(profile["project_cumulative_s"].items())[:12]]
    out.append("")
    return out


def report_ideas(result: dict[str, Any], machine: dict[str, Any]) -> list[str]:
    """Its lines of "What could help" (``machine``: the report's machine)."""
    ideas = []
    for key, case in _cases(result).items():
        groups = case["stage_groups_median_s"]
        total, network = case["stage_groups_sum_s"], groups["network"]
        rest = sorted(((v, k) for k, v in groups.items() if k != "network"), reverse=True)[:3]
        ideas.append(f"Latency, {_case_label(result, key)}: the network is {network:.2f} s of {total:.2f} s "
                     f"({case['ratio_latency_to_network']:.2f} x the reference network, target "
                     f"{'met' if case['met']['ratio'] else 'missed'}); the largest other stages: "
                     + ", ".join(f"{k} {v:.2f} s" for v, k in rest) + ".")
    return ideas


def _written_counts(paths: list[Path]) -> dict[str, Any]:
    """Polygons and contour points per ROI of the RTSTRUCT, frames of the SEG and the files' sizes."""
    import pydicom

    counts: dict[str, Any] = {}
    for path in paths:
        ds = pydicom.dcmread(path)
        entry: dict[str, Any] = {"bytes": path.stat().st_size}
        if ds.Modality == "RTSTRUCT":
            names = {int(r.ROINumber): str(r.ROIName) for r in ds.StructureSetROISequence}
            entry["rois"] = {
                names[int(roi.ReferencedROINumber)]: {
                    "polygons": len(roi.get("ContourSequence", [])),
                    "points": sum(int(c.NumberOfContourPoints) for c in roi.get("ContourSequence", [])),
                }
                for roi in ds.ROIContourSequence
            }
        else:
            entry["frames"] = int(ds.NumberOfFrames)
            entry["transfer_syntax"] = str(ds.file_meta.TransferSyntaxUID.name)
        counts[str(ds.Modality)] = entry
    return counts


def profile_processing(files: list[Path], out: Path, output: str = "both", top: int = 25) -> dict[str, Any]:
    """Profile the node's processor on one series in this process: where the time of one job goes.

    The processor (:class:`~vacseg_monai.service.processor.BundleProcessor`, as the node's worker loads it)
    runs the series once unmeasured, then once under cProfile.

    Args:
        files: the series' CT files (one folder).
        out: where the cProfile data is written (read it with ``python -m pstats``).
        output: the processor's output kind (default ``both``).
        top: functions listed (default 25).

    Returns:
        The stage timings of the profiled run, the ``top`` functions by cumulative time within the
        project and by own time overall, and the written objects' counts (:func:`_written_counts`).
    """
    import cProfile
    import pstats

    from vacseg_monai.service.processor import TIMINGS_FILE, BundleProcessor

    processor = BundleProcessor(output=output, qa_picture=False)
    with tempfile.TemporaryDirectory(dir=work_root()) as tmp:
        processor(files[0].parent, Path(tmp) / "warm")
        profiler = cProfile.Profile()
        profiler.enable()
        written = processor(files[0].parent, Path(tmp) / "job")
        profiler.disable()
        timings = json.loads((Path(tmp) / "job" / TIMINGS_FILE).read_text())
        counts = _written_counts(written)
    out.parent.mkdir(parents=True, exist_ok=True)
    profiler.dump_stats(str(out))
    entries = pstats.Stats(profiler).stats  # (file, line, name) -> (calls, primitive, own, cumulative, callers)

    def where(func: tuple[str, int, str]) -> str:
        path = func[0]
        short = path[path.index("vacseg_monai"):] if "vacseg_monai" in path else Path(path).name
        return f"{short}:{func[1]}({func[2]})"

    ours = sorted((f for f in entries if "vacseg_monai" in f[0]), key=lambda f: -entries[f][3])[:top]
    own = sorted(entries, key=lambda f: -entries[f][2])[:top]
    return {
        "output": output,
        "profile_file": str(out),
        "timings_s": timings,
        "project_cumulative_s": {where(f): round(entries[f][3], 4) for f in ours},
        "own_time_s": {where(f): round(entries[f][2], 4) for f in own},
        "written": counts,
    }


def main(args: list[str] | None = None) -> dict[str, Any]:
    """Command line; see the module docstring."""
    parser = bench_parser(__doc__)
    parser.add_argument("--repeats", type=int, default=5, help="measured runs (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured first runs (default 1)")
    add_series_options(parser, slices_help="slices of the phantom series", size_help="rows = columns of the phantom")
    real = parser.add_argument_group("Real CT")
    real.add_argument("--real-scan", default=BENCH_REAL_SCAN, metavar="KEY",
                      help=f"public real scan (vacseg_monai.public_data.SCANS; default {BENCH_REAL_SCAN}); 'none' skips it")
    real.add_argument("--real-slices", type=int, metavar="N", help="keep at most N central slices of it (default all)")
    real.add_argument("--no-phantom", action="store_true", help="measure the real scan only")
    parser.add_argument("--outputs", nargs="+", choices=list(CASE_OUTPUTS), default=list(CASE_OUTPUTS),
                        help="output kinds, one node each (default rtstruct both)")
    parser.add_argument("--profile", type=Path, metavar="FILE",
                        help="also profile the processor on the real series in this process (cProfile data to FILE)")

    def measure(opts: Any) -> dict[str, Any]:
        scan = None if str(opts.real_scan).lower() == "none" else opts.real_scan
        result = run(opts.repeats, opts.slices, opts.size, opts.warmup, real_scan=scan, real_slices=opts.real_slices,
                     outputs=tuple(opts.outputs), phantom=not opts.no_phantom)
        if opts.profile is not None and scan:
            result["profile"] = profile_processing(real_ct_series(scan, max_slices=opts.real_slices), opts.profile)
        return result

    return run_cli(parser, args, measure, summary)


if __name__ == "__main__":
    main()
