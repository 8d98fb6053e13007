"""Output profiles: how the structures are named, typed and coloured for a given planning system.

The label table (:mod:`vacseg_monai.labels`) holds the project's own names,
colours and RT ROI Interpreted Types. A planning system may want others: Eclipse
counts only SUPPORT structures outside the body in the dose calculation, clinics
following AAPM TG-263 name the body outline ``External``. An :class:`OutputProfile`
says, per structure of the label table:

- the ROI name (and SEG segment label),
- the RT ROI Interpreted Type,
- the display colour,
- optionally a physical property written into the ROI's RT ROI Observation
  (``ROIPhysicalPropertiesSequence``): a relative electron density
  (``REL_ELEC_DENSITY``) or a relative mass density (``REL_MASS_DENSITY``), either a
  value given by the profile or one converted from the mean HU measured inside the
  structure through the profile's HU-to-density table (the measured mean HU is
  written into the ROI Observation Description);

and, for the whole profile, a suffix appended to every name (``" NOT FOR CLINICAL
USE"`` while a clinic validates the node) and the longest name the planning
system keeps.

Three profiles ship (:data:`BUILTIN_PROFILES`): ``generic`` (the label table as it
is), ``eclipse`` and ``raystation``; ``docs/profiles.md`` says what each changes and
why. A custom profile is a ``[profile]`` table in a TOML file
(:func:`load_profile`, :func:`profile_from_mapping`).
"""

from __future__ import annotations

import enum
import logging
import math
import re
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from vacseg_monai.labels import LABELS, Label, RTROIInterpretedType
from vacseg_monai.options import load_toml

__all__ = [
    "BUILTIN_PROFILES",
    "DEFAULT_PROFILE",
    "LO_MAX",
    "MEAN_HU",
    "OutputProfile",
    "PhysicalProperty",
    "RoiPhysicalProperty",
    "StructureStyle",
    "load_profile",
    "profile_from_mapping",
]

logger = logging.getLogger(__name__)

#: Longest value of a DICOM LO (ROI Name, Segment Label).
LO_MAX = 64
#: ``value`` of a physical property measured from the CT: the mean HU inside the structure, converted.
MEAN_HU = "mean_hu"
#: The profile used when none is named.
DEFAULT_PROFILE = "generic"

_HEX_COLOUR = re.compile(r"#?([0-9a-fA-F]{6})")
_PROFILE_KEYS = frozenset({"name", "base", "description", "suffix", "max_name_length", "hu_to_density", "structures"})
_STRUCTURE_KEYS = frozenset({"name", "type", "color", "colour", "property", "value"})


class PhysicalProperty(str, enum.Enum):
    """ROI Physical Property (3006,00B2) defined terms this project writes (PS3.3 C.8.8.8)."""

    REL_ELEC_DENSITY = "REL_ELEC_DENSITY"
    REL_MASS_DENSITY = "REL_MASS_DENSITY"


@dataclass(frozen=True)
class StructureStyle:
    """How one structure of the label table is written.

    Args:
        name: ROI name / segment label (before the profile's suffix).
        rt_roi_type: RT ROI Interpreted Type.
        color: display colour, 8-bit RGB.
        physical_property: the property written into the ROI's observation (default None: none).
        physical_value: its value; None means measured (:data:`MEAN_HU`, converted through the
            profile's HU-to-density table). Ignored without ``physical_property`` (default None).
    """

    name: str
    rt_roi_type: RTROIInterpretedType
    color: tuple[int, int, int]
    physical_property: PhysicalProperty | None = None
    physical_value: float | None = None

    @property
    def measured(self) -> bool:
        """True when the physical property is converted from the mean HU inside the structure."""
        return self.physical_property is not None and self.physical_value is None


@dataclass(frozen=True)
class RoiPhysicalProperty:
    """One ROI Physical Properties Sequence item, as written.

    Args:
        property: the ROI Physical Property.
        value: the ROI Physical Property Value.
        mean_hu: the mean HU measured inside the structure when the value was converted from it
            (default None: the value is the profile's).
    """

    property: PhysicalProperty
    value: float
    mean_hu: float | None = None

    def note(self) -> str:
        """A line for the ROI Observation Description saying where the value came from."""
        if self.mean_hu is None:
            return f"{self.property.value} {self.value:g} set by the output profile"
        return (f"{self.property.value} {self.value:g} converted from the mean CT number "
                f"{self.mean_hu:.1f} HU measured inside the structure")


