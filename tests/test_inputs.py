"""Tests of the inference input reader (vacseg_monai.inputs): errors, npy slice order and affine."""

from __future__ import annotations

import numpy as np
import pytest

from vacseg_monai.inputs import InferenceInputError, load_input


def test_load_input_errors_name_the_path_and_what_was_looked_for(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(InferenceInputError, match=r"notes\.txt is a file but not a NIfTI volume.*npy layout"):
        load_input(text)
    with pytest.raises(InferenceInputError, match=r"missing does not exist; expected a DICOM CT series folder"):
        load_input(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InferenceInputError, match=r"empty is none of a DICOM CT series folder.*NIfTI.*img/<i>\.npy"):
        load_input(empty)
    (empty / "img").mkdir()
    with pytest.raises(InferenceInputError, match=r"holds no <i>\.npy slices"):
        load_input(empty)
    with pytest.raises(InferenceInputError, match="No input given"):
        load_input("")

def test_npy_slices_sort_numerically_and_spacing_sets_the_affine(tmp_path):
    patient = tmp_path / "p1"
    (patient / "img").mkdir(parents=True)
    for i in (0, 2, 10):
        np.save(patient / "img" / f"{i}.npy", np.full((1, 4, 5), i, dtype=np.int16))
    loaded = load_input(patient, npy_spacing=(0.5, 0.6, 2.0))
    assert loaded.slice_indices == (0, 2, 10)
    np.testing.assert_array_equal(loaded.image[0, 0, 0, :].numpy(), [0, 2, 10])
    np.testing.assert_allclose(np.abs(np.diag(loaded.affine[:3, :3])), [0.0, 0.0, 2.0])
    np.testing.assert_allclose(loaded.affine[:3, 0], [0.0, -0.5, 0.0])
    np.testing.assert_allclose(loaded.affine[:3, 1], [-0.6, 0.0, 0.0])
