"""Receive throughput: images/s the node accepts (store + fsync before the ack) vs Orthanc and plain Storage SCPs.

The same phantom series (``--slices`` images of 512 x 512) is sent with DCMTK
``storescu`` (TCP_NODELAY=1, one association) to five SCPs running as
processes at the same time, in rotation (forward, then backward), ``--repeats`` times each:

- the node (``scripts/serve_scp.py``; stand-in processor, so the worker's
  reading of the finished series is quick; each send waits until that job is done);
- Orthanc (Debian's 1.10, :class:`~vacseg_monai.testing.orthanc.OrthancProcess`), the durable peer:
  ``SyncStorageArea`` true, its default (an fsync per stored file), plus its SQLite index;
- the node as deployed, with the shipped bundle (its worker decodes and preprocesses the series
  while it arrives, on the same cores; each send waits until the RTSTRUCT is written);
- ``python -m pynetdicom storescp PORT --ignore`` (decodes nothing, stores nothing);
- DCMTK ``storescp +xa -od DIR`` (TCP_NODELAY=1; writes files, no fsync).

Throughput is images / storescu wall time (process start to exit). Targets: node >= 1.0 x Orthanc
(durable against durable, median of the rotations) and node >= 0.9 x pynetdicom ``--ignore``.
Without Orthanc installed its row and target are left out.

    .venv/bin/python -m benchmarks.bench_receive [--repeats 5] [--slices 100] [--out FILE]

``--dashboard`` measures instead the node without and with its dashboard (``--http-port``, ``/api/jobs``
fetched once a second throughout), in rotation: target <= 5 % fewer images/s with it.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import (
    BENCH_AET,
    add_series_options,
    bench_node,
    bench_parser,
    chart_pyplot,
    machine_info,
    phantom_series,
    run_cli,
    save_chart,
    stats,
    table,
    verdict,
    work_root,
)
from vacseg_monai.testing.orthanc import OrthancProcess, orthanc_available
from vacseg_monai.testing.peers import PynetdicomSCP, StoreSCP, free_port, storescu_send, wait_until

__all__ = ["main", "report_chart", "report_ideas", "report_section", "run", "run_dashboard", "send_order"]

logger = logging.getLogger(__name__)

PEERS = ("node", "orthanc", "node_bundle", "pynetdicom", "dcmtk")
#: Least node / Orthanc images/s ratio (durable receive against durable receive).
ORTHANC_RATIO_MIN = 1.0

#: What was measured on the node's durable path (shared 2-core machine, 512 x 512 CT instances of about
#: 0.5 MB), kept with the report: the one change kept, and the ideas that did not help and why.
DURABLE_PATH_NOTES = (
    "Ideas measured on the durable path (2-core machine shared with other work, 512 x 512 instances of 0.5 MB). "
    "Kept: the node's side of each association polls for the next PDU every 0.2 ms instead of pynetdicom's 1 ms "
    "(each C-STORE waits on that poll a few times): 100 images over one association 1.85 -> 1.43 s, median of 7 "
    "rotations in one run, Orthanc 1.81 s in the same run (node / Orthanc 0.98 -> 1.27); it costs about 6 % "
    "of a core more while an association is open and idle. Not kept: `fdatasync` instead of `fsync` "
    "(write, sync, rename, folder sync: 1.24 vs 1.24 ms per instance, 150 interleaved each; a new file's size "
    "must be journalled either way); a group-commit thread (4 writers, 40 instances each: 6.42 ms per instance "
    "against 1.48 with each writer syncing its own, since one thread serialises syncs the kernel otherwise "
    "overlaps, and one association has a single instance in flight, so there is nothing to batch); writing "
    "the final file directly instead of rename (1.13 vs 1.24 ms, but pynetdicom's chunked receive owns the "
    "file it writes, so it would mean receiving into memory and giving up the bound on memory per instance). "
    "The chunked receive does not write twice: pynetdicom writes each fragment once into `incoming/` and the "
    "node renames that file into its job.")
STAND_IN = "vacseg_monai.testing.processors:StandInProcessor"


def send_order(names: Sequence[str], i: int) -> list[str]:
    """The order of the sends in rotation ``i``: forward, then backward, in turn. In a fixed order each SCP is
    measured right after the same neighbour, whose background work after its last acknowledgement (Orthanc
    writing its index, a node finishing its job) then always falls on it; alternating the direction gives every
    SCP the two neighbours and never puts the first one right after the last."""
    return list(names) if i % 2 == 0 else list(reversed(names))


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
    names = [name for name in PEERS if name != "orthanc" or orthanc_available()]
    seconds: dict[str, list[float]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory(dir=work_root()) as tmp:
        node_dir = Path(tmp) / "node"
        bundle_dir = Path(tmp) / "node_bundle"
        peers = {
            "node": bench_node(node_dir, "--processor", STAND_IN),
            "node_bundle": bench_node(bundle_dir),
            "pynetdicom": PynetdicomSCP(Path(tmp) / "pynetdicom.log", BENCH_AET),
            "dcmtk": StoreSCP(Path(tmp) / "dcmtk", aet=BENCH_AET),
        }
        if "orthanc" in names:
            peers["orthanc"] = OrthancProcess(Path(tmp) / "orthanc", aet=BENCH_AET, sync_storage=True)
        try:
            for peer in peers.values():
                peer.start()
            sent = {"node": 0, "node_bundle": 0}
            folders = {"node": node_dir, "node_bundle": bundle_dir}
            for i in range(warmup + repeats):
                for name in send_order(names, i):
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
                peer.stop()
    rates = {name: stats([len(files) / s for s in values], 2) for name, values in seconds.items()}
    ratio = rates["node"]["median"] / rates["pynetdicom"]["median"]
    result = {
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
    if "orthanc" in rates:
        result.update(_orthanc_ratios(seconds))
        result["targets"]["orthanc_ratio_min"] = ORTHANC_RATIO_MIN
        result["met"]["orthanc"] = result["ratio_node_to_orthanc"] >= ORTHANC_RATIO_MIN
    return result


def _orthanc_ratios(seconds: dict[str, list[float]]) -> dict[str, Any]:
    """Node / Orthanc: the ratio of the median images/s, and the ratio in each rotation (same series, same run)."""
    per_rotation = [o / n for n, o in zip(seconds["node"], seconds["orthanc"])]
    ratio = statistics.median(seconds["orthanc"]) / statistics.median(seconds["node"])
    return {
        "orthanc": {"version": "Debian 1.10", "SyncStorageArea": True},
        "ratio_node_to_orthanc": round(ratio, 3),
        "ratio_node_to_orthanc_per_rotation": [round(r, 3) for r in per_rotation],
    }


def summary(result: dict[str, Any]) -> str:
    """The human-readable table."""
    labels = {"node": "node (store+fsync)", "orthanc": "Orthanc (SyncStorageArea)",
              "node_bundle": "node with the bundle", "pynetdicom": "pynetdicom storescp --ignore",
              "dcmtk": "DCMTK storescp"}
    rows = [[labels[n], result["images_per_s"][n]["median"], result["seconds"][n]["median"],
             result["images_per_s"][n]["min"], result["images_per_s"][n]["max"]] for n in PEERS
            if n in result["images_per_s"]]
    text = table(rows, ["SCP", "images/s (median)", "seconds", "min images/s", "max images/s"])
    costs = ", ".join(f"{k} {v:.2f} ms" for k, v in result["per_instance_ms"].items())
    text += (f"\nper instance in one process: {costs}\n"
             f"node / pynetdicom --ignore = {result['ratio_node_to_pynetdicom']:.2f} (target >= 0.9)")
    if "ratio_node_to_orthanc" in result:
        text += f"\nnode / Orthanc = {result['ratio_node_to_orthanc']:.2f} (target >= {ORTHANC_RATIO_MIN:g})"
    return text


def report_chart(result: dict[str, Any], docs: Path) -> Path:
    """Images/s of each SCP, min-max bars, against the target: ``docs/bench_receive.png``; returns its path."""
    plt = chart_pyplot()
    rec = result
    names = [n for n in PEERS if n in rec["images_per_s"]]
    labels = {"node": "node\n(store+fsync)", "orthanc": "Orthanc\n(SyncStorageArea)",
              "node_bundle": "node with\nthe bundle",
              "pynetdicom": "pynetdicom storescp\n--ignore", "dcmtk": "DCMTK storescp"}
    labels = [labels[n] for n in names]
    med = [rec["images_per_s"][n]["median"] for n in names]
    lo = [m - rec["images_per_s"][n]["min"] for m, n in zip(med, names)]
    hi = [rec["images_per_s"][n]["max"] - m for m, n in zip(med, names)]
    fig, ax = plt.subplots(figsize=(8.5, 4))
    colours = {"node": "tab:blue", "orthanc": "tab:red", "node_bundle": "tab:purple", "pynetdicom": "tab:orange",
               "dcmtk": "tab:green"}
    ax.bar(labels, med, yerr=[lo, hi], capsize=4, color=[colours[n] for n in names])
    ax.axhline(0.9 * rec["images_per_s"]["pynetdicom"]["median"], color="red", ls="--", lw=1,
               label="target: 0.9 x pynetdicom --ignore")
    if "orthanc" in rec["images_per_s"]:
        ax.axhline(ORTHANC_RATIO_MIN * rec["images_per_s"]["orthanc"]["median"], color="darkred", ls=":", lw=1,
                   label=f"target: {ORTHANC_RATIO_MIN:g} x Orthanc")
    for x, m in enumerate(med):
        ax.text(x, m, f"{m:.0f}", ha="center", va="bottom")
    ax.set_ylabel("images/s (median, min-max bars)")
    ax.set_title(f"Receive throughput, {rec['series']['instances']} images of "
                 f"{rec['series']['rows']}x{rec['series']['cols']}, sender DCMTK storescu")
    ax.legend(fontsize=8)
    return save_chart(fig, docs / "bench_receive.png")


def report_section(result: dict[str, Any]) -> list[str]:
    """Section 3 of docs/benchmarks.md: the receive throughput (or, for a ``--dashboard`` run, its section)."""
    if result.get("benchmark") == "receive_dashboard":
        return _dashboard_section(result)
    rec = result
    r = rec["ratio_node_to_pynetdicom"]
    ips = rec["images_per_s"]
    out = ["## 3. Receive throughput", "",
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
           *([f"| Orthanc 1.10 (`SyncStorageArea` true: fsync per file, plus its SQLite index) | "
              f"{ips['orthanc']['median']:.1f} | {rec['seconds']['orthanc']['median']:.3f} |"]
             if "orthanc" in ips else []),
           *([f"| node with the bundle (decoding and preprocessing while receiving) | {ips['node_bundle']['median']:.1f} | "
              f"{rec['seconds']['node_bundle']['median']:.3f} |"] if "node_bundle" in ips else []),
           f"| pynetdicom `storescp --ignore` | {ips['pynetdicom']['median']:.1f} | {rec['seconds']['pynetdicom']['median']:.3f} |",
           f"| DCMTK `storescp` (TCP_NODELAY=1) | {ips['dcmtk']['median']:.1f} | {rec['seconds']['dcmtk']['median']:.3f} |",
           "",
           f"- node / pynetdicom --ignore = **{r:.2f}**; target >= 0.9: "
           f"{verdict(rec['met']['ratio'], r, 0.9, ' x', higher_is_better=True)}",
           f"- node / DCMTK storescp = {rec['ratio_node_to_dcmtk']:.2f}", ""]
    out[-1:-1] = _orthanc_lines(rec)
    if "ratio_node_to_orthanc" in rec:
        out += [DURABLE_PATH_NOTES, ""]
    if "per_instance_ms" in rec:
        c = rec["per_instance_ms"]
        out += ["Pieces of the node's store path timed per instance in one process (median ms): " +
                ", ".join(f"{k} {v:.2f}" for k, v in c.items()) +
                f". At {ips['pynetdicom']['median']:.0f} images/s the budget per image is "
                f"{1000 / ips['pynetdicom']['median']:.1f} ms.", ""]
    return out


def _orthanc_lines(rec: dict[str, Any]) -> list[str]:
    """The node-against-Orthanc verdict of the report (none when Orthanc was not measured)."""
    if "ratio_node_to_orthanc" not in rec:
        return ["- Orthanc was not measured (not installed; Debian: `apt-get install orthanc`)."]
    r = rec["ratio_node_to_orthanc"]
    rotations = ", ".join(f"{x:.2f}" for x in rec["ratio_node_to_orthanc_per_rotation"])
    return [f"- node / Orthanc (durable against durable, same series, same run) = **{r:.2f}**; target "
            f"node >= {ORTHANC_RATIO_MIN:g} x Orthanc: "
            f"{verdict(rec['met']['orthanc'], r, ORTHANC_RATIO_MIN, ' x', higher_is_better=True)}; "
            f"per rotation: {rotations}"]


def _dashboard_section(result: dict[str, Any]) -> list[str]:
    """The report's section of a ``--dashboard`` run: receive with and without the dashboard polled."""
    ips, polls, series = result["images_per_s"], result["dashboard_polls"], result["series"]
    slowdown = 100 * result["slowdown"]
    return ["## Receive with the dashboard on", "",
            f"The node (stand-in processor) without and with its dashboard (`--http-port`, `/api/jobs` fetched once "
            f"a second throughout), sent the same {series['instances']} images of {series['rows']} x "
            f"{series['cols']} in rotation, {result['repeats']} measured sends each after {result['warmup']} "
            "warm-up.", "",
            "| node | images/s (median) | seconds (median) |", "|---|---|---|",
            *[f"| {label} | {ips[name]['median']:.1f} | {result['seconds'][name]['median']:.3f} |"
              for name, label in (("node", "without the dashboard"), ("node_dashboard", "with the dashboard"))],
            "",
            f"- slowdown with the dashboard = **{slowdown:.1f} %**; target <= 5 %: "
            f"{verdict(result['met']['slowdown'], slowdown, 5, ' %')}; `/api/jobs` answered {polls['ok']} of "
            f"{polls['requests']} polls with 200.", ""]


