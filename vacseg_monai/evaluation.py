"""Performance table of the bundle on held-out synthetic phantoms.

Each phantom (seeds outside the training range, 1000.. by default) is written in the
per-slice npy layout to a temporary folder and segmented by the bundle's own
inference workflow (``configs/inference.json``, parsed with
:class:`monai.bundle.ConfigParser` exactly as ``python -m monai.bundle run`` does),
so the numbers cover preprocessing, the sliding 2D inferer, resampling to the CT
grid and the connected-component clean-up. The label map is compared to the
phantom's truth per label with:

- Dice (:func:`monai.metrics.compute_dice`),
- 95th percentile Hausdorff distance in mm (:func:`monai.metrics.compute_hausdorff_distance`,
  ``percentile=95``, voxel spacing of the phantom),
- surface Dice at a tolerance in mm (:func:`monai.metrics.compute_surface_dice`, 2 mm default),
- precision TP / (TP + FP) and sensitivity TP / (TP + FN) from voxel counts.

A metric that is undefined for a patient (e.g. a label missing from the prediction)
is NaN in the CSV and left out of that label's mean and standard deviation, whose
``n`` column says how many patients contributed.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vacseg_monai.labels import LABELS, Label

__all__ = [
    "DEFAULT_SEEDS",
    "DEFAULT_TOLERANCE_MM",
    "DOCS_BEGIN",
    "DOCS_END",
    "LabelMetrics",
    "PhantomSegmenter",
    "evaluate_phantoms",
    "label_metrics",
    "markdown_table",
    "read_csv",
    "summarise",
    "update_performance_section",
    "write_csv",
]

logger = logging.getLogger(__name__)

#: Held-out phantom seeds (the training set is generated from seeds 0..n-1).
DEFAULT_SEEDS = tuple(range(1000, 1005))
#: Surface Dice tolerance in mm.
DEFAULT_TOLERANCE_MM = 2.0
#: Markers around the generated part of the bundle README's "Performance" section.
DOCS_BEGIN = "<!-- performance:begin -->"
DOCS_END = "<!-- performance:end -->"

_METRICS = ("dice", "hd95_mm", "surface_dice", "precision", "sensitivity")
_HEADERS = {
    "dice": "Dice",
    "hd95_mm": "HD95 (mm)",
    "surface_dice": "Surface Dice @ {tol:g} mm",
    "precision": "Precision",
    "sensitivity": "Sensitivity",
}


@dataclass
class LabelMetrics:
    """Metrics of one label of one patient (one CSV row).

    Attributes:
        patient_id: phantom patient id (e.g. ``"phantom_1000"``).
        seed: phantom seed.
        label: label name from the label table.
        dice: Dice coefficient.
        hd95_mm: 95th percentile symmetric Hausdorff distance in mm.
        surface_dice: surface Dice at ``tolerance_mm``.
        precision: TP / (TP + FP).
        sensitivity: TP / (TP + FN).
        truth_voxels: voxels of the label in the truth.
        pred_voxels: voxels of the label in the prediction.
        tolerance_mm: surface Dice tolerance.
        pred_cm3: volume of the label in the prediction; where the truth has none (a phantom without a
            bag), all of it is a false positive.
    """

    patient_id: str
    seed: int
    label: str
    dice: float
    hd95_mm: float
    surface_dice: float
    precision: float
    sensitivity: float
    truth_voxels: int
    pred_voxels: int
    tolerance_mm: float
    pred_cm3: float = 0.0


def _one_hot(labels: np.ndarray, values: Sequence[int]) -> torch.Tensor:
    """(rows, cols, n) label map -> bool (1, 1 + len(values), rows, cols, n), channel 0 = everything else."""
    t = torch.as_tensor(np.ascontiguousarray(labels))
    channels = [t == v for v in values]
    background = ~torch.stack(channels).any(0)
    return torch.stack([background, *channels])[None]


def _ratio(num: int, den: int) -> float:
    return float(num) / float(den) if den > 0 else math.nan


def _finite_or_nan(value: float) -> float:
    return float(value) if math.isfinite(value) else math.nan


def label_metrics(
    pred: np.ndarray,
    truth: np.ndarray,
    spacing: Sequence[float],
    tolerance_mm: float = DEFAULT_TOLERANCE_MM,
    label_table: Sequence[Label] = LABELS,
    patient_id: str = "",
    seed: int = -1,
) -> list[LabelMetrics]:
    """Compare a predicted label map with the truth, per label of the table.

    Args:
        pred: predicted label map, (rows, cols, n_slices) integers.
        truth: truth label map, same shape.
        spacing: voxel spacing (row, col, slice) in mm.
        tolerance_mm: surface Dice tolerance in mm. Defaults to 2.
        label_table: labels to evaluate. Defaults to :data:`vacseg_monai.labels.LABELS`.
        patient_id: written into the rows. Defaults to "".
        seed: written into the rows. Defaults to -1.

    Returns:
        one :class:`LabelMetrics` per label, in table order. Distances that MONAI
        reports as infinite (a label absent from one side) are NaN.

    Raises:
        ValueError: if the shapes differ, are not 3D, or ``spacing`` / ``tolerance_mm`` are invalid.
    """
    pred = np.asarray(pred)
    truth = np.asarray(truth)
    if pred.shape != truth.shape or pred.ndim != 3:
        raise ValueError(
            f"{patient_id or 'prediction'}: prediction {pred.shape} and truth {truth.shape} must be equal "
            "3D shapes (rows, cols, n_slices)."
        )
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"`spacing` must be three positive (row, col, slice) spacings in mm, got {spacing!r}.")
    if not tolerance_mm > 0:
        raise ValueError(f"`tolerance_mm` must be > 0, got {tolerance_mm!r}.")
    from monai.metrics import compute_dice, compute_hausdorff_distance, compute_surface_dice

    values = [label.value for label in label_table]
    p = _one_hot(pred, values)
    t = _one_hot(truth, values)
    dice = compute_dice(p, t, include_background=False, ignore_empty=True)[0]
    hd95 = compute_hausdorff_distance(p, t, include_background=False, percentile=95, spacing=spacing)[0]
    nsd = compute_surface_dice(
        p, t, class_thresholds=[float(tolerance_mm)] * len(values), include_background=False, spacing=spacing
    )[0]
    rows = []
    for i, label in enumerate(label_table):
        pm = pred == label.value
        tm = truth == label.value
        tp = int(np.count_nonzero(pm & tm))
        n_pred = int(np.count_nonzero(pm))
        n_truth = int(np.count_nonzero(tm))
        rows.append(
            LabelMetrics(
                patient_id=patient_id,
                seed=int(seed),
                label=label.name,
                dice=_finite_or_nan(float(dice[i])),
                hd95_mm=_finite_or_nan(float(hd95[i])),
                surface_dice=_finite_or_nan(float(nsd[i])),
                precision=_ratio(tp, n_pred),
                sensitivity=_ratio(tp, n_truth),
                truth_voxels=n_truth,
                pred_voxels=n_pred,
                tolerance_mm=float(tolerance_mm),
                pred_cm3=round(n_pred * float(np.prod(spacing)) / 1000.0, 4),
            )
        )
    return rows


class PhantomSegmenter:
    """Segment npy patient folders with the bundle loaded once.

    An adapter of :class:`vacseg_monai.segmenter.BundleSegmenter` (the bundle's
    ``configs/inference.json`` components, network and weights loaded once) to the
    ``(patient_dir, spacing) -> label map`` callable that :func:`evaluate_phantoms` uses.

    Args:
        bundle_root: the bundle folder (holding ``configs/inference.json``).
        ckpt_path: checkpoint to load. Defaults to None: ``<bundle_root>/models/model.pt``.
        overrides: further config overrides, e.g. ``{"channels": [4, 8, 16], "device": "cpu"}``.
            Defaults to None.

    Raises:
        FileNotFoundError: if the config or the checkpoint does not exist.
    """

    def __init__(
        self,
        bundle_root: str | os.PathLike[str],
        ckpt_path: str | os.PathLike[str] | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> None:
        from vacseg_monai.segmenter import BundleSegmenter

        self.segmenter = BundleSegmenter(bundle_root, ckpt_path=ckpt_path, overrides=dict(overrides or {}))

    def __call__(self, patient_dir: str | os.PathLike[str], spacing: Sequence[float]) -> np.ndarray:
        """Segment one npy patient folder; return the label map (rows, cols, n_slices) uint8.

        Args:
            patient_dir: ``<patient>`` folder holding ``img/<i>.npy``.
            spacing: (row, col, slice) spacing in mm (the npy files carry no geometry).
        """
        from vacseg_monai.inputs import load_input

        source = load_input(patient_dir, npy_spacing=[float(s) for s in spacing])
        return self.segmenter.segment(source).labels


def evaluate_phantoms(
    segmenter: Any,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    size: int = 512,
    tolerance_mm: float = DEFAULT_TOLERANCE_MM,
    label_table: Sequence[Label] = LABELS,
    phantom_version: int | None = None,
) -> list[LabelMetrics]:
    """Generate one phantom per seed, segment it and compute the per-label metrics.

    Args:
        segmenter: callable ``(patient_dir, spacing) -> label map (rows, cols, n)``,
            usually a :class:`PhantomSegmenter`.
        seeds: phantom seeds. Defaults to :data:`DEFAULT_SEEDS` (1000..1004).
        size: rows and columns of the phantom slices. Defaults to 512.
        tolerance_mm: surface Dice tolerance. Defaults to 2.
        label_table: labels to evaluate. Defaults to :data:`vacseg_monai.labels.LABELS`.
        phantom_version: phantom generator version (default None: the generator's default).

    Returns:
        rows in seed order, then label order.

    Raises:
        ValueError: if ``seeds`` is empty or repeats a seed, or a prediction has the wrong shape.
    """
    from vacseg_monai.phantom import DEFAULT_VERSION, generate_phantom, write_npy_layout

    version = DEFAULT_VERSION if phantom_version is None else int(phantom_version)

    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("`seeds` must name at least one phantom seed, got an empty list.")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"`seeds` must not repeat a seed, got {seeds}.")
    rows: list[LabelMetrics] = []
    with tempfile.TemporaryDirectory(prefix="vacseg_phantoms_") as tmp:
        for seed in seeds:
            phantom = generate_phantom(seed, size=size, version=version)
            spacing = (*phantom.pixel_spacing, phantom.slice_thickness_mm)
            patient_dir = write_npy_layout(phantom, tmp)
            pred = segmenter(patient_dir, spacing)
            if pred.shape != phantom.labels.shape:
                raise ValueError(
                    f"{phantom.patient_id}: the prediction has shape {pred.shape}, the phantom {phantom.labels.shape}."
                )
            patient_rows = label_metrics(
                pred, phantom.labels, spacing, tolerance_mm, label_table, phantom.patient_id, seed
            )
            logger.info(
                "%s: %s",
                phantom.patient_id,
                ", ".join(f"{r.label} Dice {r.dice:.3f} HD95 {r.hd95_mm:.1f} mm" for r in patient_rows),
            )
            rows.extend(patient_rows)
    return rows


def write_csv(rows: Sequence[LabelMetrics], path: str | os.PathLike[str]) -> Path:
    """Write the rows as CSV (one row per patient and label, header from :class:`LabelMetrics`).

    Args:
        rows: the metrics.
        path: CSV file; its folder is created.

    Returns:
        the path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = [f.name for f in fields(LabelMetrics)]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=names)
        writer.writeheader()
        for row in rows:
            writer.writerow(asdict(row))
    return path


