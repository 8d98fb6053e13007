"""`make demo` run twice in one output folder, on a small phantom with the shipped bundle."""

from __future__ import annotations

import pytest
from pydicom import dcmread

from vacseg_monai.demo import run_demo
from vacseg_monai.dicom.series import list_series


@pytest.mark.slow
def test_demo_can_be_run_again_in_the_same_folder(tmp_path):
    first = run_demo(tmp_path, size=128, timeout=120, log_level="WARNING")
    second = run_demo(tmp_path, size=128, timeout=120, log_level="WARNING")
    assert len(list_series(tmp_path / "input")) == 1  # the rerun replaced the input series
    assert len(list((tmp_path / "node" / "jobs").iterdir())) == 1
    assert not first.rtstruct.exists() and second.rtstruct.exists()
    assert str(dcmread(second.rtstruct, stop_before_pixels=True).Modality) == "RTSTRUCT"
    assert second.n_slices == first.n_slices and set(second.dice) == {"Vacbag", "Couch", "Body"}
    assert second.seg is not None and second.seg.is_file() and second.qa_picture is not None
    assert "network" in second.stage_seconds and not any(k.endswith("_after_export") for k in second.stage_seconds)
    assert min(second.dice.values()) > 0.9, second.dice
