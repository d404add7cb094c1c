"""torchvision in the detection suite: a torchvision that is installed but does not import (PyPI's wheels are CUDA
builds; beside a CPU torch their import raises) leaves detection importable, its NMS in plain torch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# what torchvision 0.28.0 from PyPI (a CUDA build) raises on import beside torch 2.13.0+cpu
BROKEN = "operator torchvision::nms does not exist"


@pytest.fixture
def broken_torchvision(tmp_path):
    """A folder holding a torchvision whose import raises as that build's does, to put first on a PYTHONPATH."""
    (tmp_path / "torchvision").mkdir()
    (tmp_path / "torchvision" / "__init__.py").write_text(f"raise RuntimeError({BROKEN!r})\n")
    return tmp_path


def test_a_torchvision_that_does_not_import_leaves_detection_on_plain_torch_nms(broken_torchvision):
    # before: boxes.py caught ImportError alone, so the RuntimeError ended the import of suites/detection.py, and
    # with it every bench command (`bench list` too: "bench: error: .../suites/detection.py:27: RuntimeError")
    script = ("import torch; from impls.detection import boxes; "
              "print(boxes.torchvision_nms(), boxes.nms(torch.tensor([[0.0, 0, 2, 2], [0, 0, 2, 2.1], [5, 5, 6, 6]]), "
              "torch.tensor([0.9, 0.8, 0.7]), 0.5).tolist())")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(broken_torchvision), str(ROOT)])}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split(maxsplit=1) == ["False", "[0, 2]\n"]
