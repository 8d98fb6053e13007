"""The label table and the one label-map check every reader uses."""

from __future__ import annotations

import numpy as np
import pytest

from vacseg_monai.labels import LABELS, RTROIInterpretedType, checked_label_map, label_by_name, label_by_value


def test_table_numbers_names_and_roi_types():
    assert [(lb.value, lb.name, lb.rt_roi_type) for lb in LABELS] == [
        (1, "Vacbag", RTROIInterpretedType.FIXATION),
        (2, "Couch", RTROIInterpretedType.SUPPORT),
        (3, "Body", RTROIInterpretedType.EXTERNAL),
    ]
    assert label_by_name("VACBAG").value == 1 and label_by_value(3).name == "Body"
    with pytest.raises(KeyError, match="No label named 'PTV'"):
        label_by_name("PTV")


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        (np.array([[True, False]]), [[1, 0]]),  # a binary mask reads as Vacbag
        (np.array([[1.0, 0.0]], dtype=np.float32), [[1, 0]]),
        (np.array([[3, 2]], dtype=np.int16), [[3, 2]]),
    ],
)
def test_checked_label_map_accepts_label_numbers(array, expected):
    out = checked_label_map(array, "m.npy")
    assert out.dtype == np.uint8 and out.tolist() == expected


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.array([7, 0], dtype=np.uint8), r"m\.npy: label values \[7\] are not in the label table \(0 background, 1 Vacbag"),
        (np.array([0.5, 1.0]), r"m\.npy: label values must be whole numbers \[0, 1, 2, 3\], found non-integer values \[0\.5\]"),
        (np.array([np.nan]), r"found non-integer values \[nan\]"),
        (np.array(["a"]), r"m\.npy: label dtype <U1 is not an integer, bool or float type"),
    ],
)
def test_checked_label_map_names_the_source_and_the_problem(array, message):
    with pytest.raises(ValueError, match=message):
        checked_label_map(array, "m.npy")
