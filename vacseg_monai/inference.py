"""The bundle's inference workflow (``configs/inference.json``), step by step, and where each step lives.

The workflow is a ``SupervisedEvaluator`` over one input volume::

    input_data       vacseg_monai.inputs.load_input          DICOM series folder, NIfTI file or npy patient
    preprocessing    vacseg_monai.transforms                 HU window to [0, 1], in-plane resize (area)
    inferer          vacseg_monai.inferers.AutocastSliceInferer
                                                             the 2D network over the slice axis
    resample_argmax  vacseg_monai.postprocess.ResampleArgmaxd
                                                             logits back to the CT grid (bilinear), argmax
    clean_up         vacseg_monai.postprocess.CleanUpLabelsd connected-component clean-up per label
    writer           vacseg_monai.writers.SaveInferenceOutputsd
                                                             NIfTI label map (+ npy masks, RTSTRUCT, DICOM-SEG)

:class:`vacseg_monai.segmenter.BundleSegmenter` holds the same components in memory
for callers that segment many volumes (the DICOM node, the demo, the benchmarks).
This module only gathers the public names of those steps for one import, and keeps
the ``vacseg_monai.inference.*`` paths of bundles before 0.2.3 working.
"""

from __future__ import annotations

from vacseg_monai.dicom.outputs import OutputKind
from vacseg_monai.inferers import AutocastSliceInferer
from vacseg_monai.inputs import InferenceInput, InferenceInputError, InputKind, load_input
from vacseg_monai.postprocess import (
    DEFAULT_MIN_VACBAG_VOLUME_MM3,
    CleanUpLabelsd,
    ResampleArgmaxd,
    clean_up_labels,
    resample_argmax,
)
from vacseg_monai.writers import SaveInferenceOutputsd, write_inference_outputs

__all__ = [
    "DEFAULT_MIN_VACBAG_VOLUME_MM3",
    "AutocastSliceInferer",
    "CleanUpLabelsd",
    "InferenceInput",
    "InferenceInputError",
    "InputKind",
    "OutputKind",
    "ResampleArgmaxd",
    "SaveInferenceOutputsd",
    "clean_up_labels",
    "load_input",
    "resample_argmax",
    "write_inference_outputs",
]
