"""Soak check: many series over concurrent associations; every result once, no job lost, the SCP's memory flat.

``--series`` series (default 20) of ``--slices`` CT images (default 100, 512 x 512; each series a copy of the
benchmark phantom with its own study, series, frame of reference and SOP instance UIDs) are sent by
``--associations`` DCMTK ``storescu`` processes in parallel (default 4), each over one association carrying
its share of the series one after the other (5 series each by default), to the node, ``scripts/serve_scp.py``,
whose results go to a destination receiver (DCMTK ``storescp`` with unique file names, so a result sent twice
shows as two files). The node runs with a **stand-in processor**,
:class:`~vacseg_monai.testing.processors.StandInStructureSetProcessor`: the real series reader and RTSTRUCT
writer, a Body outline by an HU threshold instead of the network, so that the check is about the node
(receive, queue, worker, export), not the model's speed.

Checks:

- every result arrives exactly once: the RTSTRUCTs at the receiver, counted per series they reference,
  are one per series sent and none else;
- no job is lost: as many jobs as series, all ``done``;
- the SCP's memory stays flat: its RSS (``/proc/<pid>/status``, sampled every 0.25 s) grows by at most
  20 MiB from the moment the first job is done to the end;
- throughput: series per minute, from the first send to the last result at the receiver.

    .venv/bin/python -m benchmarks.bench_soak [--series 20] [--slices 100] [--associations 4] [--out FILE]
    .venv/bin/python -m benchmarks.bench_soak --series 4 --slices 20 --size 128    # small run
"""

from __future__ import annotations

import collections
import logging
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.common import (
    add_series_options,
    bench_node,
    bench_parser,
    machine_info,
    phantom_series,
    proc_status_kb,
    run_cli,
    table,
    verdict,
    work_root,
)
from vacseg_monai.testing.peers import StoreSCP, storescu_store_all, wait_until

__all__ = ["copy_series", "main", "report_ideas", "report_section", "results_per_series", "run"]

logger = logging.getLogger(__name__)

PROCESSOR = "vacseg_monai.testing.processors:StandInStructureSetProcessor"
#: Most growth of the SCP's RSS allowed from after the first series to the end (MiB).
RSS_GROWTH_MAX_MIB = 20.0
#: Seconds between RSS samples.
SAMPLE_S = 0.25


def copy_series(files: list[Path], n_series: int, folder: Path) -> dict[str, list[Path]]:
    """``n_series`` copies of the series ``files``, each with new study, series, frame and instance UIDs.

    Returns:
        The files of each copy, by its SeriesInstanceUID.
    """
    from pydicom import dcmread
    from pydicom.uid import generate_uid

    copies: dict[str, list[Path]] = {}
    for k in range(n_series):
        study, series, frame = generate_uid(), generate_uid(), generate_uid()
        out = folder / f"series_{k:03d}"
        out.mkdir(parents=True)
        written = []
        for i, path in enumerate(files):
            ds = dcmread(path)
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.save_as(out / f"{i:04d}.dcm", enforce_file_format=True)
            written.append(out / f"{i:04d}.dcm")
        copies[series] = written
    return copies


def results_per_series(files: list[Path]) -> collections.Counter[str]:
    """How many RTSTRUCTs reference each series, from the files a receiver got (other objects are not counted)."""
    from pydicom import dcmread

    counts: collections.Counter[str] = collections.Counter()
    for path in files:
        ds = dcmread(path, stop_before_pixels=True)
        if ds.get("Modality") != "RTSTRUCT":
            continue
        for frame in ds.get("ReferencedFrameOfReferenceSequence", []):
            for study in frame.get("RTReferencedStudySequence", []):
                for series in study.get("RTReferencedSeriesSequence", []):
                    counts[str(series.SeriesInstanceUID)] += 1
    return counts


