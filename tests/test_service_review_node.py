"""Review policy on the real node (shipped bundle), DCMTK storescu as the TPS and storescp as the destination.

A doubtful series is a phantom whose Rescale Intercept is wrong by +1024 HU (air reads about 0 HU): the
quality score's input check flags every structure. A good series is the same kind of phantom, untouched.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydicom import dcmread

from test_service_bundle import BUNDLE, node_args, referenced_series, rtstructs_at, store_statuses
from test_service_support import REPO, node_process, needs_dcmtk, write_phantom_series
from vacseg_monai.labels import LABELS
from vacseg_monai.service.jobs import JobState, JobStore
from vacseg_monai.testing.peers import StoreSCP, storescu, wait_until

pytestmark = [
    needs_dcmtk,
    pytest.mark.skipif(not (BUNDLE / "models" / "model.pt").is_file(), reason="bundle weights models/model.pt missing"),
]


def _phantom(seed: int, folder: Path, *, wrong_rescale: bool) -> tuple[list[Path], str]:
    phantom = write_phantom_series(seed, folder, size=256, n_slices=12)
    if wrong_rescale:
        for path in phantom.ct_files:
            ds = dcmread(path)
            ds.RescaleIntercept = float(ds.RescaleIntercept) + 1024
            ds.save_as(path)
    return list(phantom.ct_files), str(dcmread(phantom.ct_files[0], stop_before_pixels=True).SeriesInstanceUID)


def _job_in(store: JobStore, series_uid: str, *states: JobState):
    return next((j for j in store.jobs() if j.series_uid == series_uid and j.state in states), None)


def _dciodvfy_errors(path: Path) -> list[str]:
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in result.stderr.splitlines() if line.startswith("Error")]


def _roi_names(path: Path) -> list[str]:
    return [roi.ROIName for roi in dcmread(path).StructureSetROISequence]


def _serve_scp(*args: str) -> subprocess.CompletedProcess:
    """``scripts/serve_scp.py`` as a user runs it beside the node."""
    return subprocess.run([sys.executable, str(REPO / "scripts" / "serve_scp.py"), *args], capture_output=True,
                          text=True, timeout=60)  # fmt: skip


@pytest.mark.slow
def test_hold_keeps_a_doubtful_job_until_approve_and_survives_kill_9(tmp_path):
    destination = StoreSCP(tmp_path / "dest").start()
    out = tmp_path / "node"
    args = node_args(destination.port, "--review-policy", "hold")
    node = node_process(out, tmp_path / "node.log", args)
    try:
        node.start()
        bad_files, bad_uid = _phantom(1006, tmp_path / "bad", wrong_rescale=True)
        good_files, good_uid = _phantom(1007, tmp_path / "good", wrong_rescale=False)
        for files in (bad_files, good_files):
            sent = storescu(node.port, files, timeout=60)
            assert store_statuses(sent.stderr) == ["Success"] * len(files), sent.stderr[-1500:]
        store = JobStore(out)
        held = wait_until(lambda: _job_in(store, bad_uid, JobState.REVIEW, JobState.DONE, JobState.FAILED), 120,
                          "the doubtful job held")  # fmt: skip
        assert held.state is JobState.REVIEW, held.reason
        assert sorted(held.quality["flagged"]) == ["Body", "Couch", "Vacbag"]
        assert "check the rescale" in held.quality["input_reasons"][0]
        good = wait_until(lambda: _job_in(store, good_uid, JobState.DONE, JobState.FAILED), 120, "the good job")
        assert good.state is JobState.DONE and good.quality["flagged"] == [], good.quality
        sent_good = wait_until(lambda: rtstructs_at(destination).get(good_uid), 10, "the good RTSTRUCT")
        assert _roi_names(sent_good[0]) == [label.name for label in LABELS]  # sent untouched
        assert bad_uid not in rtstructs_at(destination)

        node.kill9()  # a power cut while the job waits for review
        node.start()
        wait_until(lambda: "Worker ready" in node.log(), 60, "the restarted worker")
        assert JobStore(out).load(held.job_id).state is JobState.REVIEW
        assert bad_uid not in rtstructs_at(destination)

        approved = _serve_scp("-od", str(out), "--approve", held.job_id)
        assert approved.returncode == 0 and f"Job {held.job_id}: exporting (approved in review)" in approved.stdout
        received = wait_until(lambda: rtstructs_at(destination).get(bad_uid), 60, "the approved RTSTRUCT")
        assert wait_until(lambda: _job_in(JobStore(out), bad_uid, JobState.DONE), 20, "the approved job done")
        assert _dciodvfy_errors(received[0]) == []
        observations = [o.ROIObservationDescription for o in dcmread(received[0]).RTROIObservationsSequence]
        assert all(note.startswith("QA 0.") and "FLAGGED" in note for note in observations), observations
        late = _serve_scp("-od", str(out), "--reject", held.job_id)
        assert late.returncode == 2 and f"Job {held.job_id} is done, not in review" in late.stderr
    finally:
        node.stop()
        destination.stop()


@pytest.mark.slow
def test_send_marked_renames_the_flagged_rois(tmp_path):
    destination = StoreSCP(tmp_path / "dest").start()
    node = node_process(tmp_path / "node", tmp_path / "node.log",
                       node_args(destination.port, "--review-policy", "send-marked", "--review-suffix", " CHECK"))
    try:
        node.start()
        files, uid = _phantom(1008, tmp_path / "bad", wrong_rescale=True)
        sent = storescu(node.port, files, timeout=60)
        assert store_statuses(sent.stderr) == ["Success"] * len(files), sent.stderr[-1500:]
        received = wait_until(lambda: rtstructs_at(destination).get(uid), 150, "the marked RTSTRUCT")
        assert _roi_names(received[0]) == [f"{label.name} CHECK" for label in LABELS]
        assert referenced_series(dcmread(received[0])) == uid
        assert _dciodvfy_errors(received[0]) == []
    finally:
        node.stop()
        destination.stop()
