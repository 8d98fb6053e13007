"""Output profiles, the label suffix and the node's dry run.

Real tools judge the files: dciodvfy (dicom3tools) their conformance, plastimatch rasterises each profile's
RT Structure Set back to masks, compared with the label map by Dice. The dry run is the real node (a
subprocess) sending to a TCP socket owned by the test that nothing may connect to.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from conftest import BUNDLE, REPO, dice
from test_rtstruct import dciodvfy_report, needs_dciodvfy, needs_plastimatch, phantom_labels, plastimatch_masks
from test_service_support import needs_dcmtk, node_process, write_banded_series
from vacseg_monai.dicom.outputs import write_outputs
from vacseg_monai.dicom.profiles import BUILTIN_PROFILES, OutputProfile, load_profile
from vacseg_monai.dicom.rtstruct import DEFAULT_SERIES_DESCRIPTION, read_rtstruct
from vacseg_monai.dicom.series import read_series
from vacseg_monai.dicom.synthetic import write_ct_series
from vacseg_monai.labels import LABELS
from vacseg_monai.service.config import build_argument_parser, config_from_namespace, parse_node_args
from vacseg_monai.service.jobs import JobState, JobStore, format_status
from vacseg_monai.testing.peers import storescu_store_all, wait_until

VALUE = {label.name: label.value for label in LABELS}
#: CT number of each structure in the test series (background -1000 HU).
HU = {"Vacbag": -850, "Couch": -300, "Body": 40}
NOTICE = " NOT FOR CLINICAL USE"
#: What each shipped profile writes: project structure -> (ROI name, RT ROI Interpreted Type, colour).
EXPECTED = {
    "generic": {
        "Vacbag": ("Vacbag", "FIXATION", (255, 170, 0)),
        "Couch": ("Couch", "SUPPORT", (0, 170, 255)),
        "Body": ("Body", "EXTERNAL", (0, 200, 80)),
    },
    "eclipse": {
        "Vacbag": ("Vacbag", "SUPPORT", (255, 170, 0)),
        "Couch": ("Couch", "SUPPORT", (0, 170, 255)),
        "Body": ("BODY", "EXTERNAL", (0, 200, 80)),
    },
    "raystation": {
        "Vacbag": ("Vacbag", "FIXATION", (255, 170, 0)),
        "Couch": ("Couch", "SUPPORT", (0, 170, 255)),
        "Body": ("External", "EXTERNAL", (0, 200, 80)),
    },
}
CUSTOM_TOML = f"""
[profile]
name = "clinic"
base = "raystation"
suffix = "{NOTICE}"
hu_to_density = [[-1000, 0.0], [0, 1.0], [1000, 1.6]]

[profile.structures.Vacbag]
name = "Immob_Vacbag"
type = "support"
color = "#FF0080"
property = "REL_ELEC_DENSITY"
value = "mean_hu"

