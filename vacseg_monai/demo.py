"""`make demo`: the whole job on the built-in data, as a TPS would see it.

1. generate a phantom patient and write it as a DICOM CT series (plus its truth RTSTRUCT);
2. start the DICOM node with the shipped bundle;
3. send the series to the node, as the TPS would;
4. receive the RT Structure Set (and DICOM-SEG) at a local receiver standing in for the TPS;
5. report where everything is, the Dice of each structure against the phantom's truth, and the timings.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from vacseg_monai.labels import LABELS

if TYPE_CHECKING:
    from vacseg_monai.service.receiver import ReceivedInstance

__all__ = ["DemoResult", "dice", "run_demo"]

logger = logging.getLogger(__name__)

#: The demo's own folders under its output directory, replaced on each run.
DEMO_FOLDERS = ("input", "node", "received")


@dataclass
class DemoResult:
    """What the demo produced."""

    rtstruct: Path
    seg: Path | None
    qa_picture: Path | None
    dice: dict[str, float]
    send_seconds: float
    latency_seconds: float
    stage_seconds: dict[str, float] = field(default_factory=dict)
    n_slices: int = 0

    def summary(self) -> str:
        """A few human-readable lines."""
        lines = [
            f"Sent {self.n_slices} CT images in {self.send_seconds:.1f} s; RTSTRUCT arrived "
            f"{self.latency_seconds:.1f} s after the last image was acknowledged.",
            "Dice against the phantom's truth: " + ", ".join(f"{k} {v:.3f}" for k, v in self.dice.items()),
        ]
        if self.stage_seconds:
            lines.append(
                f"Node stages ({sum(self.stage_seconds.values()):.1f} s in all): "
                + ", ".join(f"{k} {v:.2f} s" for k, v in self.stage_seconds.items())
            )
        lines.append(f"RTSTRUCT: {self.rtstruct}")
        if self.seg is not None:
            lines.append(f"DICOM-SEG: {self.seg}")
        if self.qa_picture is not None:
            lines.append(f"QA picture: {self.qa_picture}")
        return "\n".join(lines)


def dice(a, b) -> float:
    """Dice of two boolean arrays (1.0 when both are empty)."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


@dataclass
class _Delivery:
    """The node's results as the receiver got them, and when the series was sent."""

    rtstruct: ReceivedInstance
    segs: list[ReceivedInstance]
    start: float
    acknowledged: float


def _send_and_receive(ct_files: list[Path], output_dir: Path, bundle: Path, *, timeout: float,
                      log_level: str) -> _Delivery:
    """Start a node on ``bundle`` and a receiver, send the series, wait for its RTSTRUCT and SEG, stop the node.

    Raises:
        TimeoutError: if the worker does not load the bundle or the results do not arrive in time.
    """
    from vacseg_monai.service.config import Destination, NodeConfig, OutputKind
    from vacseg_monai.service.export import send_files
    from vacseg_monai.service.jobs import JobStore, format_status
    from vacseg_monai.service.receiver import ResultReceiver
    from vacseg_monai.service.scp import DicomNode

    with ResultReceiver(output_dir / "received", ae_title="DEMO_TPS") as receiver:
        config = NodeConfig(
            port=0,
            output_directory=output_dir / "node",
            bundle=bundle,
            destination=Destination("127.0.0.1", receiver.port, receiver.ae_title),
            output=OutputKind.BOTH,
            min_free_mb=100,
            log_level=log_level,
        )
        node = DicomNode(config)
        node.start()
        try:
            if not node.worker.wait_ready(timeout):
                raise TimeoutError(f"The node's worker did not load the bundle {bundle} within {timeout:.0f} s.")
            start = time.perf_counter()
            send_files(ct_files, Destination("127.0.0.1", node.port, config.ae_title), calling_aet="DEMO_TPS")
            acknowledged = time.perf_counter()
            try:
                (rtstruct,) = receiver.wait_for("RTSTRUCT", timeout=timeout)
                segs = receiver.wait_for("SEG", timeout=timeout)
            except TimeoutError as exc:
                raise TimeoutError(f"{exc}\nNode jobs:\n{format_status(JobStore(config.output_directory).jobs())}")
        finally:
            node.stop()
    return _Delivery(rtstruct, segs, start, acknowledged)


