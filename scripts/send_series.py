#!/usr/bin/env python
"""Send every DICOM file in a folder to a Storage SCP over one association: a treatment planning system's stand-in.

Real exports sometimes leave SOPClassUID, SOPInstanceUID, SeriesInstanceUID or StudyInstanceUID
empty (storescu then refuses them). By default such files are sent as a planning system that
imported them would: the SOP class and instance from the file meta, the series and study UIDs
derived from the slices' shared tags, exactly as the series reader fills them
(:func:`vacseg_monai.dicom.series.fill_missing_uids`); ``--as-is`` sends the files unchanged.

Example:
    python scripts/send_series.py 127.0.0.1 11112 -aec VACSEG ct_folder/
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

from pydicom import dcmread

from vacseg_monai.dicom.series import fill_missing_uids
from vacseg_monai.logs import setup_logging
from vacseg_monai.service.config import Destination
from vacseg_monai.service.export import (
    ExportError,
    find_dicom_files,
    make_client_ssl_context,
    send_files,
)


def _setup_argparser(args: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        prog="send_series.py",
        description="Send every DICOM file in FOLDER (recursively) to a Storage SCP and print the statuses.",
    )
    net = parser.add_argument_group("Network")
    net.add_argument("addr", metavar="HOST", help="host name or IP address of the peer")
    net.add_argument("port", type=int, help="TCP/IP port number of the peer")
    net.add_argument("-aet", "--calling-aet", default="SENDSERIES", metavar="AETITLE", help="our AE title (default SENDSERIES)")
    net.add_argument("-aec", "--called-aet", default="ANY-SCP", metavar="AETITLE", help="the peer's AE title (default ANY-SCP)")
    net.add_argument("-ta", "--acse-timeout", type=float, default=30.0, metavar="SEC", help="ACSE timeout (default 30)")
    net.add_argument("-td", "--dimse-timeout", type=float, default=60.0, metavar="SEC", help="DIMSE timeout (default 60)")
    net.add_argument("-tn", "--network-timeout", type=float, default=60.0, metavar="SEC", help="network timeout (default 60)")
    inp = parser.add_argument_group("Input")
    inp.add_argument("folder", type=Path, metavar="FOLDER", help="folder with the DICOM files (searched recursively)")
    inp.add_argument(
        "--as-is", action="store_true",
        help="send the files unchanged (default: fill empty SOP class/instance, series and study UIDs as the reader does)",
    )
    tls = parser.add_argument_group("TLS")
    tls.add_argument("--tls-ca", type=Path, metavar="PEM", help="CA certificates verifying the peer: enables TLS")
    tls.add_argument("--tls-cert", type=Path, metavar="PEM", help="our certificate for mutual TLS")
    tls.add_argument("--tls-key", type=Path, metavar="PEM", help="private key of --tls-cert")
    out = parser.add_argument_group("Output")
    out.add_argument("-v", "--verbose", action="store_true", help="log association details")
    return parser.parse_args(args)


def _with_uids_filled(files: list[Path], out_dir: Path) -> list[Path]:
    """``files``, those with empty identifying UIDs replaced by copies in ``out_dir`` with the UIDs filled."""
    logger = logging.getLogger("send_series")
    sent, counts = [], {}
    for k, path in enumerate(files):
        ds = dcmread(path)
        filled = fill_missing_uids(ds)
        if not filled:
            sent.append(path)
            continue
        for keyword in filled:
            counts[keyword] = counts.get(keyword, 0) + 1
        copy = out_dir / f"{k:06d}_{path.name}"
        ds.save_as(copy, enforce_file_format=True)
        sent.append(copy)
    if counts:
        logger.warning("Filled empty UIDs as the series reader does (%s of %d files)",
                       ", ".join(f"{key} in {n}" for key, n in counts.items()), len(files))
    return sent


def _report(results: list[tuple[Path, int]], names: dict[Path, Path], destination: Destination) -> int:
    """Print one status line per file and a total; return the exit status."""
    n_ok = 0
    for path, status in results:
        ok = status == 0 or 0xB000 <= status <= 0xBFFF
        n_ok += ok
        print(f"{names.get(path, path)}: 0x{status:04X}{'' if ok else ' FAILED'}")
    print(f"Sent {len(results)} files to {destination}: {n_ok} accepted, {len(results) - n_ok} refused")
    return 0 if n_ok == len(results) else 3


def main(args: list[str] | None = None) -> int:
    """Send the folder; exit status 0 if every instance got a success or warning status."""
    ns = _setup_argparser(args)
    setup_logging(logging.INFO if ns.verbose else logging.WARNING, third_party=ns.verbose)
    files = find_dicom_files(ns.folder)
    if not files:
        print(f"No DICOM files in {ns.folder}", file=sys.stderr)
        return 1
    ssl_context = make_client_ssl_context(ns.tls_ca, ns.tls_cert, ns.tls_key) if ns.tls_ca else None
    destination = Destination(ns.addr, ns.port, ns.called_aet)
    with tempfile.TemporaryDirectory(prefix="send_series-") as tmp:
        to_send = files if ns.as_is else _with_uids_filled(files, Path(tmp))
        try:
            results = send_files(
                to_send, destination, calling_aet=ns.calling_aet, ssl_context=ssl_context,
                acse_timeout=ns.acse_timeout, dimse_timeout=ns.dimse_timeout,
                network_timeout=ns.network_timeout, raise_on_failure=False,
            )
        except ExportError as exc:
            print(f"Failed: {exc}", file=sys.stderr)
            return 2
    return _report(results, dict(zip(to_send, files)), destination)


if __name__ == "__main__":
    sys.exit(main())
