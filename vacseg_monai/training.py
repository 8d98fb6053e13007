"""Training helpers referenced from the bundle configs: the loss factory and the fine-tuning guard.

All losses take raw network logits ``(B, C, H, W)`` and an integer label map
``(B, 1, H, W)`` (values 0..C-1), as produced by :mod:`vacseg_monai.transforms`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, DiceLoss, TverskyLoss
from monai.networks.utils import one_hot
from torch import nn

from vacseg_monai.partial_labels import allowed_classes, has_partial

__all__ = [
    "LOSS_NAMES",
    "FocalTverskyLoss",
    "OneHotBCEWithLogitsLoss",
    "PartialLabelLoss",
    "make_loss",
    "refuse_existing_checkpoints",
]

logger = logging.getLogger(__name__)

#: Loss names accepted by :func:`make_loss` (the original CLI's choices).
LOSS_NAMES = ("dice", "dicece", "bce", "focal_tversky")


class OneHotBCEWithLogitsLoss(nn.Module):
    """Binary cross-entropy on each class channel against the one-hot label.

    Args:
        include_background: keep channel 0 in the loss. Defaults to True.
    """

    def __init__(self, include_background: bool = True) -> None:
        super().__init__()
        self.include_background = include_background

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # noqa: A002 (torch naming)
        """Mean BCE over batch, channels and pixels."""
        target = one_hot(target.long(), num_classes=input.shape[1]).to(input.dtype)
        if not self.include_background:
            input, target = input[:, 1:], target[:, 1:]
        return F.binary_cross_entropy_with_logits(input, target)


class FocalTverskyLoss(nn.Module):
    """Focal Tversky loss: ``mean_c (1 - TI_c) ** gamma`` over the softmax probabilities.

    Args:
        alpha: weight of false positives in the Tversky index. Defaults to 0.3.
        beta: weight of false negatives. Defaults to 0.7.
        gamma: focal exponent; below 1 emphasises hard (low-index) classes. Defaults to 0.75.
        include_background: keep channel 0. Defaults to True.

    Raises:
        ValueError: if ``gamma`` is not positive.
    """

    def __init__(
        self, alpha: float = 0.3, beta: float = 0.7, gamma: float = 0.75, include_background: bool = True
    ) -> None:
        super().__init__()
        if gamma <= 0:
            raise ValueError(f"`gamma` must be positive, got {gamma}.")
        self.gamma = gamma
        self.tversky = TverskyLoss(
            include_background=include_background,
            to_onehot_y=True,
            softmax=True,
            alpha=alpha,
            beta=beta,
            reduction="none",
            batch=True,
        )

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # noqa: A002 (torch naming)
        """Mean over classes of the focal Tversky term."""
        per_class = self.tversky(input, target).clamp(min=1e-6)  # keeps the gradient of x**gamma finite
        return (per_class**self.gamma).mean()


#: Losses that :class:`PartialLabelLoss` can train on partial labels.
_PARTIAL_LOSSES = ("dice", "dicece")
#: The smoothing terms of MONAI's DiceLoss, so that both branches of PartialLabelLoss agree.
_DICE_SMOOTH = 1e-5


class PartialLabelLoss(nn.Module):
    """A training loss that also accepts partial labels (:mod:`vacseg_monai.partial_labels`).

    A batch of certain labels goes to ``base`` unchanged. A batch holding partial voxels is trained with:

    - cross-entropy on the marginal: ``-log sum_{c in S} p_c`` for a voxel whose class is one of ``S``, so a
      voxel that may be background or couch is not pushed to either;
    - soft Dice per class over the voxels whose membership of that class is known: a class in an ambiguous set is
      left out of that class's sums at that voxel, while a class outside the set counts as known absent (a
      hard negative's Vacbag).

    Both terms equal MONAI's ``DiceCELoss`` / ``DiceLoss`` (``batch=True``, background included) when every voxel
    is certain.

    Args:
        base: the loss for certain labels.
        name: its name in :data:`LOSS_NAMES`; only ``"dice"`` and ``"dicece"`` train on partial labels.
        include_background: whether channel 0 enters the Dice term. Defaults to True.
    """

    def __init__(self, base: nn.Module, name: str, include_background: bool = True) -> None:
        super().__init__()
        self.base = base
        self.name = name
        self.include_background = include_background

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # noqa: A002 (torch naming)
        """The loss of logits ``(B, C, H, W)`` against labels ``(B, 1, H, W)``.

        Raises:
            ValueError: for partial labels with a loss that cannot train on them.
        """
        if not has_partial(target):
            return self.base(input, target)
        if self.name not in _PARTIAL_LOSSES:
            raise ValueError(
                f"The {self.name!r} loss cannot train on partly annotated patients; use one of "
                f"{list(_PARTIAL_LOSSES)}, or annotate every label."
            )
        allowed = allowed_classes(target, input.shape[1])
        certain = allowed.sum(1, keepdim=True) == 1
        truth = (allowed & certain).to(input.dtype)
        known = (~(allowed & ~certain)).to(input.dtype)
        probs = torch.softmax(input, 1)
        first = 0 if self.include_background else 1
        dims = [0, *range(2, input.dim())]
        intersection = (probs * truth * known)[:, first:].sum(dims)
        denominator = (probs * known)[:, first:].sum(dims) + truth[:, first:].sum(dims)
        dice = (1.0 - (2.0 * intersection + _DICE_SMOOTH) / (denominator + _DICE_SMOOTH)).mean()
        if self.name == "dice":
            return dice
        log_all = torch.logsumexp(input, 1)
        log_allowed = torch.logsumexp(input.masked_fill(~allowed, float("-inf")), 1)
        return dice + (log_all - log_allowed).mean()


def make_loss(loss: str = "dicece", include_background: bool = True) -> nn.Module:
    """Build the training loss by name.

    Args:
        loss: one of ``"dice"`` (soft Dice), ``"dicece"`` (Dice + cross-entropy, default),
            ``"bce"`` (per-class binary cross-entropy), ``"focal_tversky"``.
        include_background: whether channel 0 enters the loss. Defaults to True.

    Returns:
        A :class:`PartialLabelLoss` around the named loss: partly annotated patients train on what they annotate.

    Raises:
        ValueError: for an unknown name.
    """
    name = str(loss).lower()
    if name == "dice":
        base: nn.Module = DiceLoss(include_background=include_background, to_onehot_y=True, softmax=True, batch=True)
    elif name == "dicece":
        base = DiceCELoss(include_background=include_background, to_onehot_y=True, softmax=True, batch=True)
    elif name == "bce":
        base = OneHotBCEWithLogitsLoss(include_background=include_background)
    elif name == "focal_tversky":
        base = FocalTverskyLoss(include_background=include_background)
    else:
        raise ValueError(f"`loss` must be one of {list(LOSS_NAMES)}, got {loss!r}.")
    return PartialLabelLoss(base, name, include_background)


def refuse_existing_checkpoints(ckpt_dir: str | Path) -> Path:
    """Stop a fine-tuning run that would write over checkpoints already in ``ckpt_dir``.

    ``configs/finetune.json`` writes into a new, time-stamped folder under ``models/``; this guard makes sure
    that an explicit ``--ckpt_dir`` never silently replaces the shipped ``model.pt`` or an earlier fine-tune.

    Args:
        ckpt_dir: the run's checkpoint folder.

    Raises:
        FileExistsError: if the folder already holds ``*.pt`` files.
    """
    folder = Path(ckpt_dir)
    existing = sorted(p.name for p in folder.glob("*.pt")) if folder.is_dir() else []
    if existing:
        raise FileExistsError(
            f"{folder} already holds {', '.join(existing)}; fine-tuning never overwrites a checkpoint: "
            "pass a new --ckpt_dir (the default is a new time-stamped folder under models/)."
        )
    return folder
