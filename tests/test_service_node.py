"""End-to-end tests of the node with real DCMTK peers on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from test_service_support import REPO, modalities, needs_dcmtk, node_process, write_series
from vacseg_monai.service.config import Destination, NodeConfig
from vacseg_monai.service.jobs import JobState, JobStore
from vacseg_monai.service.scp import DicomNode
from vacseg_monai.service.worker import ProcessorError, check_modalities, process_job
from vacseg_monai.testing.peers import (
    NodeProcess,
    StoreSCP,
    echoscu,
    free_port,
    storescu,
    storescu_store_all,
    wait_until,
)
from vacseg_monai.testing.processors import StandInProcessor

pytestmark = needs_dcmtk


def make_node(tmp_path: Path, **overrides) -> DicomNode:
    values = dict(
        port=0, output_directory=tmp_path / "node", min_free_mb=0, series_timeout=0,
        processor="test_service_support:FailOnDescriptionProcessor", export_retry_initial=0.25,
        export_retry_max=1.0, export_timeout=30, acse_timeout=10, dimse_timeout=10, network_timeout=10,
        log_level="INFO", processor_args={"use_read_series": False},
    )
    values.update(overrides)
    return DicomNode(NodeConfig(**values))


def jobs_in(store: JobStore, *states: JobState):
    return [job for job in store.jobs() if job.state in states]


def wait_finished(store: JobStore, n: int, timeout: float = 30):
    return wait_until(lambda: len(jobs_in(store, JobState.DONE, JobState.FAILED)) >= n and store.jobs(),
                      timeout, f"{n} finished jobs")


@pytest.fixture
def destination(tmp_path):
    scp = StoreSCP(tmp_path / "dest").start()
    try:
        yield scp
    finally:
        scp.stop()


def test_series_round_trip_with_echo_resend_and_non_ct(tmp_path, destination):
    """echo; a series + its resend + a second series interleaved; a failing one; an MR object."""
    a = write_series(tmp_path / "a", 3)
    b = write_series(tmp_path / "b", 2, study_uid=str(dcmread(a[0]).StudyInstanceUID))
    bad = write_series(tmp_path / "bad", 2, description="please fail")
    mr = dcmread(a[0])
    mr.Modality = "MR"
    mr.SOPClassUID = mr.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    mr.SeriesInstanceUID = generate_uid()
    mr.SOPInstanceUID = mr.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    (tmp_path / "mr").mkdir()
    mr.save_as(tmp_path / "mr" / "mr.dcm")

    node = make_node(tmp_path, destination=Destination("127.0.0.1", destination.port, destination.aet),
                     export_series=True, processor_args={"use_read_series": True})
    with node:
        assert "Received Echo Response (Success)" in echoscu(node.port).stderr
        result = storescu(node.port, [a[0], b[0], a[1], b[1], a[2], a[0]])  # interleaved + a resend
        assert result.returncode == 0, result.stderr
        assert result.stderr.count("Received Store Response (Success)") == 6
        assert storescu(node.port, bad).returncode == 0
        assert storescu(node.port, [tmp_path / "mr" / "mr.dcm"]).returncode == 0
        wait_finished(node.store, 4)
        assert "Received Echo Response (Success)" in echoscu(node.port).stderr  # still answering
        jobs = {job.series_uid: job for job in node.store.jobs()}
        series_a = str(dcmread(a[0]).SeriesInstanceUID)
        series_b = str(dcmread(b[0]).SeriesInstanceUID)
        assert jobs[series_a].state is JobState.DONE and jobs[series_a].n_instances == 3
        assert jobs[series_b].state is JobState.DONE and jobs[series_b].n_instances == 2
        failed = jobs[str(dcmread(bad[0]).SeriesInstanceUID)]
        assert failed.state is JobState.FAILED
        assert failed.reason == f"ValueError: refusing series {dcmread(bad[0]).SeriesInstanceUID} as asked"
        mr_job = jobs[str(mr.SeriesInstanceUID)]
        assert mr_job.state is JobState.FAILED and "has Modality 'MR'" in mr_job.reason
        # the SCP recorded each modality with its first file; the worker checked that, not the headers again
        assert mr_job.modalities == {"MR": f"{mr.SOPInstanceUID}.dcm"}
        assert jobs[series_a].modalities == {"CT": f"{dcmread(a[0]).SOPInstanceUID}.dcm"}
        # stored bytes are the bytes sent (no decode/re-encode): same pixel data and UIDs
        stored = node.store.series_dir(jobs[series_a].job_id) / f"{dcmread(a[1]).SOPInstanceUID}.dcm"
        assert dcmread(stored).PixelData == dcmread(a[1]).PixelData
        # destination got 2 stand-in results + the 5 CT instances sent back
        received = wait_until(lambda: len(destination.files()) >= 7 and destination.files(), 10, "7 files")
        assert modalities(received) == ["CT"] * 5 + ["OT"] * 2


def test_modality_check_reads_headers_only_for_a_job_the_scp_did_not_record(tmp_path):
    files = write_series(tmp_path / "s", 2)
    ds = dcmread(files[1])
    ds.Modality = "MR"
    ds.save_as(files[1])
    with pytest.raises(ProcessorError, match=rf"^Series is not CT: {files[1].name} has Modality 'MR'\.$"):
        check_modalities(tmp_path / "s", ["CT"])  # a recovered job: the headers are read
    check_modalities(tmp_path / "s", ["CT", "MR"])
    check_modalities(tmp_path / "missing", ["CT"], {"CT": "a.dcm"})  # recorded by the SCP: no file is read
    with pytest.raises(ProcessorError, match=r"^Series is not CT: b\.dcm has Modality 'RTPLAN'\.$"):
        check_modalities(tmp_path / "missing", ["CT"], {"CT": "a.dcm", "RTPLAN": "b.dcm"})
    with pytest.raises(ProcessorError, match="No instances in"):
        check_modalities(tmp_path / "missing", ["CT"])


def test_series_spread_over_associations_uses_quiet_timer(tmp_path):
    files = write_series(tmp_path / "s", 4)
    with make_node(tmp_path, series_timeout=1.5) as node:
        assert storescu(node.port, files[:2]).returncode == 0
        assert storescu(node.port, files[1:]).returncode == 0  # overlaps: one resend
        assert [j.state for j in node.store.jobs()] == [JobState.RECEIVED]
        job = wait_finished(node.store, 1, timeout=20)[0]
        assert job.state is JobState.DONE and job.n_instances == 4
        assert len(node.store.jobs()) == 1


def test_allow_list_rejects_unknown_calling_aet(tmp_path):
    with make_node(tmp_path, allowed_aet=["GOODSCU"], allowed_host=["127.0.0.1"]) as node:
        assert "Received Echo Response (Success)" in echoscu(node.port, aet="GOODSCU").stderr
        rejected = echoscu(node.port, aet="EVILSCU")
        assert rejected.returncode != 0
        assert "Association Rejected" in rejected.stderr and "Calling AE Title Not Recognized" in rejected.stderr
    with make_node(tmp_path, allowed_host=["10.9.8.7"]) as node:
        rejected = echoscu(node.port, aet="GOODSCU")
        assert rejected.returncode != 0 and "Association Rejected" in rejected.stderr


def test_store_all_counts_a_success_per_file_and_names_a_refused_send(tmp_path):
    files = write_series(tmp_path / "s", 3)
    with make_node(tmp_path, allowed_aet=["CLINIC_TPS"]) as node:
        storescu_store_all(node.port, files, aet="CLINIC_TPS", connect_timeout=30)
        job = wait_finished(node.store, 1, timeout=20)[0]
        assert job.state is JobState.DONE and job.n_instances == 3
        with pytest.raises(RuntimeError, match=r"storescu stored 0 of 3 files \(exit "):
            storescu_store_all(node.port, files, aet="EVILSCU")


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_hostile_uid_cannot_escape_and_disk_floor_refuses(tmp_path):
    files = write_series(tmp_path / "s", 1)
    ds = dcmread(files[0])
    ds.SeriesInstanceUID = "1.2/../../../escaped"
    hostile = tmp_path / "hostile.dcm"
    ds.save_as(hostile)
    with make_node(tmp_path) as node:
        result = storescu(node.port, [hostile], verbosity="-d")
        assert "0xc211" in result.stderr.lower(), result.stderr[-2000:]
        assert not list(tmp_path.rglob("escaped*"))
        assert node.store.jobs() == []
    with make_node(tmp_path, min_free_mb=10**12) as node:
        result = storescu(node.port, files, verbosity="-d")
        assert "0xa700: Refused: Out of resources" in result.stderr
        assert node.store.jobs() == []


def test_destination_down_then_up(tmp_path, capfd):
    files = write_series(tmp_path / "s", 2)
    port = free_port()
    dest = StoreSCP(tmp_path / "dest", port=port)
    seen = []

    def worker_log_has(text: str) -> bool:
        seen.append(capfd.readouterr().err)  # the worker process logs to the inherited stderr
        return text in "".join(seen)

    try:
        with make_node(tmp_path, destination=Destination("127.0.0.1", port, "DEST")) as node:
            assert storescu(node.port, files).returncode == 0
            wait_until(lambda: worker_log_has(f"Export attempt 2 to DEST@127.0.0.1:{port} failed"), 20,
                       "two failed export attempts")
            assert [j.state for j in node.store.jobs()] == [JobState.EXPORTING]
            dest.start()
            job = wait_finished(node.store, 1, timeout=20)[0]
            assert job.state is JobState.DONE, job.reason
            assert modalities(dest.files()) == ["OT"]
    finally:
        dest.stop()


def test_destination_never_up_fails_job_and_keeps_files(tmp_path):
    files = write_series(tmp_path / "s", 1)
    with make_node(tmp_path, destination=Destination("127.0.0.1", free_port()), export_timeout=1.0) as node:
        assert storescu(node.port, files).returncode == 0
        job = wait_finished(node.store, 1, timeout=20)[0]
        assert job.state is JobState.FAILED and job.reason.startswith("export failed: Gave up sending")
        assert (node.store.job_dir(job.job_id) / job.outputs[0]).is_file()


def _serve(tmp_path: Path, processor: str, dest_port: int) -> NodeProcess:
    config = tmp_path / "node.toml"
    config.write_text("min-free-mb = 0\nexport_retry_initial = 0.25\n[processor_args]\nuse_read_series = false\n")
    args = ["--config", str(config), "--processor", processor, "--destination", f"127.0.0.1:{dest_port}:DEST", "-q"]
    return node_process(tmp_path / "node", tmp_path / "node.log", args).start(timeout=30)


def test_kill_9_after_acknowledge_then_restart_exports_exactly_once(tmp_path, destination):
    files = write_series(tmp_path / "s", 2)
    node = _serve(tmp_path, "test_service_support:BlockingProcessor", destination.port)
    try:
        assert storescu(node.port, files).returncode == 0
        store = JobStore(tmp_path / "node")
        wait_until(lambda: list(store.jobs_dir.glob("*/started")), 30, "processor started")
        node.kill9()  # node and worker die mid-job
        assert [j.state for j in store.jobs()] == [JobState.INFERRING]
        node = _serve(tmp_path, "vacseg_monai.testing.processors:StandInProcessor", destination.port)
        job = wait_finished(store, 1, timeout=30)[0]
        assert job.state is JobState.DONE and job.attempts == 2 and job.n_instances == 2
        assert len(destination.files()) == 1
        status = subprocess.run([sys.executable, str(REPO / "scripts" / "serve_scp.py"), "-od",
                                 str(tmp_path / "node"), "--status"], capture_output=True, text=True, timeout=60)
        assert job.job_id in status.stdout and " done " in status.stdout
    finally:
        node.stop(15)
    assert len(destination.files()) == 1  # not exported again on shutdown either


def test_tls_store_with_certificate_made_by_openssl(tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    files = write_series(tmp_path / "s", 2)
    from send_series import main as send_main  # scripts/ is on sys.path below

    with make_node(tmp_path, tls_cert=cert, tls_key=key) as node:
        assert send_main(["127.0.0.1", str(node.port), "-aec", "VACSEG", str(tmp_path / "s"),
                          "--tls-ca", str(cert)]) == 0
        job = wait_finished(node.store, 1, timeout=20)[0]
        assert job.state is JobState.DONE and job.n_instances == 2
        plain = storescu(node.port, files)  # a plain-TCP sender gets no association
        assert plain.returncode != 0
    assert len(node.store.jobs()) == 1


@pytest.fixture(autouse=True, scope="module")
def _scripts_on_path():
    sys.path.insert(0, str(REPO / "scripts"))
    yield
    sys.path.remove(str(REPO / "scripts"))


def test_worker_reports_ready_only_once_its_processor_is_loaded(tmp_path):
    node = make_node(tmp_path, worker_nice=7)
    with node:
        assert node.worker.wait_ready(60)
        # The worker runs below the SCP's CPU priority, so that receiving goes first.
        ours = os.getpriority(os.PRIO_PROCESS, 0)
        assert os.getpriority(os.PRIO_PROCESS, node.worker.pid) == min(ours + 7, 19)
    broken = make_node(tmp_path / "broken", processor="test_service_support:NoSuchProcessor")
    with broken:
        assert not broken.worker.wait_ready(3)


class _CrashBeforeDone(JobStore):
    """A job store whose process "dies" (SystemExit) when a job is about to be recorded done."""

    def transition(self, job_id, state, *, reason=None, **fields):
        if JobState(state) is JobState.DONE:
            raise SystemExit("simulated crash between the export and the done record")
        return super().transition(job_id, state, reason=reason, **fields)


def test_crash_after_export_resends_the_same_instance_and_then_never_again(tmp_path):
    """The one window where a result can go twice: exported, then a crash before `done` is on disk.

    The job resumes at `exporting` with the files already written, so the destination gets the
    same SOP instance (same SOPInstanceUID) again, not a second structure set; once `done`, never again.
    """
    series_dir = tmp_path / "ct"
    write_series(series_dir, n_slices=3)
    first = dcmread(sorted(series_dir.glob("*.dcm"))[0], stop_before_pixels=True)
    destination = StoreSCP(tmp_path / "dest", options=("+uf",)).start()  # +uf: a resend gets its own file
    try:
        config = NodeConfig(output_directory=tmp_path / "node", export_timeout=20, export_retry_initial=0.25,
                            destination=Destination("127.0.0.1", destination.port, destination.aet))  # fmt: skip
        crashing = _CrashBeforeDone(config.output_directory)
        job = crashing.create(study_uid=str(first.StudyInstanceUID), series_uid=str(first.SeriesInstanceUID))
        for path in series_dir.glob("*.dcm"):
            (crashing.series_dir(job.job_id) / path.name).write_bytes(path.read_bytes())
        crashing.transition(job.job_id, JobState.QUEUED)
        processor = StandInProcessor(use_read_series=False)

        with pytest.raises(SystemExit, match="simulated crash"):
            process_job(crashing, job.job_id, processor, config)
        wait_until(lambda: len(destination.files()) == 1, 10, "the first delivery")
        store = JobStore(config.output_directory)  # the restarted node
        stuck = store.load(job.job_id)
        assert stuck.state is JobState.EXPORTING
        sent_uid = str(dcmread(store.job_dir(job.job_id) / stuck.outputs[0]).SOPInstanceUID)

        assert process_job(store, job.job_id, processor, config).state is JobState.DONE
        assert process_job(store, job.job_id, processor, config).state is JobState.DONE  # done is left alone
        wait_until(lambda: len(destination.files()) >= 2, 10, "the resend")
        received = [str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in destination.files()]
        assert received == [sent_uid, sent_uid]
        assert store.load(job.job_id).attempts == 1  # not inferred again
    finally:
        destination.stop()


def test_a_large_instance_is_received_into_a_file_and_stored_byte_for_byte(tmp_path):
    """A 32 MB instance goes to disk as pynetdicom receives it (no copy held in memory) and is moved
    into its job unchanged: the stored data set is byte for byte the one sent."""
    from vacseg_monai.dicom.synthetic import write_ct_series
    from vacseg_monai.service.scp import INCOMING_DIR, receive_into_files

    image = np.full((4096, 4096, 1), -1000, np.int16)
    image[1000:3000, 1000:3000] = 40
    sent = write_ct_series(image, tmp_path / "big", pixel_spacing=(0.1, 0.1), slice_thickness=1.0)[0]
    node = make_node(tmp_path)
    with node, receive_into_files(node.incoming):  # as run_node receives
        result = storescu(node.port, [sent], timeout=60)
        assert result.returncode == 0 and "Received Store Response (Success)" in result.stderr, result.stderr
        job = wait_finished(node.store, 1)[0]
        stored = node.store.series_dir(job.job_id) / f"{dcmread(sent, stop_before_pixels=True).SOPInstanceUID}.dcm"
        assert _data_set_bytes(stored) == _data_set_bytes(sent)
        assert list((node.store.root / INCOMING_DIR).iterdir()) == []  # nothing left behind
        assert any(t.name.startswith("store-header") for t in threading.enumerate())
    assert not [t.name for t in threading.enumerate() if t.name.startswith("store-header")]  # stopped with the node


def test_header_is_read_beside_the_fsync_without_the_pixel_data(tmp_path):
    """The assembler's helper parses a received file's header, pixel data left on disk (length known)."""
    from vacseg_monai.dicom.synthetic import write_ct_series
    from vacseg_monai.service.scp import SeriesAssembler

    sent = write_ct_series(np.full((128, 128, 1), 40, np.int16), tmp_path / "ct", pixel_spacing=(1.0, 1.0),
                           slice_thickness=2.0)[0]
    assembler = SeriesAssembler(JobStore(tmp_path / "node"), lambda job_id: None)
    try:
        header = assembler.read_header_beside(sent).result(timeout=10)
    finally:
        assembler.close()
    full = dcmread(sent)
    assert header.SeriesInstanceUID == full.SeriesInstanceUID and header.SOPInstanceUID == full.SOPInstanceUID
    element = header.get_item("PixelData", keep_deferred=True)
    assert element.value is None and element.length == len(full.PixelData) == full.Rows * full.Columns * 2


def _data_set_bytes(path: Path) -> bytes:
    """The bytes of a DICOM file after its preamble and file meta group (whose length (0002,0000) gives)."""
    data = path.read_bytes()
    assert data[128:132] == b"DICM" and data[132:138] == b"\x02\x00\x00\x00UL", path
    return data[144 + int.from_bytes(data[140:144], "little") :]


def test_worker_is_told_of_a_series_while_it_arrives(tmp_path):
    """The SCP tells the worker about a job at its first instance; the worker offers the files to the
    processor's prefetch hook while the series is still open (here: 1.5 s of quiet after the release)."""
    files = write_series(tmp_path / "ct", 4)
    node = make_node(tmp_path, series_timeout=1.5, processor="test_service_support:PrefetchRecorder")
    with node:
        assert storescu(node.port, files).returncode == 0
        job = wait_finished(node.store, 1)[0]
        assert job.state is JobState.DONE, job.reason
        seen = (node.store.job_dir(job.job_id) / "prefetched").read_text().split()
        assert sorted(seen) == sorted(f"{dcmread(f).SOPInstanceUID}.dcm" for f in files)


