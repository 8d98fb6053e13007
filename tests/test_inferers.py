"""Tests of the bundle's inferer (vacseg_monai.inferers.AutocastSliceInferer)."""

from __future__ import annotations

import pytest
import torch

from vacseg_monai.inferers import AutocastSliceInferer


def _small_unet() -> torch.nn.Module:
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    return UNet(2, 1, 4, (4, 8, 16), (2, 2), num_res_units=1, norm="batch").eval()

def test_autocast_slice_inferer_off_equals_slice_inferer_and_on_runs_the_network_in_bf16():
    from monai.inferers import SliceInferer

    network = _small_unet()
    volume = torch.rand(1, 1, 32, 32, 6)
    args = dict(roi_size=(32, 32), spatial_dim=2, sw_batch_size=4, overlap=0.0, progress=False)
    seen: list[torch.dtype] = []
    network.model[0].register_forward_hook(lambda module, inp, out: seen.append(out.dtype))
    with torch.inference_mode():
        reference = SliceInferer(**args)(volume, network)
        off = AutocastSliceInferer(**args)(volume, network)
        assert seen and set(seen) == {torch.float32}
        seen.clear()
        on = AutocastSliceInferer(**args, amp=True)(volume, network)
    assert torch.equal(off, reference)
    assert set(seen) == {torch.bfloat16}  # the network really ran in bf16
    assert on.dtype == torch.float32 and on.shape == reference.shape
    assert (on - reference).abs().max() < 0.1  # bf16 rounding, not another result
    with pytest.raises(ValueError, match="`amp_dtype` must be one of"):
        AutocastSliceInferer(**args, amp=True, amp_dtype="float64")
