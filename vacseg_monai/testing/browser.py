"""Headless Chromium for the dashboard's tests and its screenshot: the page as a browser renders it.

Debian's ``chromium`` (``make test``'s tool step installs it) is run once per call with its own
throw-away profile; the page's scripts run for ``budget_ms`` of virtual time (Chromium waits for
the page's requests meanwhile), then the DOM is dumped or a screenshot taken.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

__all__ = ["CHROMIUM", "chromium_available", "chromium_dump_dom", "chromium_screenshot"]

#: The browser's command.
CHROMIUM = "chromium"


def chromium_available() -> bool:
    """True when ``chromium`` is on the PATH."""
    return shutil.which(CHROMIUM) is not None


def _run(url: str, options: list[str], budget_ms: int, timeout: float) -> subprocess.CompletedProcess:
    if not chromium_available():
        raise RuntimeError("chromium is not installed (Debian: apt-get install chromium).")
    with tempfile.TemporaryDirectory(prefix="vacseg-chromium-") as profile:
        command = [CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
                   "--disable-extensions", "--disable-background-networking", f"--user-data-dir={profile}",
                   f"--virtual-time-budget={int(budget_ms)}", *options, url]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"chromium exited with {done.returncode} on {url}: {done.stderr[-2000:]}")
    return done


def chromium_dump_dom(url: str, *, budget_ms: int = 5000, timeout: float = 90.0) -> str:
    """The serialised DOM of ``url`` after its scripts ran for ``budget_ms`` of virtual time.

    Raises:
        RuntimeError: if chromium is missing or fails (its stderr in the message).
    """
    return _run(url, ["--dump-dom"], budget_ms, timeout).stdout


def chromium_screenshot(url: str, out: Path, *, size: tuple[int, int] = (1400, 900), budget_ms: int = 5000,
                        timeout: float = 90.0) -> Path:
    """Save a PNG screenshot of ``url`` (``size``: window width, height) to ``out``; returns ``out``.

    Raises:
        RuntimeError: if chromium is missing, fails or writes no picture.
    """
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    _run(url, [f"--screenshot={out}", f"--window-size={size[0]},{size[1]}", "--hide-scrollbars"], budget_ms, timeout)
    if not out.is_file():
        raise RuntimeError(f"chromium wrote no screenshot of {url} to {out}.")
    return out
