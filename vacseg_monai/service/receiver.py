"""A small Storage SCP that keeps what it receives: the demo's stand-in for the TPS.

It stores each instance under ``folder`` and records when it arrived, so that a
caller can wait (with a timeout) for a result and measure the latency.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from vacseg_monai.service.uids import sanitize_uid

__all__ = ["ReceivedInstance", "ResultReceiver"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReceivedInstance:
    """One instance the receiver stored."""

    path: Path
    sop_class_uid: str
    modality: str
    arrived: float  # time.perf_counter() when stored


def _handle_store(event, receiver: ResultReceiver) -> int:
    ds = event.dataset
    ds.file_meta = event.file_meta
    name = f"{ds.get('Modality', 'OT')}.{sanitize_uid(str(ds.SOPInstanceUID))}.dcm"
    path = receiver.folder / name
    ds.save_as(path, enforce_file_format=True)
    receiver._record(ReceivedInstance(path, str(ds.SOPClassUID), str(ds.get("Modality", "")), time.perf_counter()))
    return 0x0000


class ResultReceiver:
    """Storage SCP on 127.0.0.1 writing every instance to ``folder``.

    Args:
        folder: where instances are written (created).
        ae_title: our AE title (default "RESULTS").
        port: port to listen on (default 0: any free port; see :attr:`port`).
        bind_address: default "127.0.0.1".
    """

    def __init__(self, folder: str | Path, *, ae_title: str = "RESULTS", port: int = 0,
                 bind_address: str = "127.0.0.1") -> None:
        self.folder = Path(folder)
        self.ae_title = ae_title
        self._address = (bind_address, port)
        self._received: list[ReceivedInstance] = []
        self._changed = threading.Condition()
        self._server = None

    def _record(self, item: ReceivedInstance) -> None:
        with self._changed:
            self._received.append(item)
            self._changed.notify_all()
        logger.info("Received %s (%s)", item.path.name, item.modality)

    @property
    def port(self) -> int:
        """The port bound."""
        if self._server is None:
            raise RuntimeError("The receiver is not started; call start() first.")
        return self._server.server_address[1]

    def start(self) -> ResultReceiver:
        """Start listening; returns self."""
        self.folder.mkdir(parents=True, exist_ok=True)
        ae = AE(ae_title=self.ae_title)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax)
        ae.add_supported_context(Verification)
        self._server = ae.start_server(
            self._address, block=False, evt_handlers=[(evt.EVT_C_STORE, _handle_store, [self])]
        )
        return self

    def stop(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def __enter__(self) -> ResultReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_for(self, modality: str, count: int = 1, timeout: float = 60.0) -> list[ReceivedInstance]:
        """Wait until ``count`` instances of ``modality`` arrived; return them.

        Raises:
            TimeoutError: naming what arrived when ``timeout`` seconds pass first.
        """
        def matching() -> list[ReceivedInstance]:
            return [item for item in self._received if item.modality == modality]

        with self._changed:
            if not self._changed.wait_for(lambda: len(matching()) >= count, timeout=timeout):
                seen = sorted({item.modality for item in self._received})
                raise TimeoutError(
                    f"No {count} {modality} instance(s) within {timeout:.0f} s at {self.ae_title} port {self.port}; "
                    f"received {len(self._received)} instance(s) of {seen or 'nothing'}."
                )
            return matching()
