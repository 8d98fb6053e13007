"""Quality score per structure and per slice: where should the physicist look?

A contour that is wrong and one that is right look alike in the TPS. This module scores each structure from
signals that cost a small share of the network's time:

* **uncertainty** from the network's own softmax: the share of a structure's voxels (and of the voxels where it
  is the runner-up) whose top-2 probability margin is below ``margin``, on the network's low-resolution grid,
  per structure and per slice;
* **plausibility** of the label map against what a planning CT of an animal on a couch looks like: the Vacbag's
  mean HU, the Vacbag lying against the body, the body not cut by the edge of the field of view, and a couch
  found below the body and at least about as wide. The last two concern every structure: a field of view that
  cuts the body cuts what lies around it, and a couch missing, above, beside or narrower than the body means
  an image turned from the trained orientation (or no planning CT at all), where no contour is to be trusted;
* **the input** against what the model was trained on: pixel spacing, slice spacing, field of view, and the HU
  of air (a wrong rescale moves it far from -1000).

Each structure gets a score in [0, 1] (the lowest of its signals' scores), a flag when the score is below
``threshold``, and the reasons in words ("Vacbag: 40 % of its voxels are uncertain on slices 31-44"). The
thresholds are the bundle's (``quality`` in ``configs/inference.json``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from vacseg_monai.labels import LABELS, Label, label_by_name

__all__ = ["QualityConfig", "QualityReport", "StructureQuality", "assess_quality", "slice_ranges"]

logger = logging.getLogger(__name__)

#: Score given to a structure that fails a plausibility or input check: under any sensible threshold.
FAILED_CHECK_SCORE = 0.25
#: HU below which a voxel is padding outside the scanner's reconstruction circle (-2000, -3024, ...).
PADDING_HU = -1500.0
#: In-plane stride of the uncertainty sample on the network's grid.
UNCERTAINTY_STRIDE = 2


@dataclass(frozen=True)
class QualityConfig:
    """Thresholds of the quality score (the bundle's ``quality`` block).

    Args:
        threshold: a structure scoring below is flagged. Defaults to 0.5.
        margin: top-2 softmax margin below which a voxel is uncertain. Defaults to 0.5.
        max_uncertain_fraction: uncertain share of a structure that scores 0. Defaults to 0.5.
        slice_uncertain_fraction: a slice is flagged when more of the structure's voxels on it are uncertain.
            Defaults to 0.4.
        min_slice_pixels: slices where a structure has fewer sampled pixels (every other pixel of the network's
            grid) are not judged on their own. Defaults to 20.
        vacbag_hu: range of the Vacbag's mean HU (polystyrene beads and film). Defaults to (-1000, -450).
        vacbag_body_gap_mm: a Vacbag voxel further than this from the body (in-plane) lies away from it.
            Defaults to 20.
        vacbag_away_fraction: share of the Vacbag lying away from the body that fails it. Defaults to 0.5.
        pixel_spacing_mm: accepted range of the in-plane pixel spacing (the network sees every scan at
            256 x 256, so the field of view matters more). Defaults to (0.2, 2.5).
        slice_spacing_mm: trained range of the slice spacing. Defaults to (0.4, 6.0).
        fov_mm: trained range of the field of view's width. Defaults to (150, 650).
        air_hu: range of the HU of air (5th percentile inside the reconstruction circle). Defaults to (-1100, -850).
        min_structure_cm3: a structure drawn smaller than this is not judged by its uncertainty (what the
            clean-up removed leaves a few uncertain pixels behind). Defaults to 1.
        couch_body_width_ratio: a Couch narrower than this times the body's width on most slices fails (the
            image is turned, or what was drawn is no couch). Defaults to 0.75.
    """

    threshold: float = 0.5
    margin: float = 0.5
    max_uncertain_fraction: float = 0.5
    slice_uncertain_fraction: float = 0.4
    min_slice_pixels: int = 20
    vacbag_hu: tuple[float, float] = (-1000.0, -450.0)
    vacbag_body_gap_mm: float = 20.0
    vacbag_away_fraction: float = 0.5
    pixel_spacing_mm: tuple[float, float] = (0.2, 2.5)
    slice_spacing_mm: tuple[float, float] = (0.4, 6.0)
    fov_mm: tuple[float, float] = (150.0, 650.0)
    air_hu: tuple[float, float] = (-1100.0, -850.0)
    min_structure_cm3: float = 1.0
    couch_body_width_ratio: float = 0.75

    def __post_init__(self) -> None:
        for name in ("threshold", "margin", "max_uncertain_fraction", "slice_uncertain_fraction",
                     "vacbag_away_fraction"):  # fmt: skip
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise ValueError(f"`{name}` must be in (0, 1], got {value}.")
        for name in ("vacbag_hu", "pixel_spacing_mm", "slice_spacing_mm", "fov_mm", "air_hu"):
            low, high = getattr(self, name)
            if not low < high:
                raise ValueError(f"`{name}` must be a (low, high) range with low < high, got {(low, high)}.")
        if self.couch_body_width_ratio < 0:
            raise ValueError(f"`couch_body_width_ratio` must be >= 0, got {self.couch_body_width_ratio}.")
        if self.min_structure_cm3 < 0:
            raise ValueError(f"`min_structure_cm3` must be >= 0, got {self.min_structure_cm3}.")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> QualityConfig:
        """Build from the bundle's ``quality`` block, naming any key this class does not know."""
        values = dict(values or {})
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"Unknown quality settings {unknown}; known: {sorted(cls.__dataclass_fields__)}.")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


