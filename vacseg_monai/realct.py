"""Does the model hold on real scanner CT? A reference body, per-scan metrics and a picture.

None of the public real scans of :mod:`vacseg_monai.public_data` has a vacuum bag, and none
comes with contours. The check therefore measures what can be known without a reader:

- **Vacbag volume** (cm^3): every Vacbag voxel the model draws is a false positive.
- **Couch volume** (cm^3) and the **share of the Couch inside the reference body**: a couch
  drawn inside the patient is wrong whatever the couch looks like.
- **Body Dice** against a **reference body** built from the CT alone (:func:`reference_body`).

The scans are run through the bundle's own inference components
(:class:`vacseg_monai.segmenter.BundleSegmenter`, as the DICOM node and ``run inference``)
on volumes read by :func:`vacseg_monai.inference.load_input` (:func:`load_real_scan`).

How the reference body is built (:func:`reference_body`), and where it can be wrong:

1. **Threshold** at -400 HU (:data:`REFERENCE_THRESHOLD_HU`): soft tissue, fat, bone and the
   couch's dense parts are in; air, lung, bowel gas, foam and the padding outside the
   reconstruction circle are out.
2. **Opening per slice** with a disk of 6 mm radius (:data:`REFERENCE_OPENING_RADIUS_MM`,
   in mm of each slice's pixel spacing): whatever is thinner than 12 mm goes (the couch
   top's carbon-fibre shells, sheets, wires, the thin wall of a mattress), and with it the
   thin bridges by which the body touches the couch. Body parts thinner than 12 mm (ears,
   paws, a tail, skin folds) go too, and the body's sharp corners are rounded to the disk.
3. **Largest 3D component** (face connectivity), and every other component holding at least a
   fiftieth of its voxels (:data:`REFERENCE_PART_SHARE`: an arm or a leg lying apart from the trunk in
   the scan): the body; the couch's thick parts, a headrest or a cable that stay after the opening
   are small separate components and are dropped.
   A couch whose dense part is thicker than 12 mm *and* touches the body over a wide area
   stays joined to it (then the reference is wrong, and the picture shows it).
4. **Hole filling per axial slice**: lungs, trachea, bowel gas and the airways become body,
   as in a planning Body contour. A cavity open to the outside in that slice (the mouth,
   a nostril) or a body cut by the edge of the field of view is not filled.

Things on the skin denser than -400 HU (gel bolus, wet towels, a blanket folded thicker
than 12 mm) are counted as body; a body thinner than 12 mm in a slice is lost. The reference
is a measuring stick for gross failures (a body Dice well below 0.98, a couch inside the
patient), not a clinical contour.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from vacseg_monai.datasets import IMG_DIR, MASK_DIR, write_npy_patient
from vacseg_monai.labels import BACKGROUND, label_by_name
from vacseg_monai.public_data import (
    HARD_NEGATIVE_SCANS,
    PACKAGES,
    SCANS,
    ScanKind,
    ScanRole,
    cache_dir,
    scan_path,
)

if TYPE_CHECKING:
    from vacseg_monai.inference import InferenceInput
    from vacseg_monai.segmenter import BundleSegmenter

__all__ = [
    "HARD_NEGATIVE_ANNOTATED",
    "HARD_NEGATIVE_PAD_HU",
    "MAX_COUCH_INSIDE_SHARE",
    "MAX_VACBAG_CM3",
    "MIN_BODY_DICE",
    "NOMINAL_SLICE_THICKNESS_MM",
    "REFERENCE_OPENING_RADIUS_MM",
    "REFERENCE_THRESHOLD_HU",
    "TRAINING_SCANS",
    "HardNegative",
    "RealCTMetrics",
    "ScanCheck",
    "check_scan",
    "load_real_scan",
    "real_ct_metrics",
    "reference_body",
    "save_check_picture",
    "save_hard_negative_montage",
    "write_hard_negative",
]

logger = logging.getLogger(__name__)

#: HU above which a voxel may be body (step 1 of :func:`reference_body`).
REFERENCE_THRESHOLD_HU = -400.0
#: Radius in mm of the disk that opens each slice (step 2 of :func:`reference_body`).
REFERENCE_OPENING_RADIUS_MM = 6.0
#: Done-when thresholds of the check (issue 11).
MAX_VACBAG_CM3 = 1.0
MIN_BODY_DICE = 0.98
MAX_COUCH_INSIDE_SHARE = 0.01
#: Slice thickness given to a one-slice DICOM file that states none, so that the series reader
#: can place it (volumes are then those of a slab this thick).
NOMINAL_SLICE_THICKNESS_MM = 5.0
#: Keys of :data:`vacseg_monai.public_data.SCANS` the shipped model was trained on: the hard negatives
#: (bundle 0.3.0, :func:`write_hard_negative`). The check reports them but they do not count as held out.
TRAINING_SCANS: frozenset[str] = frozenset(HARD_NEGATIVE_SCANS)
#: Labels a hard-negative patient's annotation covers: Body (the reference body) and Vacbag (known absent);
#: the Couch is unknown, so training does not teach it as background there.
HARD_NEGATIVE_ANNOTATED = ("Vacbag", "Body")
#: HU of the air a non-square hard negative is padded with to a square slice.
HARD_NEGATIVE_PAD_HU = -1000

# The project's display order, as nibabel axis codes: rows run to the patient's posterior, columns to
# the patient's left, slices to superior (a head-first-supine DICOM series; the couch at high rows).
_DISPLAY_AXCODES = ("P", "L", "S")


def _disk(radius_rows: float, radius_cols: float) -> np.ndarray:
    """Elliptical structuring element with the given radii in pixels (at least the centre pixel)."""
    ry, rx = max(int(math.floor(radius_rows)), 0), max(int(math.floor(radius_cols)), 0)
    yy, xx = np.mgrid[-ry:ry + 1, -rx:rx + 1]
    return (yy / max(radius_rows, 1e-6)) ** 2 + (xx / max(radius_cols, 1e-6)) ** 2 <= 1.0


#: A component of the thresholded, opened CT is body when it holds at least this share of the largest one
#: (arms and legs lying apart in a scan hold a few per cent of the trunk; blankets and pads break up smaller).
REFERENCE_PART_SHARE = 0.02


def reference_body(
    hu: np.ndarray,
    spacing: Sequence[float],
    threshold_hu: float = REFERENCE_THRESHOLD_HU,
    opening_radius_mm: float = REFERENCE_OPENING_RADIUS_MM,
) -> np.ndarray:
    """The body built from the CT alone, couch excluded (see the module docstring for how and its limits).

    Args:
        hu: CT in HU, shape (rows, cols, n_slices).
        spacing: (row, col, slice) spacing in mm; the opening uses the in-plane spacings.
        threshold_hu: voxels above it may be body. Defaults to -400.
        opening_radius_mm: radius of the per-slice opening disk in mm. Defaults to 6.

    Returns:
        bool mask of the reference body, same shape (all False if nothing survives the opening).

    Raises:
        ValueError: if ``hu`` is not 3D or ``spacing`` is not three positive numbers.
    """
    hu = np.asarray(hu)
    if hu.ndim != 3:
        raise ValueError(f"`hu` must be a 3D (rows, cols, n_slices) volume, got shape {hu.shape}.")
    values = [float(s) for s in spacing]
    if len(values) != 3 or min(values) <= 0:
        raise ValueError(f"`spacing` must be three positive (row, col, slice) spacings in mm, got {spacing!r}.")
    if opening_radius_mm < 0:
        raise ValueError(f"`opening_radius_mm` must be >= 0, got {opening_radius_mm}.")
    footprint = _disk(opening_radius_mm / values[0], opening_radius_mm / values[1])
    opened = np.empty(hu.shape, dtype=bool)
    for k in range(hu.shape[2]):
        opened[:, :, k] = ndimage.binary_opening(hu[:, :, k] > threshold_hu, structure=footprint)
    components, n = ndimage.label(opened)
    if n == 0:
        return opened
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    # The trunk, and any part as large as a fiftieth of it (an arm or a leg lying apart in the scan).
    keep = np.flatnonzero(sizes >= REFERENCE_PART_SHARE * sizes.max())
    body = np.isin(components, keep)
    for k in range(body.shape[2]):
        if body[:, :, k].any():
            body[:, :, k] = ndimage.binary_fill_holes(body[:, :, k])
    return body


@dataclass(frozen=True)
class RealCTMetrics:
    """Metrics of one prediction on a real scan without a vacuum bag.

    Attributes:
        vacbag_cm3: Vacbag volume; all of it is false positive.
        couch_cm3: Couch volume.
        couch_inside_body_share: Couch voxels inside the reference body / Couch voxels (0 without Couch).
        body_dice: Dice of the predicted Body against the reference body (NaN if both are empty).
        body_cm3: predicted Body volume.
        reference_body_cm3: reference body volume.
    """

    vacbag_cm3: float
    couch_cm3: float
    couch_inside_body_share: float
    body_dice: float
    body_cm3: float
    reference_body_cm3: float

    @property
    def vacbag_ok(self) -> bool:
        """Vacbag <= :data:`MAX_VACBAG_CM3`."""
        return self.vacbag_cm3 <= MAX_VACBAG_CM3

    @property
    def body_ok(self) -> bool:
        """Body Dice >= :data:`MIN_BODY_DICE`."""
        return self.body_dice >= MIN_BODY_DICE

    @property
    def couch_ok(self) -> bool:
        """Share of the Couch inside the body < :data:`MAX_COUCH_INSIDE_SHARE`."""
        return self.couch_inside_body_share < MAX_COUCH_INSIDE_SHARE

    @property
    def passed(self) -> bool:
        """All three thresholds hold."""
        return self.vacbag_ok and self.body_ok and self.couch_ok


def real_ct_metrics(labels: np.ndarray, reference: np.ndarray, spacing: Sequence[float]) -> RealCTMetrics:
    """Compare a predicted label map with the reference body of a scan that has no vacuum bag.

    Args:
        labels: predicted label map (rows, cols, n_slices) with the values of :mod:`vacseg_monai.labels`.
        reference: bool reference body, same shape (:func:`reference_body`).
        spacing: (row, col, slice) spacing in mm.

    Raises:
        ValueError: if the shapes differ or ``spacing`` is not three positive numbers.
    """
    labels = np.asarray(labels)
    reference = np.asarray(reference, dtype=bool)
    if labels.shape != reference.shape:
        raise ValueError(f"Label map {labels.shape} and reference body {reference.shape} must have the same shape.")
    values = [float(s) for s in spacing]
    if len(values) != 3 or min(values) <= 0:
        raise ValueError(f"`spacing` must be three positive (row, col, slice) spacings in mm, got {spacing!r}.")
    cm3 = values[0] * values[1] * values[2] / 1000.0
    bag = labels == label_by_name("Vacbag").value
    couch = labels == label_by_name("Couch").value
    body = labels == label_by_name("Body").value
    n_couch = int(np.count_nonzero(couch))
    n_body, n_ref = int(np.count_nonzero(body)), int(np.count_nonzero(reference))
    overlap = int(np.count_nonzero(body & reference))
    return RealCTMetrics(
        vacbag_cm3=float(np.count_nonzero(bag)) * cm3,
        couch_cm3=n_couch * cm3,
        couch_inside_body_share=float(np.count_nonzero(couch & reference)) / n_couch if n_couch else 0.0,
        body_dice=2.0 * overlap / (n_body + n_ref) if n_body + n_ref else math.nan,
        body_cm3=n_body * cm3,
        reference_body_cm3=n_ref * cm3,
    )


def _display_order_nifti(image: object, dest: Path) -> Path:
    """Reorient a nibabel image to the project's display order and save it as NIfTI."""
    import nibabel as nib

    current = nib.orientations.io_orientation(image.affine)
    wanted = nib.orientations.axcodes2ornt(_DISPLAY_AXCODES)
    reoriented = image.as_reoriented(nib.orientations.ornt_transform(current, wanted))
    nib.save(reoriented, str(dest))
    return dest


