"""Read, validate and sort a DICOM CT series into a HU volume with its affine.

:func:`read_series` scans a folder (any file names, sub-folders included),
keeps CT Image Storage instances, groups them by SeriesInstanceUID, sorts the
slices by their position along the slice normal (never by SliceLocation or
InstanceNumber), checks that they form one regular, untilted block and returns
a :class:`CTSeries` whose ``volume`` follows the project convention: a MONAI
``MetaTensor`` of shape (1, rows, cols, n_slices) in HU with a RAS affine.
Every problem is raised as a :class:`~vacseg_monai.dicom.errors.DicomSeriesError`
naming the file or UID and what is wrong.

Real exports are read as they come:

- file names do not matter (no ``.dcm`` suffix needed); files without the 128-byte
  preamble are read when they start with a group 0x0002 or 0x0008 tag;
- an empty or missing SOPClassUID / SOPInstanceUID is taken from the file meta
  (MediaStorageSOPClassUID / MediaStorageSOPInstanceUID); an empty SeriesInstanceUID or
  StudyInstanceUID is derived from the slices' shared tags (:func:`fill_missing_uids`),
  logged once per series;
- a DICOMDIR, other SOP classes (secondary captures, RT objects) and CT localizers /
  scouts (ImageType LOCALIZER) are skipped, each with a log line naming the file;
- of several CT series the one with the most slices is read unless ``series_uid`` says
  which; the others are logged with their descriptions and slice counts.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MediaStorageDirectoryStorage,
    generate_uid,
)

from vacseg_monai.dicom.errors import (
    DicomSeriesError,
    DuplicateSliceError,
    GantryTiltError,
    InconsistentSeriesError,
    MissingSliceError,
    MissingTagError,
    NoSeriesError,
    UndecodablePixelDataError,
    UnreadableFileError,
)
from vacseg_monai.dicom.geometry import (
    affine_lps_from_datasets,
    check_iop,
    lps_to_ras,
    ras_to_lps,
    slice_normal,
)

if TYPE_CHECKING:
    from monai.data import MetaTensor

__all__ = [
    "DEFER_SIZE",
    "CTSeries",
    "DecodedSlice",
    "DicomSeriesError",
    "SeriesSummary",
    "decode_slice",
    "fill_missing_uids",
    "is_localizer",
    "list_series",
    "read_series",
    "read_series_files",
]

logger = logging.getLogger(__name__)

#: Values longer than this (bytes) are read from the file only when used: the pixel data.
DEFER_SIZE = 8192
# Two slices closer than this along the normal occupy the same position (mm).
_DUPLICATE_TOLERANCE_MM = 1e-2
# Tolerance on direction cosines when comparing orientations between slices.
_IOP_TOLERANCE = 1e-4
# Relative tolerance on PixelSpacing between slices.
_SPACING_RTOL = 1e-4
# GantryDetectorTilt values (degrees) above this are a tilt.
_TILT_TOLERANCE_DEG = 1e-3
# Files opened without a preamble are tried only if they start with a group 0x0002 or 0x0008 tag.
_RAW_DATASET_PREFIXES = (b"\x02\x00", b"\x08\x00", b"\x00\x08")
# Tags hashed into a SeriesInstanceUID / StudyInstanceUID derived for files where it is empty.
_SERIES_UID_SOURCES = ("FrameOfReferenceUID", "Modality", "SeriesNumber", "SeriesDescription", "SeriesDate", "SeriesTime")
_STUDY_UID_SOURCES = ("PatientID", "StudyID", "StudyDate", "StudyTime", "AccessionNumber", "FrameOfReferenceUID")


@dataclass
class SeriesSummary:
    """One CT series found by :func:`list_series`."""

    series_instance_uid: str
    count: int
    description: str = ""
    series_number: int | None = None
    study_instance_uid: str = ""
    patient_id: str = ""
    files: list[Path] = field(default_factory=list, repr=False)


@dataclass
class CTSeries:
    """A validated CT series.

    Attributes:
        volume: float32 HU MetaTensor (1, rows, cols, n_slices); ``.affine`` is RAS (float64).
        datasets: headers in slice order, pixel data removed.
        files: source files in slice order.
        series_instance_uid: SeriesInstanceUID.
        study_instance_uid: StudyInstanceUID.
        frame_of_reference_uid: FrameOfReferenceUID.
        sop_instance_uids: SOPInstanceUID per slice, in slice order.
        sop_class_uid: SOPClassUID (CT Image Storage).
    """

    volume: MetaTensor
    datasets: list[Dataset]
    files: list[Path]
    series_instance_uid: str
    study_instance_uid: str
    frame_of_reference_uid: str
    sop_instance_uids: list[str]
    sop_class_uid: str

    @property
    def affine_ras(self) -> np.ndarray:
        """4x4 RAS affine (index -> mm) as numpy float64."""
        return np.asarray(self.volume.affine, dtype=np.float64)

    @property
    def affine_lps(self) -> np.ndarray:
        """4x4 LPS affine (index (row, col, slice) -> DICOM patient mm)."""
        return ras_to_lps(self.affine_ras)

    @property
    def pixel_spacing(self) -> tuple[float, float]:
        """PixelSpacing (row spacing, column spacing) in mm."""
        return tuple(float(v) for v in self.datasets[0].PixelSpacing)  # type: ignore[return-value]

    @property
    def slice_spacing(self) -> float:
        """Distance between consecutive slices along the normal in mm."""
        return float(np.linalg.norm(self.affine_lps[:3, 2]))

    @property
    def shape(self) -> tuple[int, int, int]:
        """(rows, cols, n_slices)."""
        return tuple(int(s) for s in self.volume.shape[1:])  # type: ignore[return-value]


# --------------------------------------------------------------------------- scanning


def _iter_files(folder: Path) -> Iterable[Path]:
    return (p for p in sorted(folder.rglob("*")) if p.is_file())


def _looks_like_raw_dataset(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            head = fh.read(2)
    except OSError:
        return False
    return head in _RAW_DATASET_PREFIXES


def _read(path: Path) -> Dataset | None:
    """Read one file, its pixel data deferred; ``None`` for non-DICOM files, UnreadableFileError for broken DICOM.

    Values over :data:`DEFER_SIZE` (the pixel data) are read from the file when first used, so
    that one parse serves both the scan of the headers and the decoding of the slices.
    """
    try:
        ds = pydicom.dcmread(path, defer_size=DEFER_SIZE)
    except InvalidDicomError:
        if not _looks_like_raw_dataset(path):
            logger.debug("Skipping non-DICOM file %s", path)
            return None
        try:
            ds = pydicom.dcmread(path, defer_size=DEFER_SIZE, force=True)
        except Exception as exc:  # noqa: BLE001 - any parse failure of a DICOM-looking file
            raise UnreadableFileError(f"Cannot read DICOM file {path} (no preamble): {exc}") from exc
        if "SOPClassUID" not in ds:
            logger.debug("Skipping non-DICOM file %s", path)
            return None
        if "TransferSyntaxUID" not in ds.file_meta:
            # A bare dataset without file meta: record the encoding pydicom detected.
            implicit, little = ds.original_encoding
            ds.file_meta.TransferSyntaxUID = (
                ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
            )
    except Exception as exc:  # noqa: BLE001
        raise UnreadableFileError(f"Cannot read DICOM file {path}: {type(exc).__name__}: {exc}") from exc
    if len(ds) == 0 and "MediaStorageSOPClassUID" not in getattr(ds, "file_meta", {}):
        raise UnreadableFileError(f"DICOM file {path} has no readable data elements (truncated or corrupt).")
    return ds


def _meta(ds: Dataset) -> Dataset:
    return getattr(ds, "file_meta", None) or Dataset()


def _sop_class(ds: Dataset) -> str:
    """SOPClassUID, or the file meta's MediaStorageSOPClassUID when it is empty or missing."""
    sop = ds.get("SOPClassUID") or _meta(ds).get("MediaStorageSOPClassUID")
    return str(sop) if sop else ""


