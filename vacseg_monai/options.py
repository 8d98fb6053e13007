"""Option values as users type them, parsed the same way by the bundle configs and the node.

``python -m monai.bundle run ... --progress_bar false`` hands the config the *string*
``"false"`` (only ``False`` becomes a bool on that command line), and a non-empty string is
true in an expression such as ``$not @progress_bar``. The configs therefore read their
switches through :func:`parse_bool`, which takes the JSON, Python and TOML spellings and
refuses anything else with the option's name.
"""

from __future__ import annotations

__all__ = ["parse_bool"]

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