def _nrrd_as_nifti(path: Path) -> object:
    """An NRRD volume (read with ITK) as a nibabel image with a RAS affine."""
    import itk
    import nibabel as nib

    try:
        image = itk.imread(str(path))
    except (RuntimeError, OSError) as exc:
        raise ValueError(f"Cannot read NRRD file {path} ({exc}).") from exc
    data = np.asarray(itk.array_from_image(image)).transpose(2, 1, 0)  # ITK (z, y, x) -> index (i, j, k)
    if data.ndim != 3:
        raise ValueError(f"NRRD file {path} holds a {data.ndim}D image; expected a 3D CT volume.")
    direction = np.asarray(image.GetDirection(), dtype=np.float64)
    affine = np.eye(4)
    affine[:3, :3] = direction @ np.diag(np.asarray(image.GetSpacing(), dtype=np.float64))
    affine[:3, 3] = np.asarray(image.GetOrigin(), dtype=np.float64)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine  # ITK's LPS -> RAS
    return nib.Nifti1Image(data, affine)


def _single_file_folder(path: Path, dest: Path, notes: list[str]) -> Path:
    """Copy one DICOM slice into a folder of its own, stating a nominal slice thickness if it has none."""
    import pydicom

    dest.mkdir(parents=True, exist_ok=True)
    ds = pydicom.dcmread(path)
    if not ds.get("SliceThickness") and not ds.get("SpacingBetweenSlices"):
        logger.info("%s states no slice thickness; the check gives its copy %g mm", path, NOMINAL_SLICE_THICKNESS_MM)
        ds.SliceThickness = NOMINAL_SLICE_THICKNESS_MM
        notes.append(f"states no slice thickness; read as {NOMINAL_SLICE_THICKNESS_MM:g} mm")
        ds.save_as(dest / path.name)
    else:
        shutil.copy2(path, dest / path.name)
    return dest