def is_localizer(ds: Dataset) -> bool:
    """True when ImageType names the image a LOCALIZER (a scout / topogram), not a slice of the volume.

    Args:
        ds: the image's data set.
    """
    value = ds.get("ImageType")
    if not value:
        return False
    values = value if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]
    return any(str(v).strip().upper() == "LOCALIZER" for v in values)


def _derived_uid(ds: Dataset, keyword: str, sources: tuple[str, ...]) -> str:
    return str(generate_uid(entropy_srcs=[keyword, *(str(ds.get(name, "") or "") for name in sources)]))


def fill_missing_uids(ds: Dataset) -> list[str]:
    """Fill the empty or missing identifying UIDs of an image exported without them; return the keywords filled.

    SOPClassUID and SOPInstanceUID are taken from the file meta (MediaStorageSOPClassUID,
    MediaStorageSOPInstanceUID). A SeriesInstanceUID present but empty is derived from the tags the slices
    of one series share (FrameOfReferenceUID, Modality, SeriesNumber, SeriesDescription,
    SeriesDate, SeriesTime), an empty StudyInstanceUID likewise from PatientID, StudyID, StudyDate,
    StudyTime, AccessionNumber and FrameOfReferenceUID: the same files give the same UIDs, so
    the reader and a sender that fills them before sending agree.

    Args:
        ds: the data set, changed in place.

    Returns:
        The keywords that were filled, in the order above (empty when none was).
    """
    filled = []
    meta = _meta(ds)
    for keyword, meta_keyword in (("SOPClassUID", "MediaStorageSOPClassUID"), ("SOPInstanceUID", "MediaStorageSOPInstanceUID")):
        if not ds.get(keyword) and meta.get(meta_keyword):
            setattr(ds, keyword, str(meta.get(meta_keyword)))
            filled.append(keyword)
    for keyword, sources in (("SeriesInstanceUID", _SERIES_UID_SOURCES), ("StudyInstanceUID", _STUDY_UID_SOURCES)):
        if keyword in ds and not ds.get(keyword):  # present but empty; missing is a truncated file
            setattr(ds, keyword, _derived_uid(ds, keyword, sources))
            filled.append(keyword)
    return filled


