"""Tests for vacseg_monai.datasets: discovery, validation errors, patient-level k-fold."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from vacseg_monai.datasets import (
    DataLayoutError,
    as_label_map,
    discover_patients,
    finetune_datalists,
    fold_datalists,
    load_slice,
    slice_items,
    split_patients,
    write_nifti_patient,
    write_npy_patient,
)

SIZE = 16


def _slice_pair(index: int, mask_dtype=np.uint8) -> tuple[np.ndarray, np.ndarray]:
    image = np.full((1, SIZE, SIZE), -1000 + index, dtype=np.int16)
    mask = np.zeros((1, SIZE, SIZE), dtype=mask_dtype)
    mask[0, 4:8, 4:8] = 1
    return image, mask


def make_npy_patient(root: Path, patient: str, indices=range(3), mask_dtype=np.uint8, label_values=None) -> Path:
    """Write <root>/<patient>/img|mask/<i>.npy; ``label_values`` overrides the mask square's value."""
    for sub in ("img", "mask"):
        (root / patient / sub).mkdir(parents=True, exist_ok=True)
    for i in indices:
        image, mask = _slice_pair(i, mask_dtype)
        if label_values is not None:
            mask = mask.astype(np.asarray(label_values).dtype) * label_values
        np.save(root / patient / "img" / f"{i}.npy", image)
        np.save(root / patient / "mask" / f"{i}.npy", mask)
    return root / patient


def make_nifti_patient(root: Path, patient: str, n_slices: int = 4) -> Path:
    folder = root / patient
    folder.mkdir(parents=True)
    image = np.zeros((SIZE, SIZE + 2, n_slices), dtype=np.int16) - 1000
    label = np.zeros(image.shape, dtype=np.uint8)
    for k in range(n_slices):
        image[:, :, k] += k
        label[10:, :, k] = 2
        label[2 : 2 + k, 3, k] = 3
    nib.save(nib.Nifti1Image(image, np.eye(4)), folder / "image.nii.gz")
    nib.save(nib.Nifti1Image(label, np.eye(4)), folder / "label.nii.gz")
    return folder


# --------------------------------------------------------------------- discovery


def test_discovers_npy_layout_with_numeric_slice_order(tmp_path):
    make_npy_patient(tmp_path, "dog_b", indices=[0, 1, 2, 10, 9])
    make_npy_patient(tmp_path, "dog_a", indices=[0, 1])
    (tmp_path / "notes").mkdir()  # matches neither layout: skipped

    patients = discover_patients(tmp_path)

    assert [p.patient_id for p in patients] == ["dog_a", "dog_b"]
    dog_b = patients[1]
    assert dog_b.layout == "npy"
    assert dog_b.slice_indices == (0, 1, 2, 9, 10)
    assert [f.name for f in dog_b.image_files] == ["0.npy", "1.npy", "2.npy", "9.npy", "10.npy"]
    assert (dog_b.rows, dog_b.cols, dog_b.n_slices) == (SIZE, SIZE, 5)
    items = slice_items([dog_b])
    assert [it["slice"] for it in items] == [0, 1, 2, 9, 10]
    assert items[3] == {
        "image": str(tmp_path / "dog_b" / "img" / "9.npy"),
        "label": str(tmp_path / "dog_b" / "mask" / "9.npy"),
        "patient": "dog_b",
        "slice": 9,
        "annotated": "Vacbag,Couch,Body",
    }
    assert load_slice(items[3]["image"])[0, 0, 0] == -1000 + 9


def test_discovers_nifti_layout_and_loads_slices(tmp_path):
    make_nifti_patient(tmp_path, "cat", n_slices=4)
    make_npy_patient(tmp_path, "dog")

    patients = discover_patients(tmp_path)

    cat = patients[0]
    assert cat.layout == "nifti"
    assert (cat.rows, cat.cols, cat.slice_indices) == (SIZE, SIZE + 2, (0, 1, 2, 3))
    items = slice_items([cat])
    assert len(items) == 4 and all(it["image"].endswith("image.nii.gz") for it in items)
    image = load_slice(items[2]["image"], items[2]["slice"])
    label = load_slice(items[2]["label"], items[2]["slice"])
    assert image.shape == label.shape == (1, SIZE, SIZE + 2)
    assert image[0, 0, 0] == -1000 + 2
    assert label[0, 15, 0] == 2 and label[0, 3, 3] == 3 and label[0, 4, 3] == 0