def load_real_scan(
    key: str,
    workdir: str | os.PathLike[str],
    cache: str | os.PathLike[str] | None = None,
    notes: list[str] | None = None,
) -> InferenceInput:
    """Read one public scan with :func:`vacseg_monai.inference.load_input`, as ``run inference`` would.

    - a DICOM folder is read as it is (the series reader, its affine and orientation as stored);
    - one DICOM file is copied alone into ``workdir`` (given :data:`NOMINAL_SLICE_THICKNESS_MM`
      when it states no thickness) and read as a one-slice series;
    - NIfTI and NRRD volumes are reoriented to the display order ``load_input`` expects for NIfTI
      (rows to posterior, columns to the patient's left, as a head-first-supine DICOM series) and
      saved as NIfTI in ``workdir``.

    Args:
        key: a key of :data:`vacseg_monai.public_data.SCANS`.
        workdir: scratch folder for converted copies.
        cache: public data cache (default :func:`vacseg_monai.public_data.cache_dir`).
        notes: if given, what was assumed while reading is appended to it.

    Raises:
        vacseg_monai.public_data.PublicDataError: unknown key or the package cannot be fetched.
        ValueError: the scan cannot be read (the reader's own errors are ValueErrors too).
    """
    import nibabel as nib

    from vacseg_monai.inference import load_input

    path = scan_path(key, cache)
    kind = SCANS[key].kind
    work = Path(workdir) / key
    work.mkdir(parents=True, exist_ok=True)
    if kind is ScanKind.DICOM_FOLDER:
        return load_input(path)
    if kind is ScanKind.DICOM_FILE:
        return load_input(_single_file_folder(path, work / "dicom", notes if notes is not None else []))
    image = nib.load(str(path)) if kind is ScanKind.NIFTI else _nrrd_as_nifti(path)
    return load_input(_display_order_nifti(image, work / f"{key}.nii.gz"))


