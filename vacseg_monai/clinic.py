"""A simulated clinic that closes the loop: its series through the node, its corrections back, a fine-tune.

The clinic's patients are generator v1 phantoms (the world the shipped model was trained on,
where it reaches Dice 0.99; on v2 it does not, so a v2 clinic would mix a new world with new
habits). What differs is the clinic, systematically:

- **its couch carries a foam mattress** (:attr:`ClinicConventions.mattress_mm` thick, at
  :attr:`ClinicConventions.mattress_hu`), under the bag, which the patient, the bag and
  everything above the couch top are lifted by; the project calls a mattress background
  (as v2 does with its pads), the clinic's physicists count it as **Couch**;
- **its physicists draw the Vacbag with a margin** (:attr:`ClinicConventions.vacbag_margin_mm`,
  3 mm): the truth Vacbag grown in-plane into the air around it, never into the body or couch.

:func:`clinic_case` builds one patient and its clinic truth from the phantom's own truth;
:func:`write_clinic_case` writes its CT series and the physicist's corrected structure set
(the project's RTSTRUCT writer, on the CT's geometry). :func:`node_round` sends series to a
real node (:class:`vacseg_monai.service.scp.DicomNode`, the shipped bundle or fine-tuned weights)
with DCMTK ``storescu`` and, once each job is done, the corrections, which the node measures.
:func:`finetune` runs the bundle's ``train.json`` + ``finetune.json`` through
``python -m monai.bundle run training``. :func:`run_clinic_loop` chains them: the shipped
model's round on the training series, their corrections as training data
(:func:`vacseg_monai.service.training_data.corrections_to_training`), the fine-tune, and the
new series through the node before and after.
"""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom import dcmread
from scipy import ndimage

from vacseg_monai.labels import BACKGROUND, label_by_name
from vacseg_monai.phantom import Phantom, Tissue, generate_phantom
from vacseg_monai.testing.peers import storescu_store_all, wait_until

__all__ = [
    "CLINIC_PHANTOM_VERSION",
    "ClinicCase",
    "ClinicConventions",
    "ClinicLoopResult",
    "ClinicSeries",
    "FinetuneResult",
    "clinic_case",
    "edit_summary",
    "finetune",
    "node_round",
    "run_clinic_loop",
    "write_clinic_case",
]

logger = logging.getLogger(__name__)

#: The phantom generator of the clinic's patients (the shipped model's world).
CLINIC_PHANTOM_VERSION = 1

#: The calling AE title of the clinic's planning system.
_CLINIC_AET = "CLINIC_TPS"

_VACBAG = label_by_name("Vacbag").value
_COUCH = label_by_name("Couch").value
_OUTSIDE_HU = -1024
_AIR_HU = -1000.0


@dataclass(frozen=True)
class ClinicConventions:
    """How the clinic differs from the project.

    Args:
        vacbag_margin_mm: margin its physicists draw around the Vacbag, into the air (default 3).
        mattress_mm: thickness of the foam mattress on its couch (default 10).
        mattress_hu: the mattress's mean HU (default -880).
        mattress_sd_hu: its texture, HU standard deviation on top of the scanner noise (default 8).
        mattress_inset_mm: how far the mattress stops short of each edge of the couch top (default 20).
    """

    vacbag_margin_mm: float = 3.0
    mattress_mm: float = 10.0
    mattress_hu: float = -880.0
    mattress_sd_hu: float = 8.0
    mattress_inset_mm: float = 20.0


@dataclass
class ClinicCase:
    """One clinic patient.

    Args:
        phantom: the patient as scanned at the clinic (mattress in the image), ``labels`` the clinic's truth.
        project_labels: the same image labelled by the project's conventions (mattress background, no margin).
    """

    phantom: Phantom
    project_labels: np.ndarray


