"""Edit metrics: how much a person changed the node's contours, structure by structure.

The node's own RT Structure Set and the corrected one that comes back from the
planning system are both rasterised onto the CT grid of the job's series
(:func:`vacseg_monai.dicom.rtstruct.read_rtstruct_contents`, ROIs matched to the
label table through its name aliases, each ROI kept whole where ROIs overlap).
For every label present in the correction:

- Dice of the two masks;
- surface Dice at a tolerance (default 2 mm; Nikolov et al. 2021, the share of both
  surfaces lying within the tolerance of the other) and the 95th percentile Hausdorff
  distance in mm, both on the 3D surfaces with the voxel spacing, as
  :func:`monai.metrics.compute_surface_dice` and :func:`monai.metrics.compute_hausdorff_distance`
  define them for the project's evaluation table;
- the volume of each and the volume change (corrected minus node) in cm3;
- the **added path length** (APL, Vaassen et al. 2020): the length in mm of the corrected
  contour that does not lie within a tolerance (default 1 mm) of the node's contour on the
  same slice, summed over slices. It is what the person had to draw, and of the usual
  measures it tracks contouring time best. Both contours are traced on each slice with the
  project's marching squares (:func:`vacseg_monai.dicom.contours.volume_to_contours`);
  the corrected contour is cut into pieces of at most a quarter pixel and a piece counts as
  added when its midpoint is farther than the tolerance from the node's contour (resampled
  at the same step). On a slice where the node drew nothing, the whole corrected contour is
  added; a contour the person only deleted adds nothing (Dice and the volume show it).

The slices with the most added path (then the most changed voxels) are the ones
:func:`save_edit_picture` draws.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from vacseg_monai.labels import LABELS, Label

__all__ = [
    "DEFAULT_APL_TOLERANCE_MM",
    "DEFAULT_SURFACE_TOLERANCE_MM",
    "EditMeasure",
    "RoiEdit",
    "StructureSetComparison",
    "added_path_length",
    "compare_structure_sets",
    "edit_metrics",
    "most_edited_slices",
    "save_edit_picture",
]

logger = logging.getLogger(__name__)

#: Tolerance of the surface Dice in mm.
DEFAULT_SURFACE_TOLERANCE_MM = 2.0
#: Distance in mm from the node's contour within which corrected contour does not count as added.
DEFAULT_APL_TOLERANCE_MM = 1.0
#: Longest piece, in pixels, into which contours are cut to measure the added path.
_STEP_PX = 0.25


@dataclass
class RoiEdit:
    """The edit of one structure.

    Args:
        roi: the label name (Vacbag, Couch, Body).
        label: the label number.
        status: ``edited``, ``unchanged`` (identical masks), ``added`` (the node drew nothing),
            ``removed`` (the correction holds the ROI but no contour) or ``not in correction``
            (the correction has no ROI of this label; the other fields are then None).
        dice: Dice of node and corrected masks.
        surface_dice: surface Dice at ``surface_tolerance_mm``.
        hd95_mm: 95th percentile Hausdorff distance in mm (None when either mask is empty).
        node_cm3: volume of the node's structure.
        corrected_cm3: volume of the corrected structure.
        volume_change_cm3: ``corrected_cm3 - node_cm3``.
        added_path_mm: the added path length in mm.
        edited_slices: slices on which the masks differ.
        surface_tolerance_mm: the surface Dice tolerance.
        apl_tolerance_mm: the added path length tolerance.
    """

    roi: str
    label: int
    status: str
    dice: float | None = None
    surface_dice: float | None = None
    hd95_mm: float | None = None
    node_cm3: float | None = None
    corrected_cm3: float | None = None
    volume_change_cm3: float | None = None
    added_path_mm: float | None = None
    edited_slices: int | None = None
    surface_tolerance_mm: float = DEFAULT_SURFACE_TOLERANCE_MM
    apl_tolerance_mm: float = DEFAULT_APL_TOLERANCE_MM

    def as_dict(self) -> dict:
        """JSON-ready values, rounded (Dice to 4 decimals, mm and cm3 to 3)."""
        data = asdict(self)
        for key in ("dice", "surface_dice"):
            if data[key] is not None:
                data[key] = round(float(data[key]), 4)
        for key in ("hd95_mm", "node_cm3", "corrected_cm3", "volume_change_cm3", "added_path_mm"):
            if data[key] is not None:
                data[key] = round(float(data[key]), 3)
        return data


@dataclass
class EditMeasure:
    """Edit metrics of one correction.

    Args:
        rois: one :class:`RoiEdit` per label of the table, in table order.
        added_path_per_slice: label number -> added path length in mm on each slice.
        changed_per_slice: voxels that differ on each slice, all labels together.
    """

    rois: list[RoiEdit]
    added_path_per_slice: dict[int, np.ndarray] = field(default_factory=dict)
    changed_per_slice: np.ndarray | None = None


def _resampled(contour: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Cut a closed (row, col) polygon into pieces of at most ``step``; return their midpoints and index lengths."""
    start = np.asarray(contour, dtype=np.float64)
    delta = np.roll(start, -1, axis=0) - start
    pieces = np.maximum(np.ceil(np.hypot(delta[:, 0], delta[:, 1]) / step), 1).astype(np.int64)
    edge = np.repeat(np.arange(len(start)), pieces)
    offsets = np.cumsum(pieces) - pieces
    fraction = (np.arange(int(pieces.sum())) - offsets[edge] + 0.5) / pieces[edge]
    midpoints = start[edge] + fraction[:, None] * delta[edge]
    return midpoints, delta[edge] / pieces[edge, None]


