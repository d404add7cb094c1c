"""What a test may need that a machine may lack: an optional package, a CUDA device. Such a test is skipped with the
reason, and the rest still run.

CUDA tests also carry the `cuda` mark: `pytest -m cuda` is how ci/gpu-check.sh runs exactly the tests that a CPU
machine skips.

The GPU machine has no pyarrow (history), and plotly, scikit-learn and pycocotools travel there as wheels that a
checkout may not carry; tests/ must pass there all the same (ci/README.md).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from impls.libraries import ECOSYSTEM

# import name -> what to install, where they differ (the libraries users pick come with the ecosystem extra)
PIP = {"sklearn": "scikit-learn", "torchao": ECOSYSTEM, "transformers": ECOSYSTEM, "diffusers": ECOSYSTEM,
       "trl": ECOSYSTEM, "torchdiffeq": ECOSYSTEM, "torchsde": ECOSYSTEM, "liger_kernel": "liger-kernel==0.8.5"}


def missing(*modules: str) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


def reason(*modules: str) -> str:
    names = missing(*modules)
    install = " ".join(dict.fromkeys(PIP.get(m, m) for m in names))  # the ecosystem extra once for several
    return f"needs {', '.join(names)}, not installed (pip install {install})"


def needs(*modules: str) -> pytest.MarkDecorator:
    """Mark: skip this test (or module, as `pytestmark`) unless every module imports."""
    return pytest.mark.skipif(bool(missing(*modules)), reason=reason(*modules))


def require(*modules: str) -> None:
    """In a test or at module level, before importing what needs them: skip here unless every module imports."""
    if missing(*modules):
        pytest.skip(reason(*modules), allow_module_level=True)


_NO_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = (pytest.mark.cuda, _NO_CUDA)
"""The marks of a CUDA test, for pytest.param(..., marks=CUDA)."""


def needs_cuda(test):
    """Decorator: a CUDA test (marked `cuda`, skipped where torch sees no CUDA device)."""
    return pytest.mark.cuda(_NO_CUDA(test))


def fresh_cuda_process(script: str, timeout: int = 300):
    """Run `script` (`python -c`, the checkout's root as argv[1]) in a process of its own: a CUDA caching allocator
    that holds nothing yet, in its default configuration (none of bench.plan_alloc.CONFIG_ENV), as the plan models.
    Returns the CompletedProcess (text output captured)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from bench.plan_alloc import CONFIG_ENV

    env = {k: v for k, v in os.environ.items() if k not in CONFIG_ENV}
    root = str(Path(__file__).resolve().parents[1])
    return subprocess.run([sys.executable, "-c", script, root], capture_output=True, text=True, env=env,
                          timeout=timeout)


forks_beside_threads = pytest.mark.filterwarnings(
    "ignore:This process .* is multi-threaded, use of fork:DeprecationWarning")
"""For a test that forks `bench plan`'s workers from its pytest process: Python 3.12 warns there, since pytest-xdist's
worker runs its own threads beside the tests; `bench plan --jobs N` forks from a process of one thread, and says
nothing."""
