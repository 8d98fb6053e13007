"""Training efficiency: step time with the bundle's data pipeline vs on batches already in memory.

The bundle's ``configs/train.json`` is parsed with MONAI's ConfigParser and its
own components are used: ``train#dataset`` (CacheDataset over the train
transforms), ``train#dataloader`` (batch 5, shuffled, its worker processes),
``network``, ``loss`` and ``optimizer``. The data are ``--patients`` phantom
patients generated at 512 x 512 (resized to 256 by the transforms), split with
``k_folds = patients`` so that all but one patient train.

Per run, ``--steps`` training steps (forward, loss, backward, optimizer step)
are timed twice, interleaved:

- pipeline: a fresh iterator over the DataLoader, as every epoch starts one
  (worker start-up included; the steady state without the first step is reported too);
- materialised: the same number of batches collected beforehand into a list of tensors.

The order of the modes rotates from one run to the next, and each run's pipeline
time is divided by the materialised time of the same run: the target figure is
the median of those paired ratios, so that the machine's drift over the
benchmark cancels (the ratio of the two medians is reported beside it).

Target: pipeline step time <= 1.1 x materialised. Slices/s = batch x steps / seconds.

    .venv/bin/python -m benchmarks.bench_training [--repeats 5] [--steps 10] [--out FILE]
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import (
    BENCH_PHANTOM_VERSION,
    CACHE_DIR,
    bench_parser,
    chart_pyplot,
    machine_info,
    run_cli,
    save_chart,
    seconds_cell,
    stats,
    table,
    verdict,
)

__all__ = ["main", "report_chart", "report_ideas", "report_section", "run", "train_parser"]

logger = logging.getLogger(__name__)


def _dataset(patients: int, size: int, seed: int = 2000) -> Path:
    """Phantom patients in the npy layout (cached)."""
    from vacseg_monai.datasets import MASK_DIR
    from vacseg_monai.phantom import generate_phantom, phantom_patient_id, write_npy_layout

    folder = CACHE_DIR / f"train_npy_v{BENCH_PHANTOM_VERSION}_{size}_s{seed}_n{patients}"
    for i in range(patients):
        if not (folder / phantom_patient_id(seed + i) / MASK_DIR).is_dir():
            write_npy_layout(generate_phantom(seed + i, size=size, version=BENCH_PHANTOM_VERSION), folder)
    return folder


def train_parser(data_dir: Path, patients: int) -> Any:
    """The bundle's ``configs/train.json`` on ``data_dir``, one fold per patient (all but one train), no progress bars."""
    from monai.bundle import ConfigParser

    from vacseg_monai.paths import default_bundle_root

    parser = ConfigParser()
    parser.read_config(str(Path(default_bundle_root()) / "configs" / "train.json"))
    parser["bundle_root"] = str(default_bundle_root())
    parser["data_dir"] = str(data_dir)
    parser["k_folds"] = patients
    parser["progress_bar"] = False
    return parser


def _bundle_epoch_steps(parser: object) -> int | None:
    """Steps per epoch of the bundle's default training data (``test_dataset``), if it is there."""
    import math

    from monai.bundle import ConfigParser

    from vacseg_monai.datasets import fold_datalists
    from vacseg_monai.paths import default_bundle_root

    default = ConfigParser()
    default.read_config(str(Path(default_bundle_root()) / "configs" / "train.json"))
    default["bundle_root"] = str(default_bundle_root())
    try:
        items = fold_datalists(default.get_parsed_content("data_dir"), default["k_folds"], default["k_fold_index"])
    except Exception:  # no or too few patients there: nothing to project to
        logger.info("No bundle training data to project an epoch length from", exc_info=True)
        return None
    return math.ceil(len(items["train"]) / default["batch_size"])


@dataclass
class _Stepper:
    """Training steps of the bundle's network, loss and optimizer, timed over a source of batches."""

    network: Any
    loss_fn: Any
    optimizer: Any
    device: Any
    steps: int

    def step(self, batch: dict) -> float:
        """One forward, loss, backward and optimizer step; the loss."""
        images, labels = batch["image"].to(self.device), batch["label"].to(self.device)
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.network(images), labels)
        loss.backward()
        self.optimizer.step()
        return loss.item()

    def pipeline_run(self, source: Any) -> tuple[float, float]:
        """Seconds per step over a fresh iterator of ``source``: all steps, and all but the first."""
        begin = time.perf_counter()
        iterator = iter(source)
        first_done = begin
        for k in range(self.steps):
            self.step(next(iterator))
            if k == 0:
                first_done = time.perf_counter()
        end = time.perf_counter()
        del iterator
        return (end - begin) / self.steps, (end - first_done) / max(self.steps - 1, 1)

    def materialised_run(self, batches: list[dict]) -> float:
        """Seconds per step over batches already in memory."""
        begin = time.perf_counter()
        for batch in batches:
            self.step(batch)
        return (time.perf_counter() - begin) / self.steps


