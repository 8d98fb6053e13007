"""The version switch: :func:`generate_phantom` dispatches to generator v1 or v2."""

from __future__ import annotations

from vacseg_monai.phantom.model import Phantom
from vacseg_monai.phantom.v1 import generate_phantom_v1
from vacseg_monai.phantom.v2 import generate_phantom_v2

__all__ = ["DEFAULT_VERSION", "VERSIONS", "generate_phantom"]

#: Generator versions that :func:`generate_phantom` knows.
VERSIONS = (1, 2)
#: The version used when none is given: the varied world.
DEFAULT_VERSION = 2


def generate_phantom(seed: int, *, size: int = 512, version: int = DEFAULT_VERSION) -> Phantom:
    """Generate one synthetic planning CT patient.

    Args:
        seed: non-negative integer; the same seed (and version) gives byte-identical output.
        size: rows and columns of each slice (default 512). Smaller sizes (e.g. 128, for fast
            tests) keep the field of view: the pixel spacing scales by ``512 / size``. The
            anatomy does not depend on ``size``.
        version: generator version, 1 or 2 (default :data:`DEFAULT_VERSION`, 2).

    Returns:
        the :class:`~vacseg_monai.phantom.model.Phantom`.

    Raises:
        ValueError: if ``seed`` is negative, ``size`` is below 32 or ``version`` is unknown.
    """
    if version not in VERSIONS:
        raise ValueError(f"`version` must be one of {VERSIONS}, got {version!r}.")
    if int(seed) != seed or seed < 0:
        raise ValueError(f"`seed` must be a non-negative integer, got {seed!r}.")
    if int(size) != size or size < 32:
        raise ValueError(f"`size` must be an integer >= 32, got {size!r}.")
    if version == 1:
        return generate_phantom_v1(int(seed), size=int(size))
    return generate_phantom_v2(int(seed), size=int(size))
