"""The node with the shipped bundle, end to end, with real DCMTK peers on 127.0.0.1.

The node runs as ``scripts/serve_scp.py`` in its own process group (SCP + the
worker it spawns), logging to a file; DCMTK ``storescu`` sends, DCMTK
``storescp`` is the destination. One module-scoped node serves the accuracy,
concurrency and failure tests; the crash test starts its own.

Failure cases covered elsewhere with the stand-in processor and not repeated
here: an MR series (worker modality check, test_service_node.py); the kill -9
while inferring (test_service_node.py, BlockingProcessor). Here the kill
happens while exporting, with the real bundle.
"""

from __future__ import annotations

import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from conftest import dice_per_label
from test_service_support import REPO, edited_structure_set, needs_dcmtk, node_process, write_phantom_series, write_series
from vacseg_monai.dicom.rtstruct import read_rtstruct
from vacseg_monai.dicom.series import read_series
from vacseg_monai.service.jobs import JobState, JobStore
from vacseg_monai.service.processor import QA_PICTURE
from vacseg_monai.testing.peers import StoreSCP, echoscu, free_port, storescu, wait_until

BUNDLE = REPO / "bundles" / "vacbag_ct_segmentation"
RT_PLAN_STORAGE = "1.2.840.10008.5.1.4.1.1.481.5"
ECHO_OK = "Received Echo Response (Success)"

pytestmark = [
    needs_dcmtk,
    pytest.mark.skipif(not (BUNDLE / "models" / "model.pt").is_file(), reason="bundle weights models/model.pt missing"),
]


def node_args(destination_port: int, *extra: str) -> list[str]:
    return [
        "--bundle", str(BUNDLE), "--destination", f"127.0.0.1:{destination_port}:DEST", "--min-free-mb", "0",
        "--export-retry-initial", "0.5", "--export-retry-max", "1", "-ta", "10", "-td", "30", "-tn", "30", "-v",
        *extra,
    ]


def job_for(store: JobStore, series_uid: str):
    return next((job for job in store.jobs() if job.series_uid == series_uid), None)


def wait_job_final(store: JobStore, series_uid: str, timeout: float):
    def final():
        job = job_for(store, series_uid)
        return job if job is not None and job.state in (JobState.DONE, JobState.FAILED) else None

    return wait_until(final, timeout, f"job of series {series_uid} done or failed", interval=0.2)


def referenced_series(rtstruct: Dataset) -> str:
    ref = rtstruct.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
    return str(ref.RTReferencedSeriesSequence[0].SeriesInstanceUID)


def rtstructs_at(destination: StoreSCP) -> dict[str, list[Path]]:
    """Referenced series UID -> RTSTRUCT files received by ``destination``."""
    found = {}
    for path in destination.files():
        ds = dcmread(path, stop_before_pixels=True)
        if ds.Modality == "RTSTRUCT":
            found.setdefault(referenced_series(ds), []).append(path)
    return found



def store_statuses(stderr: str) -> list[str]:
    return re.findall(r"Received Store Response \(([^)]*)\)", stderr)


@pytest.fixture(scope="module")
def destination(tmp_path_factory):
    scp = StoreSCP(tmp_path_factory.mktemp("dest")).start()
    try:
        yield scp
    finally:
        scp.stop()


@pytest.fixture(scope="module")
def node(tmp_path_factory, destination):
    """One node with the real bundle processor for the accuracy, concurrency and failure tests."""
    folder = tmp_path_factory.mktemp("node")
    proc = node_process(folder / "out", folder / "node.log", node_args(destination.port))
    try:
        yield proc.start()
    finally:
        proc.stop()


@pytest.mark.slow
def test_512_phantom_round_trip_with_the_shipped_model(tmp_path, node, destination):
    """storescu -> node -> bundle -> storescp: a valid RTSTRUCT whose contours match the truth."""
    phantom = write_phantom_series(1000, tmp_path)
    sent = storescu(node.port, phantom.ct_files, timeout=120)
    assert sent.returncode == 0, sent.stderr[-2000:]
    assert store_statuses(sent.stderr) == ["Success"] * len(phantom.ct_files)
    series = read_series(phantom.ct_dir)
    uid = str(series.series_instance_uid)

    store = JobStore(node.output_directory)
    job = wait_job_final(store, uid, timeout=150)
    assert job.state is JobState.DONE, job.reason
    assert job.n_instances == len(phantom.ct_files)
    assert (store.job_dir(job.job_id) / QA_PICTURE).stat().st_size > 10_000
    received = wait_until(lambda: rtstructs_at(destination).get(uid), 10, "the RTSTRUCT at the destination")
    assert len(received) == 1

    verify = subprocess.run(["dciodvfy", str(received[0])], capture_output=True, text=True, timeout=60)
    errors = [line for line in verify.stderr.splitlines() if line.startswith("Error")]
    assert errors == [], verify.stderr[-2000:]
    dice = dice_per_label(read_rtstruct(phantom.rtstruct_path, series), read_rtstruct(received[0], series))
    assert dice["Vacbag"] >= 0.95, dice
    assert dice["Couch"] >= 0.9 and dice["Body"] >= 0.9, dice