@dataclass
class StructureQuality:
    """The quality of one structure.

    Attributes:
        name: the structure (label table name).
        score: 0 (doubtful) to 1 (confident).
        flagged: score below the threshold.
        reasons: why, in words; empty when nothing was found.
        flagged_slices: 0-based slice indices (volume order) to look at first.
        volume_cm3: the structure's volume.
        uncertain_fraction: share of its voxels that are uncertain.
    """

    name: str
    score: float
    flagged: bool
    reasons: list[str] = field(default_factory=list)
    flagged_slices: list[int] = field(default_factory=list)
    volume_cm3: float = 0.0
    uncertain_fraction: float = 0.0


@dataclass
class QualityReport:
    """Quality of every structure of one segmented volume.

    Attributes:
        structures: per structure name.
        input_reasons: what is unusual about the input itself.
        threshold: the flag threshold used.
    """

    structures: dict[str, StructureQuality]
    input_reasons: list[str]
    threshold: float

    @property
    def flagged(self) -> list[str]:
        """Names of the flagged structures."""
        return [name for name, s in self.structures.items() if s.flagged]

    @property
    def min_score(self) -> float:
        """The lowest structure score (1.0 when there is no structure)."""
        return min((s.score for s in self.structures.values()), default=1.0)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (``job.json``'s ``quality`` block, ``<name>_quality.json``)."""
        return {
            "threshold": self.threshold,
            "flagged": self.flagged,
            "input_reasons": list(self.input_reasons),
            "structures": {name: asdict(s) for name, s in self.structures.items()},
        }

    def summary(self) -> str:
        """One line: each structure's score, flagged ones marked with ``!``."""
        return " ".join(f"{n} {s.score:.2f}{'!' if s.flagged else ''}" for n, s in self.structures.items())

    def roi_notes(self, label_table: Sequence[Label]) -> dict[int, str]:
        """:meth:`note` of each scored structure, by the label value of ``label_table`` that carries it."""
        return {label.value: self.note(label.name) for label in label_table if label.name in self.structures}

    def note(self, name: str, limit: int = 64) -> str:
        """A short note on one structure for the RTSTRUCT (at most ``limit`` characters)."""
        s = self.structures[name]
        text = f"QA {s.score:.2f} {'FLAGGED' if s.flagged else 'ok'}"
        if s.flagged and s.flagged_slices:
            text += f" sl {slice_ranges(s.flagged_slices, one_based=True)}"
        return text[:limit]


def slice_ranges(indices: Sequence[int], one_based: bool = False) -> str:
    """``[3, 4, 5, 9]`` -> ``"3-5, 9"`` (``one_based`` adds 1 to each, as a person counts slices)."""
    shift = 1 if one_based else 0
    values = sorted({int(i) + shift for i in indices})
    parts: list[str] = []
    start = prev = None
    for v in values + [None]:
        if start is not None and v is not None and v == prev + 1:
            prev = v
            continue
        if start is not None:
            parts.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = v
    return ", ".join(parts)


def _uncertainty(logits: torch.Tensor, margin: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Argmax, runner-up and uncertain mask of logits ``(C, h, w, n)`` on every other pixel in-plane.

    Shares of uncertain voxels need a sample, not every pixel: a quarter of them costs a quarter of the time.
    """
    probs = torch.softmax(logits[:, ::UNCERTAINTY_STRIDE, ::UNCERTAINTY_STRIDE].float(), dim=0)
    top = probs.topk(2, dim=0)
    uncertain = (top.values[0] - top.values[1]) < margin
    return top.indices[0].cpu().numpy(), top.indices[1].cpu().numpy(), uncertain.cpu().numpy()


def _uncertainty_signal(
    value: int, first: np.ndarray, second: np.ndarray, uncertain: np.ndarray, config: QualityConfig
) -> tuple[float, float, list[int]]:
    """Score, uncertain share and flagged slices of one label from the low-resolution maps."""
    involved = (first == value) | ((second == value) & uncertain)
    per_slice_total = involved.sum(axis=(0, 1))
    per_slice_uncertain = (involved & uncertain).sum(axis=(0, 1))
    total = int(per_slice_total.sum())
    if total == 0:
        return 1.0, 0.0, []
    fraction = float(per_slice_uncertain.sum()) / total
    judged = per_slice_total >= config.min_slice_pixels
    share = np.divide(per_slice_uncertain, np.maximum(per_slice_total, 1))
    slices = np.flatnonzero(judged & (share > config.slice_uncertain_fraction)).tolist()
    score = float(np.clip(1.0 - fraction / config.max_uncertain_fraction, 0.0, 1.0))
    return score, fraction, slices


def _input_reasons(hu: np.ndarray, columns: int, spacing: Sequence[float], config: QualityConfig) -> list[str]:
    """What is unusual about the input (``hu`` may be a sample of it, ``columns`` wide) against the trained ranges."""
    reasons = []
    row_mm, col_mm, slice_mm = (float(s) for s in spacing)
    checks = (
        ("pixel spacing", max(row_mm, col_mm), config.pixel_spacing_mm, "mm"),
        ("pixel spacing", min(row_mm, col_mm), config.pixel_spacing_mm, "mm"),
        ("slice spacing", slice_mm, config.slice_spacing_mm, "mm"),
        ("field of view", columns * col_mm, config.fov_mm, "mm"),
    )
    for what, value, (low, high), unit in checks:
        if not low <= value <= high:
            reasons.append(f"{what} {value:.2f} {unit} is outside the trained {low:g}-{high:g} {unit}")
    sample = hu[::4, ::4, :: max(1, hu.shape[2] // 32)]
    inside = sample[sample > PADDING_HU]
    if inside.size:
        air = float(np.percentile(inside, 5))
        low, high = config.air_hu
        if not low <= air <= high:
            reasons.append(f"air reads {air:.0f} HU (expected {low:g} to {high:g}): check the rescale")
    return list(dict.fromkeys(reasons))


def _vacbag_checks(labels: np.ndarray, hu: np.ndarray, spacing: Sequence[float], config: QualityConfig) -> list[str]:
    bag = labels == label_by_name("Vacbag").value
    if not bag.any():
        return []
    reasons = []
    mean_hu = float(hu[bag].mean())
    low, high = config.vacbag_hu
    if not low <= mean_hu <= high:
        reasons.append(f"Vacbag mean {mean_hu:.0f} HU is outside {low:g} to {high:g} HU (not bead foam)")
    bag_slices = bag.any(axis=(0, 1))
    body = labels[..., bag_slices] == label_by_name("Body").value
    radius = np.maximum(1, np.round(config.vacbag_body_gap_mm / np.asarray(spacing[:2], float))).astype(int)
    near = ndimage.maximum_filter(body.view(np.uint8), size=(2 * radius[0] + 1, 2 * radius[1] + 1, 1)) > 0
    touching = np.zeros_like(bag_slices)
    touching[bag_slices] = (bag[..., bag_slices] & near).any(axis=(0, 1))
    apart = np.flatnonzero(bag_slices & ~touching)
    if apart.size > config.vacbag_away_fraction * bag_slices.sum():
        reasons.append(f"the Vacbag lies more than {config.vacbag_body_gap_mm:g} mm from the body on slices "
                       f"{slice_ranges(apart, one_based=True)}")  # fmt: skip
    return reasons


def _couch_checks(labels: np.ndarray, min_width_ratio: float) -> list[str]:
    """Where the Couch is: missing, not below the body, or narrower than ``min_width_ratio`` x the body on most
    slices (the image flipped or transposed; a couch carries the whole animal, so it is about as wide or wider).

    These reasons concern every structure: a network trained on the couch below the patient is not to be
    trusted on an image turned another way.
    """
    couch = labels == label_by_name("Couch").value
    body = labels == label_by_name("Body").value
    if not couch.any():
        return ["no Couch was found (a planning CT has one under the patient): is this the right input?"]
    both = couch.any(axis=(0, 1)) & body.any(axis=(0, 1))
    if not both.any():
        return []
    rows = np.arange(labels.shape[0], dtype=np.float64)[:, None]
    cols = np.arange(labels.shape[1], dtype=np.float64)[None, :]

    def centre(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        count = mask.sum(axis=(0, 1))
        return (mask.sum(axis=1) * rows).sum(axis=0) / count, (mask.sum(axis=0) * cols.T).sum(axis=0) / count

    def width(mask: np.ndarray) -> np.ndarray:
        spans = mask.any(axis=0)
        first, last = spans.argmax(axis=0), spans.shape[0] - 1 - spans[::-1].argmax(axis=0)
        return (last - first + 1).astype(np.float64)

    (couch_r, couch_c), (body_r, body_c) = centre(couch[..., both]), centre(body[..., both])
    down, across = couch_r - body_r, np.abs(couch_c - body_c)
    indices = np.flatnonzero(both)
    above, beside = indices[down < 0], indices[(down >= 0) & (across > down)]
    narrow = indices[width(couch[..., both]) < min_width_ratio * width(body[..., both])]
    n = both.sum()
    if above.size > 0.5 * n:
        return [f"the Couch lies above the body on slices {slice_ranges(above, one_based=True)}: "
                "is the image flipped?"]
    if above.size + beside.size > 0.5 * n:
        return [f"the Couch lies beside the body on slices {slice_ranges(np.r_[above, beside], one_based=True)}: "
                "is the image turned?"]
    if narrow.size > 0.5 * n:
        return [f"the Couch is narrower than {min_width_ratio:g} x the body on slices "
                f"{slice_ranges(narrow, one_based=True)}: is the image turned, or is it no couch?"]
    return []


def _body_checks(labels: np.ndarray, hu: np.ndarray) -> tuple[list[str], list[int]]:
    body = labels == label_by_name("Body").value
    if not body.any():
        return ["no Body was found"], []
    outside = ndimage.maximum_filter((hu < PADDING_HU).view(np.uint8), size=(5, 5, 1)) > 0
    outside[[0, -1], :] = True
    outside[:, [0, -1]] = True
    slices = np.flatnonzero((body & outside).any(axis=(0, 1))).tolist()
    if slices:
        return [f"the body is cut by the edge of the field of view on slices {slice_ranges(slices, True)}"], slices
    return [], []


def _coarse(labels: np.ndarray, hu: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray, list]:
    """Every ``step``-th pixel in-plane (about 256 across): the checks need shapes, not every voxel."""
    step = max(1, min(labels.shape[:2]) // 256)
    spacing = [float(spacing[0]) * step, float(spacing[1]) * step, float(spacing[2])]
    return labels[::step, ::step], hu[::step, ::step], spacing


def assess_quality(
    logits: torch.Tensor,
    labels: np.ndarray,
    hu: np.ndarray,
    spacing: Sequence[float],
    config: QualityConfig | None = None,
) -> QualityReport:
    """Score every structure of one segmented volume.

    Args:
        logits: the network's output for the volume, ``(C, h, w, n)`` on its own (low-resolution) grid.
        labels: the final label map ``(rows, cols, n)`` on the CT grid.
        hu: the CT in HU, ``(rows, cols, n)``.
        spacing: ``(row, col, slice)`` spacing in mm.
        config: thresholds (default :class:`QualityConfig`).

    Raises:
        ValueError: for shapes that do not match.
    """
    config = config or QualityConfig()
    if labels.shape != hu.shape or labels.ndim != 3:
        raise ValueError(f"`labels` {labels.shape} and `hu` {hu.shape} must be the same (rows, cols, n) shape.")
    if logits.ndim != 4 or logits.shape[-1] != labels.shape[-1]:
        raise ValueError(f"`logits` must be (C, h, w, {labels.shape[-1]}), got {tuple(logits.shape)}.")
    first, second, uncertain = _uncertainty(logits, config.margin)
    small_labels, small_hu, small_spacing = _coarse(labels, hu, spacing)
    input_reasons = _input_reasons(small_hu, labels.shape[1], spacing, config)
    body_reasons, body_slices = _body_checks(small_labels, small_hu)
    setup = _couch_checks(small_labels, config.couch_body_width_ratio)
    if body_slices:
        setup.append(f"the field of view cuts the body on slices {slice_ranges(body_slices, one_based=True)}: "
                     "what lies around it is likely cut too")
    checks = {
        "Vacbag": (_vacbag_checks(small_labels, small_hu, small_spacing, config), []),
        "Body": (body_reasons, body_slices),
    }
    voxel_cm3 = float(np.prod(np.asarray(spacing, float))) / 1000.0
    structures = {}
    for label in LABELS:
        volume_cm3 = np.count_nonzero(labels == label.value) * voxel_cm3
        score, fraction, slices = _uncertainty_signal(label.value, first, second, uncertain, config)
        if volume_cm3 < config.min_structure_cm3:  # not drawn: a few uncertain pixels left by the clean-up
            score, slices = 1.0, []
        reasons = []
        if slices:
            reasons.append(f"{fraction:.0%} of its voxels are uncertain; most on slices "
                           f"{slice_ranges(slices, one_based=True)}")  # fmt: skip
        elif score < 1.0 and score < config.threshold:
            reasons.append(f"{fraction:.0%} of its voxels are uncertain")
        failed, check_slices = checks.get(label.name, ([], []))
        failed = failed + [r for r in setup if label.name != "Body" or "field of view" not in r]
        if failed or input_reasons:
            score = min(score, FAILED_CHECK_SCORE)
        reasons += failed + [f"input: {r}" for r in input_reasons]
        structures[label.name] = StructureQuality(
            name=label.name,
            score=round(score, 3),
            flagged=score < config.threshold,
            reasons=reasons,
            flagged_slices=sorted(set(slices) | set(check_slices)),
            volume_cm3=round(volume_cm3, 3),
            uncertain_fraction=round(fraction, 4),
        )
    report = QualityReport(structures=structures, input_reasons=input_reasons, threshold=config.threshold)
    if report.flagged:
        logger.info("Quality: %s", report.summary())
    return report
