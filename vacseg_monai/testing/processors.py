"""Worker processors without the model, for the node's tests and benchmarks.

Name one as the node's processor factory: ``--processor vacseg_monai.testing.processors:StandInProcessor``
(or ``processor = "..."`` in the node's TOML). :class:`StandInProcessor` writes one small Secondary Capture
instance; :class:`StandInStructureSetProcessor` writes a real RT Structure Set (a Body outline by an HU
threshold) that references the series, as the node's results do.
"""

from __future__ import annotations

import logging
from pathlib import Path

__all__ = ["StandInProcessor", "StandInStructureSetProcessor"]

logger = logging.getLogger(__name__)


class StandInProcessor:
    """Reads the series and writes one small Secondary Capture instance in its study as the "result".

    The node around it (receiving, the queue, the export) is the real one; only the model is left out,
    so that a test or a benchmark of the node does not wait for it.

    Args:
        root_uid: UID root for the generated UIDs (default None: pydicom's).
        use_read_series: validate the series with :func:`vacseg_monai.dicom.series.read_series`
            (imports MONAI once, at construction); False reads headers only (default True).
        **_: other factory arguments (bundle, output, ...) are accepted and ignored.
    """

    def __init__(self, *, root_uid: str | None = None, use_read_series: bool = True, **_: object) -> None:
        self.root_uid = root_uid
        self._read_series = None
        if use_read_series:
            from vacseg_monai.dicom.series import read_series

            self._read_series = read_series

    def __call__(self, series_dir: Path, job_dir: Path) -> list[Path]:
        """Read ``series_dir``, write ``<job_dir>/output/<uid>.dcm``; return ``[that file]``."""
        import numpy as np
        from pydicom import dcmread
        from pydicom.dataset import Dataset, FileMetaDataset
        from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

        files = sorted(series_dir.glob("*.dcm"))
        if self._read_series is not None:
            series = self._read_series(series_dir)
            logger.info("Stand-in read %s: volume %s", series.series_instance_uid, tuple(series.volume.shape))
        first = dcmread(files[0], stop_before_pixels=True)
        out_dir = job_dir / "output"
        out_dir.mkdir(exist_ok=True)
        ds = Dataset()
        ds.SOPClassUID = SecondaryCaptureImageStorage
        ds.SOPInstanceUID = generate_uid(prefix=self.root_uid)
        ds.StudyInstanceUID = first.StudyInstanceUID
        ds.SeriesInstanceUID = generate_uid(prefix=self.root_uid)
        ds.PatientID = first.get("PatientID", "")
        ds.PatientName = first.get("PatientName", "")
        ds.Modality = "OT"
        ds.ConversionType = "WSD"
        ds.SeriesDescription = f"vacseg stand-in result for {len(files)} instances"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = ds.Columns = 8
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelRepresentation = 0
        ds.PixelData = np.zeros((8, 8), np.uint8).tobytes()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        path = out_dir / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        return [path]


class StandInStructureSetProcessor:
    """Reads the series and writes an RT Structure Set of one structure, Body, where the HU is above a threshold.

    The series reader and the project's RTSTRUCT writer are the real ones, so the result references the
    series (its study, series and instances) as the node's results do; the network is left out.

    Args:
        root_uid: UID root for the new objects (default None: the project's).
        body_hu: HU above which a voxel is Body (default -300).
        **_: other factory arguments (bundle, output, ...) are accepted and ignored.
    """

    def __init__(self, *, root_uid: str | None = None, body_hu: float = -300.0, **_: object) -> None:
        from vacseg_monai.dicom.outputs import DEFAULT_ROOT_UID
        from vacseg_monai.dicom.series import read_series

        self.root_uid = root_uid or DEFAULT_ROOT_UID
        self.body_hu = float(body_hu)
        self._read_series = read_series

    def __call__(self, series_dir: Path, job_dir: Path) -> list[Path]:
        """Read ``series_dir``, write the RTSTRUCT under ``<job_dir>/output``; return its path in a list."""
        import numpy as np

        from vacseg_monai.dicom.outputs import write_outputs
        from vacseg_monai.labels import label_by_name

        series = self._read_series(series_dir)
        hu = series.volume[0].numpy()
        labels = np.zeros(hu.shape, np.uint8)
        labels[hu > self.body_hu] = label_by_name("Body").value
        return write_outputs(labels, series, job_dir / "output", "rtstruct", self.root_uid)
