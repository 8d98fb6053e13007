"""Counters only the SCP's process knows (instances received, refusals by status), for ``/metrics``.

Job states, latencies and export attempts are on disk, in the job records; what never reaches
a record (an instance refused before it had a job, an association rejected) is counted here.
The node creates one :class:`NodeCounters` and passes it to the C-STORE handler through the
``evt_handlers`` binding and to the dashboard; there is no module state.
"""

from __future__ import annotations

import threading
from collections import Counter

__all__ = ["NodeCounters"]


class NodeCounters:
    """Thread-safe counts of the SCP's C-STORE outcomes since the process started.

    A C-STORE answered with Success (0x0000) counts as an instance received (a resend of an
    instance already stored included); any other status counts as a refusal under that status.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._received = 0
        self._refused: Counter[int] = Counter()
        self._corrections = 0

    def store_answered(self, status: int, *, correction: bool = False) -> None:
        """Count one C-STORE answered with ``status``.

        Args:
            status: the DIMSE status sent back.
            correction: True when the instance was a structure set kept as a correction (default False).
        """
        with self._lock:
            if status == 0:
                self._received += 1
                self._corrections += int(correction)
            else:
                self._refused[int(status)] += 1

    def snapshot(self) -> dict:
        """``{"instances_received", "corrections_received", "refused": {"0xA700": n, ...}}``, a copy."""
        with self._lock:
            return {
                "instances_received": self._received,
                "corrections_received": self._corrections,
                "refused": {f"0x{status:04X}": n for status, n in sorted(self._refused.items())},
            }