@dataclass
class ScanCheck:
    """The check of one public scan (a row of the report).

    Attributes:
        key: the scan's key in :data:`vacseg_monai.public_data.SCANS`.
        source: package and version it comes from, e.g. ``"pyradiomics 3.1.0"``.
        licence: the package's licence.
        description: what the scan is.
        used_in_training: whether the scan is in :data:`TRAINING_SCANS`.
        shape: (rows, cols, n_slices) as read (empty if not readable).
        spacing: (row, col, slice) spacing in mm (empty if not readable).
        metrics: the metrics, or None if the scan could not be read or segmented.
        error: why not (``"not readable: ..."``), else None.
        picture: the PNG written, if any.
        seconds: time to load, segment and measure.
        notes: what was assumed while reading, and what the model was given (e.g. the couch at the top).
    """

    key: str
    source: str
    licence: str
    description: str
    used_in_training: bool
    shape: tuple[int, ...] = ()
    spacing: tuple[float, ...] = ()
    metrics: RealCTMetrics | None = None
    error: str | None = None
    picture: Path | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def _picture_slices(labels: np.ndarray, body: np.ndarray, count: int) -> list[int]:
    """Slices to show: ``count - 1`` spread over the reference body, plus the one with the most Vacbag."""
    with_body = np.flatnonzero(body.any(axis=(0, 1)))
    candidates = with_body if with_body.size else np.arange(body.shape[2])
    spread = max(count - 1, 1)
    picks = {int(candidates[int(round(p))]) for p in np.linspace(0, candidates.size - 1, spread + 2)[1:-1]}
    bag = np.count_nonzero(labels == label_by_name("Vacbag").value, axis=(0, 1))
    if bag.any():
        picks.add(int(np.argmax(bag)))
    return sorted(picks)


