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

from vacseg_monai.labels import BACKGROUND, LABELS, num_classes

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "vacbag_ct_segmentation"
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

#: Hand-written MINIMAL schema: only the parts of MONAI's meta_schema_20240725.json that this
#: bundle relies on (its required top-level keys and the network_data_format tensor entries).
#: It is not the official schema, which cannot be downloaded here; see
#: test_bundle_training.test_verify_metadata_against_schema_file for the real one.
_TENSOR_MINIMAL = {
    "type": "object",
    "required": ["type", "format", "num_channels", "spatial_shape", "dtype", "value_range", "is_patch_data",
                 "channel_def"],  # fmt: skip
    "properties": {
        "type": {"type": "string"},
        "format": {"type": "string"},
        "modality": {"type": "string"},
        "num_channels": {"type": "integer", "minimum": 1},
        "spatial_shape": {
            "type": "array",
            "minItems": 1,
            "items": {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "string"}]},
        },
        "dtype": {"type": "string", "enum": ["float16", "float32", "float64", "int8", "uint8", "int16", "int32",
                                             "int64"]},  # fmt: skip
        "value_range": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2},
        "is_patch_data": {"type": "boolean"},
        "channel_def": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}
MINIMAL_META_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "minimal hand-written subset of MONAI meta_schema_20240725 (vacseg_monai tests)",
    "type": "object",
    "required": ["schema", "version", "changelog", "monai_version", "pytorch_version", "numpy_version",
                 "required_packages_version", "task", "description", "authors", "copyright",
                 "network_data_format"],  # fmt: skip
    # MONAI 1.6 (monai.bundle.utils.DEPRECATED_ID_MAPPING) reads `optional_packages_version` as a deprecated
    # name of `required_packages_version` and overwrites the latter with it, so the key must not be there.
    "not": {"required": ["optional_packages_version"]},
    "properties": {
        "schema": {"type": "string", "pattern": r"^https://.*meta_schema_\d{8}\.json$"},
        "version": {"type": "string", "pattern": r"^\d+\.\d+\.\d+$"},
        "changelog": {"type": "object", "minProperties": 1, "additionalProperties": {"type": "string"}},
        "monai_version": {"type": "string"},
        "pytorch_version": {"type": "string"},
        "numpy_version": {"type": "string"},
        "required_packages_version": {"type": "object", "additionalProperties": {"type": "string"}},
        "task": {"type": "string", "minLength": 1},
        "description": {"type": "string", "minLength": 1},
        "authors": {"type": "string", "minLength": 1},
        "copyright": {"type": "string", "minLength": 1},
        "references": {"type": "array", "items": {"type": "string"}},
        "intended_use": {"type": "string"},
        "network_data_format": {
            "type": "object",
            "required": ["inputs", "outputs"],
            "properties": {
                "inputs": {"type": "object", "minProperties": 1, "additionalProperties": _TENSOR_MINIMAL},
                "outputs": {"type": "object", "minProperties": 1, "additionalProperties": _TENSOR_MINIMAL},
            },
        },
    },
}


def test_metadata_validates_against_minimal_schema():
    import jsonschema

    meta = json.loads(META.read_text())
    jsonschema.validate(meta, MINIMAL_META_SCHEMA)
    assert meta["version"] in meta["changelog"]
    pred = meta["network_data_format"]["outputs"]["pred"]
    assert pred["num_channels"] == len(pred["channel_def"]) == num_classes()
    assert pred["channel_def"] == {str(BACKGROUND): "background", **{str(lb.value): lb.name for lb in LABELS}}


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("network_data_format", "outputs", "pred", "spatial_shape"), "256", "is not of type 'array'"),
        (("network_data_format", "inputs", "image", "num_channels"), 0, "less than the minimum of 1"),
        (("network_data_format", "inputs", "image", "dtype"), "float", "is not one of"),
        (("version",), "0.1", "does not match"),
        (("optional_packages_version",), {"tqdm": "4.67.1"}, "should not be valid under"),
    ],
)
def test_minimal_schema_rejects_broken_metadata(path, value, message):
    import jsonschema

    meta = json.loads(META.read_text())
    target = meta
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError, match=message):
        jsonschema.validate(meta, MINIMAL_META_SCHEMA)


def test_monai_reads_every_required_package_from_metadata():
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_meta(str(META))
    required = parser.get_parsed_content("_meta_#required_packages_version")
    assert {"vacseg_monai", "pytorch-ignite", "nibabel", "tensorboard", "tqdm"} <= set(required)


def test_minimal_schema_requires_network_data_format():
    import jsonschema

    meta = json.loads(META.read_text())
    del meta["network_data_format"]["outputs"]
    with pytest.raises(jsonschema.ValidationError, match="'outputs' is a required property"):
        jsonschema.validate(meta, MINIMAL_META_SCHEMA)


def test_verify_metadata_command_passes_and_names_a_missing_key(tmp_path):
    """``python -m monai.bundle verify_metadata`` as a user runs it, with the schema file given by --filepath.

    MONAI skips the download when that file exists, so the hand-written schema above stands in for the
    official one here (no network). The official meta_schema_20240725.json is used when MONAI_META_SCHEMA
    points at a copy (test_bundle_training.test_verify_metadata_against_schema_file).
    """
    schema = tmp_path / "meta_schema_20240725.json"
    schema.write_text(json.dumps(MINIMAL_META_SCHEMA))
    result = _bundle_tool("verify_metadata", "--meta_file", str(META), "--filepath", str(schema))
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "metadata is verified with no error" in result.stdout + result.stderr

    broken = json.loads(META.read_text())
    del broken["authors"]
    broken_meta = tmp_path / "metadata.json"
    broken_meta.write_text(json.dumps(broken))
    result = _bundle_tool("verify_metadata", "--meta_file", str(broken_meta), "--filepath", str(schema))
    assert result.returncode != 0
    assert "'authors' is a required property" in result.stdout + result.stderr


# ------------------------------------------------------------------ multi_gpu_train.json on CPU


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