def added_path_length(
    node: np.ndarray,
    corrected: np.ndarray,
    pixel_spacing: Sequence[float],
    tolerance_mm: float = DEFAULT_APL_TOLERANCE_MM,
) -> np.ndarray:
    """Added path length of ``corrected`` against ``node`` on each slice, in mm.

    Args:
        node: the node's mask ``(rows, cols, n_slices)``.
        corrected: the corrected mask, same shape.
        pixel_spacing: (row, col) spacing in mm.
        tolerance_mm: corrected contour within this distance of the node's contour is not added
            (default :data:`DEFAULT_APL_TOLERANCE_MM`, 1 mm).

    Returns:
        float64 array of length ``n_slices``.

    Raises:
        ValueError: if the shapes differ or are not 3D, or the spacing or tolerance is not positive.
    """
    from scipy.spatial import cKDTree

    from vacseg_monai.dicom.contours import volume_to_contours

    node, corrected = _checked_pair(node, corrected)
    scale = np.asarray([float(s) for s in pixel_spacing][:2], dtype=np.float64)
    if scale.size != 2 or scale.min() <= 0:
        raise ValueError(f"`pixel_spacing` must be two positive (row, col) spacings in mm, got {pixel_spacing!r}.")
    if not tolerance_mm >= 0:
        raise ValueError(f"`tolerance_mm` must be >= 0, got {tolerance_mm!r}.")
    result = np.zeros(node.shape[2], dtype=np.float64)
    edited = np.flatnonzero((node != corrected).any(axis=(0, 1)))
    if edited.size == 0:
        return result
    node_contours: dict[int, list[np.ndarray]] = {}
    for k, contour in volume_to_contours(node[:, :, edited]):
        node_contours.setdefault(int(edited[k]), []).append(_resampled(contour, _STEP_PX)[0] * scale)
    for k, contour in volume_to_contours(corrected[:, :, edited]):
        k = int(edited[k])
        midpoints, steps = _resampled(contour, _STEP_PX)
        lengths = np.hypot(steps[:, 0] * scale[0], steps[:, 1] * scale[1])
        if k in node_contours:
            distance, _ = cKDTree(np.concatenate(node_contours[k])).query(midpoints * scale)
            lengths = lengths[distance > tolerance_mm]
        result[k] += float(lengths.sum())
    return result