class _RssSampler:
    """Samples a process's RSS (MiB) and the node's finished jobs every :data:`SAMPLE_S` s on a thread."""

    def __init__(self, pid: int, node_dir: Path) -> None:
        from vacseg_monai.service.jobs import JobStore

        self.pid = pid
        self.store = JobStore(node_dir)
        self.samples: list[tuple[float, float, int]] = []  # (seconds, RSS MiB, jobs done)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        start = time.monotonic()
        while not self._stop.wait(SAMPLE_S):
            kb = proc_status_kb(self.pid)
            if kb is None:
                return
            done = sum(job.state.value == "done" for job in self.store.jobs())
            self.samples.append((time.monotonic() - start, kb / 1024, done))

    def __enter__(self) -> _RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def summary(self) -> dict[str, Any]:
        """RSS after the first job was done, at the end, its peak and its growth (MiB)."""
        after_first = [rss for _, rss, done in self.samples if done >= 1]
        if not after_first:
            raise RuntimeError(f"No RSS sample of process {self.pid} after the first job was done.")
        return {"after_first_series_mib": round(after_first[0], 1), "end_mib": round(after_first[-1], 1),
                "peak_mib": round(max(rss for _, rss, _ in self.samples), 1),
                "growth_mib": round(after_first[-1] - after_first[0], 1), "samples": len(self.samples)}


def _send_all(copies: dict[str, list[Path]], port: int, aec: str, associations: int) -> None:
    """``associations`` storescu processes in parallel, each sending its share of the series over one association.

    Raises:
        RuntimeError: if any C-STORE did not succeed (from :func:`storescu_store_all`).
    """
    series = list(copies.values())
    shares = [[path for files in series[i::associations] for path in files] for i in range(associations)]

    def sender(k: int) -> None:
        if shares[k]:
            storescu_store_all(port, shares[k], aet=f"SOAK{k}", aec=aec, timeout=1800)

    with ThreadPoolExecutor(max_workers=associations, thread_name_prefix="soak-sender") as pool:
        for future in [pool.submit(sender, k) for k in range(associations)]:
            future.result()


def _job_states(node_dir: Path) -> collections.Counter[str]:
    from vacseg_monai.service.jobs import JobStore

    return collections.Counter(job.state.value for job in JobStore(node_dir).jobs())


def run(series: int = 20, slices: int = 100, size: int = 512, associations: int = 4) -> dict[str, Any]:
    """Measure; see the module docstring. Returns the result dictionary."""
    if series < 1 or associations < 1:
        raise ValueError(f"`series` and `associations` must be >= 1, got {series} and {associations}.")
    base = phantom_series(slices, size=size)
    with tempfile.TemporaryDirectory(dir=work_root()) as tmp:
        tmp = Path(tmp)
        copies = copy_series(base, series, tmp / "sent")
        dest = StoreSCP(tmp / "received", aet="SOAKDEST", options=("+uf",))
        node = bench_node(tmp / "node", "--processor", PROCESSOR, "--destination", f"127.0.0.1:{dest.port}:SOAKDEST")
        try:
            dest.start()
            node.start()
            with _RssSampler(node.proc.pid, tmp / "node") as sampler:
                start = time.perf_counter()
                _send_all(copies, node.port, node.ae_title, associations)
                sent_s = time.perf_counter() - start
                wait_until(lambda: sum(_job_states(tmp / "node")[s] for s in ("done", "failed")) >= series
                           and len(dest.files()) >= series, 120 + 15 * series, f"{series} jobs and their results")
                elapsed = time.perf_counter() - start
                taken = len(sampler.samples)
                wait_until(lambda: len(sampler.samples) > taken, 10, "an RSS sample after the last result")
            counts = results_per_series(dest.files())
            states = _job_states(tmp / "node")
            n_files = len(dest.files())
        finally:
            node.stop()
            dest.stop()
    rss = sampler.summary()
    missing = [uid for uid in copies if counts[uid] == 0]
    repeated = {uid: n for uid, n in counts.items() if n > 1}
    foreign = [uid for uid in counts if uid not in copies]
    exactly_once = not missing and not repeated and not foreign and n_files == series
    none_lost = sum(states.values()) == series and states.get("done", 0) == series
    return {
        "benchmark": "soak",
        "processor": f"stand-in: {PROCESSOR} (series reader and RTSTRUCT writer, HU threshold instead of the network)",
        "series": series, "slices": slices, "rows": size, "cols": size, "associations": associations,
        "sender": "DCMTK storescu processes in parallel, TCP_NODELAY=1, each one association carrying its share of "
                  "the series",
        "seconds": round(elapsed, 2), "send_seconds": round(sent_s, 2),
        "series_per_min": round(series / elapsed * 60, 2),
        "images_per_s": round(series * slices / sent_s, 1),
        "results": {"files": n_files, "missing": len(missing), "repeated": len(repeated), "foreign": len(foreign)},
        "jobs": dict(states),
        "rss": rss,
        "targets": {"rss_growth_max_mib": RSS_GROWTH_MAX_MIB},
        "met": {"exactly_once": exactly_once, "none_lost": none_lost,
                "rss_flat": rss["growth_mib"] <= RSS_GROWTH_MAX_MIB},
        "machine": machine_info(),
    }


