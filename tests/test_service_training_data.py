"""Corrections to training data: what a node received becomes patients, with the labels each correction has.

A real node (in this process, its worker a child process) contours small banded CT series with
:class:`test_service_support.BandProcessor`; corrected structure sets go back with DCMTK storescu and
are measured by the node; then the node's folder is converted, by the package and by the script.
"""

from __future__ import annotations

import importlib.util
import json
import shutil

import numpy as np
import pytest
from conftest import dice
from pydicom import dcmread
from test_service_support import REPO, edited_structure_set, needs_dcmtk, write_banded_series

from vacseg_monai.datasets import discover_patients, load_slice
from vacseg_monai.dicom.exports import REPORT_JSON, SkipReason
from vacseg_monai.dicom.rtstruct import read_rtstruct_contents
from vacseg_monai.dicom.series import read_series
from vacseg_monai.service.jobs import JobState, JobStore
from vacseg_monai.service.training_data import corrections_to_training
from vacseg_monai.testing.peers import storescu, wait_until

pytestmark = needs_dcmtk


def without_roi(source, out, roi_name: str):
    """A structure set as a clinic sends it when it leaves one structure to the TPS: that ROI removed."""
    ds = dcmread(source)
    number = next(int(r.ROINumber) for r in ds.StructureSetROISequence if r.ROIName == roi_name)
    ds.StructureSetROISequence = [r for r in ds.StructureSetROISequence if int(r.ROINumber) != number]
    ds.ROIContourSequence = [r for r in ds.ROIContourSequence if int(r.ReferencedROINumber) != number]
    ds.RTROIObservationsSequence = [r for r in ds.RTROIObservationsSequence
                                    if int(r.ReferencedROINumber) != number]
    ds.save_as(out, enforce_file_format=True)
    return out


@pytest.fixture(scope="module")
def node_dir(tmp_path_factory):
    """A node's output folder: jobs with a full correction, one without Couch, a failed latest, none, no series."""
    from vacseg_monai.service.config import NodeConfig
    from vacseg_monai.service.scp import DicomNode

    tmp = tmp_path_factory.mktemp("training_data")
    out = tmp / "node"
    config = NodeConfig(port=0, output_directory=out, min_free_mb=0, processor="test_service_support:BandProcessor")
    jobs = {}
    with DicomNode(config) as node:
        for name in ("full", "no_couch", "failed_latest", "none", "series_gone"):
            ct = write_banded_series(tmp / "ct" / name)
            assert storescu(node.port, ct).returncode == 0
            uid = str(dcmread(ct[0]).SeriesInstanceUID)
            jobs[name] = wait_until(lambda uid=uid: [j for j in node.store.jobs() if j.series_uid == uid
                                                     and j.state is JobState.DONE], 90, f"job {name}")[0]
        own = {name: node.store.job_dir(job.job_id) / job.outputs[0] for name, job in jobs.items()}
        send = tmp / "send"
        send.mkdir()
        sent = {
            "full": [edited_structure_set(own["full"], send / "full.dcm", "Vacbag", 1.3)],
            "no_couch": [without_roi(edited_structure_set(own["no_couch"], send / "nc.dcm", "Body", 0.9),
                                     send / "no_couch.dcm", "Couch")],
            "failed_latest": [edited_structure_set(own["failed_latest"], send / "ok.dcm", "Vacbag", 1.2),
                              edited_structure_set(own["failed_latest"], send / "empty.dcm", drop_contours=True)],
            "series_gone": [edited_structure_set(own["series_gone"], send / "gone.dcm", "Vacbag", 1.1)],
        }
        for name, files in sent.items():
            for path in files:  # one at a time, so that the arrival order is the list's
                assert storescu(node.port, [path]).returncode == 0
                sop, job_id = str(dcmread(path).SOPInstanceUID), jobs[name].job_id
                wait_until(lambda sop=sop, job_id=job_id: any(e.get("sop_instance_uid") == sop
                                                              for e in node.store.load(job_id).corrections), 60,
                           f"the measured correction {path.name}")
    shutil.rmtree(JobStore(out).series_dir(jobs["series_gone"].job_id))
    return out, jobs, sent


