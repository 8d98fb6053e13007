"""Writing phantoms: the per-slice npy training layout, QA montage panels, whole datasets.

The npy layout holds the HU volume exactly as a scanner stores it and the DICOM reader
returns it: pixels outside the reconstruction circle keep the series' padding value
(-1024, -2000 or -3024 HU for v2 phantoms), which the training and inference transforms
clip to the bottom of the HU window like air.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path


from vacseg_monai.datasets import write_npy_patient
from vacseg_monai.phantom.model import Phantom

__all__ = ["generate_dataset", "montage_panels", "write_npy_layout"]

logger = logging.getLogger(__name__)


def write_npy_layout(phantom: Phantom, out_dir: str | Path) -> Path:
    """Write a phantom in the per-slice npy layout (:func:`vacseg_monai.datasets.write_npy_patient`).

    Writes ``<out_dir>/<patient_id>/img/<i>.npy`` (int16 HU) and ``mask/<i>.npy`` (uint8 labels),
    each of shape (1, rows, cols), for i = 0..n_slices-1. Slices beyond ``n_slices`` left by an
    earlier patient of the same ID (another seed range or generator version) are removed.

    Args:
        phantom: the patient to write.
        out_dir: dataset folder; created if missing.

    Returns:
        the patient folder.

    Raises:
        ValueError: if the image and label shapes or dtypes are not as the layout requires.
    """
    try:
        patient_dir = write_npy_patient(phantom.image, phantom.labels, Path(out_dir) / phantom.patient_id)
    except ValueError as exc:
        raise ValueError(f"Phantom {phantom.patient_id}: {exc}") from exc
    logger.debug("Wrote %d slices of %s to %s", phantom.n_slices, phantom.patient_id, patient_dir)
    return patient_dir


_PANEL_KINDS = ("thorax", "past bag end", "last bag slice", "bag middle", "middle")
_V2_MONTAGE_PATIENTS = 10


def _panel_slice(phantom: Phantom, kind: str) -> int | None:
    """Slice index of a montage panel kind, or None if the patient lacks it."""
    start, stop = phantom.bag_slices
    n = phantom.n_slices
    if kind == "middle":
        return n // 2
    if kind == "thorax":
        return int(phantom.lung_slices[len(phantom.lung_slices) // 2]) if len(phantom.lung_slices) else None
    if kind not in _PANEL_KINDS:
        raise ValueError(f"Unknown montage panel kind {kind!r}; expected one of {_PANEL_KINDS}.")
    if not phantom.has_bag:
        return None
    if kind == "past bag end":
        return stop if stop < n else (start - 1 if start > 0 else None)
    if kind == "last bag slice":
        return stop - 1 if stop < n else start
    return (start + stop) // 2


def _panel_title(phantom: Phantom, k: int, kind: str) -> str:
    extra = phantom.extra
    if extra.get("version", 1) == 1:
        return f"{phantom.patient_id} slice {k}/{phantom.n_slices} ({kind})"
    bag = "bag" if phantom.has_bag else "no bag"
    return (f"{phantom.patient_id} {phantom.species_description.lower()} {phantom.weight_kg:g} kg "
            f"{extra['region']}, {extra['recumbency']}\n{extra['couch']} couch, {bag}, "
            f"FOV {extra['fov_mm']:.0f} mm, {extra['kernel']}")


def montage_panels(phantom: Phantom, kinds: Sequence[str] = _PANEL_KINDS[:4]) -> list:
    """QA montage panels of characteristic slices of a phantom.

    Args:
        phantom: the patient.
        kinds: which slices, any of "thorax" (middle lung slice), "past bag end" (first slice
            beyond the bag), "last bag slice", "bag middle", "middle" (middle of the series).
            Kinds the patient lacks are skipped.

    Returns:
        a list of :class:`vacseg_monai.qa.OverlayPanel`.

    Raises:
        ValueError: for an unknown kind.
    """
    from vacseg_monai.qa import OverlayPanel

    panels = []
    for kind in kinds:
        k = _panel_slice(phantom, kind)
        if k is None:
            continue
        panels.append(OverlayPanel(
            image=phantom.image[:, :, k].copy(),
            labels=phantom.labels[:, :, k].copy(),
            title=_panel_title(phantom, k, kind),
        ))
    return panels


def _montage_kinds(version: int, i: int, n_patients: int) -> tuple[str, ...]:
    """The panel kinds patient ``i`` contributes to a dataset's montage (none when it has enough)."""
    if version != 1:
        return ("middle",) if i < _V2_MONTAGE_PATIENTS else ()
    v1_kinds = _PANEL_KINDS[:4]
    if n_patients == 1:
        return v1_kinds
    return v1_kinds[i::min(n_patients, len(v1_kinds))] if i < len(v1_kinds) else ()


