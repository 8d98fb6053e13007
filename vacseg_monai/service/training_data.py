"""Corrections to training data: the physicist's structure sets, on the node's own CT, as patients.

The node keeps every series it processed (``jobs/<job>/series/``) and every structure set the
planning system sent back (``corrections/<job>/``, :mod:`vacseg_monai.service.corrections`).
:func:`corrections_to_training` turns each job whose latest correction was measured into one
patient of the training layout, through the clinic-export converter
(:func:`vacseg_monai.dicom.exports.convert_series_files`): the series is read with the series
reader, the correction rasterised on it with the RTSTRUCT reader (ROI names matched by the
label table's names and aliases), and the patient written with ``annotated=`` the labels the
correction contains, so that a structure the physicist left out is unknown there, not
background (partial labels). The patient folder is ``<PatientID>_<job id>``.

A job is left out, with a line in the report saying why, when it has no correction, when its
latest correction could not be measured (a malformed structure set, recorded ``failed``; an
earlier one it superseded is not used either), or when its series is gone from the node.
The report is the converter's (:class:`~vacseg_monai.dicom.exports.ConversionReport`), saved
as ``<data>/conversion_report.json`` and ``.csv``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from pydicom import dcmread

from vacseg_monai.dicom.exports import (
    ConversionRecord,
    ConversionReport,
    OutputFormat,
    SkipReason,
    convert_series_files,
    patient_folder_name,
)
from vacseg_monai.service.jobs import Job, JobStore

__all__ = ["corrections_to_training", "latest_correction"]

logger = logging.getLogger(__name__)


def latest_correction(job: Job) -> dict | None:
    """The record entry of the job's latest correction (the one not superseded), or None."""
    for entry in job.corrections:
        if entry.get("file") == job.correction:
            return entry
    return None


def _skipped(job: Job, reason: SkipReason, detail: str, rtstruct: str = "", ct_folder: str = "") -> ConversionRecord:
    return ConversionRecord(status="skipped", reason=reason.value, detail=f"job {job.job_id}: {detail}",
                            series_instance_uid=job.series_uid, rtstruct=rtstruct, ct_folder=ct_folder)


def _convert_job(store: JobStore, job: Job, output_dir: Path, fmt: OutputFormat,
                 name_map: Mapping[str, int | str | None] | None, overwrite: bool) -> list[ConversionRecord]:
    """Records of one job: its patient, or why it has none."""
    entry = latest_correction(job)
    if entry is None:
        return [_skipped(job, SkipReason.NO_CORRECTION, "no corrected structure set came back for this job")]
    path = store.root / entry["file"]
    if entry.get("status") != "measured":
        return [_skipped(job, SkipReason.CORRECTION_NOT_MEASURED,
                         f"its latest correction was not measured ({entry.get('status')}): {entry.get('reason')}",
                         rtstruct=str(path))]
    series_dir = store.series_dir(job.job_id)
    ct_files = sorted(series_dir.glob("*.dcm")) if series_dir.is_dir() else []
    if not ct_files:
        return [_skipped(job, SkipReason.MISSING_SERIES, f"the node no longer holds its series in {series_dir}",
                         rtstruct=str(path), ct_folder=str(series_dir))]
    patient_id = str(dcmread(ct_files[0], stop_before_pixels=True, specific_tags=["PatientID"]).get("PatientID", ""))
    name = f"{patient_folder_name(patient_id)}_{job.job_id}"
    return convert_series_files(ct_files, [path], output_dir, name, fmt=fmt, name_map=name_map,
                                overwrite=overwrite)


def _existing_patients(output_dir: Path, fmt: OutputFormat, job_ids: set[str]) -> list[str]:
    """Patient folders of these jobs already in ``output_dir``."""
    roots = [output_dir / "npy", output_dir / "nifti"] if fmt is OutputFormat.BOTH else [output_dir]
    return sorted(str(p.relative_to(output_dir)) for root in roots if root.is_dir() for p in root.iterdir()
                  if p.is_dir() and p.name.rsplit("_", 1)[-1] in job_ids)


def corrections_to_training(
    node_dir: str | Path,
    output_dir: str | Path,
    *,
    fmt: str | OutputFormat = OutputFormat.NPY,
    name_map: Mapping[str, int | str | None] | None = None,
    overwrite: bool = False,
) -> ConversionReport:
    """Write every job with a measured latest correction as a patient of the training layout.

    Args:
        node_dir: the node's output directory (``jobs/`` and ``corrections/``).
        output_dir: training data folder (created), e.g. the ``data_dir`` of ``configs/finetune.json``.
        fmt: ``"npy"`` (default), ``"nifti"`` or ``"both"``, as for the converter.
        name_map: extra ROI name -> label rules, as for the converter (default None: the label table's
            names and aliases).
        overwrite: replace patient folders that exist (default False).

    Returns:
        the report: one converted record per patient (with its ``annotated_labels``), then the jobs and
        structure sets left out, with the reason. Also saved in ``output_dir``.

    Raises:
        ValueError: if ``node_dir`` is not a node output directory or ``fmt`` is unknown.
        FileExistsError: if a patient folder exists and ``overwrite`` is False (nothing is written then).
    """
    node_dir, output_dir = Path(node_dir), Path(output_dir)
    if not (node_dir / "jobs").is_dir():
        raise ValueError(f"{node_dir} is not a node output directory (no jobs/ folder in it).")
    try:
        fmt = OutputFormat(getattr(fmt, "value", fmt))
    except ValueError:
        raise ValueError(f"`fmt` must be one of {[f.value for f in OutputFormat]}, got {fmt!r}.") from None
    store = JobStore(node_dir)
    jobs = store.jobs()
    existing = _existing_patients(output_dir, fmt, {job.job_id for job in jobs})
    if existing and not overwrite:
        raise FileExistsError(f"Patients {existing} already exist in {output_dir}; pass overwrite=True "
                              "(--overwrite) to replace them or choose another output folder.")
    records: list[ConversionRecord] = []
    for job in jobs:
        records.extend(_convert_job(store, job, output_dir, fmt, name_map, overwrite))
    converted = sorted((r for r in records if r.converted), key=lambda r: r.output)
    report = ConversionReport(input_dir=str(node_dir), output_dir=str(output_dir), format=fmt.value,
                              records=converted + [r for r in records if not r.converted])
    json_path, _ = report.save(output_dir)
    logger.info("%d corrected jobs written as patients, %d items left out; report in %s.", len(converted),
                len(records) - len(converted), json_path)
    return report
