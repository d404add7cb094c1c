"""Run a module's distributed check on gloo ranks of this machine and read the JSON its rank 0 writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def ranks_json(module: str, out: Path, nproc: int = 2, timeout_s: float = 300) -> dict:
    """`python -m bench.ranks nproc -m module out` (torchrun --standalone's environment, ranks forked from one
    process that imported torch and the module's package once), then out's JSON."""
    package = module.rpartition(".")[0]
    cmd = [sys.executable, "-m", "bench.ranks", str(nproc), "--preload", package, "-m", module, str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())
