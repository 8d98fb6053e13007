"""Tests for partial labels: the annotation file, the label codes, the loss, and training with and without the mask.

The training test is the issue's own check: patients annotated without Couch must not teach "no couch". Two bundle
runs on the same toy data differ only in whether those patients say so (``annotation.json``); the one that says so
keeps Couch Dice on a fully annotated validation patient, the other loses it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from monai.losses import DiceCELoss, DiceLoss
from monai.networks.nets import UNet

from conftest import CONFIGS, dice, run_bundle
from vacseg_monai.datasets import (
    ANNOTATION_FILE,
    DataLayoutError,
    discover_patients,
    slice_items,
    write_npy_patient,
)
from vacseg_monai.labels import label_by_name
from vacseg_monai.partial_labels import (
    PARTIAL_BASE,
    ResolvePartialLabelsd,
    allowed_classes,
    unannotated_code,
)
from vacseg_monai.training import make_loss
from vacseg_monai.transforms import val_transforms

VACBAG, COUCH, BODY = (label_by_name(n).value for n in ("Vacbag", "Couch", "Body"))
SIZE = 64


def _toy_patient(rng: np.random.Generator, n_slices: int) -> tuple[np.ndarray, np.ndarray]:
    """A body on a bag on a couch, in air: positions vary a little per slice."""
    image = np.full((SIZE, SIZE, n_slices), -1000, np.int16)
    labels = np.zeros((SIZE, SIZE, n_slices), np.uint8)
    rows, cols = np.mgrid[:SIZE, :SIZE]
    for k in range(n_slices):
        couch_top = int(rng.integers(50, 54))
        centre = int(rng.integers(26, 38))
        body = (rows - (couch_top - 16)) ** 2 / 11**2 + (cols - centre) ** 2 / 16**2 <= 1
        bag = (rows >= couch_top - 6) & (rows < couch_top) & (np.abs(cols - centre) < 20) & ~body
        couch = (rows >= couch_top) & (rows < couch_top + 5)
        image[..., k][bag] = -850
        image[..., k][couch] = 300
        image[..., k][body] = 40
        image[..., k] += rng.integers(-15, 15, (SIZE, SIZE)).astype(np.int16)
        labels[..., k][bag] = VACBAG
        labels[..., k][couch] = COUCH
        labels[..., k][body] = BODY
    return image, labels


# ------------------------------------------------------------------ annotation file and codes


def test_annotation_file_round_trips_and_reaches_the_items(tmp_path):
    rng = np.random.default_rng(0)
    image, labels = _toy_patient(rng, 3)
    write_npy_patient(image, labels, tmp_path / "full")
    with pytest.raises(ValueError, match=r"The label map holds \['Couch'\] but `annotated` \['Vacbag', 'Body'\]"):
        write_npy_patient(image, labels, tmp_path / "partial", annotated=("body", "Vacbag"))
    labels[labels == COUCH] = 0
    write_npy_patient(image, labels, tmp_path / "partial", annotated=("body", "Vacbag"))
    assert json.loads((tmp_path / "partial" / ANNOTATION_FILE).read_text()) == {"annotated_labels": ["Vacbag", "Body"]}
    assert not (tmp_path / "full" / ANNOTATION_FILE).exists()
    full, partial = discover_patients(tmp_path)
    assert (full.partial, partial.partial) == (False, True)
    assert partial.annotated == ("Vacbag", "Body")
    assert {it["annotated"] for it in slice_items([partial])} == {"Vacbag,Body"}


def test_bad_annotation_file_names_the_file_and_the_problem(tmp_path):
    rng = np.random.default_rng(0)
    image, labels = _toy_patient(rng, 2)
    write_npy_patient(image, labels, tmp_path / "p")
    (tmp_path / "p" / ANNOTATION_FILE).write_text('{"annotated_labels": ["Vacbag", "Table"]}')
    with pytest.raises(DataLayoutError, match=r"Patient 'p': .*annotation\.json.*unknown label 'Table'"):
        discover_patients(tmp_path)
    (tmp_path / "p" / ANNOTATION_FILE).write_text('{"labels": ["Vacbag"]}')
    with pytest.raises(DataLayoutError, match=r"annotation\.json must read .*annotated_labels"):
        discover_patients(tmp_path)
    with pytest.raises(ValueError, match="unknown label 'Bag'"):
        write_npy_patient(image, labels, tmp_path / "q", annotated=("Bag",))


def test_codes_mark_background_and_the_unannotated_labels():
    assert unannotated_code(("Vacbag", "Couch", "Body")) is None
    assert unannotated_code(("Vacbag", "Body")) == PARTIAL_BASE + (1 << 0) + (1 << COUCH)
    label = torch.tensor([[[0, BODY, unannotated_code(("Body",))]]])  # (B=1, 1, 3)
    allowed = allowed_classes(label, 4)[0]  # (C, 3)
    assert allowed[:, 0].tolist() == [True, False, False, False]
    assert allowed[:, 1].tolist() == [False, False, False, True]
    assert allowed[:, 2].tolist() == [True, True, True, False]  # background, Vacbag or Couch: not Body
    with pytest.raises(ValueError, match=r"Label values must be in \[0, 4\)"):
        allowed_classes(torch.tensor([[[7]]]), 4)


def test_transforms_carry_the_partial_code_through_loading_and_resize(tmp_path):
    rng = np.random.default_rng(1)
    image, labels = _toy_patient(rng, 2)
    labels[labels == COUCH] = 0
    write_npy_patient(image, labels, tmp_path / "p", annotated=("Vacbag", "Body"))
    item = slice_items(discover_patients(tmp_path))[0]
    out = val_transforms(spatial_size=32)(item)
    values = set(torch.unique(out["label"]).tolist())
    code = unannotated_code(("Vacbag", "Body"))
    assert values == {VACBAG, BODY, code}  # the couch and the air are "background or couch"; no certain 0 left
    assert "annotated" not in out


def test_resolve_settles_partial_voxels_on_the_prediction_when_allowed():
    code = unannotated_code(("Vacbag", "Body"))  # background or couch
    label = torch.tensor([[[code, code, BODY]]], dtype=torch.float32)  # (1, 1, 3)
    pred = torch.zeros(4, 1, 3)
    pred[COUCH, 0, 0] = 5.0  # predicts couch: allowed
    pred[VACBAG, 0, 1] = 5.0  # predicts Vacbag: not allowed, settles on background
    pred[COUCH, 0, 2] = 5.0  # certain voxels stay
    out = ResolvePartialLabelsd(keys="label")({"label": label, "pred": pred})
    assert out["label"][0, 0].tolist() == [COUCH, 0, BODY]


# ------------------------------------------------------------------ loss


def test_loss_equals_monai_on_certain_labels_and_on_single_class_codes():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 8, 8)
    target = torch.randint(0, 4, (2, 1, 8, 8)).float()
    single = PARTIAL_BASE + (1 << target.long())  # a "set" of one class: the same truth, through the partial branch
    for name, reference in (("dicece", DiceCELoss), ("dice", DiceLoss)):
        expected = reference(to_onehot_y=True, softmax=True, batch=True)(logits, target)
        loss = make_loss(name)
        assert float(loss(logits, target)) == pytest.approx(float(expected), abs=1e-6)
        assert float(loss(logits, single.float())) == pytest.approx(float(expected), abs=1e-5)


def test_loss_does_not_choose_within_a_set_but_punishes_a_known_absent_label():
    code = unannotated_code(("Vacbag", "Body"))  # background or couch; Vacbag known absent
    target = torch.full((1, 1, 4, 4), float(code))
    target[..., :2, :] = BODY
    loss = make_loss("dicece")
    base = torch.zeros(1, 4, 4, 4)
    base[:, BODY, :2, :] = 6.0
    as_background, as_couch, as_vacbag = base.clone(), base.clone(), base.clone()
    as_background[:, 0, 2:, :] = 6.0
    as_couch[:, COUCH, 2:, :] = 6.0
    as_vacbag[:, VACBAG, 2:, :] = 6.0
    l_bg, l_couch, l_bag = (float(loss(x, target)) for x in (as_background, as_couch, as_vacbag))
    assert l_bg == pytest.approx(l_couch, abs=1e-6)
    assert l_bag > l_bg + 1.0
    with pytest.raises(ValueError, match="'bce' loss cannot train on partly annotated patients"):
        make_loss("bce")(as_background, target)


# ------------------------------------------------------------------ training: the mask keeps Couch


def _couch_dice(model_path, image: np.ndarray, labels: np.ndarray) -> float:
    network = UNet(spatial_dims=2, in_channels=1, out_channels=4, channels=(8, 16, 32), strides=(2, 2),
                   num_res_units=2, norm="batch")  # fmt: skip
    network.load_state_dict(torch.load(model_path, map_location="cpu", weights_only=True))
    x = torch.from_numpy(np.clip((image.astype(np.float32) + 1024) / 2524, 0, 1)).permute(2, 0, 1)[:, None]
    with torch.no_grad():
        pred = network.eval()(x).argmax(1).permute(1, 2, 0).numpy()
    return dice(pred == COUCH, labels == COUCH)


@pytest.mark.slow
def test_patients_annotated_without_couch_do_not_teach_no_couch(tmp_path):
    rng = np.random.default_rng(7)
    volumes = {name: _toy_patient(rng, 8) for name in ("a_val", "b_full", "c_part", "d_part", "e_part", "f_part")}
    runs = {}
    for masked in (True, False):
        data = tmp_path / f"data_{masked}"
        for name, (image, labels) in volumes.items():
            if name.endswith("_part"):  # the couch was never outlined in these patients
                no_couch = np.where(labels == COUCH, 0, labels).astype(np.uint8)
                write_npy_patient(image, no_couch, data / name, annotated=("Vacbag", "Body") if masked else None)
            else:
                write_npy_patient(image, labels, data / name)
        root = tmp_path / f"run_{masked}"
        run_bundle("training", [CONFIGS / "train.json"], {
            "data_dir": str(data), "ckpt_dir": str(root / "models"), "output_dir": str(root / "runs"),
            "max_epochs": "10", "channels": "[8,16,32]", "spatial_size": "64", "k_folds": "6", "batch_size": "4",
            "learning_rate": "0.005", "num_workers": "0", "progress_bar": "False",
        })  # fmt: skip
        state = torch.load(root / "models" / "model_last.pt", map_location="cpu", weights_only=False)["model"]
        torch.save(state, root / "last_model.pt")
        runs[masked] = _couch_dice(root / "last_model.pt", *volumes["a_val"])
    assert runs[True] >= 0.8, runs
    assert runs[False] <= runs[True] - 0.3, runs
