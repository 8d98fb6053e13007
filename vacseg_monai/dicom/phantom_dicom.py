"""Write a synthetic phantom as a DICOM CT series plus a ground-truth RT Structure Set.

Layout written by :func:`write_phantom_dicom` (one folder per patient)::

    <out_dir>/<patient_id>/CT/CT.<SOPInstanceUID>.dcm     one file per slice
    <out_dir>/<patient_id>/RS.<SOPInstanceUID>.dcm        the truth RTSTRUCT

The CT slices are written in the phantom's slice order (``image[:, :, k]`` is
slice ``k`` along the slice normal), so :func:`vacseg_monai.dicom.series.read_series`
gives back ``phantom.image`` exactly. The veterinary patient attributes (species,
breed, sex, neutered status, weight, responsible person/role/organisation) come
from the :class:`~vacseg_monai.phantom.Phantom`; the RTSTRUCT copies them from the CT.

The pixel storage follows the phantom's scanner: Rescale Intercept -1024 or 0
(``phantom.rescale_intercept``) and, when the scanner pads the pixels outside the
reconstruction circle with -2000 or -3024 HU (``phantom.padding_hu``), the stored
padding value in Pixel Padding Value (0028,0120). Reading the series back gives
``phantom.image`` exactly, padding included.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, NamedTuple

from pydicom.uid import ExplicitVRLittleEndian

from vacseg_monai.dicom.geometry import PatientPosition
from vacseg_monai.dicom.outputs import DEFAULT_ROOT_UID, check_root_uid
from vacseg_monai.dicom.synthetic import write_ct_series
from vacseg_monai.phantom import DEFAULT_VERSION, Phantom, generate_phantom
from vacseg_monai.phantom.model import OUTSIDE_HU

__all__ = [
    "AUTO_ORIENTATION",
    "PhantomDicom",
    "generate_dicom_dataset",
    "phantom_patient_attributes",
    "write_phantom_dicom",
]

logger = logging.getLogger(__name__)

#: ``orientation`` value that picks HFS or FFS from the phantom's scan direction.
AUTO_ORIENTATION = "auto"

# SNOMED CT concepts for the domestic dog and cat (DICOM CID 7454 "Animal Taxonomic Rank Values").
_CANINE_SPECIES_CODE = ("448771007", "SCT", "Canis lupus familiaris")
_FELINE_SPECIES_CODE = ("448169003", "SCT", "Felis catus")
_SPECIES_CODES = {
    **dict.fromkeys(("canine", "dog", "canis familiaris", "canis lupus familiaris"), _CANINE_SPECIES_CODE),
    **dict.fromkeys(("feline", "cat", "felis catus", "felis silvestris catus"), _FELINE_SPECIES_CODE),
}
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


class PhantomDicom(NamedTuple):
    """Paths written by :func:`write_phantom_dicom`.

    Attributes:
        patient_dir: ``<out_dir>/<patient_id>``.
        ct_dir: the folder holding the CT slices.
        rtstruct_path: the ground-truth RT Structure Set file.
        ct_files: the CT files in slice order.
    """

    patient_dir: Path
    ct_dir: Path
    rtstruct_path: Path
    ct_files: list[Path]


def _format_weight(weight_kg: float) -> str:
    text = f"{float(weight_kg):.3f}".rstrip("0").rstrip(".")
    return text or "0"


def phantom_patient_attributes(phantom: Phantom) -> dict[str, Any]:
    """Patient attributes (incl. the veterinary ones) of a phantom, as DICOM keywords.

    Breed is given as text only (Patient Breed Code Sequence present and empty, as the
    standard allows for an uncoded breed); the species is coded as SNOMED CT
    448771007 when it names the dog and 448169003 when it names the cat, otherwise the
    code sequence is left empty.

    Args:
        phantom: the patient.

    Returns:
        keyword -> value, suitable for ``write_ct_series(patient=...)``.
    """
    species = str(phantom.species_description)
    code = _SPECIES_CODES.get(species.strip().lower())
    species_code = [code] if code is not None else []
    return {
        "PatientName": phantom.patient_name,
        "PatientID": phantom.patient_id,
        "PatientSex": phantom.sex,
        "PatientSpeciesDescription": species,
        "PatientSpeciesCodeSequence": species_code,
        "PatientBreedDescription": phantom.breed_description,
        "PatientBreedCodeSequence": [],
        "BreedRegistrationSequence": [],
        "PatientSexNeutered": phantom.neutered,
        "PatientWeight": _format_weight(phantom.weight_kg),
        "ResponsiblePerson": phantom.responsible_person,
        "ResponsiblePersonRole": phantom.responsible_person_role,
        "ResponsibleOrganization": phantom.responsible_organization,
    }


def _stored_padding(phantom: Phantom) -> int | None:
    """Stored Pixel Padding Value of the phantom's scanner, or None when it stores air outside the circle."""
    if int(phantom.padding_hu) == OUTSIDE_HU:
        return None
    return int(round(phantom.padding_hu - phantom.rescale_intercept))


