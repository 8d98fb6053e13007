#!/usr/bin/env python
"""Send every DICOM file in a folder to a Storage SCP over one association.

Example:
    python scripts/send_series.py 127.0.0.1 11112 -aec VACSEG ct_folder/
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

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
    tls = parser.add_argument_group("TLS")
    tls.add_argument("--tls-ca", type=Path, metavar="PEM", help="CA certificates verifying the peer: enables TLS")
    tls.add_argument("--tls-cert", type=Path, metavar="PEM", help="our certificate for mutual TLS")
    tls.add_argument("--tls-key", type=Path, metavar="PEM", help="private key of --tls-cert")
    out = parser.add_argument_group("Output")
    out.add_argument("-v", "--verbose", action="store_true", help="log association details")
    return parser.parse_args(args)


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
    try:
        results = send_files(
            files, destination, calling_aet=ns.calling_aet, ssl_context=ssl_context,
            acse_timeout=ns.acse_timeout, dimse_timeout=ns.dimse_timeout,
            network_timeout=ns.network_timeout, raise_on_failure=False,
        )
    except ExportError as exc:
        print(f"Failed: {exc}", file=sys.stderr)
        return 2
    n_ok = 0
    for path, status in results:
        ok = status == 0 or 0xB000 <= status <= 0xBFFF
        n_ok += ok
        print(f"{path}: 0x{status:04X}{'' if ok else ' FAILED'}")
    print(f"Sent {len(results)} files to {destination}: {n_ok} accepted, {len(results) - n_ok} refused")
    return 0 if n_ok == len(results) else 3


if __name__ == "__main__":
    sys.exit(main())
