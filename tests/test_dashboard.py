"""The node's dashboard: the page in headless Chromium, the JSON API and /metrics after real DCMTK sends,
and its security rules (token, loopback, hostile paths, read-only), with the node as a real process."""

from __future__ import annotations

import http.client
import json
import re
import shutil
import ssl
import subprocess
import threading
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from benchmarks.dashboard_screenshot import mr_instance
from test_service_support import needs_dcmtk, node_process, write_series
from vacseg_monai.service.config import (
    Destination,
    NodeConfig,
    is_loopback,
    parse_node_args,
)
from vacseg_monai.service.dashboard import DashboardError, DashboardServer
from vacseg_monai.service.export import ExportError, export_with_retry
from vacseg_monai.service.jobs import JobState, JobStore
from vacseg_monai.testing.browser import chromium_available, chromium_dump_dom
from vacseg_monai.testing.peers import (
    StoreSCP,
    free_port,
    storescu,
    storescu_store_all,
    wait_until,
)

needs_chromium = pytest.mark.skipif(not chromium_available(), reason="chromium not installed")
STAND_IN_QA = "vacseg_monai.testing.processors:StandInWithQAProcessor"
TOKEN = "s3cret-token-of-the-dashboard-0123"
SCORES = {"Vacbag": 0.31, "Couch": 0.97, "Body": 0.99}