def _checked_pair(node: np.ndarray, corrected: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    node, corrected = np.asarray(node) != 0, np.asarray(corrected) != 0
    if node.shape != corrected.shape or node.ndim != 3:
        raise ValueError(
            f"Node mask {node.shape} and corrected mask {corrected.shape} must be equal 3D shapes "
            "(rows, cols, n_slices)."
        )
    return node, corrected


def _surface_metrics(node: np.ndarray, corrected: np.ndarray, spacing: tuple[float, float, float],
                     tolerance_mm: float) -> tuple[float, float]:
    """(surface Dice, HD95 mm) of two non-empty masks on their 3D surfaces.

    One edge and distance computation with MONAI (:func:`monai.metrics.utils.get_edge_surface_distance`,
    both directions) gives both, with the definitions of :func:`monai.metrics.compute_surface_dice` (the
    share of both surfaces' voxels within the tolerance) and :func:`monai.metrics.compute_hausdorff_distance`
    (the larger of the two directed 95th percentiles). The masks are cropped to their joint bounding box
    first, which leaves every edge as it is.
    """
    import torch
    from monai.metrics.utils import get_edge_surface_distance

    either = node | corrected
    box = tuple(slice(int(i[0]), int(i[-1]) + 1) for i in (
        np.flatnonzero(either.any(axis=(1, 2))), np.flatnonzero(either.any(axis=(0, 2))),
        np.flatnonzero(either.any(axis=(0, 1)))))
    p = torch.from_numpy(np.ascontiguousarray(corrected[box]))
    t = torch.from_numpy(np.ascontiguousarray(node[box]))
    _, (corrected_to_node, node_to_corrected), _ = get_edge_surface_distance(p, t, spacing=spacing, symmetric=True)
    distances = torch.cat([corrected_to_node.flatten(), node_to_corrected.flatten()]).double()
    surface_dice = float((distances <= tolerance_mm).sum()) / max(int(distances.numel()), 1)
    hd95 = max(float(torch.quantile(d.double(), 0.95)) for d in (corrected_to_node, node_to_corrected))
    return surface_dice, hd95


def _roi_edit(
    label: Label,
    node: np.ndarray,
    corrected: np.ndarray,
    spacing: tuple[float, float, float],
    apl: np.ndarray,
    surface_tolerance_mm: float,
    apl_tolerance_mm: float,
) -> RoiEdit:
    voxel_cm3 = float(np.prod(spacing)) / 1000.0
    n_node, n_corr = int(np.count_nonzero(node)), int(np.count_nonzero(corrected))
    both = int(np.count_nonzero(node & corrected))
    edit = RoiEdit(
        roi=label.name, label=label.value, status="edited",
        dice=2.0 * both / (n_node + n_corr) if n_node + n_corr else 1.0,
        node_cm3=n_node * voxel_cm3, corrected_cm3=n_corr * voxel_cm3, volume_change_cm3=(n_corr - n_node) * voxel_cm3,
        added_path_mm=float(apl.sum()), edited_slices=int(np.count_nonzero((node != corrected).any(axis=(0, 1)))),
        surface_tolerance_mm=float(surface_tolerance_mm), apl_tolerance_mm=float(apl_tolerance_mm),
    )
    if n_node and n_corr and edit.edited_slices == 0:
        edit.status, edit.surface_dice, edit.hd95_mm = "unchanged", 1.0, 0.0
    elif n_node and n_corr:
        edit.surface_dice, edit.hd95_mm = _surface_metrics(node, corrected, spacing, surface_tolerance_mm)
        if not math.isfinite(edit.hd95_mm):
            edit.hd95_mm = None
    else:
        edit.surface_dice = 0.0 if n_node + n_corr else 1.0
        edit.status = "added" if n_corr else ("removed" if n_node else "unchanged")
    return edit


def edit_metrics(
    node_masks: Mapping[int, np.ndarray],
    corrected_masks: Mapping[int, np.ndarray],
    spacing: Sequence[float],
    *,
    label_table: Sequence[Label] = LABELS,
    surface_tolerance_mm: float = DEFAULT_SURFACE_TOLERANCE_MM,
    apl_tolerance_mm: float = DEFAULT_APL_TOLERANCE_MM,
) -> EditMeasure:
    """Compare the node's structures with the corrected ones, label by label.

    Args:
        node_masks: label number -> the node's bool mask ``(rows, cols, n_slices)``; a label missing
            here is an empty mask (the node drew nothing).
        corrected_masks: label number -> the corrected mask; a label missing here is ``not in correction``
            (the person did not send that ROI back, which says nothing about it).
        spacing: voxel spacing (row, col, slice) in mm.
        label_table: the labels (default :data:`vacseg_monai.labels.LABELS`).
        surface_tolerance_mm: surface Dice tolerance (default 2 mm).
        apl_tolerance_mm: added path length tolerance (default 1 mm).

    Returns:
        :class:`EditMeasure` with one :class:`RoiEdit` per label.

    Raises:
        ValueError: if the masks have different or non-3D shapes, or the spacing is not three positive values.
    """
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"`spacing` must be three positive (row, col, slice) spacings in mm, got {spacing!r}.")
    if not surface_tolerance_mm > 0:
        raise ValueError(f"`surface_tolerance_mm` must be > 0, got {surface_tolerance_mm!r}.")
    shapes = {np.shape(m) for m in (*node_masks.values(), *corrected_masks.values())}
    if len(shapes) != 1:
        raise ValueError(f"All masks must have one 3D shape (rows, cols, n_slices), got {sorted(shapes)}.")
    shape = shapes.pop()
    measure = EditMeasure(rois=[], changed_per_slice=np.zeros(shape[2], dtype=np.int64))
    for label in label_table:
        if label.value not in corrected_masks:
            measure.rois.append(RoiEdit(roi=label.name, label=label.value, status="not in correction",
                                        surface_tolerance_mm=surface_tolerance_mm, apl_tolerance_mm=apl_tolerance_mm))
            continue
        node = np.asarray(node_masks.get(label.value, np.zeros(shape, dtype=bool))) != 0
        node, corrected = _checked_pair(node, corrected_masks[label.value])
        apl = added_path_length(node, corrected, spacing[:2], apl_tolerance_mm)
        measure.added_path_per_slice[label.value] = apl
        measure.changed_per_slice += np.count_nonzero(node != corrected, axis=(0, 1))
        measure.rois.append(_roi_edit(label, node, corrected, spacing, apl, surface_tolerance_mm, apl_tolerance_mm))
    return measure