@dataclass
class _Scan:
    """What :func:`_scan` found: the CT series by UID, a count per kind of file, the UIDs filled per series."""

    groups: dict[str, list[tuple[Path, Dataset]]] = field(default_factory=dict)
    found: Counter = field(default_factory=Counter)
    filled: dict[str, Counter] = field(default_factory=dict)

    def describe_found(self) -> str:
        """The files found, counted by kind, e.g. ``2 x CT Image Storage (LOCALIZER), 1 x non-DICOM file``."""
        if not self.found:
            return "no files"
        return ", ".join(f"{n} x {kind}" for kind, n in sorted(self.found.items()))


def _skip_reason(ds: Dataset, sop_class: str) -> str | None:
    """Why a DICOM file is not a slice of a CT series (its kind, as counted in :class:`_Scan`), or None."""
    if sop_class == MediaStorageDirectoryStorage:
        return "DICOMDIR"
    if sop_class != CTImageStorage:
        return UID(sop_class).name if sop_class else "no SOP class"
    if is_localizer(ds):
        return f"{UID(sop_class).name} (LOCALIZER)"
    return None


def _scan(folder: str | Path, decoded: Mapping[Path, DecodedSlice | None] | None = None) -> _Scan:
    """Group the CT Image Storage headers under ``folder`` by SeriesInstanceUID (``decoded`` headers reused)."""
    root = Path(folder)
    if not root.is_dir():
        raise NoSeriesError(f"Not a folder: {root}.")
    return _scan_files(_iter_files(root), decoded)


