"""Overlay pictures for quality assurance: CT slices with label maps drawn on top.

The montage shows each slice in a wide window that keeps lungs, bag beads and soft
tissue apart, a label map as semi-transparent colour fill and, optionally, a second
label map (e.g. a prediction against the truth) as coloured contours. Colours come
from :mod:`vacseg_monai.labels`. Rendering uses matplotlib's Agg canvas directly, so
it works without a display and touches no pyplot state.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vacseg_monai.labels import LABELS

__all__ = ["OverlayPanel", "label_overlay_rgba", "save_overlay_montage", "window_ct"]

logger = logging.getLogger(__name__)

#: Default display window (level, width) in HU: lungs, bag beads and soft tissue all distinct.
DEFAULT_WINDOW = (-250.0, 1500.0)


@dataclass
class OverlayPanel:
    """One panel of a montage.

    Args:
        image: 2D CT slice in HU, shape (rows, cols).
        labels: optional 2D label map drawn as semi-transparent colour fill.
        contours: optional second 2D label map drawn as coloured contours.
        title: text shown above the panel (e.g. patient and slice index).
    """

    image: np.ndarray
    labels: np.ndarray | None = None
    contours: np.ndarray | None = None
    title: str = ""


def window_ct(image: np.ndarray, level: float = DEFAULT_WINDOW[0], width: float = DEFAULT_WINDOW[1]) -> np.ndarray:
    """Map HU to [0, 1] grey values with a display window.

    Raises:
        ValueError: if ``width`` is not positive.
    """
    if width <= 0:
        raise ValueError(f"Window `width` must be positive, got {width}.")
    low = level - width / 2.0
    return np.clip((np.asarray(image, dtype=np.float32) - low) / width, 0.0, 1.0)


def label_overlay_rgba(labels: np.ndarray, alpha: float = 0.35) -> np.ndarray:
    """RGBA image (rows, cols, 4) colouring each label with its table colour; background transparent."""
    rgba = np.zeros(labels.shape + (4,), np.float32)
    for label in LABELS:
        sel = labels == label.value
        rgba[sel, :3] = np.asarray(label.color, np.float32) / 255.0
        rgba[sel, 3] = alpha
    return rgba


def _check_panel(i: int, panel: OverlayPanel) -> None:
    if np.ndim(panel.image) != 2:
        raise ValueError(f"Panel {i} ({panel.title!r}): image must be 2D, got shape {np.shape(panel.image)}.")
    for name in ("labels", "contours"):
        arr = getattr(panel, name)
        if arr is not None and np.shape(arr) != np.shape(panel.image):
            raise ValueError(
                f"Panel {i} ({panel.title!r}): {name} shape {np.shape(arr)} differs from image "
                f"shape {np.shape(panel.image)}."
            )


def _draw_panel(ax: Any, panel: OverlayPanel, window: tuple[float, float], alpha: float) -> None:
    """Draw one panel on ``ax``: the windowed slice, its label fill, its contours, its title."""
    ax.imshow(window_ct(panel.image, *window), cmap="gray", vmin=0.0, vmax=1.0, interpolation="antialiased")
    if panel.labels is not None:
        ax.imshow(label_overlay_rgba(np.asarray(panel.labels), alpha), interpolation="nearest")
    if panel.contours is not None:
        contours = np.asarray(panel.contours)
        for label in LABELS:
            sel = contours == label.value
            if sel.any() and not sel.all():
                ax.contour(sel.astype(np.float32), levels=[0.5], colors=[np.asarray(label.color) / 255.0],
                           linewidths=0.9)
    ax.set_title(panel.title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def _legend_handles(has_fill: bool, has_contours: bool, labels_name: str, contours_name: str) -> list[Any]:
    """The legend entries: per label a fill patch and/or a contour line, named by kind when both are shown."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = []
    for label in LABELS:
        colour = np.asarray(label.color) / 255.0
        if has_fill:
            handles.append(Patch(facecolor=(*colour, 0.6), edgecolor=colour,
                                 label=f"{label.value} {label.name} ({labels_name})" if has_contours else
                                 f"{label.value} {label.name}"))
        if has_contours:
            handles.append(Line2D([0], [0], color=colour, lw=1.5, label=f"{label.value} {label.name} ({contours_name})"))
    return handles


def save_overlay_montage(
    panels: Sequence[OverlayPanel],
    path: str | Path,
    *,
    window: tuple[float, float] = DEFAULT_WINDOW,
    n_cols: int | None = None,
    panel_inches: float = 3.2,
    dpi: int = 100,
    alpha: float = 0.35,
    labels_name: str = "filled",
    contours_name: str = "contour",
    suptitle: str | None = None,
) -> Path:
    """Write a PNG montage of CT slices with label overlays and a legend.

    Args:
        panels: the slices to show.
        path: output PNG path; parent folders are created.
        window: display window (level, width) in HU, default (-250, 1500).
        n_cols: panels per row, default min(4, len(panels)).
        panel_inches: panel edge length in inches, default 3.2.
        dpi: resolution, default 100.
        alpha: opacity of the label fill, default 0.35.
        labels_name: legend text for the filled label map, default "filled".
        contours_name: legend text for the contour label map, default "contour".
        suptitle: optional figure title.

    Returns:
        the written path.

    Raises:
        ValueError: if ``panels`` is empty or a panel's arrays are not matching 2D shapes.
    """
    if not panels:
        raise ValueError("`panels` is empty: give at least one OverlayPanel.")
    for i, panel in enumerate(panels):
        _check_panel(i, panel)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(panels)
    n_cols = min(4, n) if n_cols is None else max(1, min(int(n_cols), n))
    n_rows = -(-n // n_cols)
    legend_h = 0.45
    fig = Figure(figsize=(n_cols * panel_inches, n_rows * panel_inches + legend_h + (0.3 if suptitle else 0)), dpi=dpi)
    FigureCanvasAgg(fig)
    has_fill = any(p.labels is not None for p in panels)
    has_contours = any(p.contours is not None for p in panels)
    for i, panel in enumerate(panels):
        _draw_panel(fig.add_subplot(n_rows, n_cols, i + 1), panel, window, alpha)
    handles = _legend_handles(has_fill, has_contours, labels_name, contours_name)
    level, width = window
    window_text = f"window L {level:g} / W {width:g} HU"
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False,
                   title=window_text, title_fontsize=8)
    else:  # no panel carries labels: the CT alone, with its window
        fig.text(0.5, 0.02, f"{window_text}; no labels", ha="center", va="bottom", fontsize=8)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout(rect=(0, legend_h / fig.get_figheight(), 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    logger.info("Wrote montage of %d panels to %s", n, path)
    return path
