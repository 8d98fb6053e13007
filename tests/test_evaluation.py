"""Tests for vacseg_monai.evaluation and scripts/bundle_performance.py.

The metrics are checked on hand-made volumes with known answers; the script runs the
bundle's real inference workflow with a tiny random network (channels [4, 8, 16]) on
64 x 64 phantoms, against a copy of the bundle so the real docs are not touched.
"""

from __future__ import annotations

import csv
import importlib.util
import math
import shutil

import numpy as np
import pytest
import torch
from monai.networks.nets import UNet

from conftest import BUNDLE, REPO, dice
from vacseg_monai.evaluation import (
    DOCS_BEGIN,
    DOCS_END,
    PhantomSegmenter,
    LabelMetrics,
    label_metrics,
    markdown_table,
    read_csv,
    summarise,
    update_performance_section,
)
from vacseg_monai.labels import LABELS, label_by_name, num_classes
from vacseg_monai.phantom import generate_phantom, write_npy_layout

SIZE = 64
TINY = ["--override", "channels=[4,8,16]", "--override", f"spatial_size={SIZE}", "--override",
        "device=$torch.device('cpu')"]  # fmt: skip
VACBAG, COUCH = (label_by_name(n).value for n in ("Vacbag", "Couch"))


def _script():
    spec = importlib.util.spec_from_file_location("bundle_performance", REPO / "scripts" / "bundle_performance.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module



# ------------------------------------------------------------------ metrics on known volumes


def test_label_metrics_known_values():
    truth = np.zeros((40, 40, 20), np.uint8)
    truth[10:20, 10:20, 5:15] = VACBAG  # 1000 voxels
    truth[30:34, :, :] = COUCH
    pred = truth.copy()
    pred[10:20, 10:20, 5:15] = 0
    pred[12:22, 10:20, 5:15] = VACBAG  # shifted 2 rows: overlap 800
    # Body: absent from both -> undefined
    spacing = (1.5, 1.0, 3.0)
    rows = {r.label: r for r in label_metrics(pred, truth, spacing, 2.0, patient_id="p", seed=7)}
    assert list(rows) == [lb.name for lb in LABELS]

    bag = rows["Vacbag"]
    assert bag.dice == pytest.approx(dice(pred == VACBAG, truth == VACBAG)) == pytest.approx(0.8)
    assert bag.precision == pytest.approx(0.8) and bag.sensitivity == pytest.approx(0.8)
    assert bag.truth_voxels == bag.pred_voxels == 1000
    # the surfaces are 2 rows x 1.5 mm = 3 mm apart at the shifted faces
    assert bag.hd95_mm == pytest.approx(3.0)
    assert 0.0 < bag.surface_dice < 1.0
    assert (bag.patient_id, bag.seed, bag.tolerance_mm) == ("p", 7, 2.0)

    couch = rows["Couch"]
    assert (couch.dice, couch.hd95_mm, couch.surface_dice, couch.precision, couch.sensitivity) == (1, 0, 1, 1, 1)

    body = rows["Body"]
    assert body.truth_voxels == body.pred_voxels == 0
    assert all(math.isnan(getattr(body, m)) for m in ("dice", "hd95_mm", "precision", "sensitivity"))
    assert bag.pred_cm3 == pytest.approx(1000 * 1.5 * 1.0 * 3.0 / 1000)


def test_table_reports_what_was_drawn_where_the_truth_has_no_bag():
    truth = np.zeros((20, 20, 4), np.uint8)
    truth[15:, :, :] = COUCH
    pred = truth.copy()
    pred[2:4, 2:4, 0] = VACBAG  # 4 voxels of 2 mm^3: a false bag of 0.008 cm^3
    rows = label_metrics(pred, truth, (1.0, 1.0, 2.0), patient_id="nobag", seed=3)
    table = markdown_table(rows)
    assert "Patients without Vacbag (1): Vacbag drawn nobag 0.01 cm³ (false positives" in table
    assert "Patients without Body (1): Body drawn nobag 0.00 cm³" in table


def test_label_metrics_tolerance_changes_surface_dice():
    truth = np.zeros((30, 30, 10), np.uint8)
    truth[5:15, 5:15, 2:8] = VACBAG
    pred = np.roll(truth, 2, axis=0)  # 2 mm shift at 1 mm spacing
    tight = label_metrics(pred, truth, (1.0, 1.0, 1.0), tolerance_mm=1.0)[0].surface_dice
    loose = label_metrics(pred, truth, (1.0, 1.0, 1.0), tolerance_mm=2.5)[0].surface_dice
    assert loose == pytest.approx(1.0) and tight < 0.9


def test_label_metrics_rejects_bad_input():
    a = np.zeros((4, 4, 4), np.uint8)
    with pytest.raises(ValueError, match=r"prediction \(4, 4, 4\) and truth \(4, 4\)"):
        label_metrics(a, a[..., 0], (1, 1, 1))
    with pytest.raises(ValueError, match="`spacing` must be three positive"):
        label_metrics(a, a, (1, 0, 1))


def test_summary_and_markdown_table():
    def row(pid, label, dice, hd):
        return LabelMetrics(pid, 0, label, dice, hd, 0.5, 1.0, 1.0, 10, 10, 2.0)

    rows = [row("a", "Vacbag", 0.8, 2.0), row("b", "Vacbag", 0.9, math.nan), row("a", "Couch", 1.0, 0.0),
            row("b", "Couch", 1.0, 0.0)]  # fmt: skip
    summary = summarise(rows)
    mean, sd, n = summary["Vacbag"]["dice"]
    assert mean == pytest.approx(0.85) and sd == pytest.approx(np.std([0.8, 0.9], ddof=1)) and n == 2
    assert summary["Vacbag"]["hd95_mm"] == (2.0, 0.0, 1)
    table = markdown_table(rows).splitlines()
    assert table[0] == "| Label | Dice | HD95 (mm) | Surface Dice @ 2 mm | Precision | Sensitivity |"
    assert table[2] == "| Vacbag | 0.850 ± 0.071 | 2.0 ± 0.0 (n=1) | 0.500 ± 0.000 | 1.000 ± 0.000 | 1.000 ± 0.000 |"
    assert table[3].startswith("| Couch | 1.000 ± 0.000 | 0.0 ± 0.0 |")


def test_update_performance_section_replaces_only_between_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# X\n## Performance\n{DOCS_BEGIN}\nold\n{DOCS_END}\n\n## References\nkeep\n")
    update_performance_section(readme, "new table\n")
    assert readme.read_text() == f"# X\n## Performance\n{DOCS_BEGIN}\nnew table\n{DOCS_END}\n\n## References\nkeep\n"
    readme.write_text("## Performance\nno markers\n")
    with pytest.raises(ValueError, match="must contain '<!-- performance:begin -->'"):
        update_performance_section(readme, "x")
    assert readme.read_text() == "## Performance\nno markers\n"


# ------------------------------------------------------------------ script on the real inference workflow


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    """A copy of the bundle's configs and docs with a random tiny checkpoint (the real models/ is untouched)."""
    root = tmp_path_factory.mktemp("perf")
    bundle = root / "bundle"
    shutil.copytree(BUNDLE / "configs", bundle / "configs")
    shutil.copytree(BUNDLE / "docs", bundle / "docs")
    torch.manual_seed(0)
    network = UNet(spatial_dims=2, in_channels=1, out_channels=num_classes(), channels=(4, 8, 16), strides=(2, 2),
                   num_res_units=2, norm="batch")  # fmt: skip
    ckpt = root / "model.pt"
    torch.save(network.state_dict(), ckpt)
    return root, bundle, ckpt


def test_script_writes_csv_table_and_docs(tiny_bundle):
    root, bundle, ckpt = tiny_bundle
    out = root / "out"
    args = ["--bundle", str(bundle), "--ckpt", str(ckpt), "--seeds", "1000", "1001", "--size", str(SIZE),
            "--out", str(out), "--update-docs", "-q", *TINY]  # fmt: skip
    assert _script().main(args) == 0

    rows = read_csv(out / "performance.csv")
    assert [(r.patient_id, r.label) for r in rows] == [
        (f"phantom_{s}", lb.name) for s in (1000, 1001) for lb in LABELS
    ]
    with open(out / "performance.csv", newline="") as f:
        assert next(csv.reader(f))[:8] == ["patient_id", "seed", "label", "dice", "hd95_mm", "surface_dice",
                                           "precision", "sensitivity"]  # fmt: skip

    # Dice in the CSV equals a direct numpy Dice of the same bundle prediction against the truth
    phantom = generate_phantom(1000, size=SIZE)
    spacing = (*phantom.pixel_spacing, phantom.slice_thickness_mm)
    segment = PhantomSegmenter(bundle, ckpt, {"channels": [4, 8, 16], "spatial_size": SIZE,
                                             "device": "$torch.device('cpu')"})  # fmt: skip
    pred = segment(write_npy_layout(phantom, root / "again"), spacing)
    assert pred.shape == phantom.labels.shape and pred.dtype == np.uint8
    for r in rows[: len(LABELS)]:
        value = label_by_name(r.label).value
        p, t = pred == value, phantom.labels == value
        assert r.truth_voxels == np.count_nonzero(t) > 0
        assert r.pred_voxels == np.count_nonzero(p)
        if r.pred_voxels:
            assert r.dice == pytest.approx(dice(p, t), abs=1e-6)
            assert r.precision == pytest.approx(np.count_nonzero(p & t) / np.count_nonzero(p))
        else:
            assert r.dice == 0.0

    table = (out / "performance.md").read_text()
    assert markdown_table(rows) in table
    docs = (bundle / "docs" / "README.md").read_text()
    section = docs.split(DOCS_BEGIN)[1].split(DOCS_END)[0]
    assert markdown_table(rows) in section
    assert "python scripts/bundle_performance.py --bundle" in section and "--seeds 1000 1001" in section
    assert "CPU cores" in section
    assert docs.split(DOCS_BEGIN)[0] == (BUNDLE / "docs" / "README.md").read_text().split(DOCS_BEGIN)[0]


def test_script_refuses_training_seeds_and_missing_checkpoint(tiny_bundle, tmp_path):
    root, bundle, ckpt = tiny_bundle
    (tmp_path / "train" / "phantom_003").mkdir(parents=True)
    with pytest.raises(SystemExit) as info:
        _script().main(["--bundle", str(bundle), "--ckpt", str(ckpt), "--seeds", "3", "1000",
                        "--train-data", str(tmp_path / "train")])  # fmt: skip
    assert info.value.code == 2
    assert _script().main(["--bundle", str(bundle), "--ckpt", str(tmp_path / "none.pt"), "--out", str(tmp_path)]) == 2