def _scan_files(paths: Iterable[Path], decoded: Mapping[Path, DecodedSlice | None] | None = None) -> _Scan:
    """Group the CT Image Storage headers of ``paths`` by SeriesInstanceUID (``decoded`` headers reused)."""
    scan = _Scan()
    for path in paths:
        ready = decoded.get(path) if decoded else None
        ds = ready.header if ready is not None else _read(path)
        if ds is None:
            scan.found["non-DICOM file"] += 1
            continue
        sop_class = _sop_class(ds)
        skip = _skip_reason(ds, sop_class)
        if skip is not None:
            scan.found[skip] += 1
            log = logger.debug if skip == "DICOMDIR" else logger.info
            log("Skipping %s: %s, not a slice of a CT series", path, skip)
            continue
        scan.found[UID(sop_class).name] += 1
        filled = fill_missing_uids(ds)
        for keyword in ("SOPInstanceUID", "SeriesInstanceUID"):
            if not ds.get(keyword):
                raise UnreadableFileError(
                    f"CT file {path} lacks {keyword} (nor does its file meta give it): the file is truncated or "
                    "incomplete."
                )
        uid = str(ds.SeriesInstanceUID)
        scan.groups.setdefault(uid, []).append((path, ds))
        if filled:
            scan.filled.setdefault(uid, Counter()).update(filled)
    return scan


def _log_filled(scan: _Scan, series_uid: str) -> None:
    """Say once for the series which UIDs were filled in how many of its files."""
    filled = scan.filled.get(series_uid)
    if not filled:
        return
    n = len(scan.groups[series_uid])
    what = "; ".join(f"{keyword} in {count} of {n} files" for keyword, count in filled.items())
    logger.warning(
        "Series %s: empty or missing UIDs filled (SOP class and instance from the file meta, series and study "
        "derived from shared tags): %s", series_uid, what,
    )


def _summaries(groups: dict[str, list[tuple[Path, Dataset]]]) -> list[SeriesSummary]:
    out = []
    for uid, items in groups.items():
        first = items[0][1]
        number = first.get("SeriesNumber")
        out.append(
            SeriesSummary(
                series_instance_uid=uid,
                count=len(items),
                description=str(first.get("SeriesDescription", "")),
                series_number=int(number) if number not in (None, "") else None,
                study_instance_uid=str(first.get("StudyInstanceUID", "")),
                patient_id=str(first.get("PatientID", "")),
                files=[p for p, _ in items],
            )
        )
    return sorted(out, key=lambda s: (s.study_instance_uid, s.series_number or 0, s.series_instance_uid))


def list_series(folder: str | Path) -> list[SeriesSummary]:
    """List the CT Image Storage series under ``folder`` (recursively), localizers left out.

    Args:
        folder: folder to scan; file names do not matter.

    Raises:
        UnreadableFileError: when a DICOM file cannot be parsed.
        NoSeriesError: when ``folder`` is not a folder.
    """
    return _summaries(_scan(folder).groups)


def _describe(summaries: list[SeriesSummary]) -> str:
    return "; ".join(
        f"{s.series_instance_uid} ({s.count} slices, #{s.series_number}, {s.description!r})" for s in summaries
    )


def _choose_series(folder: str | Path, scan: _Scan, series_uid: str | None) -> str:
    """The series to read: ``series_uid``, else the one with the most slices (the others logged)."""
    if not scan.groups:
        raise NoSeriesError(
            f"No CT Image Storage series found in {folder}: found {scan.describe_found()} "
            "(localizers, DICOMDIR and other SOP classes are skipped)."
        )
    summaries = _summaries(scan.groups)
    if series_uid is not None:
        if series_uid not in scan.groups:
            raise NoSeriesError(f"CT series {series_uid} not found in {folder}; found: {_describe(summaries)}.")
        return series_uid
    chosen = max(summaries, key=lambda s: s.count)  # the first of equals, in the listing's order
    others = [s for s in summaries if s is not chosen]
    if others:
        logger.warning(
            "%s holds %d CT series; reading the one with the most slices, %s; not read: %s (pass series_uid=... "
            "to choose another)", folder, len(summaries), _describe([chosen]), _describe(others),
        )
    return chosen.series_instance_uid



