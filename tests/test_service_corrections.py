"""Corrections in: edited structure sets sent back to the node with DCMTK storescu, measured by the worker.

The node runs as ``scripts/serve_scp.py`` (it receives straight into files) with
:class:`test_service_support.BandProcessor`, which contours a small banded CT by HU
bands and writes the project's RTSTRUCT: the contours are known, the rest is real.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from test_service_support import REPO, edited_structure_set as edited, needs_dcmtk, node_process, write_banded_series
from vacseg_monai.service.corrections import CORRECTIONS_DIR, UNMATCHED_DIR
from vacseg_monai.service.jobs import JobState, JobStore
from vacseg_monai.testing.peers import echoscu, storescu, wait_until

pytestmark = needs_dcmtk

ECHO_OK = "Received Echo Response (Success)"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def measured(store: JobStore, job_id: str, n: int):
    """The job once its record lists ``n`` corrections."""
    return wait_until(lambda: (job := store.load(job_id)) and len(job.corrections) >= n and job, 60,
                      f"{n} recorded corrections of job {job_id}", interval=0.2)


def rois(entry: dict) -> dict[str, dict]:
    return {roi["roi"]: roi for roi in entry["rois"]}


@pytest.mark.slow
def test_corrections_matched_superseded_unmatched_and_malformed(tmp_path):
    out = tmp_path / "node"
    node = node_process(out, tmp_path / "node.log", ["--processor", "test_service_support:BandProcessor",
                                                    "--min-free-mb", "0", "-v"]).start()
    try:
        ct = write_banded_series(tmp_path / "ct")
        assert storescu(node.port, ct).returncode == 0
        store = JobStore(out)
        job = wait_until(lambda: [j for j in store.jobs() if j.state in (JobState.DONE, JobState.FAILED)], 90,
                         "the CT job")[0]
        assert job.state is JobState.DONE, job.reason
        assert job.frame_of_reference_uid == str(dcmread(ct[0]).FrameOfReferenceUID)
        own = store.job_dir(job.job_id) / job.outputs[0]
        send = tmp_path / "send"
        send.mkdir()

        # 1. the physicist grows the Vacbag: stored under the job, measured
        grown = edited(own, send / "grown.dcm", "Vacbag", 1.4)
        sent = storescu(node.port, [grown])
        assert sent.returncode == 0 and "Received Store Response (Success)" in sent.stderr, sent.stderr
        first = measured(store, job.job_id, 1).corrections[0]
        stored = out / first["file"]
        assert stored.parent == out / CORRECTIONS_DIR / job.job_id
        assert dcmread(stored).SOPInstanceUID == dcmread(grown).SOPInstanceUID
        assert first["status"] == "measured", first["reason"]
        vacbag, couch, body = (rois(first)[name] for name in ("Vacbag", "Couch", "Body"))
        assert vacbag["dice"] < 0.9 and vacbag["added_path_mm"] > 50 and vacbag["volume_change_cm3"] > 0
        assert vacbag["hd95_mm"] > 1 and vacbag["surface_dice"] < 1
        for untouched in (couch, body):
            assert (untouched["status"], untouched["dice"], untouched["added_path_mm"]) == ("unchanged", 1.0, 0.0)
        assert (out / first["picture"]).stat().st_size > 10_000

        # 2. a second correction (shrunk instead) supersedes the first; both are kept
        shrunk = edited(own, send / "shrunk.dcm", "Vacbag", 0.8)
        assert storescu(node.port, [shrunk]).returncode == 0
        record = measured(store, job.job_id, 2)
        second = record.corrections[1]
        assert record.correction == second["file"] and second["file"] > first["file"]
        assert [e["superseded"] for e in record.corrections] == [True, False]
        assert rois(second)["Vacbag"]["volume_change_cm3"] < 0 and rois(second)["Vacbag"]["added_path_mm"] > 0
        assert stored.is_file() and (out / second["file"]).is_file()

        # 3. one that references a series and frame of reference the node never saw: kept as unmatched
        stranger = edited(own, send / "stranger.dcm", "Vacbag", 1.2, references=(generate_uid(), generate_uid()))
        assert storescu(node.port, [stranger]).returncode == 0
        unmatched = out / CORRECTIONS_DIR / UNMATCHED_DIR
        note = json.loads(wait_until(lambda: list(unmatched.glob("*.json")), 10, "the unmatched record")[0].read_text())
        assert "which no job of this node has" in note["reason"]
        assert dcmread(unmatched / note["file"]).SOPInstanceUID == dcmread(stranger).SOPInstanceUID
        assert "kept as unmatched" in node.log()

        # 4. malformed ones referencing the job: no contours; contours off every slice. Kept and recorded.
        empty = edited(own, send / "empty.dcm", drop_contours=True)
        off = edited(own, send / "off.dcm", "Body", 1.0, dz=100.0)
        assert storescu(node.port, [empty, off]).returncode == 0
        record = measured(store, job.job_id, 4)
        reasons = [e["reason"] for e in record.corrections[2:]]
        assert [e["status"] for e in record.corrections[2:]] == ["failed", "failed"]
        assert "no ROIContourSequence" in reasons[0] and "lies off every slice" in reasons[1], reasons
        assert record.correction == record.corrections[3]["file"]
        assert ECHO_OK in echoscu(node.port).stderr  # the node still answers

        # the status table and the CSV report
        status = subprocess.run([sys.executable, str(REPO / "scripts" / "serve_scp.py"), "-od", str(out), "--status"],
                                capture_output=True, text=True, timeout=60)
        assert "EDITS" in status.stdout and "#4 failed" in status.stdout, status.stdout
        report = tmp_path / "report.csv"
        assert load_script("corrections_report").main([str(out), "-o", str(report)]) == 0
        rows = list(csv.DictReader(report.open()))
        by_file = {}
        for row in rows:
            by_file.setdefault(row["correction"], []).append(row)
        assert len(by_file) == 5
        grown_rows = {row["roi"]: row for row in by_file[first["file"]]}
        assert float(grown_rows["Vacbag"]["dice"]) == pytest.approx(vacbag["dice"])
        assert grown_rows["Body"]["added_path_mm"] == "0.0" and grown_rows["Vacbag"]["latest"] == "False"
        assert [row["status"] for row in rows[-1:]] == ["unmatched"]
    finally:
        node.stop()


def test_unreferenced_structure_sets_received_in_memory_are_kept(tmp_path):
    """The node in this process (instances received into memory): structure sets that match no job are kept."""
    from vacseg_monai.dicom.outputs import write_outputs
    from vacseg_monai.dicom.series import read_series
    from vacseg_monai.service.config import NodeConfig
    from vacseg_monai.service.scp import DicomNode

    write_banded_series(tmp_path / "ct", 3)
    series = read_series(tmp_path / "ct")
    labels = np.zeros(series.volume.shape[1:], np.uint8)
    labels[20:30, 20:30, :] = 3
    rtstruct = write_outputs(labels, series, tmp_path / "rs", "rtstruct")[0]
    bare = dcmread(rtstruct)
    del bare.ReferencedFrameOfReferenceSequence
    for roi in bare.StructureSetROISequence:
        del roi.ReferencedFrameOfReferenceUID
    bare.save_as(tmp_path / "bare.dcm", enforce_file_format=True)

    config = NodeConfig(port=0, output_directory=tmp_path / "node", min_free_mb=0,
                        processor="test_service_support:BandProcessor", log_level="INFO")
    with DicomNode(config) as node:
        sent = storescu(node.port, [rtstruct, tmp_path / "bare.dcm"])
        assert sent.returncode == 0 and sent.stderr.count("Received Store Response (Success)") == 2, sent.stderr
        assert ECHO_OK in echoscu(node.port).stderr
        assert node.store.jobs() == []  # no series job was made of them
    unmatched = tmp_path / "node" / CORRECTIONS_DIR / UNMATCHED_DIR
    notes = [json.loads(p.read_text()) for p in sorted(unmatched.glob("*.json"))]
    assert [n["sop_instance_uid"] for n in notes] == [str(dcmread(rtstruct).SOPInstanceUID), str(bare.SOPInstanceUID)]
    assert notes[0]["series_uids"] == [str(series.series_instance_uid)]
    assert notes[1]["reason"] == ("it references series (none), frame of reference (none), "
                                  "which no job of this node has")
    assert dcmread(unmatched / notes[1]["file"]).StructureSetLabel == bare.StructureSetLabel


def test_inbox_matches_by_series_then_frame_of_reference_newest_done_first(tmp_path):
    from pydicom.dataset import Dataset

    from vacseg_monai.service.corrections import CorrectionInbox, correction_references

    store = JobStore(tmp_path)
    old = store.create(study_uid="1.2", series_uid="1.2.3", frame_of_reference_uid="1.2.9")
    for state in (JobState.QUEUED, JobState.INFERRING, JobState.DONE):
        store.transition(old.job_id, state)
    store.create(study_uid="1.2", series_uid="1.2.3", frame_of_reference_uid="1.2.9")  # a resend, still receiving
    other = store.create(study_uid="1.2", series_uid="1.2.4", frame_of_reference_uid="1.2.8")
    woken = []
    inbox = CorrectionInbox(store, on_stored=woken.append)

    def structure_set(series_uid: str | None, frame_uid: str | None) -> Dataset:
        ds = Dataset()
        ds.SOPInstanceUID = generate_uid()
        frame = Dataset()
        if frame_uid:
            frame.FrameOfReferenceUID = frame_uid
        if series_uid:
            series, study = Dataset(), Dataset()
            series.SeriesInstanceUID = series_uid
            study.RTReferencedSeriesSequence = [series]
            frame.RTReferencedStudySequence = [study]
        ds.ReferencedFrameOfReferenceSequence = [frame]
        return ds

    assert inbox.match(correction_references(structure_set("1.2.3", "1.2.9"))).job_id == old.job_id
    assert inbox.match(correction_references(structure_set("1.2.4", None))).job_id == other.job_id
    # a series the node never saw, in a frame of reference it knows
    assert inbox.match(correction_references(structure_set("1.2.77", "1.2.8"))).job_id == other.job_id
    assert inbox.match(correction_references(structure_set("1.2.77", "1.2.78"))) is None
    stored = inbox.store(structure_set(None, "1.2.9"), b"not really DICOM", calling_aet="TPS")
    assert stored.job_id == old.job_id and stored.path.read_bytes() == b"not really DICOM"
    assert stored.path.parent == tmp_path / CORRECTIONS_DIR / old.job_id and woken == [old.job_id]
