"""Orthanc as a real PACS peer, for the tests and the benchmarks.

:class:`OrthancProcess` runs Debian's ``Orthanc`` (1.10) with a JSON configuration it writes
into the test's folder: a free DICOM port and a free HTTP port, storage and index in that
folder, ``SyncStorageArea`` true (Orthanc's default, an fsync per stored file, kept explicit),
no authentication, ``RemoteAccessAllowed`` false, the DICOM modalities it may send to (all on
127.0.0.1) and optional Lua scripts. Like the peers of :mod:`vacseg_monai.testing.peers` it is
ready once it answers C-ECHO (and its REST API answers), it always stops, and it is a context
manager.

Orthanc 1.10 has no option to bind its listening sockets to one address: both ports listen on
every interface. ``RemoteAccessAllowed`` false makes the HTTP server refuse any client but the
local host; the DICOM port accepts echo and store from any host unless ``DicomAlwaysAllowEcho``
and ``DicomAlwaysAllowStore`` are set false (then only the registered modalities may, with
``DicomCheckModalityHost`` checking their address). Everything here connects to 127.0.0.1 only.

:class:`OrthancRest` is a small client of Orthanc's REST API on the standard library
(``urllib.request``, every request with a timeout): listings, ``/tools/find``, series and
instance tags, ``/modalities/<name>/store`` and jobs.
"""

from __future__ import annotations

import json
import logging
import shutil
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Self

from vacseg_monai.testing.peers import PeerProcess, free_port, wait_until

__all__ = ["OrthancError", "OrthancProcess", "OrthancRest", "orthanc_available"]

logger = logging.getLogger(__name__)

#: The address every connection to Orthanc uses.
LOOPBACK = "127.0.0.1"


def orthanc_available() -> bool:
    """True when the ``Orthanc`` server binary is on the PATH (Debian: ``apt-get install orthanc``)."""
    return shutil.which("Orthanc") is not None


class OrthancError(RuntimeError):
    """A REST call to Orthanc failed: the method, the URL, the HTTP status (if any) and Orthanc's answer."""


class OrthancRest:
    """A client of one Orthanc's REST API, on the standard library.

    Args:
        port: Orthanc's HTTP port on 127.0.0.1.
        timeout: seconds each request may take (default 30).
    """

    def __init__(self, port: int, timeout: float = 30) -> None:
        self.base_url = f"http://{LOOPBACK}:{port}"
        self.timeout = timeout

    def request(self, method: str, path: str, body: object = None, *, timeout: float | None = None) -> Any:
        """``method`` ``path`` with ``body`` (JSON-encoded unless bytes); the decoded JSON answer (or text).

        Raises:
            OrthancError: on an HTTP error status or a failed connection, naming the request.
        """
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base_url + path, data=data, method=method)
        if data is not None and not isinstance(body, bytes):
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout if timeout is None else timeout) as answer:
                raw = answer.read()
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")[:2000]
            raise OrthancError(f"Orthanc {method} {path} failed with HTTP {error.code}: {detail}") from error
        except (urllib.error.URLError, OSError) as error:
            raise OrthancError(f"Orthanc {method} {path} at {self.base_url} failed: {error}") from error
        text = raw.decode(errors="replace")
        try:
            return json.loads(text) if text else None
        except json.JSONDecodeError:
            return text

    def get(self, path: str, **query: object) -> Any:
        """GET ``path`` (``query`` as URL parameters); the decoded answer."""
        suffix = f"?{urllib.parse.urlencode(query)}" if query else ""
        return self.request("GET", path + suffix)

    def post(self, path: str, body: object = None, *, timeout: float | None = None) -> Any:
        """POST ``body`` to ``path``; the decoded answer."""
        return self.request("POST", path, body, timeout=timeout)

    def alive(self) -> bool:
        """True when ``/system`` answers."""
        try:
            return bool(self.get("/system"))
        except OrthancError:
            return False

    def studies(self) -> list[str]:
        """Orthanc's ids of every study."""
        return self.get("/studies")

    def series(self) -> list[str]:
        """Orthanc's ids of every series."""
        return self.get("/series")

    def instances(self) -> list[str]:
        """Orthanc's ids of every instance."""
        return self.get("/instances")

    def series_info(self, series_id: str) -> dict:
        """``/series/<id>``: its main DICOM tags, its instances, its parent study, whether it is stable."""
        return self.get(f"/series/{series_id}")

    def find(self, level: str, query: Mapping[str, str]) -> list[dict]:
        """``/tools/find`` at ``level`` ("Patient", "Study", "Series", "Instance") with ``query``, expanded."""
        return self.post("/tools/find", {"Level": level, "Query": dict(query), "Expand": True})

    def series_by_modality(self, modality: str) -> list[dict]:
        """Every series of ``modality`` (e.g. "CT", "RTSTRUCT"), expanded as by :meth:`series_info`."""
        return self.find("Series", {"Modality": modality})

    def simplified_tags(self, instance_id: str) -> dict:
        """``/instances/<id>/simplified-tags``: keyword → value, sequences as lists of dicts."""
        return self.get(f"/instances/{instance_id}/simplified-tags")

    def store(self, modality: str, resources: Sequence[str], *, timeout: float = 60) -> dict:
        """Send ``resources`` (Orthanc ids) to ``modality`` with C-STORE, synchronously; Orthanc's answer.

        Raises:
            OrthancError: if Orthanc reports the store failed (e.g. the modality refused or is down).
        """
        body = {"Resources": list(resources), "Synchronous": True, "Timeout": int(timeout)}
        return self.post(f"/modalities/{modality}/store", body, timeout=timeout + 10)

    def jobs(self) -> list[dict]:
        """Every job Orthanc knows, expanded (state, type, error)."""
        return self.get("/jobs", expand="")