# --------------------------------------------------------------------------- validation


def _float_list(ds: Dataset, keyword: str, count: int, path: Path, series_uid: str) -> list[float]:
    value = ds.get(keyword)
    if value is None or value == "" or (hasattr(value, "__len__") and len(value) == 0):
        raise MissingTagError(
            f"{path} (series {series_uid}) has no {keyword}: cannot place the slice in space."
        )
    values = list(value) if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]
    try:
        floats = [float(v) for v in values]
    except (TypeError, ValueError) as exc:
        raise MissingTagError(f"{path} (series {series_uid}) has an unreadable {keyword}: {value!r}.") from exc
    if len(floats) != count or not np.all(np.isfinite(floats)):
        raise MissingTagError(
            f"{path} (series {series_uid}) has {keyword} with {len(floats)} values {floats}, expected {count}."
        )
    return floats


def _majority_outlier(values: list, same: Callable[[object, object], bool]) -> tuple[int, int] | None:
    """Return (outlier index, reference index) for the first value differing from the most common one."""
    keys = [tuple(round(float(x), 4) for x in v) if isinstance(v, list) else v for v in values]
    ref = keys.index(Counter(keys).most_common(1)[0][0])
    for i, value in enumerate(values):
        if not same(value, values[ref]):
            return i, ref
    return None


def _check_consistency(items: list[tuple[Path, Dataset]], series_uid: str) -> tuple[np.ndarray, np.ndarray]:
    """Check per-slice geometry tags; return (IOP (6,), IPP array (n, 3)).

    Differences are reported against the value most slices share, naming the odd file.
    """
    paths = [p for p, _ in items]
    iops, spacings, sizes, for_uids, ipps = [], [], [], [], []
    for path, ds in items:
        iop = _float_list(ds, "ImageOrientationPatient", 6, path, series_uid)
        spacings.append(_float_list(ds, "PixelSpacing", 2, path, series_uid))
        ipps.append(_float_list(ds, "ImagePositionPatient", 3, path, series_uid))
        try:
            check_iop(iop, where=str(path))
        except ValueError as exc:
            raise InconsistentSeriesError(f"Series {series_uid}: {exc}") from exc
        iops.append(iop)
        size = (ds.get("Rows"), ds.get("Columns"))
        if None in size:
            raise MissingTagError(f"{path} (series {series_uid}) has no Rows/Columns.")
        sizes.append(size)
        for_uid = ds.get("FrameOfReferenceUID")
        if not for_uid:
            raise MissingTagError(f"{path} (series {series_uid}) has no FrameOfReferenceUID.")
        for_uids.append(str(for_uid))
        tilt = ds.get("GantryDetectorTilt")
        if tilt not in (None, "") and abs(float(tilt)) > _TILT_TOLERANCE_DEG:
            raise GantryTiltError(
                f"Series {series_uid} is acquired with gantry tilt: GantryDetectorTilt = {float(tilt)} deg in "
                f"{path}; tilted series are not supported (resample to an untilted grid first)."
            )

    checks: list[tuple[str, list, Callable[[object, object], bool], Callable[[object], str]]] = [
        (
            "mixes orientations: ImageOrientationPatient",
            iops,
            lambda a, b: float(np.max(np.abs(np.subtract(a, b)))) <= _IOP_TOLERANCE,
            str,
        ),
        (
            "mixes pixel spacing: PixelSpacing",
            spacings,
            lambda a, b: bool(np.allclose(a, b, rtol=_SPACING_RTOL, atol=1e-6)),
            str,
        ),
        ("mixes matrix sizes:", sizes, lambda a, b: a == b, lambda v: f"{v[0]}x{v[1]}"),
        ("mixes frames of reference: FrameOfReferenceUID", for_uids, lambda a, b: a == b, str),
    ]
    for what, values, same, fmt in checks:
        found = _majority_outlier(values, same)
        if found is not None:
            odd, ref = found
            raise InconsistentSeriesError(
                f"Series {series_uid} {what} {fmt(values[odd])} in {paths[odd]} differs from "
                f"{fmt(values[ref])} in the other slices (e.g. {paths[ref]})."
            )
    return np.asarray(iops[0]), np.asarray(ipps, dtype=np.float64)


