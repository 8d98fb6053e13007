"""Partial labels: training on patients whose annotation covers only some of the labels.

A clinic often contours Body and Vacbag and leaves the couch to the TPS; a real scan used as a hard negative has a
Body, no Vacbag (known absent) and a couch nobody outlined. Training such a patient as if every unlabelled voxel
were background teaches the model "no couch". Instead, each patient says which labels its annotation covers
(``annotation.json`` in the patient folder, see :mod:`vacseg_monai.datasets`), and every background voxel of that
patient means "background, or one of the labels not annotated".

Inside the training chain that ambiguity travels in the label map itself, so that every MONAI spatial transform
(nearest resize, flips, affine) carries it unchanged: a voxel whose class is one of a set ``S`` holds
``PARTIAL_BASE + sum(2**c for c in S)``. Values below ``PARTIAL_BASE`` are ordinary, certain labels.
:class:`PartialLabelsd` writes these values; :class:`vacseg_monai.training.PartialLabelLoss` trains on them
(marginal cross-entropy, Dice restricted to voxels whose membership is known); :class:`ResolvePartialLabelsd`
turns them back into certain labels for the training metrics.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from vacseg_monai.labels import BACKGROUND, LABELS, label_by_name, num_classes

__all__ = [
    "ANNOTATED_KEY",
    "PARTIAL_BASE",
    "PartialLabelsd",
    "ResolvePartialLabelsd",
    "allowed_classes",
    "check_annotated",
    "has_partial",
    "unannotated_code",
]

#: Label values from here on encode a set of possible classes (bit c set: class c possible).
PARTIAL_BASE = 128
#: Item key holding the annotated label names of a slice's patient, comma-separated.
ANNOTATED_KEY = "annotated"


def check_annotated(names: Sequence[str], source: str) -> tuple[str, ...]:
    """Canonical label names of an annotation, in label-table order.

    Args:
        names: label names (or their aliases) that the annotation covers.
        source: where the names come from, for error messages.

    Raises:
        ValueError: for a name that is not in the label table.
    """
    wanted = set()
    for name in names:
        try:
            wanted.add(label_by_name(str(name)).name)
        except (KeyError, ValueError) as exc:
            known = ", ".join(label.name for label in LABELS)
            raise ValueError(f"{source}: unknown label {name!r} in the annotated labels; known: {known}.") from exc
    return tuple(label.name for label in LABELS if label.name in wanted)


def unannotated_code(annotated: Sequence[str]) -> int | None:
    """The label value that background voxels of a patient with these annotated labels get.

    Returns:
        ``None`` when every label is annotated (background is certain), else ``PARTIAL_BASE`` plus the bits of
        background and of every label not annotated.
    """
    names = set(check_annotated(annotated, "annotation"))
    missing = [label.value for label in LABELS if label.name not in names]
    if not missing:
        return None
    return PARTIAL_BASE + sum(1 << value for value in (BACKGROUND, *missing))


def has_partial(label: torch.Tensor) -> bool:
    """Whether a label tensor holds any partial (set-valued) voxel."""
    return bool((label >= PARTIAL_BASE).any())


def allowed_classes(label: torch.Tensor, n_classes: int | None = None) -> torch.Tensor:
    """Boolean one-hot of the classes each voxel may belong to.

    Args:
        label: ``(B, 1, ...)`` label map, certain values and partial codes.
        n_classes: number of classes. Defaults to the label table's.

    Returns:
        ``(B, C, ...)`` bool tensor: exactly one class for certain voxels, the encoded set for partial ones.

    Raises:
        ValueError: for a certain value outside ``[0, C)`` or a partial code with no class in range.
    """
    n = num_classes() if n_classes is None else int(n_classes)
    values = label.long()
    partial = values >= PARTIAL_BASE
    bits = torch.where(partial, values - PARTIAL_BASE, torch.ones_like(values) << values.clamp(0, 62))
    certain_values = values[~partial]
    if certain_values.numel() and (int(certain_values.min()) < 0 or int(certain_values.max()) >= n):
        raise ValueError(
            f"Label values must be in [0, {n}) or partial codes >= {PARTIAL_BASE}; "
            f"found {sorted(set(certain_values.unique().tolist()) - set(range(n)))}."
        )
    classes = torch.arange(n, device=label.device).view(1, n, *([1] * (label.dim() - 2)))
    allowed = ((bits >> classes) & 1).bool()
    if bool((allowed.sum(1) == 0).any()):
        raise ValueError(f"A partial label code names no class below {n}.")
    return allowed


class PartialLabelsd(MapTransform):
    """Give background voxels of a partly annotated patient the partial code of their possible classes.

    Reads the annotated label names from ``item[annotated_key]`` (comma-separated, as
    :func:`vacseg_monai.datasets.slice_items` writes them) and removes that key, so that cached and collated items
    look the same whatever the patient's annotation. Items without the key, or annotated with every label, are
    left as they are.

    Args:
        keys: label keys. Defaults to ``"label"``.
        annotated_key: item key of the annotated names. Defaults to :data:`ANNOTATED_KEY`.
    """

    def __init__(self, keys: KeysCollection = "label", annotated_key: str = ANNOTATED_KEY) -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.annotated_key = annotated_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Replace background by the patient's partial code."""
        d = dict(data)
        annotated = d.pop(self.annotated_key, None)
        if annotated is None:
            return d
        names = [name for name in str(annotated).split(",") if name]
        code = unannotated_code(names)
        if code is None:
            return d
        for key in self.key_iterator(d):
            label = d[key]
            d[key] = torch.where(label == BACKGROUND, torch.full_like(label, code), label)
        return d


class ResolvePartialLabelsd(MapTransform):
    """For the training metrics: settle each partial voxel on the predicted class when the set allows it.

    A partial voxel whose predicted class is in its set counts as that class (the loss does not penalise it
    either); otherwise it counts as the lowest class of its set (background when allowed). Certain voxels are
    unchanged.

    Args:
        keys: label keys. Defaults to ``"label"``.
        pred_key: key of the prediction (logits or probabilities, channel first). Defaults to ``"pred"``.
    """

    def __init__(self, keys: KeysCollection = "label", pred_key: str = "pred") -> None:
        super().__init__(keys)
        self.pred_key = pred_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Replace partial codes by certain labels."""
        d = dict(data)
        pred = d[self.pred_key]
        for key in self.key_iterator(d):
            label = d[key]
            if not has_partial(label):
                continue
            allowed = allowed_classes(label[None], pred.shape[0])[0]
            predicted = pred.argmax(0, keepdim=True)
            in_set = allowed.gather(0, predicted)
            lowest = allowed.float().argmax(0, keepdim=True)
            settled = torch.where(in_set, predicted, lowest).to(label.dtype)
            d[key] = torch.where(label >= PARTIAL_BASE, settled, label)
        return d
