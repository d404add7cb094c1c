"""pytest's settings for the tests (tests/conftest.py), as a user without the dev extra meets them."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_pytest_without_pytest_timeout_reads_the_config_cleanly():
    # `pip install -e .` alone brings pytest (through pytest-benchmark) but not pytest-timeout, whose `timeout` key
    # pyproject sets: --strict-config turns the warning pytest gave then ("Unknown config option") into an error
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:timeout", "-p", "no:cacheprovider",
                           "--strict-config", "--collect-only", "-q", "tests/test_layering.py"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "Unknown config option" not in done.stdout + done.stderr, done.stdout + done.stderr
    assert "tests/test_layering.py::" in done.stdout  # it collected: pytest itself ran
