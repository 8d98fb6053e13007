"""Measured value of the quality score: does a low score find the structures that are wrong?

Cases with known truth, each segmented by the bundle's inference components
(:class:`vacseg_monai.segmenter.BundleSegmenter`, which also scores each structure with
:mod:`vacseg_monai.quality` and the thresholds of the bundle's ``quality`` block):

- **good**: held-out phantoms (seeds 1000.., outside the training seeds; generator version 1, the
  scenes the shipped model was trained on), centre-cropped to at most ``--max-slices`` slices;
- **corrupted** copies of each (:data:`CORRUPTIONS`): noise x3, metal streaks, FOV truncation,
  a wrong rescale (+1024 HU), slices flipped up-down, slices transposed. The truth is the
  phantom's own label map (flipped or transposed with the image; for the FOV truncation the
  whole patient and set-up, which are there even where the scanner did not reconstruct them);
- **bag-free** phantoms of generator version 2 (half as many as the good ones, the first bag-free
  seeds from 2000 on): the Vacbag's truth is "absent";
- **real CT** from :mod:`vacseg_monai.public_data` (fetched into its cache at run time): none has
  a vacuum bag, so the Vacbag's truth is "absent"; the Body is compared with the reference body
  of :func:`vacseg_monai.realct.reference_body`; the Couch has no truth and is left out.

A structure's true quality is its surface Dice at 2 mm against the truth, or, where the truth has
no such structure, the volume drawn (all false positive). It is **bad** when the surface Dice is
below 0.9 or the false positive exceeds 1 cm3. The report: the ROC of ``1 - score`` for finding a
bad structure and its AUROC, the share of good held-out phantom structures flagged at the bundle's
threshold, the per-case table, and the quality stage's time against the network's on the same run.

    .venv/bin/python -m benchmarks.bench_quality [--phantoms 4] [--max-slices 64] [--size 512]
        [--bundle DIR] [--ckpt MODEL.pt] [--no-real-ct] [--plot docs/quality_roc.png] [--out FILE]
"""

from __future__ import annotations

import argparse
import inspect
import logging
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from benchmarks.common import REPO_ROOT, bench_parser, machine_info, run_cli, table

if TYPE_CHECKING:
    from vacseg_monai.inputs import InferenceInput
    from vacseg_monai.segmenter import BundleSegmenter

__all__ = [
    "BAD_FP_CM3",
    "BAD_SURFACE_DICE",
    "CORRUPTIONS",
    "REAL_SCANS",
    "auroc",
    "case_rows",
    "flip_up_down",
    "fov_truncate",
    "main",
    "metal_streaks",
    "noise_x3",
    "report_ideas",
    "report_section",
    "roc_curve",
    "run",
    "save_roc_plot",
    "structure_truth",
    "surface_dice",
    "transpose_slices",
    "wrong_rescale",
]

logger = logging.getLogger(__name__)

#: A structure is bad below this surface Dice (at :data:`TOLERANCE_MM`) ...
BAD_SURFACE_DICE = 0.9
#: ... or when the truth has none of it and more than this many cm3 are drawn.
BAD_FP_CM3 = 1.0
TOLERANCE_MM = 2.0
#: Targets of issue 12.
TARGET_AUROC = 0.90
TARGET_GOOD_FLAGGED = 0.05
TARGET_COST_RATIO = 0.30
#: Real scans used (keys of vacseg_monai.public_data.SCANS); those that cannot be read are reported and skipped.
REAL_SCANS = ("totalseg_dicom", "totalseg_nifti", "lung1", "lung2", "pydicom_explicit_vr_un")
#: HU written outside the reconstruction circle by FOV truncation (as many scanners pad).
PADDING_HU = -3024.0
#: Peak HU of a metal point.
METAL_HU = 3071.0

# ---------------------------------------------------------------- corruptions (pure functions)

Corruption = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]


