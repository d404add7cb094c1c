"""ci/nightly.sh across a change of TECHBENCH_SIZE: the good nights of another size are not tonight's comparison set.

The script runs as CI runs it, but for `bench run`, `env`, `history add` and `dashboard`, which a `python3` first on
PATH answers with a synthetic run directory (tests/runs.py) or nothing: what is tested is which nights it compares."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tests.optional import needs
from tests.runs import H200, checkpointing_records, write_run

ROOT = Path(__file__).resolve().parents[2]
STUB = """#!/bin/sh
case "$1 $2 $3" in
  "-m bench run") shift 3
    exec {python} -c "import sys; from tests.bench.test_nightly import fake_run; fake_run(sys.argv[1:])" "$@";;
  "-m bench env"|"-m bench history"|"-m bench dashboard") exit 0;;
esac
exec {python} "$@"
"""


def fake_run(argv: list[str]) -> None:
    """`bench run --size S --device D --out OUT`: a finished run of the checkpointing cases, nothing measured."""
    opts = dict(zip(argv[::2], argv[1::2]))
    out = Path(opts["--out"])
    write_run(out.parent, out.name, checkpointing_records(), size=opts["--size"], declare=False,
              gpu=None if opts["--device"] == "cpu" else H200)


def nightly(tmp_path: Path, size: str) -> tuple[subprocess.CompletedProcess, Path]:
    bin_dir = tmp_path / "bin"
    if not bin_dir.exists():
        bin_dir.mkdir()
        (bin_dir / "python3").write_text(STUB.format(python=sys.executable))
        (bin_dir / "python3").chmod(0o755)
    before = {p.name for p in (tmp_path / "home" / "runs").iterdir()}
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "TECHBENCH_HOME": str(tmp_path / "home"),
           "TECHBENCH_SIZE": size, "TECHBENCH_DEVICE": "cpu", "PYTHONPATH": str(ROOT)}
    while time.strftime("%Y%m%d-%H%M%S", time.gmtime()) in before:  # a night's folder is named to the second
        time.sleep(0.1)
    done = subprocess.run(["bash", str(ROOT / "ci" / "nightly.sh")], env=env, capture_output=True, text=True,
                          timeout=300)
    (night,) = {p.name for p in (tmp_path / "home" / "runs").iterdir()} - before
    return done, tmp_path / "home" / "runs" / night


@needs("plotly")  # the comparison page
def test_a_size_change_starts_a_fresh_comparison_set(tmp_path):
    runs = tmp_path / "home" / "runs"
    for stamp in ("20200101-000001", "20200102-000001"):  # two good smoke nights
        write_run(runs, stamp, checkpointing_records(), size="smoke", gpu=None, declare=False)
        (runs / stamp / "GOOD").touch()
    done, first = nightly(tmp_path, "quick")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no earlier good night of size quick on cpu" in done.stdout and "fresh baseline" in done.stdout
    assert (first / "GOOD").exists() and not (first / "compare-last-good.html").exists()
    done, second = nightly(tmp_path, "quick")  # compared against the quick night alone: no side of two sizes
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in (tmp_path / "home" / "last-good").iterdir()) == [first.name]
    assert (second / "compare-last-good.html").exists() and "several sizes" not in done.stderr