def _materialise(loader: Any, steps: int) -> list[dict]:
    """The first ``steps`` batches of a fresh iterator of ``loader``, copied into plain tensors."""
    import torch

    iterator = iter(loader)
    batches = [{"image": b["image"].as_subclass(torch.Tensor).clone(), "label": b["label"].as_subclass(torch.Tensor).clone()}
               for b in (next(iterator) for _ in range(steps))]
    del iterator
    return batches


def _timed_modes(stepper: _Stepper, loader: Any, in_process: Any, batches: list[dict],
                 repeats: int) -> dict[str, list[float]]:
    """Per mode, its seconds per step in each of ``repeats`` runs, the order of the modes rotating."""
    times: dict[str, list[float]] = {"pipeline": [], "pipeline_steady": [], "materialised": [], "workers0": []}

    def run_pipeline() -> None:
        total, steady = stepper.pipeline_run(loader)
        times["pipeline"].append(total)
        times["pipeline_steady"].append(steady)

    modes = [run_pipeline, lambda: times["materialised"].append(stepper.materialised_run(batches)),
             lambda: times["workers0"].append(stepper.pipeline_run(in_process)[0])]
    for r in range(repeats):
        for mode in modes[r % 3:] + modes[: r % 3]:  # the order rotates: no mode always runs first
            mode()
    return times


def _result(parser: Any, loader: Any, times: dict[str, list[float]], *, cache_s: float, batch_size: int,
            steps: int, repeats: int, patients: int, size: int) -> dict[str, Any]:
    """The result dictionary: statistics per mode, the paired ratios, the projection to a bundle epoch."""
    pipe, mat, pipe0 = times["pipeline"], times["materialised"], times["workers0"]
    pipe_s, steady_s, mat_s = stats(pipe), stats(times["pipeline_steady"]), stats(mat)
    paired = [p / m for p, m in zip(pipe, mat)]
    ratio = statistics.median(paired)
    # Project to a real epoch: the first step (worker start-up) once, then the steady state.
    first_step = steps * pipe_s["median"] - (steps - 1) * steady_s["median"]
    epoch_steps = _bundle_epoch_steps(parser)
    projected = None
    if epoch_steps:
        projected = round((first_step + (epoch_steps - 1) * steady_s["median"]) / epoch_steps / mat_s["median"], 3)
    return {
        "benchmark": "training",
        "data": {"patients": patients, "train_slices": len(loader.dataset), "size": size,
                 "spatial_size": parser.get_parsed_content("spatial_size")},
        "batch_size": batch_size,
        "num_workers": parser.get_parsed_content("num_workers"),
        "steps_per_run": steps,
        "repeats": repeats,
        "cache_build_s": round(cache_s, 3),
        "step_s": {"pipeline": pipe_s, "pipeline_steady": steady_s, "materialised": mat_s,
                   "pipeline_workers0": stats(pipe0)},
        "slices_per_s": {
            "pipeline": round(batch_size / pipe_s["median"], 2),
            "pipeline_steady": round(batch_size / steady_s["median"], 2),
            "materialised": round(batch_size / mat_s["median"], 2),
            "pipeline_workers0": round(batch_size / stats(pipe0)["median"], 2),
        },
        "ratio_workers0_to_materialised": round(stats(pipe0)["median"] / mat_s["median"], 3),
        "ratio_pipeline_to_materialised": round(ratio, 3),
        "ratios_per_repeat": [round(x, 3) for x in paired],
        "ratio_of_medians": round(pipe_s["median"] / mat_s["median"], 3),
        "ratio_steady_to_materialised": round(steady_s["median"] / mat_s["median"], 3),
        "first_step_s": round(first_step, 4),
        "bundle_epoch_steps": epoch_steps,
        "ratio_projected_bundle_epoch": projected,
        "targets": {"ratio_max": 1.1},
        "met": {"ratio": ratio <= 1.1},
        "machine": machine_info(),
    }


def run(repeats: int = 5, steps: int = 10, patients: int = 3, size: int = 512,
        num_workers: int | None = None) -> dict[str, Any]:
    """Measure; see the module docstring. Returns the result dictionary."""
    parser = train_parser(_dataset(patients, size), patients)
    if num_workers is not None:
        parser["num_workers"] = num_workers
    batch_size = parser.get_parsed_content("batch_size")
    start = time.perf_counter()
    loader = parser.get_parsed_content("train#dataloader")
    cache_s = time.perf_counter() - start
    device = parser.get_parsed_content("device")
    network = parser.get_parsed_content("network")
    loss_fn = parser.get_parsed_content("loss")
    optimizer = parser.get_parsed_content("optimizer")
    network.train()
    if len(loader) < steps:
        raise ValueError(f"Only {len(loader)} batches per epoch; lower --steps or add --patients.")
    stepper = _Stepper(network, loss_fn, optimizer, device, steps)
    batches = _materialise(loader, steps)
    stepper.materialised_run(batches[:2])  # warm-up: first passes allocate
    # Evidence for a fix, not the target: the same dataset loaded in the main process (num_workers=0).
    from monai.data import DataLoader

    in_process = DataLoader(loader.dataset, batch_size=batch_size, shuffle=True, num_workers=0)
    next(iter(in_process))  # warm-up: first use of the random transforms in this process
    times = _timed_modes(stepper, loader, in_process, batches, repeats)
    return _result(parser, loader, times, cache_s=cache_s, batch_size=batch_size, steps=steps, repeats=repeats,
                   patients=patients, size=size)


