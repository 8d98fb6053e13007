"""Write synthetic CT Image Storage series (for tests, phantoms and demos).

:func:`write_ct_series` turns a HU volume indexed ``[row, col, slice]`` (the
project convention, slices in increasing order along the slice normal) into a
valid CT series for a canine patient, for any of the eight lying patient
positions, with the displayed image identical for all of them (the couch at
the bottom). :func:`edit_instances` rewrites written files, which is how tests
build malformed variants.
"""

from __future__ import annotations

import datetime
import logging
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLossless,
    JPEGLosslessSV1,
    PYDICOM_IMPLEMENTATION_UID,
    generate_uid,
)

from vacseg_monai.dicom.geometry import PatientPosition, affine_lps, index_to_lps
from vacseg_monai.dicom.outputs import DEFAULT_ROOT_UID

__all__ = [
    "DEFAULT_ROOT_UID",
    "default_canine_patient",
    "edit_instances",
    "write_ct_series",
]

logger = logging.getLogger(__name__)


_DCMCJPEG_TIMEOUT_S = 120.0
_UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


def _code_item(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def default_canine_patient() -> dict[str, Any]:
    """Return the default (fictitious) canine patient attributes.

    Species and breed are coded with SNOMED CT as in DICOM CID 7454 / CID 7480:
    Canis lupus familiaris (448771007), Labrador retriever dog breed (62137007);
    the breed registry item uses CID 7481 (109200, America Kennel Club).
    """
    registration = Dataset()
    registration.BreedRegistrationNumber = "SYN-0001"
    registration.BreedRegistryCodeSequence = [_code_item("109200", "DCM", "America Kennel Club")]
    return {
        "PatientName": "Synthetic^Rex",
        "PatientID": "VACSEG-SYN-0001",
        "PatientBirthDate": "20180301",
        "PatientSex": "M",
        "PatientSpeciesDescription": "Canis lupus familiaris",
        "PatientSpeciesCodeSequence": [_code_item("448771007", "SCT", "Canis lupus familiaris")],
        "PatientBreedDescription": "Labrador retriever",
        "PatientBreedCodeSequence": [_code_item("62137007", "SCT", "Labrador retriever dog breed")],
        "BreedRegistrationSequence": [registration],
        "ResponsiblePerson": "Owner^Jane",
        "ResponsiblePersonRole": "OWNER",
        "ResponsibleOrganization": "",
        "PatientSexNeutered": "ALTERED",
    }


def _sequence_value(value: Any) -> Any:
    """Turn lists of dicts / (value, scheme, meaning) tuples into lists of Datasets."""
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, (Mapping, tuple, Dataset)) for v in value):
        items = []
        for v in value:
            if isinstance(v, Dataset):
                items.append(v)
            elif isinstance(v, tuple):
                items.append(_code_item(*v))
            else:
                item = Dataset()
                for key, sub in v.items():
                    setattr(item, key, _sequence_value(sub))
                items.append(item)
        return items
    return value


def _origin(
    first_position: float | Sequence[float], iop: Sequence[float], pixel_spacing: Sequence[float], rows: int, cols: int
) -> np.ndarray:
    if isinstance(first_position, (int, float, np.floating, np.integer)):
        # Table position of slice 0; the image centre lies on the z axis.
        row_dir = np.asarray(iop[:3], dtype=np.float64)
        col_dir = np.asarray(iop[3:], dtype=np.float64)
        centre = row_dir * pixel_spacing[1] * (cols - 1) / 2 + col_dir * pixel_spacing[0] * (rows - 1) / 2
        return np.array([0.0, 0.0, float(first_position)]) - centre
    origin = np.asarray(first_position, dtype=np.float64)
    if origin.shape != (3,):
        raise ValueError(f"`first_position` must be a number or 3 coordinates, got {first_position!r}.")
    return origin


def _stored_values(
    image_hu: np.ndarray, intercept: float, slope: float, signed: bool
) -> np.ndarray:
    stored = np.rint((np.asarray(image_hu, dtype=np.float64) - intercept) / slope)
    dtype = np.int16 if signed else np.uint16
    info = np.iinfo(dtype)
    if stored.size and (stored.min() < info.min or stored.max() > info.max):
        raise ValueError(
            f"HU range [{float(np.min(image_hu))}, {float(np.max(image_hu))}] does not fit {dtype.__name__} with "
            f"RescaleIntercept={intercept} and RescaleSlope={slope}; change rescale_intercept/signed."
        )
    return stored.astype(dtype)


