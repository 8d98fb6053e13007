"""GPU figures: training slices/s with AMP and the share of the GPU's peak they reach, inference latency.

Not part of ``make bench`` (the CI machine has no GPU). On a machine with a CUDA GPU:

    python -m benchmarks.bench_gpu --out docs/gpu.json
    python -m benchmarks.run_all --report-only        # puts docs/gpu.json into docs/benchmarks.md

What it measures, with the shipped bundle's own components (``configs/train.json``: network,
loss, optimizer, batch size; ``configs/inference.json`` through
:class:`~vacseg_monai.segmenter.BundleSegmenter`):

- **Training step throughput** on batches already on the GPU (phantom slices through the
  bundle's train transforms), at the bundle's batch size and at ``--big-batch``, in fp32 and
  with automatic mixed precision (bf16 autocast; fp16 autocast with a gradient scaler).
  FLOPs per step (forward + backward) are counted once with ``torch.utils.flop_counter``;
  achieved TFLOP/s = FLOPs per step x steps / seconds. The share of peak is given against
  the data-sheet dense bf16/fp16 peak of the GPU (``--peak-tflops`` overrides the table) and
  against a bf16 matrix product measured here (8192 x 8192 x 8192 on CUDA).
- **Training with the data pipeline**: the bundle's ``train#dataloader`` (CacheDataset,
  transforms, its worker processes) feeding bf16 AMP steps, slices/s.
- **Inference latency** for a 100-slice 512 x 512 phantom CT series: read (DICOM decode),
  the bundle's stages (preprocess, network, resample + argmax, clean-up) and the RTSTRUCT write,
  median of ``--repeats`` after one warm-up; the network stage also under bf16 autocast, with
  the share of voxels whose label differs from fp32.

``--device cpu --quick`` is a small smoke run (used by the tests); its figures mean nothing.

A GPU machine with torch but not this project's other packages needs only four pure-Python
wheels (7.4 MB), fetched where a registry is reachable and installed beside the checkout:

    python3 -m pip download --no-deps --only-binary=:all: -d .whl \
        monai==1.6.1 pytorch-ignite==0.5.5 pydicom==3.0.2 nibabel==5.4.2
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
    PYTHONPATH=/tmp/site:. python3 -m benchmarks.bench_gpu --out docs/gpu.json
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from benchmarks.common import REPO_ROOT, bench_parser, phantom_series, run_cli, stats, table, work_root

__all__ = ["GPU_RESULT", "PEAK_TFLOPS", "main", "peak_tflops", "report_ideas", "report_section", "run"]

logger = logging.getLogger(__name__)

#: GPU figures, recorded on a CUDA machine (``--out docs/gpu.json``) and kept in the repository: ``make bench``
#: does not rerun them, but its report shows them.
GPU_RESULT = REPO_ROOT / "docs" / "gpu.json"

#: Data-sheet dense (no sparsity) bf16 = fp16 tensor-core peak, TFLOP/s, by a substring of the device name.
#: Checked in order: the first substring found in the name wins.
PEAK_TFLOPS: list[tuple[str, float]] = [
    ("H200", 989.4),
    ("H100 PCIe", 756.0),
    ("H100", 989.4),  # SXM / HBM3
    ("A100", 312.0),
    ("L40S", 362.1),
    ("L4", 121.0),
    ("A10", 125.0),
    ("V100", 125.0),  # fp16 only
]


def peak_tflops(device_name: str) -> float | None:
    """The data-sheet dense bf16/fp16 peak of ``device_name`` (see :data:`PEAK_TFLOPS`), or None if unknown."""
    for key, value in PEAK_TFLOPS:
        if key.lower() in device_name.lower():
            return value
    return None


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: Any, precision: str) -> contextlib.AbstractContextManager:
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _step_fn(network: Any, loss_fn: Any, optimizer: Any, device: Any, precision: str) -> Callable[[dict], None]:
    import torch

    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None

    def step(batch: dict) -> None:
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device, precision):
            loss = loss_fn(network(batch["image"]), batch["label"])
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

    return step


def _flops_per_step(network: Any, loss_fn: Any, batch: dict, device: Any) -> int:
    """Forward + backward FLOPs of one step, counted by ``torch.utils.flop_counter`` (no optimizer step)."""
    from torch.utils.flop_counter import FlopCounterMode

    network.zero_grad(set_to_none=True)
    counter = FlopCounterMode(display=False)
    with counter:
        loss_fn(network(batch["image"]), batch["label"]).backward()
    network.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def _time_steps(step: Callable[[dict], None], batches: list[dict], steps: int, device: Any) -> float:
    """Seconds for ``steps`` steps cycling over ``batches`` (after 3 warm-up steps)."""
    for k in range(3):
        step(batches[k % len(batches)])
    _sync(device)
    start = time.perf_counter()
    for k in range(steps):
        step(batches[k % len(batches)])
    _sync(device)
    return time.perf_counter() - start


def _matmul_tflops(device: Any, n: int) -> float | None:
    """bf16 n x n x n matrix product rate measured here (mean of 10 after 3 warm-ups), TFLOP/s."""
    import torch

    if device.type != "cuda":
        return None
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    _sync(device)
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    _sync(device)
    return round(2 * n**3 * 10 / (time.perf_counter() - start) / 1e12, 1)


def _materialise(parser: Any, batch_size: int, n_batches: int, device: Any) -> list[dict]:
    """``n_batches`` batches of the bundle's train dataset (transforms applied), as plain tensors on ``device``."""
    import torch
    from monai.data import DataLoader

    dataset = parser.get_parsed_content("train#dataset")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=0, drop_last=True)
    out: list[dict] = []
    while len(out) < n_batches:
        for batch in loader:
            out.append({k: batch[k].as_subclass(torch.Tensor).to(device) for k in ("image", "label")})
            if len(out) == n_batches:
                break
    return out


