"""The benchmark helpers and the report generator (the measurements themselves run with `make bench`)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.common import _fit_slices, stats, table
from benchmarks.run_all import render_charts, render_report
from conftest import fetched_or_skip

MACHINE = {
    "cpu_model": "Test CPU", "cpu_count": 2, "cpu_affinity": 2, "torch_threads": 2, "ram_gib": 8.0,
    "platform": "Linux", "python": "3.11", "torch": "2", "monai": "1.6", "pydicom": "3", "pynetdicom": "3",
    "dcmtk": "dcmtk 3.6.7", "cuda": False, "date": "2026-01-01 00:00 UTC",
}


def test_stats_median_min_max():
    result = stats([3.0, 1.0, 2.0, 10.0, 4.0])
    assert result["median"] == 3.0
    assert (result["min"], result["max"], result["n"]) == (1.0, 10.0, 5)
    with pytest.raises(ValueError, match="No measurements"):
        stats([])


def test_fit_slices_crops_centre_and_mirror_pads():
    volume = np.arange(10, dtype=np.int16)[None, None, :].repeat(2, 0).repeat(3, 1)
    cropped = _fit_slices(volume, 4)
    assert cropped.shape == (2, 3, 4)
    assert cropped[0, 0].tolist() == [3, 4, 5, 6]
    padded = _fit_slices(volume, 14)
    assert padded.shape == (2, 3, 14)
    assert padded[0, 0].tolist() == [1, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 8]


def test_table_aligns_columns():
    text = table([["a", 1.23456], ["long name", 2]], ["name", "value"])
    lines = text.splitlines()
    assert lines[0].startswith("name       value")
    assert lines[2].split() == ["a", "1.235"]
    assert len(lines) == 4


def _receive(node: float, pynetdicom: float) -> dict:
    def s(v: float) -> dict:
        return {"median": v, "min": v, "max": v, "n": 5, "values": [v] * 5}

    return {
        "series": {"slices": 100, "rows": 512, "cols": 512, "instances": 100, "bytes": 52_000_000},
        "sender": "DCMTK storescu", "repeats": 5, "warmup": 1,
        "seconds": {"node": s(100 / node), "pynetdicom": s(100 / pynetdicom), "dcmtk": s(0.2)},
        "images_per_s": {"node": s(node), "pynetdicom": s(pynetdicom), "dcmtk": s(500.0)},
        "ratio_node_to_pynetdicom": round(node / pynetdicom, 3), "ratio_node_to_dcmtk": round(node / 500, 3),
        "met": {"ratio": node / pynetdicom >= 0.9}, "machine": MACHINE, "command": "python -m x", "wall_s": 9,
    }


def test_report_states_a_missed_target_by_how_much(tmp_path):
    report = render_report({"receive": _receive(60.0, 120.0)}, MACHINE, "python -m benchmarks.run_all")
    assert "CPU: Test CPU, 2 logical cores" in report
    assert "node / pynetdicom --ignore = **0.50**" in report
    assert "**missed** by 0.40 x (56% of the target 0.9 x)" in report
    assert "Receive: the node accepts 60 images/s vs 120 for pynetdicom --ignore (16.7 vs 8.3 ms per image)." in report
    charts = render_charts({"receive": _receive(60.0, 120.0)}, tmp_path)
    assert [p.name for p in charts] == ["bench_receive.png"]
    assert charts[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_met_target_lists_no_receive_idea():
    report = render_report({"receive": _receive(118.0, 120.0)}, MACHINE, "cmd")
    assert "**met** (0.98 x vs target 0.9 x)" in report
    assert "All targets met in this run." in report


def _with_orthanc(result: dict, node_s: list[float], orthanc_s: list[float]) -> dict:
    """``result`` of :func:`_receive` with an Orthanc row measured in the same rotations, as bench_receive adds it."""
    from benchmarks.bench_receive import ORTHANC_RATIO_MIN, _orthanc_ratios
    from benchmarks.common import stats

    result["seconds"].update(node=stats(node_s), orthanc=stats(orthanc_s))
    result["images_per_s"]["orthanc"] = stats([100 / s for s in orthanc_s], 2)
    result.update(_orthanc_ratios({"node": node_s, "orthanc": orthanc_s}))
    result["met"]["orthanc"] = result["ratio_node_to_orthanc"] >= ORTHANC_RATIO_MIN
    return result


def test_report_gives_the_node_against_orthanc_per_rotation_and_its_verdict(tmp_path):
    faster = _with_orthanc(_receive(118.0, 120.0), [0.8, 0.9, 1.0, 0.7, 0.85], [1.0, 0.9, 1.1, 0.9, 1.0])
    assert faster["ratio_node_to_orthanc"] == 1.176  # 1.0 s / 0.85 s, the medians
    assert faster["ratio_node_to_orthanc_per_rotation"] == [1.25, 1.0, 1.1, 1.286, 1.176]
    report = render_report({"receive": faster}, MACHINE, "cmd")
    assert "| Orthanc 1.10 (`SyncStorageArea` true: fsync per file, plus its SQLite index) | 100.0 | 1.000 |" in report
    assert "node / Orthanc (durable against durable, same series, same run) = **1.18**; target node >= 1 x " \
           "Orthanc: **met** (1.18 x vs target 1 x); per rotation: 1.25, 1.00, 1.10, 1.29, 1.18" in report
    assert "All targets met in this run." in report
    slower = _with_orthanc(_receive(118.0, 120.0), [1.2] * 5, [1.0] * 5)
    report = render_report({"receive": slower}, MACHINE, "cmd")
    assert "**missed** by 0.17 x (83% of the target 1 x)" in report
    assert "Receive against Orthanc: node / Orthanc = 0.83 (target >= 1)." in report
    charts = render_charts({"receive": slower}, tmp_path)
    assert charts[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_gpu_peak_table_picks_the_variant_named():
    from benchmarks.bench_gpu import peak_tflops

    assert peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert peak_tflops("NVIDIA H200") == 989.4
    assert peak_tflops("Some New Accelerator") is None


@pytest.mark.slow
def test_gpu_benchmark_smoke_run_on_cpu_and_its_report_section(tmp_path):
    """The GPU script runs end to end (here on the CPU, small); FLOPs scale with the batch, the rates follow from
    the timings, and the report shows the section; without a recorded run it says how to make one."""
    from benchmarks.bench_gpu import main as bench_gpu

    result = bench_gpu(["--device", "cpu", "--quick", "--steps", "2", "--big-batch", "10", "--repeats", "1",
                        "--out", str(tmp_path / "gpu.json")])
    rows = {(r["batch_size"], r["precision"]): r for r in result["training"]["rows"]}
    assert set(rows) == {(5, "fp32"), (5, "bf16"), (10, "fp32"), (10, "bf16")}  # no fp16 on the CPU
    assert rows[(10, "fp32")]["flops_per_step"] == 2 * rows[(5, "fp32")]["flops_per_step"] > 1e9
    for r in rows.values():
        assert abs(r["slices_per_s"] - r["batch_size"] * r["steps"] / r["seconds"]) < 0.1
    stages = result["inference"]["stages_s"]
    parts = sum(stages[k]["median"] for k in stages if k != "total")
    assert abs(stages["total"]["median"] - parts) < 1e-3
    assert 0 <= result["inference"]["bf16_label_mismatch_fraction"] < 0.05
    report = render_report({"gpu": result}, MACHINE, "python -m benchmarks.run_all")
    assert "## 6. GPU" in report and "smoke run" in report
    assert f"| 10 | bf16 | {rows[(10, 'bf16')]['slices_per_s']:.1f} |" in report
    assert "Not measured yet" in render_report({}, MACHINE, "python -m benchmarks.run_all")


def test_report_has_the_edit_metrics_section():
    """bench_edits is part of make bench: its result becomes a section with one row per ROI."""
    from benchmarks.run_all import BENCHMARKS

    assert BENCHMARKS["edits"][0] == "benchmarks.bench_edits"
    roi = {"dice": 0.9799, "surface_dice": 0.7792, "hd95_mm": 2.73, "volume_change_cm3": 201.07,
           "added_path_mm": 31832.9}
    result = {"benchmark": "edits", "seed": 1000, "shape": [512, 512, 106], "margin_mm": 3.0,
              "rois": [{"roi": "Vacbag", **roi}, {"roi": "Couch", "dice": 1.0, "surface_dice": 1.0, "hd95_mm": 0.0,
                                                   "volume_change_cm3": 0.0, "added_path_mm": 0.0}],
              "compare_s_median": 3.4, "compare_s": [4.1, 3.4, 3.2]}
    report = render_report({"edits": result}, MACHINE, "cmd")
    assert "## Edit metrics of a correction (bench_edits.py)" in report
    assert "| Vacbag | 0.980 | 0.779 | 2.7 | +201 | 31833 |" in report
    assert "took 3.40 s (median of 4.10, 3.40, 3.20 s)" in report


def test_report_has_the_receive_with_dashboard_section():
    """bench_receive --dashboard is part of make bench: the slowdown and its verdict are in the report."""
    from benchmarks.run_all import BENCHMARKS

    assert BENCHMARKS["receive_dashboard"][1][0] == "--dashboard"
    rate = {"median": 72.1, "min": 70.0, "max": 74.0}
    result = {"benchmark": "receive_dashboard", "series": {"instances": 100, "rows": 512, "cols": 512},
              "repeats": 5, "warmup": 1, "images_per_s": {"node": rate, "node_dashboard": {**rate, "median": 64.0}},
              "seconds": {"node": {"median": 1.387}, "node_dashboard": {"median": 1.562}},
              "dashboard_polls": {"requests": 41, "ok": 41}, "slowdown": 0.1123, "met": {"slowdown": False}}
    report = render_report({"receive_dashboard": result}, MACHINE, "cmd")
    assert "## Receive with the dashboard on" in report
    assert "| with the dashboard | 64.0 | 1.562 |" in report
    assert "slowdown with the dashboard = **11.2 %**; target <= 5 %: **missed** by 6.23 %" in report
    assert "Dashboard: receive 11.2 % slower" in report


def test_real_ct_series_keeps_the_scans_geometry_and_hu(tmp_path):
    import pydicom

    from benchmarks.common import BENCH_REAL_SCAN, real_ct_series
    from vacseg_monai.inputs import load_input
    from vacseg_monai.realct import load_real_scan

    fetched_or_skip(BENCH_REAL_SCAN)
    files = real_ct_series(BENCH_REAL_SCAN, max_slices=3, cache=tmp_path / "cache")
    scan = load_real_scan(BENCH_REAL_SCAN, tmp_path / "work")
    written = load_input(files[0].parent)
    assert written.shape == (512, 512, 3)
    assert np.allclose(written.spacing, scan.spacing, atol=1e-4)
    n = scan.shape[2]
    start = (n - 3) // 2
    expected = np.clip(np.rint(scan.image[0, :, :, start:start + 3].numpy()), -1024, None)
    assert np.array_equal(written.image[0].numpy(), expected)
    assert pydicom.dcmread(files[0]).SeriesDescription == f"Real CT ({BENCH_REAL_SCAN})"
    assert real_ct_series(BENCH_REAL_SCAN, max_slices=3, cache=tmp_path / "cache") == files  # from the cache
    with pytest.raises(ValueError, match="`max_slices` must be None or >= 1, got 0"):
        real_ct_series(BENCH_REAL_SCAN, max_slices=0, cache=tmp_path / "cache")


@pytest.mark.slow
def test_latency_benchmark_tiny_run_times_phantom_and_real_ct(tmp_path):
    from benchmarks import bench_latency
    from benchmarks.common import BENCH_REAL_SCAN

    fetched_or_skip(BENCH_REAL_SCAN)
    # One node (RTSTRUCT + SEG) keeps the test short; the RTSTRUCT-only node is the same code with one result.
    result = bench_latency.run(repeats=1, warmup=0, slices=4, size=96, work_dir=tmp_path, real_slices=2,
                               outputs=("both",))
    assert set(result["cases"]) == {"phantom/both", "real/both"}
    assert (result["series"]["real"]["slices"], result["series"]["real"]["rows"]) == (2, 512)
    assert result["series"]["phantom"]["slices"] == 4
    for key, case in result["cases"].items():
        latency = case["latency_s"]["median"]
        parts = case["runs"][0]
        assert abs(sum(parts.values()) - latency) < 0.01, key  # the stages account for the whole latency
        assert 0 < parts["network"] < latency
        assert case["ratio_latency_to_network"] == round(latency / case["reference_network_s"]["median"], 3)
    assert all(k in result["cases"]["real/both"]["stages_median_s"] for k in ("write", "clean_up", "export"))
    text = "\n".join(bench_latency.report_section(result))
    assert f"real CT {BENCH_REAL_SCAN} (2 x 512^2), RTSTRUCT + SEG" in text
    assert text.count("latency <= 2 x network") == 2
    with pytest.raises(ValueError, match="`outputs` must be a non-empty subset of"):
        bench_latency.run(outputs=("nifti",))


def test_receive_sends_alternate_direction_so_no_scp_always_follows_the_same_one():
    from benchmarks.bench_receive import send_order

    names = ("node", "pynetdicom", "orthanc")
    sequence = [name for i in range(4) for name in send_order(names, i)]
    assert sequence[:6] == ["node", "pynetdicom", "orthanc", "orthanc", "pynetdicom", "node"]
    followed = {sequence[j - 1] for j in range(1, len(sequence)) if sequence[j] == "node"}
    assert followed == {"node", "pynetdicom"}  # never right after Orthanc's send
