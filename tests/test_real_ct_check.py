"""The real-CT benchmark's report section (the measurement itself runs with `make bench`)."""

from __future__ import annotations

import pytest

from benchmarks.real_ct_check import report_ideas, report_section
from benchmarks.run_all import render_report
from tests.test_benchmarks import MACHINE


def _row(scan: str, vacbag: float | None, dice: float = 0.995, share: float = 0.001, error: str | None = None) -> dict:
    metrics = None if vacbag is None else {
        "vacbag_cm3": vacbag, "couch_cm3": 300.0, "couch_inside_body_share": share, "body_dice": dice,
        "body_cm3": 1.0, "reference_body_cm3": 1.0,
    }
    met = None if vacbag is None else {"vacbag": vacbag <= 1, "body": dice >= 0.98, "couch": share < 0.01,
                                       "all": vacbag <= 1 and dice >= 0.98 and share < 0.01}
    return {"scan": scan, "source": "pyradiomics 3.1.0", "licence": "BSD-3-Clause", "description": "chest CT",
            "used_in_training": False, "shape": [] if vacbag is None else [512, 512, 48],
            "spacing_mm": [] if vacbag is None else [0.5703, 0.5703, 5.0], "error": error, "metrics": metrics,
            "met": met, "picture": None if vacbag is None else f"docs/real_ct_{scan}.png", "seconds": 3.0}


RESULT = {
    "benchmark": "real_ct_check", "bundle": "bundles/vacbag_ct_segmentation",
    "weights": "bundles/vacbag_ct_segmentation/models/model.pt",
    "thresholds": {"vacbag_cm3_max": 1.0, "body_dice_min": 0.98, "couch_inside_share_max": 0.01},
    "reference": {"threshold_hu": -400.0, "opening_radius_mm": 6.0},
    "scans": [{**_row("lung1", 33.25), "notes": ["read as 5 mm"]}, _row("lung2", 0.4), _row("lung3", 0.0, dice=0.95, share=0.02),
              _row("totalseg_dicom", None, error="not readable: No CT Image Storage series found in <cache>/x.")],
    "machine": MACHINE, "command": "python -m benchmarks.real_ct_check", "wall_s": 40,
}


def test_section_has_a_row_per_scan_with_its_verdict():
    text = "\n".join(report_section(RESULT))
    assert ("| lung1 | pyradiomics 3.1.0 (BSD-3-Clause) | 512 x 512 x 48 | 0.57 x 0.57 x 5 | no | 33.25 | 300.0 | "
            "0.10 % | 0.9950 | **fail** (vacbag) |") in text
    assert "| 0.40 | 300.0 | 0.10 % | 0.9950 | pass |" in text
    assert "**fail** (body, couch) |" in text
    assert ("| totalseg_dicom | pyradiomics 3.1.0 (BSD-3-Clause) | - | - | no | - | - | - | - | "
            "not readable: `No CT Image") in text
    assert "\n- lung1: read as 5 mm.\n" in text
    assert "![lung1](real_ct_lung1.png)" in text
    assert "Held-out scans passing all three: **1 of 3** read." in text


def test_failures_go_to_what_could_help_in_the_report():
    ideas = report_ideas(RESULT, MACHINE)
    assert len(ideas) == 1
    summary = ideas[0]
    assert summary.startswith("Real CT: 2 held-out scan(s) miss")
    assert "33.2 cm3 on lung1" in summary
    report = render_report({"real_ct": RESULT}, MACHINE, "python -m benchmarks.run_all")
    assert "## Real CT check (real_ct_check.py)" in report
    assert report.index("## Real CT check") < report.index("## What could help") < report.index(summary[:30])
    assert "`python -m benchmarks.real_ct_check` (40 s)" in report
    trained = {**RESULT, "scans": [{**_row("lung1", 33.25), "used_in_training": True}, _row("lung2", 0.4)]}
    assert report_ideas(trained, MACHINE) == []  # a scan used in training does not count
    assert "| 0.57 x 0.57 x 5 | yes | 33.25 |" in "\n".join(report_section(trained))
    assert "Held-out scans passing all three: **1 of 1** read." in "\n".join(report_section(trained))
    passing = {**RESULT, "scans": [_row("lung2", 0.4)]}
    assert report_ideas(passing, MACHINE) == []


def test_bundle_readme_table_is_rewritten_between_its_markers(tmp_path):
    from benchmarks.real_ct_check import DOCS_BEGIN, DOCS_END, update_bundle_readme

    readme = tmp_path / "README.md"
    readme.write_text(f"# Bundle\n## Real CT check\n{DOCS_BEGIN}\nold table\n{DOCS_END}\n## References\n")
    update_bundle_readme(RESULT, readme, "python -m benchmarks.real_ct_check --update-docs")
    text = readme.read_text()
    assert "old table" not in text
    assert text.index(DOCS_BEGIN) < text.index("| lung1 | pyradiomics 3.1.0") < text.index(DOCS_END)
    assert "    python -m benchmarks.real_ct_check --update-docs" in text
    assert text.endswith(f"{DOCS_END}\n## References\n")
    readme.write_text("# no markers\n")
    with pytest.raises(ValueError, match="has no <!-- real-ct:begin --> ... <!-- real-ct:end --> markers"):
        update_bundle_readme(RESULT, readme, "x")
