"""Exceptions raised while reading and validating DICOM CT series.

Every exception is a :class:`DicomSeriesError` (a ``ValueError``), so callers
that only want to reject a bad series catch one class; the subclasses let the
service map failures to specific statuses and let tests assert on the kind.
Messages always say what was wrong and which file or UID it concerns.
"""

from __future__ import annotations

__all__ = [
    "DicomSeriesError",
    "DuplicateSliceError",
    "GantryTiltError",
    "InconsistentSeriesError",
    "MissingSliceError",
    "MissingTagError",
    "MultipleSeriesError",
    "NoSeriesError",
    "UndecodablePixelDataError",
    "UnreadableFileError",
]


class DicomSeriesError(ValueError):
    """Base class: a folder does not hold one usable CT series."""


class NoSeriesError(DicomSeriesError):
    """No CT Image Storage instance (or not the requested series) was found."""


class MultipleSeriesError(DicomSeriesError):
    """Several CT series were found and none was selected with ``series_uid``."""


class UnreadableFileError(DicomSeriesError):
    """A DICOM file is truncated or cannot be parsed."""


class UndecodablePixelDataError(DicomSeriesError):
    """Pixel data cannot be decoded (unsupported transfer syntax or corrupt data)."""


class MissingTagError(DicomSeriesError):
    """A tag needed to place the slice in space (IPP, IOP, PixelSpacing, ...) is missing or empty."""


class InconsistentSeriesError(DicomSeriesError):
    """Slices disagree on orientation, pixel spacing, matrix size or frame of reference, or IOP is invalid."""


class GantryTiltError(DicomSeriesError):
    """The series is tilted: GantryDetectorTilt != 0 or slices step off the slice normal."""


class DuplicateSliceError(DicomSeriesError):
    """Two or more slices share one position along the slice normal."""


class MissingSliceError(DicomSeriesError):
    """Slice spacing is uneven beyond the tolerance: slices are missing."""
