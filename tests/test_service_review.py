"""Review of doubtful results: approve / reject on disk, and a running node woken through its control socket."""

from __future__ import annotations

import threading

import pytest

from vacseg_monai.service.jobs import JobState, JobStore, format_status
from vacseg_monai.service.review import CONTROL_SOCKET, ControlListener, ReviewError, decide, notify_node

QUALITY = {
    "threshold": 0.5,
    "flagged": ["Vacbag"],
    "input_reasons": [],
    "structures": {"Vacbag": {"score": 0.12, "flagged": True}, "Couch": {"score": 0.97, "flagged": False}},
}


def _held(store: JobStore) -> str:
    job = store.create(study_uid="1.2.3", series_uid="1.2.3.4")
    store.transition(job.job_id, JobState.QUEUED, n_instances=5)
    store.transition(job.job_id, JobState.INFERRING, attempts=1)
    store.transition(job.job_id, JobState.REVIEW, outputs=["output/RS.1.dcm"], quality=QUALITY,
                     reason="held for review: Vacbag flagged by the quality score")  # fmt: skip
    return job.job_id


def test_approve_and_reject_change_the_record(tmp_path):
    store = JobStore(tmp_path)
    approved, rejected = _held(store), _held(store)
    assert "Vacbag 0.12! Couch 0.97" in format_status(store.jobs())
    assert decide(tmp_path, approved, approve=True).state is JobState.EXPORTING
    assert decide(tmp_path, rejected, approve=False).state is JobState.REJECTED
    again = JobStore(tmp_path)
    assert again.load(approved).reason == "approved in review" and again.load(approved).quality == QUALITY
    assert [h["state"] for h in again.load(rejected).history][-2:] == ["review", "rejected"]
    with pytest.raises(ReviewError, match=f"Job {rejected} is rejected, not in review"):
        decide(tmp_path, rejected, approve=True)
    with pytest.raises(ReviewError, match="No job 'nope'"):
        decide(tmp_path, "nope", approve=True)


def test_a_running_node_is_woken_with_the_job_id(tmp_path):
    store = JobStore(tmp_path)
    job_id = _held(store)
    seen: list[str] = []
    woken = threading.Event()
    listener = ControlListener(tmp_path, lambda j: (seen.append(j), woken.set()))
    assert notify_node(tmp_path, job_id) is False  # no node listening yet
    listener.start()
    try:
        assert (tmp_path / CONTROL_SOCKET).stat().st_mode & 0o777 == 0o600
        decide(tmp_path, job_id, approve=True)
        assert woken.wait(10)
        assert seen == [job_id]
    finally:
        listener.stop()
    assert not (tmp_path / CONTROL_SOCKET).exists()
    assert not listener._thread.is_alive()  # stop() woke its accept(), rather than giving up on the join