def _resolve_orientation(phantom: Phantom, orientation: str | PatientPosition) -> PatientPosition:
    text = str(getattr(orientation, "value", orientation))
    if text.lower() == AUTO_ORIENTATION:
        # Head-first: the slice normal points to the head, so slice 0 is the most caudal one.
        return PatientPosition.FFS if bool(phantom.extra.get("cranial_first", False)) else PatientPosition.HFS
    try:
        return PatientPosition(text.upper())
    except ValueError:
        allowed = ", ".join(p.value for p in PatientPosition)
        raise ValueError(
            f"`orientation` must be {AUTO_ORIENTATION!r} or one of {allowed}, got {orientation!r}."
        ) from None


def write_phantom_dicom(
    phantom: Phantom,
    out_dir: str | Path,
    *,
    orientation: str | PatientPosition = "HFS",
    root_uid: str = DEFAULT_ROOT_UID,
    transfer_syntax: str = ExplicitVRLittleEndian,
    file_names: str = "uid",
) -> PhantomDicom:
    """Write a phantom as a CT series and its truth labels as an RT Structure Set.

    Args:
        phantom: the patient (e.g. from :func:`vacseg_monai.phantom.generate_phantom`).
        out_dir: root folder; the patient goes to ``<out_dir>/<patient_id>/`` (created).
        orientation: Patient Position of the CT (HFS, FFS, HFP, FFP, HFDL, HFDR, FFDL, FFDR;
            default "HFS"), or ``"auto"``: HFS when the phantom's slice 0 is caudal and FFS
            when it is cranial (``phantom.extra["cranial_first"]``), so that the head lies
            at the patient-superior end. The displayed image is the same for every value.
        root_uid: UID root for every generated UID (default the pydicom example root), checked by
            :func:`vacseg_monai.dicom.outputs.check_root_uid`.
        transfer_syntax: transfer syntax of the CT files (default Explicit VR Little Endian).
        file_names: CT file naming, ``"uid"`` (default) or ``"random"``; see
            :func:`vacseg_monai.dicom.synthetic.write_ct_series`.

    Returns:
        :class:`PhantomDicom` with the patient folder, CT folder, RTSTRUCT path and CT files.

    Raises:
        ValueError: if the phantom's image and labels differ in shape, the orientation is
            unknown, or ``root_uid`` is not a UID root.
    """
    from vacseg_monai.dicom.outputs import save_atomic
    from vacseg_monai.dicom.rtstruct import write_rtstruct
    from vacseg_monai.dicom.series import read_series

    if phantom.image.ndim != 3 or phantom.image.shape != phantom.labels.shape:
        raise ValueError(
            f"Phantom {phantom.patient_id}: image {phantom.image.shape} and labels {phantom.labels.shape} "
            "must be equal 3D shapes (rows, cols, n_slices)."
        )
    check_root_uid(root_uid)
    position = _resolve_orientation(phantom, orientation)
    folder_name = _SAFE_NAME.sub("_", phantom.patient_id).strip("._") or "patient"
    patient_dir = Path(out_dir) / folder_name
    ct_dir = patient_dir / "CT"
    ct_files = write_ct_series(
        phantom.image,
        ct_dir,
        pixel_spacing=phantom.pixel_spacing,
        slice_thickness=phantom.slice_thickness_mm,
        orientation=position,
        patient=phantom_patient_attributes(phantom),
        root_uid=root_uid,
        transfer_syntax=transfer_syntax,
        file_names=file_names,
        rescale_intercept=phantom.rescale_intercept,
        pixel_padding_value=_stored_padding(phantom),
        series_description=f"Synthetic {phantom.species_description.lower()} planning CT "
        f"({phantom.patient_id}, seed {phantom.seed})",
    )
    series = read_series(ct_dir)
    rtstruct = write_rtstruct(
        phantom.labels,
        series,
        None,
        root_uid=root_uid,
        series_description="Ground truth structures of a synthetic phantom",
        structure_set_label="PHANTOM TRUTH",
    )
    rtstruct_path = patient_dir / f"RS.{rtstruct.SOPInstanceUID}.dcm"
    save_atomic(rtstruct, rtstruct_path)
    logger.info(
        "Wrote phantom %s (%d slices, %s) as DICOM to %s", phantom.patient_id, phantom.n_slices, position.value,
        patient_dir,
    )
    return PhantomDicom(patient_dir=patient_dir, ct_dir=ct_dir, rtstruct_path=rtstruct_path, ct_files=ct_files)