[profile.structures.Couch]
property = "REL_MASS_DENSITY"
value = 0.55
"""


@pytest.fixture(scope="module")
def ct(tmp_path_factory):
    """(series, ct_dir, labels): the test label map on a CT whose structures have known CT numbers."""
    labels = phantom_labels()
    image = np.full(labels.shape, -1000, np.int16)
    for name, hu in HU.items():
        image[labels == VALUE[name]] = hu
    ct_dir = tmp_path_factory.mktemp("profiles") / "ct"
    write_ct_series(image, ct_dir, pixel_spacing=(0.9, 0.9), slice_thickness=2.5)
    return read_series(ct_dir), ct_dir, labels


def _written(ct, out: Path, profile) -> tuple:
    series, _, labels = ct
    rs_path, seg_path = write_outputs(labels, series, out, "both", profile=profile)
    return rs_path, seg_path, dcmread(rs_path), dcmread(seg_path)


def _rois(rs) -> list[tuple[int, str, str, tuple[int, ...]]]:
    """(ROI number, name, RT ROI Interpreted Type, colour) of each ROI of a structure set."""
    names = {int(r.ROINumber): r.ROIName for r in rs.StructureSetROISequence}
    types = {int(o.ReferencedROINumber): o.RTROIInterpretedType for o in rs.RTROIObservationsSequence}
    return [(int(c.ReferencedROINumber), names[int(c.ReferencedROINumber)], types[int(c.ReferencedROINumber)],
             tuple(int(v) for v in c.ROIDisplayColor)) for c in rs.ROIContourSequence]  # fmt: skip


def _assert_round_trip(rs_path: Path, ct, out: Path, names: dict[str, str]) -> None:
    """plastimatch rasterises every ROI back at Dice >= 0.99 against the label map (``names``: structure -> ROI)."""
    series, ct_dir, labels = ct
    theirs = plastimatch_masks(rs_path, ct_dir, out, series)
    assert sorted(theirs) == sorted(names.values())
    for structure, roi in names.items():
        truth = labels == VALUE[structure]
        score = dice(theirs[roi], truth)
        assert score >= 0.99, f"{roi}: plastimatch Dice {score:.4f}"


def _assert_clean(path: Path) -> None:
    errors, warnings = dciodvfy_report(path)
    assert errors == [], errors
    assert warnings == [], warnings  # docs/conformance.md: none expected


# --------------------------------------------------------------------------- the shipped profiles


@needs_dciodvfy
@needs_plastimatch
@pytest.mark.parametrize("name", ["generic", "eclipse", "raystation"])
def test_shipped_profile_writes_its_names_types_and_colours(ct, tmp_path, name):
    rs_path, seg_path, rs, seg = _written(ct, tmp_path / "out", name)
    expected = EXPECTED[name]
    assert _rois(rs) == [(VALUE[s], *expected[s]) for s in ("Vacbag", "Couch", "Body")]
    assert all("ROIPhysicalPropertiesSequence" not in o for o in rs.RTROIObservationsSequence)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == [expected[s][0] for s in ("Vacbag", "Couch", "Body")]
    assert rs.StructureSetLabel == "VACSEG AUTO" and rs.SeriesDescription == DEFAULT_SERIES_DESCRIPTION
    _assert_clean(rs_path)
    _assert_clean(seg_path)
    _assert_round_trip(rs_path, ct, tmp_path / "pm", {s: expected[s][0] for s in expected})


def test_no_profile_is_the_generic_profile_is_the_label_table(ct, tmp_path):
    _, _, rs, seg = _written(ct, tmp_path / "none", None)
    assert _rois(rs) == [(label.value, label.name, label.rt_roi_type.value, label.color) for label in LABELS]
    assert BUILTIN_PROFILES["generic"].apply() == list(LABELS)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == [label.name for label in LABELS]


# --------------------------------------------------------------------------- a custom profile, physical properties


@needs_dciodvfy
@needs_plastimatch
def test_custom_toml_profile_with_physical_properties_and_suffix(ct, tmp_path):
    path = tmp_path / "clinic.toml"
    path.write_text(CUSTOM_TOML)
    rs_path, seg_path, rs, seg = _written(ct, tmp_path / "out", path)

    names = {"Vacbag": "Immob_Vacbag" + NOTICE, "Couch": "Couch" + NOTICE, "Body": "External" + NOTICE}
    assert _rois(rs) == [
        (1, names["Vacbag"], "SUPPORT", (255, 0, 128)),
        (2, names["Couch"], "SUPPORT", (0, 170, 255)),  # the base profile's type and colour
        (3, names["Body"], "EXTERNAL", (0, 200, 80)),
    ]
    vacbag, couch, body = rs.RTROIObservationsSequence
    (measured,) = vacbag.ROIPhysicalPropertiesSequence
    assert measured.ROIPhysicalProperty == "REL_ELEC_DENSITY"
    assert float(measured.ROIPhysicalPropertyValue) == pytest.approx(0.15)  # -850 HU on [[-1000, 0], [0, 1]]
    assert "-850.0 HU measured inside the structure" in vacbag.ROIObservationDescription
    (given,) = couch.ROIPhysicalPropertiesSequence
    assert (given.ROIPhysicalProperty, float(given.ROIPhysicalPropertyValue)) == ("REL_MASS_DENSITY", 0.55)
    assert "set by the output profile" in couch.ROIObservationDescription
    assert "ROIPhysicalPropertiesSequence" not in body

    # The suffix is said where a planner sees the structure set, and on the SEG.
    assert rs.StructureSetLabel == "NOT FOR CLINICAL"
    assert rs.StructureSetName == "NOT FOR CLINICAL USE - VACSEG AUTO"
    assert rs.SeriesDescription.startswith("NOT FOR CLINICAL USE - ")
    assert [s.SegmentLabel for s in seg.SegmentSequence] == list(names.values())
    assert seg.SeriesDescription.startswith("NOT FOR CLINICAL USE - ")
    assert seg.ContentDescription.startswith("NOT FOR CLINICAL USE - ")
    _assert_clean(rs_path)
    _assert_clean(seg_path)
    _assert_round_trip(rs_path, ct, tmp_path / "pm", names)


def test_measured_structure_without_voxels_gets_no_property(ct):
    series, _, labels = ct
    profile = load_profile({"hu_to_density": [[-1000, 0.0], [0, 1.0]],
                            "structures": {"Vacbag": {"property": "REL_MASS_DENSITY", "value": "mean_hu"}}})
    empty = np.where(labels == VALUE["Vacbag"], 0, labels)
    assert profile.physical_properties(empty, series.volume[0].numpy()) == {}
    props = profile.physical_properties(labels, series.volume[0].numpy())
    assert list(props) == [VALUE["Vacbag"]] and props[1].value == pytest.approx(0.15) and props[1].mean_hu == -850.0
    with pytest.raises(ValueError, match="measures its REL_MASS_DENSITY from the CT"):
        profile.physical_properties(labels, None)


# --------------------------------------------------------------------------- the label suffix


def test_label_suffix_on_every_name_and_its_limits():
    table = load_profile("raystation", label_suffix=NOTICE).apply()
    assert [label.name for label in table] == ["Vacbag" + NOTICE, "Couch" + NOTICE, "External" + NOTICE]
    assert [label.value for label in table] == [1, 2, 3]
    # The review policy's mark goes before the suffix.
    marked = load_profile("generic", label_suffix=NOTICE).apply(marks={1: " CHECK"})
    assert marked[0].name == "Vacbag CHECK" + NOTICE and marked[1].name == "Couch" + NOTICE
    with pytest.raises(ValueError, match=r"'Vacbag X+' of Vacbag has 65 characters, more than the 64"):
        load_profile("raystation", label_suffix=" " + "X" * 58)
    # Eclipse keeps 16 characters of a structure ID: the long notice does not fit, a short one does.
    with pytest.raises(ValueError, match=r"profile 'eclipse': ROI name 'Vacbag NOT FOR CLINICAL USE' of Vacbag has 27 "
                                         r"characters, more than the 16 this profile allows"):
        load_profile("eclipse", label_suffix=NOTICE)
    assert [label.name for label in load_profile("eclipse", label_suffix=" NFCU").apply()] == [
        "Vacbag NFCU", "Couch NFCU", "BODY NFCU"]
    with pytest.raises(ValueError, match="without a backslash"):
        load_profile("generic", label_suffix=" A\\B")


# --------------------------------------------------------------------------- bad profiles


@pytest.mark.parametrize(
    "body, message",
    [
        ("[profile.structures.Lung]\nname = 'Lung'", r"unknown structure 'Lung'; the structures are \['Body', 'Couch', 'Vacbag'\]"),
        ("[profile.structures.Couch]\ntype = 'TABLE'", r"Couch: `type` must be one of \['EXTERNAL', .*got 'TABLE'"),
        ("[profile.structures.Body]\ncolor = [0, 256, 0]", r"Body: `color` must be three integers in \[0, 255\] or '#rrggbb', got \[0, 256, 0\]"),
        ("[profile.structures.Body]\ncolor = '#12345'", r"Body: `color` must be \[r, g, b\] or '#rrggbb', got '#12345'"),
        ("[profile.structures.Body]\ncolr = [1, 2, 3]", r"Body: unknown key\(s\) \['colr'\]"),
        ("[profile.structures.Vacbag]\nproperty = 'REL_ELEC_DENSITY'\nvalue = 'mean_hu'", r"Vacbag measures its REL_ELEC_DENSITY from the mean HU, which needs the profile's `hu_to_density`"),
        ("[profile.structures.Vacbag]\nvalue = 0.1", r"Vacbag: `value` needs a `property`"),
        ("[profile.structures.Vacbag]\nproperty = 'DENSITY'\nvalue = 0.1", r"Vacbag: `property` must be one of \['REL_ELEC_DENSITY', 'REL_MASS_DENSITY'\], got 'DENSITY'"),
        ("[profile.structures.Vacbag]\nproperty = 'REL_MASS_DENSITY'\nvalue = -0.1", r"Vacbag: `value` must be a number >= 0 or 'mean_hu', got -0.1"),
        ("[profile.structures.Couch]\nname = 'vacbag'", r"Couch and Vacbag are both named 'vacbag'"),
        ("[profile.structures.Body]\nname = 'A\\\\B'", r"Body `name` must be printable, non-empty and without a backslash"),
        ("base = 'monaco'", r"`base` must be one of \['eclipse', 'generic', 'raystation'\], got 'monaco'"),
        ("suffx = ' X'", r"unknown key\(s\) \['suffx'\]"),
        ("hu_to_density = [[0, 1.0], [-1000, 0.0]]", r"`hu_to_density` needs strictly increasing HU"),
        ("max_name_length = 8\n[profile.structures.Body]\nname = 'BodyOutline'", r"ROI name 'BodyOutline' of Body has 11 characters, more than the 8"),
    ],
)
def test_bad_profile_file_names_the_file_and_the_problem(tmp_path, body, message):
    path = tmp_path / "bad.toml"
    path.write_text("[profile]\n" + body + "\n")
    with pytest.raises(ValueError, match=rf"profile file {re.escape(str(path))}: .*{message}"):
        load_profile(path)


def test_unknown_profile_missing_table_and_bad_toml(tmp_path):
    with pytest.raises(ValueError, match=r"Unknown output profile 'monaco': give one of \['eclipse', 'generic', 'raystation'\]"):
        load_profile("monaco")
    with pytest.raises(ValueError, match="Cannot read output profile file .*missing.toml"):
        load_profile(tmp_path / "missing.toml")
    path = tmp_path / "no_table.toml"
    path.write_text("[structures.Vacbag]\nname = 'X'\n")
    with pytest.raises(ValueError, match=rf"Output profile file {re.escape(str(path))} has no \[profile\] table \(found keys \['structures'\]\)"):
        load_profile(path)
    path.write_text("[profile\n")
    with pytest.raises(ValueError, match=rf"Output profile file {re.escape(str(path))} is not valid TOML"):
        load_profile(path)
    with pytest.raises(ValueError, match="unknown structure 'Lung'"):
        OutputProfile(name="direct", structures={"Lung": BUILTIN_PROFILES["eclipse"].structures["Body"]})


# --------------------------------------------------------------------------- node options


def test_node_options_and_config_file_profile(tmp_path, capsys):
    config, _ = parse_node_args(["--profile", "eclipse", "--label-suffix", " NFCU", "--dry-run"])
    assert config.profile.name == "eclipse" and config.dry_run is True
    assert [label.name for label in config.profile.apply()] == ["Vacbag NFCU", "Couch NFCU", "BODY NFCU"]
    assert parse_node_args([])[0].profile.name == "generic" and parse_node_args([])[0].dry_run is False

    toml = tmp_path / "node.toml"
    toml.write_text("dry_run = true\nlabel_suffix = ' TEST'\n" + CUSTOM_TOML.replace(f'suffix = "{NOTICE}"', ""))
    config, _ = parse_node_args(["--config", str(toml)])
    assert config.profile.name == "clinic" and config.dry_run is True
    assert [label.name for label in config.profile.apply()] == ["Immob_Vacbag TEST", "Couch TEST", "External TEST"]
    # A profile named on the command line wins over the file's table; a profile file is found beside the config.
    (tmp_path / "clinic.toml").write_text(CUSTOM_TOML)
    toml.write_text("profile = 'clinic.toml'\n")
    assert parse_node_args(["--config", str(toml)])[0].profile.source == f"profile file {tmp_path / 'clinic.toml'}"
    assert parse_node_args(["--config", str(toml), "--profile", "raystation"])[0].profile.name == "raystation"

    toml.write_text("[profile]\n[profile.structures.Body]\ncolor = 'green'\n")
    with pytest.raises(ValueError, match=rf"config file {re.escape(str(toml))} \[profile\]: Body: `color` must be"):
        config_from_namespace(build_argument_parser().parse_args(["--config", str(toml)]))
    with pytest.raises(SystemExit):
        parse_node_args(["--profile", "eclipse", "--label-suffix", NOTICE])
    assert "more than the 16 this profile allows" in capsys.readouterr().err
    # The review mark of send-marked must fit as well: refused at start, not when a job is written.
    with pytest.raises(SystemExit):
        parse_node_args(["--profile", "eclipse", "--label-suffix", " NFCU", "--review-policy", "send-marked"])
    assert "'Vacbag CHECK NFCU' of Vacbag has 17 characters, more than the 16" in capsys.readouterr().err
    assert parse_node_args(["--profile", "eclipse", "--review-policy", "send-marked"])[0].profile.name == "eclipse"


# --------------------------------------------------------------------------- the bundle


def test_bundle_run_inference_takes_output_profile_and_label_suffix(tmp_path):
    from test_inference import INFERENCE_JSON, METADATA_JSON, TINY, _tiny_checkpoint

    files = write_banded_series(tmp_path / "ct")
    ckpt = _tiny_checkpoint(tmp_path / "model.pt", wrap=True)
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "monai.bundle", "run", "inference",
        "--meta_file", str(METADATA_JSON), "--config_file", str(INFERENCE_JSON), "--bundle_root", str(BUNDLE),
        "--input", str(files[0].parent), "--output_dir", str(out), "--ckpt_path", str(ckpt), "--device", "cpu",
        "--output_profile", "raystation", "--label_suffix", "_TEST",
        *(arg for key, value in TINY.items() for arg in (f"--{key}", repr(value))),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, check=False, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (rtstruct,) = out.glob("RS.*.dcm")
    assert [(n, name, kind) for n, name, kind, _ in _rois(dcmread(rtstruct))] == [
        (1, "Vacbag_TEST", "FIXATION"), (2, "Couch_TEST", "SUPPORT"), (3, "External_TEST", "EXTERNAL")]


# --------------------------------------------------------------------------- dry run on the node


def _band_truth(series) -> np.ndarray:
    """The label map test_service_support.BandProcessor draws on a banded series."""
    hu = series.volume[0].numpy()
    truth = np.zeros(hu.shape, np.uint8)
    truth[(hu > -100) & (hu < 100)] = VALUE["Body"]
    truth[(hu > -900) & (hu < -600)] = VALUE["Vacbag"]
    truth[(hu > 200) & (hu < 500)] = VALUE["Couch"]
    return truth


@needs_dcmtk
def test_dry_run_keeps_the_rtstruct_and_never_connects_to_the_destination(tmp_path):
    trap = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # the "destination": any connection fails the test
    trap.bind(("127.0.0.1", 0))
    trap.listen(8)
    trap.setblocking(False)
    files = write_banded_series(tmp_path / "ct")
    out = tmp_path / "node"
    node = node_process(out, tmp_path / "node.log", [
        "--processor", "test_service_support:BandProcessor", "--destination", f"127.0.0.1:{trap.getsockname()[1]}:TPS",
        "--export-series", "--dry-run", "--profile", "eclipse", "--label-suffix", " TEST",
    ])  # fmt: skip
    try:
        node.start()
        storescu_store_all(node.port, files)
        store = JobStore(out)
        job = wait_until(lambda: next((j for j in store.jobs() if j.state in (JobState.DONE, JobState.FAILED)), None),
                         60, "the job to finish")  # fmt: skip
        assert job.state is JobState.DONE, job.reason
        assert job.reason == "dry run: not sent" and job.history[-1]["reason"] == "dry run: not sent"
        assert [h["state"] for h in job.history] == ["received", "queued", "inferring", "done"]
        (rtstruct,) = (store.job_dir(job.job_id) / "output").glob("RS.*.dcm")
        assert job.outputs == [f"output/{rtstruct.name}"]
        assert "dry run: not sent" in format_status(store.jobs())
        assert "DRY RUN: results are kept in the job folders and never sent" in node.log()
    finally:
        node.stop()
    try:
        with pytest.raises(BlockingIOError):  # nothing is waiting to be accepted: nobody connected
            trap.accept()
    finally:
        trap.close()
    rs = dcmread(rtstruct)
    assert [(name, kind) for _, name, kind, _ in _rois(rs)] == [
        ("Vacbag TEST", "SUPPORT"), ("Couch TEST", "SUPPORT"), ("BODY TEST", "EXTERNAL")]
    series = read_series(tmp_path / "ct")
    ours = read_rtstruct(rtstruct, series, name_map={"Vacbag TEST": 1, "Couch TEST": 2, "BODY TEST": 3})
    truth = _band_truth(series)
    for name, value in VALUE.items():
        assert dice(ours == value, truth == value) == 1.0, name
    if shutil.which("dciodvfy"):
        _assert_clean(rtstruct)


# --------------------------------------------------------------------------- corrections of profiled structure sets


def test_corrections_of_a_suffixed_structure_set_are_read_with_the_profile_names(ct, tmp_path):
    from vacseg_monai.edits import compare_structure_sets

    series, _, labels = ct
    profile = load_profile("raystation", label_suffix=" TRIAL")  # a suffix of the clinic's: only the profile knows it
    (node_file,) = write_outputs(labels, series, tmp_path / "node", "rtstruct", profile=profile)
    corrected = dcmread(node_file)  # the planner renamed nothing and trimmed the Vacbag's first contour
    first = corrected.ROIContourSequence[0]
    first.ContourSequence = first.ContourSequence[1:]
    corrected.save_as(tmp_path / "corrected.dcm")
    with pytest.raises(ValueError, match="none of its ROIs .* matches a label"):
        compare_structure_sets(node_file, tmp_path / "corrected.dcm", series)
    names = profile.name_map(("", " CHECK"))
    assert names["External TRIAL"] == names["External CHECK TRIAL"] == names["External"] == VALUE["Body"]
    result = compare_structure_sets(node_file, tmp_path / "corrected.dcm", series, name_map=names)
    dices = {roi.as_dict()["roi"]: roi.as_dict()["dice"] for roi in result.measure.rois}
    assert dices["Couch"] == dices["Body"] == 1.0
    assert 0.5 < dices["Vacbag"] < 1.0


def test_write_dicom_rt_script_takes_a_profile_and_a_suffix(ct, tmp_path, capsys):
    import importlib.util

    import nibabel as nib

    series, ct_dir, labels = ct
    nii = tmp_path / "labels.nii.gz"
    nib.save(nib.Nifti1Image(labels, series.affine_ras), str(nii))
    spec = importlib.util.spec_from_file_location("write_dicom_rt", REPO / "scripts" / "write_dicom_rt.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "out"
    assert script.main(["--series", str(ct_dir), "--labels", str(nii), "--out", str(out), "--profile", "eclipse",
                        "--label-suffix", "_V", "-q"]) == 0
    (rs_path,) = out.glob("RS.*.dcm")
    assert [(name, kind) for _, name, kind, _ in _rois(dcmread(rs_path))] == [
        ("Vacbag_V", "SUPPORT"), ("Couch_V", "SUPPORT"), ("BODY_V", "EXTERNAL")]
    with pytest.raises(SystemExit):
        script.main(["--series", str(ct_dir), "--labels", str(nii), "--out", str(out), "--profile", "monaco"])
    assert "--profile: Unknown output profile 'monaco'" in capsys.readouterr().err
