"""The node's bundle processor on a real phantom series, with a tiny stand-in network.

The shipped model's accuracy through the node is tested in test_service_bundle.py.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
import shutil
import subprocess

import numpy as np
import pydicom
import pytest
import torch
from monai.networks.nets import UNet

from vacseg_monai.dicom.series import read_series
from vacseg_monai.dicom.synthetic import write_ct_series
from vacseg_monai.labels import LABELS, num_classes
from vacseg_monai.paths import default_bundle_root
from vacseg_monai.phantom import generate_phantom
from vacseg_monai.quality import QualityReport, StructureQuality
from vacseg_monai.service.processor import QA_PICTURE, TIMINGS_FILE, BundleProcessor, _qa_slices
from vacseg_monai.service.worker import QUALITY_FILE

def default_bundle_root_path() -> Path:
    return Path(default_bundle_root())


TINY = {"channels": [4, 8, 16], "spatial_size": 32}


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    torch.manual_seed(0)
    net = UNet(spatial_dims=2, in_channels=1, out_channels=num_classes(), channels=(4, 8, 16), strides=(2, 2),
               num_res_units=2, norm="batch")
    path = tmp_path_factory.mktemp("weights") / "model.pt"
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def ct_dir(tmp_path_factory):
    phantom = generate_phantom(3, size=64)
    folder = tmp_path_factory.mktemp("ct")
    write_ct_series(phantom.image[:, :, :12], folder, pixel_spacing=phantom.pixel_spacing,
                    slice_thickness=phantom.slice_thickness_mm)
    return folder


def test_processor_writes_rtstruct_seg_qa_and_timings(tmp_path, tiny_weights, ct_dir):
    processor = BundleProcessor(bundle=default_bundle_root(), output="both", ckpt_path=tiny_weights,
                                overrides=TINY, root_uid="1.2.826.0.1.3680043.8.498.")
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    files = processor(ct_dir, job_dir)

    modalities = sorted(pydicom.dcmread(f, stop_before_pixels=True).Modality for f in files)
    assert modalities == ["RTSTRUCT", "SEG"]
    series = read_series(ct_dir)
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert ds.StudyInstanceUID == series.study_instance_uid
        assert ds.SOPInstanceUID.startswith("1.2.826.0.1.3680043.8.498.")
        errors = [line for line in subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True,
                                                  timeout=60).stderr.splitlines() if line.startswith("Error")]
        assert errors == [], path
    rtstruct = pydicom.dcmread(next(f for f in files if f.name.startswith("RS.")))
    assert [roi.ROIName for roi in rtstruct.StructureSetROISequence] == [label.name for label in LABELS]
    version = json.loads((default_bundle_root_path() / "configs" / "metadata.json").read_text())["version"]
    weights_hash = hashlib.sha256(tiny_weights.read_bytes()).hexdigest()[:12]
    model = f"vacbag_ct_segmentation {version} weights {weights_hash}"
    assert list(rtstruct.SoftwareVersions)[1] == model  # each result names the model that made it
    seg = pydicom.dcmread(next(f for f in files if f.name.startswith("SEG.")), stop_before_pixels=True)
    assert model in list(seg.SoftwareVersions)

    timings = json.loads((job_dir / TIMINGS_FILE).read_text())
    assert set(timings) == {"read", "preprocess", "network", "resample_argmax", "clean_up", "quality", "write"}
    assert all(value >= 0 for value in timings.values())
    quality = json.loads((job_dir / QUALITY_FILE).read_text())
    assert list(quality["structures"]) == [label.name for label in LABELS]
    assert quality["flagged"] == [n for n, s in quality["structures"].items() if s["score"] < quality["threshold"]]

    # The QA picture is drawn after the export, off the time the TPS waits for; only for the job just segmented.
    assert not (job_dir / QA_PICTURE).exists()
    processor.after_export(tmp_path / "another_job")
    assert not (job_dir / QA_PICTURE).exists()
    processor(ct_dir, job_dir)
    processor.after_export(job_dir)
    assert (job_dir / QA_PICTURE).stat().st_size > 10_000
    assert json.loads((job_dir / TIMINGS_FILE).read_text())["qa_picture_after_export"] > 0


def test_processor_warms_up_its_whole_path_at_start(tiny_weights, caplog, monkeypatch):
    """The warm-up runs segmentation and both writers once (the first real job then pays no set-up), and a
    warm-up that fails is logged, never raised."""
    import vacseg_monai.dicom.seg as seg_module

    written = []
    real_write_seg = seg_module.write_seg

    def counting_write_seg(*args, **kwargs):
        written.append(args[0].shape)
        return real_write_seg(*args, **kwargs)

    monkeypatch.setattr(seg_module, "write_seg", counting_write_seg)
    with caplog.at_level("INFO", logger="vacseg_monai.service.processor"):
        processor = BundleProcessor(bundle=default_bundle_root(), output="both", ckpt_path=tiny_weights, overrides=TINY)
    assert "Processor warmed up in" in caplog.text and "warm-up failed" not in caplog.text
    assert written == [(32, 32, 2)]  # the tiny synthetic series went through the SEG writer
    caplog.clear()
    monkeypatch.setattr(processor.segmenter, "segment", lambda *a, **k: 1 / 0)
    with caplog.at_level("WARNING", logger="vacseg_monai.service.processor"):
        assert processor.warm_up() >= 0
    assert "The processor's warm-up failed; the first job will be slower." in caplog.text
    cold = BundleProcessor(bundle=default_bundle_root(), output="both", ckpt_path=tiny_weights, overrides=TINY,
                           warm_up=False)
    assert written == [(32, 32, 2)] and cold.output.seg


def test_qa_picture_shows_flagged_slices_first():
    labels = np.zeros((8, 8, 20), np.uint8)
    labels[2:6, 2:6, 4:16] = 3
    report = QualityReport(
        structures={
            "Vacbag": StructureQuality("Vacbag", 0.2, True, ["x"], flagged_slices=[17, 18]),
            "Couch": StructureQuality("Couch", 0.9, False, [], flagged_slices=[1]),
            "Body": StructureQuality("Body", 0.3, True, ["y"], flagged_slices=[18]),
        },
        input_reasons=[],
        threshold=0.5,
    )
    picks = _qa_slices(labels, report, 4)
    assert picks[:2] == [(17, ["Vacbag"]), (18, ["Vacbag", "Body"])]
    assert [k for k, names in picks[2:]] == [4, 8] and all(not names for _, names in picks[2:])
    assert [k for k, _ in _qa_slices(labels, None, 4)] == [4, 8, 11, 15]


def test_processor_refuses_a_folder_without_dicom(tmp_path, tiny_weights):
    processor = BundleProcessor(bundle=default_bundle_root(), ckpt_path=tiny_weights, overrides=TINY)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=str(empty)):
        processor(empty, tmp_path)


def test_processor_names_missing_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        BundleProcessor(bundle=default_bundle_root(), ckpt_path=tmp_path / "nothing.pt")


def test_processor_refuses_output_none(tiny_weights):
    with pytest.raises(ValueError, match="'none'"):
        BundleProcessor(bundle=default_bundle_root(), ckpt_path=tiny_weights, output="none", overrides=TINY)


def test_files_decoded_while_the_series_arrives_give_the_same_contours(tmp_path, tiny_weights, ct_dir, caplog):
    processor = BundleProcessor(bundle=default_bundle_root(), output="rtstruct", ckpt_path=tiny_weights,
                                overrides=TINY, qa_picture=False)
    plain = pydicom.dcmread(processor(ct_dir, tmp_path / "a")[0])

    arriving = tmp_path / "series"
    arriving.mkdir()
    files = sorted(ct_dir.glob("*.dcm"))
    for path in files[:5]:  # the first files have arrived
        shutil.copy(path, arriving / path.name)
    assert processor.prefetch(arriving, budget_s=60) == 5
    assert processor.prefetch(arriving, budget_s=60) == 0  # nothing new
    for path in files[5:]:
        shutil.copy(path, arriving / path.name)
    assert processor.prefetch(arriving, budget_s=0.0) == 1  # bounded work per call
    assert processor.prefetch(arriving, budget_s=60) == len(files) - 6
    with caplog.at_level(logging.INFO, logger="vacseg_monai.service.processor"):
        ahead = pydicom.dcmread(processor(arriving, tmp_path / "b")[0])
    assert f"{len(files)} of its files were decoded while it arrived, {len(files)} of its {len(files)} slices preprocessed" in caplog.text

    def contours(ds):
        return [[list(c.ContourData) for c in roi.get("ContourSequence", [])] for roi in ds.ROIContourSequence]

    assert contours(ahead) == contours(plain) and any(contours(plain))

    # The last file arrives after the last prefetch: its slice is preprocessed at the job, the rest are reused.
    late = tmp_path / "late"
    late.mkdir()
    for path in files[:-1]:
        shutil.copy(path, late / path.name)
    assert processor.prefetch(late, budget_s=60) == len(files) - 1
    shutil.copy(files[-1], late / files[-1].name)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="vacseg_monai.service.processor"):
        filled = pydicom.dcmread(processor(late, tmp_path / "c")[0])
    assert f"{len(files) - 1} of its {len(files)} slices preprocessed" in caplog.text
    assert contours(filled) == contours(plain)

    # Fewer than three quarters ahead: the whole volume is preprocessed at the job.
    early = tmp_path / "early"
    early.mkdir()
    for path in files[:5]:
        shutil.copy(path, early / path.name)
    assert processor.prefetch(early, budget_s=60) == 5
    for path in files[5:]:
        shutil.copy(path, early / path.name)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="vacseg_monai.service.processor"):
        whole = pydicom.dcmread(processor(early, tmp_path / "d")[0])
    assert "5 of its files were decoded while it arrived" in caplog.text and "preprocessed" not in caplog.text
    assert contours(whole) == contours(plain)


def test_slices_preprocessed_one_by_one_equal_the_volume_preprocessed(tiny_weights, ct_dir):
    """The node preprocesses slices as they arrive; stacked, they are exactly the volume's preprocessing,
    and segmenting from them gives the same labels."""
    from monai.transforms import Compose, Resized

    from vacseg_monai.inputs import load_input
    from vacseg_monai.segmenter import BundleSegmenter
    from vacseg_monai.transforms import inference_transforms, is_slice_wise, train_transforms

    segmenter = BundleSegmenter(default_bundle_root(), ckpt_path=tiny_weights, overrides=TINY)
    source = load_input(ct_dir)
    slices = [segmenter.preprocess_slice(source.image[0, :, :, k].numpy()) for k in range(source.image.shape[-1])]
    volume = segmenter.preprocessing({"image": source.image})["image"]
    assert slices[0].shape == (1, 32, 32, 1)
    assert torch.equal(torch.cat(slices, dim=-1), volume.as_tensor())
    assert np.array_equal(segmenter.segment(source, slices).labels, segmenter.segment(source).labels)
    with pytest.raises(ValueError, match="11 preprocessed slices given for 12 slices"):
        segmenter.segment(source, slices[:-1])
    assert segmenter.slice_wise and is_slice_wise(inference_transforms(spatial_size=32))
    assert not is_slice_wise(train_transforms(spatial_size=32))  # random, not known slice-wise
    assert not is_slice_wise(Compose([Resized(keys="image", spatial_size=(32, 32, 6))]))  # resamples across slices
