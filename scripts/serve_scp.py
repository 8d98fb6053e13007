#!/usr/bin/env python
"""Run the Vacbag auto-contouring DICOM node (Storage SCP + job queue + worker + export).

Examples:
    python scripts/serve_scp.py 11112 -aet VACSEG -od vacseg_node --destination tps.local:104:TPS
    python scripts/serve_scp.py --config node.toml
    python scripts/serve_scp.py -od vacseg_node --status
    python scripts/serve_scp.py -od vacseg_node --review-policy hold      # doubtful results wait for review
    python scripts/serve_scp.py -od vacseg_node --approve JOB              # send a held job (or --reject JOB)
"""

from __future__ import annotations

import argparse
import sys

from vacseg_monai.logs import setup_logging
from vacseg_monai.service.config import NodeConfig, parse_node_args
from vacseg_monai.service.jobs import JobStore, format_status
from vacseg_monai.service.review import ReviewError, decide
from vacseg_monai.service.scp import run_node


def _setup_argparser(args: list[str] | None = None) -> tuple[NodeConfig, argparse.Namespace]:
    """Parse the command line into the node configuration (and the raw namespace)."""
    return parse_node_args(args, prog="serve_scp.py")


def main(args: list[str] | None = None) -> int:
    """Run the node until SIGINT/SIGTERM; or print the job list (--status), or approve/reject a held job."""
    config, ns = _setup_argparser(args)
    if ns.status:
        print(format_status(JobStore(config.output_directory).jobs()))
        return 0
    if ns.approve or ns.reject:
        try:
            job = decide(config.output_directory, ns.approve or ns.reject, approve=bool(ns.approve))
        except ReviewError as exc:
            print(f"serve_scp.py: error: {exc}", file=sys.stderr)
            return 2
        print(f"Job {job.job_id}: {job.state.value} ({job.reason})")
        return 0
    # -d shows the libraries' lines too (pynetdicom's per C-STORE, highdicom's per object).
    setup_logging(config.log_level, third_party=config.log_level == "DEBUG")
    run_node(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