def generate_dicom_dataset(
    out_dir: str | Path,
    n_patients: int = 10,
    seed: int = 0,
    size: int = 512,
    *,
    orientation: str | PatientPosition = AUTO_ORIENTATION,
    root_uid: str = DEFAULT_ROOT_UID,
    progress: bool = True,
    version: int | None = None,
) -> list[PhantomDicom]:
    """Generate ``n_patients`` phantoms (seeds ``seed .. seed + n_patients - 1``) as DICOM.

    The DICOM counterpart of :func:`vacseg_monai.phantom.generate_dataset`: each patient
    is written by :func:`write_phantom_dicom` to ``<out_dir>/<patient_id>/``, which
    :func:`vacseg_monai.dicom.convert.convert_exports` turns back into the training layout.

    Args:
        out_dir: root folder; created if missing.
        n_patients: number of patients, default 10.
        seed: base seed, default 0; patient i uses ``seed + i``.
        size: rows and columns per slice, default 512.
        orientation: Patient Position or ``"auto"`` (default; see :func:`write_phantom_dicom`).
        root_uid: UID root (default the pydicom example root).
        progress: show a tqdm progress bar over patients, default True.
        version: phantom generator version, 1 or 2 (default None: the package default, 2).

    Returns:
        one :class:`PhantomDicom` per patient, in seed order.

    Raises:
        ValueError: if ``n_patients`` < 1, ``seed`` < 0 or ``version`` is unknown.
    """
    if n_patients < 1:
        raise ValueError(f"`n_patients` must be >= 1, got {n_patients}.")
    if seed < 0:
        raise ValueError(f"`seed` must be >= 0, got {seed}.")
    from tqdm.auto import tqdm

    written = []
    for i in tqdm(range(n_patients), desc="phantoms (DICOM)", unit="patient", disable=not progress):
        phantom = generate_phantom(seed + i, size=size, version=DEFAULT_VERSION if version is None else version)
        written.append(write_phantom_dicom(phantom, out_dir, orientation=orientation, root_uid=root_uid))
    logger.info("Wrote %d phantom patients as DICOM to %s", len(written), out_dir)
    return written