def _job_record(node_dir: Path) -> tuple[dict[str, float], Path | None]:
    """The stage timings of the node's one job (those after the export left out) and its QA picture, if any."""
    from vacseg_monai.service.jobs import JobStore
    from vacseg_monai.service.processor import QA_PICTURE, TIMINGS_FILE

    (job,) = JobStore(node_dir).jobs()
    job_dir = JobStore(node_dir).job_dir(job.job_id)
    timings_file = job_dir / TIMINGS_FILE
    stages = json.loads(timings_file.read_text()) if timings_file.is_file() else {}
    stages = {k: v for k, v in stages.items() if not k.endswith("_after_export")}  # not waited for
    qa = job_dir / QA_PICTURE
    return stages, qa if qa.is_file() else None


def run_demo(
    output_dir: str | Path,
    *,
    seed: int = 1000,
    bundle: str | Path | None = None,
    timeout: float = 600.0,
    size: int = 512,
    log_level: str = "INFO",
    phantom_version: int = 1,
) -> DemoResult:
    """Run the round trip; see the module docstring.

    Args:
        output_dir: folder for the input series, the node's jobs and the received results (created).
            Its ``input``, ``node`` and ``received`` folders belong to the demo and are replaced on each
            run, so that a rerun finds one series, one job and one result.
        seed: phantom seed (default 1000, outside the training seeds 0..9).
        bundle: bundle folder (default: the repository's).
        timeout: seconds to wait for the result (default 600).
        size: rows and columns of the phantom (default 512).
        log_level: the node worker's logging level (default "INFO").
        phantom_version: phantom generator version (default 1, the world the shipped model was trained on;
            see the bundle's training record).

    Raises:
        TimeoutError: if the RTSTRUCT does not arrive in time (the node's job status says why).
    """
    from vacseg_monai.dicom.phantom_dicom import write_phantom_dicom
    from vacseg_monai.dicom.rtstruct import read_rtstruct
    from vacseg_monai.dicom.series import read_series
    from vacseg_monai.paths import default_bundle_root
    from vacseg_monai.phantom import generate_phantom

    output_dir = Path(output_dir)
    bundle = Path(bundle) if bundle is not None else Path(default_bundle_root())
    if not (bundle / "models" / "model.pt").is_file():
        raise FileNotFoundError(f"The bundle {bundle} has no models/model.pt: train it first (see README).")

    for previous in DEMO_FOLDERS:
        shutil.rmtree(output_dir / previous, ignore_errors=True)
    phantom = generate_phantom(seed, size=size, version=phantom_version)
    written = write_phantom_dicom(phantom, output_dir / "input")
    logger.info("Wrote phantom %s as %d CT images to %s", phantom.patient_id, len(written.ct_files), written.ct_dir)

    delivery = _send_and_receive(written.ct_files, output_dir, bundle, timeout=timeout, log_level=log_level)
    series = read_series(written.ct_dir)
    predicted = read_rtstruct(delivery.rtstruct.path, series)
    truth = read_rtstruct(written.rtstruct_path, series)
    scores = {label.name: dice(predicted == label.value, truth == label.value) for label in LABELS}
    stages, qa = _job_record(output_dir / "node")
    return DemoResult(
        rtstruct=delivery.rtstruct.path,
        seg=delivery.segs[0].path if delivery.segs else None,
        qa_picture=qa,
        dice=scores,
        send_seconds=delivery.acknowledged - delivery.start,
        latency_seconds=delivery.rtstruct.arrived - delivery.acknowledged,
        stage_seconds=stages,
        n_slices=len(written.ct_files),
    )
