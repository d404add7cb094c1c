"""Loads an HTML file in headless Chromium and reports JavaScript errors and the rendered DOM."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="needs headless Chromium (Debian package chromium)")


def load(path: str | Path, budget_ms: int = 5000) -> tuple[list[str], str]:
    """(uncaught JavaScript errors, DOM after scripts ran) for a local HTML file."""
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
             "--enable-logging=stderr", "--v=0", f"--virtual-time-budget={budget_ms}", "--dump-dom",
             Path(path).resolve().as_uri()],
            capture_output=True, text=True, timeout=120)
    errors = [m for m in re.findall(r'CONSOLE[^"]*"(.*)", source', proc.stderr) if "Uncaught" in m]
    return errors, proc.stdout
