"""UID validation and sanitising before a UID becomes part of a file name.

A UID received over the network is untrusted input: ``../../etc`` or a UID with
a ``/`` must never reach :mod:`os.path`. :func:`sanitize_uid` returns the UID
only if it is a syntactically valid DICOM UID (PS3.5 9.1: digits and dots,
components without leading zeros, at most 64 characters), which by
construction cannot name a parent directory or contain a path separator.
"""

from __future__ import annotations

import re

__all__ = ["InvalidUIDError", "MAX_UID_LENGTH", "is_valid_uid", "sanitize_uid"]

MAX_UID_LENGTH = 64
_COMPONENT = r"(0|[1-9][0-9]*)"
_UID_RE = re.compile(rf"^{_COMPONENT}(\.{_COMPONENT})+$")


class InvalidUIDError(ValueError):
    """A UID is not a valid DICOM UID and cannot be used as a file name."""


def is_valid_uid(uid: object) -> bool:
    """Return True if ``uid`` is a syntactically valid DICOM UID.

    Args:
        uid: value to check; anything that is not a ``str`` is invalid.
    """
    if not isinstance(uid, str):
        return False
    return len(uid) <= MAX_UID_LENGTH and _UID_RE.fullmatch(uid) is not None


def sanitize_uid(uid: object, *, what: str = "UID") -> str:
    """Return ``uid`` as a string safe to use as a single path component.

    Trailing NUL and space padding (allowed on the wire) is stripped; nothing
    else is repaired: an invalid UID is rejected, not rewritten, so two
    different hostile values can never map to the same file.

    Args:
        uid: the UID as received (``str`` or pydicom ``UID``).
        what: name of the attribute, used in the error message (default "UID").

    Raises:
        InvalidUIDError: if ``uid`` is missing, longer than 64 characters or
            contains anything but digit components separated by single dots.
    """
    if uid is None:
        raise InvalidUIDError(f"{what} is missing.")
    text = str(uid).rstrip("\x00 ")
    if len(text) > MAX_UID_LENGTH:
        raise InvalidUIDError(
            f"{what} must be at most {MAX_UID_LENGTH} characters, got {len(text)}: {text[:80]!r}."
        )
    if _UID_RE.fullmatch(text) is None:
        raise InvalidUIDError(
            f"{what} must contain only digit components separated by dots "
            f"(no leading zeros, no empty components), got {text!r}."
        )
    return text