def save_check_picture(
    hu: np.ndarray,
    labels: np.ndarray,
    reference: np.ndarray,
    path: str | os.PathLike[str],
    title: str,
    n_slices: int = 4,
) -> Path:
    """Write a PNG of a few axial slices: CT, the prediction filled, the reference body as a contour.

    The slices are spread over the reference body; the slice with the most Vacbag is added.

    Args:
        hu: CT in HU (rows, cols, n_slices).
        labels: predicted label map, same shape.
        reference: reference body, same shape.
        path: PNG path.
        title: figure title.
        n_slices: slices shown. Defaults to 4.
    """
    from vacseg_monai.qa import OverlayPanel, save_overlay_montage

    contour = np.where(reference, label_by_name("Body").value, 0).astype(np.uint8)
    panels = [OverlayPanel(image=hu[:, :, k], labels=labels[:, :, k], contours=contour[:, :, k], title=f"slice {k}")
              for k in _picture_slices(labels, reference, n_slices)]
    # At least 10 inches wide, so that the legend fits below a single slice.
    return save_overlay_montage(panels, path, labels_name="model", contours_name="reference body", suptitle=title,
                                panel_inches=max(2.6, 10.0 / len(panels)), dpi=90)


def _failed(
    result: ScanCheck, what: str, exc: Exception, folders: list[tuple[str | os.PathLike[str], str]], start: float
) -> ScanCheck:
    """Record why a scan has no metrics, naming this machine's folders by role (the report is published)."""
    logger.warning("%s: %s: %s", result.key, what, exc)
    text = str(exc)
    for folder, role in folders:
        text = text.replace(str(Path(folder)), role)
    result.error = f"{what}: {text}"
    result.seconds = time.perf_counter() - start
    return result