def _fmt_ds(value: float) -> str:
    """Format a float for a DS element (at most 16 characters)."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    if text in ("-0", ""):
        text = "0"
    return text if len(text) <= 16 else f"{value:.8g}"


def write_ct_series(
    image_hu: np.ndarray,
    out_dir: str | Path,
    *,
    pixel_spacing: Sequence[float] = (1.0, 1.0),
    slice_thickness: float = 2.0,
    orientation: str | PatientPosition = "HFS",
    patient: Mapping[str, Any] | None = None,
    study_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    root_uid: str = DEFAULT_ROOT_UID,
    first_position: float | Sequence[float] = 0.0,
    transfer_syntax: str = ExplicitVRLittleEndian,
    file_names: str = "uid",
    rescale_intercept: float = -1024.0,
    rescale_slope: float = 1.0,
    signed: bool = True,
    pixel_padding_value: int | None = None,
    series_number: int = 1,
    series_description: str = "Synthetic CT",
    study_description: str = "Synthetic planning CT",
    body_part_examined: str = "WHOLEBODY",
    study_datetime: datetime.datetime | None = None,
    seed: int = 0,
) -> list[Path]:
    """Write a HU volume as a CT Image Storage series, one file per slice.

    ``image_hu[:, :, k]`` becomes slice ``k`` as displayed. Slices are written
    in increasing position along the slice normal ``n = IOP[0:3] x IOP[3:6]``,
    ``slice_thickness`` apart (SliceThickness = spacing, contiguous slices).
    InstanceNumber is ``k + 1``; SliceLocation is the table (z) position.

    Args:
        image_hu: array (rows, cols, n_slices), integer or float HU (floats are rounded).
        out_dir: output folder, created if missing.
        pixel_spacing: PixelSpacing (row spacing, column spacing) in mm, default (1, 1).
        slice_thickness: slice thickness = spacing between slices in mm, default 2.
        orientation: Patient Position, one of HFS, FFS, HFP, FFP, HFDL, HFDR, FFDL, FFDR
            (default HFS); see :class:`~vacseg_monai.dicom.geometry.PatientPosition`.
        patient: patient attributes overriding :func:`default_canine_patient` (code sequences
            may be given as lists of Datasets, dicts or (value, scheme, meaning) tuples).
        study_instance_uid: default generated under ``root_uid``.
        series_instance_uid: default generated under ``root_uid``.
        frame_of_reference_uid: default generated under ``root_uid``.
        root_uid: UID root for generated UIDs, default :data:`DEFAULT_ROOT_UID`.
        first_position: table (z) position of slice 0 in mm with the image centred on the
            z axis (default 0.0), or the full ImagePositionPatient of slice 0.
        transfer_syntax: default Explicit VR Little Endian; Implicit VR Little Endian, RLE
            Lossless, JPEG-LS Lossless and JPEG 2000 Lossless are encoded by pydicom's
            plugins; JPEG Lossless (process 14, SV1) by DCMTK's ``dcmcjpeg`` if installed.
        file_names: ``"uid"`` (``CT.<SOPInstanceUID>.dcm``) or ``"random"`` (random names,
            unrelated to slice order, no extension). Default ``"uid"``.
        rescale_intercept: RescaleIntercept, default -1024 (stored = HU + 1024).
        rescale_slope: RescaleSlope, default 1.
        signed: PixelRepresentation 1 (int16, default) or 0 (uint16).
        pixel_padding_value: stored value written as Pixel Padding Value (0028,0120) for the
            pixels outside the reconstruction circle, e.g. -2000; default None (not written).
        series_number: SeriesNumber, default 1.
        series_description: SeriesDescription.
        study_description: StudyDescription.
        body_part_examined: BodyPartExamined (an unpaired part, so Laterality is absent),
            default ``"WHOLEBODY"``.
        study_datetime: StudyDate/Time and other dates, default now.
        seed: seed for random file names, default 0.

    Returns:
        The written paths, in slice order.

    Raises:
        ValueError: on a bad shape, orientation, spacing, file_names value, a HU range that
            does not fit the stored type, or a transfer syntax that cannot be encoded here.
    """
    image = np.asarray(image_hu)
    position, spacing = _checked_geometry(image, orientation, pixel_spacing, slice_thickness)
    if file_names not in ("uid", "random"):
        raise ValueError(f"`file_names` must be 'uid' or 'random', got {file_names!r}.")
    if float(rescale_slope) == 0:
        raise ValueError("`rescale_slope` must not be 0.")
    syntax = UID(transfer_syntax)
    use_dcmcjpeg = _uses_dcmcjpeg(syntax)

    rows, cols, n_slices = (int(s) for s in image.shape)
    stored = _stored_values(image, float(rescale_intercept), float(rescale_slope), signed)
    origin = _origin(first_position, position.iop, spacing, rows, cols)
    affine = affine_lps(position.iop, spacing, float(slice_thickness), origin)
    ipps = index_to_lps(affine, np.stack([np.zeros(n_slices), np.zeros(n_slices), np.arange(n_slices)], axis=1))

    when = study_datetime or datetime.datetime.now()
    patient_attrs = default_canine_patient()
    patient_attrs.update(patient or {})
    # A documented table: what every slice shares, from the arguments above.
    header = _SeriesHeader(
        date=when.strftime("%Y%m%d"),
        time=when.strftime("%H%M%S"),
        study_uid=study_instance_uid or generate_uid(prefix=root_uid),
        series_uid=series_instance_uid or generate_uid(prefix=root_uid),
        for_uid=frame_of_reference_uid or generate_uid(prefix=root_uid),
        patient=patient_attrs,
        position=position,
        series_number=int(series_number),
        series_description=series_description,
        study_description=study_description,
        body_part_examined=body_part_examined,
        spacing=spacing,
        slice_thickness=float(slice_thickness),
        rows=rows,
        cols=cols,
        signed=signed,
        rescale_intercept=float(rescale_intercept),
        rescale_slope=float(rescale_slope),
        pixel_padding_value=pixel_padding_value,
        file_syntax=syntax if not use_dcmcjpeg else ExplicitVRLittleEndian,
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths: list[Path] = []
    for k in range(n_slices):
        sop_uid = generate_uid(prefix=root_uid)
        ds = _slice_dataset(header, k, ipps[k], sop_uid)
        _set_pixel_data(ds, np.ascontiguousarray(stored[:, :, k]), syntax, use_dcmcjpeg)
        name = f"CT.{sop_uid}.dcm" if file_names == "uid" else rng.bytes(8).hex()
        path = out / name
        ds.save_as(path, enforce_file_format=True)
        if use_dcmcjpeg:
            _dcmcjpeg(path, syntax)
        paths.append(path)
    logger.debug("Wrote %d CT slices (%s, %s) to %s", n_slices, position.value, syntax.name, out)
    return paths


def _checked_geometry(
    image: np.ndarray, orientation: str | PatientPosition, pixel_spacing: Sequence[float], slice_thickness: float
) -> tuple[PatientPosition, list[float]]:
    """The patient position and the pixel spacing, once the image, orientation and spacings are valid.

    Raises:
        ValueError: naming the argument that is wrong and the value given.
    """
    if image.ndim != 3 or min(image.shape) < 1:
        raise ValueError(f"`image_hu` must be 3D (rows, cols, n_slices), got shape {image.shape}.")
    try:
        position = PatientPosition(str(getattr(orientation, "value", orientation)).upper())
    except ValueError:
        raise ValueError(
            f"`orientation` must be one of {', '.join(PatientPosition.__members__)}, got {orientation!r}."
        ) from None
    if not np.all(np.isfinite(image)):
        raise ValueError("`image_hu` contains NaN or infinite values.")
    spacing = [float(v) for v in pixel_spacing]
    if len(spacing) != 2 or min(spacing) <= 0:
        raise ValueError(f"`pixel_spacing` must be two positive numbers (row, col) in mm, got {pixel_spacing!r}.")
    if not float(slice_thickness) > 0:
        raise ValueError(f"`slice_thickness` must be positive, got {slice_thickness!r}.")
    return position, spacing


def _uses_dcmcjpeg(syntax: UID) -> bool:
    """Whether ``syntax`` is encoded by DCMTK's ``dcmcjpeg`` (JPEG Lossless) rather than by pydicom.

    Raises:
        ValueError: if neither pydicom's plugins nor an installed ``dcmcjpeg`` can encode ``syntax``.
    """
    use_dcmcjpeg = syntax in (JPEGLossless, JPEGLosslessSV1)
    if syntax not in _UNCOMPRESSED and not use_dcmcjpeg:
        try:
            available = pydicom.pixels.get_encoder(syntax).is_available
        except NotImplementedError:
            available = False
        if not available:
            raise ValueError(
                f"Cannot encode transfer syntax {syntax} ({syntax.name}) with the installed pydicom plugins."
            )
    if use_dcmcjpeg and shutil.which("dcmcjpeg") is None:
        raise ValueError(f"Transfer syntax {syntax.name} needs DCMTK's dcmcjpeg on PATH, which is not installed.")
    return use_dcmcjpeg


@dataclass(frozen=True)
class _SeriesHeader:
    """What every slice of a written series shares."""

    date: str
    time: str
    study_uid: str
    series_uid: str
    for_uid: str
    patient: Mapping[str, Any]
    position: PatientPosition
    series_number: int
    series_description: str
    study_description: str
    body_part_examined: str
    spacing: list[float]
    slice_thickness: float
    rows: int
    cols: int
    signed: bool
    rescale_intercept: float
    rescale_slope: float
    pixel_padding_value: int | None
    file_syntax: UID


def _slice_dataset(header: _SeriesHeader, k: int, ipp: np.ndarray, sop_uid: str) -> Dataset:
    """Slice ``k``'s data set without its pixels: a documented table of the CT Image IOD's attributes."""
    date, time = header.date, header.time
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = header.file_syntax
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta.ImplementationVersionName = "VACSEG_0_1"

    # SOP Common
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.InstanceCreationDate = date
    ds.InstanceCreationTime = time
    # Patient, incl. the veterinary attributes
    for keyword, value in header.patient.items():
        setattr(ds, keyword, _sequence_value(value))
    # General Study / Patient Study
    ds.StudyInstanceUID = header.study_uid
    ds.StudyDate = date
    ds.StudyTime = time
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.StudyDescription = header.study_description
    # General Series
    ds.Modality = "CT"
    ds.SeriesInstanceUID = header.series_uid
    ds.SeriesNumber = header.series_number
    ds.SeriesDescription = header.series_description
    ds.SeriesDate = date
    ds.SeriesTime = time
    ds.BodyPartExamined = header.body_part_examined
    ds.PatientPosition = header.position.value
    # Frame of Reference
    ds.FrameOfReferenceUID = header.for_uid
    ds.PositionReferenceIndicator = ""
    # General Equipment
    ds.Manufacturer = "vacseg_monai"
    ds.ManufacturerModelName = "synthetic"
    ds.SoftwareVersions = "0.1.0"
    # General Image / General Acquisition
    ds.InstanceNumber = k + 1
    ds.ContentDate = date
    ds.ContentTime = time
    ds.AcquisitionDate = date
    ds.AcquisitionTime = time
    ds.AcquisitionNumber = 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    # Image Plane
    ds.PixelSpacing = [_fmt_ds(v) for v in header.spacing]
    ds.ImageOrientationPatient = [_fmt_ds(v) for v in header.position.iop]
    ds.ImagePositionPatient = [_fmt_ds(v) for v in ipp]
    ds.SliceThickness = _fmt_ds(header.slice_thickness)
    ds.SliceLocation = _fmt_ds(float(ipp[2]))
    # CT Image / Image Pixel
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = header.rows
    ds.Columns = header.cols
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if header.signed else 0
    ds.RescaleIntercept = _fmt_ds(header.rescale_intercept)
    ds.RescaleSlope = _fmt_ds(header.rescale_slope)
    ds.RescaleType = "HU"
    if header.pixel_padding_value is not None:
        ds.PixelPaddingValue = int(header.pixel_padding_value)
    ds.KVP = "120"
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    return ds


def _set_pixel_data(ds: Dataset, slice_pixels: np.ndarray, syntax: UID, use_dcmcjpeg: bool) -> None:
    """Set Pixel Data: little-endian bytes, or compressed to ``syntax`` by pydicom (``dcmcjpeg`` runs later)."""
    if syntax in _UNCOMPRESSED or use_dcmcjpeg:
        ds.PixelData = slice_pixels.astype(slice_pixels.dtype.newbyteorder("<")).tobytes()
    else:
        ds.PixelData = slice_pixels.tobytes()
        ds.compress(syntax, slice_pixels, generate_instance_uid=False)


def _dcmcjpeg(path: Path, syntax: UID) -> None:
    """Recompress one file in place with DCMTK's dcmcjpeg (JPEG lossless process 14)."""
    option = "+e1" if syntax == JPEGLosslessSV1 else "+el"
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        target = Path(tmp) / "out.dcm"
        result = subprocess.run(
            ["dcmcjpeg", option, str(path), str(target)],
            capture_output=True,
            text=True,
            timeout=_DCMCJPEG_TIMEOUT_S,
            check=False,
        )
        if result.returncode != 0:
            raise ValueError(f"dcmcjpeg failed on {path} ({syntax.name}): {result.stderr.strip()}")
        target.replace(path)


def edit_instances(
    files: Sequence[str | Path], edit: Callable[[int, Dataset], Dataset | None]
) -> list[Path]:
    """Rewrite DICOM files in place through ``edit`` (test helper for malformed series).

    Args:
        files: paths, e.g. as returned by :func:`write_ct_series` (slice order).
        edit: called as ``edit(index, dataset)``; return the dataset to save (modified or
            not) or ``None`` to delete the file.

    Returns:
        The paths that still exist, in the given order.
    """
    kept: list[Path] = []
    for i, name in enumerate(files):
        path = Path(name)
        ds = pydicom.dcmread(path)
        result = edit(i, ds)
        if result is None:
            path.unlink()
            continue
        result.save_as(path, enforce_file_format=True)
        kept.append(path)
    return kept