def test_four_series_over_four_concurrent_associations(tmp_path, node, destination):
    """Four different phantoms (256 px, 12 slices from the bag's middle) sent at once by four storescu.

    Each storescu sends its series three times over (duplicates are acknowledged and ignored), which
    keeps the four associations open long enough to overlap: every series is still receiving when
    the first of them completes. At 256 px the shipped model keeps its accuracy (it runs at 256
    in-plane), so each RTSTRUCT is checked against its own truth.
    """
    phantoms = [write_phantom_series(seed, tmp_path / str(seed), size=256, n_slices=12)
                for seed in (1001, 1002, 1003, 1004)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: storescu(node.port, phantoms[i].ct_files * 3, aet=f"SCU{i}", timeout=120),
                                range(4)))
    for result in results:
        assert result.returncode == 0, result.stderr[-2000:]
        assert store_statuses(result.stderr) == ["Success"] * 36

    store = JobStore(node.output_directory)
    jobs = []
    for phantom in phantoms:
        series = read_series(phantom.ct_dir)
        uid = str(series.series_instance_uid)
        job = wait_job_final(store, uid, timeout=90)
        assert job.state is JobState.DONE and job.n_instances == 12, job.reason
        jobs.append(job)
        received = wait_until(lambda: rtstructs_at(destination).get(uid), 10, f"the RTSTRUCT of series {uid}")
        assert len(received) == 1
        dice = dice_per_label(read_rtstruct(phantom.rtstruct_path, series), read_rtstruct(received[0], series))
        assert dice["Vacbag"] >= 0.9, (uid, dice)
    times = [{entry["state"]: entry["time"] for entry in job.history} for job in jobs]
    assert max(t["received"] for t in times) < min(t["queued"] for t in times), times  # all four open at once
    assert len({job.calling_aet for job in jobs}) == 4


def _rt_plan(path: Path) -> Path:
    ds = Dataset()
    ds.SOPClassUID = RT_PLAN_STORAGE
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "RTPLAN"
    ds.PatientID = "PLAN01"
    ds.PatientName = "Plan^Only"
    ds.RTPlanLabel = "LONE PLAN"
    ds.RTPlanGeometry = "PATIENT"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return path


