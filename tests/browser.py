"""Loads an HTML file in headless Chromium and reports JavaScript errors and the rendered DOM."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="needs headless Chromium (Debian package chromium)")


def load(path: str | Path, budget_ms: int = 5000, width: int = 1280) -> tuple[list[str], str]:
    """(uncaught JavaScript errors, DOM after scripts ran) for a local HTML file, in a window `width` px wide."""
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
             "--enable-logging=stderr", "--v=0", f"--virtual-time-budget={budget_ms}", f"--window-size={width},900",
             "--dump-dom", Path(path).resolve().as_uri()],
            capture_output=True, text=True, timeout=180)
    errors = [m for m in re.findall(r'CONSOLE[^"]*"(.*)", source', proc.stderr) if "Uncaught" in m]
    return errors, proc.stdout


def probe(path: str | Path, script: str, budget_ms: int = 20000, width: int = 1280):
    """What `script` (the body of a JS function run once the page has drawn) returns, JSON-decoded; the page must
    load without an uncaught JavaScript error.

    The page's own file is left alone: a copy with the script appended is loaded, and the script's result comes back
    through the DOM (--dump-dom), the one channel headless Chromium offers without a driver."""
    text = Path(path).read_text(encoding="utf-8")
    hook = ("<script>window.addEventListener('load', () => setTimeout(() => {"
            "const out = document.createElement('pre'); out.id = 'probe-result';"
            f"try {{ out.textContent = JSON.stringify((() => {{ {script} }})()); }}"
            "catch (e) { out.textContent = JSON.stringify({probe_error: String(e)}); }"
            "document.body.appendChild(out); }, 500));</script>")
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / Path(path).name
        copy.write_text(text.replace("</body>", hook + "</body>"), encoding="utf-8")
        errors, dom = load(copy, budget_ms, width)
    found = re.search(r'<pre id="probe-result">(.*?)</pre>', dom, re.S)
    assert found, f"the probe wrote nothing; page errors: {errors}"
    assert errors == [], f"{Path(path).name}: {errors}"
    result = json.loads(html.unescape(found.group(1)))
    assert not (isinstance(result, dict) and "probe_error" in result), result
    return result