def _style_from_label(label: Label) -> StructureStyle:
    return StructureStyle(name=label.name, rt_roi_type=label.rt_roi_type, color=label.color)


@dataclass(frozen=True)
class OutputProfile:
    """Names, types, colours and physical properties of the written structures.

    Args:
        name: the profile's name (shown in logs and errors).
        structures: project label name (``"Vacbag"``, ...) -> its style; labels not listed keep the label table's.
        suffix: appended to every ROI name and segment label, e.g. ``" NOT FOR CLINICAL USE"`` (default "").
        max_name_length: longest name, suffix included, the planning system keeps (default 64, DICOM LO).
        hu_to_density: ``((hu, density), ...)`` with increasing HU: how a measured mean HU becomes a
            density (linear between points, clipped at the ends); required when a structure measures
            its value (default empty).
        description: one line saying what the profile is for (default "").
        source: where the profile came from, for error messages (default: ``profile '<name>'``).

    Raises:
        ValueError: naming the profile and the structure for an unknown structure, a name that is empty,
            has a backslash or is too long with the suffix, duplicate names, a bad colour, a measured value
            without ``hu_to_density``, or a bad ``hu_to_density``.
    """

    name: str
    structures: Mapping[str, StructureStyle] = field(default_factory=dict)
    suffix: str = ""
    max_name_length: int = LO_MAX
    hu_to_density: tuple[tuple[float, float], ...] = ()
    description: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "structures", types.MappingProxyType(dict(self.structures)))
        object.__setattr__(self, "source", self.source or f"profile {self.name!r}")
        _check_profile(self)

    def __reduce__(self) -> tuple:
        # Rebuilt through __init__ (the read-only structures view cannot be pickled): the node hands it to its worker.
        return (type(self), (self.name, dict(self.structures), self.suffix, self.max_name_length, self.hu_to_density,
                             self.description, self.source))

    def style(self, label: Label) -> StructureStyle:
        """The style of ``label``: the profile's, or the label table's own when the profile does not list it."""
        return self.structures.get(label.name) or _style_from_label(label)

    def with_suffix(self, suffix: str | None) -> OutputProfile:
        """This profile with another suffix (None keeps the profile's own).

        Raises:
            ValueError: when a name with the new suffix is too long (naming the profile and the name).
        """
        if suffix is None or suffix == self.suffix:
            return self
        return replace(self, suffix=str(suffix))

    def apply(self, label_table: Sequence[Label] = LABELS, marks: Mapping[int, str] | None = None) -> list[Label]:
        """The label table as this profile writes it: name (+ mark) + suffix, type and colour per label.

        Args:
            label_table: the project's labels (default :data:`~vacseg_monai.labels.LABELS`).
            marks: label value -> text put between the name and the suffix, e.g. ``" CHECK"`` for a
                structure the quality score flagged (default None).

        Raises:
            ValueError: when a marked name is longer than :attr:`max_name_length`.
        """
        table = []
        for label in label_table:
            style = self.style(label)
            name = style.name + (marks or {}).get(label.value, "") + self.suffix
            if len(name) > self.max_name_length:
                raise ValueError(
                    f"{self.source}: ROI name {name!r} of {label.name} has {len(name)} characters, more than the "
                    f"{self.max_name_length} this profile allows; use a shorter suffix or name."
                )
            table.append(replace(label, name=name, color=style.color, rt_roi_type=style.rt_roi_type))
        return table

    def name_map(self, marks: Sequence[str] = ("",), label_table: Sequence[Label] = LABELS) -> dict[str, int]:
        """ROI name -> label value for every name this profile writes, with and without its suffix.

        What :func:`vacseg_monai.dicom.rtstruct.read_rtstruct_contents` needs to read the node's own
        structure sets (and their corrections) back when the names are not the label table's.

        Args:
            marks: the marks a name may carry before the suffix (default: none), e.g. ``("", " CHECK")``.
            label_table: the project's labels (default :data:`~vacseg_monai.labels.LABELS`).
        """
        return {
            self.style(label).name + mark + suffix: label.value
            for label in label_table for mark in marks for suffix in dict.fromkeys((self.suffix, ""))
        }

    def physical_properties(
        self, label_map: np.ndarray, hu: np.ndarray | None, label_table: Sequence[Label] = LABELS
    ) -> dict[int, RoiPhysicalProperty]:
        """The physical property of every structure that has one, measured where the profile says so.

        Args:
            label_map: the label map ``(rows, cols, n)``.
            hu: the CT in HU on the same grid, or None when nothing is measured.
            label_table: the project's labels (default :data:`~vacseg_monai.labels.LABELS`).

        Returns:
            label value -> its property; a measured structure without voxels gets none (logged).

        Raises:
            ValueError: when a structure is measured but ``hu`` is None or not on the label map's grid.
        """
        result: dict[int, RoiPhysicalProperty] = {}
        for label in label_table:
            style = self.style(label)
            if style.physical_property is None:
                continue
            if not style.measured:
                result[label.value] = RoiPhysicalProperty(style.physical_property, float(style.physical_value))
                continue
            if hu is None or np.shape(hu) != np.shape(label_map):
                raise ValueError(
                    f"{self.source}: {label.name} measures its {style.physical_property.value} from the CT, but the "
                    f"CT given has shape {None if hu is None else np.shape(hu)}, not the label map's {np.shape(label_map)}."
                )
            inside = label_map == label.value
            if not inside.any():
                logger.info("%s: %s has no voxels; no %s written.", self.source, label.name,
                            style.physical_property.value)
                continue
            mean_hu = float(np.asarray(hu, dtype=np.float64)[inside].mean())
            points = np.asarray(self.hu_to_density, dtype=np.float64)
            value = float(np.interp(mean_hu, points[:, 0], points[:, 1]))
            result[label.value] = RoiPhysicalProperty(style.physical_property, round(value, 4), mean_hu)
        return result


