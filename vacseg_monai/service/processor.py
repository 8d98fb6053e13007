"""The node's processor: the shipped bundle, loaded once per worker, turns a CT series into RTSTRUCT/SEG.

The worker calls :class:`BundleProcessor` once per job with the job's series
folder; it writes the results under ``<job>/output`` and returns the DICOM files
to export. Beside the job record it leaves ``timings.json`` (seconds per stage),
``quality.json`` (the quality score of each structure, which the worker copies
into the job record and which decides the review policy) and, once the results
are sent (``after_export``, off the TPS's waiting time), ``qa.png``: contours
drawn on a few slices, flagged slices first, for a person to glance at.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vacseg_monai.dicom.outputs import OutputKind
from vacseg_monai.dicom.profiles import OutputProfile, load_profile
from vacseg_monai.dicom.series import DecodedSlice, decode_slice
from vacseg_monai.inputs import InferenceInput, InputKind, load_input
from vacseg_monai.qa import OverlayPanel, save_overlay_montage
from vacseg_monai.quality import QualityReport
from vacseg_monai.segmenter import BundleSegmenter
from vacseg_monai.service.jobs import write_atomic
from vacseg_monai.service.worker import QUALITY_FILE

__all__ = ["BundleProcessor", "QA_PICTURE", "TIMINGS_FILE", "save_qa_picture"]

logger = logging.getLogger(__name__)

QA_PICTURE = "qa.png"
TIMINGS_FILE = "timings.json"
#: Series decoded ahead by `BundleProcessor.prefetch` that are kept at once (the oldest is dropped).
MAX_PREFETCHED_SERIES = 4


@dataclass
class _Ahead:
    """What :meth:`BundleProcessor.prefetch` did with the files of one series that is still arriving."""

    decoded: dict[Path, DecodedSlice | None] = field(default_factory=dict)  # every file looked at
    preprocessed: dict[Path, torch.Tensor] = field(default_factory=dict)  # slices run through the preprocessing


def _write_timings(job_dir: Path, timings: dict[str, float]) -> None:
    data = json.dumps({k: round(v, 4) for k, v in timings.items()}, indent=1).encode()
    write_atomic(job_dir / TIMINGS_FILE, data)  # readers never see half a file


def _qa_slices(labels: np.ndarray, quality: QualityReport | None, n_panels: int) -> list[tuple[int, list[str]]]:
    """Slices to draw, flagged ones first (with the structures flagged there), then spread over the labelled range."""
    flagged: dict[int, list[str]] = {}
    for name, s in (quality.structures.items() if quality is not None else ()):
        if s.flagged:
            for k in s.flagged_slices:
                flagged.setdefault(k, []).append(name)
    ordered = sorted(flagged)
    first = [ordered[i] for i in np.linspace(0, len(ordered) - 1, min(n_panels, len(ordered))).round().astype(int)]
    first = list(dict.fromkeys(first))
    labelled = np.flatnonzero(labels.any(axis=(0, 1)))
    candidates = labelled if labelled.size else np.arange(labels.shape[2])
    rest = [int(k) for k in candidates[np.linspace(0, candidates.size - 1, n_panels).round().astype(int)]]
    picks = first + [k for k in dict.fromkeys(rest) if k not in first]
    return [(k, flagged.get(k, [])) for k in picks[:n_panels]]


def save_qa_picture(
    image: np.ndarray,
    labels: np.ndarray,
    path: Path,
    *,
    title: str,
    n_panels: int = 4,
    quality: QualityReport | None = None,
) -> Path:
    """Write a montage of ``n_panels`` slices, contours on the CT: flagged slices first, then the labelled range.

    Args:
        image: CT in HU ``(rows, cols, n)``.
        labels: label map ``(rows, cols, n)``.
        path: PNG to write.
        title: figure title.
        n_panels: slices shown (default 4).
        quality: the structures' quality scores, shown under the title; their flagged slices come first,
            marked "FLAGGED" (default None).
    """
    n = labels.shape[2]
    panels = [
        OverlayPanel(
            image=image[:, :, k],
            contours=labels[:, :, k],
            title=f"slice {k + 1}/{n}" + (f"  FLAGGED: {', '.join(names)}" if names else ""),
        )
        for k, names in _qa_slices(labels, quality, n_panels)
    ]
    if quality is not None:
        title = f"{title}\nquality: {quality.summary()}  (! = flagged, threshold {quality.threshold:g})"
    return save_overlay_montage(panels, path, suptitle=title, contours_name="auto contour")


class BundleProcessor:
    """Processor factory for the worker (``--processor vacseg_monai.service.processor:BundleProcessor``).

    Args:
        bundle: bundle folder (default: the repository's ``bundles/vacbag_ct_segmentation``).
        output: ``rtstruct`` (default), ``seg`` or ``both``.
        root_uid: UID root for the written objects (default: the bundle config's).
        device: torch device (default: CUDA when available, else CPU).
        ckpt_path: weights (default: the bundle's ``models/model.pt``).
        qa_picture: write ``qa.png`` per job (default True).
        overrides: bundle config overrides, e.g. ``{"sw_batch_size": 32}`` (TOML ``[processor_args]``).
        review_policy: the node's review policy; ``send-marked`` suffixes the ROI names of flagged structures
            (default ``send``).
        review_suffix: that suffix (default ``" CHECK"``).
        profile: the output profile: a name, a TOML file or an :class:`~vacseg_monai.dicom.profiles.OutputProfile`
            (the node's ``--profile`` with its ``--label-suffix``; default None: the bundle config's).
        warm_up: run :meth:`warm_up` before returning, so that the first job is as fast as the next
            (default True).
        **_: other worker arguments, ignored.
    """

    def __init__(
        self,
        *,
        bundle: str | os.PathLike[str] | None = None,
        output: str | OutputKind = OutputKind.RTSTRUCT,
        root_uid: str | None = None,
        device: str | None = None,
        ckpt_path: str | os.PathLike[str] | None = None,
        qa_picture: bool = True,
        overrides: dict | None = None,
        review_policy: str = "send",
        review_suffix: str = " CHECK",
        profile: str | os.PathLike[str] | OutputProfile | None = None,
        warm_up: bool = True,
        **_: object,
    ) -> None:
        self.output = OutputKind.coerce(getattr(output, "value", output))
        if self.output is OutputKind.NONE:
            raise ValueError("The node must produce RTSTRUCT and/or SEG: `output` 'none' sends nothing back.")
        self.root_uid = root_uid
        self.qa_picture = qa_picture
        self.mark_flagged = review_policy == "send-marked"
        self.review_suffix = review_suffix
        self.profile = None if profile is None else load_profile(profile)
        self._pending_qa: tuple[Path, np.ndarray, np.ndarray, str, QualityReport | None] | None = None
        # Series folders still arriving -> what `prefetch` did with their files so far, oldest first.
        self._ahead: OrderedDict[Path, _Ahead] = OrderedDict()
        self.segmenter = BundleSegmenter(bundle, ckpt_path=ckpt_path, device=device, overrides=overrides)
        self._slice_wise = self.segmenter.slice_wise
        if warm_up:
            self.warm_up()

    def warm_up(self) -> float:
        """Run a job's whole path once on a tiny synthetic series, before the first real job arrives.

        The first job otherwise pays for first-use set-up on its latency: highdicom's first
        Segmentation (about 1.5 s, its tables loaded), the network's first forward pass, the
        contour tracing's imports. Nothing is kept. A failure is logged and does not stop the
        worker (a real job then fails on its own merits).

        Returns:
            The seconds it took.
        """
        from vacseg_monai.dicom.synthetic import write_ct_series
        from vacseg_monai.labels import LABELS

        start = time.perf_counter()
        try:
            with tempfile.TemporaryDirectory(prefix="vacseg_warm_up_") as tmp:
                hu = np.full((32, 32, 2), -1000, dtype=np.int16)
                hu[6:26, 6:26] = 40
                files = write_ct_series(hu, Path(tmp) / "ct", pixel_spacing=(2.0, 2.0), slice_thickness=2.0)
                source = load_input(files[0].parent)
                result = self.segmenter.segment(source)
                labels = np.zeros(source.shape, dtype=np.uint8)
                for row, label in enumerate(LABELS):  # every structure, so that every writer path runs
                    labels[4 + 6 * row : 8 + 6 * row, 4:28] = label.value
                self.segmenter.write(source, labels, Path(tmp) / "output", self.output, self.root_uid, nifti=False,
                                     quality=result.quality)  # fmt: skip
        except Exception:  # noqa: BLE001 - the warm-up must never stop the worker
            logger.warning("The processor's warm-up failed; the first job will be slower.", exc_info=True)
        elapsed = time.perf_counter() - start
        logger.info("Processor warmed up in %.2f s", elapsed)
        return elapsed

    def prefetch(self, series_dir: Path, budget_s: float = 0.1) -> int:
        """Decode (and preprocess) files of a series that is still arriving, while the worker would otherwise wait.

        Called by the worker between messages while the SCP is receiving ``series_dir``;
        each call decodes the files that appeared since the last one, for at most about
        ``budget_s`` seconds, and runs the bundle's preprocessing on each slice when it is
        slice-wise. The job's read then only checks and assembles them, and the network gets
        the preprocessed slices. At most :data:`MAX_PREFETCHED_SERIES` series are kept (the
        oldest is dropped).

        Args:
            series_dir: the receiving job's series folder.
            budget_s: seconds of work per call (default 0.1).

        Returns:
            The number of files decoded by this call.
        """
        ahead = self._ahead.get(series_dir)
        if ahead is None:
            ahead = self._ahead[series_dir] = _Ahead()
            while len(self._ahead) > MAX_PREFETCHED_SERIES:
                self._ahead.popitem(last=False)
        deadline = time.perf_counter() + budget_s
        count = 0
        for path in sorted(series_dir.glob("*.dcm")):
            if path in ahead.decoded:
                continue
            item = ahead.decoded[path] = decode_slice(path)
            if item is not None and self._slice_wise:
                ahead.preprocessed[path] = self.segmenter.preprocess_slice(item.hu)
            count += 1
            if time.perf_counter() > deadline:
                break
        return count

    def _preprocessed_slices(self, source: InferenceInput, ahead: dict[Path, torch.Tensor]) -> list[torch.Tensor] | None:
        """The volume's slices preprocessed: those done while the series arrived, the rest done now.

        None (preprocess the whole volume instead) when fewer than three quarters were done ahead:
        one slice at a time costs about twice as much per slice as the whole volume at once.
        """
        if source.series is None or not ahead or source.rows_flipped:  # slices were preprocessed as stored
            return None
        slices = [ahead.get(path) for path in source.series.files]
        missing = [k for k, item in enumerate(slices) if item is None]
        if len(missing) > len(slices) // 4:
            return None
        for k in missing:  # typically the last files, which arrived after the last prefetch
            slices[k] = self.segmenter.preprocess_slice(source.image[0, :, :, k].numpy())
        return slices

    def __call__(self, series_dir: Path, job_dir: Path) -> list[Path]:
        """Segment the series in ``series_dir``; return the RTSTRUCT/SEG files written under ``job_dir/output``.

        Raises:
            vacseg_monai.dicom.errors.DicomSeriesError: for a series the DICOM core refuses.
            ValueError: when the folder holds no DICOM CT series.
        """
        start = time.perf_counter()
        ahead = self._ahead.pop(series_dir, None) or _Ahead()
        decoded, preprocessed = ahead.decoded, ahead.preprocessed
        source = load_input(series_dir, decoded=decoded or None)
        if source.kind is not InputKind.DICOM:
            raise ValueError(f"Job folder {series_dir} does not hold a DICOM series (found {source.kind.value}).")
        timings = {"read": time.perf_counter() - start}
        start = time.perf_counter()
        slices = self._preprocessed_slices(source, preprocessed)
        fill_s = time.perf_counter() - start
        if decoded:
            ahead = sum(1 for item in decoded.values() if item is not None)
            logger.info(
                "Read %s in %.2f s; %d of its files were decoded while it arrived%s",
                series_dir, timings["read"], ahead,
                f", {len(preprocessed)} of its {len(slices)} slices preprocessed" if slices else "",
            )
        del ahead, decoded, preprocessed  # the slices are in the volume now; free the copies before segmenting
        result = self.segmenter.segment(source, slices)
        del slices
        timings.update(result.timings)
        timings["preprocess"] += fill_s

        start = time.perf_counter()
        written = self.segmenter.write(
            source, result.labels, job_dir / "output", self.output, self.root_uid, nifti=False,
            quality=result.quality, flagged_suffix=self.review_suffix if self.mark_flagged else None,
            profile=self.profile,
        )
        timings["write"] = time.perf_counter() - start
        _write_timings(job_dir, timings)
        if result.quality is not None:
            write_atomic(job_dir / QUALITY_FILE, json.dumps(result.quality.as_dict(), indent=1).encode())
        if self.qa_picture:
            uid = source.series.series_instance_uid if source.series is not None else source.name
            self._pending_qa = (job_dir, source.image[0].cpu().numpy(), result.labels, f"series {uid}",
                                result.quality)  # fmt: skip
        return written

    def after_export(self, job_dir: Path) -> None:
        """Draw ``qa.png`` for the job just sent (nothing if this worker did not segment it)."""
        pending, self._pending_qa = self._pending_qa, None
        if pending is None or pending[0] != job_dir:
            return
        _, image, labels, title, quality = pending
        start = time.perf_counter()
        save_qa_picture(image, labels, job_dir / QA_PICTURE, title=title, quality=quality)
        timings = json.loads((job_dir / TIMINGS_FILE).read_text())
        timings["qa_picture_after_export"] = time.perf_counter() - start
        _write_timings(job_dir, timings)
