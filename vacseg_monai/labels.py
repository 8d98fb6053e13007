"""The single label table: numbers, names, colours, RT ROI types and codes.

Everything that needs to know about labels (the phantom generator, the data
pipeline, the bundle metadata, the RTSTRUCT and DICOM-SEG writers, the overlay
pictures) reads it from here.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "BACKGROUND",
    "checked_label_map",
    "LABELS",
    "Code",
    "Label",
    "RTROIInterpretedType",
    "label_by_name",
    "label_by_value",
    "num_classes",
]

BACKGROUND = 0


class RTROIInterpretedType(str, enum.Enum):
    """Defined terms of RT ROI Interpreted Type (3006,00A4) that this project uses."""

    EXTERNAL = "EXTERNAL"
    FIXATION = "FIXATION"
    SUPPORT = "SUPPORT"
    ORGAN = "ORGAN"
    AVOIDANCE = "AVOIDANCE"
    CONTROL = "CONTROL"


@dataclass(frozen=True)
class Code:
    """A coded concept (code value, coding scheme designator, code meaning)."""

    value: str
    scheme: str
    meaning: str


# Project coding scheme for concepts that SNOMED CT / DCM do not name.
PROJECT_SCHEME = "99VACSEG"


@dataclass(frozen=True)
class Label:
    """One structure the model segments.

    Args:
        value: label number in label maps (1..N; 0 is background).
        name: ROI name written to RTSTRUCT and segment label in DICOM-SEG.
        color: display colour as 8-bit RGB.
        rt_roi_type: RT ROI Interpreted Type for RTSTRUCT.
        category: DICOM-SEG segmented property category.
        type: DICOM-SEG segmented property type.
        description: one-line description for bundle metadata and docs.
    """

    value: int
    name: str
    color: tuple[int, int, int]
    rt_roi_type: RTROIInterpretedType
    category: Code
    type: Code
    description: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "rt_roi_type", RTROIInterpretedType(self.rt_roi_type))


_PHYSICAL_OBJECT = Code("260787004", "SCT", "Physical object")
# CID 7150 "Segmentation Property Categories" (123037004 is SNOMED's "Body structure").
_ANATOMICAL_STRUCTURE = Code("91723000", "SCT", "Anatomical Structure")

LABELS: tuple[Label, ...] = (
    Label(
        value=1,
        name="Vacbag",
        color=(255, 170, 0),
        rt_roi_type=RTROIInterpretedType.FIXATION,
        category=_PHYSICAL_OBJECT,
        # CID 7157 "Device Segmentation Types" / CID 9513 "Fixation Devices".
        type=Code("130118", "DCM", "Vacuum Mold"),
        description="vacuum immobilisation bag (polystyrene-bead cushion)",
    ),
    Label(
        value=2,
        name="Couch",
        color=(0, 170, 255),
        rt_roi_type=RTROIInterpretedType.SUPPORT,
        category=_PHYSICAL_OBJECT,
        # CID 7157 "Device Segmentation Types" / CID 9515 "RT Patient Support Devices".
        type=Code("86407004", "SCT", "Table"),
        description="treatment couch top (carbon-fibre shells around a foam core)",
    ),
    Label(
        value=3,
        name="Body",
        color=(0, 200, 80),
        rt_roi_type=RTROIInterpretedType.EXTERNAL,
        category=_ANATOMICAL_STRUCTURE,
        type=Code("38266002", "SCT", "Entire body"),
        description="external outline of the patient",
    ),
)


def num_classes() -> int:
    """Number of network output channels: background plus every label."""
    return len(LABELS) + 1


def label_by_value(value: int) -> Label:
    """Return the label with number ``value``.

    Raises:
        KeyError: if no label has that number.
    """
    for label in LABELS:
        if label.value == value:
            return label
    raise KeyError(f"No label with value {value}; known values are {[lb.value for lb in LABELS]}.")


def label_by_name(name: str) -> Label:
    """Return the label named ``name`` (case-insensitive, exact otherwise).

    Raises:
        KeyError: if no label has that name.
    """
    for label in LABELS:
        if label.name.lower() == name.lower():
            return label
    raise KeyError(f"No label named {name!r}; known names are {[lb.name for lb in LABELS]}.")


def checked_label_map(array: np.ndarray, source: str, label_table: Sequence[Label] = LABELS) -> np.ndarray:
    """Check that ``array`` holds label numbers of the table and return it as uint8 (not copied if it is uint8).

    A bool mask, or 0/1 in any numeric dtype, reads as Vacbag (1). Whole-valued
    floats are accepted (label maps saved as float by some tools).

    Args:
        array: label values as stored.
        source: what to name in errors (the file, patient or UID).
        label_table: the label table (default :data:`LABELS`).

    Raises:
        ValueError: for non-integer values, a non-numeric dtype, or numbers not in the table.
    """
    allowed = [BACKGROUND, *(label.value for label in label_table)]
    array = np.asarray(array)
    if array.dtype == np.bool_:
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        finite = np.isfinite(array)
        whole = finite & (array == np.round(np.where(finite, array, 0)))
        if not whole.all():
            odd = np.unique(array[~whole])[:5].tolist()
            raise ValueError(
                f"{source}: label values must be whole numbers {allowed}, found non-integer values {odd} "
                f"(dtype {array.dtype}); pass a label map, not probabilities or an image."
            )
    elif not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{source}: label dtype {array.dtype} is not an integer, bool or float type.")
    if array.size and set(range(int(array.min()), int(array.max()) + 1)) <= set(allowed):
        return array.astype(np.uint8, copy=False)  # every value in range is a label: no need for np.unique
    unknown = [v for v in np.unique(array).tolist() if v not in allowed]
    if unknown:
        table = ", ".join(f"{label.value} {label.name}" for label in label_table)
        raise ValueError(
            f"{source}: label values {unknown[:10]} are not in the label table (0 background, {table}); "
            "a binary 0/1 mask is read as Vacbag."
        )
    return array.astype(np.uint8, copy=False)
