"""Storage SCU sending a job's results (and optionally its CT) to the destination.

One association per job, proposing exactly the (SOP Class, Transfer Syntax)
pairs of the files to send; files are sent from disk as they are. When the
destination cannot be reached the whole send is retried with exponential
backoff until ``give_up_after`` seconds have passed; then
:class:`ExportError` is raised and the caller keeps the files.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from pathlib import Path

from pydicom import dcmread
from pynetdicom import AE

from vacseg_monai.service.config import Destination

__all__ = [
    "ExportConnectionError",
    "ExportError",
    "find_dicom_files",
    "export_with_retry",
    "make_client_ssl_context",
    "presentation_contexts_for",
    "send_files",
]

logger = logging.getLogger(__name__)

_MAX_CONTEXTS = 128


class ExportError(RuntimeError):
    """Sending results failed for good (rejected instances, or retries exhausted).

    Attributes:
        attempts: how many times :func:`export_with_retry` tried to send (0 when raised elsewhere).
    """

    attempts: int = 0


class ExportConnectionError(ExportError):
    """The destination could not be reached or the association failed; worth retrying."""


def presentation_contexts_for(files: list[Path]) -> list[tuple[str, str]]:
    """The distinct (SOP Class UID, Transfer Syntax UID) pairs of ``files``.

    Args:
        files: DICOM files in the file format (with file meta).

    Raises:
        ExportError: if a file cannot be read or lacks the file meta UIDs, or
            more than 128 contexts would be needed.
    """
    pairs: dict[tuple[str, str], None] = {}
    for path in files:
        try:
            meta = dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"]).file_meta
            pair = (str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))
        except Exception as exc:
            raise ExportError(f"Cannot read SOP class / transfer syntax of {path}: {exc}") from exc
        pairs[pair] = None
    if len(pairs) > _MAX_CONTEXTS:
        raise ExportError(f"{len(pairs)} presentation contexts needed, at most {_MAX_CONTEXTS} allowed.")
    return list(pairs)


def make_client_ssl_context(ca: Path | None, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    """TLS context for the export association.

    Args:
        ca: PEM CA bundle to verify the destination; None uses the system store.
        cert: our PEM certificate for mutual TLS (default None).
        key: private key of ``cert`` (default None).

    Raises:
        ValueError: if a file cannot be loaded.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca) if ca else None)
    try:
        if cert is not None:
            context.load_cert_chain(certfile=str(cert), keyfile=str(key) if key else None)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"Cannot load TLS files cert={cert} key={key}: {exc}") from exc
    return context


def send_files(
    files: list[Path],
    destination: Destination,
    *,
    calling_aet: str = "VACSEG",
    ssl_context: ssl.SSLContext | None = None,
    acse_timeout: float = 30.0,
    dimse_timeout: float = 60.0,
    network_timeout: float = 60.0,
    raise_on_failure: bool = True,
) -> list[tuple[Path, int]]:
    """Send ``files`` over one association.

    Args:
        files: DICOM files to send.
        destination: the Storage SCP.
        calling_aet: our AE title (default "VACSEG").
        ssl_context: TLS client context (default None: plain TCP).
        acse_timeout: seconds (default 30).
        dimse_timeout: seconds (default 60).
        network_timeout: seconds (default 60).
        raise_on_failure: raise :class:`ExportError` if any status is a
            failure (default True); otherwise just return the statuses.

    Returns:
        (file, status) for every file.

    Raises:
        ExportConnectionError: association rejected/aborted or no response; retry.
        ExportError: the destination answered a failure status for some file.
    """
    if not files:
        return []
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = acse_timeout
    ae.dimse_timeout = dimse_timeout
    ae.network_timeout = network_timeout
    ae.connection_timeout = min(network_timeout, 10.0)
    for sop_class, syntax in presentation_contexts_for(files):
        ae.add_requested_context(sop_class, syntax)
    tls_args = (ssl_context, destination.host) if ssl_context is not None else None
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title, tls_args=tls_args)
    if not assoc.is_established:
        raise ExportConnectionError(f"Cannot associate with {destination}.")
    results: list[tuple[Path, int]] = []
    try:
        for path in files:
            rsp = assoc.send_c_store(path)
            if "Status" not in rsp:
                raise ExportConnectionError(f"No C-STORE response from {destination} for {path.name}.")
            results.append((path, int(rsp.Status)))
    finally:
        if assoc.is_established:
            assoc.release()
    failed = [(p.name, f"0x{s:04X}") for p, s in results if s != 0 and not (0xB000 <= s <= 0xBFFF or s == 0x0107)]
    if failed and raise_on_failure:
        raise ExportError(f"{destination} refused {len(failed)} of {len(files)} instances: {failed[:5]}")
    logger.info("Sent %d instances to %s (%d refused)", len(files), destination, len(failed))
    return results


def find_dicom_files(folder: Path) -> list[Path]:
    """Files under ``folder`` (recursively) that start with the DICOM preamble + ``DICM``.

    Args:
        folder: directory to search.

    Raises:
        FileNotFoundError: if ``folder`` is not a directory.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a directory.")
    found = []
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with open(path, "rb") as handle:
                head = handle.read(132)
            if len(head) == 132 and head[128:] == b"DICM":
                found.append(path)
    return found


def export_with_retry(
    files: list[Path],
    destination: Destination,
    *,
    give_up_after: float = 600.0,
    initial_delay: float = 1.0,
    max_delay: float = 30.0,
    stop: threading.Event | None = None,
    **send_kwargs,
) -> int:
    """Send ``files``, retrying connection failures with exponential backoff.

    Args:
        files: DICOM files to send.
        destination: the Storage SCP.
        give_up_after: seconds after the first attempt when no new attempt is
            started (default 600).
        initial_delay: first delay between attempts in seconds (default 1).
        max_delay: delay cap in seconds (default 30).
        stop: event that aborts the waiting between attempts (default None).
        **send_kwargs: passed to :func:`send_files`.

    Returns:
        The number of attempts made.

    Raises:
        ExportError: on a refusal status, when retries are exhausted, or when
            ``stop`` is set; the message names the last failure.
    """
    stop = stop or threading.Event()
    start = time.monotonic()
    delay = max(initial_delay, 0.05)
    attempt = 0
    while True:
        attempt += 1
        try:
            send_files(files, destination, **send_kwargs)
            return attempt
        except ExportConnectionError as exc:
            elapsed = time.monotonic() - start
            remaining = give_up_after - elapsed
            if remaining <= 0:
                raise _counted(ExportError(
                    f"Gave up sending to {destination} after {attempt} attempts in {elapsed:.0f} s: {exc}"
                ), attempt) from exc
            wait = min(delay, max_delay, remaining)
            logger.warning("Export attempt %d to %s failed (%s); retrying in %.1f s", attempt, destination, exc, wait)
            if stop.wait(wait):
                raise _counted(ExportError(f"Export to {destination} interrupted by shutdown after {attempt} attempts."),
                               attempt) from exc
            delay *= 2
        except ExportError as exc:  # refused: not retried
            raise _counted(exc, attempt)


def _counted(exc: ExportError, attempts: int) -> ExportError:
    exc.attempts = attempts
    return exc