def read_csv(path: str | os.PathLike[str]) -> list[LabelMetrics]:
    """Read rows written by :func:`write_csv`.

    Raises:
        ValueError: if the header is not that of :func:`write_csv`.
    """
    types = {f.name: f.type for f in fields(LabelMetrics)}
    casts = {"str": str, "int": int, "float": float}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != list(types):
            raise ValueError(f"{path} has columns {reader.fieldnames}; expected {list(types)}.")
        return [LabelMetrics(**{k: casts[str(types[k])](v) for k, v in row.items()}) for row in reader]


def summarise(rows: Sequence[LabelMetrics]) -> dict[str, dict[str, tuple[float, float, int]]]:
    """Mean, sample standard deviation and count of the finite values, per label and metric.

    Args:
        rows: the metrics.

    Returns:
        ``{label: {metric: (mean, sd, n)}}`` in order of first appearance; sd is 0 for n = 1
        and mean/sd are NaN for n = 0.
    """
    out: dict[str, dict[str, tuple[float, float, int]]] = {}
    labels = list(dict.fromkeys(r.label for r in rows))
    for label in labels:
        out[label] = {}
        for metric in _METRICS:
            values = np.array([getattr(r, metric) for r in rows if r.label == label], dtype=np.float64)
            values = values[np.isfinite(values)]
            n = int(values.size)
            mean = float(values.mean()) if n else math.nan
            sd = float(values.std(ddof=1)) if n > 1 else (0.0 if n == 1 else math.nan)
            out[label][metric] = (mean, sd, n)
    return out