def most_edited_slices(measure: EditMeasure, n: int = 4) -> list[int]:
    """Up to ``n`` slices with the most added path (all labels), then the most changed voxels; slice order.

    Args:
        measure: the edit metrics.
        n: how many slices at most (default 4).
    """
    changed = measure.changed_per_slice
    if changed is None or not changed.any():
        return []
    added = sum(measure.added_path_per_slice.values(), np.zeros(changed.shape[0]))
    order = np.lexsort((np.arange(changed.shape[0]), -changed, -added))  # most added path first, then most voxels
    return sorted(int(k) for k in order[:n] if changed[k] > 0)


def save_edit_picture(
    image: np.ndarray,
    node_labels: np.ndarray,
    corrected_labels: np.ndarray,
    measure: EditMeasure,
    path: str | Path,
    *,
    title: str,
    n_panels: int = 4,
) -> Path | None:
    """Draw the most-edited slices: the correction filled, the node's contours as lines.

    Args:
        image: CT in HU ``(rows, cols, n_slices)``.
        node_labels: the node's label map, same shape.
        corrected_labels: the corrected label map, same shape.
        measure: the edit metrics (which slices, and the numbers in the panel titles).
        path: the PNG to write.
        title: figure title.
        n_panels: slices at most (default 4).

    Returns:
        The PNG written, or None when no slice differs (nothing to show).
    """
    from vacseg_monai.qa import OverlayPanel, save_overlay_montage

    slices = most_edited_slices(measure, n_panels)
    if not slices:
        return None
    names = {roi.label: roi.roi for roi in measure.rois}
    panels = []
    for k in slices:
        added = ", ".join(
            f"{names[value]} +{apl[k]:.0f} mm" for value, apl in measure.added_path_per_slice.items() if apl[k] >= 0.5
        )
        panels.append(OverlayPanel(
            image=image[:, :, k], labels=corrected_labels[:, :, k], contours=node_labels[:, :, k],
            title=f"slice {k + 1}/{image.shape[2]}" + (f": {added}" if added else ""),
        ))
    summary = "  ".join(
        f"{r.roi} Dice {r.dice:.3f} APL {r.added_path_mm:.0f} mm" for r in measure.rois if r.dice is not None
    )
    return save_overlay_montage(panels, path, suptitle=f"{title}\n{summary}", labels_name="correction",
                                contours_name="node")


