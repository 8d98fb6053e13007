"""Network stage variants: evidence for speed-ups of the bundle's forward pass (no library change).

The phantom series (``--slices`` slices, 512 x 512) is read and preprocessed once
with :class:`~vacseg_monai.segmenter.BundleSegmenter`; then the forward pass over
the 256 x 256 slices is timed in several variants, interleaved, ``--repeats``
times each:

- ``bundle``: the bundle's SliceInferer and network as configured (``sw_batch_size`` 16, the network's
  memory format as ``inference.json`` builds it), torch's default threads;
- ``threads=1``: the same with ``torch.set_num_threads(1)``;
- ``sw_batch=4`` / ``sw_batch=64``: other SliceInferer batch sizes;
- ``contiguous (direct, 16)`` / ``channels_last (direct, 16)``: the UNet called on stacked slices in
  batches of 16 without SliceInferer, weights (and input) in either memory format;
- ``amp bf16``: the bundle's inferer with ``amp`` set (bf16 autocast, on the CPU too); fast only where
  the processor computes bf16 natively (``cpu_bf16`` records whether its flags say AVX512-BF16 or AMX).

Outputs of every variant are checked against ``bundle`` (same argmax on >= 99.9 % of pixels).

    .venv/bin/python -m benchmarks.bench_network [--repeats 5] [--slices 100] [--out FILE]
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

from benchmarks.common import (
    add_series_options,
    bench_parser,
    chart_pyplot,
    machine_info,
    phantom_series,
    run_cli,
    save_chart,
    stats,
    table,
)

__all__ = ["main", "report_chart", "report_ideas", "report_section", "run"]

logger = logging.getLogger(__name__)


def _cpu_has_bf16() -> bool:
    """True if /proc/cpuinfo lists AVX512-BF16 or AMX-BF16 (native bf16 arithmetic on the CPU)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def run(repeats: int = 5, slices: int = 100, size: int = 512) -> dict[str, Any]:
    """Measure; see the module docstring."""
    import torch

    from vacseg_monai.inferers import AutocastSliceInferer
    from vacseg_monai.inputs import load_input
    from vacseg_monai.segmenter import BundleSegmenter

    files = phantom_series(slices, size=size)
    seg = BundleSegmenter()
    image = seg.preprocessing({"image": load_input(files[0].parent).image})["image"][None].to(seg.device)
    network = seg.network
    roi = seg.inferer.roi_size
    threads = torch.get_num_threads()

    def inferer(batch: int, amp: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
        sliced = AutocastSliceInferer(roi_size=roi, spatial_dim=2, sw_batch_size=batch, overlap=0.0, progress=False,
                                      amp=amp)
        return lambda x: sliced(x, network)

    def direct(x: torch.Tensor) -> torch.Tensor:
        stack = x[0].permute(3, 0, 1, 2)  # (n_slices, 1, H, W)
        out = torch.cat([network(stack[i:i + 16]) for i in range(0, stack.shape[0], 16)])
        return out.permute(1, 2, 3, 0)[None]

    def channels_last(x: torch.Tensor) -> torch.Tensor:
        stack = x[0].permute(3, 0, 1, 2).contiguous(memory_format=torch.channels_last)
        out = torch.cat([network(stack[i:i + 16]) for i in range(0, stack.shape[0], 16)])
        return out.permute(1, 2, 3, 0)[None]

    # The bundle's own memory format (inference.json may build the network channels-last) is restored after
    # every variant that changes it.
    weight = max((p for p in network.parameters() if p.ndim == 4), key=lambda p: p.shape[1])
    is_channels_last = weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    bundle_format = torch.channels_last if is_channels_last else torch.contiguous_format
    cl, contiguous = torch.channels_last, torch.contiguous_format
    variants: dict[str, tuple[Callable, int, object]] = {
        "bundle": (inferer(seg.inferer.sw_batch_size), threads, None),
        "threads=1": (inferer(seg.inferer.sw_batch_size), 1, None),
        "sw_batch=4": (inferer(4), threads, None),
        "sw_batch=64": (inferer(64), threads, None),
        "contiguous (direct, 16)": (direct, threads, contiguous),
        "channels_last (direct, 16)": (channels_last, threads, cl),
        "amp bf16": (inferer(seg.inferer.sw_batch_size, amp=True), threads, None),
    }
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    agreement: dict[str, float] = {}
    reference = None
    with torch.inference_mode():
        for i in range(repeats + 1):  # round 0 warms up and checks outputs
            for name, (fn, n_threads, memory_format) in variants.items():
                torch.set_num_threads(n_threads)
                network.to(memory_format=memory_format or bundle_format)
                start = time.perf_counter()
                out = fn(image)
                elapsed = time.perf_counter() - start
                network.to(memory_format=bundle_format)
                torch.set_num_threads(threads)
                if i == 0:
                    labels = out.argmax(1)
                    if reference is None:
                        reference = labels
                    agreement[name] = round(float((labels == reference).float().mean()), 6)
                else:
                    seconds[name].append(elapsed)
    return {
        "benchmark": "network",
        "slices": slices,
        "input_shape": list(image.shape),
        "repeats": repeats,
        "baseline": "bundle",
        "default_threads": threads,
        "bundle_memory_format": "channels_last" if bundle_format is torch.channels_last else "contiguous",
        "cpu_bf16": _cpu_has_bf16(),
        "variants": {n: {"seconds": stats(v), "argmax_agreement": agreement[n],
                         "ratio": round(stats(v)["median"] / stats(seconds["bundle"])["median"], 3)}
                     for n, v in seconds.items()},
        "machine": machine_info(),
    }


def summary(result: dict[str, Any]) -> str:
    """The human-readable table."""
    rows = [[n, v["seconds"]["median"], v["ratio"], v["argmax_agreement"]] for n, v in result["variants"].items()]
    return table(rows, ["variant", "seconds (median)", "ratio to bundle", "argmax agreement"])


def report_chart(result: dict[str, Any], docs: Path) -> Path:
    """Seconds of each network variant: ``docs/bench_network.png``; returns its path."""
    plt = chart_pyplot()
    net = result
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
    return save_chart(fig, docs / "bench_network.png")


def report_section(result: dict[str, Any]) -> list[str]:
    """Its section of docs/benchmarks.md: the network stage variants."""
    net = result
    base = net["variants"][net["baseline"]]["seconds"]["median"]
    out = ["## Network stage variants (evidence for speed-ups)", "",
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
    out.append("")
    return out


def report_ideas(result: dict[str, Any], machine: dict[str, Any]) -> list[str]:
    """Its lines of "What could help": the fastest variant, when it is not the bundle's."""
    net = result
    base = net["variants"][net["baseline"]]["seconds"]["median"]
    best = min(net["variants"], key=lambda n: net["variants"][n]["seconds"]["median"])
    if best == net["baseline"]:
        return []
    return [f"Network: `{best}` ran in {net['variants'][best]['seconds']['median']:.2f} s vs "
            f"{base:.2f} s for `{net['baseline']}` "
            f"({net['variants'][best]['seconds']['median'] / base:.2f} x)."
            + (" The bundle's weights are already channels-last, but SliceInferer hands the network "
               "contiguous slice batches: convert each input batch to channels-last too (e.g. a small "
               "wrapper module), or call the network on stacked slices."
               if net.get("bundle_memory_format") == "channels_last" and "channels_last" in best else "")]


def main(args: list[str] | None = None) -> dict[str, Any]:
    """Command line; see the module docstring."""
    parser = bench_parser(__doc__)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per variant (default 5)")
    add_series_options(parser)
    return run_cli(parser, args, lambda opts: run(opts.repeats, opts.slices, opts.size), summary)


if __name__ == "__main__":
    main()
