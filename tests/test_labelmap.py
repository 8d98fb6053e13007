"""Tests for writing a NIfTI label map as RTSTRUCT / DICOM-SEG of a CT series (vacseg_monai.dicom.labelmap)."""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest

from conftest import dice
from vacseg_monai.dicom.labelmap import load_label_nifti, resample_label_map, write_label_map_dicom
from vacseg_monai.dicom.phantom_dicom import write_phantom_dicom
from vacseg_monai.dicom.rtstruct import read_rtstruct
from vacseg_monai.dicom.series import read_series
from vacseg_monai.labels import LABELS
from vacseg_monai.phantom import Phantom, generate_phantom

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bag_middle_phantom(seed: int, size: int, n_slices: int) -> Phantom:
    """A phantom cut to ``n_slices`` slices centred on the middle of the vacuum bag."""
    phantom = generate_phantom(seed, size=size, version=1)  # every v1 patient has a bag
    start, stop = phantom.bag_slices
    first = int(np.clip((start + stop) // 2 - n_slices // 2, 0, phantom.n_slices - n_slices))
    cut = slice(first, first + n_slices)
    return dataclasses.replace(
        phantom, image=phantom.image[:, :, cut], labels=phantom.labels[:, :, cut], tissues=phantom.tissues[:, :, cut]
    )



@pytest.fixture(scope="module")
def ct(tmp_path_factory):
    # 256 x 256 so that a half-resolution map still resolves the couch and bag walls (Dice >= 0.95).
    phantom = bag_middle_phantom(2, 256, 12)
    written = write_phantom_dicom(phantom, tmp_path_factory.mktemp("ct"), orientation="FFS")
    return phantom, written.ct_dir, read_series(written.ct_dir)


def _save_nifti(data: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def _index_map(perm: tuple[int, int, int], flips: tuple[bool, bool, bool], shape: tuple[int, int, int]):
    """Reorder an array by ``perm`` + ``flips`` and return the matrix from new to old voxel index."""
    new_shape = [shape[p] for p in perm]
    matrix = np.zeros((4, 4))
    matrix[3, 3] = 1
    for new_axis, old_axis in enumerate(perm):
        if flips[new_axis]:
            matrix[old_axis, new_axis] = -1
            matrix[old_axis, 3] = new_shape[new_axis] - 1
        else:
            matrix[old_axis, new_axis] = 1
    return matrix


def _read_back(paths, series):
    rs = next(p for p in paths if p.name.startswith("RS."))
    seg = next(p for p in paths if p.name.startswith("SEG."))
    from_rt = read_rtstruct(rs, series)
    pixels = hd.seg.segread(seg).get_pixels_by_source_instance(series.sop_instance_uids, combine_segments=True)
    return from_rt, np.moveaxis(pixels, 0, 2)


def test_write_dicom_rt_on_grid_round_trips(ct, tmp_path):
    phantom, ct_dir, series = ct
    nii = _save_nifti(phantom.labels, series.affine_ras, tmp_path / "labels.nii.gz")
    resampled, covered = resample_label_map(*load_label_nifti(nii), series.shape, series.affine_ras)
    assert covered == 1.0
    np.testing.assert_array_equal(resampled, phantom.labels)
    out = tmp_path / "out"
    status = _script("write_dicom_rt").main(["--series", str(ct_dir), "--labels", str(nii), "--out", str(out),
                                             "--format", "both", "--root-uid", "1.2.826.0.1.3680043.8.498.5.", "-q"])
    assert status == 0
    paths = sorted(out.iterdir())
    assert len(paths) == 2
    assert [p.name[:3] for p in paths] == ["RS.", "SEG"]  # the output layer's names: RS.<uid>.dcm, SEG.<uid>.dcm
    from_rt, from_seg = _read_back(paths, series)
    np.testing.assert_array_equal(from_seg, phantom.labels)
    for label in LABELS:
        assert dice(from_rt == label.value, phantom.labels == label.value) >= 0.99
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert ds.SOPInstanceUID.startswith("1.2.826.0.1.3680043.8.498.5.")
        assert ds.PatientID == phantom.patient_id


@pytest.mark.parametrize("case", ["permuted", "half"])
def test_write_dicom_rt_resamples_other_grids(ct, tmp_path, case):
    phantom, ct_dir, series = ct
    if case == "permuted":
        perm, flips = (2, 1, 0), (False, True, True)
        data = np.transpose(phantom.labels, perm)
        data = np.flip(data, axis=[i for i, f in enumerate(flips) if f])
        affine = series.affine_ras @ _index_map(perm, flips, phantom.labels.shape)
    else:
        data = phantom.labels[::2, ::2, ::2]
        affine = series.affine_ras @ np.array([[2, 0, 0, 0.5], [0, 2, 0, 0.5], [0, 0, 2, 0.5], [0, 0, 0, 1.0]])
    nii = _save_nifti(np.ascontiguousarray(data).astype(np.int16), affine, tmp_path / f"{case}.nii.gz")
    out = tmp_path / "out"
    status = _script("write_dicom_rt").main(["--series", str(ct_dir), "--labels", str(nii), "--out", str(out),
                                             "--format", "both", "-q"])
    assert status == 0
    from_rt, from_seg = _read_back(sorted(out.iterdir()), series)
    for label in LABELS:
        truth = phantom.labels == label.value
        assert dice(from_seg == label.value, truth) >= 0.95, (case, label.name)
        assert dice(from_rt == label.value, truth) >= 0.95, (case, label.name)
    if case == "permuted":
        np.testing.assert_array_equal(from_seg, phantom.labels)


def test_partial_coverage_warns_and_fills_background(ct, tmp_path, caplog):
    phantom, ct_dir, series = ct
    nii = _save_nifti(phantom.labels[:, :, :6], series.affine_ras, tmp_path / "half.nii.gz")
    with caplog.at_level(logging.WARNING, logger="vacseg_monai.dicom.labelmap"):
        paths = write_label_map_dicom(ct_dir, nii, tmp_path / "out", fmt="seg")
    assert "covers only 50.0 %" in caplog.text
    seg_path = paths[0]
    pixels = hd.seg.segread(seg_path).get_pixels_by_source_instance(series.sop_instance_uids, combine_segments=True)
    pixels = np.moveaxis(pixels, 0, 2)
    np.testing.assert_array_equal(pixels[:, :, :6], phantom.labels[:, :, :6])
    assert not pixels[:, :, 6:].any()
    far = _save_nifti(phantom.labels, series.affine_ras @ np.diag([1, 1, 1, 1.0]) + np.array(
        [[0, 0, 0, 5000.0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]), tmp_path / "far.nii.gz")
    with pytest.raises(ValueError, match="does not overlap"):
        write_label_map_dicom(ct_dir, far, tmp_path / "out2")


def test_bad_label_nifti_is_rejected(ct, tmp_path, caplog):
    phantom, ct_dir, series = ct
    fractional = _save_nifti(phantom.labels * np.float32(0.5), series.affine_ras, tmp_path / "prob.nii.gz")
    with pytest.raises(ValueError, match=r"prob\.nii\.gz: label values must be whole numbers .* "
                                         r"found non-integer values \[0\.5"):
        load_label_nifti(fractional)
    wrong = _save_nifti(np.where(phantom.labels == 3, 7, phantom.labels).astype(np.uint8), series.affine_ras,
                        tmp_path / "wrong.nii.gz")
    with pytest.raises(ValueError, match=r"label values \[7\] are not in the label table"):
        load_label_nifti(wrong)
    script = _script("write_dicom_rt")
    with caplog.at_level(logging.ERROR):
        status = script.main(["--series", str(ct_dir), "--labels", str(fractional), "--out", str(tmp_path / "o"), "-q"])
    assert status == 2 and "non-integer" in caplog.text
    assert not (tmp_path / "o").exists()