def training(parser: Any, device: Any, batch_sizes: list[int], steps: int, precisions: list[str]) -> dict[str, Any]:
    """Step throughput per batch size and precision on materialised batches; FLOPs and achieved TFLOP/s."""
    import torch

    network = parser.get_parsed_content("network")
    loss_fn = parser.get_parsed_content("loss")
    network.train()
    rows = []
    for batch_size in batch_sizes:
        batches = _materialise(parser, batch_size, 4, device)
        flops = _flops_per_step(network, loss_fn, batches[0], device)
        for precision in precisions:
            optimizer = torch.optim.Adam(network.parameters(), lr=1e-4)
            seconds = _time_steps(_step_fn(network, loss_fn, optimizer, device, precision), batches, steps, device)
            rows.append({
                "batch_size": batch_size, "precision": precision, "steps": steps, "seconds": round(seconds, 4),
                "step_s": round(seconds / steps, 5), "slices_per_s": round(batch_size * steps / seconds, 1),
                "flops_per_step": flops, "achieved_tflops": round(flops * steps / seconds / 1e12, 2),
            })
            logger.info("training batch %d %s: %.1f slices/s", batch_size, precision, rows[-1]["slices_per_s"])
        del batches
    return {"rows": rows, "optimizer": "Adam (fresh per row)"}


def training_pipeline(parser: Any, device: Any, steps: int, precision: str) -> dict[str, Any]:
    """The bundle's train#dataloader (its workers, CacheDataset, transforms) feeding AMP steps."""
    import torch

    loader = parser.get_parsed_content("train#dataloader")
    network = parser.get_parsed_content("network")
    loss_fn = parser.get_parsed_content("loss")
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-4)
    network.train()
    step = _step_fn(network, loss_fn, optimizer, device, precision)

    def batches() -> Iterator[dict]:
        while True:
            for batch in loader:
                yield {k: batch[k].to(device, non_blocking=True) for k in ("image", "label")}

    source = batches()
    for _ in range(3):
        step(next(source))
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step(next(source))
    _sync(device)
    seconds = time.perf_counter() - start
    batch_size = parser.get_parsed_content("batch_size")
    return {"batch_size": batch_size, "num_workers": parser.get_parsed_content("num_workers"),
            "precision": precision, "steps": steps, "seconds": round(seconds, 4),
            "slices_per_s": round(batch_size * steps / seconds, 1)}