def _check_profile(profile: OutputProfile) -> None:
    """Validate a profile; every message starts with its source."""
    where = profile.source
    known = {label.name for label in LABELS}
    if not 1 <= int(profile.max_name_length) <= LO_MAX:
        raise ValueError(f"{where}: `max_name_length` must be in [1, {LO_MAX}], got {profile.max_name_length!r}.")
    if "\\" in profile.suffix or not profile.suffix.isprintable():
        raise ValueError(f"{where}: `suffix` must be printable text without a backslash, got {profile.suffix!r}.")
    unknown = sorted(set(profile.structures) - known)
    if unknown:
        raise ValueError(f"{where}: unknown structure {unknown[0]!r}; the structures are {sorted(known)}.")
    names: dict[str, str] = {}
    for label in LABELS:
        structure, style = label.name, profile.style(label)
        name = style.name
        if not name.strip() or "\\" in name or not name.isprintable():
            raise ValueError(f"{where}: {structure} `name` must be printable, non-empty and without a backslash, "
                             f"got {name!r}.")
        if len(name + profile.suffix) > profile.max_name_length:
            raise ValueError(
                f"{where}: ROI name {name + profile.suffix!r} of {structure} has {len(name + profile.suffix)} "
                f"characters, more than the {profile.max_name_length} this profile allows"
                + (f" (suffix {profile.suffix!r}); use a shorter suffix." if profile.suffix else ".")
            )
        if name.lower() in names:
            raise ValueError(f"{where}: {structure} and {names[name.lower()]} are both named {name!r}.")
        names[name.lower()] = structure
        if len(style.color) != 3 or not all(isinstance(c, int) and 0 <= c <= 255 for c in style.color):
            raise ValueError(f"{where}: {structure} `color` must be three integers in [0, 255], got {style.color!r}.")
        if style.physical_value is not None and not (math.isfinite(style.physical_value) and style.physical_value >= 0):
            raise ValueError(f"{where}: {structure} `value` must be a finite number >= 0 or {MEAN_HU!r}, "
                             f"got {style.physical_value!r}.")
        if style.measured and not profile.hu_to_density:
            raise ValueError(f"{where}: {structure} measures its {style.physical_property.value} from the mean HU, "
                             "which needs the profile's `hu_to_density` table ([[hu, density], ...]).")
    _check_hu_to_density(profile.hu_to_density, where)


def _check_hu_to_density(points: Sequence[Sequence[float]], where: str) -> None:
    if not points:
        return
    try:
        array = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError):
        array = np.zeros((0,))
    if array.ndim != 2 or array.shape[1] != 2 or len(array) < 2 or not np.all(np.isfinite(array)):
        raise ValueError(f"{where}: `hu_to_density` must be at least two [hu, density] pairs of numbers, "
                         f"got {points!r}.")
    if np.any(np.diff(array[:, 0]) <= 0) or np.any(array[:, 1] < 0):
        raise ValueError(f"{where}: `hu_to_density` needs strictly increasing HU and densities >= 0, got {points!r}.")


# --------------------------------------------------------------------------- the shipped profiles


