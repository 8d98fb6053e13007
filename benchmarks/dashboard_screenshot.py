"""Regenerate the dashboard's screenshots (``docs/dashboard.png``, ``docs/dashboard_job.png``) from a real node.

The node runs the shipped bundle with ``--http-port``; DCMTK ``storescu`` sends it two phantom
series (segmented: quality scores, QA pictures, the model version) and an MR image (failed: not
CT), while a pynetdicom association keeps a third series open (a job still receiving). A DCMTK
``storescp`` is the destination. Headless Chromium then photographs the job list and the page of
the first job. Nothing here is staged: every row is what the node did.

    .venv/bin/python -m benchmarks.dashboard_screenshot [--slices 40] [--docs docs]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

from benchmarks.common import REPO_ROOT, phantom_series, work_root
from vacseg_monai.logs import add_verbosity_options, setup_script_logging
from vacseg_monai.service.jobs import JobState, JobStore
from vacseg_monai.testing.browser import chromium_screenshot
from vacseg_monai.testing.peers import (
    NodeProcess,
    StoreSCP,
    free_port,
    storescu_store_all,
    wait_until,
)

__all__ = ["main", "make_screenshots", "mr_instance"]

logger = logging.getLogger(__name__)

#: Seconds the node may take for its two phantom series (bundle loading included) on a loaded CPU.
NODE_TIMEOUT_S = 600


def mr_instance(source: Path, out: Path, series_description: str | None = None) -> Path:
    """A copy of one CT instance as an MR image of a new series (the node fails it: not CT); the dashboard test
    makes its failed job with it too."""
    from pydicom import dcmread
    from pydicom.uid import generate_uid

    ds = dcmread(source)
    ds.Modality = "MR"
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    if series_description is not None:
        ds.SeriesDescription = series_description
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out)
    return out


def _open_series(files: list[Path], port: int, aet: str):
    """A pynetdicom association that has sent ``files`` and stays open (a series still arriving); returns it."""
    from pydicom import dcmread
    from pynetdicom import AE

    ae = AE(ae_title="CT_SCANNER")
    ae.add_requested_context(str(dcmread(files[0], stop_before_pixels=True).SOPClassUID))
    assoc = ae.associate("127.0.0.1", port, ae_title=aet)
    if not assoc.is_established:
        raise RuntimeError(f"Cannot associate with the node on port {port}.")
    for path in files:
        assoc.send_c_store(path)
    return assoc


def make_screenshots(docs: Path, slices: int = 40, size: int = 512) -> list[Path]:
    """Run the scene (see the module docstring) and write the two screenshots into ``docs``; returns their paths."""
    series = [phantom_series(slices, size=size, seed=seed) for seed in (1000, 1001)]
    arriving = phantom_series(slices, size=size, seed=1002)
    written: list[Path] = []
    with tempfile.TemporaryDirectory(dir=work_root()) as tmp:
        tmp_path = Path(tmp)
        mr = mr_instance(series[0][0], tmp_path / "mr" / "mr.dcm", "MR localiser")
        http_port = free_port()
        with StoreSCP(tmp_path / "dest", aet="TPS") as dest:
            node = NodeProcess(tmp_path / "node", tmp_path / "node.log",
                               ["--http-port", str(http_port), "--min-free-mb", "100",
                                "--destination", f"127.0.0.1:{dest.port}:TPS"])
            with node:
                for files in series:
                    storescu_store_all(node.port, files, aet="CT_SCANNER")
                storescu_store_all(node.port, [mr], aet="MR_SCANNER")
                store = JobStore(tmp_path / "node")
                finished = (JobState.DONE, JobState.FAILED)
                wait_until(lambda: sum(j.state in finished for j in store.jobs()) == 3
                           and sum((store.job_dir(j.job_id) / "qa.png").is_file() for j in store.jobs()) == 2,
                           NODE_TIMEOUT_S, "the node's three jobs", interval=0.5)
                assoc = _open_series(arriving[: slices // 2], node.port, node.ae_title)
                try:
                    url = f"http://127.0.0.1:{http_port}/"
                    written.append(chromium_screenshot(url, docs / "dashboard.png", size=(1500, 640)))
                    first = store.jobs()[0].job_id
                    written.append(chromium_screenshot(f"{url}jobs/{first}", docs / "dashboard_job.png",
                                                       size=(1500, 1100)))
                finally:
                    assoc.abort()
    for path in written:
        logger.info("Wrote %s", path)
    return written


def main(args: list[str] | None = None) -> list[Path]:
    """Command line; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=Path, default=REPO_ROOT / "docs", help="folder of the pictures (default docs)")
    parser.add_argument("--slices", type=int, default=40, help="slices of each phantom series (default 40)")
    parser.add_argument("--size", type=int, default=512, help="rows = columns (default 512)")
    add_verbosity_options(parser)
    opts = parser.parse_args(args)
    setup_script_logging(opts)
    return make_screenshots(opts.docs, opts.slices, opts.size)


if __name__ == "__main__":
    main()
