"""The DICOM output layer: what a label map on a CT series becomes, and what every such object shares.

:func:`write_outputs` is the one entry point for writing results as DICOM: the
bundle's writer (:mod:`vacseg_monai.writers`, and through it the DICOM node's
segmenter) and the label-map CLI (:mod:`vacseg_monai.dicom.labelmap`) call it.
It writes the objects chosen by :class:`OutputKind` into a folder under one
naming scheme, :func:`output_file_name`: ``RS.<SOPInstanceUID>.dcm`` for an RT
Structure Set, ``SEG.<SOPInstanceUID>.dcm`` for a Segmentation.

The writers of those objects (:mod:`vacseg_monai.dicom.rtstruct`,
:mod:`vacseg_monai.dicom.seg`) share, from here:

- the default UID root :data:`DEFAULT_ROOT_UID` and its validator :func:`check_root_uid`;
- the patient/study copy from the CT, with one list of the veterinary attributes
  (:func:`copy_patient_and_study`, :func:`complete_veterinary_attributes`);
- the label-map coercion (:func:`series_label_map`);
- the atomic save (:func:`save_atomic`).
"""

from __future__ import annotations

import enum
import logging
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydicom.dataset import Dataset

from vacseg_monai import __version__
from vacseg_monai.dicom.geometry import lps_to_ras
from vacseg_monai.labels import LABELS, Label

if TYPE_CHECKING:
    from vacseg_monai.dicom.profiles import OutputProfile
    from vacseg_monai.dicom.series import CTSeries

__all__ = [
    "DEFAULT_ROOT_UID",
    "MAX_ROOT_UID_LENGTH",
    "VETERINARY_TYPE2C_KEYWORDS",
    "OutputKind",
    "check_root_uid",
    "complete_veterinary_attributes",
    "copy_patient_and_study",
    "output_file_name",
    "save_atomic",
    "series_label_map",
    "write_outputs",
]

logger = logging.getLogger(__name__)

#: Root under which the Series and SOP Instance UIDs of written objects are generated (pydicom's example root).
DEFAULT_ROOT_UID = "1.2.826.0.1.3680043.8.498."
#: Longest UID root accepted: at least 24 random digits follow it in a 64-character UID.
MAX_ROOT_UID_LENGTH = 40
_ROOT_UID_RE = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*\.")
# File name prefix per Modality of a written object.
_FILE_PREFIXES = {"RTSTRUCT": "RS", "SEG": "SEG"}
_UID_RE = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+")

# Patient, Patient Study and General Study module attributes copied from the CT when present.
_PATIENT_KEYWORDS = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "IssuerOfPatientIDQualifiersSequence",
    "TypeOfPatientID",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientSex",
    "QualityControlSubject",
    "OtherPatientIDsSequence",
    "OtherPatientNames",
    "PatientComments",
    "PatientSpeciesDescription",
    "PatientSpeciesCodeSequence",
    "PatientBreedDescription",
    "PatientBreedCodeSequence",
    "BreedRegistrationSequence",
    "StrainDescription",
    "StrainNomenclature",
    "StrainAdditionalInformation",
    "ResponsiblePerson",
    "ResponsiblePersonRole",
    "ResponsibleOrganization",
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "DeidentificationMethodCodeSequence",
)
_STUDY_KEYWORDS = (
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "IssuerOfAccessionNumberSequence",
    "StudyDescription",
    "PhysiciansOfRecord",
    "ProcedureCodeSequence",
    "AdmittingDiagnosesDescription",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "PatientSexNeutered",
    "AdditionalPatientHistory",
)
# Type 2 attributes of those modules: present (empty if unknown) in every object.
_TYPE2_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)
#: Type 2C attributes of the Patient and Patient Study modules required (possibly empty) when the patient is
#: an animal, i.e. when PatientSpeciesDescription or PatientSpeciesCodeSequence is present (PS3.3 C.7.1.1,
#: C.7.2.2).
VETERINARY_TYPE2C_KEYWORDS = (
    "PatientBreedDescription",
    "PatientBreedCodeSequence",
    "BreedRegistrationSequence",
    "ResponsiblePerson",
    "ResponsibleOrganization",
    "PatientSexNeutered",
)


