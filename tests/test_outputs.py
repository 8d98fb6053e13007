"""Tests of the DICOM output layer (vacseg_monai.dicom.outputs)."""

from __future__ import annotations

import pytest

from vacseg_monai.dicom.outputs import OutputKind


def test_output_kind_rejects_unknown_value():
    assert OutputKind.coerce("BOTH") is OutputKind.BOTH
    with pytest.raises(ValueError, match=r"`output` must be one of \['rtstruct', 'seg', 'both', 'none'\], got 'rt'"):
        OutputKind.coerce("rt")
