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
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

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


def main(args: list[str] | None = None) -> dict:
    """Run the measurement; print and return the JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1000, help="phantom seed (default 1000)")
    parser.add_argument("--margin-mm", type=float, default=3.0, help="margin added to the Vacbag (default 3)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs (default 3)")
    parser.add_argument("--picture", type=Path, help="also write the edit picture there")
    ns = parser.parse_args(args)
    with tempfile.TemporaryDirectory() as tmp:
        written = write_phantom_dicom(generate_phantom(ns.seed, size=512, version=1), Path(tmp) / "phantom")
        series = read_series(written.ct_dir)
        corrected = _with_margin(written.rtstruct_path, series, ns.margin_mm, Path(tmp) / "corrected")
        times = []
        for _ in range(max(1, ns.repeats)):
            start = time.perf_counter()
            result = compare_structure_sets(written.rtstruct_path, corrected, series)
            times.append(time.perf_counter() - start)
        if ns.picture is not None:
            save_edit_picture(series.volume[0].numpy(), result.node_labels, result.corrected_labels, result.measure,
                              ns.picture, title=f"Vacbag drawn with a {ns.margin_mm:g} mm margin (phantom {ns.seed})")
        report = {
            "shape": list(series.volume.shape[1:]),
            "margin_mm": ns.margin_mm,
            "rois": [roi.as_dict() for roi in result.measure.rois],
            "compare_s_median": round(statistics.median(times), 3),
            "compare_s": [round(t, 3) for t in times],
            "machine": platform.platform(),
        }
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
