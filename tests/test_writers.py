"""Tests of the inference writer (vacseg_monai.writers): NIfTI label map, npy masks, the bundle's transform."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from vacseg_monai.inputs import load_input
from vacseg_monai.labels import label_by_name
from vacseg_monai.writers import SaveInferenceOutputsd, write_inference_outputs

VACBAG = label_by_name("Vacbag").value


def test_writer_rejects_label_values_outside_the_table(tmp_path):
    path = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 2), dtype=np.int16), np.eye(4)), str(path))
    source = load_input(path)
    labels = np.zeros((4, 4, 2), dtype=np.uint8)
    labels[0, 0, 0] = 7
    with pytest.raises(ValueError, match=r"v\.nii\.gz: label values \[7\] are not in the label table "
                                         r"\(0 background, 1 Vacbag, 2 Couch, 3 Body\)"):
        write_inference_outputs(source, labels, tmp_path / "out", output="none")


def test_transform_writes_npy_masks_and_nifti_and_records_the_paths(tmp_path):
    patient = tmp_path / "dog"
    (patient / "img").mkdir(parents=True)
    for i in (3, 11):
        np.save(patient / "img" / f"{i}.npy", np.zeros((1, 4, 5), dtype=np.int16))
    labels = np.zeros((1, 4, 5, 2), dtype=np.uint8)
    labels[0, 1:3, 1:4, 1] = VACBAG
    writer = SaveInferenceOutputsd(source=load_input(patient), output_dir=tmp_path / "out", output="rtstruct")
    data = writer({"pred": torch.from_numpy(labels)})
    names = sorted(Path(p).relative_to(tmp_path / "out").as_posix() for p in data["pred_files"])
    assert names == ["dog/mask/11.npy", "dog/mask/3.npy", "dog_labels.nii.gz"]  # no DICOM without a series
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "dog" / "mask" / "11.npy"), labels[..., 1])
    assert np.count_nonzero(np.asarray(nib.load(str(tmp_path / "out" / "dog_labels.nii.gz")).dataobj)) == 6