def _generic() -> OutputProfile:
    return OutputProfile(name="generic", description="the project's names, colours and ROI types (label table)")


def _eclipse() -> OutputProfile:
    by_name = {label.name: label for label in LABELS}
    return OutputProfile(
        name="eclipse",
        description="Eclipse: devices as SUPPORT (counted outside the body), body as BODY/EXTERNAL, 16-character IDs",
        structures={
            "Vacbag": StructureStyle("Vacbag", RTROIInterpretedType.SUPPORT, by_name["Vacbag"].color),
            "Couch": StructureStyle("Couch", RTROIInterpretedType.SUPPORT, by_name["Couch"].color),
            "Body": StructureStyle("BODY", RTROIInterpretedType.EXTERNAL, by_name["Body"].color),
        },
        max_name_length=16,
    )


def _raystation() -> OutputProfile:
    by_name = {label.name: label for label in LABELS}
    return OutputProfile(
        name="raystation",
        description="RayStation: TG-263-style names (External), Fixation/Support/External ROI types",
        structures={
            "Vacbag": StructureStyle("Vacbag", RTROIInterpretedType.FIXATION, by_name["Vacbag"].color),
            "Couch": StructureStyle("Couch", RTROIInterpretedType.SUPPORT, by_name["Couch"].color),
            "Body": StructureStyle("External", RTROIInterpretedType.EXTERNAL, by_name["Body"].color),
        },
        max_name_length=LO_MAX,
    )


#: The shipped profiles by name (read-only).
BUILTIN_PROFILES: Mapping[str, OutputProfile] = types.MappingProxyType(
    {profile.name: profile for profile in (_generic(), _eclipse(), _raystation())}
)


# --------------------------------------------------------------------------- loading


def load_profile(spec: str | Path | Mapping[str, Any] | OutputProfile | None = None, *,
                 label_suffix: str | None = None) -> OutputProfile:
    """Return the profile ``spec`` names, with ``label_suffix`` replacing its suffix when given.

    Args:
        spec: a shipped profile's name (``generic``, ``eclipse``, ``raystation``), a TOML file holding a
            ``[profile]`` table, the table itself (a mapping), a profile, or None (:data:`DEFAULT_PROFILE`).
        label_suffix: the suffix of every name, e.g. ``" NOT FOR CLINICAL USE"`` (default None: the profile's).

    Raises:
        ValueError: for an unknown name, an unreadable file, a file without ``[profile]``, or any bad value
            (the message names the profile or the file and the key).
    """
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        spec = DEFAULT_PROFILE
    if isinstance(spec, OutputProfile):
        profile = spec
    elif isinstance(spec, Mapping):
        profile = profile_from_mapping(spec, "the [profile] table")
    elif str(spec) in BUILTIN_PROFILES:
        profile = BUILTIN_PROFILES[str(spec)]
    elif str(spec).endswith(".toml") or Path(spec).is_file():
        profile = _profile_from_file(Path(spec))
    else:
        raise ValueError(f"Unknown output profile {str(spec)!r}: give one of {sorted(BUILTIN_PROFILES)} "
                         "or a TOML file with a [profile] table.")
    try:
        return profile.with_suffix(label_suffix)
    except ValueError as exc:
        raise ValueError(f"--label-suffix {label_suffix!r}: {exc}") from None


def _profile_from_file(path: Path) -> OutputProfile:
    data = load_toml(path, "Output profile file")
    table = data.get("profile")
    if not isinstance(table, Mapping):
        raise ValueError(f"Output profile file {path} has no [profile] table (found keys {sorted(data)}).")
    return profile_from_mapping(table, f"profile file {path}")


