"""Logging set-up for the owners of a process: the scripts' ``main()``, the demo, the node's worker.

Library modules only log (``logging.getLogger(__name__)``); :func:`setup_logging` is
called once where a process starts. It keeps the loggers of third-party libraries
(highdicom's one line per built object, pynetdicom's per association and C-STORE,
ignite's per engine event) at WARNING unless asked for them, so that the project's own
lines stay readable.
"""

from __future__ import annotations

import argparse
import logging

__all__ = [
    "DEFAULT_FORMAT",
    "SCRIPT_FORMAT",
    "THIRD_PARTY_LOGGERS",
    "add_verbosity_options",
    "setup_logging",
    "setup_script_logging",
]

#: Loggers of libraries whose INFO lines are kept back unless ``third_party=True``.
THIRD_PARTY_LOGGERS = ("highdicom", "pynetdicom", "ignite", "PIL", "matplotlib")
#: Line format used by the scripts.
DEFAULT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Line format of the command-line scripts with ``-q``/``-v`` (:func:`setup_script_logging`).
SCRIPT_FORMAT = "%(levelname)s %(name)s: %(message)s"


def setup_logging(level: int | str = logging.INFO, *, third_party: bool = False, fmt: str = DEFAULT_FORMAT) -> None:
    """Configure the root logger of this process and quieten the third-party loggers.

    Args:
        level: level of the root logger, a number or a name (default INFO).
        third_party: let :data:`THIRD_PARTY_LOGGERS` log at ``level`` too (default False: WARNING and above).
        fmt: line format (default :data:`DEFAULT_FORMAT`).

    Raises:
        ValueError: for an unknown level name.
    """
    if isinstance(level, str):
        number = logging.getLevelName(level.upper())
        if not isinstance(number, int):
            raise ValueError(f"Unknown logging level {level!r}; use DEBUG, INFO, WARNING or ERROR.")
        level = number
    logging.basicConfig(level=level, format=fmt)
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if third_party else max(level, logging.WARNING))


def add_verbosity_options(parser: argparse.ArgumentParser, quiet_help: str = "only warnings and errors") -> None:
    """Add the scripts' "Logging" group: ``-q/--quiet`` and ``-v/--verbose``, mutually exclusive."""
    verbosity = parser.add_argument_group("Logging").add_mutually_exclusive_group()
    verbosity.add_argument("-q", "--quiet", action="store_true", help=quiet_help)
    verbosity.add_argument("-v", "--verbose", action="store_true", help="debug messages")


def setup_script_logging(ns: argparse.Namespace) -> None:
    """:func:`setup_logging` from :func:`add_verbosity_options`' flags: WARNING with ``-q``, DEBUG (third-party
    loggers included) with ``-v``, INFO otherwise; :data:`SCRIPT_FORMAT` lines."""
    level = logging.WARNING if ns.quiet else logging.DEBUG if ns.verbose else logging.INFO
    setup_logging(level, third_party=ns.verbose, fmt=SCRIPT_FORMAT)
