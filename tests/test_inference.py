"""Tests of the bundle's inference workflow (configs/inference.json run end to end).

No trained weights exist: networks are the config's UNet with tiny channels and
random (seeded) weights, or a fixed 1x1 convolution whose output is known. DICOM
outputs are judged by dciodvfy (dicom3tools).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from conftest import BUNDLE, REPO
from vacseg_monai.dicom.series import read_series
from vacseg_monai.dicom.synthetic import write_ct_series
from vacseg_monai.inputs import InputKind
from vacseg_monai.labels import BACKGROUND, LABELS, label_by_name
from vacseg_monai.phantom import generate_phantom, write_npy_layout

INFERENCE_JSON = BUNDLE / "configs" / "inference.json"
TRAIN_JSON = BUNDLE / "configs" / "train.json"
METADATA_JSON = BUNDLE / "configs" / "metadata.json"
LABEL_VALUES = {BACKGROUND, *(label.value for label in LABELS)}
VACBAG = label_by_name("Vacbag").value
COUCH = label_by_name("Couch").value
BODY = label_by_name("Body").value
# Small network and in-plane size so that a test run takes a second or two.
TINY = {"channels": [4, 8], "spatial_size": 48, "sw_batch_size": 32, "progress_bar": False}

needs_dciodvfy = pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) not installed")


def _parser(**overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(INFERENCE_JSON))
    parser.update({"bundle_root": str(BUNDLE), **overrides})
    return parser

def _tiny_checkpoint(path: Path, *, wrap: bool) -> Path:
    """Random weights for the config's network_def with tiny channels, saved to ``path``."""
    torch.manual_seed(0)
    network = _parser(**TINY).get_parsed_content("network_def")
    state = network.state_dict()
    torch.save({"model": state} if wrap else state, path)
    return path

def _run_in_process(**overrides) -> ConfigParser:
    parser = _parser(**overrides)
    parser.get_parsed_content("initialize")
    parser.get_parsed_content("run")
    parser.get_parsed_content("finalize")
    return parser

def _dciodvfy_errors(path: Path) -> list[str]:
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60, check=False)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]

@pytest.fixture(scope="module")
def phantom():
    return generate_phantom(3, size=64)

def test_network_def_and_shared_keys_match_train_json():
    inference = json.loads(INFERENCE_JSON.read_text())
    train = json.loads(TRAIN_JSON.read_text())
    assert inference["network_def"] == train["network_def"]
    shared = ("channels", "strides", "num_res_units", "spatial_size", "a_min", "a_max", "b_min", "b_max", "num_classes")
    for key in shared:
        assert inference[key] == train[key], key
    assert list(inference)[:2] == ["imports", "bundle_root"]
    for key in ("device", "network_def", "network", "preprocessing", "inferer", "postprocessing",
                "checkpointloader", "evaluator", "initialize", "run", "finalize"):
        assert key in inference, key
    assert inference["inference"] == "%run"  # `monai.bundle run inference`


def test_postprocessing_is_built_from_the_named_steps():
    inference = json.loads(INFERENCE_JSON.read_text())
    assert inference["postprocessing"]["transforms"] == ["@resample_argmax", "@clean_up", "@score_quality", "@writer"]
    parser = _parser(**TINY)
    assert type(parser.get_parsed_content("resample_argmax")).__name__ == "ResampleArgmaxd"
    clean_up = parser.get_parsed_content("clean_up")
    assert type(clean_up).__name__ == "CleanUpLabelsd" and clean_up.min_vacbag_volume_mm3 == 1000.0
    assert clean_up.min_body_share == 0.1
    assert parser.get_parsed_content("writer#root_uid") == "1.2.826.0.1.3680043.8.498."


def test_components_of_bundles_before_0_2_3_still_import():
    from vacseg_monai import inference, inferers, inputs, postprocess, writers

    assert inference.load_input is inputs.load_input
    assert inference.AutocastSliceInferer is inferers.AutocastSliceInferer
    assert inference.ResampleArgmaxd is postprocess.ResampleArgmaxd
    assert inference.CleanUpLabelsd is postprocess.CleanUpLabelsd
    assert inference.SaveInferenceOutputsd is writers.SaveInferenceOutputsd