def markdown_table(rows: Sequence[LabelMetrics]) -> str:
    """Markdown table of mean +- sd per label (one row per label, one column per metric).

    Args:
        rows: the metrics.

    Returns:
        the table, ending with a newline.
    """
    tolerance = rows[0].tolerance_mm if rows else DEFAULT_TOLERANCE_MM
    summary = summarise(rows)
    n_patients = len({r.patient_id for r in rows})
    headers = ["Label", *(_HEADERS[m].format(tol=tolerance) for m in _METRICS)]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(["---"] + ["---:"] * len(_METRICS)) + "|"]
    for label, metrics in summary.items():
        cells = [label]
        for metric in _METRICS:
            mean, sd, n = metrics[metric]
            digits = 1 if metric == "hd95_mm" else 3
            cell = "n/a" if n == 0 else f"{mean:.{digits}f} ± {sd:.{digits}f}"
            if 0 < n < n_patients:
                cell += f" (n={n})"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    absent = _absent_truth_lines(rows)
    return "\n".join(lines) + "\n" + ("\n" + "\n".join(absent) + "\n" if absent else "")


def _absent_truth_lines(rows: Sequence[LabelMetrics]) -> list[str]:
    """One line per label that some patients lack (e.g. phantoms without a bag): what was drawn there."""
    lines = []
    for label in dict.fromkeys(r.label for r in rows):
        empty = [r for r in rows if r.label == label and r.truth_voxels == 0]
        if empty:
            drawn = ", ".join(f"{r.patient_id} {r.pred_cm3:.2f} cm³" for r in empty)
            lines.append(f"Patients without {label} ({len(empty)}): {label} drawn {drawn} (false positives; "
                         "Dice is undefined there and left out above).")  # fmt: skip
    return lines


def update_performance_section(readme: str | os.PathLike[str], body: str) -> Path:
    """Replace the text between :data:`DOCS_BEGIN` and :data:`DOCS_END` in ``readme`` by ``body``.

    Args:
        readme: the bundle's ``docs/README.md``.
        body: Markdown to put between the markers.

    Returns:
        the README path.

    Raises:
        ValueError: if the markers are missing, repeated or out of order (the file is not changed).
    """
    readme = Path(readme)
    text = readme.read_text()
    if text.count(DOCS_BEGIN) != 1 or text.count(DOCS_END) != 1 or text.index(DOCS_BEGIN) > text.index(DOCS_END):
        raise ValueError(
            f"{readme} must contain {DOCS_BEGIN!r} followed by {DOCS_END!r} exactly once each "
            "(around the generated part of its Performance section)."
        )
    pattern = re.compile(re.escape(DOCS_BEGIN) + r".*?" + re.escape(DOCS_END), flags=re.DOTALL)
    new = pattern.sub(lambda _: f"{DOCS_BEGIN}\n{body.strip()}\n{DOCS_END}", text)
    readme.write_text(new)
    return readme