def inference(device: Any, slices: int, size: int, repeats: int) -> dict[str, Any]:
    """Latency of read + segment + RTSTRUCT write for one phantom series; the network also under bf16 autocast."""
    import numpy as np
    import torch

    from vacseg_monai.dicom.outputs import OutputKind
    from vacseg_monai.inputs import load_input
    from vacseg_monai.segmenter import BundleSegmenter

    files = phantom_series(slices, size=size)
    segmenter = BundleSegmenter(device=str(device))
    runs: list[dict[str, float]] = []
    labels = None
    with tempfile.TemporaryDirectory(dir=work_root()) as tmp:
        for k in range(repeats + 1):
            _sync(device)
            start = time.perf_counter()
            source = load_input(files[0].parent)
            timings = {"read": time.perf_counter() - start}
            result = segmenter.segment(source)  # its stages end with .cpu(): synchronised
            timings.update(result.timings)
            start = time.perf_counter()
            segmenter.write(source, result.labels, Path(tmp) / f"run{k}", OutputKind.RTSTRUCT, nifti=False)
            timings["write"] = time.perf_counter() - start
            timings["total"] = sum(timings.values())
            labels = result.labels
            if k:  # the first run warms up (cuDNN autotuning, allocations)
                runs.append(timings)
        # The network stage alone, fp32 against bf16 autocast, on the same preprocessed volume.
        image = segmenter.preprocessing({"image": source.image})["image"][None].to(device)
        network_s: dict[str, list[float]] = {"fp32": [], "bf16": []}
        logits = {}
        with torch.inference_mode():
            for _ in range(repeats + 1):
                for precision in network_s:
                    _sync(device)
                    start = time.perf_counter()
                    with _autocast(device, precision):
                        out = segmenter.inferer(image, segmenter.network)
                    _sync(device)
                    network_s[precision].append(time.perf_counter() - start)
                    logits[precision] = out
        differ = float((logits["fp32"].argmax(1) != logits["bf16"].argmax(1)).float().mean())
    return {
        "series": {"slices": slices, "rows": size, "cols": size},
        "repeats": repeats,
        "stages_s": {name: stats([r[name] for r in runs]) for name in runs[0]},
        "labelled_voxels": int(np.count_nonzero(labels)),
        "network_only_s": {p: stats(v[1:]) for p, v in network_s.items()},
        "bf16_label_mismatch_fraction": round(differ, 6),
        "sw_batch_size": segmenter.inferer.sw_batch_size,
    }


