"""The node behind a real Orthanc (Debian's 1.10), on 127.0.0.1, with DCMTK storescu as the scanner.

Orthanc runs with the shipped ``docs/orthanc/orthanc.json`` (hosts, ports and AE titles rewritten for
loopback, ``StableAge`` 2 s) and the shipped ``docs/orthanc/vacseg_routing.lua``; the node runs as
``scripts/serve_scp.py`` with :class:`test_service_support.BandProcessor`, which writes the project's
RTSTRUCT from HU bands, so the round trip carries a real structure set without waiting for the model.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from test_service_support import REPO, needs_dcmtk, node_process, write_banded_series, write_series
from vacseg_monai.service.jobs import Job, JobState, JobStore
from vacseg_monai.testing.orthanc import OrthancError, OrthancProcess, orthanc_available
from vacseg_monai.testing.peers import (
    NodeProcess,
    StoreSCP,
    echo_ok,
    echoscu,
    free_port,
    storescu_store_all,
    wait_until,
)

pytestmark = [needs_dcmtk, pytest.mark.skipif(not orthanc_available(), reason="Orthanc not installed")]


def test_orthanc_process_answers_stores_forwards_and_stops(tmp_path):
    files = write_series(tmp_path / "ct", 3)
    first = dcmread(files[0])
    with StoreSCP(tmp_path / "dest", aet="DEST") as dest, \
            OrthancProcess(tmp_path / "orthanc", aet="PACS", modalities={"dest": ("DEST", dest.port)}) as orthanc:
        echo = echoscu(orthanc.dicom_port, aec="PACS")
        assert "Received Echo Response (Success)" in echo.stderr, echo.stderr
        storescu_store_all(orthanc.dicom_port, files, aec="PACS")
        rest = orthanc.rest
        assert len(rest.instances()) == 3 and len(rest.series()) == 1 and len(rest.studies()) == 1
        (series,) = rest.series_by_modality("CT")
        assert series["MainDicomTags"]["SeriesInstanceUID"] == str(first.SeriesInstanceUID)
        tags = rest.simplified_tags(series["Instances"][0])
        assert tags["StudyInstanceUID"] == str(first.StudyInstanceUID) and tags["Modality"] == "CT"
        assert len([p for p in (tmp_path / "orthanc" / "storage").rglob("*") if p.is_file()]) == 3
        config = json.loads(orthanc.config_path.read_text())
        assert (config["SyncStorageArea"], config["RemoteAccessAllowed"]) == (True, False)
        assert config["DicomModalities"] == {"dest": ["DEST", "127.0.0.1", dest.port]}
        answer = rest.store("dest", [series["ID"]])
        assert (answer["InstancesCount"], answer["FailedInstancesCount"]) == (3, 0), answer
        assert sorted(dcmread(p).SOPInstanceUID for p in dest.files()) == sorted(dcmread(f).SOPInstanceUID
                                                                                for f in files)
        with pytest.raises(OrthancError, match=r"^Orthanc GET /series/no-such-id failed with HTTP 404"):
            rest.series_info("no-such-id")
        with pytest.raises(OrthancError, match=r"^Orthanc POST /modalities/nowhere/store failed with HTTP 404"):
            rest.store("nowhere", [series["ID"]])
    assert orthanc.proc.poll() == 0
    assert not echo_ok(orthanc.dicom_port, "PACS")
    assert "Orthanc has stopped" in orthanc.log()


DOCS = REPO / "docs" / "orthanc"
ROUTING = DOCS / "vacseg_routing.lua"
NODE_ARGS = ["--processor", "test_service_support:BandProcessor", "--min-free-mb", "0", "--export-retry-initial",
             "0.25", "-v"]
#: Keys of the shipped orthanc.json a test replaces: its ports, folders and scripts are the test's own.
REPLACED = {"DicomAet", "DicomPort", "HttpPort", "StorageDirectory", "IndexDirectory", "LuaScripts", "DicomModalities"}
WAIT_S = 120


@pytest.fixture
def stack():
    """Processes entered here are stopped at the end of the test, last started first, whatever happens."""
    with contextlib.ExitStack() as processes:
        yield processes


def clinic_orthanc(folder: Path, peers: dict[str, tuple[str, int]], lua_scripts: list[Path] = ()) -> OrthancProcess:
    """Orthanc with the shipped ``docs/orthanc/orthanc.json``, its hosts, ports and AE titles rewritten for loopback.

    ``peers`` maps each modality name to (AE title, port); a name the shipped file lacks (a second node) copies
    its "vacseg" entry. ``StableAge`` becomes 2 s so that the Lua script fires soon.
    """
    shipped = json.loads((DOCS / "orthanc.json").read_text())
    entries = shipped["DicomModalities"]
    modalities = {name: {**entries.get(name, entries["vacseg"]), "AET": aet, "Host": "127.0.0.1", "Port": port}
                  for name, (aet, port) in peers.items()}
    settings = {key: value for key, value in shipped.items() if key not in REPLACED}
    settings.update(DicomModalities=modalities, StableAge=2)
    return OrthancProcess(folder, aet=shipped["DicomAet"], lua_scripts=lua_scripts, settings=settings)


def routing_script(folder: Path, nodes: list[str]) -> Path:
    """The shipped Lua script with its node list replaced by ``nodes``."""
    text = ROUTING.read_text()
    shipped = 'local NODES = { "vacseg" }'
    assert text.count(shipped) == 1, f"{ROUTING} no longer has the line {shipped!r}"
    path = folder / ROUTING.name
    path.write_text(text.replace(shipped, "local NODES = { " + ", ".join(f'"{n}"' for n in nodes) + " }"))
    return path


def series_hash(uid: str) -> int:
    """The Lua script's SeriesHash, to predict which node gets a series."""
    value = 0
    for byte in uid.encode():
        value = (value * 31 + byte) % 2147483647
    return value


