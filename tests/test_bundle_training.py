"""Tests for the bundle's training slice: train.json / evaluate.json / metadata.json and the loss factory.

Training is driven exactly as a user would: ``python -m monai.bundle run`` with
command-line overrides, on a tiny layout built here (4 patients x 6 slices of
64x64 with a bright square as Vacbag).
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.networks.nets import UNet

from conftest import BUNDLE, BUNDLE_RUN_TIMEOUT_S, CONFIGS, run_bundle
from vacseg_monai.labels import BACKGROUND, LABELS, num_classes
from vacseg_monai.training import FocalTverskyLoss, make_loss

SIZE = 64


def _make_layout(root: Path) -> None:
    rng = np.random.default_rng(0)
    for p in range(4):
        for sub in ("img", "mask"):
            (root / f"p{p}" / sub).mkdir(parents=True)
        for i in range(6):
            image = (-1000 + rng.integers(0, 30, (1, SIZE, SIZE))).astype(np.int16)
            mask = np.zeros((1, SIZE, SIZE), np.uint8)
            r, c = rng.integers(8, 40, 2)
            image[0, r : r + 16, c : c + 16] = 800
            mask[0, r : r + 16, c : c + 16] = 1
            np.save(root / f"p{p}" / "img" / f"{i}.npy", image)
            np.save(root / f"p{p}" / "mask" / f"{i}.npy", mask)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundle")
    _make_layout(root / "data")
    overrides = {
        "data_dir": str(root / "data"),
        "ckpt_dir": str(root / "models"),
        "output_dir": str(root / "runs"),
        "max_epochs": "2",
        "channels": "[4,8,16]",
        "spatial_size": "64",
        "k_folds": "2",
        "batch_size": "2",
        "num_workers": "0",
        "progress_bar": "False",
    }
    result = run_bundle("training", [CONFIGS / "train.json"], overrides)
    return root, overrides, result.stdout + result.stderr


@pytest.mark.slow
def test_training_writes_best_last_and_interval_checkpoints(trained):
    root, _, log = trained
    models = root / "models"
    assert sorted(p.name for p in models.iterdir()) == ["checkpoint_epoch=2.pt", "model.pt", "model_last.pt"]
    assert list((root / "runs").glob("events.out.tfevents.*"))
    # k_folds=2 took effect: 4 patients, 2 validate
    assert "training patients ['p2', 'p3'], validation patients ['p0', 'p1']" in log
    assert len(re.findall(r"Epoch\[\d\] Metrics -- val_mean_dice: \d\.\d+", log)) == 2


@pytest.mark.slow
def test_best_checkpoint_loads_into_unet_with_overridden_channels(trained):
    root, _, _ = trained
    state = torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=True)
    network = UNet(spatial_dims=2, in_channels=1, out_channels=4, channels=(4, 8, 16), strides=(2, 2),
                   num_res_units=2, norm="batch")  # fmt: skip
    network.load_state_dict(state)  # strict: every tensor shape matches channels [4, 8, 16]
    first_conv = next(v for k, v in state.items() if k.endswith("conv.weight"))
    assert tuple(first_conv.shape) == (4, 1, 3, 3)
    default_width = UNet(spatial_dims=2, in_channels=1, out_channels=4, channels=(16, 32, 64), strides=(2, 2),
                         num_res_units=2, norm="batch")  # fmt: skip
    with pytest.raises(RuntimeError, match="size mismatch"):
        default_width.load_state_dict(state)
    with torch.no_grad():
        out = network.eval()(torch.zeros(1, 1, SIZE, SIZE))
    assert out.shape == (1, 4, SIZE, SIZE)


@pytest.mark.slow
def test_last_checkpoint_resumes_at_epoch_two(trained):
    root, _, _ = trained
    last = torch.load(root / "models" / "model_last.pt", map_location="cpu", weights_only=False)
    assert set(last) == {"model", "optimizer", "lr_scheduler", "trainer"}
    trainer = last["trainer"]
    assert trainer["max_epochs"] == 2 and trainer["epoch_length"] == 6  # 12 training slices / batch 2
    assert trainer["iteration"] == 2 * 6


@pytest.mark.slow
def test_evaluate_config_reloads_best_model(trained):
    root, overrides, log = trained
    best = max(float(v) for v in re.findall(r"val_mean_dice: (\d\.\d+)", log))
    eval_overrides = {k: v for k, v in overrides.items() if k != "max_epochs"} | {"output_dir": str(root / "eval")}
    run_bundle("evaluating", [CONFIGS / "train.json", CONFIGS / "evaluate.json"], eval_overrides)
    with open(root / "eval" / "metrics.csv", newline="") as f:
        metrics = {row[0]: float(row[1]) for row in csv.reader(f)}
    assert metrics["val_mean_dice"] == pytest.approx(best, abs=1e-4)
    with open(root / "eval" / "val_mean_dice_raw.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12 and all("/p0/" in r["filename"] or "/p1/" in r["filename"] for r in rows)


@pytest.mark.slow
def test_finetune_starts_from_a_checkpoint_and_never_overwrites_one(trained):
    root, overrides, _ = trained
    pretrained = root / "models" / "model.pt"
    before = pretrained.read_bytes()
    tuned_dir = root / "finetuned"
    finetune = overrides | {"pretrained_path": str(pretrained), "ckpt_dir": str(tuned_dir),
                            "output_dir": str(root / "finetune_runs"), "max_epochs": "1", "learning_rate": "0.0"}
    configs = [CONFIGS / "train.json", CONFIGS / "finetune.json"]
    run_bundle("training", configs, finetune)
    assert pretrained.read_bytes() == before
    start = torch.load(pretrained, map_location="cpu", weights_only=True)
    tuned = torch.load(tuned_dir / "model.pt", map_location="cpu", weights_only=True)
    convs = [k for k in start if k.endswith("conv.weight")]
    assert convs and all(torch.equal(start[k], tuned[k]) for k in convs)  # lr 0: the weights are the checkpoint's
    again = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", repr([str(f) for f in configs]),
         "--meta_file", str(CONFIGS / "metadata.json"), "--bundle_root", str(BUNDLE)]
        + [arg for key, value in finetune.items() for arg in (f"--{key}", value)],
        capture_output=True, text=True, timeout=BUNDLE_RUN_TIMEOUT_S, check=False,
    )  # fmt: skip
    assert again.returncode != 0
    assert f"FileExistsError: {tuned_dir} already holds checkpoint_epoch=1.pt, model.pt, model_last.pt" in again.stderr


def test_finetune_defaults_to_a_new_folder_and_the_shipped_weights():
    parser = ConfigParser()
    parser.read_config([CONFIGS / "train.json", CONFIGS / "finetune.json"])
    parser["bundle_root"] = str(BUNDLE)
    assert parser.get_parsed_content("pretrained_path") == str(BUNDLE) + "/models/model.pt"
    assert re.fullmatch(re.escape(str(BUNDLE)) + r"/models/finetune_\d{8}_\d{6}", parser.get_parsed_content("ckpt_dir"))
    assert parser.get_parsed_content("learning_rate") < _parser().get_parsed_content("learning_rate")


# ------------------------------------------------------------------ config, no training


def _parser(**overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(CONFIGS / "train.json")
    parser["bundle_root"] = str(BUNDLE)
    for key, value in overrides.items():
        parser[key] = value
    return parser


def test_config_defaults_mirror_original_cli():
    parser = _parser()
    for key, value in {"batch_size": 5, "k_folds": 5, "k_fold_index": 0, "learning_rate": 1e-3, "amp": False,
                       "loss_name": "dicece", "spatial_size": 256}.items():  # fmt: skip
        assert parser.get_parsed_content(key) == value, key
    assert parser.get_parsed_content("data_dir") == str(BUNDLE) + "/../../test_dataset"
    # Loader workers leave two cores to the training step: on a 2-core laptop the loading stays in-process.
    assert parser.get_parsed_content("num_workers") == min(4, max(0, os.cpu_count() - 2))
    network = parser.get_parsed_content("network_def")
    assert isinstance(network, UNet) and network.dimensions == 2
    assert list(network.channels) == [16, 32, 64, 128, 256] and list(network.strides) == [2, 2, 2, 2]
    assert network.out_channels == num_classes() == 4


def test_config_loss_switch():
    loss = _parser(loss_name="focal_tversky").get_parsed_content("loss")
    assert isinstance(loss.base, FocalTverskyLoss)
    with pytest.raises(RuntimeError) as info:
        _parser(loss_name="hinge").get_parsed_content("loss")
    assert "`loss` must be one of ['dice', 'dicece', 'bce', 'focal_tversky'], got 'hinge'." in repr(info.value.__cause__)


def test_make_loss_values():
    target = torch.tensor([[[[0, 1], [2, 3]]]], dtype=torch.float32)
    perfect = torch.nn.functional.one_hot(target[:, 0].long(), 4).permute(0, 3, 1, 2).float() * 20 - 10
    for name in ("dice", "dicece", "focal_tversky"):
        assert float(make_loss(name)(perfect, target)) == pytest.approx(0.0, abs=1e-3), name
        assert float(make_loss(name)(-perfect, target)) > 0.5, name
    assert float(make_loss("bce")(perfect, target)) < 1e-3
    with pytest.raises(ValueError, match=r"got 'mse'"):
        make_loss("mse")


# ------------------------------------------------------------------ metadata


def test_metadata_channel_def_matches_label_table():
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    pred = meta["network_data_format"]["outputs"]["pred"]
    expected = {str(BACKGROUND): "background", **{str(lb.value): lb.name for lb in LABELS}}
    assert pred["channel_def"] == expected
    assert pred["num_channels"] == num_classes()
    image = meta["network_data_format"]["inputs"]["image"]
    assert image["num_channels"] == 1 and image["spatial_shape"] == [256, 256] and image["value_range"] == [0, 1]
    assert next(iter(meta["changelog"])) == meta["version"], "the newest changelog entry must be the version"
    assert re.fullmatch(r"\d+\.\d+\.\d+", meta["version"])
    assert "not for clinical use" in meta["intended_use"].lower()
    import monai

    assert meta["monai_version"] == monai.__version__
    assert meta["pytorch_version"] == torch.__version__.split("+")[0]
    assert meta["numpy_version"] == np.__version__