@needs_dciodvfy
def test_cli_on_dicom_series_writes_nifti_rtstruct_and_seg(tmp_path, phantom):
    series_dir = tmp_path / "CT_series"
    write_ct_series(
        phantom.image, series_dir, pixel_spacing=phantom.pixel_spacing, slice_thickness=phantom.slice_thickness_mm
    )
    ckpt = _tiny_checkpoint(tmp_path / "model.pt", wrap=True)
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "monai.bundle", "run", "inference",
        "--meta_file", str(METADATA_JSON), "--config_file", str(INFERENCE_JSON),
        "--bundle_root", str(BUNDLE), "--input", str(series_dir), "--output_dir", str(out),
        "--output", "both", "--ckpt_path", str(ckpt), "--device", "cpu", "--root_uid", "1.2.826.0.1.3680043.8.498.7.",
        *(arg for key, value in TINY.items() for arg in (f"--{key}", repr(value))),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, check=False, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert "Wrote NIfTI label map" in log and "Wrote RTSTRUCT" in log and "Wrote SEG" in log

    series = read_series(series_dir)
    nifti = nib.load(str(out / "CT_series_labels.nii.gz"))
    labels = np.asarray(nifti.dataobj)
    assert labels.shape == phantom.image.shape == series.shape
    assert labels.dtype == np.uint8
    np.testing.assert_allclose(nifti.affine, series.affine_ras, atol=1e-4)
    assert set(np.unique(labels).tolist()) <= LABEL_VALUES

    (rtstruct,) = out.glob("RS.*.dcm")
    (seg,) = out.glob("SEG.*.dcm")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["CT_series_labels.nii.gz", "CT_series_quality.json", rtstruct.name, seg.name]
    )
    quality = json.loads((out / "CT_series_quality.json").read_text())
    assert list(quality["structures"]) == [label.name for label in LABELS]
    assert _dciodvfy_errors(rtstruct) == []
    assert _dciodvfy_errors(seg) == []
    import pydicom

    rs = pydicom.dcmread(rtstruct)
    assert [roi.ROIName for roi in rs.StructureSetROISequence] == [label.name for label in LABELS]
    assert rs.FrameOfReferenceUID == series.frame_of_reference_uid
    sg = pydicom.dcmread(seg)
    assert sg.ReferencedSeriesSequence[0].SeriesInstanceUID == series.series_instance_uid
    assert sg.SOPInstanceUID.startswith("1.2.826.0.1.3680043.8.498.7.")  # the root given on the command line
    assert rtstruct.name == f"RS.{rs.SOPInstanceUID}.dcm" and seg.name == f"SEG.{sg.SOPInstanceUID}.dcm"


