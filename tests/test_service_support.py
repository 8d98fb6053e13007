"""Helpers for the service tests: tiny series, test processors, the node with them on its path.

Collected by pytest but holds no tests; the worker process imports the test processors from here by
dotted path ("test_service_support:..."), so :func:`node_process` puts this folder on the node's
PYTHONPATH. The peers themselves (DCMTK, the node as a subprocess, ports, waits) are
:mod:`vacseg_monai.testing.peers`, which the benchmarks share.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from conftest import REPO
from vacseg_monai.testing.peers import NodeProcess, dcmtk_available
from vacseg_monai.testing.processors import StandInProcessor

TESTS_DIR = REPO / "tests"
needs_dcmtk = pytest.mark.skipif(not dcmtk_available(), reason="DCMTK (storescu/storescp/echoscu) not installed")


def node_process(output_directory: Path, log_path: Path, args: list[str], **kwargs: object) -> NodeProcess:
    """:class:`~vacseg_monai.testing.peers.NodeProcess` with this folder on its path (for the test processors)."""
    return NodeProcess(output_directory, log_path, args, pythonpath=[TESTS_DIR], **kwargs)


def write_series(out_dir: Path, n_slices: int = 3, *, study_uid: str | None = None,
                 series_uid: str | None = None, description: str = "Synthetic CT") -> list[Path]:
    """A tiny CT series (16x16 pixels) written by the project's synthetic writer."""
    from vacseg_monai.dicom.synthetic import write_ct_series

    image = np.full((16, 16, n_slices), -1000, np.int16)
    image[4:12, 4:12, :] = 40
    return write_ct_series(
        image, out_dir, pixel_spacing=(1.0, 1.0), slice_thickness=2.0,
        study_instance_uid=study_uid or generate_uid(), series_instance_uid=series_uid or generate_uid(),
        series_description=description,
    )


def modalities(files: list[Path]) -> list[str]:
    return sorted(str(dcmread(p, stop_before_pixels=True).Modality) for p in files)


class BlockingProcessor:
    """Marks ``<job_dir>/started`` then blocks (bounded) so a test can kill the node mid-job."""

    def __init__(self, **_: object) -> None:
        pass

    def __call__(self, series_dir: Path, job_dir: Path) -> list[Path]:
        (job_dir / "started").write_text("started")
        threading.Event().wait(120)
        raise RuntimeError("BlockingProcessor was not killed within 120 s")