def profile_from_mapping(table: Mapping[str, Any], source: str = "the [profile] table") -> OutputProfile:
    """Build a profile from a ``[profile]`` TOML table.

    Keys: ``name``, ``base`` (a shipped profile to start from, default ``generic``), ``description``,
    ``suffix``, ``max_name_length``, ``hu_to_density`` (``[[hu, density], ...]``) and ``structures``: one
    table per project structure (``[profile.structures.Vacbag]``) with ``name``, ``type`` (RT ROI
    Interpreted Type), ``color`` (``[r, g, b]`` or ``"#rrggbb"``), ``property`` (``REL_ELEC_DENSITY`` or
    ``REL_MASS_DENSITY``) and ``value`` (a number, or ``"mean_hu"``). Unset keys keep the base's.

    Args:
        table: the table.
        source: what errors call it (default "the [profile] table").

    Raises:
        ValueError: naming ``source``, the structure and the key for an unknown key or structure, or a bad value.
    """
    unknown = sorted(set(table) - _PROFILE_KEYS)
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {unknown}; known keys: {sorted(_PROFILE_KEYS)}.")
    base_name = str(table.get("base", DEFAULT_PROFILE))
    if base_name not in BUILTIN_PROFILES:
        raise ValueError(f"{source}: `base` must be one of {sorted(BUILTIN_PROFILES)}, got {base_name!r}.")
    base = BUILTIN_PROFILES[base_name]
    structures = dict(base.structures)
    given = table.get("structures", {})
    if not isinstance(given, Mapping):
        raise ValueError(f"{source}: `structures` must be a table of structure tables, got {given!r}.")
    labels = {label.name: label for label in LABELS}
    for structure, entry in given.items():
        if structure not in labels:
            raise ValueError(f"{source}: unknown structure {structure!r}; the structures are {sorted(labels)}.")
        structures[structure] = _style_from_mapping(entry, base.style(labels[structure]), f"{source}: {structure}")
    try:
        max_length = int(table.get("max_name_length", base.max_name_length))
    except (TypeError, ValueError):
        raise ValueError(f"{source}: `max_name_length` must be an integer, got {table['max_name_length']!r}.") from None
    points = table.get("hu_to_density", base.hu_to_density)
    _check_hu_to_density(points, source)
    return OutputProfile(
        name=str(table.get("name", f"{base_name} (custom)")),
        structures=structures,
        suffix=_text(table.get("suffix", base.suffix), f"{source}: `suffix`"),
        max_name_length=max_length,
        hu_to_density=tuple((float(h), float(d)) for h, d in points),
        description=str(table.get("description", base.description)),
        source=source,
    )


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{where} must be a string, got {value!r}.")
    return value


def _style_from_mapping(entry: Any, base: StructureStyle, where: str) -> StructureStyle:
    """One ``[profile.structures.<name>]`` table over the base profile's style."""
    if not isinstance(entry, Mapping):
        raise ValueError(f"{where} must be a table (name, type, color, property, value), got {entry!r}.")
    unknown = sorted(set(entry) - _STRUCTURE_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known keys: {sorted(_STRUCTURE_KEYS - {'colour'})}.")
    name = _text(entry.get("name", base.name), f"{where} `name`")
    roi_type = base.rt_roi_type
    if "type" in entry:
        try:
            roi_type = RTROIInterpretedType(str(entry["type"]).upper())
        except ValueError:
            raise ValueError(f"{where}: `type` must be one of {[t.value for t in RTROIInterpretedType]}, "
                             f"got {entry['type']!r}.") from None
    color = _colour(entry.get("color", entry.get("colour", base.color)), where)
    prop, value = base.physical_property, base.physical_value
    if "property" in entry:
        try:
            prop = PhysicalProperty(str(entry["property"]).upper())
        except ValueError:
            raise ValueError(f"{where}: `property` must be one of {[p.value for p in PhysicalProperty]}, "
                             f"got {entry['property']!r}.") from None
        value = None
    if "value" in entry:
        if "property" not in entry and prop is None:
            raise ValueError(f"{where}: `value` needs a `property` ({[p.value for p in PhysicalProperty]}).")
        value = _physical_value(entry["value"], where)
    elif "property" in entry:
        raise ValueError(f"{where}: `property` {prop.value} needs a `value` (a number, or {MEAN_HU!r}).")
    return StructureStyle(name=name, rt_roi_type=roi_type, color=color, physical_property=prop, physical_value=value)


def _physical_value(value: Any, where: str) -> float | None:
    if isinstance(value, str) and value.lower() == MEAN_HU:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{where}: `value` must be a number >= 0 or {MEAN_HU!r}, got {value!r}.")
    return float(value)


def _colour(value: Any, where: str) -> tuple[int, int, int]:
    if isinstance(value, str):
        match = _HEX_COLOUR.fullmatch(value.strip())
        if match is None:
            raise ValueError(f"{where}: `color` must be [r, g, b] or '#rrggbb', got {value!r}.")
        text = match.group(1)
        return int(text[0:2], 16), int(text[2:4], 16), int(text[4:6], 16)
    if (
        isinstance(value, (list, tuple)) and len(value) == 3
        and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in value)
    ):
        return int(value[0]), int(value[1]), int(value[2])
    raise ValueError(f"{where}: `color` must be three integers in [0, 255] or '#rrggbb', got {value!r}.")
