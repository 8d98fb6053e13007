"""Tests of the DICOM output layer (vacseg_monai.dicom.outputs)."""

from __future__ import annotations

import stat
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from monai.data import MetaTensor
from pydicom.dataset import Dataset

from vacseg_monai.dicom.outputs import (
    DEFAULT_ROOT_UID,
    VETERINARY_TYPE2C_KEYWORDS,
    OutputKind,
    check_root_uid,
    copy_patient_and_study,
    output_file_name,
    save_atomic,
    series_label_map,
    write_outputs,
)
from vacseg_monai.dicom.rtstruct import write_rtstruct
from vacseg_monai.dicom.seg import write_seg
from vacseg_monai.dicom.series import read_series
from vacseg_monai.dicom.synthetic import write_ct_series
from vacseg_monai.labels import label_by_name


def test_output_kind_rejects_unknown_value():
    assert OutputKind.coerce("BOTH") is OutputKind.BOTH
    with pytest.raises(ValueError, match=r"`output` must be one of \['rtstruct', 'seg', 'both', 'none'\], got 'rt'"):
        OutputKind.coerce("rt")


ROWS, COLS, N_SLICES = 24, 20, 4


def _series(folder: Path, *, without: tuple[str, ...] = ()):
    image = np.full((ROWS, COLS, N_SLICES), -1000, dtype=np.int16)
    for path in write_ct_series(image, folder, pixel_spacing=(1.0, 1.2), slice_thickness=2.0):
        if without:
            ds = pydicom.dcmread(path)
            for keyword in without:
                delattr(ds, keyword)
            ds.save_as(path)
    return read_series(folder)


def _labels() -> np.ndarray:
    labels = np.zeros((ROWS, COLS, N_SLICES), dtype=np.uint8)
    labels[4:12, 3:15, 1:3] = label_by_name("Body").value
    labels[18:21, :, :] = label_by_name("Couch").value
    labels[14:17, 2:18, :] = label_by_name("Vacbag").value
    return labels


def test_write_outputs_names_files_by_modality_and_uid_and_saves_them_readable(tmp_path):
    series = _series(tmp_path / "ct")
    out = tmp_path / "out"
    written = write_outputs(_labels(), series, out, "both", "1.2.826.0.1.3680043.8.498.42.")
    rs, seg = (pydicom.dcmread(p) for p in written)
    assert [p.name for p in written] == [f"RS.{rs.SOPInstanceUID}.dcm", f"SEG.{seg.SOPInstanceUID}.dcm"]
    assert (rs.Modality, seg.Modality) == ("RTSTRUCT", "SEG")
    for ds in (rs, seg):
        assert ds.SOPInstanceUID.startswith("1.2.826.0.1.3680043.8.498.42.")
        assert ds.SeriesInstanceUID.startswith("1.2.826.0.1.3680043.8.498.42.")
        assert ds.StudyInstanceUID == series.study_instance_uid
    assert sorted(out.iterdir()) == sorted(written)  # no temporary file left
    assert {stat.S_IMODE(p.stat().st_mode) for p in written} == {0o644}
    assert write_outputs(_labels(), series, tmp_path / "none", OutputKind.NONE) == []
    with pytest.raises(ValueError, match=r"`output` must be one of"):
        write_outputs(_labels(), series, out, "png")


def test_one_root_uid_rule_for_every_writer(tmp_path):
    assert check_root_uid(DEFAULT_ROOT_UID) == DEFAULT_ROOT_UID
    too_long = "1." * 20 + "1."  # 42 characters
    for bad in ("1.2.3", "1.2.03.", "1..2.", "a.1.", too_long):
        with pytest.raises(ValueError, match=r"`root_uid` must be digit components.*at most 40 characters"):
            check_root_uid(bad)
    series = _series(tmp_path / "ct")
    for writer in (write_rtstruct, write_seg):
        with pytest.raises(ValueError, match=r"at most 40 characters.*got '1\.2\.03\.'"):
            writer(_labels(), series, None, root_uid="1.2.03.")


def test_both_objects_carry_the_same_veterinary_attributes(tmp_path):
    # A dog whose CT lacks every veterinary Type 2C attribute: both objects add them, empty.
    series = _series(tmp_path / "ct", without=VETERINARY_TYPE2C_KEYWORDS)
    rs = write_rtstruct(_labels(), series, None)
    seg = write_seg(_labels(), series, None)
    for ds in (rs, seg):
        assert ds.PatientSpeciesDescription == "Canis lupus familiaris" and ds.PatientID == "VACSEG-SYN-0001"
        for keyword in VETERINARY_TYPE2C_KEYWORDS:
            assert keyword in ds, (ds.Modality, keyword)
            assert not ds[keyword].value, (ds.Modality, keyword)  # present and empty: Type 2C, unknown
    human = Dataset()
    human.PatientID = "H1"
    target = Dataset()
    copy_patient_and_study(human, target)
    assert target.PatientID == "H1" and target.PatientName == "" and target.StudyDate == ""
    assert not any(keyword in target for keyword in VETERINARY_TYPE2C_KEYWORDS)  # not an animal


def test_label_map_coercion_is_shared(tmp_path):
    series = _series(tmp_path / "ct")
    labels = _labels()
    tensor = MetaTensor(torch.from_numpy(labels[None].astype(np.float32)), affine=series.volume.affine)
    coerced = series_label_map(tensor, series)
    assert coerced.dtype == np.uint8 and coerced.shape == (ROWS, COLS, N_SLICES)
    np.testing.assert_array_equal(coerced, labels)
    uid = series.series_instance_uid
    for writer in (write_rtstruct, write_seg):
        with pytest.raises(ValueError, match=rf"\(24, 19, 4\) does not match series {uid} .* = \(24, 20, 4\)"):
            writer(labels[:, :19], series, None)
        with pytest.raises(ValueError, match=r"whole numbers \(integers\), found non-integer values \[0\.5"):
            writer(labels + 0.5, series, None)
        shifted = series.volume.affine.numpy().astype(np.float64)
        shifted[1, 3] += 4.0
        with pytest.raises(ValueError, match=f"Label map affine does not match series {uid}"):
            writer(MetaTensor(torch.from_numpy(labels[None]), affine=torch.from_numpy(shifted)), series, None)


def test_save_atomic_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "RS.1.2.3.dcm"
    path.write_bytes(b"old")

    class Broken(Dataset):
        def save_as(self, filename, **kwargs):
            filename.write(b"half")
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_atomic(Broken(), path)
    assert path.read_bytes() == b"old" and sorted(tmp_path.iterdir()) == [path]


def test_output_file_name_rejects_what_cannot_name_a_file():
    ds = Dataset()
    ds.Modality = "RTSTRUCT"
    ds.SOPInstanceUID = "1.2.3.4"
    assert output_file_name(ds) == "RS.1.2.3.4.dcm"
    ds.SOPInstanceUID = "../../etc/passwd"
    with pytest.raises(ValueError, match=r"SOPInstanceUID '\.\./\.\./etc/passwd' is not a valid UID"):
        output_file_name(ds)
    ds.Modality = "CT"
    with pytest.raises(ValueError, match="No output file name for Modality 'CT'"):
        output_file_name(ds)
