"""The bundle's inferer: MONAI's slice-by-slice inferer, optionally under autocast (``inferer`` in inference.json)."""

from __future__ import annotations

from typing import Any

import torch
from monai.inferers import SliceInferer

__all__ = ["AutocastSliceInferer"]

_AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


class AutocastSliceInferer(SliceInferer):
    """MONAI's :class:`~monai.inferers.SliceInferer`, optionally running the network under autocast.

    With ``amp`` the network runs in ``amp_dtype`` (bf16 by default) on the device of the input, CPU
    included, where MONAI's evaluator only autocasts on CUDA; the logits come back as float32. It is
    faster where the hardware computes bf16 natively (CUDA GPUs; CPUs with AVX512-BF16 or AMX) and
    changes a very small share of the labels (see docs/benchmarks.md); elsewhere bf16 can be slower
    than float32. Off by default: the same input then gives the same output on any machine.

    Args:
        *args, **kwargs: :class:`~monai.inferers.SliceInferer` arguments.
        amp: run under autocast (default False).
        amp_dtype: ``"bfloat16"`` (default) or ``"float16"`` (CUDA only).

    Raises:
        ValueError: for another ``amp_dtype``.
    """

    def __init__(self, *args: Any, amp: bool = False, amp_dtype: str = "bfloat16", **kwargs: Any) -> None:
        if amp_dtype not in _AMP_DTYPES:
            raise ValueError(f"`amp_dtype` must be one of {sorted(_AMP_DTYPES)}, got {amp_dtype!r}.")
        super().__init__(*args, **kwargs)
        self.amp = bool(amp)
        self.amp_dtype = _AMP_DTYPES[amp_dtype]

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Run :class:`~monai.inferers.SliceInferer` over ``inputs``, under autocast when ``amp`` is set."""
        if not self.amp:
            return super().__call__(inputs, network, *args, **kwargs)
        with torch.autocast(device_type=inputs.device.type, dtype=self.amp_dtype):
            out = super().__call__(inputs, network, *args, **kwargs)
        return out.float()