def report_ideas(result: dict[str, Any], machine: dict[str, Any]) -> list[str]:
    """Its lines of "What could help" (``machine``: the report's machine)."""
    if result.get("benchmark") == "receive_dashboard":
        return [] if result["met"]["slowdown"] else [
            f"Dashboard: receive {100 * result['slowdown']:.1f} % slower with the page polled; cache /api/jobs "
            "between polls or answer it from the SCP's own counters."]
    ideas = []
    rec = result
    ips = rec["images_per_s"]
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
    if "orthanc" in rec["met"] and not rec["met"]["orthanc"]:
        ideas.append(f"Receive against Orthanc: node / Orthanc = {rec['ratio_node_to_orthanc']:.2f} (target "
                     f">= {ORTHANC_RATIO_MIN:g}). What is left per instance is pynetdicom's own: its association "
                     "reactor looks for a complete message every 1 ms (a fixed sleep, not a setting), and its "
                     "per-PDU Python work; the syncs themselves cost about 0.75 ms of the node's time per image "
                     "here. See section 3 for the ideas measured.")
    return ideas


def _poll(url: str, stop: threading.Event, answers: list[int], period: float = 1.0) -> None:
    """GET ``url`` every ``period`` seconds until ``stop``; append each HTTP status (0: no answer) to ``answers``."""
    import urllib.error
    import urllib.request

    while not stop.wait(period):
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                response.read()
                answers.append(response.status)
        except urllib.error.HTTPError as exc:
            answers.append(exc.code)
        except OSError:
            answers.append(0)


