"""Tests for clinic export conversion (vacseg_monai.dicom.exports) and reading a series from its files.

The "clinic export" is built from phantoms written as real DICOM (CT + truth RTSTRUCT),
scattered over sub-folders under random file names, plus broken and unmatched items.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from conftest import dice
from vacseg_monai.datasets import Layout, discover_patients, load_nifti_volume
from vacseg_monai.dicom.errors import MissingSliceError, NoSeriesError
from vacseg_monai.dicom.exports import (
    REPORT_CSV,
    REPORT_JSON,
    SkipReason,
    convert_exports,
    parse_name_map,
    patient_folder_name,
)
from vacseg_monai.dicom.phantom_dicom import write_phantom_dicom
from vacseg_monai.dicom.series import read_series, read_series_files
from vacseg_monai.labels import LABELS, label_by_name
from vacseg_monai.phantom import Phantom, generate_phantom

ROOT = Path(__file__).resolve().parents[1]
SUBFOLDERS = ("export/a", "export/b/c", "dump", "x/y/z")


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cropped_phantom(seed: int, size: int, n_slices: int, *, where: str = "bag end") -> Phantom:
    """A (generator v1) phantom cut to ``n_slices`` slices centred on the end (or the middle) of the vacuum bag."""
    phantom = generate_phantom(seed, size=size, version=1)
    start, stop = phantom.bag_slices
    centre = (stop if start == 0 else start) if where == "bag end" else (start + stop) // 2
    first = int(np.clip(centre - n_slices // 2, 0, phantom.n_slices - n_slices))
    cut = slice(first, first + n_slices)
    return dataclasses.replace(
        phantom, image=phantom.image[:, :, cut], labels=phantom.labels[:, :, cut], tissues=phantom.tissues[:, :, cut]
    )



def scatter(files, input_dir: Path, rng: np.random.Generator) -> list[Path]:
    """Move files to random sub-folders of ``input_dir`` under random names (no extension)."""
    moved = []
    for path in files:
        target = input_dir / SUBFOLDERS[int(rng.integers(len(SUBFOLDERS)))] / rng.bytes(6).hex()
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(path), str(target))
        moved.append(target)
    return moved


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """An export folder: 2 good patients, CT only, unknown ROIs, missing CT, broken CT, junk files."""
    staging = tmp_path_factory.mktemp("staging")
    input_dir = tmp_path_factory.mktemp("input")
    rng = np.random.default_rng(0)
    good = {}
    for seed in (1, 2):
        phantom = cropped_phantom(seed, 128, 16)
        written = write_phantom_dicom(phantom, staging, file_names="random")
        series = read_series(written.ct_dir)
        good[phantom.patient_id] = (phantom, series.affine_ras)
        scatter([*written.ct_files, written.rtstruct_path], input_dir, rng)
    small = {seed: write_phantom_dicom(cropped_phantom(seed, 64, 6), staging) for seed in (4, 5, 6, 7)}
    truncated = small[4].ct_files[0].read_bytes()[:300]
    # phantom_004: CT only.
    scatter(small[4].ct_files, input_dir, rng)
    # phantom_005: structure set with only unknown ROI names.
    rs = pydicom.dcmread(small[5].rtstruct_path)
    for roi, name in zip(rs.StructureSetROISequence, ("PTV", "GTV", "CTV")):
        roi.ROIName = name
    rs.save_as(small[5].rtstruct_path)
    scatter([*small[5].ct_files, small[5].rtstruct_path], input_dir, rng)
    # phantom_006: structure set whose CT was not exported.
    scatter([small[6].rtstruct_path], input_dir, rng)
    # phantom_007: a slice in the middle of the CT is missing.
    small[7].ct_files[3].unlink()
    scatter([*small[7].ct_files[:3], *small[7].ct_files[4:], small[7].rtstruct_path], input_dir, rng)
    # Junk: a text file and a truncated DICOM file.
    (input_dir / "export" / "README.txt").write_text("exported by the TPS\n")
    (input_dir / "dump" / "broken.dcm").write_bytes(truncated)
    return input_dir, good


@pytest.fixture(scope="module")
def npy_report(export, tmp_path_factory):
    input_dir, _ = export
    out = tmp_path_factory.mktemp("out_npy")
    return convert_exports(input_dir, out, progress=False), out


def test_npy_layout_holds_the_phantoms(export, npy_report):
    _, good = export
    report, out = npy_report
    assert [r.output for r in report.converted] == ["phantom_001", "phantom_002"]
    patients = discover_patients(out)
    assert [p.patient_id for p in patients] == ["phantom_001", "phantom_002"]
    for record, patient in zip(report.converted, patients):
        phantom, _ = good[patient.patient_id]
        assert patient.layout == Layout.NPY and patient.n_slices == 16 and (patient.rows, patient.cols) == (128, 128)
        image = np.stack([np.load(f)[0] for f in patient.image_files], axis=-1)
        mask = np.stack([np.load(f)[0] for f in patient.label_files], axis=-1)
        assert image.dtype == np.int16 and mask.dtype == np.uint8
        np.testing.assert_array_equal(image, phantom.image)
        for label in LABELS:
            truth = phantom.labels == label.value
            assert dice(mask == label.value, truth) >= 0.99, (patient.patient_id, label.name)
            assert record.voxels[label.name] == int((mask == label.value).sum())
        assert record.roi_labels == {label.name: label.value for label in LABELS}
        assert record.patient_id == patient.patient_id and record.n_slices == 16


def test_report_lists_skipped_items_with_reasons(npy_report):
    report, out = npy_report
    reasons = {r.patient_id: r for r in report.skipped if r.patient_id}
    assert reasons["phantom_004"].reason == SkipReason.NO_RTSTRUCT.value
    assert reasons["phantom_005"].reason == SkipReason.NO_KNOWN_ROI.value
    assert reasons["phantom_005"].roi_names == ["PTV", "GTV", "CTV"]
    assert "PTV" in reasons["phantom_005"].detail and "--name-map" in reasons["phantom_005"].detail
    assert reasons["phantom_006"].reason == SkipReason.MISSING_SERIES.value
    assert reasons["phantom_006"].series_instance_uid in reasons["phantom_006"].detail
    assert reasons["phantom_007"].reason == SkipReason.UNREADABLE_SERIES.value
    assert "missing" in reasons["phantom_007"].detail and "vacseg-series" not in reasons["phantom_007"].detail
    broken = [r for r in report.skipped if r.reason == SkipReason.UNREADABLE_FILE.value]
    assert len(broken) == 1 and "broken.dcm" in broken[0].detail
    assert len(report.skipped) == 5

    data = json.loads((out / REPORT_JSON).read_text())
    assert (data["converted"], data["skipped"]) == (2, 5)
    assert sorted(r["reason"] for r in data["records"] if r["status"] == "skipped") == sorted(
        ["no_rtstruct", "no_known_roi", "missing_series", "unreadable_series", "unreadable_file"]
    )
    csv_lines = (out / REPORT_CSV).read_text().splitlines()
    assert csv_lines[0].startswith("status,reason,detail,patient_id,output") and len(csv_lines) == 8
    table = report.table()
    assert "phantom_001" in table and "no_known_roi" in table and table.endswith("2 converted, 5 skipped.")


def test_script_nifti_format_and_name_map(export, tmp_path, capsys):
    input_dir, good = export
    out = tmp_path / "nifti"
    status = _script("convert_dicom_rt").main([str(input_dir), "-od", str(out), "--format", "nifti", "-q",
                                               "--name-map", "PTV=Body", "--name-map", "GTV=none"])
    assert status == 0
    printed = capsys.readouterr().out
    assert "3 converted, 4 skipped." in printed
    patients = discover_patients(out)
    assert [p.patient_id for p in patients] == ["phantom_001", "phantom_002", "phantom_005"]
    for patient in patients[:2]:
        phantom, affine_ras = good[patient.patient_id]
        assert patient.layout == Layout.NIFTI
        image_nii = nib.load(str(out / patient.patient_id / "image.nii.gz"))
        label_nii = nib.load(str(out / patient.patient_id / "label.nii.gz"))
        assert image_nii.shape == label_nii.shape == phantom.image.shape
        for nii in (image_nii, label_nii):
            np.testing.assert_allclose(nii.affine, affine_ras, atol=1e-4)
            assert int(nii.header["sform_code"]) == 1 and int(nii.header["qform_code"]) == 1
        np.testing.assert_array_equal(load_nifti_volume(image_nii.get_filename()), phantom.image)
        labels = load_nifti_volume(label_nii.get_filename())
        assert labels.dtype == np.uint8
        for label in LABELS:
            assert dice(labels == label.value, phantom.labels == label.value) >= 0.99
    # PTV became Body; GTV was ignored on purpose and CTV is unknown.
    ptv = load_nifti_volume(out / "phantom_005" / "label.nii.gz")
    assert set(np.unique(ptv).tolist()) == {0, label_by_name("Body").value}
    record = next(r for r in json.loads((out / REPORT_JSON).read_text())["records"] if r["output"] == "phantom_005")
    assert record["roi_labels"] == {"PTV": label_by_name("Body").value}


def test_both_formats_and_existing_output(export, tmp_path):
    input_dir, _ = export
    report = convert_exports(input_dir, tmp_path, fmt="both", progress=False)
    assert len(report.converted) == 2
    npy = discover_patients(tmp_path / "npy")
    nifti = discover_patients(tmp_path / "nifti")
    assert [p.layout for p in npy] == [Layout.NPY] * 2 and [p.layout for p in nifti] == [Layout.NIFTI] * 2
    with pytest.raises(FileExistsError, match="overwrite"):
        convert_exports(input_dir, tmp_path, fmt="both", progress=False)
    again = convert_exports(input_dir, tmp_path, fmt="both", overwrite=True, progress=False)
    assert [r.output for r in again.converted] == ["phantom_001", "phantom_002"]
    with pytest.raises(ValueError, match="fmt"):
        convert_exports(input_dir, tmp_path / "x", fmt="dicom", progress=False)


def test_patient_with_two_series_gets_suffixes(tmp_path):
    phantom = cropped_phantom(8, 64, 5)
    input_dir = tmp_path / "in"
    for i in range(2):
        write_phantom_dicom(phantom, input_dir / f"visit{i}", root_uid=f"1.2.826.0.1.3680043.8.498.9{i}.")
    out = input_dir / "training"  # inside the input folder: not scanned
    for overwrite in (False, True):
        report = convert_exports(input_dir, out, overwrite=overwrite, progress=False)
        assert sorted(r.output for r in report.converted) == ["phantom_008_1", "phantom_008_2"]
        assert not report.skipped
    assert [p.patient_id for p in discover_patients(out)] == ["phantom_008_1", "phantom_008_2"]


def test_patient_folder_name_and_name_map(tmp_path):
    assert patient_folder_name("Rex/Smith 12:3") == "Rex_Smith_12_3"
    assert patient_folder_name("../..") == "patient"
    assert patient_folder_name("  ") == "patient"
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"Table": "Couch", "PTV": None, "Aussen": 3}))
    assert parse_name_map(["Vac Lok=1", "PTV=Body"], path) == {"Table": 2, "PTV": 3, "Aussen": 3, "Vac Lok": 1}
    with pytest.raises(ValueError, match="'Lung'"):
        parse_name_map(["x=Lung"])
    with pytest.raises(ValueError, match="label 9"):
        parse_name_map(["x=9"])
    with pytest.raises(ValueError, match="ROI name=LABEL"):
        parse_name_map(["Body"])
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="one object"):
        parse_name_map(json_file=path)


def test_convert_script_arguments(tmp_path, capsys):
    script = _script("convert_dicom_rt")
    mapping = tmp_path / "names.json"
    mapping.write_text(json.dumps({"Table": "Couch", "Aussen": 3}))
    ns = script._setup_argparser([str(tmp_path), "-od", str(tmp_path / "o"), "--name-map", str(mapping),
                                  "--name-map", "Aussen=Body", "--name-map", "PTV=skip"])
    assert ns.name_map == {"Table": 2, "Aussen": 3, "PTV": None}
    assert ns.format == "npy" and ns.output_directory == tmp_path / "o"
    with pytest.raises(SystemExit) as exc:
        script._setup_argparser([str(tmp_path), "-od", str(tmp_path / "o"), "--name-map", "PTV=Lung"])
    assert exc.value.code == 2 and "unknown label 'Lung'" in capsys.readouterr().err
    # An export without any CT: nothing converted, exit status 1, an empty report is still written.
    (tmp_path / "empty").mkdir()
    assert script.main([str(tmp_path / "empty"), "-od", str(tmp_path / "o"), "-q"]) == 1
    assert json.loads((tmp_path / "o" / REPORT_JSON).read_text())["converted"] == 0


def test_read_series_files_reads_only_the_files_given_and_names_them(export, tmp_path):
    input_dir, good = export
    files = sorted(p for p in input_dir.rglob("*") if p.is_file())
    by_series: dict[str, list[Path]] = {}
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        if ds.get("Modality") == "CT" and ds.get("PatientID") in ("phantom_001", "phantom_007"):
            by_series.setdefault(str(ds.PatientID), []).append(path)
    # The good patient's files sit among other series, other SOP classes and junk in the same folders.
    series = read_series_files(by_series["phantom_001"] + [input_dir / "export" / "README.txt"])
    phantom, affine_ras = good["phantom_001"]
    assert series.shape == phantom.image.shape
    np.testing.assert_array_equal(series.volume[0].numpy(), phantom.image)
    np.testing.assert_allclose(series.affine_ras, affine_ras)
    assert sorted(series.files) == sorted(by_series["phantom_001"])
    # Errors name the real files, never a temporary folder.
    with pytest.raises(MissingSliceError, match=r"about 1 slice\(s\) missing") as missing:
        read_series_files(by_series["phantom_007"])
    assert str(input_dir) in str(missing.value) and "vacseg-series" not in str(missing.value)
    with pytest.raises(NoSeriesError, match=r"No CT Image Storage series found in the 1 files given under"):
        read_series_files([input_dir / "export" / "README.txt"])


def test_a_structure_set_without_couch_gives_a_partly_annotated_patient(tmp_path):
    """A clinic that leaves the couch to the TPS: the patient's annotation lists Vacbag and Body only."""
    written = write_phantom_dicom(cropped_phantom(8, 64, 6), tmp_path / "export")
    rs = pydicom.dcmread(written.rtstruct_path)
    couch = next(int(r.ROINumber) for r in rs.StructureSetROISequence if r.ROIName == "Couch")
    rs.StructureSetROISequence = [r for r in rs.StructureSetROISequence if int(r.ROINumber) != couch]
    rs.ROIContourSequence = [r for r in rs.ROIContourSequence if int(r.ReferencedROINumber) != couch]
    for roi in rs.StructureSetROISequence:
        if roi.ROIName == "Body":
            roi.ROIName = "External"  # matched by the label table's aliases
    rs.save_as(written.rtstruct_path)
    report = convert_exports(tmp_path / "export", tmp_path / "out", fmt="both", progress=False)
    record = report.converted[0]
    assert record.annotated_labels == ["Vacbag", "Body"] and record.voxels["Couch"] == 0
    assert "Couch unknown" in report.table()
    for layout in ("npy", "nifti"):
        (patient,) = discover_patients(tmp_path / "out" / layout)
        assert patient.annotated == ("Vacbag", "Body") and patient.partial
    saved = json.loads((tmp_path / "out" / REPORT_JSON).read_text())
    assert saved["records"][0]["annotated_labels"] == ["Vacbag", "Body"]