class OutputKind(str, enum.Enum):
    """DICOM objects written for a label map on a DICOM series (``--output`` / ``--format``)."""

    RTSTRUCT = "rtstruct"
    SEG = "seg"
    BOTH = "both"
    NONE = "none"

    @classmethod
    def coerce(cls, value: str | OutputKind) -> OutputKind:
        """Return ``value`` as an :class:`OutputKind` (case-insensitive).

        Raises:
            ValueError: naming the accepted values.
        """
        try:
            return cls(str(value.value if isinstance(value, cls) else value).lower())
        except ValueError:
            raise ValueError(f"`output` must be one of {[k.value for k in cls]}, got {value!r}.") from None

    @property
    def rtstruct(self) -> bool:
        """True when an RT Structure Set is written."""
        return self in (OutputKind.RTSTRUCT, OutputKind.BOTH)

    @property
    def seg(self) -> bool:
        """True when a DICOM-SEG is written."""
        return self in (OutputKind.SEG, OutputKind.BOTH)


def check_root_uid(root_uid: str) -> str:
    """Return ``root_uid`` if it can prefix the UIDs of a written object.

    A root is digit components without leading zeros, separated by dots and ending with
    a dot, at most :data:`MAX_ROOT_UID_LENGTH` characters.

    Raises:
        ValueError: naming the rule and the value given.
    """
    text = str(root_uid)
    if len(text) > MAX_ROOT_UID_LENGTH or _ROOT_UID_RE.fullmatch(text) is None:
        raise ValueError(
            f"`root_uid` must be digit components without leading zeros, separated by dots and ending with '.', "
            f"at most {MAX_ROOT_UID_LENGTH} characters (e.g. {DEFAULT_ROOT_UID!r}), got {root_uid!r}."
        )
    return text


def copy_patient_and_study(source: Dataset, target: Dataset) -> None:
    """Copy the Patient, Patient Study and General Study attributes of ``source`` (the CT) into ``target``.

    Type 2 attributes the CT lacks are added empty, and so are the veterinary Type 2C
    ones (:func:`complete_veterinary_attributes`).
    """
    for keyword in _PATIENT_KEYWORDS + _STUDY_KEYWORDS:
        if keyword in source:
            target[keyword] = source[keyword]
    for keyword in _TYPE2_KEYWORDS:
        if keyword not in target:
            setattr(target, keyword, "")
    complete_veterinary_attributes(target)


def complete_veterinary_attributes(ds: Dataset) -> None:
    """Add the :data:`VETERINARY_TYPE2C_KEYWORDS` that ``ds`` lacks, empty, if its patient is an animal."""
    if "PatientSpeciesDescription" not in ds and "PatientSpeciesCodeSequence" not in ds:
        return
    for keyword in VETERINARY_TYPE2C_KEYWORDS:
        if keyword not in ds:
            setattr(ds, keyword, [] if keyword.endswith("Sequence") else "")
            logger.debug(
                "%s %s: added empty %s (veterinary Type 2C).", ds.get("Modality", ""), ds.get("SOPInstanceUID", ""),
                keyword,
            )


def _whole_numbers(array: np.ndarray, series_uid: str) -> np.ndarray:
    if array.dtype == np.bool_ or np.issubdtype(array.dtype, np.integer):
        return array
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(
            f"Label map for series {series_uid}: dtype {array.dtype} is not an integer, bool or float type."
        )
    rounded = np.rint(array)
    if not np.array_equal(rounded, array):
        odd = np.unique(array[rounded != array])[:5].tolist()
        raise ValueError(
            f"Label map for series {series_uid}: label values must be whole numbers (integers), found non-integer "
            f"values {odd} (dtype {array.dtype}); pass a label map, not probabilities or an image."
        )
    return rounded