class PrefetchRecorder(StandInProcessor):
    """Stand-in processor with a ``prefetch`` hook that records, in ``<job_dir>/prefetched``, the files it saw."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.seen: dict[Path, set[str]] = {}

    def prefetch(self, series_dir: Path) -> int:
        seen = self.seen.setdefault(series_dir, set())
        new = {p.name for p in series_dir.glob("*.dcm")} - seen
        seen |= new
        (series_dir.parent / "prefetched").write_text("\n".join(sorted(seen)))
        return len(new)


class FailOnDescriptionProcessor(StandInProcessor):
    """Stand-in processor that raises for series described "please fail"."""

    def __call__(self, series_dir: Path, job_dir: Path) -> list[Path]:
        first = dcmread(sorted(series_dir.glob("*.dcm"))[0], stop_before_pixels=True)
        if first.get("SeriesDescription") == "please fail":
            raise ValueError(f"refusing series {first.SeriesInstanceUID} as asked")
        return super().__call__(series_dir, job_dir)


def write_phantom_series(seed: int, out_dir: Path, *, size: int = 512, n_slices: int | None = None):
    """A phantom written as DICOM CT + truth RTSTRUCT; ``n_slices`` keeps that many slices from the bag's middle.

    The phantom is a generator v1 patient: every v1 patient lies in a bag, which the Dice
    checks of the shipped model rely on. Returns the :class:`~vacseg_monai.dicom.phantom_dicom.PhantomDicom` of
    ``write_phantom_dicom``. Cropping keeps inference short on a loaded CPU.
    """
    import dataclasses

    from vacseg_monai.dicom.phantom_dicom import write_phantom_dicom
    from vacseg_monai.phantom import generate_phantom

    phantom = generate_phantom(seed, size=size, version=1)
    if n_slices is not None and n_slices < phantom.n_slices:
        start, stop = phantom.bag_slices
        first = max(0, min((start + stop - n_slices) // 2, phantom.n_slices - n_slices))
        keep = slice(first, first + n_slices)
        phantom = dataclasses.replace(
            phantom, image=phantom.image[:, :, keep], labels=phantom.labels[:, :, keep],
            tissues=phantom.tissues[:, :, keep],
            bag_slices=(max(start - first, 0), min(stop - first, n_slices)),
        )
    return write_phantom_dicom(phantom, out_dir)


def write_banded_series(out_dir: Path, n_slices: int = 6, *, series_uid: str | None = None) -> list[Path]:
    """A 64x64 CT series with three HU bands that :class:`BandProcessor` turns into Body, Vacbag and Couch.

    ``series_uid`` is its SeriesInstanceUID (default: a new one).
    """
    from vacseg_monai.dicom.synthetic import write_ct_series

    image = np.full((64, 64, n_slices), -1000, np.int16)
    image[14:40, 16:48, :] = 40  # Body
    image[40:46, 10:54, :] = -800  # Vacbag under it
    image[48:53, 4:60, :] = 350  # Couch
    return write_ct_series(image, out_dir, pixel_spacing=(1.0, 1.0), slice_thickness=2.5,
                           study_instance_uid=generate_uid(), series_instance_uid=series_uid or generate_uid(),
                           series_description="Banded CT")


class BandProcessor:
    """Contours by HU bands (Body -100..100, Vacbag -900..-600, Couch 200..500) and writes the project's RTSTRUCT.

    A stand-in for the network that gives known contours; the reading, the writing and the node are the real ones.
    """

    def __init__(self, *, root_uid: str | None = None, **_: object) -> None:
        self.root_uid = root_uid

    def __call__(self, series_dir: Path, job_dir: Path) -> list[Path]:
        from vacseg_monai.dicom.outputs import DEFAULT_ROOT_UID, write_outputs
        from vacseg_monai.dicom.series import read_series

        series = read_series(series_dir)
        hu = series.volume[0].numpy()
        labels = np.zeros(hu.shape, np.uint8)
        labels[(hu > -100) & (hu < 100)] = 3
        labels[(hu > -900) & (hu < -600)] = 1
        labels[(hu > 200) & (hu < 500)] = 2
        return write_outputs(labels, series, job_dir / "output", "rtstruct", self.root_uid or DEFAULT_ROOT_UID)


def edited_structure_set(source: Path, out: Path, roi_name: str | None = None, scale: float = 1.0, *,
                         dz: float = 0.0, drop_contours: bool = False,
                         references: tuple[str, str] | None = None) -> Path:
    """A copy of the node's RTSTRUCT as a planning system would send it back, edited.

    ``roi_name``'s contours are scaled in-plane by ``scale`` about their centre and moved by ``dz`` mm;
    ``drop_contours`` removes the ROIContourSequence; ``references`` (series, frame of reference)
    replaces what it refers to.
    """
    ds = dcmread(source)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.StructureSetLabel = "Reviewed"
    numbers = {int(roi.ROINumber): str(roi.ROIName) for roi in ds.StructureSetROISequence}
    for roi_contour in ds.ROIContourSequence:
        if numbers[int(roi_contour.ReferencedROINumber)] != roi_name:
            continue
        for contour in roi_contour.ContourSequence:
            points = np.asarray(contour.ContourData, dtype=np.float64).reshape(-1, 3)
            centre = points[:, :2].mean(axis=0)
            points[:, :2] = centre + (points[:, :2] - centre) * scale
            points[:, 2] += dz
            contour.ContourData = [f"{v:.3f}" for v in points.ravel()]
    if drop_contours:
        del ds.ROIContourSequence
    if references is not None:
        series_uid, frame_uid = references
        frame = ds.ReferencedFrameOfReferenceSequence[0]
        frame.FrameOfReferenceUID = frame_uid
        frame.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0].SeriesInstanceUID = series_uid
        for roi in ds.StructureSetROISequence:
            roi.ReferencedFrameOfReferenceUID = frame_uid
    ds.save_as(out, enforce_file_format=True)
    return out
