"""The node behind a real Orthanc (Debian's 1.10), on 127.0.0.1, with DCMTK storescu as the scanner."""

from __future__ import annotations

import pytest
from pydicom import dcmread

from test_service_support import needs_dcmtk, write_series
from vacseg_monai.testing.orthanc import OrthancError, OrthancProcess, orthanc_available
from vacseg_monai.testing.peers import echo_ok, echoscu, storescu_store_all

pytestmark = [needs_dcmtk, pytest.mark.skipif(not orthanc_available(), reason="Orthanc not installed")]


def test_orthanc_process_answers_stores_and_stops(tmp_path):
    files = write_series(tmp_path / "ct", 3)
    first = dcmread(files[0])
    with OrthancProcess(tmp_path / "orthanc", aet="PACS") as orthanc:
        echo = echoscu(orthanc.dicom_port, aec="PACS")
        assert "Received Echo Response (Success)" in echo.stderr, echo.stderr
        storescu_store_all(orthanc.dicom_port, files, aec="PACS")
        rest = orthanc.rest
        assert len(rest.instances()) == 3 and len(rest.series()) == 1 and len(rest.studies()) == 1
        (series,) = rest.series_by_modality("CT")
        assert series["MainDicomTags"]["SeriesInstanceUID"] == str(first.SeriesInstanceUID)
        tags = rest.simplified_tags(series["Instances"][0])
        assert tags["StudyInstanceUID"] == str(first.StudyInstanceUID) and tags["Modality"] == "CT"
        assert len([p for p in (tmp_path / "orthanc" / "storage").rglob("*") if p.is_file()]) == 3
        assert orthanc.config["SyncStorageArea"] is True and orthanc.config["RemoteAccessAllowed"] is False
        with pytest.raises(OrthancError, match=r"^Orthanc GET /series/no-such-id failed with HTTP 404"):
            rest.series_info("no-such-id")
    assert orthanc.proc.poll() == 0
    assert not echo_ok(orthanc.dicom_port, "PACS")
    assert "Orthanc has stopped" in orthanc.log()
