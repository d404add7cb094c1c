"""Runs scripts under TRITON_INTERPRET=1, where Triton kernels execute on the CPU with numpy, in one child process a
test worker keeps for all of them.

A child, because triton reads TRITON_INTERPRET when a kernel is defined. One child for every script, because each
child imports torch and triton (~3 CPU s on the 2-core VM): the child reads scripts from its stdin, runs each as `python
-c` would (its own globals, `__name__ == "__main__"`, `sys.argv`), and answers with its exit code and what it printed.
The modules that use it go to one test worker (tests/conftest.py's INTERPRETED), so that one child serves them. A
script that kills the child (a crash in native code) is answered with the child's exit code and its stderr; the next
script starts a new child.

One shim goes first: Triton 3.6's interpreter hands a scalar kernel argument around as a 1-element array and takes
int() of it where the kernel uses it as an index (a range() bound such as `range(0, K, BLOCK_K)`), and numpy 2.4+
refuses int() of a 1-D array ("only 0-dimensional arrays can be converted to Python scalars"). Triton 3.9 squeezes the
array first; the shim does the same where the installed pair fails, so the kernels are tested under the interpreter
with any numpy. It changes no kernel and no result: only how the interpreter turns a one-element array into a Python
int.
"""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import tempfile
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

# The child's loop: a request is one JSON line {script, args}; the answer one JSON line on the fd it was given, so
# that nothing a script or a library prints to stdout can be taken for one.
SERVE = """
import contextlib, io, json, os, sys, traceback

answers = os.fdopen(int(sys.argv[1]), "w")
for line in sys.stdin:
    request = json.loads(line)
    sys.argv = ["-c", *request["args"]]
    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            exec(compile(request["script"], "<string>", "exec"), {"__name__": "__main__"})
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
        except BaseException:
            traceback.print_exc()
            code = 1
    answers.write(json.dumps({"returncode": code, "stdout": out.getvalue(), "stderr": err.getvalue()}) + "\\n")
    answers.flush()
"""


class _Child:
    """The child that runs scripts under the interpreter, started at its first script."""

    def __init__(self):
        read, write = os.pipe()
        self.log = tempfile.TemporaryFile()  # the child's own stderr: what a native crash leaves
        env = {**os.environ, "TRITON_INTERPRET": "1"}
        self.proc = subprocess.Popen([sys.executable, "-c", SHIM + SERVE, str(write)], stdin=subprocess.PIPE,
                                     stdout=self.log, stderr=self.log, env=env, cwd=ROOT, text=True,
                                     pass_fds=(write,))
        os.close(write)
        self.answers = os.fdopen(read)

    def run(self, script: str, args: list[str]) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-c", "<script>", *args]
        try:
            self.proc.stdin.write(json.dumps({"script": script, "args": args}) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        line = self.answers.readline()
        if line:
            answer = json.loads(line)
            return subprocess.CompletedProcess(cmd, answer["returncode"], answer["stdout"], answer["stderr"])
        code = self.proc.wait()
        self.log.seek(0)
        return subprocess.CompletedProcess(cmd, code, "", self.log.read().decode(errors="replace"))

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()
        self.answers.close()
        self.log.close()


_child: _Child | None = None


def run_interpreted(script: str, *args: str, interpret: bool = True) -> subprocess.CompletedProcess:
    """`python -c script args...` from the repository root, under the interpreter (with the shim) in the worker's
    child, or unless told so in a process of its own (on a GPU, compiled). Skips the calling test when triton is not
    installed (it comes with the dev extra)."""
    global _child
    require("triton")
    if not interpret:
        return subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, capture_output=True, text=True)
    if _child is None:
        _child = _Child()
        atexit.register(_child.close)
    done = _child.run(script, list(args))
    if _child.proc.poll() is not None:  # it died: the next script gets a new one
        _child = None
    return done
