"""Which DICOM objects a label map becomes: one choice shared by the bundle, the node and the CLIs."""

from __future__ import annotations

import enum

__all__ = ["OutputKind"]


class OutputKind(str, enum.Enum):
    """DICOM objects written for a label map on a DICOM series (``--output`` / ``--format``)."""

    RTSTRUCT = "rtstruct"
    SEG = "seg"
    BOTH = "both"
    NONE = "none"

    @classmethod
    def coerce(cls, value: str | OutputKind) -> OutputKind:
        """Return ``value`` as an :class:`OutputKind` (case-insensitive).

        Raises:
            ValueError: naming the accepted values.
        """
        try:
            return cls(str(value.value if isinstance(value, cls) else value).lower())
        except ValueError:
            raise ValueError(f"`output` must be one of {[k.value for k in cls]}, got {value!r}.") from None

    @property
    def rtstruct(self) -> bool:
        """True when an RT Structure Set is written."""
        return self in (OutputKind.RTSTRUCT, OutputKind.BOTH)

    @property
    def seg(self) -> bool:
        """True when a DICOM-SEG is written."""
        return self in (OutputKind.SEG, OutputKind.BOTH)