def test_in_process_receiver_is_not_affected_by_the_node(tmp_path):
    """The node changes no process-wide setting; only `receive_into_files` does, and restores them."""
    import tempfile

    from pynetdicom import _config

    from vacseg_monai.service.export import send_files
    from vacseg_monai.service.receiver import ResultReceiver
    from vacseg_monai.service.scp import receive_into_files

    settings = (_config.STORE_RECV_CHUNKED_DATASET, tempfile.gettempdir())
    files = write_series(tmp_path / "ct", 2)
    node = make_node(tmp_path)
    with ResultReceiver(tmp_path / "received", ae_title="RX") as receiver:
        node.start()
        try:
            assert (_config.STORE_RECV_CHUNKED_DATASET, tempfile.gettempdir()) == settings
            send_files(files[:1], Destination("127.0.0.1", receiver.port, "RX"), calling_aet="TEST")
            (item,) = receiver.wait_for("CT", timeout=30)
            assert dcmread(item.path).SOPInstanceUID == dcmread(files[0]).SOPInstanceUID
            assert list(node.incoming.iterdir()) == []  # nothing of the receiver's in the node's folder
            send_files(files, Destination("127.0.0.1", node.port, node.config.ae_title), calling_aet="TEST")
            with receive_into_files(node.incoming):  # what run_node does in the node's own process
                assert _config.STORE_RECV_CHUNKED_DATASET is True
                assert tempfile.gettempdir() == str(node.incoming)
                again = write_series(tmp_path / "ct2", 2)
                send_files(again, Destination("127.0.0.1", node.port, node.config.ae_title), calling_aet="TEST")
                assert list(node.incoming.iterdir()) == []  # received there, then renamed into the job
            assert (_config.STORE_RECV_CHUNKED_DATASET, tempfile.gettempdir()) == settings
            finished = wait_finished(node.store, 2)
            stored = sorted(p.name for job in finished for p in (node.store.job_dir(job.job_id) / "series").iterdir())
            expected = sorted(f"{dcmread(p).SOPInstanceUID}.dcm" for p in [*files, *again])
            assert stored == expected  # both ways of receiving store every instance under its UID
        finally:
            node.stop()
