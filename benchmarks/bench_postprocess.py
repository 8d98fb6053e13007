"""Post-processing pieces on a real prediction: where the clean-up time goes, and what a coarser grid would cost.

The shipped bundle segments the phantom series once (``--slices`` slices,
512 x 512); then, ``--repeats`` times each, interleaved:

- ``resample_argmax``: the bundle's resize of the 256 x 256 logits to the CT grid + argmax;
- ``clean_up``: :func:`vacseg_monai.postprocess.clean_up_labels` on the 512 x 512 label map (as the bundle);
- its pieces: Body largest 3D component, Body hole filling per slice, Couch largest
  component, Vacbag small-component removal (private helpers of
  :mod:`vacseg_monai.postprocess`, timed on the whole-volume masks; the library may crop
  to bounding boxes first, so they need not add up to ``clean_up``);
- ``clean_up at 256``: the same clean-up on the label map subsampled to 256 x 256
  (what cleaning at the network's resolution before upsampling would cost).

    .venv/bin/python -m benchmarks.bench_postprocess [--repeats 5] [--slices 100] [--out FILE]
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import numpy as np

from benchmarks.common import add_series_options, bench_parser, machine_info, phantom_series, run_cli, stats, table

__all__ = ["main", "report_ideas", "report_section", "run"]

logger = logging.getLogger(__name__)


def run(repeats: int = 5, slices: int = 100, size: int = 512) -> dict[str, Any]:
    """Measure; see the module docstring."""
    import torch

    from vacseg_monai import postprocess
    from vacseg_monai.inputs import load_input
    from vacseg_monai.labels import LABELS
    from vacseg_monai.postprocess import clean_up_labels
    from vacseg_monai.segmenter import BundleSegmenter

    files = phantom_series(slices, size=size)
    seg = BundleSegmenter()
    source = load_input(files[0].parent)
    data = seg.preprocessing({"image": source.image})
    with torch.inference_mode():
        logits = seg.inferer(data["image"][None].to(seg.device), seg.network)[0]
    resampled = seg.resample_argmax({"pred": logits, "image": data["image"]})
    labels = np.ascontiguousarray(resampled["pred"][0].cpu().numpy(), dtype=np.uint8)
    voxel = float(abs(np.linalg.det(np.asarray(source.affine, dtype=np.float64)[:3, :3])))
    by_name = {label.name: label.value for label in LABELS}
    coarse = np.ascontiguousarray(labels[::2, ::2, :])

    cases: dict[str, Callable[[], object]] = {
        "resample_argmax": lambda: seg.resample_argmax({"pred": logits, "image": data["image"]}),
        "clean_up (512 grid)": lambda: clean_up_labels(labels, voxel),
        "clean_up (256 grid)": lambda: clean_up_labels(coarse, voxel * 4),
    }
    pieces = ("_largest_component", "_fill_holes_per_slice", "_drop_small_components")
    if all(hasattr(postprocess, name) for name in pieces):  # private helpers; skipped if they change
        body, couch, bag = (labels == by_name[n] for n in ("Body", "Couch", "Vacbag"))
        body_largest = postprocess._largest_component(body)
        cases.update({
            "  Body largest component": lambda: postprocess._largest_component(body),
            "  Body fill holes per slice": lambda: postprocess._fill_holes_per_slice(body_largest),
            "  Couch largest component": lambda: postprocess._largest_component(couch),
            "  Vacbag drop small components": lambda: postprocess._drop_small_components(bag, 1000.0 / voxel),
            "  one label mask (labels == v)": lambda: labels == by_name["Body"],
        })
    seconds: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            seconds[name].append(time.perf_counter() - start)
    return {
        "benchmark": "postprocess",
        "slices": slices,
        "label_shape": list(labels.shape),
        "label_counts": {label.name: int(np.count_nonzero(labels == label.value)) for label in LABELS},
        "repeats": repeats,
        "seconds": {name: stats(values) for name, values in seconds.items()},
        "machine": machine_info(),
    }


def summary(result: dict[str, Any]) -> str:
    """The human-readable table."""
    rows = [[n, s["median"], s["min"], s["max"]] for n, s in result["seconds"].items()]
    return table(rows, ["step", "seconds (median)", "min", "max"])


def report_section(result: dict[str, Any]) -> list[str]:
    """Its section of docs/benchmarks.md: the post-processing pieces."""
    post = result
    secs = post["seconds"]
    out = ["## Post-processing pieces (evidence for speed-ups)", "",
           f"On the bundle's own prediction for the {post['slices']}-slice series (label map "
           f"{post['label_shape']}), each step timed {post['repeats']} times. The indented pieces call "
           "the clean-up's private helpers on the whole volume; `clean_up_labels` itself may crop first, so "
           "they need not add up to it.", "",
           "| step | seconds (median) |", "|---|---|"]
    out += [f"| {name.strip()} | {v['median']:.3f} |" for name, v in secs.items()]
    out.append("")
    return out


def report_ideas(result: dict[str, Any], machine: dict[str, Any]) -> list[str]:
    """Its line of "What could help": the clean-up on the network's grid, and its slowest helper."""
    secs = result["seconds"]
    full, coarse = secs["clean_up (512 grid)"]["median"], secs["clean_up (256 grid)"]["median"]
    pieces = {k.strip(): v["median"] for k, v in secs.items() if k.startswith("  ")}
    text = (f"Clean-up: {full:.2f} s on the 512 grid vs {coarse:.2f} s on the 256 grid "
            f"({coarse / full:.2f} x); cleaning at the network's resolution would save that much, at the "
            "cost of results that differ near boundaries.")
    if pieces:
        top = max(pieces, key=pieces.get)
        text += f" Slowest helper on the whole volume: {top} ({pieces[top]:.2f} s)."
    return [text]


def main(args: list[str] | None = None) -> dict[str, Any]:
    """Command line; see the module docstring."""
    parser = bench_parser(__doc__)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per step (default 5)")
    add_series_options(parser)
    return run_cli(parser, args, lambda opts: run(opts.repeats, opts.slices, opts.size), summary)


if __name__ == "__main__":
    main()