def generate_dataset(
    out_dir: str | Path,
    n_patients: int = 10,
    seed: int = 0,
    size: int = 512,
    progress: bool = True,
    montage: str | Path | None = None,
    version: int | None = None,
) -> list[Path]:
    """Generate ``n_patients`` phantoms (seeds ``seed .. seed + n_patients - 1``) in the npy layout.

    Args:
        out_dir: dataset folder; created if missing.
        n_patients: number of patients, default 10.
        seed: base seed, default 0; patient i uses ``seed + i``.
        size: rows and columns per slice, default 512.
        progress: show a tqdm progress bar over patients, default True.
        montage: optional PNG path for a QA montage; default None. Version 1 shows
            characteristic slices (thorax, past the bag end, ...) of the first patients,
            version 2 the middle slice of each of the first ten patients.
        version: generator version, 1 or 2 (default None: the package's default version, 2).

    Returns:
        the patient folders, in seed order.

    Raises:
        ValueError: if ``n_patients`` < 1, ``seed`` < 0 or ``version`` is unknown.
    """
    from vacseg_monai.phantom.versions import DEFAULT_VERSION, VERSIONS, generate_phantom

    version = DEFAULT_VERSION if version is None else version
    if n_patients < 1:
        raise ValueError(f"`n_patients` must be >= 1, got {n_patients}.")
    if seed < 0:
        raise ValueError(f"`seed` must be >= 0, got {seed}.")
    if version not in VERSIONS:
        raise ValueError(f"`version` must be one of {VERSIONS}, got {version!r}.")
    from tqdm.auto import tqdm

    folders = []
    panels = []
    for i in tqdm(range(n_patients), desc="phantoms", unit="patient", disable=not progress):
        phantom = generate_phantom(seed + i, size=size, version=version)
        folders.append(write_npy_layout(phantom, out_dir))
        if montage is not None:
            panels += montage_panels(phantom, _montage_kinds(version, i, n_patients))
    if montage is not None:
        _save_montage(panels, montage, version)
    logger.info("Wrote %d phantom patients (generator v%d) to %s", len(folders), version, out_dir)
    return folders


def _save_montage(panels: list, path: str | Path, version: int) -> None:
    """CT and truth labels of the panels as one PNG: rows of CT, each above the same slices' labels."""
    from vacseg_monai.qa import OverlayPanel, save_overlay_montage

    n_cols = len(panels) if version == 1 else min(len(panels), 5)
    ordered = []
    for start in range(0, len(panels), n_cols):
        row = panels[start:start + n_cols]
        ordered += [OverlayPanel(p.image, None, None, p.title) for p in row] + row
    if version == 1:
        title = "Synthetic canine CT phantoms (generator v1): CT (top) and truth labels (bottom)"
    else:
        title = ("Synthetic planning CT phantoms (generator v2), middle slice of each patient: "
                 "CT above its truth labels")
    save_overlay_montage(ordered, path, n_cols=n_cols, suptitle=title, dpi=100 if version == 1 else 80)