def _check_positions(
    paths: list[Path],
    ipps: np.ndarray,
    iop: np.ndarray,
    pixel_spacing: list[float],
    series_uid: str,
    spacing_tolerance: float,
    lateral_tolerance_mm: float | None,
) -> None:
    """Check sorted slices: no duplicates, no tilt (off-normal steps), even spacing."""
    normal = slice_normal(iop)
    pos = ipps @ normal
    steps = np.diff(pos)
    for i, step in enumerate(steps):
        if step < _DUPLICATE_TOLERANCE_MM:
            raise DuplicateSliceError(
                f"Series {series_uid} has two slices at the same position {pos[i]:.3f} mm along the normal: "
                f"{paths[i]} and {paths[i + 1]}."
            )
    lateral_limit = 0.1 * min(pixel_spacing) if lateral_tolerance_mm is None else float(lateral_tolerance_mm)
    offsets = ipps - ipps[0]
    lateral = offsets - np.outer(offsets @ normal, normal)
    dist = np.linalg.norm(lateral, axis=1)
    worst = int(np.argmax(dist))
    if dist[worst] > lateral_limit:
        angle = np.degrees(np.arctan2(dist[worst], abs(pos[worst] - pos[0])))
        raise GantryTiltError(
            f"Series {series_uid}: slice positions do not step along the slice normal {normal.round(4).tolist()} "
            f"(gantry tilt or sheared stack, about {angle:.2f} deg): {paths[worst]} is offset {dist[worst]:.3f} mm "
            f"sideways from {paths[0]} (limit {lateral_limit:.3f} mm)."
        )
    if len(steps) < 2:
        return
    expected = float(np.median(steps))
    for i, step in enumerate(steps):
        if abs(step - expected) > spacing_tolerance * expected:
            missing = int(round(step / expected)) - 1
            what = f"about {missing} slice(s) missing" if missing >= 1 else "uneven spacing"
            raise MissingSliceError(
                f"Series {series_uid} has a gap of {step:.3f} mm (expected {expected:.3f} mm, {what}) between "
                f"position {pos[i]:.3f} mm ({paths[i]}) and {pos[i + 1]:.3f} mm ({paths[i + 1]})."
            )


# --------------------------------------------------------------------------- pixels


def _slice_hu(path: Path, ds: Dataset, series_uid: str, out: np.ndarray) -> Dataset:
    """Decode the slice ``ds`` read from ``path`` by the scan into HU in ``out`` (rows, cols); return ``ds``
    without its pixel data."""
    rows, cols = out.shape
    syntax = UID(str(ds.file_meta.get("TransferSyntaxUID", "")))
    if "PixelData" not in ds:
        raise UnreadableFileError(f"{path} (series {series_uid}) has no PixelData: the file is truncated or incomplete.")
    if int(ds.get("NumberOfFrames", 1) or 1) != 1 or int(ds.get("SamplesPerPixel", 1)) != 1:
        raise InconsistentSeriesError(
            f"{path} (series {series_uid}) is not a single-frame greyscale CT image "
            f"(NumberOfFrames={ds.get('NumberOfFrames')}, SamplesPerPixel={ds.get('SamplesPerPixel')})."
        )
    try:
        arr = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types from its plugins
        if syntax.is_compressed:
            raise UndecodablePixelDataError(
                f"Cannot decode the pixel data of {path} (series {series_uid}), transfer syntax {syntax} "
                f"({syntax.name}): {exc}"
            ) from exc
        raise UnreadableFileError(
            f"Cannot read the pixel data of {path} (series {series_uid}, {syntax.name}): the file is truncated or "
            f"corrupt: {exc}"
        ) from exc
    if arr.shape != (rows, cols):
        raise InconsistentSeriesError(
            f"{path} (series {series_uid}) decodes to shape {arr.shape}, expected ({rows}, {cols})."
        )
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    # Convert contiguously, then copy once into ``out`` (a strided slice of the volume).
    out[...] = arr.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    del ds.PixelData
    return ds


