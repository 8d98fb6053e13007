"""Time the edit metrics of one correction on a full-size phantom, and draw its picture.

Phantom ``--seed`` (generator v1, 512 x 512) is written as DICOM CT with its truth
RT Structure Set, which stands in for the node's. The "correction" is that structure
set with the Vacbag drawn ``--margin-mm`` wider into the air around it (a clinic that
contours the bag with a margin). Prints one JSON object: the metrics per structure and
the median time of :func:`vacseg_monai.edits.compare_structure_sets` over ``--repeats``.

    .venv/bin/python -m benchmarks.bench_edits [--repeats 3] [--picture docs/correction_example.png]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from benchmarks.common import bench_parser, run_cli
from vacseg_monai.dicom.outputs import write_outputs
from vacseg_monai.dicom.phantom_dicom import write_phantom_dicom
from vacseg_monai.dicom.rtstruct import read_rtstruct_contents
from vacseg_monai.dicom.series import read_series
from vacseg_monai.edits import compare_structure_sets, save_edit_picture
from vacseg_monai.phantom import generate_phantom


def _with_margin(rtstruct: Path, series, margin_mm: float, out_dir: Path) -> Path:
    """The structure set with the Vacbag grown by ``margin_mm`` in-plane, into background only."""
    contents = read_rtstruct_contents(rtstruct, series)
    radius = int(round(margin_mm / series.pixel_spacing[0]))
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    disk = (yy**2 + xx**2) <= radius * radius
    labels = contents.labels.copy()
    grown = ndimage.binary_dilation(contents.masks[1], structure=disk[:, :, None])
    labels[grown & (labels == 0)] = 1
    return write_outputs(labels, series, out_dir, "rtstruct")[0]


def measure(opts: argparse.Namespace) -> dict[str, Any]:
    """Write the phantom and its widened correction, time the comparison, draw the picture if asked."""
    with tempfile.TemporaryDirectory() as tmp:
        written = write_phantom_dicom(generate_phantom(opts.seed, size=512, version=1), Path(tmp) / "phantom")
        series = read_series(written.ct_dir)
        corrected = _with_margin(written.rtstruct_path, series, opts.margin_mm, Path(tmp) / "corrected")
        times = []
        for _ in range(max(1, opts.repeats)):
            start = time.perf_counter()
            result = compare_structure_sets(written.rtstruct_path, corrected, series)
            times.append(time.perf_counter() - start)
        if opts.picture is not None:
            save_edit_picture(series.volume[0].numpy(), result.node_labels, result.corrected_labels, result.measure,
                              opts.picture,
                              title=f"Vacbag drawn with a {opts.margin_mm:g} mm margin (phantom {opts.seed})")
    return {
        "benchmark": "edits",
        "seed": opts.seed,
        "shape": list(series.volume.shape[1:]),
        "margin_mm": opts.margin_mm,
        "rois": [roi.as_dict() for roi in result.measure.rois],
        "compare_s_median": round(statistics.median(times), 3),
        "compare_s": [round(t, 3) for t in times],
        "machine": platform.platform(),
    }


def _summary(result: dict[str, Any]) -> str:
    times = result["compare_s"]
    return f"edit metrics of one correction in {result['compare_s_median']:.2f} s (median of {len(times)})"


def report_section(result: dict[str, Any]) -> list[str]:
    """Its section of docs/benchmarks.md: the edit metrics of one correction, and their time."""
    rows = []
    for roi in result["rois"]:
        def fmt(key: str, spec: str) -> str:
            value = roi.get(key)
            return "-" if value is None else format(value, spec)
        rows.append([roi["roi"], fmt("dice", ".3f"), fmt("surface_dice", ".3f"), fmt("hd95_mm", ".1f"),
                     fmt("volume_change_cm3", "+.0f"), fmt("added_path_mm", ".0f")])
    shape = " x ".join(str(n) for n in result["shape"])
    out = ["## Edit metrics of a correction (bench_edits.py)", "",
           f"Phantom {result['seed']} ({shape}): its own structure set stands in for the node's, and the correction "
           f"draws the Vacbag {result['margin_mm']:g} mm wider into the air. Comparing the two took "
           f"{result['compare_s_median']:.2f} s (median of {', '.join(f'{t:.2f}' for t in result['compare_s'])} s), "
           "in the worker, between jobs. Picture: `docs/correction_example.png`.", ""]
    out += ["| ROI | Dice | surface Dice 2 mm | HD95 mm | volume change cm3 | added path mm |",
            "|---|---|---|---|---|---|"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return out + [""]


def report_ideas(result: dict[str, Any], machine: dict[str, Any]) -> list[str]:
    """Its lines of "What could help": none, it has no target of its own."""
    return []


def main(args: list[str] | None = None) -> dict[str, Any]:
    """Run the measurement; print and return the JSON object."""
    parser = bench_parser(__doc__)
    parser.add_argument("--seed", type=int, default=1000, help="phantom seed (default 1000)")
    parser.add_argument("--margin-mm", type=float, default=3.0, help="margin added to the Vacbag (default 3)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs (default 3)")
    parser.add_argument("--picture", type=Path, help="also write the edit picture there")
    return run_cli(parser, args, measure, _summary)


if __name__ == "__main__":
    main()
