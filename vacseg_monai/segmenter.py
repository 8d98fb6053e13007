"""The bundle's inference workflow held in memory, for callers that segment many volumes.

``python -m monai.bundle run inference`` builds its components for one input and
exits. The DICOM node's worker, the demo and the benchmarks load the bundle
once and segment volume after volume: :class:`BundleSegmenter` parses the same
``configs/inference.json`` (so network, checkpoint, preprocessing, inferer and
postprocessing are exactly those of the bundle) and keeps them.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor

from vacseg_monai.dicom.outputs import OutputKind
from vacseg_monai.dicom.profiles import OutputProfile, load_profile
from vacseg_monai.inputs import InferenceInput
from vacseg_monai.labels import LABELS
from vacseg_monai.paths import default_bundle_root, model_version
from vacseg_monai.quality import QualityConfig, QualityReport, assess_quality
from vacseg_monai.transforms import is_slice_wise
from vacseg_monai.writers import write_inference_outputs

__all__ = ["BundleSegmenter", "Segmentation"]

logger = logging.getLogger(__name__)

_INFERENCE_CONFIG = Path("configs") / "inference.json"


@dataclass
class Segmentation:
    """One segmented volume.

    Attributes:
        labels: uint8 label map ``(rows, cols, n_slices)`` on the input grid.
        timings: seconds per stage (``preprocess``, ``network``, ``resample_argmax``, ``clean_up``, ``quality``).
        quality: the quality score of each structure (:mod:`vacseg_monai.quality`); None when the bundle's
            ``quality`` block is null.
    """

    labels: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)
    quality: QualityReport | None = None


class BundleSegmenter:
    """Load the bundle's inference components once and segment volumes with them.

    Args:
        bundle: bundle folder (default: :func:`vacseg_monai.paths.default_bundle_root`).
        ckpt_path: weights to load (default: the config's ``ckpt_path``, ``models/model.pt``).
        device: torch device (default: the config's, CUDA when available, else CPU).
        sw_batch_size: slices per forward batch (default: the config's).
        overrides: further config overrides, ``{"key": value}`` as on the command line.

    Raises:
        FileNotFoundError: if the bundle has no ``configs/inference.json`` or the weights are missing.
    """

    def __init__(
        self,
        bundle: str | os.PathLike[str] | None = None,
        *,
        ckpt_path: str | os.PathLike[str] | None = None,
        device: str | torch.device | None = None,
        sw_batch_size: int | None = None,
        overrides: dict[str, Any] | None = None,
    ) -> None:
        from monai.bundle import ConfigParser

        self.bundle = Path(bundle if bundle is not None else default_bundle_root())
        config_file = self.bundle / _INFERENCE_CONFIG
        if not config_file.is_file():
            raise FileNotFoundError(
                f"Bundle {self.bundle} has no {_INFERENCE_CONFIG}; pass the bundle folder "
                "(e.g. bundles/vacbag_ct_segmentation)."
            )
        parser = ConfigParser()
        parser.read_config(str(config_file))
        parser["bundle_root"] = str(self.bundle)
        parser["progress_bar"] = False
        if ckpt_path is not None:
            parser["ckpt_path"] = str(ckpt_path)
        if device is not None:
            parser["device"] = f"$torch.device('{torch.device(device)}')"
        if sw_batch_size is not None:
            parser["sw_batch_size"] = int(sw_batch_size)
        for key, value in (overrides or {}).items():
            parser[key] = value
        self.parser = parser

        weights = Path(parser.get_parsed_content("ckpt_path"))
        if not weights.is_file():
            raise FileNotFoundError(f"Model weights {weights} not found; train the bundle or pass ckpt_path=.")
        self.device = parser.get_parsed_content("device")
        self.network = parser.get_parsed_content("network")
        state = torch.load(weights, map_location=self.device, weights_only=True)
        self.network.load_state_dict(state.get("model", state) if isinstance(state, dict) else state)
        self.network.eval()
        self.preprocessing = parser.get_parsed_content("preprocessing")
        self.inferer = parser.get_parsed_content("inferer")
        # The post-processing steps by their ids. The config's `writer` needs the input, so it is not
        # built here: `write` calls the function it wraps, with the writer's UID root.
        self.resample_argmax = parser.get_parsed_content("resample_argmax")
        self.clean_up = parser.get_parsed_content("clean_up")
        self.root_uid = parser.get_parsed_content("writer#root_uid")
        self.profile = load_profile(parser.get_parsed_content("writer#output_profile", default=None),
                                    label_suffix=parser.get_parsed_content("writer#label_suffix", default=None))
        quality = parser.get_parsed_content("quality", default=None)
        self.quality_config = None if quality is None else QualityConfig.from_mapping(quality)
        self.model_version = model_version(self.bundle, weights)
        logger.info("Loaded bundle %s weights %s on %s", self.bundle, weights, self.device)

    @property
    def slice_wise(self) -> bool:
        """True if the bundle's preprocessing treats each slice on its own (see :meth:`preprocess_slice`)."""
        return is_slice_wise(self.preprocessing)

    def preprocess_slice(self, hu: np.ndarray) -> torch.Tensor:
        """The bundle's preprocessing of one slice, e.g. while a series is still arriving.

        Args:
            hu: one slice in HU, float32 ``(rows, cols)``, as the series reader decodes it.

        Returns:
            A ``(1, h, w, 1)`` tensor, equal to that slice of the preprocessed volume; pass the
            slices in volume order to :meth:`segment`.

        Raises:
            ValueError: if the preprocessing is not slice-wise (:attr:`slice_wise`).
        """
        if not self.slice_wise:
            raise ValueError("This bundle's preprocessing is not slice-wise; preprocess the whole volume instead.")
        out = self.preprocessing({"image": torch.from_numpy(hu)[None, :, :, None]})["image"]
        return out.as_tensor() if isinstance(out, MetaTensor) else out

    def segment(self, source: InferenceInput, preprocessed: Sequence[torch.Tensor] | None = None) -> Segmentation:
        """Segment one loaded input (:func:`vacseg_monai.inputs.load_input`).

        Args:
            source: the input.
            preprocessed: its slices already preprocessed by :meth:`preprocess_slice`, in volume order
                (default None: the volume is preprocessed here).

        Raises:
            ValueError: if ``preprocessed`` does not hold one slice per slice of ``source``.
        """
        timings: dict[str, float] = {}
        start = time.perf_counter()
        if preprocessed is None:
            data = self.preprocessing({"image": source.image})
        else:
            n = source.image.shape[-1]
            if len(preprocessed) != n:
                raise ValueError(f"{len(preprocessed)} preprocessed slices given for {n} slices of {source.path}.")
            # The grid meta (spatial_shape, original_affine) with which the logits are mapped back is the input's.
            data = {"image": MetaTensor(torch.cat(list(preprocessed), dim=-1), meta=dict(source.image.meta))}
        timings["preprocess"] = time.perf_counter() - start

        start = time.perf_counter()
        with torch.inference_mode():
            logits = self.inferer(data["image"][None].to(self.device), self.network)[0]
        timings["network"] = time.perf_counter() - start

        start = time.perf_counter()
        data = self.resample_argmax({"pred": logits, "image": data["image"]})
        timings["resample_argmax"] = time.perf_counter() - start

        start = time.perf_counter()
        data = self.clean_up(data)
        timings["clean_up"] = time.perf_counter() - start
        # A (rows, cols, n) view of slice-major memory, as the clean-up leaves it: each slice is contiguous.
        labels = np.asarray(data["pred"][0].cpu().numpy(), dtype=np.uint8)
        quality = None
        if self.quality_config is not None:
            start = time.perf_counter()
            quality = assess_quality(logits, labels, source.image[0].numpy(), source.spacing, self.quality_config)
            timings["quality"] = time.perf_counter() - start
        logger.info(
            "Segmented %s in %.2f s (%s)",
            source.path,
            sum(timings.values()),
            ", ".join(f"{k} {v:.2f} s" for k, v in timings.items()),
        )
        return Segmentation(labels=labels, timings=timings, quality=quality)

    def write(
        self,
        source: InferenceInput,
        labels: np.ndarray,
        output_dir: str | os.PathLike[str],
        output: str | OutputKind = OutputKind.RTSTRUCT,
        root_uid: str | None = None,
        nifti: bool = True,
        quality: QualityReport | None = None,
        flagged_suffix: str | None = None,
        profile: str | os.PathLike[str] | OutputProfile | None = None,
    ) -> list[Path]:
        """Write the label map as the bundle's ``writer`` does (:func:`vacseg_monai.writers.write_inference_outputs`).

        Args:
            source: the input the label map was computed on.
            labels: the label map ``(rows, cols, n)``.
            output_dir: folder to write to (created).
            output: DICOM objects for DICOM input (default ``"rtstruct"``).
            root_uid: UID root (default: the config's).
            nifti: also write the NIfTI label map (default True).
            quality: the segmentation's quality: each RTSTRUCT ROI then carries its score as a note (default None).
            flagged_suffix: appended to the ROI / segment names of flagged structures (the node's
                ``send-marked`` review policy; default None), before the profile's suffix.
            profile: the output profile (:mod:`vacseg_monai.dicom.profiles`; default None: the config's
                ``output_profile`` with its ``label_suffix``).

        Returns:
            The written files.

        Raises:
            ValueError: if the label map does not match the input or holds unknown values, or a name gets too
                long for the profile.
        """
        table = list(LABELS)
        notes = None
        marks = None
        if quality is not None:
            notes = quality.roi_notes(table)
            if flagged_suffix:
                marks = {label.value: flagged_suffix for label in table if label.name in quality.flagged}
        return write_inference_outputs(source, labels, output_dir, output, root_uid or self.root_uid, nifti=nifti,
                                       label_table=table, roi_notes=notes, model_version=self.model_version,
                                       profile=self.profile if profile is None else profile,
                                       name_marks=marks)  # fmt: skip