def series_label_map(labels: Any, series: CTSeries) -> np.ndarray:
    """Coerce a label map to a whole-numbered array ``(rows, cols, n_slices)`` on ``series``' grid.

    Args:
        labels: numpy array ``(rows, cols, n_slices)`` or channel-first ``(1, rows, cols, n_slices)``
            (numpy, tensor or MetaTensor). A MetaTensor's affine must be the series' RAS affine.
        series: the CT series the labels were computed on.

    Returns:
        uint8 when the values fit, else int32; the values are not checked against a label table.

    Raises:
        ValueError: when the shape or the affine does not match the series, or the values are not whole numbers.
    """
    affine = getattr(labels, "affine", None)
    array = labels.detach().cpu().numpy() if hasattr(labels, "detach") else np.asarray(labels)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    uid = series.series_instance_uid
    if not series.datasets:
        raise ValueError(f"Series {uid} has no datasets; cannot derive an object from it.")
    first = series.datasets[0]
    expected = (int(first.Rows), int(first.Columns), len(series.datasets))
    if array.shape != expected:
        raise ValueError(
            f"Label map shape {tuple(array.shape)} does not match series {uid} (rows, cols, n_slices) = "
            f"{expected}; pass (rows, cols, n_slices) or (1, rows, cols, n_slices)."
        )
    if affine is not None:
        affine = np.asarray(affine.detach().cpu().numpy() if hasattr(affine, "detach") else affine, dtype=np.float64)
        expected_ras = lps_to_ras(series.affine_lps)
        if affine.shape != (4, 4) or not np.allclose(affine, expected_ras, atol=1e-3):
            raise ValueError(
                f"Label map affine does not match series {uid}: got\n{affine}\n"
                f"expected (RAS)\n{expected_ras}\nResample the labels back to the CT grid first."
            )
    array = _whole_numbers(array, uid)
    if array.dtype == np.uint8:
        return array
    if array.size and 0 <= array.min() and array.max() <= np.iinfo(np.uint8).max:
        return array.astype(np.uint8)
    return array.astype(np.int32)


def output_file_name(ds: Dataset) -> str:
    """``RS.<SOPInstanceUID>.dcm`` for an RT Structure Set, ``SEG.<SOPInstanceUID>.dcm`` for a Segmentation.

    Raises:
        ValueError: for another Modality or a SOP Instance UID that is not a valid UID.
    """
    modality = str(ds.get("Modality", ""))
    uid = str(ds.get("SOPInstanceUID", ""))
    if modality not in _FILE_PREFIXES:
        raise ValueError(f"No output file name for Modality {modality!r}; known: {sorted(_FILE_PREFIXES)}.")
    if len(uid) > 64 or _UID_RE.fullmatch(uid) is None:
        raise ValueError(f"{modality} SOPInstanceUID {uid!r} is not a valid UID; it cannot name a file.")
    return f"{_FILE_PREFIXES[modality]}.{uid}.dcm"