def test_npy_patient_gets_mask_slices_and_nifti(tmp_path, phantom):
    patient = write_npy_layout(phantom, tmp_path / "data")
    shutil.rmtree(patient / "mask")  # an unlabelled patient
    ckpt = _tiny_checkpoint(tmp_path / "model.pt", wrap=False)  # a plain state dict loads too
    out = tmp_path / "out"
    parser = _run_in_process(input=str(patient), output_dir=str(out), ckpt_path=str(ckpt), device="cpu", **TINY)

    masks = sorted((out / patient.name / "mask").glob("*.npy"), key=lambda p: int(p.stem))
    assert [int(p.stem) for p in masks] == list(range(phantom.n_slices))
    stacked = []
    for path in masks:
        mask = np.load(path)
        assert mask.shape == (1, 64, 64) and mask.dtype == np.uint8
        stacked.append(mask[0])
    nifti = nib.load(str(out / f"{patient.name}_labels.nii.gz"))
    np.testing.assert_array_equal(np.asarray(nifti.dataobj), np.stack(stacked, axis=-1))
    assert set(np.unique(np.asarray(nifti.dataobj)).tolist()) <= LABEL_VALUES
    # Unit spacing, head-first-supine axes, origin 0: rows step to +P (RAS -A), columns to +L (RAS -R).
    expected = np.array([[0, -1, 0, 0], [-1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=float)
    np.testing.assert_allclose(nifti.affine, expected)
    assert parser.get_parsed_content("input_data").kind is InputKind.NPY

def test_nifti_input_keeps_grid_and_affine(tmp_path, phantom):
    affine = np.array([[-0.8, 0, 0, 40.0], [0, -0.8, 0, 60.0], [0, 0, 2.5, -100.0], [0, 0, 0, 1]])
    path = tmp_path / "dog.nii.gz"
    nib.save(nib.Nifti1Image(phantom.image.astype(np.int16), affine), str(path))
    ckpt = _tiny_checkpoint(tmp_path / "model.pt", wrap=True)
    out = tmp_path / "out"
    _run_in_process(input=str(path), output_dir=str(out), ckpt_path=str(ckpt), output="both", **TINY)

    assert sorted(p.name for p in out.iterdir()) == ["dog_labels.nii.gz", "dog_quality.json"]  # no DICOM objects
    nifti = nib.load(str(out / "dog_labels.nii.gz"))
    assert nifti.shape == phantom.image.shape
    np.testing.assert_allclose(nifti.affine, affine, atol=1e-5)

def _square_volume(path: Path) -> np.ndarray:
    """NIfTI of a bright square on air, odd size and offsets; returns the square mask."""
    volume = np.full((120, 136, 5), -1000, dtype=np.int16)
    square = np.zeros(volume.shape, dtype=bool)
    square[37:92, 23:102, :] = True
    volume[square] = 1000
    nib.save(nib.Nifti1Image(volume, np.diag([0.7, 0.7, 3.0, 1.0])), str(path))
    return square

def test_resampling_back_to_the_ct_grid_is_geometrically_right(tmp_path):
    # A fixed 1x1 convolution: logit of label 1 = 10 * x - 4 (x = windowed intensity in [0, 1]),
    # the other logits 0, so label 1 wherever HU > about -14, i.e. exactly the square.
    square = _square_volume(tmp_path / "square.nii.gz")
    conv = torch.nn.Conv2d(1, 4, kernel_size=1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        conv.weight[VACBAG, 0] = 10.0
        conv.bias[VACBAG] = -4.0
    torch.save(conv.state_dict(), tmp_path / "model.pt")
    network_def = {"_target_": "torch.nn.Conv2d", "in_channels": 1, "out_channels": 4, "kernel_size": 1}
    out = tmp_path / "out"
    _run_in_process(
        input=str(tmp_path / "square.nii.gz"), output_dir=str(out), ckpt_path=str(tmp_path / "model.pt"),
        network_def=network_def, spatial_size=64, progress_bar=False,
    )
    labels = np.asarray(nib.load(str(out / "square_labels.nii.gz")).dataobj)
    predicted = labels == VACBAG
    dice = 2 * np.count_nonzero(predicted & square) / (np.count_nonzero(predicted) + np.count_nonzero(square))
    assert dice >= 0.995  # the brief asks >= 0.98; align_corners=True would give about 0.985
    rows, cols = np.nonzero(predicted.any(axis=2))
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (37, 91, 23, 101)  # edges on the right pixels
    assert set(np.unique(labels).tolist()) == {BACKGROUND, VACBAG}

def test_bundle_amp_setting_reaches_the_inferer():
    from vacseg_monai.inferers import AutocastSliceInferer
    from vacseg_monai.paths import default_bundle_root

    parser = ConfigParser()
    parser.read_config(str(Path(default_bundle_root()) / "configs" / "inference.json"))
    inferer = parser.get_parsed_content("inferer")
    assert isinstance(inferer, AutocastSliceInferer) and inferer.amp is False  # off by default
    parser["amp"] = True
    parser.parse(reset=True)
    assert parser.get_parsed_content("inferer").amp is True
