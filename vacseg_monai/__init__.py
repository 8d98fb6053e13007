"""vacseg_monai: MONAI-based auto-contouring of the vacuum bag, couch and body on veterinary planning CT."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