def _send_raw_with_pynetdicom(port: int, path: Path) -> int:
    """C-STORE the bytes of ``path`` as they are (pynetdicom's chunked send does not decode them)."""
    from pynetdicom import AE, _config

    meta = dcmread(path, stop_before_pixels=True, force=True).file_meta
    ae = AE(ae_title="RAWSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        assoc = ae.associate("127.0.0.1", port, ae_title="VACSEG")
        assert assoc.is_established
        try:
            rsp = assoc.send_c_store(path)
        finally:
            assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
    return int(rsp.Status)


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_bad_input_fails_cleanly_and_node_keeps_answering(tmp_path, node):
    """No IPP, mixed orientations, a lone RT Plan: failed jobs with reasons; truncated and hostile
    instances: refusing statuses. The node logs each and still answers C-ECHO."""
    store = JobStore(node.output_directory)

    no_ipp = write_series(tmp_path / "no_ipp", 3)
    for path in no_ipp:
        ds = dcmread(path)
        del ds.ImagePositionPatient
        ds.save_as(path)
    mixed = write_series(tmp_path / "mixed", 3)
    ds = dcmread(mixed[1])
    ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    ds.save_as(mixed[1])
    plan = _rt_plan(tmp_path / "plan.dcm")
    for files in (no_ipp, mixed, [plan]):
        result = storescu(node.port, files)
        assert result.returncode == 0 and store_statuses(result.stderr) == ["Success"] * len(files), result.stderr

    expected = {  # series -> (start of the job's failure reason, text it must contain)
        str(dcmread(no_ipp[0]).SeriesInstanceUID): (
            "MissingTagError: ", "has no ImagePositionPatient: cannot place the slice in space."),
        str(dcmread(mixed[0]).SeriesInstanceUID): (
            "InconsistentSeriesError: Series ", "mixes orientations: ImageOrientationPatient [0.0, 1.0, 0.0, 0.0"),
        str(dcmread(plan).SeriesInstanceUID): (
            "ProcessorError: Series is not CT: ", f"{dcmread(plan).SOPInstanceUID}.dcm has Modality 'RTPLAN'."),
    }
    for uid, (prefix, detail) in expected.items():
        job = wait_job_final(store, uid, timeout=60)
        assert job.state is JobState.FAILED
        assert job.reason.startswith(prefix) and detail in job.reason, job.reason
        # The worker logs after it records the state (and runs at a lower CPU priority): wait for the lines.
        wait_until(lambda: f"Job {job.job_id} -> failed ({job.reason}" in node.log(), 10, "the failure logged")
        wait_until(lambda: re.search(rf"Processing job {job.job_id} \(series {uid}\) failed", node.log()), 10,
                   "the processing failure logged")
    assert ECHO_OK in echoscu(node.port).stderr

    # Files cut short: storescu refuses to send them, so their bytes go out unchanged through pynetdicom.
    # Cut in the header, the UIDs are gone: refused with 0xC212 (missing attribute).
    whole = write_series(tmp_path / "cut", 1)[0]
    cut = tmp_path / "cut_header.dcm"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    refused = storescu(node.port, [cut])
    assert refused.returncode != 0 and "Bad DICOM file" in refused.stderr
    assert _send_raw_with_pynetdicom(node.port, cut) == 0xC212
    assert "Refusing instance from RAWSCU@127.0.0.1: missing StudyInstanceUID, SeriesInstanceUID" in node.log()
    assert job_for(store, str(dcmread(whole).SeriesInstanceUID)) is None
    # Cut in the pixel data, the header still decodes: refused with 0xC210 (cannot understand), since the
    # native pixel data is shorter than Rows x Columns x BitsAllocated needs; no job is created.
    whole = write_phantom_series(1006, tmp_path / "cut_px", size=64, n_slices=1).ct_files[0]
    cut = tmp_path / "cut_pixels.dcm"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size * 3 // 4])
    assert _send_raw_with_pynetdicom(node.port, cut) == 0xC210
    sop_uid = str(dcmread(whole, stop_before_pixels=True).SOPInstanceUID)
    assert re.search(rf"Refusing instance {re.escape(sop_uid)} from RAWSCU@127.0.0.1: the pixel data holds \d+ bytes "
                     r"where Rows, Columns and BitsAllocated need 8192", node.log())
    assert job_for(store, str(dcmread(whole, stop_before_pixels=True).SeriesInstanceUID)) is None
    assert ECHO_OK in echoscu(node.port).stderr

    # UIDs with path characters: refused with 0xC211, nothing written outside the node's folder.
    hostile = dcmread(write_series(tmp_path / "hostile", 1)[0])
    hostile.SeriesInstanceUID = "1.2/../../../escaped"
    hostile.SOPInstanceUID = hostile.file_meta.MediaStorageSOPInstanceUID = "1.2.3/../../../escaped_sop"
    hostile.save_as(tmp_path / "hostile.dcm")
    result = storescu(node.port, [tmp_path / "hostile.dcm"], verbosity="-d")
    assert "0xc211" in result.stderr.lower(), result.stderr[-2000:]
    assert "Refusing instance from STORESCU@127.0.0.1 with an invalid UID" in node.log()
    assert not list(tmp_path.rglob("escaped*")) and not list(node.output_directory.parent.rglob("escaped*"))
    assert ECHO_OK in echoscu(node.port).stderr
    assert node.proc.poll() is None


def test_full_disk_refuses_with_a700_and_node_keeps_answering(tmp_path):
    """The free-space floor (``--min-free-mb`` far above the free space) is checked by the SCP before
    anything is written, so no processor runs: the stand-in stands for the bundle here."""
    files = write_series(tmp_path / "s", 2)
    config = tmp_path / "node.toml"
    config.write_text('processor = "vacseg_monai.testing.processors:StandInProcessor"\n'
                      "[processor_args]\nuse_read_series = false\n")
    proc = node_process(tmp_path / "out", tmp_path / "node.log",
                       ["--config", str(config), "--min-free-mb", "1e12", "-v"])
    try:
        proc.start()
        result = storescu(proc.port, files, verbosity="-d")
        assert "0xa700: Refused: Out of resources" in result.stderr, result.stderr[-2000:]
        assert "Refusing instance from STORESCU@127.0.0.1: free space on" in proc.log()
        assert "below the floor of 1000000000000 MiB" in proc.log()
        assert JobStore(proc.output_directory).jobs() == []
        assert ECHO_OK in echoscu(proc.port).stderr
        assert proc.proc.poll() is None
    finally:
        proc.stop()


@pytest.mark.slow
def test_kill_9_while_exporting_then_destination_up_after_10_s(tmp_path):
    """kill -9 of SCP + worker after the acknowledgement, while the job waits to export to a destination
    that is down; the restarted node resumes the export and retries; the destination comes up 10 s after
    the send; the RTSTRUCT arrives exactly once."""
    phantom = write_phantom_series(1005, tmp_path, size=256, n_slices=12)
    series = read_series(phantom.ct_dir)
    uid = str(series.series_instance_uid)
    destination = StoreSCP(tmp_path / "dest", port=free_port())
    out = tmp_path / "out"
    node = node_process(out, tmp_path / "node1.log", node_args(destination.port))
    restarted = None
    try:
        node.start()
        sent = storescu(node.port, phantom.ct_files, timeout=60)
        sent_at = time.monotonic()
        assert sent.returncode == 0 and store_statuses(sent.stderr) == ["Success"] * 12, sent.stderr[-2000:]
        store = JobStore(out)
        attempt = f"Export attempt 1 to DEST@127.0.0.1:{destination.port} failed"
        wait_until(lambda: attempt in node.log(), 90, "a failed export attempt")
        node.kill9()
        job = job_for(store, uid)
        assert job.state is JobState.EXPORTING and job.attempts == 1
        outputs = [store.job_dir(job.job_id) / p for p in job.outputs]
        assert [p.is_file() for p in outputs] == [True]

        restarted = node_process(out, tmp_path / "node2.log", node_args(destination.port)).start()
        wait_until(lambda: attempt in restarted.log(), 60, "the restarted node retrying the export")
        assert job_for(store, uid).state is JobState.EXPORTING
        down_for = 10 - (time.monotonic() - sent_at)
        if down_for > 0:
            time.sleep(down_for)  # the destination stays down 10 s after the send, by design of the test
        assert job_for(store, uid).state is JobState.EXPORTING
        destination.start()

        job = wait_job_final(store, uid, timeout=30)
        assert job.state is JobState.DONE, job.reason
        assert job.attempts == 1  # resumed at export: inference was not run again
        wait_until(lambda: "Sent 1 instances to DEST@127.0.0.1" in restarted.log(), 10, "the export logged")
        received = rtstructs_at(destination)
        assert list(received) == [uid] and len(received[uid]) == 1
        dice = dice_per_label(read_rtstruct(phantom.rtstruct_path, series), read_rtstruct(received[uid][0], series))
        assert dice["Vacbag"] >= 0.9, dice
        assert restarted.stop() == 0
        assert len(destination.files()) == 1  # not sent again at shutdown
    finally:
        node.kill9()
        if restarted is not None:
            restarted.stop()
        destination.stop()


def test_a_corrected_structure_set_is_measured_against_the_models(tmp_path, node):
    """The shipped model's RTSTRUCT, its Vacbag redrawn 15 % wider and sent back with storescu: measured."""
    phantom = write_phantom_series(1001, tmp_path, n_slices=12)
    assert storescu(node.port, phantom.ct_files, timeout=120).returncode == 0
    store = JobStore(node.output_directory)
    job = wait_job_final(store, str(read_series(phantom.ct_dir).series_instance_uid), timeout=150)
    assert job.state is JobState.DONE, job.reason
    own = next(store.job_dir(job.job_id) / p for p in job.outputs if Path(p).name.startswith("RS."))
    sent = storescu(node.port, [edited_structure_set(own, tmp_path / "reviewed.dcm", "Vacbag", 1.15)])
    assert store_statuses(sent.stderr) == ["Success"], sent.stderr
    record = wait_until(lambda: (j := store.load(job.job_id)).corrections and j, 60, "the correction measured")
    entry = record.corrections[0]
    assert entry["status"] == "measured" and record.correction == entry["file"], entry["reason"]
    rois = {roi["roi"]: roi for roi in entry["rois"]}
    assert rois["Vacbag"]["dice"] < 0.95 and rois["Vacbag"]["added_path_mm"] > 100, rois["Vacbag"]
    assert rois["Vacbag"]["volume_change_cm3"] > 0
    for name in ("Couch", "Body"):
        assert (rois[name]["dice"], rois[name]["added_path_mm"]) == (1.0, 0.0), rois[name]
    assert ECHO_OK in echoscu(node.port).stderr
