"""Mask <-> polygon geometry for RT Structure Sets.

Conventions (those of :mod:`vacseg_monai.dicom.geometry`): a 2D slice mask is indexed ``[row, col]``;
a contour is an ``(N, 2)`` float array of ``(row, col)`` index coordinates,
closed implicitly (the first point is *not* repeated at the end). Pixel centres
sit at integer coordinates. Mapping to DICOM patient coordinates (LPS, mm) is
done with the series' LPS affine (:mod:`vacseg_monai.dicom.geometry`).

Contours of one slice are combined with the even-odd rule: a pixel centre
belongs to the structure when it lies inside an odd number of the slice's
contours. Islands and holes are therefore separate contours, which is what
treatment planning systems and plastimatch (``--xor-contours``) read.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

__all__ = [
    "contours_to_mask",
    "format_ds_chunks",
    "format_ds_values",
    "mask_to_contours",
    "volume_to_contours",
    "simplify_contour",
]

logger = logging.getLogger(__name__)

# Decimal places written to ContourData: 1 micrometre, far below any CT pixel.
_DS_DECIMALS = 3
# Integer digits that still fit a 16-character DS with sign, point and decimals.
_DS_MAX_INT_DIGITS = 16 - 2 - _DS_DECIMALS


# Marching squares on a binary mask, one cell = the 2x2 block of pixel centres
# (top-left a, top-right b, bottom-right c, bottom-left d; case = 8a + 4b + 2c + d).
# Edges of a cell: 0 top, 1 right, 2 bottom, 3 left. _EXIT[case, entry] is the edge
# where the boundary leaves the cell when it enters through ``entry`` (-1: never),
# walking with the foreground on the right as displayed (outer boundaries clockwise,
# holes anticlockwise). Saddles (5, 10) keep diagonal foreground pixels apart, like
# skimage.measure.find_contours(fully_connected="low").
_SEGMENTS = {
    1: ((3, 2),), 2: ((2, 1),), 3: ((3, 1),), 4: ((1, 0),), 5: ((1, 0), (3, 2)),
    6: ((2, 0),), 7: ((3, 0),), 8: ((0, 3),), 9: ((0, 2),), 10: ((0, 3), (2, 1)),
    11: ((0, 1),), 12: ((1, 3),), 13: ((1, 2),), 14: ((2, 3),),
}  # fmt: skip
_EXIT = np.full((16, 4), -1, dtype=np.int64)
for _case, _pairs in _SEGMENTS.items():
    for _entry, _exit in _pairs:
        _EXIT[_case, _entry] = _exit


def mask_to_contours(mask: np.ndarray) -> list[np.ndarray]:
    """Trace every island and every hole of a 2D mask with marching squares.

    See :func:`volume_to_contours`, of which this is the single-slice case.

    Args:
        mask: 2D array, non-zero = inside.

    Returns:
        list of ``(N, 2)`` float64 arrays of ``(row, col)`` coordinates with N >= 3.

    Raises:
        ValueError: if ``mask`` is not 2D.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"`mask` must be a 2D array, got shape {mask.shape}.")
    return [contour for _, contour in volume_to_contours(mask[:, :, None])]


def volume_to_contours(masks: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """Trace the contours of every slice of a volume of 2D masks at once.

    Marching squares at level 0.5 (the boundary passes through the midpoints between
    foreground and background pixel centres), vectorised over all slices: the volume is
    cropped to its bounding box and padded in-plane with background, so objects touching
    the image border still close and keep their area. Filling the contours at pixel
    centres with the even-odd rule gives back exactly the input. Points that lie on the
    straight line between their neighbours are dropped (lossless); the closing point is
    not repeated. Contours come ordered by slice, then by their first point (row-major),
    each starting at that point: the output is deterministic.

    Args:
        masks: ``(rows, cols, n_slices)`` array (project layout), non-zero = inside.

    Returns:
        ``(slice_index, contour)`` pairs; contour is an ``(N, 2)`` float64 array of
        ``(row, col)`` coordinates with N >= 3.

    Raises:
        ValueError: if ``masks`` is not 3D.
    """
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"`masks` must be a 3D (rows, cols, n_slices) array, got shape {masks.shape}.")
    inside = masks if masks.dtype == bool else masks != 0
    cropped = _crop_and_pad(inside)
    if cropped is None:
        return []
    padded, origin = cropped
    ids, nxt = _vertex_links(padded)
    ids, component = _walk_cycles(ids, nxt)
    return _cycle_contours(ids, component, padded.shape, origin)


