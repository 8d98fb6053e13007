from __future__ import annotations

import pytest

from vacseg_monai.service.uids import InvalidUIDError, is_valid_uid, sanitize_uid


def test_valid_uid_is_returned_without_padding():
    assert sanitize_uid("1.2.840.10008.5.1.4.1.1.2\x00") == "1.2.840.10008.5.1.4.1.1.2"
    assert sanitize_uid("1.2.3 ") == "1.2.3"
    assert is_valid_uid("1.0.3")


@pytest.mark.parametrize(
    "hostile, fragment",
    [
        ("../../etc/passwd", "digit components"),
        ("1.2/../../x", "digit components"),
        ("1.2.3/4", "digit components"),
        ("..", "digit components"),
        ("1..2", "digit components"),
        ("1.02.3", "digit components"),
        (".1.2", "digit components"),
        ("1.2.", "digit components"),
        ("", "digit components"),
        ("1." + "2" * 70, "at most 64 characters"),
        ("1.2.3\\4", "digit components"),
    ],
)
def test_hostile_or_invalid_uids_are_rejected(hostile, fragment):
    with pytest.raises(InvalidUIDError, match=fragment):
        sanitize_uid(hostile, what="SeriesInstanceUID")
    assert not is_valid_uid(hostile)


def test_missing_uid_named_in_error():
    with pytest.raises(InvalidUIDError, match="SOPInstanceUID is missing"):
        sanitize_uid(None, what="SOPInstanceUID")