def run_dashboard(repeats: int = 5, slices: int = 100, size: int = 512, warmup: int = 1) -> dict[str, Any]:
    """The node (stand-in processor) without and with its dashboard (``--http-port``, ``/api/jobs`` polled once a
    second throughout), sent the same series in rotation; target: <= 5 % fewer images/s with the dashboard."""
    files = phantom_series(slices, size=size, seed=1000)
    names = ("node", "node_dashboard")
    seconds: dict[str, list[float]] = {name: [] for name in names}
    answers: list[int] = []
    stop = threading.Event()
    with tempfile.TemporaryDirectory(dir=work_root()) as tmp:
        folders = {name: Path(tmp) / name for name in names}
        http_port = free_port()
        peers = {"node": bench_node(folders["node"], "--processor", STAND_IN),
                 "node_dashboard": bench_node(folders["node_dashboard"], "--processor", STAND_IN,
                                              "--http-port", str(http_port))}
        poller = threading.Thread(target=_poll, args=(f"http://127.0.0.1:{http_port}/api/jobs", stop, answers),
                                  name="dashboard-poll", daemon=True)
        try:
            for peer in peers.values():
                peer.start()
            poller.start()
            for i in range(warmup + repeats):
                for name in send_order(names, i):
                    elapsed = storescu_send(files, peers[name].port, peers[name].ae_title)
                    wait_until(lambda: _jobs_finished(folders[name], i + 1), 180, "the node's job", 0.05)
                    if i >= warmup:
                        seconds[name].append(elapsed)
        finally:
            stop.set()
            poller.join(15)
            for peer in peers.values():
                peer.stop()
    rates = {name: stats([len(files) / s for s in values], 2) for name, values in seconds.items()}
    slowdown = 1.0 - rates["node_dashboard"]["median"] / rates["node"]["median"]
    return {
        "benchmark": "receive_dashboard",
        "series": {"slices": slices, "rows": size, "cols": size, "instances": len(files)},
        "repeats": repeats,
        "warmup": warmup,
        "seconds": {name: stats(values) for name, values in seconds.items()},
        "images_per_s": rates,
        "dashboard_polls": {"requests": len(answers), "ok": answers.count(200)},
        "slowdown": round(slowdown, 4),
        "targets": {"slowdown_max": 0.05},
        "met": {"slowdown": slowdown <= 0.05},
        "machine": machine_info(),
    }