# --------------------------------------------------------------------------- public


@dataclass(frozen=True)
class DecodedSlice:
    """One CT file read and decoded ahead of :func:`read_series` (see :func:`decode_slice`).

    Attributes:
        header: the file's data set without its pixel data.
        hu: the slice in HU, float32 ``(rows, cols)``.
    """

    header: Dataset
    hu: np.ndarray


def decode_slice(path: str | Path) -> DecodedSlice | None:
    """Read and decode one CT Image Storage file ahead of :func:`read_series`, e.g. while a series arrives.

    Never raises for a bad file: anything that is not a decodable single-frame CT image
    gives ``None``, and :func:`read_series` then reads that file itself and reports the problem.

    Args:
        path: the file.
    """
    path = Path(path)
    try:
        ds = _read(path)
        if ds is None or _sop_class(ds) != CTImageStorage or is_localizer(ds):
            return None
        out = np.empty((int(ds.Rows), int(ds.Columns)), dtype=np.float32)
        return DecodedSlice(header=_slice_hu(path, ds, str(ds.get("SeriesInstanceUID", "")), out), hu=out)
    except Exception:  # noqa: BLE001 - read_series reports it properly
        logger.debug("Not decoding %s ahead; read_series will read it", path, exc_info=True)
        return None


def read_series(
    folder: str | Path,
    *,
    series_uid: str | None = None,
    spacing_tolerance: float = 0.05,
    lateral_tolerance_mm: float | None = None,
    decoded: Mapping[Path, DecodedSlice | None] | None = None,
) -> CTSeries:
    """Read one CT series from a folder into a HU volume with a RAS affine.

    Args:
        folder: folder holding the series (any file names; sub-folders are scanned; other
            SOP classes, localizers, a DICOMDIR and non-DICOM files are skipped).
        series_uid: SeriesInstanceUID to read (default None: the CT series with the most
            slices; the others are logged).
        spacing_tolerance: allowed relative deviation of each slice step from the median
            step before slices are reported missing (default 0.05).
        lateral_tolerance_mm: allowed sideways offset of a slice from the line through slice 0
            along the normal (default None: a tenth of the smaller pixel spacing).
        decoded: files already read and decoded by :func:`decode_slice` (default None), by path as
            the folder lists them; they are used instead of reading those files again, and pass the
            same checks. The files must not have changed since.

    Returns:
        The validated :class:`CTSeries`, slices sorted along the slice normal.

    Raises:
        NoSeriesError: no CT series (or not ``series_uid``) in the folder; the message counts
            what was found by SOP class and image type.
        UnreadableFileError: a DICOM file is truncated or cannot be parsed.
        MissingTagError: IPP, IOP, PixelSpacing, Rows/Columns or FrameOfReferenceUID is missing.
        InconsistentSeriesError: mixed orientation, pixel spacing, matrix size or frame of
            reference; non-orthogonal IOP.
        GantryTiltError: GantryDetectorTilt != 0 or positions stepping off the normal.
        DuplicateSliceError: two slices at one position.
        MissingSliceError: uneven spacing beyond ``spacing_tolerance``.
        UndecodablePixelDataError: compressed pixel data that no installed plugin decodes.
    """
    if not 0 < spacing_tolerance < 1:
        raise ValueError(f"`spacing_tolerance` must be in (0, 1), got {spacing_tolerance}.")
    scan = _scan(folder, decoded)
    return _read_scanned(scan, folder, series_uid, spacing_tolerance, lateral_tolerance_mm, decoded)


