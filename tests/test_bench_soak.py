"""The soak check, small: 4 series over 2 concurrent associations of 2 series each; every result once, no job lost.

No timing is asserted.
"""

from __future__ import annotations

import json

from pydicom import dcmread

from test_service_support import needs_dcmtk, write_series
from benchmarks.bench_soak import main, report_section, results_per_series
from vacseg_monai.testing.processors import StandInStructureSetProcessor

pytestmark = needs_dcmtk


def test_small_soak_every_result_once_no_job_lost(tmp_path):
    out = tmp_path / "soak.json"
    result = main(["--series", "4", "--slices", "20", "--size", "128", "--associations", "2", "--out", str(out)])
    assert json.loads(out.read_text())["met"] == result["met"]
    assert result["results"] == {"files": 4, "missing": 0, "repeated": 0, "foreign": 0}
    assert result["jobs"] == {"done": 4}
    assert result["met"]["exactly_once"] and result["met"]["none_lost"]
    assert result["rss"]["samples"] >= 2 and result["rss"]["peak_mib"] >= result["rss"]["end_mib"] > 0
    section = "\n".join(report_section(result))
    assert "| every result exactly once (RTSTRUCTs per referenced series at the receiver) | **yes**: 4 files" in section
    assert "| no job lost | **yes**: done 4 |" in section


def test_results_are_counted_per_referenced_series(tmp_path):
    """Two structure sets of one series and one of another count 2 and 1; the CT itself counts nothing."""
    a = write_series(tmp_path / "a", 2)
    b = write_series(tmp_path / "b", 2)
    processor = StandInStructureSetProcessor()
    first = processor(tmp_path / "a", tmp_path / "job1")
    again = processor(tmp_path / "a", tmp_path / "job2")
    other = processor(tmp_path / "b", tmp_path / "job3")
    counts = results_per_series([*first, *again, *other, a[0]])
    assert counts == {str(dcmread(a[0]).SeriesInstanceUID): 2, str(dcmread(b[0]).SeriesInstanceUID): 1}