def _crop_and_pad(inside: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int]] | None:
    """The bounding box of ``inside`` as uint8, padded in-plane by one background pixel, and its first
    (row, col, slice); None when nothing is inside."""
    rows_any = np.flatnonzero(inside.any(axis=(1, 2)))
    if rows_any.size == 0:
        return None
    cols_any = np.flatnonzero(inside.any(axis=(0, 2)))
    slices_any = np.flatnonzero(inside[rows_any[0] : rows_any[-1] + 1, cols_any[0] : cols_any[-1] + 1].any(axis=(0, 1)))
    r0, c0, k0 = int(rows_any[0]), int(cols_any[0]), int(slices_any[0])
    r1, c1, k1 = int(rows_any[-1]) + 1, int(cols_any[-1]) + 1, int(slices_any[-1]) + 1
    padded = np.zeros((r1 - r0 + 2, c1 - c0 + 2, k1 - k0), dtype=np.uint8)
    padded[1:-1, 1:-1] = inside[r0:r1, c0:c1, k0:k1]
    return padded, (r0, c0, k0)


def _vertex_links(padded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The marching-squares vertices of ``padded`` as sorted ids, and for each the position of the next one.

    Vertices: h between pixels (i, j) and (i, j+1) at (i, j + 0.5); v between (i, j) and (i+1, j)
    at (i + 0.5, j). A vertex id is ``(slice * 2 + kind) * plane + flat in-plane index`` with kind
    0 for h and 1 for v; the walk keeps the foreground on its right.
    """
    height, width, depth = padded.shape
    crossing = np.zeros((height, width, depth), dtype=bool)
    np.not_equal(padded[:, 1:], padded[:, :-1], out=crossing[:, :-1])
    h_flat = np.flatnonzero(crossing)
    crossing[:] = False
    np.not_equal(padded[1:], padded[:-1], out=crossing[:-1])
    v_flat = np.flatnonzero(crossing)
    del crossing
    hij, hs = np.divmod(h_flat, depth)
    hi, hj = np.divmod(hij, width)
    vij, vs = np.divmod(v_flat, depth)
    vi, vj = np.divmod(vij, width)
    flat_padded = padded.ravel()
    h_inside_left = flat_padded[h_flat] == 1
    v_inside_up = flat_padded[v_flat] == 1
    # The cell each vertex leads into (walking with the foreground on the right), and
    # the edge of that cell it enters through.
    cell_s = np.concatenate([hs, vs])
    cell_i = np.concatenate([np.where(h_inside_left, hi, hi - 1), vi])
    cell_j = np.concatenate([hj, np.where(v_inside_up, vj - 1, vj)])
    entry = np.concatenate([np.where(h_inside_left, 0, 2), np.where(v_inside_up, 1, 3)])
    plane = height * width
    ids = np.concatenate([(hs * 2) * plane + hij, (vs * 2 + 1) * plane + vij])
    corner = (cell_i * width + cell_j) * depth + cell_s  # flat index of the cell's top-left pixel
    row_step, col_step = width * depth, depth
    case = (
        (flat_padded[corner] << 3)
        | (flat_padded[corner + col_step] << 2)
        | (flat_padded[corner + row_step + col_step] << 1)
        | flat_padded[corner + row_step]
    )
    exit_edge = _EXIT[case, entry]
    # Vertex id of each exit edge: top h(i, j), right v(i, j+1), bottom h(i+1, j), left v(i, j).
    cell_ij = cell_i * width + cell_j
    exit_ids = np.select(
        [exit_edge == 0, exit_edge == 1, exit_edge == 2],
        [(cell_s * 2) * plane + cell_ij, (cell_s * 2 + 1) * plane + cell_ij + 1, (cell_s * 2) * plane + cell_ij + width],
        (cell_s * 2 + 1) * plane + cell_ij,
    )
    order = np.argsort(ids)
    ids = ids[order]
    return ids, np.searchsorted(ids, exit_ids[order])


def _walk_cycles(ids: np.ndarray, nxt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The vertex ids in contour order and the contour of each: every contour is a cycle of ``nxt``,
    numbered in order of its smallest vertex id and starting there."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    count = len(ids)
    node = np.arange(count)
    _, component = connected_components(
        csr_matrix((np.ones(count, dtype=np.int8), (node, nxt)), shape=(count, count)), directed=True, connection="weak"
    )
    _, head = np.unique(component, return_index=True)
    # Position along each cycle by pointer doubling on the cycle cut before its head.
    link = nxt.copy()
    tail = nxt == head[component]
    link[tail] = node[tail]
    dist = (~tail).astype(np.int64)
    while True:
        jumped = link[link]
        if np.array_equal(jumped, link):
            break
        dist += dist[link]
        link = jumped
    dist += dist[link]
    sequence = np.lexsort((-dist, component))
    return ids[sequence], component[sequence]


def _cycle_contours(
    ids: np.ndarray, component: np.ndarray, shape: tuple[int, int, int], origin: tuple[int, int, int]
) -> list[tuple[int, np.ndarray]]:
    """``(slice_index, contour)`` per cycle in the volume's coordinates, points on a straight line dropped,
    contours of fewer than 3 points left out."""
    height, width, _ = shape
    r0, c0, k0 = origin
    plane = height * width
    count = len(ids)
    node = np.arange(count)
    kind, rem = np.divmod(ids % (2 * plane), plane)
    points = np.empty((count, 2), dtype=np.float64)
    points[:, 0] = rem // width + 0.5 * kind + (r0 - 1)
    points[:, 1] = rem % width + 0.5 * (1 - kind) + (c0 - 1)
    slice_of_point = ids // (2 * plane) + k0

    starts = np.flatnonzero(np.r_[True, component[1:] != component[:-1]])
    ends = np.r_[starts[1:], count]
    group_start = np.repeat(starts, ends - starts)
    group_end = np.repeat(ends, ends - starts)
    prev_idx = np.where(node == group_start, group_end - 1, node - 1)
    next_idx = np.where(node == group_end - 1, group_start, node + 1)
    d1 = points - points[prev_idx]
    d2 = points[next_idx] - points
    # Vertices sit on a half-pixel lattice, so the cross products are exact.
    keep = d1[:, 0] * d2[:, 1] - d1[:, 1] * d2[:, 0] != 0
    kept_component = component[keep]
    kept_points = points[keep]
    kept_slice = slice_of_point[keep]
    splits = np.flatnonzero(kept_component[1:] != kept_component[:-1]) + 1
    result = []
    for contour, first in zip(np.split(kept_points, splits), np.r_[0, splits]):
        if len(contour) >= 3:
            result.append((int(kept_slice[first]), contour))
    return result


def simplify_contour(contour: np.ndarray, tolerance_mm: float, spacing: Sequence[float]) -> np.ndarray:
    """Simplify a closed contour with Douglas-Peucker at a tolerance in millimetres.

    Args:
        contour: ``(N, 2)`` ``(row, col)`` coordinates, closed implicitly.
        tolerance_mm: largest distance (mm) a dropped point may lie from the result.
        spacing: ``(row_spacing, col_spacing)`` in mm (DICOM PixelSpacing order).

    Returns:
        the simplified ``(M, 2)`` contour, closed implicitly; may have fewer than 3
        points when the contour is smaller than the tolerance (callers drop those).

    Raises:
        ValueError: if ``tolerance_mm`` is negative or ``spacing`` is not two positive numbers.
    """
    from skimage.measure import approximate_polygon

    if tolerance_mm < 0:
        raise ValueError(f"`tolerance_mm` must be >= 0, got {tolerance_mm}.")
    scale = np.asarray(spacing, dtype=np.float64)
    if scale.shape != (2,) or np.any(scale <= 0):
        raise ValueError(f"`spacing` must be two positive numbers (row, col) in mm, got {spacing!r}.")
    if tolerance_mm == 0 or len(contour) < 4:
        return contour
    closed = np.vstack([contour, contour[:1]]) * scale
    simplified = approximate_polygon(closed, tolerance_mm) / scale
    if len(simplified) > 1 and np.array_equal(simplified[0], simplified[-1]):
        simplified = simplified[:-1]
    return simplified


def contours_to_mask(contours: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Fill contours at pixel centres with the even-odd rule (XOR of polygon fills).

    A scanline fill, vectorised over all edges of all contours: a pixel centre is
    inside when a ray from it towards increasing column crosses the contours an odd
    number of times (edges are half-open in the row direction, so a vertex exactly on
    a pixel-centre row is counted once). Pixel centres exactly on an edge count as
    outside on left edges and inside on right edges, as in most rasterisers.

    Args:
        contours: ``(N, 2)`` ``(row, col)`` polygons of one slice, closed implicitly.
        shape: ``(rows, cols)`` of the output.

    Returns:
        bool mask of ``shape``.
    """
    rows, cols = int(shape[0]), int(shape[1])
    polygons = [np.asarray(c, dtype=np.float64) for c in contours if len(c) >= 3]
    if not polygons:
        return np.zeros((rows, cols), dtype=bool)
    start = np.concatenate(polygons)
    end = np.concatenate([np.roll(p, -1, axis=0) for p in polygons])
    low = np.minimum(start[:, 0], end[:, 0])
    high = np.maximum(start[:, 0], end[:, 0])
    first_row = np.clip(np.ceil(low), 0, rows).astype(np.int64)
    stop_row = np.clip(np.ceil(high), 0, rows).astype(np.int64)
    counts = np.maximum(stop_row - first_row, 0)
    total = int(counts.sum())
    mask = np.zeros((rows, cols), dtype=bool)
    if total == 0:
        return mask
    edge = np.repeat(np.arange(len(start)), counts)
    offsets = np.cumsum(counts) - counts
    row = first_row[edge] + (np.arange(total) - offsets[edge])
    r0, c0 = start[edge, 0], start[edge, 1]
    r1, c1 = end[edge, 0], end[edge, 1]
    crossing = c0 + (row - r0) * (c1 - c0) / (r1 - r0)
    first_col = np.clip(np.floor(crossing).astype(np.int64) + 1, 0, cols)
    toggles = np.bincount(row * (cols + 1) + first_col, minlength=rows * (cols + 1)).astype(np.uint8) & 1
    parity = np.bitwise_xor.accumulate(toggles.reshape(rows, cols + 1)[:, :cols], axis=1)
    return parity.astype(bool)


def format_ds_values(values: np.ndarray) -> bytes:
    """Format numbers as a backslash-separated multi-valued Decimal String (DS).

    Values are rounded to 0.001 and written in fixed-point notation without trailing
    zeros (``12.5``, ``-3``, ``0.125``), each at most 16 characters as DS requires.
    The work is vectorised in numpy (building the characters column by column), which
    is about twenty times faster than formatting each number in Python.

    Args:
        values: finite numbers (any shape; flattened in C order).

    Returns:
        the ASCII value, padded with a trailing space to an even length.

    Raises:
        ValueError: if a value is not finite or too large for a 16-character DS.
    """
    flat = np.asarray(values, dtype=np.float64).ravel()
    if flat.size == 0:
        return b""
    return format_ds_chunks(flat, [flat.size])[0]


def format_ds_chunks(values: np.ndarray, sizes: Sequence[int]) -> list[bytes]:
    """Format consecutive runs of numbers as one DS value each, all in one vectorised pass.

    The same text as :func:`format_ds_values` on each run, e.g. the ContourData of every
    contour of a structure from one array of all their coordinates.

    Args:
        values: finite numbers (any shape; flattened in C order).
        sizes: the length of each run, in order; they must add up to the number of values.

    Returns:
        one padded DS value per run (``b""`` for a run of length 0).

    Raises:
        ValueError: if a value is not finite or too large for a 16-character DS, or the sizes
            do not add up to the number of values.
    """
    flat = np.asarray(values, dtype=np.float64).ravel()
    sizes = np.asarray(sizes, dtype=np.int64)
    if sizes.sum() != flat.size or np.any(sizes < 0):
        raise ValueError(f"`sizes` must be non-negative and add up to {flat.size} values, got a sum of {sizes.sum()}.")
    if flat.size == 0:
        return [b""] * len(sizes)
    chars = _ds_characters(flat)
    kept = chars != ord(" ")
    text = chars[kept].tobytes()
    ends = np.cumsum(np.count_nonzero(kept, axis=1))  # end of each value's text, its backslash included
    stops = np.cumsum(sizes)
    chunk_end = np.where(stops > 0, ends[np.maximum(stops - 1, 0)], 0)
    chunk_start = np.r_[0, chunk_end[:-1]]
    out = []
    for start, end, size in zip(chunk_start.tolist(), chunk_end.tolist(), sizes.tolist()):
        chunk = text[start : end - 1] if size else b""  # without the run's last backslash
        out.append(chunk + b" " if len(chunk) % 2 else chunk)
    return out


def _ds_characters(flat: np.ndarray) -> np.ndarray:
    """One row of ASCII codes per value: sign, digits, point, decimals and a closing backslash; characters
    to drop (leading zeros, trailing zeros, a bare point, a plus sign) are spaces.

    Raises:
        ValueError: if a value is not finite or too large for a 16-character DS.
    """
    if not np.all(np.isfinite(flat)):
        raise ValueError("DS values must be finite; got NaN or infinity in the contour coordinates.")
    scale = 10**_DS_DECIMALS
    fixed = np.rint(flat * scale)
    # int32 arithmetic is three times faster; coordinates beyond 2 km need int64
    fixed = fixed.astype(np.int32 if np.abs(fixed).max() < 2**31 - 1 else np.int64)
    negative = fixed < 0
    magnitude = np.abs(fixed)
    int_part = magnitude // scale
    frac_part = magnitude % scale
    n_int = max(1, len(str(int(int_part.max()))))
    if n_int > _DS_MAX_INT_DIGITS:
        raise ValueError(
            f"DS value {flat[np.argmax(np.abs(flat))]!r} has {n_int} integer digits; at most "
            f"{_DS_MAX_INT_DIGITS} fit a 16-character Decimal String."
        )
    width = 1 + n_int + 1 + _DS_DECIMALS + 1  # sign, digits, point, decimals, separator
    chars = np.full((flat.size, width), ord(" "), dtype=np.uint8)
    chars[negative, 0] = ord("-")
    for j in range(n_int):
        power = 10 ** (n_int - 1 - j)
        digit = (int_part // power) % 10
        column = (digit + ord("0")).astype(np.uint8)
        if j < n_int - 1:  # leading zeros become spaces (removed below)
            column[int_part < power] = ord(" ")
        chars[:, 1 + j] = column
    point = 1 + n_int
    chars[:, point] = ord(".")
    for j in range(_DS_DECIMALS):
        power = 10 ** (_DS_DECIMALS - 1 - j)
        digit = (frac_part // power) % 10
        column = (digit + ord("0")).astype(np.uint8)
        # this digit and all after it are zero -> trailing zero, drop it
        column[frac_part % (power * 10) == 0] = ord(" ")
        chars[:, point + 1 + j] = column
    chars[frac_part == 0, point] = ord(" ")
    chars[:, -1] = ord("\\")
    return chars
