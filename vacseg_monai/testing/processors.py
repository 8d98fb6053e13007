"""Worker processors without the model, for the node's tests and benchmarks.

Name one as the node's processor factory: ``--processor vacseg_monai.testing.processors:StandInProcessor``
(or ``processor = "..."`` in the node's TOML). :class:`StandInProcessor` writes one small Secondary Capture
instance; :class:`StandInStructureSetProcessor` writes a real RT Structure Set (a Body outline by an HU
threshold) that references the series, as the node's results do; :class:`StandInWithQAProcessor` also leaves
a quality block and a QA picture.
"""

from __future__ import annotations

import logging
from pathlib import Path

__all__ = ["StandInProcessor", "StandInStructureSetProcessor", "StandInWithQAProcessor"]

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


class StandInWithQAProcessor(StandInProcessor):
    """:class:`StandInProcessor` that also leaves what the real one leaves for a person: a quality block and a picture.

    ``quality.json`` holds the scores it is given (a structure below ``threshold`` is flagged, so that the
    review policy and the dashboard's flag can be exercised) and ``after_export`` writes ``qa.png``: the
    middle slice of the series, windowed, as an 8-bit grey image of the slice's size. No contour is drawn:
    the model is left out.

    Args:
        quality: score of each structure, e.g. ``{"Vacbag": 0.31, "Couch": 0.98}`` (default None: no quality block).
        threshold: scores below it are flagged (default 0.5).
        **kwargs: passed to :class:`StandInProcessor`.
    """

    def __init__(self, *, quality: dict[str, float] | None = None, threshold: float = 0.5, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.quality = {str(k): float(v) for k, v in (quality or {}).items()}
        self.threshold = float(threshold)

    def __call__(self, series_dir: Path, job_dir: Path) -> list[Path]:
        """As :class:`StandInProcessor`, then ``<job_dir>/quality.json`` when scores were given."""
        import json

        from vacseg_monai.service.jobs import write_atomic

        written = super().__call__(series_dir, job_dir)
        if self.quality:
            structures = {name: {"score": score, "flagged": score < self.threshold, "flagged_slices": []}
                          for name, score in self.quality.items()}
            block = {"threshold": self.threshold, "flagged": [n for n, s in structures.items() if s["flagged"]],
                     "input_reasons": [], "structures": structures}
            write_atomic(job_dir / "quality.json", json.dumps(block, indent=1).encode())
        return written

    def after_export(self, job_dir: Path) -> None:
        """Write ``<job_dir>/qa.png``: the series' middle slice, window -1000..1000 HU."""
        import numpy as np
        from PIL import Image
        from pydicom import dcmread

        files = sorted((job_dir / "series").glob("*.dcm"))
        ds = dcmread(files[len(files) // 2])
        hu = ds.pixel_array.astype(np.float32) * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
        grey = np.clip((hu + 1000.0) / 2000.0 * 255.0, 0, 255).astype(np.uint8)
        Image.fromarray(grey).save(job_dir / "qa.png")