def summary(result: dict[str, Any]) -> str:
    """The human-readable table."""
    rows = [[name, result["step_s"][name]["median"], result["step_s"][name]["min"], result["step_s"][name]["max"],
             result["slices_per_s"][name]] for name in ("pipeline", "pipeline_steady", "materialised", "pipeline_workers0")]
    text = table(rows, ["mode", "s/step (median)", "min", "max", "slices/s"])
    text += (f"\npipeline / materialised = {result['ratio_pipeline_to_materialised']:.2f} "
             f"(steady state {result['ratio_steady_to_materialised']:.2f}; target <= 1.1)")
    if result["ratio_projected_bundle_epoch"]:
        text += (f"\nprojected to the bundle's epoch of {result['bundle_epoch_steps']} steps: "
                 f"{result['ratio_projected_bundle_epoch']:.2f}")
    return text


def report_chart(result: dict[str, Any], docs: Path) -> Path:
    """Seconds per step of each mode against the target: ``docs/bench_training.png``; returns its path."""
    plt = chart_pyplot()
    tr = result
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
    return save_chart(fig, docs / "bench_training.png")


def report_section(result: dict[str, Any]) -> list[str]:
    """Section 4 of docs/benchmarks.md: the training efficiency."""
    tr = result
    r = tr["ratio_pipeline_to_materialised"]
    out = ["## 4. Training efficiency", "",
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
           f"| DataLoader, fresh iterator per run (as per epoch) | {seconds_cell(tr['step_s']['pipeline'])} | {tr['slices_per_s']['pipeline']} |",
           f"| DataLoader, steady state (first step excluded) | {seconds_cell(tr['step_s']['pipeline_steady'])} | {tr['slices_per_s']['pipeline_steady']} |",
           f"| batches already in memory | {seconds_cell(tr['step_s']['materialised'])} | {tr['slices_per_s']['materialised']} |",
           f"| (evidence) same dataset, DataLoader num_workers=0 | {seconds_cell(tr['step_s']['pipeline_workers0'])} | "
           f"{tr['slices_per_s']['pipeline_workers0']} |",
           "",
           f"- pipeline / materialised = **{r:.2f}** (median of the paired ratios "
           f"{', '.join(f'{x:.2f}' for x in tr.get('ratios_per_repeat', []))}; ratio of the medians "
           f"{tr.get('ratio_of_medians', r):.2f}; steady state {tr['ratio_steady_to_materialised']:.2f}); "
           f"target <= 1.1: {verdict(tr['met']['ratio'], r, 1.1, ' x')}"]
    if tr.get("ratio_projected_bundle_epoch"):
        out.append(f"- Projected to one epoch of the bundle's own data ({tr['bundle_epoch_steps']} steps: the first "
                   f"step, {tr['first_step_s']:.2f} s with worker start-up, once, then the steady state): "
                   f"**{tr['ratio_projected_bundle_epoch']:.2f}**")
    out.append("")
    return out


def report_ideas(result: dict[str, Any], machine: dict[str, Any]) -> list[str]:
    """Its lines of "What could help" (``machine``: the report's machine)."""
    ideas = []
    tr = result
    r = tr["ratio_pipeline_to_materialised"]
    if not tr["met"]["ratio"]:
        ideas.append(f"Training: the data pipeline costs {r:.2f} x the in-memory step with "
                     f"{tr['num_workers']} workers on {machine['cpu_affinity']} cores; loading in the main process "
                     f"(num_workers=0) measured {tr['ratio_workers0_to_materialised']:.2f} x: worker processes "
                     "compete with the step's threads for the cores. Set num_workers from the core count "
                     "(0 on a 2-core CPU box), `persistent_workers=True` to avoid the worker start "
                     f"({tr['first_step_s']:.2f} s first step) every epoch.")
    return ideas


def main(args: list[str] | None = None) -> dict[str, Any]:
    """Command line; see the module docstring."""
    parser = bench_parser(__doc__)
    parser.add_argument("--repeats", type=int, default=5, help="runs of each mode (default 5)")
    parser.add_argument("--steps", type=int, default=10, help="training steps per run (default 10)")
    parser.add_argument("--patients", type=int, default=3, help="phantom patients, one validates (default 3)")
    parser.add_argument("--size", type=int, default=512, help="rows = columns of the phantoms (default 512)")
    parser.add_argument("--num-workers", type=int, help="override the bundle's num_workers")
    return run_cli(parser, args, lambda opts: run(opts.repeats, opts.steps, opts.patients, opts.size,
                                                  opts.num_workers), summary)


if __name__ == "__main__":
    main()