def summary(result: dict[str, Any]) -> str:
    """The human-readable table."""
    r = result
    rows = [["series x slices", f"{r['series']} x {r['slices']} ({r['rows']} x {r['cols']})"],
            ["concurrent associations", r["associations"]],
            ["series per minute", r["series_per_min"]],
            ["results exactly once", r["met"]["exactly_once"]],
            ["jobs", ", ".join(f"{k} {v}" for k, v in sorted(r["jobs"].items()))],
            ["SCP RSS growth (MiB)", r["rss"]["growth_mib"]]]
    return table(rows, ["soak", "value"])


def report_section(result: dict[str, Any]) -> list[str]:
    """The soak section of docs/benchmarks.md."""
    r = result
    res, rss = r["results"], r["rss"]
    growth = verdict(r["met"]["rss_flat"], rss["growth_mib"], r["targets"]["rss_growth_max_mib"], " MiB")
    return [
        "## Soak (bench_soak.py)", "",
        f"{r['series']} series of {r['slices']} images ({r['rows']} x {r['cols']}) sent over {r['associations']} "
        f"concurrent associations ({r['sender']}) to the node, whose results go to a DCMTK storescp. "
        f"The node runs a {r['processor']}.", "",
        "| check | result |", "|---|---|",
        f"| every result exactly once (RTSTRUCTs per referenced series at the receiver) | "
        f"{'**yes**' if r['met']['exactly_once'] else '**no**'}: {res['files']} files, {res['missing']} series "
        f"without a result, {res['repeated']} with more than one, {res['foreign']} unknown |",
        f"| no job lost | {'**yes**' if r['met']['none_lost'] else '**no**'}: "
        f"{', '.join(f'{k} {v}' for k, v in sorted(r['jobs'].items()))} |",
        f"| SCP RSS after the first series -> end (peak) | {rss['after_first_series_mib']:.1f} -> "
        f"{rss['end_mib']:.1f} MiB ({rss['peak_mib']:.1f}); growth {growth} |",
        f"| throughput | **{r['series_per_min']:.1f} series/min** ({r['seconds']:.1f} s in all; the sends took "
        f"{r['send_seconds']:.1f} s, {r['images_per_s']:.0f} images/s) |", "",
    ]


def report_ideas(result: dict[str, Any], machine: dict[str, Any]) -> list[str]:
    """Its lines of "What could help" (``machine``: the report's machine)."""
    ideas = []
    if not result["met"]["rss_flat"]:
        ideas.append(f"Soak: the SCP's RSS grew by {result['rss']['growth_mib']:.1f} MiB over "
                     f"{result['series']} series; look for state kept per series or per association.")
    if not (result["met"]["exactly_once"] and result["met"]["none_lost"]):
        ideas.append(f"Soak: results {result['results']}, jobs {result['jobs']}: a series lost or answered twice.")
    return ideas


def main(args: list[str] | None = None) -> dict[str, Any]:
    """Command line; see the module docstring."""
    parser = bench_parser(__doc__)
    parser.add_argument("--series", type=int, default=20, help="series to send (default 20)")
    parser.add_argument("--associations", type=int, default=4, help="senders in parallel (default 4)")
    add_series_options(parser, slices_help="images per series")
    return run_cli(parser, args, lambda opts: run(opts.series, opts.slices, opts.size, opts.associations), summary)


if __name__ == "__main__":
    main()
