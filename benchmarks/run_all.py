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
from types import ModuleType
from typing import Any

from benchmarks import (
    bench_edits,
    bench_gpu,
    bench_latency,
    bench_memory,
    bench_network,
    bench_postprocess,
    bench_quality,
    bench_receive,
    bench_rtstruct,
    bench_soak,
    bench_training,
    real_ct_check,
)
from benchmarks.bench_gpu import GPU_RESULT
from benchmarks.common import PYTHON, REPO_ROOT, RESULTS_DIR, machine_info

__all__ = ["BENCHMARKS", "CHARTS", "REPORT_SECTIONS", "main", "render_charts", "render_report", "run_benchmark"]

logger = logging.getLogger(__name__)

DOCS = REPO_ROOT / "docs"

# name -> (module, full arguments, quick arguments); run in this order (lightest on shared state first).
BENCHMARKS: dict[str, tuple[str, list[str], list[str]]] = {
    "receive": ("benchmarks.bench_receive", ["--repeats", "5"], ["--repeats", "2"]),
    "receive_dashboard": ("benchmarks.bench_receive", ["--dashboard", "--repeats", "5"],
                          ["--dashboard", "--repeats", "2"]),
    "latency": ("benchmarks.bench_latency", ["--repeats", "3"], ["--repeats", "1"]),
    "network": ("benchmarks.bench_network", ["--repeats", "5"], ["--repeats", "1"]),
    "postprocess": ("benchmarks.bench_postprocess", ["--repeats", "5"], ["--repeats", "1"]),
    "training": ("benchmarks.bench_training", ["--repeats", "5", "--steps", "10"], ["--repeats", "2", "--steps", "4"]),
    "memory": ("benchmarks.bench_memory", [], ["--slices", "100", "--instances", "200", "--large-size", "2048"]),
    "rtstruct": ("benchmarks.bench_rtstruct", ["--repeats", "5"], ["--repeats", "1"]),
    "real_ct": ("benchmarks.real_ct_check", [], []),
    "quality": ("benchmarks.bench_quality", [], ["--phantoms", "1", "--max-slices", "32"]),
    "edits": ("benchmarks.bench_edits", ["--repeats", "3"], ["--repeats", "1"]),
    "soak": ("benchmarks.bench_soak", [], ["--series", "4", "--slices", "20", "--size", "128"]),
}


#: The report's sections in their order: (result name, the module whose ``report_section(result)`` writes it and
#: whose ``report_ideas(result, machine)`` adds to "What could help").
REPORT_SECTIONS: tuple[tuple[str, ModuleType], ...] = (
    ("latency", bench_latency),
    ("network", bench_network),
    ("postprocess", bench_postprocess),
    ("receive", bench_receive),
    ("receive_dashboard", bench_receive),
    ("soak", bench_soak),
    ("training", bench_training),
    ("memory", bench_memory),
    ("gpu", bench_gpu),
    ("rtstruct", bench_rtstruct),
    ("real_ct", real_ct_check),
    ("quality", bench_quality),
    ("edits", bench_edits),
)
#: The charts: (result name, the module whose ``report_chart(result, docs)`` draws it into ``docs``).
CHARTS: tuple[tuple[str, ModuleType], ...] = (
    ("latency", bench_latency),
    ("receive", bench_receive),
    ("training", bench_training),
    ("memory", bench_memory),
    ("network", bench_network),
)

def run_benchmark(name: str, quick: bool, results: Path, timeout: float = 1200.0, docs: Path = DOCS) -> dict[str, Any]:
    """Run one benchmark module as ``python -m``; return its JSON (also written to ``results/<name>.json``).

    The real CT check writes its pictures, the quality benchmark its ROC plot and the edit benchmark its picture
    into ``docs`` (default ``docs/``), beside the report.

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
    if name == "edits":
        cmd += ["--picture", str(docs / "correction_example.png")]
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
    """Write the PNG charts of the benchmarks present in ``data`` (each module's ``report_chart``); their paths."""
    return [module.report_chart(data[name], docs) for name, module in CHARTS if name in data]


# ---------------------------------------------------------------- report


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
    for name, module in REPORT_SECTIONS:
        result = data.get(name)
        if result is None and name != "gpu":  # the GPU section says how to measure it
            continue
        out += module.report_section(result)
        if result is not None:
            ideas += module.report_ideas(result, machine)
    out += ["## What could help", ""]
    out += [f"- {idea}" for idea in ideas] or ["- All targets met in this run."]
    out += ["", "## Reproduce", "", "```", "make bench                         # = .venv/bin/python -m benchmarks.run_all",
            ".venv/bin/python -m benchmarks.run_all --quick   # smoke run", "```", ""]
    for name, r in data.items():
        where = "; on a CUDA machine, not part of make bench" if name == "gpu" else ""
        out.append(f"- `{r.get('command', name)}` ({r.get('wall_s', '?')} s{where})")
    out.append("")
    return "\n".join(out)


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
