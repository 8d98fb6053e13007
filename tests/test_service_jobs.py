from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest

from vacseg_monai.service.jobs import JobState, JobStateError, JobStore, format_status, write_atomic


def test_job_lifecycle_is_persisted_in_order(tmp_path):
    store = JobStore(tmp_path)
    a = store.create(study_uid="1.2.3", series_uid="1.2.3.4", calling_aet="CT1")
    b = store.create(study_uid="1.2.3", series_uid="1.2.3.5")
    assert [j.job_id for j in store.jobs()] == [a.job_id, b.job_id]  # arrival order
    assert store.series_dir(a.job_id).is_dir()
    store.transition(a.job_id, JobState.QUEUED, n_instances=3)
    store.transition(a.job_id, "inferring", attempts=1)
    store.transition(a.job_id, JobState.EXPORTING, outputs=["output/x.dcm"])
    store.transition(a.job_id, JobState.DONE)
    again = JobStore(tmp_path).load(a.job_id)  # a fresh store reads the same record
    assert again.state is JobState.DONE
    assert again.n_instances == 3 and again.outputs == ["output/x.dcm"] and again.calling_aet == "CT1"
    assert [h["state"] for h in again.history] == ["received", "queued", "inferring", "exporting", "done"]
    record = json.loads((store.job_dir(a.job_id) / "job.json").read_text())
    assert record["state"] == "done"
    assert [j.job_id for j in store.in_states(JobState.RECEIVED)] == [b.job_id]


def test_finished_jobs_cannot_move_again(tmp_path):
    store = JobStore(tmp_path)
    job = store.create(study_uid="1.2", series_uid="1.2.3")
    store.transition(job.job_id, JobState.FAILED, reason="no instance")
    with pytest.raises(JobStateError, match="failed -> exporting is not allowed"):
        store.transition(job.job_id, JobState.EXPORTING)
    assert store.load(job.job_id).reason == "no instance"
    with pytest.raises(JobStateError, match="received -> done is not allowed"):
        store.transition(store.create(study_uid="1.2", series_uid="1.2.4").job_id, JobState.DONE)


def test_unknown_job_and_bad_field(tmp_path):
    store = JobStore(tmp_path)
    with pytest.raises(JobStateError, match="No job record"):
        store.load("nope")
    job = store.create(study_uid="1.2", series_uid="1.2.3")
    with pytest.raises(JobStateError, match="cannot set field 'colour'"):
        store.transition(job.job_id, JobState.QUEUED, colour="red")


def test_write_atomic_leaves_no_temporary_files(tmp_path):
    target = tmp_path / "a.json"
    write_atomic(target, b"one")
    write_atomic(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_format_status_lists_states_and_reasons(tmp_path):
    store = JobStore(tmp_path)
    job = store.create(study_uid="1.2", series_uid="1.2.840.99")
    store.transition(job.job_id, JobState.FAILED, reason="Series is not CT")
    text = format_status(store.jobs())
    assert job.job_id in text and "failed" in text and "Series is not CT" in text and "1.2.840.99" in text
    assert "(no jobs)" in format_status([])


def test_move_atomic_renames_on_one_file_system_and_copies_across(tmp_path):
    from vacseg_monai.service.jobs import move_atomic

    source = tmp_path / "incoming.dcm"
    source.write_bytes(b"x" * 70000)
    (tmp_path / "series").mkdir()
    move_atomic(source, tmp_path / "series" / "a.dcm")
    assert not source.exists() and (tmp_path / "series" / "a.dcm").read_bytes() == b"x" * 70000

    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("no second file system (/dev/shm) to move across")
    other = Path(tempfile.mkdtemp(dir=shm))
    try:
        source = other / "incoming.dcm"
        source.write_bytes(b"y" * 70000)
        move_atomic(source, tmp_path / "series" / "b.dcm")  # rename fails with EXDEV: copied instead
        assert (tmp_path / "series" / "b.dcm").read_bytes() == b"y" * 70000
        assert [p.name for p in (tmp_path / "series").iterdir() if p.name.startswith(".")] == []  # no temp left
    finally:
        shutil.rmtree(other, ignore_errors=True)


def test_format_status_shows_the_latest_correction(tmp_path):
    store = JobStore(tmp_path)
    job = store.create(study_uid="1.2", series_uid="1.2.3")
    store.transition(job.job_id, JobState.QUEUED, n_instances=1)
    store.transition(job.job_id, JobState.INFERRING)
    store.transition(job.job_id, JobState.DONE)
    rois = [{"roi": "Vacbag", "status": "edited", "dice": 0.8712, "added_path_mm": 45.2},
            {"roi": "Couch", "status": "unchanged", "dice": 1.0, "added_path_mm": 0.0},
            {"roi": "Body", "status": "edited", "dice": 0.99, "added_path_mm": 3.0}]
    entries = [{"file": "corrections/x/1.dcm", "status": "measured", "rois": rois},
               {"file": "corrections/x/2.dcm", "status": "measured", "rois": rois}]
    store.update(job.job_id, corrections=entries, correction="corrections/x/2.dcm")
    assert "#2 Vacbag 0.87 +45mm" in format_status(store.jobs())
    store.update(job.job_id, corrections=[*entries, {"file": "corrections/x/3.dcm", "status": "failed"}],
                 correction="corrections/x/3.dcm")
    assert "#3 failed" in format_status(store.jobs())
    assert store.load(job.job_id).state is JobState.DONE
    with pytest.raises(JobStateError, match="cannot set field 'state'"):
        store.update(job.job_id, state="failed")


def test_a_review_decision_waits_for_the_record_being_changed_and_loses_nothing(tmp_path):
    """A held job: --approve (another party) and the worker's recording of a correction meet on one record."""
    import threading

    from vacseg_monai.service.review import decide

    store = JobStore(tmp_path)
    job = store.create(study_uid="1.2.3", series_uid="1.2.3.4")
    for state in (JobState.QUEUED, JobState.INFERRING, JobState.REVIEW):
        store.transition(job.job_id, state)
    decided = []
    with store.locked(job.job_id):
        record = store.load(job.job_id)  # the worker has read the record ...
        approver = threading.Thread(target=lambda: decided.append(decide(tmp_path, job.job_id, approve=True)))
        approver.start()
        approver.join(timeout=1.0)
        assert approver.is_alive()  # the decision waits for the job's lock
        record.corrections = [{"file": "corrections/x/1-2.dcm", "status": "measured"}]
        store.save(record)  # ... and writes its change
    approver.join(timeout=20)
    assert not approver.is_alive() and decided[0].state is JobState.EXPORTING
    final = store.load(job.job_id)
    assert final.state is JobState.EXPORTING and final.corrections == record.corrections
    assert [h["state"] for h in final.history] == ["received", "queued", "inferring", "review", "exporting"]