def noise_x3(hu: np.ndarray, truth: np.ndarray, rng: np.random.Generator, noise_sd_hu: float = 20.0
             ) -> tuple[np.ndarray, np.ndarray]:
    """Three times the image noise: adds Gaussian noise of ``sqrt(3**2 - 1) * noise_sd_hu``."""
    extra = math.sqrt(8.0) * float(noise_sd_hu)
    return (hu + rng.normal(0.0, extra, hu.shape)).astype(np.float32), truth


def metal_streaks(hu: np.ndarray, truth: np.ndarray, rng: np.random.Generator, n_lines: int = 8,
                  strength_hu: float = 1500.0) -> tuple[np.ndarray, np.ndarray]:
    """A metal point inside the body on the middle half of the slices, with bright and dark streaks through it.

    Each of ``n_lines`` lines through the point (evenly spread angles, random phase) is bright
    (+``strength_hu``) or dark (-``strength_hu``) in turn, two pixels wide, fading with the distance;
    the point itself is :data:`METAL_HU`.
    """
    out = np.array(hu, dtype=np.float32, copy=True)
    rows, cols, n = out.shape
    body = truth == _label("Body")
    inside = np.argwhere(body[:, :, n // 2])
    centre = inside.mean(axis=0) if inside.size else np.array([rows / 2, cols / 2])
    yy, xx = np.mgrid[:rows, :cols].astype(np.float32)
    dy, dx = yy - centre[0], xx - centre[1]
    dist = np.hypot(dy, dx)
    streaks = np.zeros((rows, cols), np.float32)
    phase = rng.uniform(0, np.pi)
    width = max(1.0, rows / 256.0)
    for i in range(n_lines):
        angle = phase + np.pi * i / n_lines
        off_line = np.abs(dx * np.sin(angle) - dy * np.cos(angle))
        sign = 1.0 if i % 2 == 0 else -1.0
        streaks += sign * strength_hu * (off_line < width) * np.exp(-dist / (0.5 * rows))
    point = dist < max(2.0, rows / 100.0)
    span = slice(n // 4, max(n // 4 + 1, 3 * n // 4))
    out[:, :, span] += streaks[:, :, None]
    out[:, :, span][point] = METAL_HU
    return np.clip(out, -1024.0, METAL_HU), truth


def fov_truncate(hu: np.ndarray, truth: np.ndarray, rng: np.random.Generator, keep: float = 0.85
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Pad with :data:`PADDING_HU` outside a centred circle whose radius is ``keep`` x the body's furthest reach.

    The truth is kept whole: the patient and the set-up are there even where the scanner did not
    reconstruct them.
    """
    out = np.array(hu, dtype=np.float32, copy=True)
    rows, cols, _ = out.shape
    yy, xx = np.mgrid[:rows, :cols]
    dist = np.hypot(yy - (rows - 1) / 2, xx - (cols - 1) / 2)
    body = (truth == _label("Body")).any(axis=2)
    reach = dist[body].max() if body.any() else min(rows, cols) / 2
    out[dist > keep * reach] = PADDING_HU
    return out, truth


def wrong_rescale(hu: np.ndarray, truth: np.ndarray, rng: np.random.Generator, shift_hu: float = 1024.0
                  ) -> tuple[np.ndarray, np.ndarray]:
    """A wrong RescaleIntercept: every value ``shift_hu`` higher (air reads about +24 HU)."""
    return (np.asarray(hu, np.float32) + shift_hu).astype(np.float32), truth


def flip_up_down(hu: np.ndarray, truth: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Each slice flipped up-down (the couch at the top), the truth with it."""
    return np.ascontiguousarray(hu[::-1]), np.ascontiguousarray(truth[::-1])


def transpose_slices(hu: np.ndarray, truth: np.ndarray, rng: np.random.Generator
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of each slice swapped (the couch at the side), the truth with them."""
    return np.ascontiguousarray(hu.transpose(1, 0, 2)), np.ascontiguousarray(truth.transpose(1, 0, 2))


CORRUPTIONS: dict[str, Corruption] = {
    "noise x3": noise_x3,
    "metal streaks": metal_streaks,
    "FOV truncation": fov_truncate,
    "rescale +1024": wrong_rescale,
    "flipped up-down": flip_up_down,
    "transposed": transpose_slices,
}

# ---------------------------------------------------------------- truth and ROC (pure functions)


def _label(name: str) -> int:
    from vacseg_monai.labels import label_by_name

    return label_by_name(name).value


def surface_dice(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float], tolerance_mm: float = TOLERANCE_MM
                 ) -> float:
    """Surface Dice of two bool masks at ``tolerance_mm`` (:func:`monai.metrics.compute_surface_dice`).

    Both masks are cropped to their joint bounding box plus a margin first (same result, less work).
    1.0 when both are empty, 0.0 when only one is.
    """
    import torch
    from monai.metrics import compute_surface_dice

    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    if not pred.any() and not truth.any():
        return 1.0
    if not pred.any() or not truth.any():
        return 0.0
    both = np.argwhere(pred | truth)
    margin = [int(math.ceil(tolerance_mm / float(s))) + 2 for s in spacing]
    box = tuple(slice(max(0, lo - m), hi + m + 1) for lo, hi, m in zip(both.min(0), both.max(0), margin))
    p, t = (torch.as_tensor(np.pad(a[box], 1))[None, None] for a in (pred, truth))
    value = compute_surface_dice(p, t, class_thresholds=[float(tolerance_mm)], include_background=True,
                                 spacing=[float(s) for s in spacing])
    return float(value.reshape(-1)[0])


def structure_truth(pred: np.ndarray, truth: np.ndarray | None, spacing: Sequence[float]) -> dict[str, Any]:
    """True quality of one structure: surface Dice (truth present) or false-positive cm3 (truth absent).

    ``truth`` None means the structure is absent from the truth.
    """
    cm3 = float(np.prod([float(s) for s in spacing])) / 1000.0
    drawn = float(np.count_nonzero(pred)) * cm3
    if truth is None or not np.any(truth):
        return {"surface_dice": None, "fp_cm3": round(drawn, 3), "drawn_cm3": round(drawn, 3),
                "bad": drawn > BAD_FP_CM3}
    sd = surface_dice(pred, truth, spacing)
    return {"surface_dice": round(sd, 4), "fp_cm3": None, "drawn_cm3": round(drawn, 3), "bad": sd < BAD_SURFACE_DICE}


def roc_curve(scores: Sequence[float], positive: Sequence[bool]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC of ``scores`` (higher = more likely positive): false and true positive rates at each threshold.

    Tied scores move together (one point per distinct score). The curve starts at (0, 0) and ends at (1, 1).

    Raises:
        ValueError: if the lengths differ or one class is missing.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(positive, dtype=bool)
    if s.shape != y.shape or s.ndim != 1:
        raise ValueError(f"`scores` {s.shape} and `positive` {y.shape} must be 1D and of the same length.")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"A ROC needs both classes; got {n_pos} positive and {n_neg} negative.")
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tpr = np.r_[0.0, np.cumsum(y)[last] / n_pos]
    fpr = np.r_[0.0, np.cumsum(~y)[last] / n_neg]
    thresholds = np.r_[np.inf, s[last]]
    return fpr, tpr, thresholds


def auroc(scores: Sequence[float], positive: Sequence[bool]) -> float:
    """Area under the ROC (trapezoids; ties count half), i.e. P(score of a positive > score of a negative)."""
    fpr, tpr, _ = roc_curve(scores, positive)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


# ---------------------------------------------------------------- cases


def _volume_input(hu: np.ndarray, spacing: Sequence[float], name: str) -> InferenceInput:
    """An in-memory input on the npy layout's head-first-supine grid (as ``load_input`` gives for npy)."""
    import torch
    from monai.data import MetaTensor

    from vacseg_monai.dicom.geometry import affine_lps, lps_to_ras
    from vacseg_monai.inputs import InferenceInput, InputKind

    affine = torch.as_tensor(lps_to_ras(affine_lps((1.0, 0.0, 0.0, 0.0, 1.0, 0.0), [float(s) for s in spacing[:2]],
                                                   float(spacing[2]), (0.0, 0.0, 0.0))))
    image = MetaTensor(torch.as_tensor(np.asarray(hu, np.float32))[None], affine=affine)
    image.meta.update({"filename_or_obj": name, "spatial_shape": tuple(hu.shape), "original_affine": affine.clone()})
    return InferenceInput(path=Path(name), kind=InputKind.NPY, image=image, name=name)


def _score_case(segmenter: BundleSegmenter, source: InferenceInput, truths: dict[str, np.ndarray | None],
                spacing: Sequence[float], case: str, kind: str) -> dict[str, Any]:
    """Segment one input; each structure in ``truths`` gets its score and its true quality."""
    result = segmenter.segment(source)
    if result.quality is None:
        raise RuntimeError("The bundle's `quality` block is null: nothing to measure. Turn it on in inference.json.")
    structures = {}
    for name, truth in truths.items():
        q = result.quality.structures[name]
        structures[name] = {"score": q.score, "flagged": q.flagged, "reasons": q.reasons,
                            **structure_truth(result.labels == _label(name), truth, spacing)}
    return {"case": case, "kind": kind, "shape": list(result.labels.shape),
            "spacing_mm": [round(float(s), 4) for s in spacing], "input_reasons": result.quality.input_reasons,
            "timings": {k: round(v, 4) for k, v in result.timings.items()}, "structures": structures}


PhantomCase = tuple[np.ndarray, np.ndarray, list[float], float]


def _phantom(seed: int, size: int, max_slices: int, **kwargs: Any) -> PhantomCase:
    """HU, truth, (row, col, slice) spacing and noise SD of a phantom, centre-cropped to ``max_slices``."""
    from vacseg_monai.phantom import generate_phantom

    p = generate_phantom(seed, size=size, **kwargs)
    n = p.image.shape[2]
    start = max(0, (n - max_slices) // 2)
    keep = slice(start, start + min(n, max_slices))
    spacing = [*p.pixel_spacing, p.slice_thickness_mm]
    return (np.ascontiguousarray(p.image[:, :, keep], dtype=np.float32), np.ascontiguousarray(p.labels[:, :, keep]),
            spacing, float(p.extra.get("noise_sd_hu", 20.0)))


def _all_truths(truth: np.ndarray) -> dict[str, np.ndarray | None]:
    from vacseg_monai.labels import LABELS

    return {label.name: truth == label.value for label in LABELS}


def phantom_cases(segmenter: BundleSegmenter, seeds: Sequence[int], size: int, max_slices: int
                  ) -> list[dict[str, Any]]:
    """Each held-out phantom as it is and under each of :data:`CORRUPTIONS`."""
    rows = []
    version = {"version": 1} if _versioned() else {}  # the scenes the shipped model was trained on
    for seed in seeds:
        hu, truth, spacing, noise_sd = _phantom(seed, size, max_slices, **version)
        rng = np.random.default_rng(seed)
        rows.append(_score_case(segmenter, _volume_input(hu, spacing, f"phantom_{seed}"), _all_truths(truth), spacing,
                                f"phantom {seed}", "good"))
        for what, corrupt in CORRUPTIONS.items():
            extra = {"noise_sd_hu": noise_sd} if corrupt is noise_x3 else {}
            bad_hu, bad_truth = corrupt(hu, truth, rng, **extra)
            rows.append(_score_case(segmenter, _volume_input(bad_hu, spacing, f"phantom_{seed}"),
                                    _all_truths(bad_truth), spacing, f"phantom {seed}, {what}", what))
            logger.info("%s: %s", rows[-1]["case"], {n: s["score"] for n, s in rows[-1]["structures"].items()})
    return rows


def _versioned() -> bool:
    """True if the phantom generator takes a ``version`` (1: the shipped model's training scenes; 2: more varied)."""
    from vacseg_monai.phantom import generate_phantom

    return "version" in inspect.signature(generate_phantom).parameters


def bag_free_cases(segmenter: BundleSegmenter, count: int, size: int, max_slices: int, first_seed: int = 2000,
                   tries: int = 40) -> tuple[list[dict[str, Any]], str | None]:
    """``count`` bag-free phantoms (generator version 2, seeds from ``first_seed`` on), or none with the reason."""
    from vacseg_monai.phantom import generate_phantom

    if not _versioned():
        return [], "the phantom generator has no `version` argument yet (no bag-free phantoms): case left out"
    rows = []
    for seed in range(first_seed, first_seed + tries):
        if len(rows) == count:
            break
        if generate_phantom(seed, size=64, version=2).has_bag:  # the scene does not depend on the size
            continue
        hu, truth, spacing, _ = _phantom(seed, size, max_slices, version=2)
        truths = _all_truths(truth)
        truths["Vacbag"] = None
        rows.append(_score_case(segmenter, _volume_input(hu, spacing, f"phantom_v2_{seed}"), truths, spacing,
                                f"bag-free v2 phantom {seed}", "bag-free"))
    return rows, None if rows else f"no bag-free phantom among v2 seeds {first_seed}-{first_seed + tries - 1}"


def real_cases(segmenter: BundleSegmenter, keys: Sequence[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """Real scans: Vacbag against "absent", Body against the reference body; unreadable scans are noted."""
    from vacseg_monai.public_data import PublicDataError
    from vacseg_monai.realct import load_real_scan, reference_body

    rows, notes = [], []
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
        for key in keys:
            try:
                source = load_real_scan(key, tmp)
            except (ValueError, OSError, RuntimeError, PublicDataError) as exc:
                notes.append(f"{key}: not readable ({type(exc).__name__}), left out")
                logger.warning("%s: not readable: %s", key, exc)
                continue
            hu = np.asarray(source.image[0].numpy(), np.float32)
            spacing = source.spacing
            truths: dict[str, np.ndarray | None] = {"Vacbag": None}
            reference = reference_body(hu, spacing)
            if _cut_by_fov(reference, hu):
                notes.append(f"{key}: the patient reaches the edge of the field of view, so the reference body "
                             "is cut where the body is not: no Body truth, Body left out")
            else:
                truths["Body"] = reference
            rows.append(_score_case(segmenter, source, truths, spacing, f"real CT {key}", "real CT"))
    return rows, notes


def _cut_by_fov(mask: np.ndarray, hu: np.ndarray) -> bool:
    """True if ``mask`` touches the image border or the padding outside the reconstruction circle."""
    from scipy import ndimage

    edge = np.zeros(mask.shape[:2], bool)
    edge[[0, -1], :] = edge[:, [0, -1]] = True
    padding = ndimage.binary_dilation(hu < -1500.0, structure=np.ones((3, 3, 1), bool))
    return bool((mask & (edge[..., None] | padding)).any())


# ---------------------------------------------------------------- run and report


def _points(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"case": c["case"], "kind": c["kind"], "structure": n, **s}
            for c in cases for n, s in c["structures"].items()]


def _signals(points: list[dict[str, Any]]) -> dict[str, int]:
    """How many bad structures each kind of reason caught (flagged ones only)."""
    counts: dict[str, int] = {}
    for p in points:
        if not (p["bad"] and p["flagged"]):
            continue
        kinds = {_reason_kind(r) for r in p["reasons"]} or {"(no reason)"}
        for k in kinds:
            counts[k] = counts.get(k, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def _reason_kind(reason: str) -> str:
    """The signal behind one reason of :mod:`vacseg_monai.quality`, in a few words."""
    kinds = (
        ("input:", "input check (rescale, spacing, FOV)"),
        ("uncertain", "softmax margin"),
        ("Couch", "couch missing / above / beside / narrow"),
        ("field of view", "body cut by the FOV"),
        ("Vacbag mean", "Vacbag HU"),
        ("Vacbag lies", "Vacbag away from the body"),
        ("no Body", "no Body"),
    )
    return next((kind for key, kind in kinds if key in reason), "other")


def run(phantoms: int = 4, max_slices: int = 64, size: int = 512, bundle: Path | None = None,
        ckpt: Path | None = None, real_ct: bool = True, plot: Path | None = None) -> dict[str, Any]:
    """Measure; see the module docstring."""
    import torch

    from vacseg_monai.segmenter import BundleSegmenter

    torch.manual_seed(0)
    start = time.perf_counter()
    segmenter = BundleSegmenter(bundle, ckpt_path=ckpt)
    threshold = segmenter.quality_config.threshold if segmenter.quality_config else None
    seeds = list(range(1000, 1000 + phantoms))
    cases = phantom_cases(segmenter, seeds, size, max_slices)
    bag_free, bag_note = bag_free_cases(segmenter, max(1, phantoms // 2), size, max_slices)
    cases += bag_free
    notes = [bag_note] if bag_note else []
    if real_ct:
        real, real_notes = real_cases(segmenter, REAL_SCANS)
        cases += real
        notes += real_notes
    points = _points(cases)
    risk = [1.0 - p["score"] for p in points]
    bad = [p["bad"] for p in points]
    fpr, tpr, thr = roc_curve(risk, bad) if 0 < sum(bad) < len(bad) else (np.zeros(0),) * 3
    area = auroc(risk, bad) if fpr.size else math.nan
    good_phantom = [p for p in points if p["kind"] == "good"]
    good_ok = [p for p in good_phantom if not p["bad"]]
    flagged_good = sum(p["flagged"] for p in good_ok) / len(good_ok) if good_ok else math.nan
    net = sum(c["timings"]["network"] for c in cases)
    qual = sum(c["timings"]["quality"] for c in cases)
    result = {
        "benchmark": "quality",
        "bundle": str(Path(segmenter.bundle).resolve().relative_to(REPO_ROOT))
        if Path(segmenter.bundle).resolve().is_relative_to(REPO_ROOT) else str(segmenter.bundle),
        "threshold": threshold,
        "definition": {"bad_surface_dice_below": BAD_SURFACE_DICE, "tolerance_mm": TOLERANCE_MM,
                       "bad_fp_cm3_above": BAD_FP_CM3},
        "phantom_seeds": seeds, "size": size, "max_slices": max_slices,
        "counts": {"cases": len(cases), "structures": len(points), "bad": int(sum(bad)),
                   "good_phantom_structures": len(good_phantom), "good_phantom_structures_truly_good": len(good_ok)},
        "auroc": round(area, 4),
        "good_flagged_share": round(flagged_good, 4),
        "flagged_bad": int(sum(p["flagged"] and p["bad"] for p in points)),
        "flagged_good_any": int(sum(p["flagged"] and not p["bad"] for p in points)),
        "signals_on_caught_bad": _signals(points),
        "roc": {"fpr": [round(v, 4) for v in fpr], "tpr": [round(v, 4) for v in tpr],
                "threshold_on_1_minus_score": [None if math.isinf(v) else round(v, 4) for v in thr]},
        "seconds": {"network": round(net, 3), "quality": round(qual, 3),
                    "ratio": round(qual / net, 4) if net else None,
                    "per_case_ratio_median": round(float(np.median([c["timings"]["quality"] / c["timings"]["network"]
                                                                    for c in cases])), 4)},
        "met": {"auroc": bool(area >= TARGET_AUROC), "good_flagged": bool(flagged_good <= TARGET_GOOD_FLAGGED),
                "cost": bool(net and qual / net <= TARGET_COST_RATIO)},
        "notes": notes,
        "cases": cases,
        "wall_s": round(time.perf_counter() - start, 1),
        "machine": machine_info(),
    }
    if plot is not None and fpr.size:
        result["plot"] = str(save_roc_plot(result, plot))
    return result


def save_roc_plot(result: dict[str, Any], path: Path) -> Path:
    """The ROC of ``1 - score`` with the default threshold's point marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    roc = result["roc"]
    points = _points(result["cases"])
    n_bad = sum(p["bad"] for p in points)
    fp = sum(p["flagged"] and not p["bad"] for p in points) / max(1, len(points) - n_bad)
    tp = sum(p["flagged"] and p["bad"] for p in points) / max(1, n_bad)
    fig, ax = plt.subplots(figsize=(5.2, 5))
    # Straight lines between the points: tied scores move both rates at once (the trapezoids of the AUROC).
    ax.plot(roc["fpr"], roc["tpr"], color="tab:blue", marker=".", label=f"1 - score, AUROC {result['auroc']:.3f}")
    ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1, label="chance")
    ax.plot([fp], [tp], "o", color="tab:red", label=f"flagged at threshold {result['threshold']:g}")
    ax.set_xlabel("false positive rate (good structures flagged)")
    ax.set_ylabel("true positive rate (bad structures flagged)")
    c = result["counts"]
    ax.set_title(f"Quality score, {c['structures']} structures of {c['cases']} cases ({c['bad']} bad)", fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _quality_cell(s: dict[str, Any]) -> str:
    truth = f"sD {s['surface_dice']:.3f}" if s["surface_dice"] is not None else f"FP {s['fp_cm3']:.1f} cm3"
    return f"{s['score']:.2f}{'!' if s['flagged'] else ''} ({truth}{', bad' if s['bad'] else ''})"


def case_rows(result: dict[str, Any]) -> list[list[str]]:
    """Per case: each structure as ``score[!] (truth[, bad])`` and the quality / network seconds."""
    from vacseg_monai.labels import LABELS

    rows = []
    for c in result["cases"]:
        cells = [_quality_cell(c["structures"][lab.name]) if lab.name in c["structures"] else "-" for lab in LABELS]
        rows.append([c["case"], *cells, f"{c['timings']['quality']:.2f} / {c['timings']['network']:.2f}"])
    return rows


def report_section(result: dict[str, Any]) -> list[str]:
    """Its section of docs/benchmarks.md."""
    from vacseg_monai.labels import LABELS

    c, sec = result["counts"], result["seconds"]
    kinds: dict[str, int] = {}
    for case in result["cases"]:
        kinds[case["kind"]] = kinds.get(case["kind"], 0) + 1
    out = ["## Quality score (bench_quality.py)", "",
           f"{c['cases']} cases ({len(result['phantom_seeds'])} held-out phantoms at {result['size']} x "
           f"{result['size']}, at most {result['max_slices']} slices, each also corrupted "
           f"{len(CORRUPTIONS)} ways; {kinds.get('bag-free', 0)} bag-free phantoms; {kinds.get('real CT', 0)} real "
           f"CT scans), {c['structures']} structures, {c['bad']} bad (surface Dice < "
           f"{BAD_SURFACE_DICE} at {TOLERANCE_MM:g} mm, or more than {BAD_FP_CM3:g} cm3 where the truth has none). "
           "Method and limits: [quality.md](quality.md).", "",
           "![ROC](quality_roc.png)", "",
           "| measure | value |", "|---|---|",
           f"| AUROC of 1 - score, structure level | **{result['auroc']:.3f}** (target >= {TARGET_AUROC}: "
           f"{'met' if result['met']['auroc'] else 'missed'}) |",
           f"| good held-out phantom structures flagged at {result['threshold']:g} | "
           f"**{100 * result['good_flagged_share']:.1f} %** of {c['good_phantom_structures_truly_good']} (target <= "
           f"{100 * TARGET_GOOD_FLAGGED:g} %: {'met' if result['met']['good_flagged'] else 'missed'}) |",
           f"| bad structures flagged | {result['flagged_bad']} of {c['bad']} |",
           f"| quality / network seconds, all cases | {sec['quality']:.2f} / {sec['network']:.2f} = "
           f"**{sec['ratio']:.2f}** (target <= {TARGET_COST_RATIO}: {'met' if result['met']['cost'] else 'missed'}) |",
           "| signals behind the flagged bad structures | " +
           ", ".join(f"{k} {v}" for k, v in result["signals_on_caught_bad"].items()) + " |", ""]
    out += ["| case | " + " | ".join(lab.name for lab in LABELS) + " | quality / network s |",
            "|---" * (len(LABELS) + 2) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in case_rows(result)]
    out += ["", "Cells: score (`!` flagged), then the truth: sD = surface Dice, FP = false positive volume.", ""]
    out += [f"- {n}" for n in result["notes"]]
    return out + [""]


def report_ideas(result: dict[str, Any], machine: dict[str, Any]) -> list[str]:
    """Its line of "What could help" when a target is missed (none when all are met)."""
    missed = [name for name, ok in result["met"].items() if not ok]
    if not missed:
        return []
    missed_bad = [f"{p['case']} {p['structure']}" for p in _points(result["cases"]) if p["bad"] and not p["flagged"]]
    return [f"Quality score: missed {', '.join(missed)} (AUROC {result['auroc']:.3f}, good phantom structures "
            f"flagged {100 * result['good_flagged_share']:.1f} %, cost {result['seconds']['ratio']:.2f} x network). "
            f"Bad structures not flagged: {', '.join(missed_bad) or 'none'}."]


def summary(result: dict[str, Any]) -> str:
    """The human-readable tables."""
    from vacseg_monai.labels import LABELS

    head = table([[result["auroc"], result["good_flagged_share"], result["seconds"]["ratio"],
                   f"{result['flagged_bad']}/{result['counts']['bad']}"]],
                 ["AUROC", "good flagged share", "quality/network", "bad flagged"])
    cases = table(case_rows(result), ["case", *(lab.name for lab in LABELS), "quality / network s"])
    return f"{head}\n\n{cases}\n" + "\n".join(result["notes"])


def main(args: list[str] | None = None) -> dict[str, Any]:
    """Command line; see the module docstring."""
    parser = bench_parser(__doc__)
    parser.add_argument("--phantoms", type=int, default=4, help="held-out phantoms, seeds 1000.. (default 4)")
    parser.add_argument("--max-slices", type=int, default=64, help="centre crop of each phantom (default 64)")
    parser.add_argument("--size", type=int, default=512, help="phantom rows = columns (default 512)")
    parser.add_argument("--bundle", type=Path, help="bundle folder (default the shipped bundle)")
    parser.add_argument("--ckpt", type=Path, help="weights (default the bundle's models/model.pt)")
    parser.add_argument("--no-real-ct", action="store_true", help="leave out the real CT scans")
    parser.add_argument("--plot", type=Path, default=REPO_ROOT / "docs" / "quality_roc.png",
                        help="ROC plot PNG (default docs/quality_roc.png)")

    def measure(opts: argparse.Namespace) -> dict[str, Any]:
        if opts.phantoms < 1 or opts.max_slices < 1:
            parser.error(f"--phantoms and --max-slices must be >= 1, got {opts.phantoms} and {opts.max_slices}.")
        return run(opts.phantoms, opts.max_slices, opts.size, opts.bundle, opts.ckpt, not opts.no_real_ct, opts.plot)

    return run_cli(parser, args, measure, summary)


if __name__ == "__main__":
    main()