@pytest.mark.parametrize("dtype, ones", [(np.uint8, 1), (np.bool_, True), (np.float32, 1.0)])
def test_binary_mask_reads_as_vacbag(dtype, ones):
    mask = np.zeros((1, 4, 4), dtype=dtype)
    mask[0, 1, 1] = ones
    label = as_label_map(mask, "test")
    assert label.dtype == np.uint8
    assert label[0, 1, 1] == 1 and label.sum() == 1


def test_binary_mask_in_layout_reads_as_vacbag(tmp_path):
    make_npy_patient(tmp_path, "old_user", mask_dtype=np.bool_)
    (patient,) = discover_patients(tmp_path)
    label = as_label_map(load_slice(patient.label_files[0]), "x")
    assert set(np.unique(label).tolist()) == {0, 1}


# --------------------------------------------------------------------- k-fold


@pytest.mark.parametrize("n_patients, k", [(10, 5), (7, 3), (4, 2), (5, 5)])
def test_each_patient_validates_in_exactly_one_fold(n_patients, k):
    ids = [f"p{i:02d}" for i in range(n_patients)]
    seen: list[str] = []
    for fold in range(k):
        train, val = split_patients(list(reversed(ids)), k_folds=k, k_fold_index=fold)
        assert not set(train) & set(val)
        assert sorted(train + val) == ids
        assert len(val) in (n_patients // k, n_patients // k + 1)
        seen += val
    assert sorted(seen) == ids


def test_split_is_deterministic_and_contiguous():
    ids = ["b", "a", "e", "d", "c"]
    assert split_patients(ids, 2, 0) == (["d", "e"], ["a", "b", "c"])
    assert split_patients(ids, 2, 1) == (["a", "b", "c"], ["d", "e"])
    assert split_patients(ids, 2, 1) == split_patients(sorted(ids), 2, 1)


@pytest.mark.parametrize(
    "k, i, message",
    [
        (5, 5, "`k_fold_index` must be in [0, 5), got 5."),
        (5, -1, "`k_fold_index` must be in [0, 5), got -1."),
        (1, 0, "`k_folds` must be at least 2, got 1."),
        (7, 0, "`k_folds` must be at most the number of patients (6), got 7."),
    ],
)
def test_split_validates_arguments(k, i, message):
    with pytest.raises(ValueError) as info:
        split_patients([f"p{n}" for n in range(6)], k_folds=k, k_fold_index=i)
    assert str(info.value) == message


def test_split_rejects_duplicate_ids():
    with pytest.raises(ValueError, match=r"duplicates \['a'\]"):
        split_patients(["a", "a", "b"], 2, 0)


def test_fold_datalists_split_by_patient_never_by_slice(tmp_path):
    for p in range(4):
        make_npy_patient(tmp_path, f"p{p}", indices=range(3 + p))
    lists = fold_datalists(tmp_path, k_folds=2, k_fold_index=1)
    train_patients = {it["patient"] for it in lists["train"]}
    val_patients = {it["patient"] for it in lists["validation"]}
    assert train_patients == {"p0", "p1"} and val_patients == {"p2", "p3"}
    assert len(lists["train"]) == 3 + 4 and len(lists["validation"]) == 5 + 6
    strided = fold_datalists(tmp_path, k_folds=2, k_fold_index=1, train_slice_stride=2)
    assert [(it["patient"], it["slice"]) for it in strided["train"]] == [("p0", 0), ("p0", 2), ("p1", 0), ("p1", 2)]
    assert strided["validation"] == lists["validation"]
    with pytest.raises(ValueError, match="`train_slice_stride` must be >= 1, got 0."):
        fold_datalists(tmp_path, train_slice_stride=0)


# --------------------------------------------------------------------- errors


def _error(tmp_path) -> str:
    with pytest.raises(DataLayoutError) as info:
        discover_patients(tmp_path)
    assert isinstance(info.value, ValueError)
    return str(info.value)


def test_error_missing_data_dir(tmp_path):
    message = _error(tmp_path / "nowhere")
    assert "nowhere" in message and "does not exist" in message


def test_error_empty_data_dir_names_layouts(tmp_path):
    (tmp_path / "random_folder").mkdir()
    message = _error(tmp_path)
    assert "No patients found" in message
    assert "img/<i>.npy" in message and "image.nii.gz" in message


def test_error_img_without_mask(tmp_path):
    (tmp_path / "rex" / "img").mkdir(parents=True)
    np.save(tmp_path / "rex" / "img" / "0.npy", np.zeros((1, 4, 4), np.int16))
    message = _error(tmp_path)
    assert "'rex'" in message and "no mask/ folder" in message and str(tmp_path / "rex" / "mask") in message


def test_error_mismatched_counts_names_missing_indices(tmp_path):
    folder = make_npy_patient(tmp_path, "fido", indices=range(5))
    (folder / "mask" / "3.npy").unlink()
    message = _error(tmp_path)
    assert "'fido'" in message and "5 slices" in message and "4" in message
    assert "indices without a mask: [3]" in message


def test_error_non_integer_file_name(tmp_path):
    folder = make_npy_patient(tmp_path, "fido")
    np.save(folder / "img" / "slice_a.npy", np.zeros((1, SIZE, SIZE), np.int16))
    message = _error(tmp_path)
    assert "'fido'" in message and "slice_a.npy" in message and "integer" in message


def test_error_wrong_shape(tmp_path):
    folder = make_npy_patient(tmp_path, "bello")
    np.save(folder / "img" / "1.npy", np.zeros((SIZE, SIZE), np.int16))
    message = _error(tmp_path)
    assert "'bello'" in message and str(folder / "img" / "1.npy") in message
    assert f"({SIZE}, {SIZE})" in message and "expected (1, H, W)" in message


def test_error_inconsistent_shapes_within_patient(tmp_path):
    folder = make_npy_patient(tmp_path, "bello")
    np.save(folder / "mask" / "2.npy", np.zeros((1, 8, 8), np.uint8))
    message = _error(tmp_path)
    assert "'bello'" in message and "mask" in message and "2.npy" in message
    assert "(1, 8, 8)" in message and f"(1, {SIZE}, {SIZE})" in message


def test_error_corrupt_npy(tmp_path):
    folder = make_npy_patient(tmp_path, "lassie")
    data = (folder / "img" / "2.npy").read_bytes()
    (folder / "img" / "2.npy").write_bytes(data[: len(data) // 2])  # truncated
    message = _error(tmp_path)
    assert "'lassie'" in message and str(folder / "img" / "2.npy") in message and "corrupt" in message


def test_error_garbage_npy(tmp_path):
    folder = make_npy_patient(tmp_path, "lassie")
    (folder / "mask" / "0.npy").write_bytes(b"not a numpy file at all")
    message = _error(tmp_path)
    assert "'lassie'" in message and str(folder / "mask" / "0.npy") in message


def test_error_label_dtype(tmp_path):
    folder = make_npy_patient(tmp_path, "rex")
    np.save(folder / "mask" / "1.npy", np.zeros((1, SIZE, SIZE), np.complex64))
    message = _error(tmp_path)
    assert "'rex'" in message and "1.npy" in message and "complex64" in message


def test_error_image_dtype(tmp_path):
    folder = make_npy_patient(tmp_path, "rex")
    np.save(folder / "img" / "0.npy", np.zeros((1, SIZE, SIZE), np.bool_))
    message = _error(tmp_path)
    assert "'rex'" in message and "0.npy" in message and "bool" in message


def test_error_nifti_without_label(tmp_path):
    folder = make_nifti_patient(tmp_path, "cat")
    (folder / "label.nii.gz").unlink()
    message = _error(tmp_path)
    assert "'cat'" in message and "no label" in message and "label.nii.gz" in message


def test_error_nifti_shape_mismatch(tmp_path):
    folder = make_nifti_patient(tmp_path, "cat")
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4)), folder / "label.nii.gz")
    message = _error(tmp_path)
    assert "'cat'" in message and "(4, 4, 4)" in message and "must match" in message