def read_series_files(
    paths: Iterable[str | Path],
    *,
    series_uid: str | None = None,
    spacing_tolerance: float = 0.05,
    lateral_tolerance_mm: float | None = None,
) -> CTSeries:
    """Read one CT series from the given files only, e.g. files found scattered through an export.

    The same rules, checks and result as :func:`read_series`; errors name the files as given.

    Args:
        paths: the files (other SOP classes, localizers and non-DICOM files among them are skipped).
        series_uid: SeriesInstanceUID to read (default None: the CT series with the most slices).
        spacing_tolerance: as for :func:`read_series` (default 0.05).
        lateral_tolerance_mm: as for :func:`read_series` (default None).

    Raises:
        The errors of :func:`read_series`; :class:`NoSeriesError` also for an empty ``paths``.
    """
    if not 0 < spacing_tolerance < 1:
        raise ValueError(f"`spacing_tolerance` must be in (0, 1), got {spacing_tolerance}.")
    files = sorted(Path(p) for p in paths)
    where = Path(os.path.commonpath([str(p.parent) for p in files])) if files else Path()
    scan = _scan_files(files)
    return _read_scanned(scan, f"the {len(files)} files given under {where}", series_uid, spacing_tolerance,
                         lateral_tolerance_mm, None, where)  # fmt: skip


def _read_scanned(
    scan: _Scan,
    folder: str | Path,
    series_uid: str | None,
    spacing_tolerance: float,
    lateral_tolerance_mm: float | None,
    decoded: Mapping[Path, DecodedSlice | None] | None,
    source: str | Path | None = None,
) -> CTSeries:
    """Choose, check, sort and decode one series of ``scan``, the headers found in ``folder`` (named in errors).

    ``source`` is the path recorded as the volume's ``filename_or_obj`` (default: ``folder``).
    """
    series_uid = _choose_series(folder, scan, series_uid)
    _log_filled(scan, series_uid)
    items = scan.groups[series_uid]

    iop, ipps = _check_consistency(items, series_uid)
    order = np.argsort(ipps @ slice_normal(iop), kind="stable")
    items = [items[i] for i in order]
    ipps = ipps[order]
    paths = [p for p, _ in items]
    pixel_spacing = [float(v) for v in items[0][1].PixelSpacing]
    _check_positions(paths, ipps, iop, pixel_spacing, series_uid, spacing_tolerance, lateral_tolerance_mm)

    rows, cols = int(items[0][1].Rows), int(items[0][1].Columns)
    import torch
    from monai.data import MetaTensor

    volume = torch.empty((rows, cols, len(items)), dtype=torch.float32)
    array = volume.numpy()
    headers = []
    for k, (path, ds) in enumerate(items):
        ready = decoded.get(path) if decoded else None
        if ready is not None:  # its header is `ds` (see _scan), checked with the others above
            array[:, :, k] = ready.hu
            headers.append(ds)
        else:
            headers.append(_slice_hu(path, ds, series_uid, array[:, :, k]))

    try:
        affine = affine_lps_from_datasets(headers)
    except ValueError as exc:
        raise MissingTagError(f"Series {series_uid} ({paths[0]}): {exc}") from exc
    # Use the exact (sorted, validated) IPP of slice 0 as parsed.
    affine[:3, 3] = ipps[0]

    affine_ras = lps_to_ras(affine)
    meta = {
        "filename_or_obj": str(source if source is not None else folder),
        "series_instance_uid": series_uid,
        "space": "RAS",
        "original_affine": affine_ras.copy(),
        "spatial_shape": np.asarray(volume.shape),
    }
    tensor = MetaTensor(volume[None], affine=torch.as_tensor(affine_ras, dtype=torch.float64), meta=meta)
    first = headers[0]
    logger.debug("Read CT series %s: %d slices from %s", series_uid, len(headers), folder)
    return CTSeries(
        volume=tensor,
        datasets=headers,
        files=paths,
        series_instance_uid=series_uid,
        study_instance_uid=str(first.get("StudyInstanceUID", "")),
        frame_of_reference_uid=str(first.FrameOfReferenceUID),
        sop_instance_uids=[str(ds.SOPInstanceUID) for ds in headers],
        sop_class_uid=str(first.SOPClassUID),
    )