def start_node(stack: contextlib.ExitStack, folder: Path, aet: str, port: int, orthanc: OrthancProcess) -> NodeProcess:
    """The node ``aet`` on ``port`` with :class:`BandProcessor`, sending its results to ``orthanc``."""
    args = [*NODE_ARGS, "--destination", f"127.0.0.1:{orthanc.dicom_port}:{orthanc.aet}"]
    node = node_process(folder, folder.parent / f"{folder.name}.log", args, ae_title=aet, port=port)
    return stack.enter_context(node)


def results_in(orthanc: OrthancProcess, n: int) -> list[dict]:
    """The RTSTRUCT series in Orthanc, once there are ``n`` of them."""
    return wait_until(lambda: len(found := orthanc.rest.series_by_modality("RTSTRUCT")) >= n and found, WAIT_S,
                      f"{n} RTSTRUCT series in Orthanc", interval=0.25)


def check_result(orthanc: OrthancProcess, rtstruct: dict, ct: list[Path]) -> None:
    """``rtstruct`` (an Orthanc series) is one instance in the CT's study referring to the CT series."""
    first = dcmread(ct[0], stop_before_pixels=True)
    (ct_series,) = orthanc.rest.find("Series", {"SeriesInstanceUID": str(first.SeriesInstanceUID)})
    assert rtstruct["ParentStudy"] == ct_series["ParentStudy"]
    assert len(rtstruct["Instances"]) == 1
    tags = orthanc.rest.simplified_tags(rtstruct["Instances"][0])
    assert tags["StudyInstanceUID"] == str(first.StudyInstanceUID)
    (frame,) = tags["ReferencedFrameOfReferenceSequence"]
    assert frame["FrameOfReferenceUID"] == str(first.FrameOfReferenceUID)
    (study,) = frame["RTReferencedStudySequence"]
    (series,) = study["RTReferencedSeriesSequence"]
    assert series["SeriesInstanceUID"] == str(first.SeriesInstanceUID)
    assert len(series["ContourImageSequence"]) == len(ct)
    assert sorted(roi["ROIName"] for roi in tags["StructureSetROISequence"]) == ["Body", "Couch", "Vacbag"]
    study_instances = orthanc.rest.get(f"/studies/{ct_series['ParentStudy']}/instances")
    assert len(study_instances) == len(ct) + 1


def finished_jobs(folder: Path, n: int) -> list[Job]:
    """The node's jobs once ``n`` of them are finished: the result reaches Orthanc a moment before the node
    records its export as done."""
    def finished() -> list[Job]:
        jobs = JobStore(folder).jobs()
        return jobs if sum(job.state in (JobState.DONE, JobState.FAILED) for job in jobs) >= n else []
    return wait_until(finished, WAIT_S, f"{n} finished jobs of the node in {folder}")


def test_pacs_round_trip_through_the_rest_api(tmp_path, stack):
    ct = write_banded_series(tmp_path / "ct")
    node_port = free_port()
    orthanc = clinic_orthanc(tmp_path / "orthanc", {"scanner": ("CT_SCANNER", free_port()),
                                                    "vacseg": ("VACSEG", node_port)})
    stack.enter_context(orthanc)
    node = start_node(stack, tmp_path / "node", "VACSEG", node_port, orthanc)
    with pytest.raises(RuntimeError, match=r"storescu stored 0 of 6 files"):
        storescu_store_all(orthanc.dicom_port, ct, aet="INTRUDER", aec="ORTHANC")  # not a registered modality
    storescu_store_all(orthanc.dicom_port, ct, aet="CT_SCANNER", aec="ORTHANC")
    (ct_series,) = orthanc.rest.series_by_modality("CT")
    answer = orthanc.rest.store("vacseg", [ct_series["ID"]])
    assert (answer["InstancesCount"], answer["FailedInstancesCount"]) == (len(ct), 0), answer

    (rtstruct,) = results_in(orthanc, 1)
    check_result(orthanc, rtstruct, ct)
    (job,) = finished_jobs(node.output_directory, 1)
    assert job.state is JobState.DONE and job.n_instances == len(ct) and job.calling_aet == "ORTHANC", job
    assert len(orthanc.rest.instances()) == len(ct) + 1


