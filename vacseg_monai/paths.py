"""Where things are when the user does not say: the bundle folder and the default data."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

__all__ = ["BUNDLE_NAME", "default_bundle_root", "model_version"]

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


def model_version(bundle_root: str | Path, ckpt_path: str | Path) -> str:
    """``"vacbag_ct_segmentation 0.3.0 weights 3f2a9c1b2d4e"``: the bundle's version and the weights' short hash.

    Written into every RTSTRUCT and SEG (Software Versions), so that a result, and a correction of it, is tied
    to the model that made it.

    Args:
        bundle_root: the bundle folder (its ``configs/metadata.json`` gives the version; "unknown" without it).
        ckpt_path: the weights file (its SHA-256, first 12 hex digits).

    Raises:
        FileNotFoundError: if the weights file does not exist.
    """
    meta = Path(bundle_root) / "configs" / "metadata.json"
    version = json.loads(meta.read_text()).get("version", "unknown") if meta.is_file() else "unknown"
    digest = hashlib.sha256()
    with open(ckpt_path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return f"{BUNDLE_NAME} {version} weights {digest.hexdigest()[:12]}"
