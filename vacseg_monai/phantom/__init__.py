"""Synthetic canine and feline planning CT with truth labels for the vacuum bag, couch and body.

Two generator versions, chosen by ``version``:

- 1 (:mod:`~vacseg_monai.phantom.v1`): the clean world the first model was trained on, one
  couch design, one bag texture, every patient a dog in a bag. Kept bit-identical.
- 2 (:mod:`~vacseg_monai.phantom.v2`, the default): a world as varied as real planning CT,
  composed from :mod:`~vacseg_monai.phantom.anatomy` (the animal),
  :mod:`~vacseg_monai.phantom.devices` (couches, pads, blankets, vacuum bags) and
  :mod:`~vacseg_monai.phantom.scanner` (field of view, noise, kernels, artefacts, padding).

Every patient is a deterministic function of its seed and version. Arrays follow the
project convention ``[row, col, slice]``; label numbers come from :mod:`vacseg_monai.labels`.
"""

from __future__ import annotations

from vacseg_monai.phantom.dataset import generate_dataset, montage_panels, write_npy_layout
from vacseg_monai.phantom.model import Phantom, Tissue, phantom_patient_id
from vacseg_monai.phantom.versions import DEFAULT_VERSION, VERSIONS, generate_phantom

__all__ = [
    "DEFAULT_VERSION",
    "VERSIONS",
    "Phantom",
    "Tissue",
    "generate_dataset",
    "generate_phantom",
    "montage_panels",
    "phantom_patient_id",
    "write_npy_layout",
]
