"""Small pure functions for CT slice geometry (DICOM LPS and MONAI RAS).

Project convention (the README's "Architecture" section): a volume is indexed
``[row, col, slice]``; slices are ordered by increasing position along the
slice normal ``n = row_dir x col_dir`` where ``row_dir = IOP[0:3]`` (direction
of increasing column index) and ``col_dir = IOP[3:6]`` (direction of
increasing row index). The LPS affine maps ``(row, col, slice, 1)`` to
millimetres::

    column 0 = col_dir * PixelSpacing[0]   (one row down)
    column 1 = row_dir * PixelSpacing[1]   (one column right)
    column 2 = n * slice spacing
    column 3 = ImagePositionPatient of slice 0

and the RAS affine (MONAI) is ``diag(-1, -1, 1, 1) @ affine_lps``.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from types import MappingProxyType

import numpy as np

__all__ = [
    "PatientPosition",
    "LPS_TO_RAS",
    "affine_lps",
    "affine_lps_from_datasets",
    "check_iop",
    "index_to_lps",
    "iop_for_patient_position",
    "lps_to_index",
    "lps_to_ras",
    "ras_to_lps",
    "slice_normal",
    "slice_positions",
]

#: Flip between LPS (DICOM) and RAS (MONAI, NIfTI) world coordinates; its own inverse.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
LPS_TO_RAS.setflags(write=False)


class PatientPosition(str, enum.Enum):
    """Patient Position (0018,5100) defined terms for a lying patient.

    Each value carries the ImageOrientationPatient that a scanner writes for an
    axial slice displayed with the couch at the bottom of the image (the view
    from the gantry's foot side for head-first, mirrored left-right for
    feet-first, as the major vendors do).
    """

    HFS = "HFS"
    FFS = "FFS"
    HFP = "HFP"
    FFP = "FFP"
    HFDL = "HFDL"
    HFDR = "HFDR"
    FFDL = "FFDL"
    FFDR = "FFDR"

    @property
    def iop(self) -> tuple[float, ...]:
        """ImageOrientationPatient (row direction cosines, then column direction cosines)."""
        return _IOP_BY_POSITION[self.value]


# Row dir, column dir (LPS). The column direction (image "down") always points
# towards the couch: posterior for supine, anterior for prone, the patient's
# left for decubitus-left (lying on the left side), right for decubitus-right.
# The slice normal row x col is +z (towards the head) for head-first and -z for
# feet-first positions.
_IOP_BY_POSITION = MappingProxyType({
    "HFS": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    "FFS": (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    "HFP": (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0),
    "FFP": (1.0, 0.0, 0.0, 0.0, -1.0, 0.0),
    "HFDL": (0.0, -1.0, 0.0, 1.0, 0.0, 0.0),
    "HFDR": (0.0, 1.0, 0.0, -1.0, 0.0, 0.0),
    "FFDL": (0.0, 1.0, 0.0, 1.0, 0.0, 0.0),
    "FFDR": (0.0, -1.0, 0.0, -1.0, 0.0, 0.0),
})


def iop_for_patient_position(position: str | PatientPosition) -> tuple[float, ...]:
    """Return the axial ImageOrientationPatient used for a Patient Position.

    Args:
        position: one of HFS, FFS, HFP, FFP, HFDL, HFDR, FFDL, FFDR.

    Raises:
        ValueError: for any other value.
    """
    try:
        return PatientPosition(str(position).upper()).iop
    except ValueError:
        allowed = ", ".join(p.value for p in PatientPosition)
        raise ValueError(f"Patient position must be one of {allowed}, got {position!r}.") from None


def check_iop(iop: Sequence[float], *, where: str = "", tol: float = 1e-4) -> np.ndarray:
    """Validate an ImageOrientationPatient value and return it as a (2, 3) array.

    Args:
        iop: six direction cosines.
        where: file or UID named in the error message.
        tol: tolerance on unit length and orthogonality (default 1e-4).

    Raises:
        ValueError: when there are not six finite values, a vector is not unit
            length, or the two vectors are not orthogonal.
    """
    arr = np.asarray([float(v) for v in iop], dtype=np.float64)
    at = f" in {where}" if where else ""
    if arr.shape != (6,) or not np.all(np.isfinite(arr)):
        raise ValueError(f"ImageOrientationPatient{at} must hold 6 finite numbers, got {list(iop)}.")
    vecs = arr.reshape(2, 3)
    norms = np.linalg.norm(vecs, axis=1)
    if np.any(np.abs(norms - 1.0) > tol):
        raise ValueError(
            f"ImageOrientationPatient{at} has non-unit direction cosines (lengths {norms.round(6).tolist()}): {list(iop)}."
        )
    dot = float(vecs[0] @ vecs[1])
    if abs(dot) > tol:
        raise ValueError(
            f"ImageOrientationPatient{at} is not orthogonal (row . col = {dot:.6f}): {list(iop)}."
        )
    return vecs


def slice_normal(iop: Sequence[float]) -> np.ndarray:
    """Return the unit slice normal ``IOP[0:3] x IOP[3:6]`` (LPS)."""
    arr = np.asarray([float(v) for v in iop], dtype=np.float64)
    n = np.cross(arr[:3], arr[3:6])
    return n / np.linalg.norm(n)


def slice_positions(ipps: Sequence[Sequence[float]], iop: Sequence[float]) -> np.ndarray:
    """Project ImagePositionPatient values on the slice normal (mm), one per slice."""
    return np.asarray(ipps, dtype=np.float64).reshape(-1, 3) @ slice_normal(iop)


def affine_lps(
    iop: Sequence[float],
    pixel_spacing: Sequence[float],
    slice_spacing: float,
    origin: Sequence[float],
) -> np.ndarray:
    """Build the 4x4 LPS affine mapping ``(row, col, slice, 1)`` to millimetres.

    Args:
        iop: ImageOrientationPatient (row dir cosines, column dir cosines).
        pixel_spacing: PixelSpacing (row spacing, column spacing) in mm.
        slice_spacing: distance between consecutive slices along the normal, mm.
        origin: ImagePositionPatient of slice 0.
    """
    arr = np.asarray([float(v) for v in iop], dtype=np.float64)
    row_dir, col_dir = arr[:3], arr[3:6]
    aff = np.eye(4)
    aff[:3, 0] = col_dir * float(pixel_spacing[0])
    aff[:3, 1] = row_dir * float(pixel_spacing[1])
    aff[:3, 2] = slice_normal(arr) * float(slice_spacing)
    aff[:3, 3] = np.asarray(origin, dtype=np.float64)
    return aff


def affine_lps_from_datasets(datasets: Sequence, *, slice_spacing: float | None = None) -> np.ndarray:
    """LPS affine of a series from its headers, already sorted along the normal.

    The slice spacing is ``(pos[-1] - pos[0]) / (n - 1)`` along the normal; for a
    single slice pass ``slice_spacing`` (else SpacingBetweenSlices or
    SliceThickness is used).

    Args:
        datasets: pydicom datasets in slice order (increasing position along n).
        slice_spacing: override for the slice spacing in mm (default None).

    Raises:
        ValueError: when there are no datasets or a single slice has no spacing.
    """
    if len(datasets) == 0:
        raise ValueError("affine_lps_from_datasets needs at least one dataset, got none.")
    first = datasets[0]
    iop = [float(v) for v in first.ImageOrientationPatient]
    if slice_spacing is None:
        if len(datasets) > 1:
            pos = slice_positions([datasets[0].ImagePositionPatient, datasets[-1].ImagePositionPatient], iop)
            slice_spacing = float(pos[1] - pos[0]) / (len(datasets) - 1)
        else:
            value = first.get("SpacingBetweenSlices") or first.get("SliceThickness")
            if not value:
                raise ValueError(
                    "Single-slice series without SpacingBetweenSlices or SliceThickness: pass slice_spacing=."
                )
            slice_spacing = float(value)
    return affine_lps(iop, [float(v) for v in first.PixelSpacing], slice_spacing, first.ImagePositionPatient)


def lps_to_ras(affine: np.ndarray) -> np.ndarray:
    """Convert a 4x4 LPS affine to RAS (``diag(-1,-1,1,1) @ affine``)."""
    return LPS_TO_RAS @ np.asarray(affine, dtype=np.float64)


def ras_to_lps(affine: np.ndarray) -> np.ndarray:
    """Convert a 4x4 RAS affine to LPS (the flip is its own inverse)."""
    return LPS_TO_RAS @ np.asarray(affine, dtype=np.float64)


def index_to_lps(affine: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Map (N, 3) continuous ``(row, col, slice)`` indices to (N, 3) LPS mm."""
    idx = np.asarray(indices, dtype=np.float64).reshape(-1, 3)
    return idx @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]


def lps_to_index(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map (N, 3) LPS mm to continuous ``(row, col, slice)`` indices."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    inv = np.linalg.inv(np.asarray(affine, dtype=np.float64))
    return pts @ inv[:3, :3].T + inv[:3, 3]
