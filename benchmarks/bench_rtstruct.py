"""Time the RT Structure Set writer and reader on a full-size three-label map.

Writes a 512 x 512 x 100 label map (Body disk, Vacbag ring around it, Couch band
across the full width) as an RTSTRUCT and reads it back; prints one JSON object
with the median timings over ``--repeats`` runs.

    .venv/bin/python benchmarks/bench_rtstruct.py [--repeats 5] [--slices 100]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pydicom
from skimage.draw import disk

from vacseg_monai.dicom.geometry import affine_lps
from vacseg_monai.dicom.rtstruct import read_rtstruct, write_rtstruct

__all__ = ["main", "report_ideas", "report_section"]

ROWS = COLS = 512


def _labels(n_slices: int) -> np.ndarray:
    labels = np.zeros((ROWS, COLS, n_slices), dtype=np.uint8)
    for k in range(n_slices):
        radius = 200 + 10 * np.sin(k / 7)  # shapes change from slice to slice
        rr, cc = disk((250, 256), radius, shape=(ROWS, COLS))
        labels[rr, cc, k] = 1
        rr, cc = disk((250, 256), radius - 50, shape=(ROWS, COLS))
        labels[rr, cc, k] = 3
        labels[440:470, :, k] = 2
    return labels


def _series(n_slices: int) -> SimpleNamespace:
    """Just the header attributes the writer uses (a CTSeries stand-in without pixels)."""
    headers = []
    for _ in range(n_slices):
        ds = pydicom.Dataset()
        ds.Rows, ds.Columns = ROWS, COLS
        headers.append(ds)
    return SimpleNamespace(
        datasets=headers,
        sop_instance_uids=[f"1.2.826.0.1.3680043.8.498.1.{k + 1}" for k in range(n_slices)],
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        series_instance_uid="1.2.826.0.1.3680043.8.498.2",
        study_instance_uid="1.2.826.0.1.3680043.8.498.3",
        frame_of_reference_uid="1.2.826.0.1.3680043.8.498.4",
        pixel_spacing=(0.9, 0.9),
        affine_lps=affine_lps((1, 0, 0, 0, 1, 0), (0.9, 0.9), 2.0, (-230.0, -230.0, 0.0)),
    )


def report_section(result: dict[str, Any]) -> list[str]:
    """Its section of docs/benchmarks.md: the RTSTRUCT writer."""
    rt = result
    out = ["## RTSTRUCT writer (bench_rtstruct.py)", "",
           f"{rt['shape']} label map, {rt['contours']} contours, {rt['points']} points, "
           f"{rt['file_bytes'] / 1e6:.1f} MB; medians of {rt['repeats']}: write {rt['write_s_median']:.3f} s, "
           f"write + save {rt['write_and_save_s_median']:.3f} s, read back {rt['read_s_median']:.3f} s "
           f"(round trip exact: {rt['round_trip_exact']}).", ""]
    return out


def report_ideas(result: dict[str, Any], machine: dict[str, Any]) -> list[str]:
    """Its lines of "What could help": none, it has no target of its own."""
    return []


def main(args: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--slices", type=int, default=100)
    opts = parser.parse_args(args)
    labels = _labels(opts.slices)
    series = _series(opts.slices)
    write_rtstruct(labels[:, :, :2], SimpleNamespace(**{**vars(series), "datasets": series.datasets[:2]}))  # warm-up
    write_s, save_s, read_s = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "RS.dcm"
        for _ in range(opts.repeats):
            start = time.perf_counter()
            write_rtstruct(labels, series, None)
            write_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            ds = write_rtstruct(labels, series, path)
            save_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            back = read_rtstruct(path, series)
            read_s.append(time.perf_counter() - start)
        size = path.stat().st_size
    n_points = sum(int(c.NumberOfContourPoints) for roi in ds.ROIContourSequence for c in roi.get("ContourSequence", []))
    result = {
        "benchmark": "rtstruct",
        "shape": list(labels.shape),
        "labels": 3,
        "contours": sum(len(roi.get("ContourSequence", [])) for roi in ds.ROIContourSequence),
        "points": n_points,
        "file_bytes": size,
        "write_s_median": round(statistics.median(write_s), 4),
        "write_and_save_s_median": round(statistics.median(save_s), 4),
        "read_s_median": round(statistics.median(read_s), 4),
        "round_trip_exact": bool(np.array_equal(back, labels)),
        "repeats": opts.repeats,
        "machine": f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}",
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