def summary_dashboard(result: dict[str, Any]) -> str:
    """The human-readable lines of :func:`run_dashboard`."""
    ips = result["images_per_s"]
    rows = [[name, ips[name]["median"], result["seconds"][name]["median"], ips[name]["min"], ips[name]["max"]]
            for name in ("node", "node_dashboard")]
    text = table(rows, ["SCP", "images/s (median)", "seconds", "min images/s", "max images/s"])
    polls = result["dashboard_polls"]
    return (f"{text}\n/api/jobs polled {polls['requests']} times ({polls['ok']} answered 200)\n"
            f"slowdown with the dashboard = {100 * result['slowdown']:.1f} % (target <= 5 %)")


def main(args: list[str] | None = None) -> dict[str, Any]:
    """Command line; see the module docstring."""
    parser = bench_parser(__doc__)
    parser.add_argument("--repeats", type=int, default=5, help="measured sends per SCP (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured first sends per SCP (default 1)")
    parser.add_argument("--dashboard", action="store_true",
                        help="measure instead the node without and with its dashboard polled once a second")
    add_series_options(parser, slices_help="images in the series")
    return run_cli(parser, args,
                   lambda o: (run_dashboard if o.dashboard else run)(o.repeats, o.slices, o.size, o.warmup),
                   lambda r: (summary_dashboard if r["benchmark"] == "receive_dashboard" else summary)(r))


if __name__ == "__main__":
    main()
