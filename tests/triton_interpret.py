"""Runs a script in a child process under TRITON_INTERPRET=1, where Triton kernels execute on the CPU with numpy.

A child, because triton reads TRITON_INTERPRET when a kernel is defined. One shim goes first: Triton 3.6's interpreter
hands a scalar kernel argument around as a 1-element array and takes int() of it where the kernel uses it as an index
(a range() bound such as `range(0, K, BLOCK_K)`), and numpy 2.4+ refuses int() of a 1-D array ("only 0-dimensional
arrays can be converted to Python scalars"). Triton 3.9 squeezes the array first; the shim does the same where the
installed pair fails, so the kernels are tested under the interpreter with any numpy. It changes no kernel and no
result: only how the interpreter turns a one-element array into a Python int.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.optional import require

ROOT = Path(__file__).resolve().parents[1]

SHIM = """
import numpy as _np

from tests.optional import require
try:
    int(_np.ones(1))
except TypeError:  # numpy 2.4+; a Triton without this interpreter function is left alone
    from triton.runtime import interpreter as _interp

    _patch_lang_tensor = getattr(_interp, "_patch_lang_tensor", None)

    def _squeezing_patch(tensor, scope):
        _patch_lang_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    if _patch_lang_tensor is not None:
        _interp._patch_lang_tensor = _squeezing_patch
"""


def run_interpreted(script: str, *args: str, interpret: bool = True) -> subprocess.CompletedProcess:
    """`python -c script args...` from the repository root; under the interpreter (with the shim) unless told not.
    Skips the calling test when triton is not installed (it comes with the dev extra)."""
    require("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"} if interpret else dict(os.environ)
    code = SHIM + script if interpret else script
    return subprocess.run([sys.executable, "-c", code, *args], env=env, cwd=ROOT, capture_output=True, text=True)
