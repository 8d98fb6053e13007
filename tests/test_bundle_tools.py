"""Tests for the bundle as MONAI's own tools see it.

``python -m monai.bundle verify_net_in_out`` / ``ckpt_export`` / ``verify_metadata``
and ``torchrun`` with ``multi_gpu_train.json`` are run exactly as a user would, in
subprocesses, with tiny network overrides (``channels [4, 8, 16]``) so that each
test stays well under a minute on a shared CPU.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.networks.nets import UNet

from conftest import BUNDLE
from vacseg_monai.labels import BACKGROUND, LABELS, num_classes

CONFIGS = BUNDLE / "configs"
META = CONFIGS / "metadata.json"
TRAIN = CONFIGS / "train.json"
TINY_CHANNELS = "[4,8,16]"
TOOL_TIMEOUT_S = 120
TORCHRUN_TIMEOUT_S = 180
SIZE = 64


def _tiny_unet() -> UNet:
    return UNet(spatial_dims=2, in_channels=1, out_channels=num_classes(), channels=(4, 8, 16), strides=(2, 2),
                num_res_units=2, norm="batch")  # fmt: skip


def _bundle_tool(*args: str, timeout: float = TOOL_TIMEOUT_S) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def _make_layout(root: Path, n_patients: int = 4, n_slices: int = 6) -> None:
    """Per-slice npy layout: noise around air with a bright 16x16 square labelled Vacbag."""
    rng = np.random.default_rng(0)
    for p in range(n_patients):
        for sub in ("img", "mask"):
            (root / f"p{p}" / sub).mkdir(parents=True)
        for i in range(n_slices):
            image = (-1000 + rng.integers(0, 30, (1, SIZE, SIZE))).astype(np.int16)
            mask = np.zeros((1, SIZE, SIZE), np.uint8)
            r, c = rng.integers(8, 40, 2)
            image[0, r : r + 16, c : c + 16] = 800
            mask[0, r : r + 16, c : c + 16] = 1
            np.save(root / f"p{p}" / "img" / f"{i}.npy", image)
            np.save(root / f"p{p}" / "mask" / f"{i}.npy", mask)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------ verify_net_in_out


def test_verify_net_in_out_passes_for_train_network():
    """The default network of train.json against metadata.json: 1x256x256 float32 in, 4 channels float32 out."""
    result = _bundle_tool("verify_net_in_out", "network_def", "--meta_file", str(META), "--config_file", str(TRAIN),
                          "--device", "cpu", "--n", "1", "--any", "1")  # fmt: skip
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert "data shape of network is verified with no error" in log


def test_verify_net_in_out_fails_on_wrong_output_channels(tmp_path):
    meta = json.loads(META.read_text())
    meta["network_data_format"]["outputs"]["pred"]["num_channels"] = 3
    wrong = tmp_path / "metadata.json"
    wrong.write_text(json.dumps(meta))
    result = _bundle_tool("verify_net_in_out", "network_def", "--meta_file", str(wrong), "--config_file", str(TRAIN),
                          "--device", "cpu", "--channels", TINY_CHANNELS)  # fmt: skip
    log = result.stdout + result.stderr
    assert result.returncode != 0
    assert "output channel number `4` doesn't match: `3`." in log


# ------------------------------------------------------------------ ckpt_export


def test_ckpt_export_torchscript_matches_eager(tmp_path):
    torch.manual_seed(0)
    network = _tiny_unet()
    ckpt = tmp_path / "model.pt"
    torch.save(network.state_dict(), ckpt)
    exported = tmp_path / "model.ts"
    result = _bundle_tool("ckpt_export", "network_def", "--filepath", str(exported), "--ckpt_file", str(ckpt),
                          "--meta_file", str(META), "--config_file", str(TRAIN), "--channels", TINY_CHANNELS)  # fmt: skip
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert exported.is_file()

    scripted = torch.jit.load(str(exported), map_location="cpu").eval()
    network.eval()
    x = torch.rand(2, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = network(x)
        got = scripted(x)
    assert got.shape == (2, num_classes(), SIZE, SIZE)
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)
    # ckpt_export stores the bundle's metadata and config inside the TorchScript file
    extra = {"metadata.json": "", "inference.json": ""}
    torch.jit.load(str(exported), _extra_files=extra)
    assert json.loads(extra["metadata.json"])["version"] == json.loads(META.read_text())["version"]


# ------------------------------------------------------------------ metadata schema

#: MONAI's published schema for metadata.json (meta_schema_20240725.json, Project-MONAI, Apache-2.0), the one
#: `verify_metadata` would download. No network here: MONAI_META_SCHEMA names a local copy, else the copy kept
#: beside the repository (``../shared/monai/``), which CI has too. It is read there, not vendored.
SCHEMA_NAME = "meta_schema_20240725.json"


@pytest.fixture(scope="module")
def meta_schema() -> Path:
    given = os.environ.get("MONAI_META_SCHEMA")
    path = Path(given) if given else BUNDLE.parents[2] / "shared" / "monai" / SCHEMA_NAME
    if not path.is_file():
        pytest.fail(f"MONAI's bundle metadata schema {SCHEMA_NAME} is not at {path}; set MONAI_META_SCHEMA to a "
                    "copy of it (the URL is the `schema` key of configs/metadata.json).")
    return path


def test_metadata_validates_against_monais_schema(meta_schema):
    import jsonschema

    meta = json.loads(META.read_text())
    assert meta["schema"].endswith("/" + SCHEMA_NAME)
    jsonschema.validate(meta, json.loads(meta_schema.read_text()))
    assert meta["version"] in meta["changelog"]
    pred = meta["network_data_format"]["outputs"]["pred"]
    assert pred["num_channels"] == len(pred["channel_def"]) == num_classes()
    assert pred["channel_def"] == {str(BACKGROUND): "background", **{str(lb.value): lb.name for lb in LABELS}}
    # MONAI 1.6 (monai.bundle.utils.DEPRECATED_ID_MAPPING) reads `optional_packages_version` as a deprecated
    # name of `required_packages_version` and overwrites the latter with it, so the key must not be there.
    assert "optional_packages_version" not in meta


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("network_data_format", "outputs", "pred", "spatial_shape"), "256", "is not of type 'array'"),
        (("network_data_format", "inputs", "image", "num_channels"), "1", "is not of type 'integer'"),
        (("network_data_format", "inputs", "image", "is_patch_data"), "no", "is not of type 'boolean'"),
        (("version",), 2, "is not of type 'string'"),
    ],
)
def test_monais_schema_rejects_broken_metadata(meta_schema, path, value, message):
    import jsonschema

    meta = json.loads(META.read_text())
    target = meta
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError, match=message):
        jsonschema.validate(meta, json.loads(meta_schema.read_text()))


def test_monai_reads_every_required_package_from_metadata():
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_meta(str(META))
    required = parser.get_parsed_content("_meta_#required_packages_version")
    assert {"vacseg_monai", "pytorch-ignite", "nibabel", "tensorboard", "tqdm"} <= set(required)


@pytest.mark.slow
def test_verify_metadata_command_passes_and_names_a_missing_key(tmp_path, meta_schema):
    """``python -m monai.bundle verify_metadata`` as a user runs it, with MONAI's schema given by --filepath.

    MONAI skips the download when that file exists. It is copied to a temporary folder because
    verify_metadata would otherwise try to write beside it.
    """
    schema = tmp_path / SCHEMA_NAME
    shutil.copyfile(meta_schema, schema)
    result = _bundle_tool("verify_metadata", "--meta_file", str(META), "--filepath", str(schema))
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "metadata is verified with no error" in result.stdout + result.stderr

    broken = json.loads(META.read_text())
    del broken["network_data_format"]["outputs"]
    broken_meta = tmp_path / "metadata.json"
    broken_meta.write_text(json.dumps(broken))
    result = _bundle_tool("verify_metadata", "--meta_file", str(broken_meta), "--filepath", str(schema))
    assert result.returncode != 0
    assert "'outputs' is a required property" in result.stdout + result.stderr


# ------------------------------------------------------------------ multi_gpu_train.json on CPU


@pytest.mark.slow
def test_multi_gpu_train_runs_two_gloo_ranks_on_cpu(tmp_path):
    _make_layout(tmp_path / "data")
    port = _free_port()
    logs = tmp_path / "torchrun_logs"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
        "--master_addr=127.0.0.1", f"--master_port={port}", f"--log-dir={logs}", "--redirects=3",
        "-m", "monai.bundle", "run",
        "--config_file", repr([str(TRAIN), str(CONFIGS / "multi_gpu_train.json")]),
        "--meta_file", str(META),
        "--logging_file", str(CONFIGS / "logging.conf"),
        "--bundle_root", str(BUNDLE),
        "--data_dir", str(tmp_path / "data"),
        "--ckpt_dir", str(tmp_path / "models"),
        "--output_dir", str(tmp_path / "runs"),
        "--max_epochs", "1", "--channels", TINY_CHANNELS, "--spatial_size", str(SIZE), "--k_folds", "2",
        "--batch_size", "2", "--num_workers", "0", "--progress_bar", "False",
    ]  # fmt: skip
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")

    def run() -> tuple[subprocess.CompletedProcess, dict[str, str]]:
        shutil.rmtree(logs, ignore_errors=True)
        done = subprocess.run(command, capture_output=True, text=True, timeout=TORCHRUN_TIMEOUT_S, env=env,
                              check=False)  # fmt: skip
        texts = {p.parent.name: p.read_text() for p in logs.rglob("stderr.log")}
        texts |= {p.parent.name + "-out": p.read_text() for p in logs.rglob("stdout.log")}
        return done, texts

    result, rank_logs = run()
    if result.returncode != 0 and any("terminate called without an active exception" in v for v in rank_logs.values()):
        # Seen twice in CI (never in 30 runs alone): rank 1 aborted in teardown after rank 0 had finished the
        # epoch. The config now waits at a barrier before destroying the process group; should the abort still
        # come, one retry, reported as a warning with torchrun's words.
        warnings.warn(f"a torchrun rank aborted in teardown; retried once. torchrun said: {result.stderr[-1500:]}",
                      stacklevel=1)
        result, rank_logs = run()
    assert result.returncode == 0, (result.stderr[-3000:], {k: v[-2000:] for k, v in rank_logs.items()})

    # torchrun exits 0 only when every rank exited 0; both ranks wrote their own logs
    assert sorted(p.parent.name for p in logs.rglob("stderr.log")) == ["0", "1"]
    rank0 = rank_logs["0"] + rank_logs["0-out"]
    assert "Epoch[1] Complete" in rank0
    assert "Epoch[1] Complete" not in rank_logs["1"] + rank_logs["1-out"]  # rank 1 logs warnings only

    # rank 0 saved the checkpoints, unwrapped from DistributedDataParallel
    models = tmp_path / "models"
    assert sorted(p.name for p in models.iterdir()) == ["checkpoint_epoch=1.pt", "model.pt", "model_last.pt"]
    _tiny_unet().load_state_dict(torch.load(models / "model.pt", map_location="cpu", weights_only=True))
    # DistributedSampler split the 12 training slices: 6 per rank, batch 2 -> 3 iterations (6 on one process)
    trainer = torch.load(models / "model_last.pt", map_location="cpu", weights_only=False)["trainer"]
    assert trainer["epoch_length"] == 3 and trainer["iteration"] == 3