@pytest.mark.slow
def test_pacs_round_trip_through_the_shipped_routing_script(tmp_path, stack):
    ct = write_banded_series(tmp_path / "ct")
    node_port = free_port()
    tps = stack.enter_context(StoreSCP(tmp_path / "tps", aet="TPS"))
    orthanc = clinic_orthanc(tmp_path / "orthanc", {"scanner": ("CT_SCANNER", free_port()),
                                                    "vacseg": ("VACSEG", node_port), "tps": ("TPS", tps.port)},
                             lua_scripts=[ROUTING])
    stack.enter_context(orthanc)
    node = start_node(stack, tmp_path / "node", "VACSEG", node_port, orthanc)
    storescu_store_all(orthanc.dicom_port, ct, aet="CT_SCANNER", aec="ORTHANC")

    (rtstruct,) = results_in(orthanc, 1)
    check_result(orthanc, rtstruct, ct)
    (sent,) = wait_until(tps.files, WAIT_S, "the RTSTRUCT at the TPS")
    assert dcmread(sent).SOPInstanceUID == orthanc.rest.simplified_tags(rtstruct["Instances"][0])["SOPInstanceUID"]
    jobs = wait_until(lambda: all_done(orthanc) and orthanc.rest.jobs(), WAIT_S, "Orthanc's store jobs")
    assert sorted(job["Content"]["RemoteAet"] for job in jobs) == ["TPS", "VACSEG"]
    (job,) = finished_jobs(node.output_directory, 1)  # the RTSTRUCT was not routed back to the node
    assert job.state is JobState.DONE and job.n_instances == len(ct), job
    assert "vacseg routing: series" in orthanc.log()


def all_done(orthanc: OrthancProcess) -> bool:
    """True when every job of Orthanc has ended; a failed one fails the test with its error."""
    jobs = orthanc.rest.jobs()
    failed = [job for job in jobs if job["State"] == "Failure"]
    assert not failed, f"Orthanc jobs failed: {failed}"
    return all(job["State"] == "Success" for job in jobs)


@pytest.mark.slow
def test_two_nodes_behind_one_orthanc_process_each_series_exactly_once(tmp_path, stack):
    names = ["vacseg", "vacseg2"]
    series = {name: [] for name in names}  # three series for each node, by the script's hash
    while min(map(len, series.values())) < 3:
        uid = generate_uid()
        if len(chosen := series[names[series_hash(uid) % len(names)]]) < 3:
            chosen.append(uid)
    cts = {uid: write_banded_series(tmp_path / "ct" / uid, n_slices=4, series_uid=uid)
           for uids in series.values() for uid in uids}
    ports = {name: free_port() for name in names}
    tps = stack.enter_context(StoreSCP(tmp_path / "tps", aet="TPS"))
    peers = {"scanner": ("CT_SCANNER", free_port()), "tps": ("TPS", tps.port),
             **{name: (name.upper(), port) for name, port in ports.items()}}
    orthanc = stack.enter_context(clinic_orthanc(tmp_path / "orthanc", peers,
                                                 lua_scripts=[routing_script(tmp_path, names)]))
    nodes = {name: start_node(stack, tmp_path / name, name.upper(), port, orthanc) for name, port in ports.items()}
    storescu_store_all(orthanc.dicom_port, [f for files in cts.values() for f in files], aet="CT_SCANNER",
                       aec="ORTHANC")

    results = results_in(orthanc, len(cts))
    wait_until(lambda: len(tps.files()) >= len(cts), WAIT_S, f"{len(cts)} RTSTRUCTs at the TPS")
    wait_until(lambda: all_done(orthanc), WAIT_S, "Orthanc's store jobs")
    for name, node in nodes.items():
        jobs = finished_jobs(node.output_directory, len(series[name]))
        assert sorted(job.series_uid for job in jobs) == sorted(series[name]), name  # each series once, here
        assert all(job.state is JobState.DONE and job.n_instances == 4 for job in jobs), jobs
        assert len(list((node.output_directory / "jobs").iterdir())) == 3
    assert len(results) == len(cts) and len(tps.files()) == len(cts)
    referenced = []
    for rtstruct in results:
        tags = orthanc.rest.simplified_tags(rtstruct["Instances"][0])
        ref = tags["ReferencedFrameOfReferenceSequence"][0]["RTReferencedStudySequence"][0]
        referenced.append(ref["RTReferencedSeriesSequence"][0]["SeriesInstanceUID"])
    assert sorted(referenced) == sorted(cts)  # one RTSTRUCT per series