def save_atomic(ds: Dataset, path: str | os.PathLike[str]) -> Path:
    """Save ``ds`` (with its file meta) to ``path`` through a temporary file, fsync and a rename.

    A reader never sees half a file, and a crash leaves either the old file or the new one.
    The file is readable by other users (0644): the results are read by other services.

    Args:
        ds: the dataset; pydicom or highdicom.
        path: the file to write; parent folders are created.

    Returns:
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            ds.save_as(handle, enforce_file_format=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o644)  # mkstemp creates 0600
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    logger.info("Wrote %s %s to %s", ds.get("Modality", "DICOM"), ds.get("SOPInstanceUID", ""), path)
    return path


def write_outputs(
    labels: Any,
    series: CTSeries,
    out_dir: str | os.PathLike[str],
    kind: str | OutputKind = OutputKind.RTSTRUCT,
    root_uid: str = DEFAULT_ROOT_UID,
    *,
    label_table: Sequence[Label] = LABELS,
    roi_notes: Mapping[int, str] | None = None,
    model_version: str | None = None,
    profile: str | os.PathLike[str] | OutputProfile | None = None,
    name_marks: Mapping[int, str] | None = None,
) -> list[Path]:
    """Write a label map on a CT series as the DICOM objects ``kind`` names, into ``out_dir``.

    Files are named by :func:`output_file_name` and saved by :func:`save_atomic`. The output
    profile (:mod:`vacseg_monai.dicom.profiles`) gives the ROI names and segment labels (with its
    suffix), the ROI types, the colours and the physical properties; a suffix is also said at the
    front of the Series Description, in the Structure Set Label and Name and in the SEG's Content
    Description.

    Args:
        labels: label map on the series' grid (see :func:`series_label_map`).
        series: the CT series.
        out_dir: folder to write to (created).
        kind: ``"rtstruct"`` (default), ``"seg"``, ``"both"`` or ``"none"``.
        root_uid: UID root for the new objects (default :data:`DEFAULT_ROOT_UID`).
        label_table: the labels to write (default :data:`vacseg_monai.labels.LABELS`).
        roi_notes: a short note per label value for the RTSTRUCT (default None; see
            :func:`vacseg_monai.dicom.rtstruct.write_rtstruct`).
        model_version: the model that made the label map, written into Software Versions (default None).
        profile: the output profile, a name, a TOML file or an :class:`~vacseg_monai.dicom.profiles.OutputProfile`
            (default None: ``generic``, the label table as it is).
        name_marks: label value -> text put between a name and the profile's suffix, e.g. ``" CHECK"`` for a
            structure the quality score flagged (default None).

    Returns:
        The written files, RTSTRUCT first.

    Raises:
        ValueError: for an unknown ``kind``, a bad ``root_uid``, a label map that does not fit the series, or a
            profile that cannot be loaded or makes a name too long.
    """
    # The writers build on this module, and the SEG writer imports highdicom: both are imported when used.
    from vacseg_monai.dicom.profiles import load_profile
    from vacseg_monai.dicom.rtstruct import DEFAULT_SERIES_DESCRIPTION, write_rtstruct

    kind = OutputKind.coerce(kind)
    check_root_uid(root_uid)
    profile = load_profile(profile)
    table = profile.apply(label_table, name_marks)
    notice = profile.suffix.strip()
    out_dir = Path(out_dir)
    written: list[Path] = []
    if kind.rtstruct:
        extra = {} if not notice else {
            "series_description": _noticed(notice, DEFAULT_SERIES_DESCRIPTION),
            "structure_set_label": notice[:16],
            "structure_set_name": _noticed(notice, "VACSEG AUTO"),
        }
        ds = write_rtstruct(labels, series, None, label_table=table, root_uid=root_uid, roi_notes=roi_notes,
                            model_version=model_version,
                            physical_properties=_physical_properties(profile, labels, series, label_table),
                            **extra)  # fmt: skip
        written.append(save_atomic(ds, out_dir / output_file_name(ds)))
    if kind.seg:
        from vacseg_monai.dicom.seg import DEFAULT_SEG_SERIES_DESCRIPTION, write_seg

        extra = {} if not notice else {
            "series_description": _noticed(notice, DEFAULT_SEG_SERIES_DESCRIPTION),
            "content_description": _noticed(notice, f"vacseg_monai {__version__} automatic: "
                                            + ", ".join(lb.name for lb in table)),
        }
        seg = write_seg(labels, series, None, label_table=table, root_uid=root_uid, model_version=model_version,
                        **extra)  # fmt: skip
        written.append(save_atomic(seg, out_dir / output_file_name(seg)))
    return written


def _physical_properties(
    profile: OutputProfile, labels: Any, series: CTSeries, label_table: Sequence[Label]
) -> dict | None:
    """The profile's ROI physical properties, the measured ones on the series' CT in HU; None when it has none."""
    styles = [profile.style(label) for label in label_table]
    if not any(style.physical_property for style in styles):
        return None
    hu = None
    if any(style.measured for style in styles):
        volume = series.volume[0]  # (rows, cols, n_slices): the label map's grid
        hu = volume.detach().cpu().numpy() if hasattr(volume, "detach") else np.asarray(volume)
    return profile.physical_properties(series_label_map(labels, series), hu, label_table)


def _noticed(notice: str, text: str) -> str:
    """``"<notice> - <text>"`` within the 64 characters of a LO: the notice first, so that it always shows."""
    return f"{notice} - {text}"[:64]