def get(port: int, path: str, *, method: str = "GET", token: str | None = None, context=None) -> tuple[int, dict, bytes]:
    """One request with the raw ``path`` (not normalised by any client library); (status, headers, body)."""
    if context is None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    else:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=20, context=context)
    try:
        conn.request(method, path, headers={"Authorization": f"Bearer {token}"} if token else {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def get_json(port: int, path: str, **kwargs) -> dict:
    status, _, body = get(port, path, **kwargs)
    assert status == 200, (path, status, body[:200])
    return json.loads(body)


def metric(text: str, name: str) -> float:
    """The value of one sample line ``name`` (with its labels) of a Prometheus text exposition."""
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match is not None, f"{name} not in the metrics"
    return float(match.group(1))


def node_toml(path: Path, http_port: int, **extra: object) -> Path:
    lines = [f'processor = "{STAND_IN_QA}"', "min_free_mb = 0", f"http_port = {http_port}"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in extra.items()]
    scores = ", ".join(f"{k} = {v}" for k, v in SCORES.items())
    lines += ["[processor_args]", "use_read_series = false", f"quality = {{{scores}}}"]
    path.write_text("\n".join(lines) + "\n")
    return path


def without_series_uid(source: Path, out: Path) -> Path:
    """A copy of an instance without SeriesInstanceUID (the SCP refuses it with 0xC212)."""
    ds = dcmread(source)
    del ds.SeriesInstanceUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out)
    return out


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    """The node with a stand-in processor and a destination: one job done, one failed, one still receiving."""
    tmp = tmp_path_factory.mktemp("dashboard")
    ct = write_series(tmp / "ct", 3)
    mr = mr_instance(ct[0], tmp / "mr" / "mr.dcm")
    bad = without_series_uid(ct[1], tmp / "bad" / "bad.dcm")
    http_port = free_port()
    dest = StoreSCP(tmp / "dest").start()
    args = ["--config", str(node_toml(tmp / "node.toml", http_port)), "--destination", f"127.0.0.1:{dest.port}:DEST"]
    proc = node_process(tmp / "node", tmp / "node.log", args)
    try:
        proc.start()
        storescu_store_all(proc.port, ct)
        assert storescu(proc.port, [mr]).returncode == 0
        refused = storescu(proc.port, [bad])
        assert "Received Store Response (Error: CannotUnderstand)" in refused.stderr, refused.stderr  # 0xC212
        store = JobStore(tmp / "node")
        wait_until(lambda: Counter(j.state for j in store.jobs()) == {JobState.DONE: 1, JobState.FAILED: 1}
                   and (store.job_dir(_done(store).job_id) / "qa.png").is_file(), 60, "a done and a failed job")
        # a job in progress: a series whose first instance is in and whose sender is still sending
        receiving = store.create(study_uid=str(dcmread(ct[0]).StudyInstanceUID), series_uid=generate_uid(),
                                 calling_aet="CT_SCANNER")
        shutil.copy(ct[2], store.series_dir(receiving.job_id) / "1.2.3.dcm")
        yield {"proc": proc, "port": http_port, "store": store, "ct": ct, "dest": dest, "tmp": tmp,
               "receiving": receiving.job_id}
    finally:
        proc.stop()
        dest.stop()


def _done(store: JobStore):
    return next(j for j in store.jobs() if j.state is JobState.DONE)


def _failed(store: JobStore):
    return next(j for j in store.jobs() if j.state is JobState.FAILED)


class _Elements(HTMLParser):
    """The start tags of a dumped DOM, each as (tag, attributes); text collected by element id."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[tuple[dict, str]] = []
        self._open: list[dict] = []

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        self.tags.append((tag, attributes))
        self._open.append(attributes)

    def handle_endtag(self, tag):
        if self._open:
            self._open.pop()

    def handle_data(self, data):
        if self._open:
            self.text.append((self._open[-1], data))


def rendered(url: str) -> _Elements:
    parser = _Elements()
    parser.feed(chromium_dump_dom(url, budget_ms=6000))
    return parser


@needs_dcmtk
@needs_chromium
def test_page_in_headless_chromium_shows_the_three_jobs_and_the_qa_picture(node):
    store = node["store"]
    done, failed = _done(store), _failed(store)
    page = rendered(f"http://127.0.0.1:{node['port']}/")
    rows = [a for tag, a in page.tags if tag == "tr" and "job" in (a.get("class") or "").split()]
    assert len(rows) == 3
    assert {r["data-job"]: r["data-state"] for r in rows} == {
        done.job_id: "done", failed.job_id: "failed", node["receiving"]: "received"}
    reasons = [text for attrs, text in page.text if attrs.get("class") == "reason" and text.strip()]
    assert reasons == [failed.reason] and "has Modality 'MR'" in failed.reason
    flags = [text for attrs, text in page.text if attrs.get("class") == "flag" and text.strip()]
    assert flags == ["⚑"]  # the done job: its Vacbag score 0.31 is flagged
    scores = sorted(text for attrs, text in page.text if "score" in (attrs.get("class") or ""))
    assert scores == ["Body 0.99", "Couch 0.97", "Vacbag 0.31!"]
    health = {a["data-health"] for tag, a in page.tags if "data-health" in a}
    assert {"disk", "queue", "worker", "model", "export"} <= health

    job_page = rendered(f"http://127.0.0.1:{node['port']}/jobs/{done.job_id}")
    images = [a for tag, a in job_page.tags if tag == "img" and a.get("id") == "qa"]
    assert len(images) == 1
    assert int(images[0]["data-natural-width"]) == 16  # the series' 16 columns, as the stand-in draws them
    history = [text for attrs, text in job_page.text if attrs.get("data-state")]
    assert history[:1] == ["done"] and history[1:] == ["received", "queued", "inferring", "exporting", "done"]
    outputs = [text for attrs, text in job_page.text if text.startswith("output/")]
    assert outputs == done.outputs

    failed_page = rendered(f"http://127.0.0.1:{node['port']}/jobs/{failed.job_id}")
    assert [text for attrs, text in failed_page.text if attrs.get("id") == "reason"] == [failed.reason]
    assert [a for tag, a in failed_page.tags if a.get("id") == "qa-missing"]


@needs_dcmtk
def test_api_and_metrics_after_a_storescu_send(node):
    port, store = node["port"], node["store"]
    done, failed = _done(store), _failed(store)
    listing = get_json(port, "/api/jobs")
    assert listing["counts"] == {"done": 1, "failed": 1, "received": 1}
    rows = {row["job_id"]: row for row in listing["jobs"]}
    assert [row["job_id"] for row in listing["jobs"]] == [node["receiving"], failed.job_id, done.job_id]  # newest first
    assert rows[done.job_id]["n_instances"] == 3 and rows[done.job_id]["flagged"] == ["Vacbag"]
    assert rows[done.job_id]["quality"]["Vacbag"] == {"score": 0.31, "flagged": True}
    assert rows[done.job_id]["patient_id"] == str(dcmread(node["ct"][0]).PatientID)
    assert rows[done.job_id]["patient_name"] is None  # not without --http-show-names
    assert 0 < rows[done.job_id]["latency_s"] < 60
    assert rows[failed.job_id]["reason"] == failed.reason and rows[failed.job_id]["latency_s"] is None
    assert rows[node["receiving"]]["n_instances"] == 1  # counted on disk while the series arrives

    detail = get_json(port, f"/api/jobs/{done.job_id}")
    assert [h["state"] for h in detail["history"]] == ["received", "queued", "inferring", "exporting", "done"]
    assert detail["qa_picture"] is True and detail["outputs"][0]["file"] == done.outputs[0]
    assert detail["outputs"][0]["bytes"] == (store.job_dir(done.job_id) / done.outputs[0]).stat().st_size
    assert detail["export"]["ok"] is True and detail["export"]["attempts"] == 1
    assert detail["export"]["destination"] == f"DEST@127.0.0.1:{node['dest'].port}"
    status, headers, body = get(port, f"/api/jobs/{done.job_id}/qa.png")
    assert status == 200 and headers["Content-Type"] == "image/png" and body[:8] == b"\x89PNG\r\n\x1a\n"

    health = get_json(port, "/api/health")
    assert health["queue_length"] == 0 and health["in_progress"] == 1
    assert health["worker"]["alive"] and health["worker"]["ready"] and health["worker"]["processor"] == STAND_IN_QA
    assert health["worker"]["bundle_version"] == json.loads(
        (Path(health["worker"]["bundle"]) / "configs" / "metadata.json").read_text())["version"]
    assert health["last_export"]["job_id"] == done.job_id and health["last_export"]["ok"] is True
    assert health["disk"]["floor_bytes"] == 0 and health["disk"]["free_bytes"] > 0
    assert health["counters"] == {"instances_received": 4, "corrections_received": 0, "refused": {"0xC212": 1}}

    status, headers, body = get(port, "/metrics")
    text = body.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert metric(text, "vacseg_instances_received_total") == 4  # 3 CT + 1 MR acknowledged
    assert metric(text, 'vacseg_store_refusals_total{status="0xC212"}') == 1
    for state, count in {"done": 1, "failed": 1, "received": 1, "queued": 0, "review": 0}.items():
        assert metric(text, f'vacseg_jobs{{state="{state}"}}') == count
    assert metric(text, "vacseg_job_latency_seconds_count") == 1
    assert metric(text, 'vacseg_job_latency_seconds_bucket{le="+Inf"}') == 1
    assert metric(text, "vacseg_job_latency_seconds_sum") == pytest.approx(rows[done.job_id]["latency_s"], abs=0.01)
    assert metric(text, 'vacseg_job_stage_seconds_count{stage="export"}') == 1
    assert metric(text, 'vacseg_job_stage_seconds_count{stage="inference"}') == 2  # the done and the failed job
    assert metric(text, "vacseg_export_attempts_total") == 1 and metric(text, "vacseg_export_retries_total") == 0
    assert metric(text, "vacseg_flagged_jobs") == 1 and metric(text, "vacseg_worker_up") == 1


@needs_dcmtk
def test_hostile_paths_and_ids_get_404_and_writes_405(node):
    port, store = node["port"], node["store"]
    done = _done(store)
    record = (store.job_dir(done.job_id) / "job.json").read_bytes()
    hostile = [
        "/api/jobs/..", "/api/jobs/%2e%2e", "/api/jobs/%2E%2E/job.json", "/api/jobs/../../etc/passwd",
        "/api/jobs/%2e%2e%2f%2e%2e%2fetc%2fpasswd", "/jobs/..%2f..%2fjob.json", "/etc/passwd", "//etc/passwd",
        f"/api/jobs/{done.job_id}/job.json", f"/api/jobs/{done.job_id}/../{done.job_id}",
        f"/api/jobs/{done.job_id}/%2e%2e/%2e%2e/node.log", f"/api/jobs/{done.job_id}/series",
        f"/api/jobs/{done.job_id}%2fjob.json", f"/api/jobs/{done.job_id}x", "/api/jobs/00000000000000000000-abcdef",
        "/api/jobs/" + "9" * 200, "/api/jobs/1.2.3", "/static/../dashboard.py", "/static/app.js/..",
        "/api/jobs/%00", "/jobs/not-a-job", "/api/jobs/" + str(store.job_dir(done.job_id)),
    ]
    for path in hostile:
        status, _, body = get(port, path)
        assert status == 404, (path, status)
        assert b"root:" not in body and b"job_id" not in body
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        status, headers, _ = get(port, f"/api/jobs/{done.job_id}", method=method)
        assert status == 405 and headers["Allow"] == "GET, HEAD"
    status, headers, body = get(port, "/api/jobs", method="HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0
    assert (store.job_dir(done.job_id) / "job.json").read_bytes() == record  # nothing changed


def test_a_non_loopback_dashboard_needs_a_token_or_tls(tmp_path, capsys):
    for address in ("0.0.0.0", "192.0.2.10", "::"):
        assert not is_loopback(address)
        with pytest.raises(DashboardError, match=rf"Refusing to serve the dashboard on {re.escape(address)} "):
            DashboardServer(tmp_path, address=address)  # the check comes before any bind
        with pytest.raises(ValueError, match=r"not a loopback address, without protection: give `--http-token`"):
            NodeConfig(bind_address=address, http_port=8080, output_directory=tmp_path)
    assert NodeConfig(bind_address="0.0.0.0", http_port=8080, http_token=TOKEN).http_token == TOKEN
    assert NodeConfig(bind_address="0.0.0.0", http_port=8080, http_bind_address="127.0.0.1").dashboard_address == "127.0.0.1"
    assert NodeConfig(bind_address="0.0.0.0").http_port is None  # no dashboard: nothing to protect
    with pytest.raises(ValueError, match="`http_token` must be at least 16 printable characters"):
        NodeConfig(http_port=8080, http_token="short")
    with pytest.raises(SystemExit) as exit_info:  # the node's command line refuses to start
        parse_node_args(["-od", str(tmp_path), "-ba", "0.0.0.0", "--http-port", "8080"], prog="serve_scp.py")
    assert exit_info.value.code == 2
    assert "The dashboard would listen on 0.0.0.0, which is not a loopback address" in capsys.readouterr().err


def _folder_with_one_job(root: Path) -> tuple[JobStore, str]:
    store = JobStore(root)
    files = write_series(root.parent / "series", 1)
    job = store.create(study_uid="1.2.3", series_uid="1.2.3.4")
    shutil.copy(files[0], store.series_dir(job.job_id) / "1.dcm")
    return store, job.job_id


def test_token_is_asked_of_every_data_route(tmp_path):
    store, job_id = _folder_with_one_job(tmp_path / "node")
    with DashboardServer(store.root, token=TOKEN) as server:
        for path in ("/api/jobs", f"/api/jobs/{job_id}", "/api/health", "/metrics", f"/api/jobs/{job_id}/qa.png"):
            status, headers, body = get(server.port, path)
            assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer"), path
            assert get(server.port, path, token=TOKEN[:-1] + "x")[0] == 401
        assert get_json(server.port, "/api/jobs", token=TOKEN)["counts"] == {"received": 1}
        status, _, body = get(server.port, "/")  # the page holds no data; it asks for the token
        assert status == 200 and b'id="token-form"' in body
        assert get(server.port, "/api/jobs/..", token=TOKEN)[0] == 404


def test_patient_names_only_with_show_names(tmp_path):
    store, job_id = _folder_with_one_job(tmp_path / "node")
    name = str(dcmread(next(store.series_dir(job_id).glob("*.dcm"))).PatientName)
    assert name
    with DashboardServer(store.root) as server:
        assert get_json(server.port, "/api/jobs")["jobs"][0]["patient_name"] is None
        assert name.encode() not in get(server.port, f"/api/jobs/{job_id}")[2]
    with DashboardServer(store.root, show_names=True) as server:
        assert get_json(server.port, "/api/jobs")["jobs"][0]["patient_name"] == name


def test_https_with_the_nodes_certificate(tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    store, _ = _folder_with_one_job(tmp_path / "node")
    from vacseg_monai.service.scp import make_server_ssl_context

    with DashboardServer(store.root, ssl_context=make_server_ssl_context(cert, key)) as server:
        assert server.url.startswith("https://")
        client = ssl.create_default_context(cafile=str(cert))
        status, _, body = get(server.port, "/api/jobs", context=client)
        assert status == 200 and json.loads(body)["counts"] == {"received": 1}
        with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
            get(server.port, "/api/jobs")  # plain HTTP to the HTTPS port gets no answer


def test_export_error_counts_the_attempts(tmp_path):
    files = write_series(tmp_path / "s", 1)
    with pytest.raises(ExportError, match="Gave up sending") as info:
        export_with_retry(files, Destination("127.0.0.1", free_port(), "NOBODY"), give_up_after=0.6,
                          initial_delay=0.1, max_delay=0.2)
    assert info.value.attempts >= 2


@needs_dcmtk
def test_node_keeps_receiving_while_the_page_is_hammered(tmp_path):
    ct = write_series(tmp_path / "ct", 40)
    http_port = free_port()
    proc = node_process(tmp_path / "node", tmp_path / "node.log",
                        ["--config", str(node_toml(tmp_path / "node.toml", http_port))])
    statuses: list[int] = []
    lock = threading.Lock()
    paths = ["/", "/api/jobs", "/api/health", "/metrics", "/static/app.js"]

    def hammer(worker: int) -> None:
        for i in range(40):
            status = get(http_port, paths[(worker + i) % len(paths)])[0]
            with lock:
                statuses.append(status)

    with proc:
        threads = [threading.Thread(target=hammer, args=(w,)) for w in range(5)]  # 5 x 40 = 200 requests
        for thread in threads:
            thread.start()
        storescu_store_all(proc.port, ct)  # every instance acknowledged with Success
        for thread in threads:
            thread.join(120)
        store = JobStore(tmp_path / "node")
        job = wait_until(lambda: next((j for j in store.jobs() if j.state is JobState.DONE), None), 60, "the job")
        metrics = get(http_port, "/metrics")[2].decode()
    assert statuses == [200] * 200
    assert job.n_instances == 40 and len(list(store.series_dir(job.job_id).glob("*.dcm"))) == 40
    assert metric(metrics, "vacseg_instances_received_total") == 40