def check_scan(
    key: str,
    segmenter: BundleSegmenter,
    workdir: str | os.PathLike[str] | None = None,
    picture_dir: str | os.PathLike[str] | None = None,
    cache: str | os.PathLike[str] | None = None,
    training_scans: Collection[str] = TRAINING_SCANS,
) -> ScanCheck:
    """Load one public scan, segment it with the bundle and measure it against its reference body.

    A scan that cannot be read gives a :class:`ScanCheck` whose ``error`` says
    ``"not readable: <error>"`` (``"not segmented: <error>"`` if the bundle fails on it); the check
    of the other scans goes on.

    Args:
        key: a key of :data:`vacseg_monai.public_data.SCANS`.
        segmenter: the bundle's inference components, loaded once.
        workdir: scratch folder (default: a temporary folder, removed afterwards).
        picture_dir: where ``real_ct_<key>.png`` goes (default None: no picture).
        cache: public data cache (default :func:`vacseg_monai.public_data.cache_dir`).
        training_scans: keys of the scans the model was trained on (default :data:`TRAINING_SCANS`).

    Raises:
        vacseg_monai.public_data.PublicDataError: unknown key or the package cannot be fetched.
    """
    if key not in SCANS:
        scan_path(key, cache)  # raises PublicDataError naming the known keys
    scan = SCANS[key]
    package = PACKAGES[scan.package]
    result = ScanCheck(key=key, source=f"{package.name} {package.version}", licence=package.licence,
                       description=scan.description, used_in_training=key in training_scans)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="realct-") as tmp:
        work = Path(workdir if workdir is not None else tmp)
        try:
            source = load_real_scan(key, work, cache, result.notes)
        except (ValueError, OSError, RuntimeError) as exc:
            return _failed(result, "not readable", exc, [(cache_dir() if cache is None else cache, "<cache>"),
                                                         (work, "<work>")], start)
        hu = np.asarray(source.image[0].cpu().numpy(), dtype=np.float32)
        result.shape = tuple(int(s) for s in hu.shape)
        result.spacing = source.spacing
        if source.rows_flipped:
            result.notes.append("stored with the couch at the top of the image; segmented flipped up-down, "
                                "as the node does")
        try:
            labels = segmenter.segment(source).labels
        except (ValueError, RuntimeError) as exc:
            return _failed(result, "not segmented", exc, [(work, "<work>")], start)
    reference = reference_body(hu, result.spacing)
    result.metrics = real_ct_metrics(labels, reference, result.spacing)
    if picture_dir is not None:
        m = result.metrics
        title = (f"{key}: Vacbag {m.vacbag_cm3:.1f} cm3, Couch {m.couch_cm3:.1f} cm3 "
                 f"({100 * m.couch_inside_body_share:.1f} % in body), Body Dice {m.body_dice:.3f}")
        result.picture = save_check_picture(hu, labels, reference, Path(picture_dir) / f"real_ct_{key}.png", title)
    result.seconds = time.perf_counter() - start
    logger.info("%s: %s in %.1f s", key, result.metrics, result.seconds)
    return result


@dataclass(frozen=True)
class HardNegative:
    """One real scan written as a training patient without a bag (:func:`write_hard_negative`).

    Attributes:
        key: the scan's key in :data:`vacseg_monai.public_data.SCANS`.
        patient_dir: the patient folder written (npy layout).
        shape: (rows, cols, n_slices) as written (square slices: the scan's, padded with air if it is not square).
        spacing: (row, col, slice) spacing in mm of the scan (not stored: the npy layout carries none).
        body_cm3: volume of the Body label.
    """

    key: str
    patient_dir: Path
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    body_cm3: float