@dataclass
class StructureSetComparison:
    """A corrected RT Structure Set compared with the node's, on the CT grid.

    Args:
        measure: the edit metrics.
        node_labels: the node's label map ``(rows, cols, n_slices)``.
        corrected_labels: the corrected label map.
        unmatched_rois: ROI names of the correction that match no label (not compared).
    """

    measure: EditMeasure
    node_labels: np.ndarray
    corrected_labels: np.ndarray
    unmatched_rois: list[str]


def compare_structure_sets(
    node: str | Path,
    corrected: str | Path,
    series,
    *,
    label_table: Sequence[Label] = LABELS,
    surface_tolerance_mm: float = DEFAULT_SURFACE_TOLERANCE_MM,
    apl_tolerance_mm: float = DEFAULT_APL_TOLERANCE_MM,
) -> StructureSetComparison:
    """Rasterise the node's result and the corrected RT Structure Set on ``series`` and measure the edit.

    ROIs are matched to labels by name with the label table's aliases
    (:func:`vacseg_monai.dicom.rtstruct.resolve_roi_label`).

    Args:
        node: the node's RTSTRUCT file, or its DICOM-SEG (a node run with ``--output seg``).
        corrected: the corrected RTSTRUCT file.
        series: the :class:`~vacseg_monai.dicom.series.CTSeries` both refer to.
        label_table: the labels (default :data:`vacseg_monai.labels.LABELS`).
        surface_tolerance_mm: surface Dice tolerance (default 2 mm).
        apl_tolerance_mm: added path length tolerance (default 1 mm).

    Raises:
        ValueError: naming the file, when the correction holds no ROIContourSequence, none of its ROIs
            matches a label, or a contour lies off the series or in another frame of reference.
    """
    from pydicom import dcmread

    from vacseg_monai.dicom.rtstruct import read_rtstruct_contents

    ds = dcmread(corrected)
    if not ds.get("ROIContourSequence"):
        raise ValueError(f"{corrected}: the structure set has no ROIContourSequence (no contours to compare).")
    node_masks, node_labels = _node_result(node, series, label_table)
    contents = read_rtstruct_contents(ds, series, label_table=label_table)
    if not contents.roi_labels:
        raise ValueError(
            f"{corrected}: none of its ROIs {contents.skipped_rois} matches a label "
            f"({', '.join(label.name for label in label_table)}) or one of their aliases."
        )
    spacing = (*series.pixel_spacing, series.slice_spacing)
    measure = edit_metrics(node_masks, contents.masks, spacing, label_table=label_table,
                           surface_tolerance_mm=surface_tolerance_mm, apl_tolerance_mm=apl_tolerance_mm)
    return StructureSetComparison(measure, node_labels, contents.labels, list(contents.skipped_rois))


def _node_result(node: str | Path, series, label_table: Sequence[Label]) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """The node's masks per label and its label map, from its RT Structure Set or its DICOM-SEG.

    In the label map the lowest label number wins where masks overlap, as in an RT Structure Set read back.
    """
    from pydicom import dcmread

    from vacseg_monai.dicom.rtstruct import read_rtstruct_contents
    from vacseg_monai.dicom.seg import read_seg_masks

    if dcmread(node, stop_before_pixels=True, specific_tags=["Modality"]).get("Modality") != "SEG":
        contents = read_rtstruct_contents(node, series, label_table=label_table)
        return contents.masks, contents.labels
    masks = read_seg_masks(node, series, label_table=label_table)
    labels = np.zeros(next(iter(masks.values())).shape, np.uint8)
    for value in sorted(masks, reverse=True):
        labels[masks[value]] = value
    return masks, labels