def test_error_corrupt_nifti(tmp_path):
    folder = make_nifti_patient(tmp_path, "cat")
    (folder / "image.nii.gz").write_bytes(b"\x1f\x8b garbage")
    message = _error(tmp_path)
    assert "'cat'" in message and "image.nii.gz" in message and "cannot read" in message


@pytest.mark.parametrize(
    "values, expected",
    [
        (np.uint8(7), "label values [7] are not in the label table"),
        (np.int16(-1), "label values [-1] are not in the label table"),
        (np.float32(0.5), "must be whole numbers"),
    ],
)
def test_error_label_values_outside_table(values, expected):
    mask = np.zeros((1, 4, 4), dtype=np.asarray(values).dtype)
    mask[0, 0, 0] = values
    with pytest.raises(DataLayoutError) as info:
        as_label_map(mask, "Patient 'rex', file /x/mask/0.npy")
    assert "Patient 'rex', file /x/mask/0.npy" in str(info.value) and expected in str(info.value)


def test_writers_give_what_discovery_reads_in_either_layout(tmp_path):
    rng = np.random.default_rng(5)
    image = rng.integers(-1000, 1500, size=(SIZE, SIZE + 2, 3)).astype(np.int16)
    labels = rng.integers(0, 4, size=image.shape).astype(np.uint8)
    affine = np.diag([-0.8, -0.9, 2.5, 1.0])
    write_npy_patient(image, labels, tmp_path / "npy" / "dog")
    write_nifti_patient(image, labels, affine, tmp_path / "nifti" / "dog")
    (npy,) = discover_patients(tmp_path / "npy")
    (nifti,) = discover_patients(tmp_path / "nifti")
    assert (npy.layout, npy.n_slices, npy.rows, npy.cols) == ("npy", 3, SIZE, SIZE + 2)
    assert [f.parent.name for f in (*npy.image_files, *npy.label_files)] == ["img"] * 3 + ["mask"] * 3
    for k in range(3):
        np.testing.assert_array_equal(load_slice(npy.image_files[k])[0], image[:, :, k])
        np.testing.assert_array_equal(load_slice(npy.label_files[k])[0], labels[:, :, k])
    assert (nifti.layout, nifti.n_slices) == ("nifti", 3)
    stored = nib.load(str(tmp_path / "nifti" / "dog" / "label.nii.gz"))
    np.testing.assert_array_equal(np.asarray(stored.dataobj), labels)
    np.testing.assert_allclose(stored.affine, affine)
    with pytest.raises(ValueError, match=r"Expected an int16 image and uint8 labels, got float32 and uint8"):
        write_npy_patient(image.astype(np.float32), labels, tmp_path / "bad")
    with pytest.raises(ValueError, match=r"must be equal 3D shapes"):
        write_nifti_patient(image, labels[:, :, :2], affine, tmp_path / "bad")