def _crop_slices(phantom: Phantom, n_slices: int | None) -> Phantom:
    """Keep ``n_slices`` slices around the middle of the bag (all when None or more than there are)."""
    if n_slices is None or n_slices >= phantom.n_slices:
        return phantom
    start, stop = phantom.bag_slices
    first = max(0, min((start + stop - n_slices) // 2, phantom.n_slices - n_slices))
    keep = slice(first, first + n_slices)
    return dataclasses.replace(
        phantom, image=phantom.image[:, :, keep], labels=phantom.labels[:, :, keep],
        tissues=phantom.tissues[:, :, keep], bag_slices=(max(start - first, 0), min(stop - first, n_slices)),
        lung_slices=np.asarray([k - first for k in phantom.lung_slices if first <= k < first + n_slices]),
    )


def _lift_onto_mattress(phantom: Phantom, conventions: ClinicConventions, seed: int) -> tuple[np.ndarray, ...]:
    """Image, tissues and project labels with a mattress on the couch top and everything above lifted onto it.

    Raises:
        ValueError: if the phantom has no couch, or no room above the patient to lift it.
    """
    couch_rows = np.flatnonzero((phantom.labels == _COUCH).any(axis=(1, 2)))
    if couch_rows.size == 0:
        raise ValueError(f"Phantom {phantom.patient_id} has no couch to put the clinic's mattress on.")
    top = int(couch_rows[0])
    spacing = float(phantom.pixel_spacing[0])
    lift = max(int(round(conventions.mattress_mm / spacing)), 1)
    if (phantom.labels[:lift] != BACKGROUND).any():
        raise ValueError(f"Phantom {phantom.patient_id}: no {lift} free rows above the patient to lift it onto "
                         "the clinic's mattress.")
    image, tissues, labels = phantom.image.copy(), phantom.tissues.copy(), phantom.labels.copy()
    for array, source in ((image, phantom.image), (tissues, phantom.tissues), (labels, phantom.labels)):
        array[: top - lift] = source[lift:top]
    rng = np.random.default_rng(seed)
    noise_sd = float(phantom.extra.get("noise_sd_hu", 15.0))
    layer = (slice(top - lift, top), slice(None), slice(None))
    couch_cols = np.flatnonzero((phantom.labels[top] == _COUCH).any(axis=1))
    inset = int(round(conventions.mattress_inset_mm / spacing))
    mattress = np.zeros(image[layer].shape, bool)
    mattress[:, couch_cols[0] + inset: couch_cols[-1] + 1 - inset] = True
    hu = np.where(mattress, conventions.mattress_hu + rng.normal(0.0, conventions.mattress_sd_hu, mattress.shape),
                  _AIR_HU) + rng.normal(0.0, noise_sd, mattress.shape)
    image[layer] = np.clip(np.rint(hu), _OUTSIDE_HU, 3071).astype(np.int16)
    tissues[layer] = np.where(mattress, Tissue.PAD, Tissue.AIR)
    labels[layer] = BACKGROUND
    size = image.shape[0]
    idx = np.arange(size) - (size - 1) / 2.0
    outside = (idx[:, None] ** 2 + idx[None, :] ** 2) > (size / 2.0) ** 2
    image[outside] = phantom.padding_hu
    labels[outside] = BACKGROUND
    tissues[outside] = Tissue.AIR
    return image, tissues, labels


def _grow_vacbag(labels: np.ndarray, margin_mm: float, spacing: tuple[float, float]) -> None:
    """Grow the Vacbag in-plane by ``margin_mm`` into background voxels, slice by slice (in place)."""
    pad = int(np.ceil(margin_mm / min(spacing))) + 1
    for k in np.flatnonzero((labels == _VACBAG).any(axis=(0, 1))):
        plane = labels[:, :, k]
        rows, cols = np.nonzero(plane == _VACBAG)
        window = (slice(max(rows.min() - pad, 0), rows.max() + pad + 1),
                  slice(max(cols.min() - pad, 0), cols.max() + pad + 1))
        part = plane[window]
        distance = ndimage.distance_transform_edt(part != _VACBAG, sampling=spacing)
        part[(distance <= margin_mm) & (part == BACKGROUND)] = _VACBAG


def clinic_case(seed: int, *, size: int = 512, n_slices: int | None = None,
                conventions: ClinicConventions = ClinicConventions()) -> ClinicCase:
    """One clinic patient: a v1 phantom on the clinic's mattress, with the clinic's truth.

    Args:
        seed: phantom seed (the patient is ``clinic_<seed>``).
        size: rows and columns per slice (default 512).
        n_slices: keep this many slices around the middle of the bag (default None: all).
        conventions: how the clinic differs (default :class:`ClinicConventions`).

    Returns:
        the :class:`ClinicCase`; its ``phantom.labels`` are the clinic's truth.

    Raises:
        ValueError: see :func:`vacseg_monai.phantom.generate_phantom`, or no room for the mattress.
    """
    phantom = _crop_slices(generate_phantom(seed, size=size, version=CLINIC_PHANTOM_VERSION), n_slices)
    image, tissues, project = _lift_onto_mattress(phantom, conventions, seed)
    clinic = project.copy()
    clinic[tissues == Tissue.PAD] = _COUCH
    _grow_vacbag(clinic, conventions.vacbag_margin_mm, tuple(float(s) for s in phantom.pixel_spacing))
    patient = dataclasses.replace(
        phantom, patient_id=f"clinic_{seed:03d}", image=image, tissues=tissues, labels=clinic,
        responsible_organization="Vacseg Simulated Clinic",
        extra={**phantom.extra, "clinic": dataclasses.asdict(conventions)},
    )
    return ClinicCase(patient, project)


@dataclass(frozen=True)
class ClinicSeries:
    """A clinic patient written as DICOM.

    Args:
        case: the patient.
        ct_files: its CT series.
        series_uid: the SeriesInstanceUID.
        correction: the physicist's structure set (the clinic's truth on the CT's geometry).
    """

    case: ClinicCase
    ct_files: tuple[Path, ...]
    series_uid: str
    correction: Path


def write_clinic_case(case: ClinicCase, out_dir: str | Path) -> ClinicSeries:
    """Write a clinic patient's CT series and the physicist's corrected RT Structure Set.

    Args:
        case: the patient.
        out_dir: root folder; the patient goes to ``<out_dir>/<patient_id>/`` (``CT/`` and ``corrected.dcm``).
    """
    from vacseg_monai.dicom.phantom_dicom import write_phantom_dicom
    from vacseg_monai.dicom.rtstruct import write_rtstruct
    from vacseg_monai.dicom.series import read_series

    written = write_phantom_dicom(case.phantom, out_dir)
    written.rtstruct_path.unlink()  # the phantom's own truth file: the correction below replaces it
    series = read_series(written.ct_dir)
    correction = written.patient_dir / "corrected.dcm"
    write_rtstruct(case.phantom.labels, series, correction, series_description="Reviewed structures",
                   structure_set_label="REVIEWED")
    return ClinicSeries(case, tuple(written.ct_files), str(series.series_instance_uid), correction)


def _send(port: int, files: Sequence[Path]) -> None:
    """Send ``files`` over one association as the clinic's planning system would (DCMTK storescu, checked)."""
    storescu_store_all(port, files, aet=_CLINIC_AET, aec="VACSEG", timeout=300.0, connect_timeout=30)


def _finished_job(store, series_uid: str):
    from vacseg_monai.service.jobs import JobState

    for job in store.jobs():
        if job.series_uid == series_uid and job.state in (JobState.DONE, JobState.FAILED, JobState.REJECTED):
            return job
    return None


def _model_version(ds) -> str:
    """The model a node's RTSTRUCT names in Software Versions (its second value), or ""."""
    versions = ds.get("SoftwareVersions")
    values = [versions] if isinstance(versions, str) else list(versions or [])
    return str(values[1]) if len(values) > 1 else ""


def node_round(node_dir: str | Path, series: Sequence[ClinicSeries], *, ckpt_path: str | Path | None = None,
               timeout_per_series: float = 300.0) -> list[dict]:
    """Run a node, send it the series, then the physicist's corrections; return what the node measured.

    Args:
        node_dir: the node's output directory (created).
        series: the clinic series; each goes over its own association, the next once the node is done with it.
        ckpt_path: weights the node serves (default None: the shipped ``models/model.pt``).
        timeout_per_series: bound on each wait for the node (default 300 s).

    Returns:
        per series, ``{"patient", "job_id", "seconds", "model_version", "entry"}``: the job, the seconds from
        the first image sent to the node's result, the model its RTSTRUCT names, and the job record's entry of
        the correction (its metrics per ROI).

    Raises:
        RuntimeError: if the worker does not start, a job fails or a correction is not measured.
        TimeoutError: if the node takes longer than the bounds.
    """
    from vacseg_monai.service.config import NodeConfig
    from vacseg_monai.service.scp import DicomNode

    args = {"ckpt_path": str(ckpt_path)} if ckpt_path is not None else {}
    # The node receives nothing else meanwhile: its worker need not yield to the receiving SCP (worker_nice 0).
    config = NodeConfig(port=0, output_directory=Path(node_dir), processor_args=args, min_free_mb=0, worker_nice=0)
    results = []
    with DicomNode(config) as node:
        if not node.worker.wait_ready(timeout_per_series):
            raise RuntimeError(f"The node's worker did not load the bundle within {timeout_per_series:.0f} s.")
        for item in series:
            start = time.perf_counter()
            _send(node.port, item.ct_files)
            job = wait_until(lambda uid=item.series_uid: _finished_job(node.store, uid), timeout_per_series,
                             f"the node's result for {item.case.phantom.patient_id}", interval=0.25)
            if job.state.value != "done":
                raise RuntimeError(f"Job {job.job_id} of {item.case.phantom.patient_id} ended {job.state.value}: "
                                   f"{job.reason}")
            seconds = time.perf_counter() - start
            own = dcmread(node.store.job_dir(job.job_id) / job.outputs[0], stop_before_pixels=True)
            _send(node.port, [item.correction])
            job = wait_until(lambda job_id=job.job_id: (j := node.store.load(job_id)).corrections and j,
                             timeout_per_series, f"the measured correction of {item.case.phantom.patient_id}",
                             interval=0.25)
            entry = job.corrections[-1]
            if entry["status"] != "measured":
                raise RuntimeError(f"Correction of job {job.job_id} not measured: {entry['reason']}")
            results.append({"patient": item.case.phantom.patient_id, "job_id": job.job_id,
                            "seconds": round(seconds, 2), "model_version": _model_version(own), "entry": entry})
            logger.info("%s: job %s, %s", item.case.phantom.patient_id, job.job_id, ", ".join(
                f"{r['roi']} sDice {r['surface_dice']:.3f} APL {r['added_path_mm']:.0f} mm"
                for r in entry["rois"] if r.get("surface_dice") is not None))
    return results


def edit_summary(results: Sequence[dict]) -> dict[str, dict[str, float]]:
    """Per ROI over a round: mean Dice and surface Dice, and the added path length summed (mm).

    Also ``"all"``: the added path of every ROI summed.
    """
    summary: dict[str, dict[str, list[float]]] = {}
    for result in results:
        for roi in result["entry"]["rois"]:
            if roi.get("dice") is None:
                continue
            values = summary.setdefault(roi["roi"], {"dice": [], "surface_dice": [], "added_path_mm": []})
            for key in values:
                values[key].append(float(roi[key]))
    out = {name: {"dice": float(np.mean(v["dice"])), "surface_dice": float(np.mean(v["surface_dice"])),
                  "added_path_mm": float(np.sum(v["added_path_mm"])), "cases": len(v["dice"])}
           for name, v in summary.items()}
    out["all"] = {"added_path_mm": float(sum(v["added_path_mm"] for v in out.values()))}
    return out


@dataclass
class FinetuneResult:
    """A fine-tuning run.

    Args:
        ckpt_path: the weights it kept (best validation mean Dice).
        seconds: wall time of ``monai.bundle run training``, start to exit.
        command: the command line.
    """

    ckpt_path: Path
    seconds: float
    command: list[str] = field(default_factory=list)


def finetune(data_dir: str | Path, out_dir: str | Path, *, replay_dir: str | Path | None = None,
             replay_share: float = 0.0, overrides: dict[str, str] | None = None,
             bundle_root: str | Path | None = None, timeout: float = 3600.0) -> FinetuneResult:
    """Fine-tune the shipped weights: ``python -m monai.bundle run training`` with train.json + finetune.json.

    Args:
        data_dir: the training data (the clinic's corrections).
        out_dir: where the checkpoints (``ckpt/``), TensorBoard runs (``runs/``) and the run's output
            (``training.log``) go, outside the bundle.
        replay_dir: the project's phantoms to replay (default None).
        replay_share: their share of the training slices (default 0).
        overrides: further ``--key value`` overrides, values as the bundle CLI reads them (default None).
        bundle_root: the bundle (default: the repository's).
        timeout: bound on the run in seconds (default 3600).

    Raises:
        RuntimeError: if the run fails or keeps no checkpoint (its output's tail in the message).
    """
    from vacseg_monai.paths import default_bundle_root

    bundle = Path(bundle_root or default_bundle_root())
    configs = bundle / "configs"
    out_dir = Path(out_dir)
    command = [sys.executable, "-m", "monai.bundle", "run", "training", "--meta_file", str(configs / "metadata.json"),
               "--config_file", repr([str(configs / "train.json"), str(configs / "finetune.json")]),
               "--logging_file", str(configs / "logging.conf"), "--bundle_root", str(bundle),
               "--data_dir", str(data_dir), "--ckpt_dir", str(out_dir / "ckpt"), "--output_dir", str(out_dir / "runs"),
               "--progress_bar", "false"]
    if replay_dir is not None:
        command += ["--replay_dir", str(replay_dir), "--replay_share", str(replay_share)]
    for key, value in (overrides or {}).items():
        command += [f"--{key}", str(value)]
    out_dir.mkdir(parents=True, exist_ok=True)
    log = out_dir / "training.log"
    start = time.perf_counter()
    with open(log, "wb") as handle:
        done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, timeout=timeout, check=False)
    seconds = time.perf_counter() - start
    ckpt = out_dir / "ckpt" / "model.pt"
    if done.returncode != 0 or not ckpt.is_file():
        raise RuntimeError(f"Fine-tuning failed (exit {done.returncode}, {ckpt} "
                           f"{'kept' if ckpt.is_file() else 'missing'}); the end of {log}:\n"
                           f"{log.read_text(errors='replace')[-4000:]}")
    logger.info("Fine-tuned in %.0f s: %s", seconds, ckpt)
    return FinetuneResult(ckpt, seconds, command)


@dataclass
class ClinicLoopResult:
    """What :func:`run_clinic_loop` measured.

    Args:
        train_round: :func:`node_round` of the shipped model on the training series.
        training_data: the :class:`~vacseg_monai.dicom.exports.ConversionReport` of their corrections.
        finetune: the fine-tuning run.
        eval_baseline: :func:`node_round` of the shipped model on the new series.
        eval_tuned: :func:`node_round` of the fine-tuned weights on the same new series.
    """

    train_round: list[dict]
    training_data: object
    finetune: FinetuneResult
    eval_baseline: list[dict]
    eval_tuned: list[dict]

    def as_dict(self) -> dict:
        """Plain JSON-serialisable data, with the per-round :func:`edit_summary`."""
        return {
            "train_round": self.train_round, "train_summary": edit_summary(self.train_round),
            "training_data": self.training_data.as_dict(),
            "finetune": {"ckpt_path": str(self.finetune.ckpt_path), "seconds": round(self.finetune.seconds, 1),
                         "command": self.finetune.command},
            "eval_baseline": self.eval_baseline, "eval_baseline_summary": edit_summary(self.eval_baseline),
            "eval_tuned": self.eval_tuned, "eval_tuned_summary": edit_summary(self.eval_tuned),
        }


def run_clinic_loop(work_dir: str | Path, train_seeds: Sequence[int], eval_seeds: Sequence[int], *,
                    size: int = 512, n_slices: int | None = None, replay_dir: str | Path | None = None,
                    replay_share: float = 0.0, finetune_overrides: dict[str, str] | None = None,
                    conventions: ClinicConventions = ClinicConventions()) -> ClinicLoopResult:
    """The whole loop for one clinic, everything under ``work_dir``.

    1. the training series go through a node serving the shipped model and the physicist's corrections come
       back (``node_train/``); 2. those corrections become training data (``data/``, partial labels as they
       contain); 3. the shipped weights are fine-tuned on them (``finetune/``); 4. the new series go through a
       node serving the shipped model (``node_baseline/``) and one serving the fine-tuned weights
       (``node_tuned/``), each measured against the physicist's corrections.

    Args:
        work_dir: folder for everything (created; the series under ``series/``).
        train_seeds: seeds of the clinic's training patients.
        eval_seeds: seeds of its new patients (must differ from ``train_seeds``).
        size, n_slices, conventions: as for :func:`clinic_case`.
        replay_dir, replay_share, finetune_overrides: as for :func:`finetune`.

    Raises:
        ValueError: if a seed is in both lists.
    """
    from vacseg_monai.service.training_data import corrections_to_training

    if set(train_seeds) & set(eval_seeds):
        raise ValueError(f"Seeds {sorted(set(train_seeds) & set(eval_seeds))} are both training and new patients.")
    work = Path(work_dir)
    written = {seed: write_clinic_case(clinic_case(seed, size=size, n_slices=n_slices, conventions=conventions),
                                       work / "series") for seed in [*train_seeds, *eval_seeds]}
    train_round = node_round(work / "node_train", [written[s] for s in train_seeds])
    data = corrections_to_training(work / "node_train", work / "data")
    logger.info("Training data from the corrections:\n%s", data.table())
    tuned = finetune(work / "data", work / "finetune", replay_dir=replay_dir, replay_share=replay_share,
                     overrides=finetune_overrides)
    eval_series = [written[s] for s in eval_seeds]
    baseline = node_round(work / "node_baseline", eval_series)
    after = node_round(work / "node_tuned", eval_series, ckpt_path=tuned.ckpt_path)
    return ClinicLoopResult(train_round, data, tuned, baseline, after)
