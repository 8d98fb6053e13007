"""Tests for vacseg_monai.transforms: shapes, intensity ranges, label values, flip axis."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import CacheDataset, DataLoader, MetaTensor
from monai.utils import set_determinism

from vacseg_monai.datasets import DataLayoutError, fold_datalists
from vacseg_monai.labels import BACKGROUND, LABELS
from vacseg_monai.transforms import ClipIntensityd, LoadSliced, inference_transforms, train_transforms, val_transforms

TABLE = {BACKGROUND, *(label.value for label in LABELS)}
SIZE = 32


def _write_patient(root: Path, patient: str, n_slices: int = 3) -> None:
    for sub in ("img", "mask"):
        (root / patient / sub).mkdir(parents=True)
    for i in range(n_slices):
        image = np.full((1, SIZE, SIZE), -1024, np.int16)
        mask = np.zeros((1, SIZE, SIZE), np.uint8)
        image[0, 24:28, :] = 300  # couch at the bottom
        mask[0, 24:28, :] = 2
        image[0, 16:24, 4:28] = -900  # vacbag above it
        mask[0, 16:24, 4:28] = 1
        image[0, 6:16, 10:20] = 40  # body
        mask[0, 6:16, 10:20] = 3
        image[0, 0, 0] = 3000  # above the window
        np.save(root / patient / "img" / f"{i}.npy", image)
        np.save(root / patient / "mask" / f"{i}.npy", mask)


@pytest.fixture()
def items(tmp_path):
    for p in ("a", "b"):
        _write_patient(tmp_path, p)
    lists = fold_datalists(tmp_path, k_folds=2, k_fold_index=0)
    return sorted(lists["train"] + lists["validation"], key=lambda it: (it["patient"], it["slice"]))


def test_val_transforms_window_and_shapes(items):
    out = val_transforms(a_min=-1024, a_max=1500)(items[0])
    image, label = out["image"], out["label"]
    assert isinstance(image, MetaTensor) and image.dtype == torch.float32
    assert image.shape == label.shape == (1, SIZE, SIZE)
    assert float(image.min()) == 0.0 and float(image.max()) == 1.0  # -1024 -> 0, 3000 clipped -> 1
    assert float(image[0, 26, 5]) == pytest.approx((300 + 1024) / 2524, abs=1e-6)
    assert set(torch.unique(label).tolist()) == TABLE
    assert out["patient"] == "a" and out["slice"] == 0
    assert image.meta["filename_or_obj"].endswith("0.npy")


def test_val_transforms_resize_keeps_labels_integer(items):
    out = val_transforms(spatial_size=16)(items[1])
    assert out["image"].shape == out["label"].shape == (1, 16, 16)
    assert set(torch.unique(out["label"]).tolist()) == TABLE
    assert 0.0 <= float(out["image"].min()) and float(out["image"].max()) <= 1.0
    # the couch band (rows 24..27 of 32) lands on rows 12..13 of 16
    assert (out["label"][0, 12:14, :] == 2).all()


def test_train_transforms_keep_labels_in_table_and_shapes(items):
    set_determinism(seed=0)
    chain = train_transforms(spatial_size=24, flip_prob=0.5, affine_prob=1.0, rotate_degrees=10, noise_prob=1.0)
    for item in items * 3:
        out = chain(item)
        assert out["image"].shape == out["label"].shape == (1, 24, 24)
        assert set(torch.unique(out["label"]).tolist()) <= TABLE
        assert torch.isfinite(out["image"]).all()
    set_determinism(seed=None)


def test_train_flip_is_left_right_only(items):
    chain = train_transforms(flip_prob=1.0, affine_prob=0.0, intensity_prob=0.0, noise_prob=0.0)
    out = chain(items[0])
    reference = val_transforms()(items[0])
    assert torch.equal(out["label"], torch.flip(reference["label"], dims=[2]))
    # the couch stays at the bottom
    assert (out["label"][0, 24:28, :] == 2).all()


def test_cache_dataset_batches(items):
    dataset = CacheDataset(items, transform=train_transforms(spatial_size=16), cache_rate=1.0, progress=False)
    batch = next(iter(DataLoader(dataset, batch_size=2, num_workers=0)))
    assert batch["image"].shape == (2, 1, 16, 16) and batch["label"].shape == (2, 1, 16, 16)
    assert type(batch["image"]) is torch.Tensor and type(batch["label"]) is torch.Tensor  # no MetaTensor dispatch
    assert list(batch["patient"]) == ["a", "a"]


def test_nifti_items_load_and_cache(tmp_path):
    folder = tmp_path / "cat"
    folder.mkdir()
    volume = np.stack([np.full((SIZE, SIZE), -1024 + 100 * k, np.int16) for k in range(4)], axis=-1)
    labels = np.zeros(volume.shape, np.uint8)
    labels[20:, :, 3] = 2
    nib.save(nib.Nifti1Image(volume, np.eye(4)), folder / "image.nii.gz")
    nib.save(nib.Nifti1Image(labels, np.eye(4)), folder / "label.nii.gz")
    (tmp_path / "dog").mkdir()
    nib.save(nib.Nifti1Image(volume, np.eye(4)), tmp_path / "dog" / "image.nii")
    nib.save(nib.Nifti1Image(labels, np.eye(4)), tmp_path / "dog" / "label.nii")
    items = fold_datalists(tmp_path, 2, 0)["validation"]
    loader = LoadSliced(volume_cache_size=1)
    out = [loader(item) for item in items]
    assert [o["slice"] for o in out] == [0, 1, 2, 3]
    assert [float(o["image"][0, 0, 0]) for o in out] == [-1024, -924, -824, -724]
    assert float(out[3]["label"].max()) == 2 and float(out[2]["label"].max()) == 0
    assert len(loader._volumes) == 1


def test_bad_label_value_names_patient_and_file(tmp_path):
    _write_patient(tmp_path, "rex", n_slices=1)
    mask = np.zeros((1, SIZE, SIZE), np.uint8)
    mask[0, 0, 0] = 9
    np.save(tmp_path / "rex" / "mask" / "0.npy", mask)
    item = {"image": str(tmp_path / "rex/img/0.npy"), "label": str(tmp_path / "rex/mask/0.npy"),
            "patient": "rex", "slice": 0}
    with pytest.raises(DataLayoutError, match=r"Patient 'rex', file .*mask/0.npy: label values \[9\]"):
        LoadSliced()(item)


def test_inference_transforms_resize_volume_in_plane():
    volume = MetaTensor(torch.full((1, SIZE, SIZE, 5), 238.0))
    out = inference_transforms(spatial_size=16)({"image": volume})
    assert out["image"].shape == (1, 16, 16, 5)
    assert float(out["image"].mean()) == pytest.approx((238 + 1024) / 2524, abs=1e-5)


def test_inference_chain_equals_window_then_area_resize_per_slice():
    """Clip, shrink, rescale (inference) gives what window-then-shrink (training) gives on each slice."""
    from monai.transforms import Resized, ScaleIntensityRanged

    generator = torch.Generator().manual_seed(5)
    hu = torch.rand((1, 24, 20, 3), generator=generator) * 5000 - 2500  # well beyond both ends of the window
    hu[:, :2, :2] = 3000.0  # one output pixel wholly above the window and one below
    hu[:, -2:, -2:] = -3000.0
    meta = {"spatial_shape": np.array([24, 20, 3]), "original_affine": np.eye(4)}
    out = inference_transforms(spatial_size=(12, 10))({"image": MetaTensor(hu.clone(), meta=meta)})["image"]
    window = ScaleIntensityRanged(keys="image", a_min=-1024, a_max=1500, b_min=0.0, b_max=1.0, clip=True)
    shrink = Resized(keys="image", spatial_size=(12, 10), mode="area")
    for k in range(3):
        expected = shrink(window({"image": hu[..., k].clone()}))["image"]
        torch.testing.assert_close(out[..., k].as_tensor(), expected.as_tensor(), atol=1e-6, rtol=0)
    assert float(out.min()) == 0.0 and float(out.max()) == 1.0  # the clip took effect at both ends
    np.testing.assert_array_equal(out.meta["spatial_shape"], [24, 20, 3])  # kept for mapping predictions back
    with pytest.raises(ValueError, match="`a_min` must be below `a_max`, got a_min=5, a_max=5."):
        ClipIntensityd(keys="image", a_min=5, a_max=5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"a_min": 100, "a_max": -100}, "`a_min` must be below `a_max`"),
        ({"spatial_size": (16, 16, 16)}, "`spatial_size` must be a positive int or (rows, cols)"),
        ({"flip_prob": 2.0}, "`flip_prob` must be in [0, 1], got 2.0."),
    ],
)
def test_argument_validation(kwargs, message):
    with pytest.raises(ValueError) as info:
        train_transforms(**kwargs)
    assert message in str(info.value)