def test_finetune_replays_a_share_of_the_project_data_in_training_only(tmp_path):
    for p in range(5):
        make_npy_patient(tmp_path / "clinic", f"c{p}", indices=range(4))
    for p in range(3):
        make_npy_patient(tmp_path / "phantoms", f"ph{p}", indices=range(10))
    plain = finetune_datalists(tmp_path / "clinic", k_folds=5)
    assert (len(plain["train"]), len(plain["validation"])) == (16, 4)
    mixed = finetune_datalists(tmp_path / "clinic", tmp_path / "phantoms", replay_share=0.2, k_folds=5)
    assert mixed["validation"] == plain["validation"]
    replayed = [it for it in mixed["train"] if it["patient"].startswith("replay/")]
    assert len(replayed) == 4 and len(mixed["train"]) == 20  # 4 of 20 slices: a share of 0.2
    assert {it["patient"] for it in replayed} <= {"replay/ph0", "replay/ph1", "replay/ph2"}
    assert all("/phantoms/" in it["image"] for it in replayed)
    assert finetune_datalists(tmp_path / "clinic", tmp_path / "phantoms", 0.2, k_folds=5) == mixed  # seeded
    for p in range(2):
        make_npy_patient(tmp_path / "negatives", f"n{p}", indices=range(2))
    two = finetune_datalists(tmp_path / "clinic", [tmp_path / "phantoms", tmp_path / "negatives"], [0.2, 0.4])
    from_negatives = [it for it in two["train"] if "/negatives/" in it["image"]]
    assert len(two["train"]) == 40 and len(from_negatives) == 16  # 16 + 8 + 16: shares 0.2 and 0.4 of 40
    with pytest.raises(ValueError, match=r"`replay_share` must be in \[0, 1\) and sum below 1, got 1.0"):
        finetune_datalists(tmp_path / "clinic", tmp_path / "phantoms", replay_share=1.0)
    with pytest.raises(ValueError, match=r"sum below 1, got \[0.5, 0.5\]"):
        finetune_datalists(tmp_path / "clinic", [tmp_path / "phantoms"] * 2, replay_share=[0.5, 0.5])
    with pytest.raises(ValueError, match="`replay_share` 0.3 needs one `replay_dir` per share, got None"):
        finetune_datalists(tmp_path / "clinic", None, replay_share=0.3)