def device_info(device: Any) -> dict[str, Any]:
    """The GPU (or CPU) and the software, for the report."""
    import monai
    import torch

    info: dict[str, Any] = {
        "device": str(device), "torch": torch.__version__, "monai": monai.__version__,
        "python": platform.python_version(), "cpu_count": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update({"gpu_name": props.name, "gpu_memory_gib": round(props.total_memory / 1024**3, 1),
                     "multiprocessors": props.multi_processor_count, "cuda": torch.version.cuda,
                     "cudnn": torch.backends.cudnn.version()})
    return info


def run(device_name: str = "cuda", *, quick: bool = False, steps: int = 50, big_batch: int = 64,
        repeats: int = 5, peak: float | None = None, matmul_n: int = 8192) -> dict[str, Any]:
    """Measure; see the module docstring. Returns the result dictionary."""
    import torch

    from benchmarks.bench_training import _dataset, train_parser

    device = torch.device(device_name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("No CUDA device here; run with --device cpu --quick for a smoke run.")
    torch.backends.cudnn.benchmark = device.type == "cuda"
    patients, size = (2, 128) if quick else (3, 512)
    parser = train_parser(_dataset(patients, size), patients)
    parser["device"] = f"$torch.device({device_name!r})"
    batch_sizes = sorted({int(parser.get_parsed_content("batch_size")), big_batch})
    precisions = ["fp32", "bf16"] + (["fp16"] if device.type == "cuda" else [])
    info = device_info(device)
    start = time.perf_counter()
    train = training(parser, device, batch_sizes, steps, precisions)
    pipeline = training_pipeline(parser, device, steps, "bf16")
    infer = inference(device, 8 if quick else 100, 64 if quick else 512, repeats)
    peak_sheet = peak if peak is not None else peak_tflops(info.get("gpu_name", ""))
    measured_peak = _matmul_tflops(device, matmul_n)
    for row in train["rows"]:
        row["share_of_sheet_peak"] = round(row["achieved_tflops"] / peak_sheet, 4) if peak_sheet else None
        row["share_of_matmul_peak"] = round(row["achieved_tflops"] / measured_peak, 4) if measured_peak else None
    best = max((r for r in train["rows"] if r["precision"] != "fp32"), key=lambda r: r["slices_per_s"])
    return {
        "benchmark": "gpu",
        "quick": quick,
        "device": info,
        "peak_tflops": {"data_sheet_dense_bf16": peak_sheet, "measured_bf16_matmul": measured_peak,
                        "matmul_n": matmul_n if measured_peak else None},
        "training": train,
        "training_pipeline": pipeline,
        "best_amp_training": {k: best[k] for k in ("batch_size", "precision", "slices_per_s", "achieved_tflops",
                                                   "share_of_sheet_peak", "share_of_matmul_peak")},
        "inference": infer,
        "wall_s": round(time.perf_counter() - start, 1),
    }


def summary(result: dict[str, Any]) -> str:
    """The human-readable tables."""
    rows = [[r["batch_size"], r["precision"], r["slices_per_s"], r["achieved_tflops"],
             r["share_of_sheet_peak"] if r["share_of_sheet_peak"] is not None else "-"]
            for r in result["training"]["rows"]]
    text = table(rows, ["batch", "precision", "slices/s", "TFLOP/s", "share of peak"])
    stages = result["inference"]["stages_s"]
    text += "\n" + table([[name, s["median"]] for name, s in stages.items()], ["inference stage", "seconds"])
    net = result["inference"]["network_only_s"]
    text += (f"\nnetwork fp32 {net['fp32']['median']:.3f} s, bf16 {net['bf16']['median']:.3f} s "
             f"(labels differing: {result['inference']['bf16_label_mismatch_fraction']:.2e})")
    return f"{result['device'].get('gpu_name', result['device']['device'])}\n{text}"


def report_section(result: dict[str, Any] | None) -> list[str]:
    """Section 6 of docs/benchmarks.md, from :data:`GPU_RESULT` (None: not measured yet, and how to measure it)."""
    gpu = result
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


def report_ideas(result: dict[str, Any], machine: dict[str, Any]) -> list[str]:
    """Its lines of "What could help": none, it has no target of its own."""
    return []


def main(args: list[str] | None = None) -> dict[str, Any]:
    """Command line; see the module docstring."""
    parser = bench_parser(__doc__, out_help="also write the JSON here (docs/gpu.json goes into the report)")
    parser.add_argument("--device", default="cuda", help="torch device (default cuda)")
    parser.add_argument("--quick", action="store_true", help="small smoke run (tests): 2 small patients, 8 slices")
    parser.add_argument("--steps", type=int, default=50, help="timed training steps per row (default 50)")
    parser.add_argument("--big-batch", type=int, default=64, help="second training batch size (default 64)")
    parser.add_argument("--repeats", type=int, default=5, help="inference runs after one warm-up (default 5)")
    parser.add_argument("--peak-tflops", type=float, help="data-sheet dense bf16 peak, if the table lacks the GPU")
    parser.add_argument("--matmul-n", type=int, default=8192, help="size of the measured bf16 matrix product")

    def measure(opts: argparse.Namespace) -> dict[str, Any]:
        if opts.steps < 1 or opts.repeats < 1 or opts.big_batch < 1:
            parser.error("--steps, --repeats and --big-batch must be at least 1")
        result = run(opts.device, quick=opts.quick, steps=opts.steps, big_batch=opts.big_batch,
                     repeats=opts.repeats, peak=opts.peak_tflops, matmul_n=opts.matmul_n)
        result["command"] = " ".join(["python -m benchmarks.bench_gpu", *(args if args is not None else sys.argv[1:])])
        return result

    return run_cli(parser, args, measure, summary, level=logging.INFO)


if __name__ == "__main__":
    main()