class OrthancProcess(PeerProcess):
    """Orthanc on free loopback ports with a configuration written into ``folder``.

    Args:
        folder: the test's folder for Orthanc: ``orthanc.json``, ``storage/``, ``index/`` and
            ``orthanc.log`` go there (created).
        aet: its DICOM AE title (default "ORTHANC").
        modalities: symbolic name → (AE title, port) of each DICOM peer it may send to, all on
            127.0.0.1 (default none).
        lua_scripts: Lua scripts it runs (default none).
        sync_storage: ``SyncStorageArea``, an fsync of each stored file before the acknowledgement
            (default True, Orthanc's own default).
        stable_age: ``StableAge``, seconds without a new instance before a series is stable and
            ``OnStableSeries`` fires (default 1; Orthanc's default is 60).
        settings: more configuration keys, applied last (default none). :meth:`start` waits for a C-ECHO
            from an unregistered AE title, so ``DicomAlwaysAllowEcho`` must stay true.
    """

    kind = "Orthanc"

    def __init__(self, folder: Path, *, aet: str = "ORTHANC", modalities: Mapping[str, tuple[str, int]] | None = None,
                 lua_scripts: Sequence[Path] = (), sync_storage: bool = True, stable_age: int = 1,
                 settings: Mapping[str, object] | None = None) -> None:
        if shutil.which("Orthanc") is None:
            raise RuntimeError("Orthanc is not installed (Debian: apt-get install orthanc).")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.aet = aet
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.rest = OrthancRest(self.http_port)
        self.config = {
            "Name": f"vacseg test Orthanc {aet}",
            "DicomServerEnabled": True,
            "DicomAet": aet,
            "DicomPort": self.dicom_port,
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "index"),
            "SyncStorageArea": sync_storage,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomModalities": {name: [ae, LOOPBACK, port] for name, (ae, port) in (modalities or {}).items()},
            "LuaScripts": [str(Path(script).resolve()) for script in lua_scripts],
            "StableAge": stable_age,
            "Plugins": [],
            "SaveJobs": False,
            "ConcurrentJobs": 2,
        }
        self.config.update(settings or {})
        self.config_path = self.folder / "orthanc.json"
        self.config_path.write_text(json.dumps(self.config, indent=2))
        super().__init__(["Orthanc", str(self.config_path)], self.dicom_port, aet, self.folder / "orthanc.log")

    def start(self, timeout: float = 60) -> Self:
        """Start Orthanc and return once it answers C-ECHO and its REST API answers.

        Raises:
            RuntimeError: if it exits first (the tail of its log included).
            TimeoutError: if it does not answer within ``timeout`` seconds (it is then killed).
        """
        super().start(timeout)
        try:
            wait_until(self.rest.alive, timeout, f"Orthanc's REST API on port {self.http_port}", interval=0.1)
        except BaseException:
            self.kill9()
            raise
        logger.info("Orthanc %s up: DICOM port %d, HTTP port %d", self.aet, self.dicom_port, self.http_port)
        return self
