"""The phantom record shared by every generator version: :class:`Phantom` and :class:`Tissue`."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np

__all__ = ["OUTSIDE_HU", "Phantom", "Tissue", "phantom_patient_id"]

#: HU outside the reconstruction circle when a scanner stores no padding value (air).
OUTSIDE_HU = -1024


class Tissue(enum.IntEnum):
    """Tissue and material classes of the phantom (finer than the labels; used by tests and QA).

    Classes 0-9 are those of generator v1; v2 adds the rest. The label of each class is fixed:
    BAG, BAG_SKIN and BAG_VALVE are Vacbag; COUCH_* except COUCH_BASE are Couch; SOFT, FAT,
    BONE, LUNG, GAS, CONTRAST and METAL are Body; AIR, PAD, FABRIC and COUCH_BASE are background.
    """

    AIR = 0
    SOFT = 1
    FAT = 2
    BONE = 3
    LUNG = 4
    GAS = 5
    BAG = 6
    BAG_SKIN = 7
    COUCH_SHELL = 8
    COUCH_CORE = 9
    COUCH_RAIL = 10
    COUCH_BASE = 11
    PAD = 12
    FABRIC = 13
    BAG_VALVE = 14
    CONTRAST = 15
    METAL = 16


@dataclass
class Phantom:
    """One synthetic patient: CT volume, truth labels, geometry and patient information.

    Args:
        patient_id: stable identifier derived from the seed, e.g. ``"phantom_000"``.
        seed: the seed the patient was generated from.
        image: CT in Hounsfield units, int16, shape (rows, cols, n_slices). It is a view on
            slice-major storage, so ``image[:, :, k]`` is contiguous. Pixels outside the
            reconstruction circle hold ``padding_hu``, as a scanner stores them.
        labels: label map, uint8, same shape: 0 background, 1 Vacbag, 2 Couch, 3 Body.
        tissues: :class:`Tissue` map, uint8, same shape (truth before blur and noise).
        pixel_spacing: (row spacing, column spacing) in mm.
        slice_thickness_mm: slice thickness, equal to the slice spacing, in mm.
        bag_slices: (start, stop) slice indices of the vacuum bag, stop exclusive; (0, 0) when
            the patient has no bag.
        lung_slices: indices of the slices that contain lung.
        patient_name: DICOM person name, e.g. ``"Phantom^Rex"``.
        species_description: Patient Species Description (0010,2201), "Canine" or "Feline".
        breed_description: Patient Breed Description (0010,2292).
        sex: Patient's Sex, ``"M"`` or ``"F"``.
        neutered: Patient's Sex Neutered (0010,2203), ``"ALTERED"`` or ``"UNALTERED"``.
        weight_kg: Patient's Weight in kg.
        responsible_person: Responsible Person (0010,2297).
        responsible_person_role: Responsible Person Role (0010,2298).
        responsible_organization: Responsible Organization (0010,2299).
        rescale_intercept: Rescale Intercept the DICOM writer uses (-1024 or 0), default -1024.
        padding_hu: HU outside the reconstruction circle (default -1024, air); -2000 or -3024
            when the scanner pads, in which case the DICOM series carries a Pixel Padding Value.
        extra: generation details (noise level, scan direction, devices, ...) for tests and QA.
    """

    patient_id: str
    seed: int
    image: np.ndarray
    labels: np.ndarray
    tissues: np.ndarray
    pixel_spacing: tuple[float, float]
    slice_thickness_mm: float
    bag_slices: tuple[int, int]
    lung_slices: np.ndarray
    patient_name: str
    species_description: str = "Canine"
    breed_description: str = "Mixed Breed"
    sex: str = "F"
    neutered: str = "ALTERED"
    weight_kg: float = 20.0
    responsible_person: str = "Doe^Jane"
    responsible_person_role: str = "OWNER"
    responsible_organization: str = "Vacseg Phantom Veterinary Clinic"
    rescale_intercept: float = -1024.0
    padding_hu: int = OUTSIDE_HU
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def n_slices(self) -> int:
        """Number of axial slices."""
        return int(self.image.shape[2])

    @property
    def has_bag(self) -> bool:
        """Whether the patient lies in a vacuum bag on any slice."""
        return self.bag_slices[1] > self.bag_slices[0]


def phantom_patient_id(seed: int) -> str:
    """Folder name and Patient ID of the phantom generated from ``seed``."""
    return f"phantom_{seed:03d}"