def test_corrections_become_patients_with_the_labels_they_contain(node_dir, tmp_path):
    out, jobs, sent = node_dir
    report = corrections_to_training(out, tmp_path / "data")
    converted = {r.output.rsplit("_", 1)[1]: r for r in report.converted}
    assert sorted(converted) == sorted([jobs["full"].job_id, jobs["no_couch"].job_id])
    full, no_couch = converted[jobs["full"].job_id], converted[jobs["no_couch"].job_id]
    assert full.annotated_labels == ["Vacbag", "Couch", "Body"]
    assert no_couch.annotated_labels == ["Vacbag", "Body"]
    assert full.output.startswith(str(dcmread(sent["full"][0]).PatientID).replace(" ", "_") or "patient")
    assert full.rtstruct.endswith(".dcm") and "corrections" in full.rtstruct

    patients = {p.patient_id: p for p in discover_patients(tmp_path / "data")}
    assert patients[full.output].annotated == ("Vacbag", "Couch", "Body") and not patients[full.output].partial
    assert patients[no_couch.output].annotated == ("Vacbag", "Body") and patients[no_couch.output].partial
    assert json.loads((tmp_path / "data" / no_couch.output / "annotation.json").read_text()) == {
        "annotated_labels": ["Vacbag", "Body"]}
    # The written mask is the correction (grown Vacbag) rasterised on the node's copy of the series.
    series = read_series(JobStore(out).series_dir(jobs["full"].job_id))
    truth = read_rtstruct_contents(sent["full"][0], series).labels
    patient = patients[full.output]
    mask = np.stack([load_slice(f)[0] for f in patient.label_files], axis=-1)
    for value in (1, 2, 3):
        assert dice(mask == value, truth == value) == 1.0
    assert full.voxels["Vacbag"] == int((truth == 1).sum()) > 0
    mask = np.stack([load_slice(f)[0] for f in patients[no_couch.output].label_files], axis=-1)
    assert not (mask == 2).any()  # the couch it left out is unknown, not drawn

    skipped = {r.detail.split(":")[0].removeprefix("job "): r for r in report.skipped}
    assert skipped[jobs["failed_latest"].job_id].reason == SkipReason.CORRECTION_NOT_MEASURED.value
    assert "no ROIContourSequence" in skipped[jobs["failed_latest"].job_id].detail
    assert skipped[jobs["none"].job_id].reason == SkipReason.NO_CORRECTION.value
    assert skipped[jobs["series_gone"].job_id].reason == SkipReason.MISSING_SERIES.value
    assert "no longer holds its series" in skipped[jobs["series_gone"].job_id].detail
    saved = json.loads((tmp_path / "data" / REPORT_JSON).read_text())
    assert (saved["converted"], saved["skipped"]) == (2, 3)
    assert [r["annotated_labels"] for r in saved["records"][:2]] == [r.annotated_labels for r in report.converted]
    assert "Couch unknown" in report.table()


def test_script_writes_the_data_and_refuses_to_overwrite(node_dir, tmp_path, capsys):
    out, _, _ = node_dir
    spec = importlib.util.spec_from_file_location("corrections_to_training",
                                                  REPO / "scripts" / "corrections_to_training.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    data = tmp_path / "data"
    assert script.main([str(out), str(data), "-q"]) == 0
    printed = capsys.readouterr().out
    assert "2 converted, 3 skipped." in printed and "no_correction" in printed
    assert len(discover_patients(data)) == 2
    assert script.main([str(out), str(data), "-q"]) == 2  # the patients exist: nothing is replaced silently
    assert script.main([str(out), str(data), "-q", "--overwrite", "--format", "both"]) == 0
    assert len(discover_patients(data / "nifti")) == 2
    with pytest.raises(SystemExit):
        script.main([str(tmp_path), str(data)])  # not a node's folder
