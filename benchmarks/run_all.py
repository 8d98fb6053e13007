"""Run every benchmark in a fresh process, keep the JSON, regenerate docs/benchmarks.md and the charts.

    .venv/bin/python -m benchmarks.run_all            # full run (make bench), about 10 minutes on 2 cores
    .venv/bin/python -m benchmarks.run_all --quick    # smoke run: fewer repetitions, smaller memory case
    .venv/bin/python -m benchmarks.run_all --report-only   # rebuild the report from benchmarks/results/*.json
    .venv/bin/python -m benchmarks.run_all --only latency receive

Results go to ``benchmarks/results/<name>.json`` (git-ignored); the report and
the PNG charts (``docs/bench_*.png``) are generated from those files only.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import bench_quality, real_ct_check
from benchmarks.common import PYTHON, REPO_ROOT, RESULTS_DIR, machine_info

__all__ = ["BENCHMARKS", "main", "render_charts", "render_report", "run_benchmark"]

logger = logging.getLogger(__name__)

DOCS = REPO_ROOT / "docs"
#: GPU figures, recorded on a CUDA machine by ``benchmarks/bench_gpu.py`` (kept in the repository; not rerun here).
GPU_RESULT = DOCS / "gpu.json"

# name -> (module, full arguments, quick arguments); run in this order (lightest on shared state first).
BENCHMARKS: dict[str, tuple[str, list[str], list[str]]] = {
    "receive": ("benchmarks.bench_receive", ["--repeats", "5"], ["--repeats", "2"]),
    "latency": ("benchmarks.bench_latency", ["--repeats", "5"], ["--repeats", "2"]),
    "network": ("benchmarks.bench_network", ["--repeats", "5"], ["--repeats", "1"]),
    "postprocess": ("benchmarks.bench_postprocess", ["--repeats", "5"], ["--repeats", "1"]),
    "training": ("benchmarks.bench_training", ["--repeats", "5", "--steps", "10"], ["--repeats", "2", "--steps", "4"]),
    "memory": ("benchmarks.bench_memory", [], ["--slices", "100", "--instances", "200", "--large-size", "2048"]),
    "rtstruct": ("benchmarks.bench_rtstruct", ["--repeats", "5"], ["--repeats", "1"]),
    "real_ct": ("benchmarks.real_ct_check", [], []),
    "quality": ("benchmarks.bench_quality", [], ["--phantoms", "1", "--max-slices", "32"]),
}


def run_benchmark(name: str, quick: bool, results: Path, timeout: float = 1200.0, docs: Path = DOCS) -> dict[str, Any]:
    """Run one benchmark module as ``python -m``; return its JSON (also written to ``results/<name>.json``).

    The real CT check writes its pictures and the quality benchmark its ROC plot into ``docs`` (default
    ``docs/``), beside the report.

    Raises:
        RuntimeError: if it fails or prints no JSON.
    """
    module, full, short = BENCHMARKS[name]
    out = results / f"{name}.json"
    cmd = [PYTHON, "-m", module, *(short if quick else full)]
    if name != "rtstruct":  # bench_rtstruct.py prints its JSON only
        cmd += ["--out", str(out)]
    if name == "real_ct":
        cmd += ["--pictures", str(docs)]
    if name == "quality":
        cmd += ["--plot", str(docs / "quality_roc.png")]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"{' '.join(cmd)} printed no JSON:\n{proc.stdout[-2000:]}")
    result = json.loads(lines[0])
    result["command"] = " ".join(["python", "-m", module, *(short if quick else full)])
    result["quick"] = quick
    result["wall_s"] = round(elapsed, 1)
    out.write_text(json.dumps(result, indent=1))
    print(proc.stdout[proc.stdout.index(lines[0]) + len(lines[0]):].strip() or lines[0], flush=True)
    return result


def _load(results: Path) -> dict[str, dict[str, Any]]:
    return {name: json.loads((results / f"{name}.json").read_text())
            for name in BENCHMARKS if (results / f"{name}.json").is_file()}


# ---------------------------------------------------------------- charts


def render_charts(data: dict[str, dict[str, Any]], docs: Path = DOCS) -> list[Path]:
    """Write the PNG charts for the benchmarks present in ``data``; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []

    def save(fig, name: str) -> None:
        path = docs / name
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    if "latency" in data:
        lat = data["latency"]
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
        save(fig, "bench_latency_stages.png")

    if "receive" in data:
        rec = data["receive"]
        names = [n for n in ("node", "node_bundle", "pynetdicom", "dcmtk") if n in rec["images_per_s"]]
        labels = {"node": "node\n(store+fsync)", "node_bundle": "node with\nthe bundle",
                  "pynetdicom": "pynetdicom storescp\n--ignore", "dcmtk": "DCMTK storescp"}
        labels = [labels[n] for n in names]
        med = [rec["images_per_s"][n]["median"] for n in names]
        lo = [m - rec["images_per_s"][n]["min"] for m, n in zip(med, names)]
        hi = [rec["images_per_s"][n]["max"] - m for m, n in zip(med, names)]
        fig, ax = plt.subplots(figsize=(7.5, 4))
        colours = {"node": "tab:blue", "node_bundle": "tab:purple", "pynetdicom": "tab:orange", "dcmtk": "tab:green"}
        ax.bar(labels, med, yerr=[lo, hi], capsize=4, color=[colours[n] for n in names])
        ax.axhline(0.9 * rec["images_per_s"]["pynetdicom"]["median"], color="red", ls="--", lw=1,
                   label="target: 0.9 x pynetdicom --ignore")
        for x, m in enumerate(med):
            ax.text(x, m, f"{m:.0f}", ha="center", va="bottom")
        ax.set_ylabel("images/s (median, min-max bars)")
        ax.set_title(f"Receive throughput, {rec['series']['instances']} images of "
                     f"{rec['series']['rows']}x{rec['series']['cols']}, sender DCMTK storescu")
        ax.legend(fontsize=8)
        save(fig, "bench_receive.png")

    if "training" in data:
        tr = data["training"]
        modes = ["pipeline", "pipeline_steady", "materialised", "pipeline_workers0"]
        labels = ["DataLoader\n(per epoch)", "DataLoader\n(steady state)", "tensors in memory",
                  "num_workers=0\n(evidence)"]
        med = [tr["step_s"][m]["median"] for m in modes]
        fig, ax = plt.subplots(figsize=(7.5, 4))
        ax.bar(labels, med, color=["tab:blue", "tab:cyan", "tab:grey", "tab:olive"])
        ax.axhline(1.1 * tr["step_s"]["materialised"]["median"], color="red", ls="--", lw=1,
                   label="target: 1.1 x in-memory step")
        for x, (m, mode) in enumerate(zip(med, modes)):
            ax.text(x, m, f"{m:.2f} s\n{tr['slices_per_s'][mode]:.1f} slices/s", ha="center", va="bottom", fontsize=8)
        ax.set_ylabel(f"seconds per step (batch {tr['batch_size']}, median)")
        ax.set_title("Training step: bundle data pipeline vs materialised batches")
        ax.set_ylim(0, max(med) * 1.3)
        ax.legend(fontsize=8)
        save(fig, "bench_training.png")

    if "memory" in data:
        mem = data["memory"]
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
        save(fig, "bench_memory.png")

    if "network" in data:
        net = data["network"]
        variants = net["variants"]
        names = list(variants)
        med = [variants[n]["seconds"]["median"] for n in names]
        fig, ax = plt.subplots(figsize=(8, 4))
        ax.barh(names, med, color="tab:purple")
        for y, m in enumerate(med):
            ax.text(m, y, f" {m:.2f} s", va="center", fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("network seconds (median)")
        ax.set_title(f"Network stage variants, {net['slices']} slices at 256 x 256")
        save(fig, "bench_network.png")
    return written


# ---------------------------------------------------------------- report


def _verdict(met: bool, measured: float, target: float, unit: str, higher_is_better: bool = False) -> str:
    if met:
        return f"**met** ({measured:.2f}{unit} vs target {target:g}{unit})"
    if higher_is_better:
        return f"**missed** by {target - measured:.2f}{unit} ({measured / target:.0%} of the target {target:g}{unit})"
    return f"**missed** by {measured - target:.2f}{unit} ({measured / target:.2f} x the target {target:g}{unit})"


def _s(stats: dict[str, Any]) -> str:
    return f"{stats['median']:.3f} s (min {stats['min']:.3f}, max {stats['max']:.3f}, n = {stats['n']})"


def render_report(data: dict[str, dict[str, Any]], machine: dict[str, Any], command: str) -> str:
    """The Markdown of docs/benchmarks.md, every number taken from ``data``."""
    quick = any(r.get("quick") for r in data.values())
    out = ["# Benchmarks", "",
           "Generated by `benchmarks/run_all.py` from `benchmarks/results/*.json`; do not edit by hand.", ""]
    if quick:
        out += ["> **Quick (smoke) run**: fewer repetitions and a smaller memory case; not a measurement to quote.", ""]
    out += [
        f"- Command: `{command}`",
        f"- Date: {machine['date']}",
        f"- CPU: {machine['cpu_model']}, {machine['cpu_count']} logical cores "
        f"({machine['cpu_affinity']} usable), torch threads {machine['torch_threads']}; RAM {machine['ram_gib']} GiB;"
        f" CUDA {'yes' if machine['cuda'] else 'no'}",
        f"- Software: Python {machine['python']}, torch {machine['torch']}, MONAI {machine['monai']}, "
        f"pydicom {machine['pydicom']}, pynetdicom {machine['pynetdicom']}, {machine['dcmtk']}",
        f"- Platform: {machine['platform']}",
        "",
        "Every target is a ratio against a reference measured in the same run (numbers on a shared",
        "machine are noisy); medians of the stated number of runs, absolute seconds beside.",
        "",
    ]
    ideas: list[str] = []

    if "latency" in data:
        lat = data["latency"]
        ratio, lat_s = lat["ratio_latency_to_network"], lat["latency_s"]["median"]
        ref = lat["reference_network_s"]
        out += [
            "## 1. End-to-end latency", "",
            f"A {lat['series']['slices']}-slice {lat['series']['rows']} x {lat['series']['cols']} phantom CT series is "
            "sent in-process with pynetdicom (one association) to an in-process `DicomNode` running the shipped "
            "bundle; the RTSTRUCT goes to a `ResultReceiver`, which records its arrival. Latency runs from the last "
            "C-STORE response to that arrival. Reference: the network stage of `BundleSegmenter` (SliceInferer over "
            "the 256 x 256 preprocessed slices) on the same series in the benchmark process, interleaved with the "
            f"node runs. {lat['warmup']} unmeasured warm-up run first.", "",
            "| measure | value |", "|---|---|",
            f"| latency, last C-STORE response to RTSTRUCT stored | {_s(lat['latency_s'])} |",
            f"| reference: network forward | {_s(ref)} |",
            f"| latency / network | **{ratio:.2f}** |",
            f"| sending the series ({lat['series']['instances']} C-STOREs, pynetdicom SCU) | {_s(lat['send_s'])} "
            f"({lat['send_images_per_s']} images/s) |",
        ]
        if lat.get("first_job"):
            out.append(f"| first job once the worker is ready (warm-up, not in the median) | {lat['first_job']['latency_s']:.3f} s |")
        out += ["",
                f"- Target latency <= 2 x network: {_verdict(lat['met']['ratio'], ratio, 2.0, ' x')}",
                f"- Target latency <= 10 s: {_verdict(lat['met']['absolute'], lat_s, 10.0, ' s')}", ""]

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

    if "network" in data:
        net = data["network"]
        base = net["variants"][net["baseline"]]["seconds"]["median"]
        out += ["## Network stage variants (evidence for speed-ups)", "",
                f"The bundle's network over the same {net['slices']} preprocessed slices, each variant timed "
                f"{net['repeats']} times in one process (ratio = variant / `{net['baseline']}`; the bundle's network is "
                f"{net.get('bundle_memory_format', 'contiguous')}).", "",
                "![network variants](bench_network.png)", "",
                "| variant | seconds (median) | ratio | argmax agreement with `bundle` |", "|---|---|---|---|"]
        for name, v in net["variants"].items():
            out.append(f"| {name} | {v['seconds']['median']:.3f} | {v['seconds']['median'] / base:.2f} | "
                       f"{100 * v['argmax_agreement']:.4f} % |")
        if "amp bf16" in net["variants"]:
            amp = net["variants"]["amp bf16"]
            out += ["", f"`amp bf16` is the bundle's opt-in `amp` setting (bf16 autocast): "
                    f"{amp['seconds']['median'] / base:.2f} x the float32 time here (this processor "
                    f"{'computes' if net.get('cpu_bf16') else 'does not compute'} bf16 natively), "
                    f"{100 * (1 - amp['argmax_agreement']):.4f} % of the 256 x 256 labels differ. It stays off by "
                    "default so that a series gives the same contours on any machine; the bundle's README gives "
                    "the held-out Dice with it."]
        best = min(net["variants"], key=lambda n: net["variants"][n]["seconds"]["median"])
        out.append("")
        if best != net["baseline"]:
            ideas.append(f"Network: `{best}` ran in {net['variants'][best]['seconds']['median']:.2f} s vs "
                         f"{base:.2f} s for `{net['baseline']}` "
                         f"({net['variants'][best]['seconds']['median'] / base:.2f} x)."
                         + (" The bundle's weights are already channels-last, but SliceInferer hands the network "
                            "contiguous slice batches: convert each input batch to channels-last too (e.g. a small "
                            "wrapper module), or call the network on stacked slices."
                            if net.get("bundle_memory_format") == "channels_last" and "channels_last" in best else ""))

    if "postprocess" in data:
        post = data["postprocess"]
        secs = post["seconds"]
        out += ["## Post-processing pieces (evidence for speed-ups)", "",
                f"On the bundle's own prediction for the {post['slices']}-slice series (label map "
                f"{post['label_shape']}), each step timed {post['repeats']} times. The indented pieces call "
                "the clean-up's private helpers on the whole volume; `clean_up_labels` itself may crop first, so "
                "they need not add up to it.", "",
                "| step | seconds (median) |", "|---|---|"]
        out += [f"| {name.strip()} | {v['median']:.3f} |" for name, v in secs.items()]
        out.append("")
        full, coarse = secs["clean_up (512 grid)"]["median"], secs["clean_up (256 grid)"]["median"]
        pieces = {k.strip(): v["median"] for k, v in secs.items() if k.startswith("  ")}
        text = (f"Clean-up: {full:.2f} s on the 512 grid vs {coarse:.2f} s on the 256 grid "
                f"({coarse / full:.2f} x); cleaning at the network's resolution would save that much, at the "
                "cost of results that differ near boundaries.")
        if pieces:
            top = max(pieces, key=pieces.get)
            text += f" Slowest helper on the whole volume: {top} ({pieces[top]:.2f} s)."
        ideas.append(text)

    if "receive" in data:
        rec = data["receive"]
        r = rec["ratio_node_to_pynetdicom"]
        ips = rec["images_per_s"]
        out += ["## 3. Receive throughput", "",
                f"{rec['series']['instances']} images ({rec['series']['rows']} x {rec['series']['cols']}, "
                f"{rec['series']['bytes'] / 1e6:.1f} MB) sent with {rec['sender']} to SCPs running side by "
                f"side, in rotation, {rec['repeats']} measured sends each after {rec['warmup']} warm-up. "
                "Images/s = images / storescu wall time. The target row is the node with a stand-in processor "
                "(its worker does next to nothing); the node with the bundle, whose worker decodes and preprocesses "
                "the series on the same two cores while it arrives (at a lower CPU priority, `--worker-nice`), "
                "is shown beside it.", "",
                "![receive throughput](bench_receive.png)", "",
                "| SCP | images/s (median) | seconds (median) |", "|---|---|---|",
                f"| node (store + fsync before the ack) | {ips['node']['median']:.1f} | {rec['seconds']['node']['median']:.3f} |",
                *([f"| node with the bundle (decoding and preprocessing while receiving) | {ips['node_bundle']['median']:.1f} | "
                   f"{rec['seconds']['node_bundle']['median']:.3f} |"] if "node_bundle" in ips else []),
                f"| pynetdicom `storescp --ignore` | {ips['pynetdicom']['median']:.1f} | {rec['seconds']['pynetdicom']['median']:.3f} |",
                f"| DCMTK `storescp` (TCP_NODELAY=1) | {ips['dcmtk']['median']:.1f} | {rec['seconds']['dcmtk']['median']:.3f} |",
                "",
                f"- node / pynetdicom --ignore = **{r:.2f}**; target >= 0.9: "
                f"{_verdict(rec['met']['ratio'], r, 0.9, ' x', higher_is_better=True)}",
                f"- node / DCMTK storescp = {rec['ratio_node_to_dcmtk']:.2f}", ""]
        if "per_instance_ms" in rec:
            c = rec["per_instance_ms"]
            out += ["Pieces of the node's store path timed per instance in one process (median ms): " +
                    ", ".join(f"{k} {v:.2f}" for k, v in c.items()) +
                    f". At {ips['pynetdicom']['median']:.0f} images/s the budget per image is "
                    f"{1000 / ips['pynetdicom']['median']:.1f} ms.", ""]
        if not rec["met"]["ratio"]:
            text = (f"Receive: the node accepts {ips['node']['median']:.0f} images/s vs "
                    f"{ips['pynetdicom']['median']:.0f} for pynetdicom --ignore "
                    f"({1000 / ips['node']['median']:.1f} vs {1000 / ips['pynetdicom']['median']:.1f} ms per image).")
            c = rec.get("per_instance_ms")
            if c:
                text += (f" Measured pieces: durable write {c['write_fsync']:.2f} ms (plain write {c['write']:.2f}), "
                         f"header parse {c['decode_header']:.2f} ms (full decode {c['decode']:.2f}).")
                if "durable" in c:
                    allowed = 1000 / (0.9 * ips["pynetdicom"]["median"]) - 1000 / ips["pynetdicom"]["median"]
                    text += (f" The target leaves the node {allowed:.2f} ms per image on top of pynetdicom's own "
                             f"receive; the durable part alone (fsync of the received file, rename into its job, "
                             f"fsync of the job's folder) costs {c['durable']:.2f} ms here, so the target cannot "
                             "be met on this disk while every instance is synced before its acknowledgement.")
            text += (" The node writes the received bytes as they are and parses only the header, on a helper "
                     "thread while the handler fsyncs the file. It receives each instance straight into a file "
                     "(pynetdicom's chunked receive), so that no instance is held in memory; pynetdicom then "
                     "writes the file meta and every fragment in its reading thread, about 1 ms per image more "
                     "than into memory. The per-instance fsync of the file and of its folder stays: an "
                     "acknowledged instance must survive a crash.")
            ideas.append(text)

    if "training" in data:
        tr = data["training"]
        r = tr["ratio_pipeline_to_materialised"]
        out += ["## 4. Training efficiency", "",
                f"The bundle's `train#dataloader` (CacheDataset over the train transforms, batch {tr['batch_size']}, "
                f"{tr['num_workers']} workers) on {tr['data']['patients']} phantom patients at "
                f"{tr['data']['size']} x {tr['data']['size']} ({tr['data']['train_slices']} training slices, resized to "
                f"{tr['data']['spatial_size']}), with the bundle's network, loss and optimizer; "
                f"{tr['steps_per_run']} steps per run, {tr['repeats']} runs per mode, interleaved, the order of the "
                "modes rotating from run to run. The target figure is the median over runs of each run's pipeline "
                "time divided by its materialised time (paired, so that the machine's drift cancels). Cache build "
                f"{tr['cache_build_s']:.1f} s (once).", "",
                "![training step](bench_training.png)", "",
                "| mode | s/step (median) | slices/s |", "|---|---|---|",
                f"| DataLoader, fresh iterator per run (as per epoch) | {_s(tr['step_s']['pipeline'])} | {tr['slices_per_s']['pipeline']} |",
                f"| DataLoader, steady state (first step excluded) | {_s(tr['step_s']['pipeline_steady'])} | {tr['slices_per_s']['pipeline_steady']} |",
                f"| batches already in memory | {_s(tr['step_s']['materialised'])} | {tr['slices_per_s']['materialised']} |",
                f"| (evidence) same dataset, DataLoader num_workers=0 | {_s(tr['step_s']['pipeline_workers0'])} | "
                f"{tr['slices_per_s']['pipeline_workers0']} |",
                "",
                f"- pipeline / materialised = **{r:.2f}** (median of the paired ratios "
                f"{', '.join(f'{x:.2f}' for x in tr.get('ratios_per_repeat', []))}; ratio of the medians "
                f"{tr.get('ratio_of_medians', r):.2f}; steady state {tr['ratio_steady_to_materialised']:.2f}); "
                f"target <= 1.1: {_verdict(tr['met']['ratio'], r, 1.1, ' x')}"]
        if tr.get("ratio_projected_bundle_epoch"):
            out.append(f"- Projected to one epoch of the bundle's own data ({tr['bundle_epoch_steps']} steps: the first "
                       f"step, {tr['first_step_s']:.2f} s with worker start-up, once, then the steady state): "
                       f"**{tr['ratio_projected_bundle_epoch']:.2f}**")
        out.append("")
        if not tr["met"]["ratio"]:
            ideas.append(f"Training: the data pipeline costs {r:.2f} x the in-memory step with "
                         f"{tr['num_workers']} workers on {machine['cpu_affinity']} cores; loading in the main process "
                         f"(num_workers=0) measured {tr['ratio_workers0_to_materialised']:.2f} x: worker processes "
                         "compete with the step's threads for the cores. Set num_workers from the core count "
                         "(0 on a 2-core CPU box), `persistent_workers=True` to avoid the worker start "
                         f"({tr['first_step_s']:.2f} s first step) every epoch.")

    if "memory" in data:
        mem = data["memory"]
        w, s = mem["worker"], mem["scp"]
        out += ["## 5. Memory", "",
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

    out += _gpu_section(data.get("gpu"))

    if "rtstruct" in data:
        rt = data["rtstruct"]
        out += ["## RTSTRUCT writer (bench_rtstruct.py)", "",
                f"{rt['shape']} label map, {rt['contours']} contours, {rt['points']} points, "
                f"{rt['file_bytes'] / 1e6:.1f} MB; medians of {rt['repeats']}: write {rt['write_s_median']:.3f} s, "
                f"write + save {rt['write_and_save_s_median']:.3f} s, read back {rt['read_s_median']:.3f} s "
                f"(round trip exact: {rt['round_trip_exact']}).", ""]

    if "real_ct" in data:
        out += real_ct_check.render_section(data["real_ct"])
        idea = real_ct_check.failure_summary(data["real_ct"])
        if idea:
            ideas.append(idea)

    if "quality" in data:
        out += bench_quality.render_section(data["quality"])
        idea = bench_quality.failure_summary(data["quality"])
        if idea:
            ideas.append(idea)

    out += ["## What could help", ""]
    out += [f"- {idea}" for idea in ideas] or ["- All targets met in this run."]
    out += ["", "## Reproduce", "", "```", "make bench                         # = .venv/bin/python -m benchmarks.run_all",
            ".venv/bin/python -m benchmarks.run_all --quick   # smoke run", "```", ""]
    for name, r in data.items():
        where = "; on a CUDA machine, not part of make bench" if name == "gpu" else ""
        out.append(f"- `{r.get('command', name)}` ({r.get('wall_s', '?')} s{where})")
    out.append("")
    return "\n".join(out)


def _gpu_section(gpu: dict[str, Any] | None) -> list[str]:
    """Section 6 from ``docs/gpu.json`` (written on a CUDA machine by bench_gpu; make bench does not run it)."""
    out = ["## 6. GPU", ""]
    if gpu is None:
        return out + ["Not measured yet: this needs a CUDA GPU, which the machine running `make bench` lacks. On one, "
                      f"`python -m benchmarks.bench_gpu --out {GPU_RESULT.relative_to(REPO_ROOT)}`, then "
                      "`python -m benchmarks.run_all --report-only`.", ""]
    dev = gpu["device"]
    name = dev.get("gpu_name", dev["device"])
    peak = gpu["peak_tflops"]
    out += [f"Measured on **{name}**" + (f" ({dev['gpu_memory_gib']} GiB, CUDA {dev['cuda']})" if "cuda" in dev else "")
            + f", torch {dev['torch']}, MONAI {dev['monai']}, {dev['date']}"
            + (" (**smoke run**: its figures mean nothing)" if gpu.get("quick") else "")
            + f"; command `{gpu.get('command', 'python -m benchmarks.bench_gpu')}`. Not rerun by `make bench`.", "",
            "Training steps of the bundle's network, loss and Adam on phantom batches already on the GPU "
            "(FLOPs per step counted by `torch.utils.flop_counter`). Peak: data sheet, dense bf16 "
            f"{peak['data_sheet_dense_bf16'] or 'unknown'} TFLOP/s; a bf16 matrix product here "
            f"{peak['measured_bf16_matmul'] or 'not measured'} TFLOP/s.", "",
            "| batch | precision | slices/s | TFLOP/s | share of data-sheet peak | share of measured matmul |",
            "|---|---|---|---|---|---|"]
    def share(x: float | None) -> str:
        return f"{100 * x:.1f} %" if x is not None else "-"

    for r in gpu["training"]["rows"]:
        out.append(f"| {r['batch_size']} | {r['precision']} | {r['slices_per_s']:.1f} | {r['achieved_tflops']:.2f} | "
                   f"{share(r['share_of_sheet_peak'])} | {share(r['share_of_matmul_peak'])} |")
    pipe = gpu["training_pipeline"]
    inf = gpu["inference"]
    stages = inf["stages_s"]
    net = inf["network_only_s"]
    out += ["", f"With the bundle's data pipeline (`train#dataloader`, {pipe['num_workers']} workers, batch "
            f"{pipe['batch_size']}, {pipe['precision']}): **{pipe['slices_per_s']:.1f} slices/s**.", "",
            f"Inference on a {inf['series']['slices']}-slice {inf['series']['rows']} x {inf['series']['cols']} phantom "
            f"series (median of {inf['repeats']} after a warm-up): **{stages['total']['median']:.2f} s** from the "
            "files to the RTSTRUCT written (" + ", ".join(f"{k} {v['median']:.3f} s" for k, v in stages.items()
                                                            if k != "total") + ").",
            f"The network alone: fp32 {net['fp32']['median']:.3f} s, bf16 autocast {net['bf16']['median']:.3f} s "
            f"({100 * inf['bf16_label_mismatch_fraction']:.3f} % of voxels labelled differently).", ""]
    return out


def main(args: list[str] | None = None) -> int:
    """Command line; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: fewer repetitions")
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), help="run only these (others' JSON is kept)")
    parser.add_argument("--report-only", action="store_true", help="only rebuild the report and charts")
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="JSON folder (default benchmarks/results)")
    parser.add_argument("--docs", type=Path, default=DOCS, help="report folder (default docs)")
    opts = parser.parse_args(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    opts.results.mkdir(parents=True, exist_ok=True)
    failures = []
    if not opts.report_only:
        for name in opts.only or list(BENCHMARKS):
            logger.info("running %s%s", name, " (quick)" if opts.quick else "")
            try:
                run_benchmark(name, opts.quick, opts.results, docs=opts.docs)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                logger.error("%s failed: %s", name, exc)
                failures.append(name)
    data = _load(opts.results)
    if GPU_RESULT.is_file():
        data["gpu"] = json.loads(GPU_RESULT.read_text())
    if not data:
        logger.error("No results in %s", opts.results)
        return 1
    machine = next((r["machine"] for r in data.values() if isinstance(r.get("machine"), dict)), None) or machine_info()
    command = "python -m benchmarks.run_all" + (" --quick" if any(r.get("quick") for r in data.values()) else "")
    opts.docs.mkdir(parents=True, exist_ok=True)
    render_charts(data, opts.docs)
    (opts.docs / "benchmarks.md").write_text(render_report(data, machine, command))
    logger.info("wrote %s", opts.docs / "benchmarks.md")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
