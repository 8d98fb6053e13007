"""Durable receive: every acknowledged instance survives kill -9 of the node, and only those are kept.

The node runs as a real process (``scripts/serve_scp.py``) in its own process group; the sender is
pynetdicom's SCU in this process, storing the instances of one series one by one on one association
and recording each C-STORE response. After N successful responses the node's whole group (SCP and
worker) is killed with SIGKILL, like a power cut of the software; the job folder must then hold exactly
those N instances, each a complete file whose pixel data is the one sent, and a restarted node must
recover and process them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from test_service_support import needs_dcmtk, node_process
from vacseg_monai.service.jobs import JobState, JobStore
from vacseg_monai.testing.peers import wait_until

pytestmark = needs_dcmtk

SLICES = 20
ACKNOWLEDGED = 7
STAND_IN = "vacseg_monai.testing.processors:StandInProcessor"


def _random_series(out_dir: Path, n_slices: int, seed: int = 14) -> list[Path]:
    """A 64 x 64 CT series whose every slice has its own random pixels, so that no two files match."""
    from vacseg_monai.dicom.synthetic import write_ct_series

    rng = np.random.default_rng(seed)
    image = rng.integers(-1000, 1500, size=(64, 64, n_slices), dtype=np.int16)
    return write_ct_series(image, out_dir, pixel_spacing=(1.0, 1.0), slice_thickness=2.0,
                           study_instance_uid=generate_uid(), series_instance_uid=generate_uid())


def _serve(tmp_path: Path):
    config = tmp_path / "node.toml"
    config.write_text("min-free-mb = 0\n[processor_args]\nuse_read_series = false\n")
    args = ["--config", str(config), "--processor", STAND_IN, "-q"]
    return node_process(tmp_path / "node", tmp_path / "node.log", args).start(timeout=60)


def _store_until(port: int, files: list[Path], n_acknowledged: int):
    """Store ``files`` one by one on one association until ``n_acknowledged`` succeeded.

    Returns the SOP Instance UIDs whose C-STORE got a Success response, and the association, left open
    (neither released nor aborted): the node is to be killed with it in progress.
    """
    ae = AE(ae_title="KILLTEST")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    assoc = ae.associate("127.0.0.1", port, ae_title="VACSEG")
    assert assoc.is_established, "the node refused the association"
    acknowledged = []
    try:
        for path in files[:n_acknowledged]:
            ds = dcmread(path)
            status = assoc.send_c_store(ds)
            assert "Status" in status, f"no C-STORE response for {path.name}"
            assert status.Status == 0x0000, f"C-STORE of {path.name} answered 0x{status.Status:04X}"
            acknowledged.append(str(ds.SOPInstanceUID))
    except BaseException:
        assoc.abort()
        raise
    return acknowledged, assoc


def test_kill_9_after_n_acknowledgements_keeps_exactly_those_instances(tmp_path):
    files = _random_series(tmp_path / "series", SLICES)
    sent = {str(dcmread(p).SOPInstanceUID): dcmread(p).pixel_array for p in files}
    node = _serve(tmp_path)
    assoc = None
    try:
        acknowledged, assoc = _store_until(node.port, files, ACKNOWLEDGED)
        node.kill9()  # SCP and worker die with the association open, mid-series
        assoc.abort()
        store = JobStore(tmp_path / "node")
        jobs = store.jobs()
        assert [job.state for job in jobs] == [JobState.RECEIVED]
        series_dir = store.series_dir(jobs[0].job_id)
        on_disk = sorted(series_dir.glob("*.dcm"))
        assert sorted(p.stem for p in on_disk) == sorted(acknowledged)
        for path in on_disk:
            ds = dcmread(path)  # the whole file, pixel data included
            assert ds.SOPInstanceUID == path.stem
            np.testing.assert_array_equal(ds.pixel_array, sent[path.stem])
        assert not list(series_dir.glob(".*")), "a temporary file is left in the job folder"
        node = _serve(tmp_path)  # recovers the job left in `received`
        job = wait_until(lambda: (j := store.load(jobs[0].job_id)).state in (JobState.DONE, JobState.FAILED) and j,
                         60, "the recovered job to finish")
        assert job.state is JobState.DONE, job.reason
        assert job.n_instances == ACKNOWLEDGED
        assert [h["state"] for h in job.history][:2] == ["received", "queued"]
        output = dcmread(store.job_dir(job.job_id) / job.outputs[0])
        assert output.SeriesDescription == f"vacseg stand-in result for {ACKNOWLEDGED} instances"
    finally:
        if assoc is not None and assoc.is_alive():
            assoc.abort()
        node.stop(15)


def test_node_associations_poll_with_the_short_dul_delay(tmp_path):
    """The node's side of each association looks for the next PDU every DUL_LOOP_DELAY_S, not pynetdicom's 1 ms."""
    from vacseg_monai.service.config import NodeConfig
    from vacseg_monai.service.scp import DUL_LOOP_DELAY_S, DicomNode

    config = NodeConfig(port=0, output_directory=tmp_path / "node", min_free_mb=0, processor=STAND_IN,
                        processor_args={"use_read_series": False})
    with DicomNode(config) as node:
        ae = AE(ae_title="DELAYTEST")
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", node.port, ae_title="VACSEG")
        try:
            assert assoc.is_established
            served = wait_until(lambda: node._server.active_associations, 10, "the node's side of the association")
            assert [a.dul._run_loop_delay for a in served] == [DUL_LOOP_DELAY_S]
            assert assoc.dul._run_loop_delay == 0.001  # the sender's side keeps pynetdicom's default
        finally:
            assoc.release()
