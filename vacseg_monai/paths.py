"""Where things are when the user does not say: the bundle folder and the default data."""

from __future__ import annotations

from pathlib import Path

__all__ = ["BUNDLE_NAME", "default_bundle_root"]

BUNDLE_NAME = "vacbag_ct_segmentation"


def default_bundle_root() -> str:
    """Return the bundle folder that configs use when ``--bundle_root`` is not given.

    Looked for, in order: the current folder when it is the bundle itself (it holds
    ``configs/metadata.json``), ``bundles/vacbag_ct_segmentation`` under the current
    folder (the repository root), then the bundle beside this package in a source
    checkout. Falls back to ``"."`` as model-zoo bundles do.
    """
    here = Path.cwd()
    if (here / "configs" / "metadata.json").is_file():
        return "."
    candidates = (here / "bundles" / BUNDLE_NAME, Path(__file__).resolve().parents[1] / "bundles" / BUNDLE_NAME)
    for candidate in candidates:
        if (candidate / "configs" / "metadata.json").is_file():
            return str(candidate)
    return "."