def _hard_negative_volume(
    key: str, cache: str | os.PathLike[str] | None
) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The scan as int16 HU in the display order (couch at the bottom, patient's left at the image right)."""
    with tempfile.TemporaryDirectory(prefix="hardneg-") as tmp:
        source = load_real_scan(key, tmp, cache)
        hu = source.image[0].cpu().numpy()
        spacing = source.spacing
    info = np.iinfo(np.int16)
    image = np.clip(np.rint(hu), info.min, info.max).astype(np.int16)
    # Volumes cropped to the body (NIfTI exports) are not square; training resizes every slice to a square, which
    # would stretch them. Air on both sides makes the slice square, as a scanner's field of view is.
    rows, cols = image.shape[:2]
    extra_rows, extra_cols = max(cols - rows, 0), max(rows - cols, 0)
    pad = ((extra_rows // 2, extra_rows - extra_rows // 2), (extra_cols // 2, extra_cols - extra_cols // 2), (0, 0))
    return np.pad(image, pad, constant_values=HARD_NEGATIVE_PAD_HU), spacing


def write_hard_negative(
    key: str, patient_dir: str | os.PathLike[str], cache: str | os.PathLike[str] | None = None
) -> HardNegative:
    """Write one real scan without a bag as a training patient with partial labels.

    The scan is read as the check reads it (:func:`load_real_scan`: NIfTI and NRRD brought to the display
    order, a DICOM series stored with the couch at the top flipped), so that its slices lie as the phantoms'
    do: couch at the bottom, the patient's left at the image right. It keeps its own in-plane grid (training
    resizes every slice), padded with air (:data:`HARD_NEGATIVE_PAD_HU`) to a square slice where it is cropped
    to the body, so that the resize does not stretch it. It is written with :func:`vacseg_monai.datasets.write_npy_patient`: HU as int16,
    Body = :func:`reference_body`, everything else 0, annotated as :data:`HARD_NEGATIVE_ANNOTATED` (Vacbag
    known absent, Couch unknown).

    Args:
        key: a key of :data:`vacseg_monai.public_data.HARD_NEGATIVE_SCANS`.
        patient_dir: the patient folder to write (``img/``, ``mask/`` and ``annotation.json`` in it).
        cache: public data cache (default :func:`vacseg_monai.public_data.cache_dir`).

    Raises:
        vacseg_monai.public_data.PublicDataError: unknown key or the package cannot be fetched.
        ValueError: the scan is held out for the check, cannot be read, or its reference body is empty.
    """
    if key not in SCANS:
        scan_path(key, cache)  # raises PublicDataError naming the known keys
    if SCANS[key].role is not ScanRole.HARD_NEGATIVE:
        raise ValueError(
            f"Public scan {key!r} is held out for the real-CT check (role {SCANS[key].role.value!r}) and must not "
            f"be trained on; hard negatives are {', '.join(HARD_NEGATIVE_SCANS)}."
        )
    image, spacing = _hard_negative_volume(key, cache)
    body = reference_body(image, spacing)
    if not body.any():
        raise ValueError(f"Public scan {key!r}: the reference body is empty; nothing to train on.")
    labels = np.where(body, label_by_name("Body").value, BACKGROUND).astype(np.uint8)
    folder = write_npy_patient(image, labels, Path(patient_dir), annotated=HARD_NEGATIVE_ANNOTATED)
    body_cm3 = float(np.count_nonzero(body)) * float(np.prod(spacing)) / 1000.0
    logger.info("%s: %s slices of %sx%s, Body %.0f cm3 -> %s", key, image.shape[2], image.shape[0], image.shape[1],
                body_cm3, folder)
    rows, cols, n_slices = (int(n) for n in image.shape)
    return HardNegative(key=key, patient_dir=folder, shape=(rows, cols, n_slices), spacing=spacing, body_cm3=body_cm3)


def save_hard_negative_montage(
    patients: Sequence[HardNegative], path: str | os.PathLike[str], panel_inches: float = 2.4, dpi: int = 60
) -> Path:
    """Write a PNG with the middle slice of each hard-negative patient, as written, with its Body outline.

    Args:
        patients: the patients written by :func:`write_hard_negative`.
        path: PNG path.
        panel_inches: edge of one panel in inches. Defaults to 2.4.
        dpi: resolution. Defaults to 60 (a small picture for the docs).

    Raises:
        ValueError: if ``patients`` is empty.
    """
    from vacseg_monai.qa import OverlayPanel, save_overlay_montage

    if not patients:
        raise ValueError("`patients` is empty: write at least one hard negative first.")
    panels = []
    for patient in patients:
        k = patient.shape[2] // 2
        image = np.load(patient.patient_dir / IMG_DIR / f"{k}.npy")[0]
        labels = np.load(patient.patient_dir / MASK_DIR / f"{k}.npy")[0]
        panels.append(OverlayPanel(image=image, contours=labels, title=f"{patient.key} slice {k}"))
    return save_overlay_montage(panels, path, contours_name="reference body", panel_inches=panel_inches,
                                dpi=dpi, suptitle="Real CT hard negatives: no Vacbag, Couch unknown")
