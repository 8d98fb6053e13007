"""Option values as users type them, parsed the same way by the bundle configs and the node.

``python -m monai.bundle run ... --progress_bar false`` hands the config the *string*
``"false"`` (only ``False`` becomes a bool on that command line), and a non-empty string is
true in an expression such as ``$not @progress_bar``. The configs therefore read their
switches through :func:`parse_bool`, which takes the JSON, Python and TOML spellings and
refuses anything else with the option's name. TOML files (the node's ``--config``, an
output profile) are read by :func:`load_toml`, whose errors name the file and what it is.
"""

from __future__ import annotations

import os
import tomllib
from typing import Any

__all__ = ["load_toml", "parse_bool"]

_TRUE = ("true", "yes", "1", "on")
_FALSE = ("false", "no", "0", "off")


def parse_bool(value: object, name: str | None = None) -> bool:
    """Parse "True"/"False"/"yes"/"no"/"1"/"0"/"on"/"off" (any case) or a bool.

    Args:
        value: the value to parse.
        name: the option's name, for the error message.

    Raises:
        ValueError: for anything else, naming the option when ``name`` is given.
    """
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    what = f"`{name}` expects" if name else "Expected"
    raise ValueError(f"{what} a boolean such as true or false, got {value!r}.")


def load_toml(path: str | os.PathLike[str], what: str) -> dict[str, Any]:
    """Read a TOML file.

    Args:
        path: the file.
        what: what the file is, for the errors, e.g. "Config file" or "Output profile file".

    Raises:
        ValueError: ``"<what> <path> ..."`` when it cannot be read or is not valid TOML.
    """
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise ValueError(f"Cannot read {what[:1].lower() + what[1:]} {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{what} {path} is not valid TOML: {exc}") from exc
