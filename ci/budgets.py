"""A newcomer's budgets, measured: prints each figure beside its budget, and the machine's load while it ran.

Installs excluded, in the Python that runs this script (the project and its dev extra installed in it):
- `bench list`: cold (an empty cache: it imports every suite) and warm (median of 5), budget 2 s warm;
- a fresh clone's first `bench run` (quick size, the default device, an empty model cache), budget 5 min;
- the same run repeated into a new folder, budget 3 min;
- with --pytest: the README's test command's `pytest` in the clone, budget 3 min;
- with --ci: `bash .ci/run` in the clone (both version sets), budget 12 min.
Budgets hold for an idle 2-core machine. A figure over budget on a busy one says little: the load average and the
CPU time other processes took (from /proc/stat, as bench.interference counts it) are printed beside each. A VM can
also run slower with nothing else on it (this project's 2-core VM has run the same work at 1.0x and 1.5x the time
hours apart, idle both times), so a reference workload is timed before and after: a fresh Python importing torch,
then fixed single-threaded work (a small MLP's training steps, a pure-Python loop), its CPU seconds. Figures taken at
different reference times compare only scaled by it.

With --quick-start the two runs are made as the README's quick start makes them: in a new venv (created and
installed first, not timed) holding torch==2.13.0 and `pip install -e .` alone, through its `bench` script, so the
library variants (the ecosystem extra) are recorded as skipped. Without it they run in this Python, whatever it has.

Usage: python ci/budgets.py [--repo PATH] [--quick-start] [--pytest] [--ci] [--skip-run]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGETS_S = {"bench list (warm)": 2, "first bench run": 300, "repeated bench run": 180, "pytest": 180,
             ".ci/run": 720}


def _busy_jiffies() -> tuple[int, int] | None:
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return None
    idle = fields[3] + fields[4]
    return sum(fields[:8]) - idle, sum(fields[:8])


def timed(label: str, argv: list[str], cwd: Path, env: dict, log: Path, repeat: int = 1) -> float:
    """Run argv `repeat` times; print the median wall time, the exit status, the load average after it, and the
    share of the CPUs busy meanwhile (this command's own use included)."""
    before, walls = _busy_jiffies(), []
    with log.open("w") as f:
        for _ in range(repeat):
            t0 = time.perf_counter()
            code = subprocess.run(argv, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
            walls.append(time.perf_counter() - t0)
    wall = statistics.median(walls)
    after = _busy_jiffies()
    busy = f"{(after[0] - before[0]) / (after[1] - before[1]) * 100:.0f}% of the CPUs busy" if before and after \
        else "CPU use unknown"
    budget = BUDGETS_S.get(label)
    verdict = "" if budget is None else (" within" if wall <= budget else " OVER") + f" its {budget} s budget"
    label += f" (median of {repeat})" if repeat > 1 else ""
    print(f"{label:<32} {wall:8.1f} s{verdict}; exit {code}; load average {os.getloadavg()[0]:.1f}, {busy} "
          f"(log: {log})", flush=True)
    return wall


REFERENCE = """
import torch
torch.manual_seed(0)
torch.set_num_threads(1)
m = torch.nn.Sequential(torch.nn.Linear(256, 1024), torch.nn.GELU(), torch.nn.Linear(1024, 256))
x = torch.randn(64, 256)
for _ in range(300):
    m(x).square().mean().backward()
s = 0
for i in range(3_000_000):
    s += i * i
"""


def reference_s(repeat: int = 3) -> float:
    """The reference workload's CPU seconds (user + system), the median of `repeat` fresh processes."""
    times = []
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run([sys.executable, "-c", REFERENCE], check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        times.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", type=Path, default=ROOT, help="the checkout to clone (default: this one)")
    ap.add_argument("--pytest", action="store_true", help="also time the test suite")
    ap.add_argument("--ci", action="store_true", help="also time .ci/run (both version sets)")
    ap.add_argument("--skip-run", action="store_true", help="leave out the two quick runs")
    ap.add_argument("--quick-start", action="store_true",
                    help="make the quick runs in a new venv installed as the README's quick start says")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="techbench-budgets-"))
    clone = work / "clone"
    subprocess.run(["git", "clone", "-q", str(args.repo), str(clone)], check=True)
    env = {**os.environ, "TECHBENCH_CACHE": str(work / "cache"), "PYTHONPATH": str(clone)}
    py = sys.executable
    print(f"{os.cpu_count()} CPUs, python {sys.version.split()[0]}, clone of {args.repo} in {clone}", flush=True)
    print(f"reference workload (before)      {reference_s():8.2f} CPU s", flush=True)

    timed("bench list (cold)", [py, "-m", "bench", "list"], clone, env, work / "list-cold.log")
    timed("bench list (warm)", [py, "-m", "bench", "list"], clone, env, work / "list.log", repeat=5)
    if not args.skip_run:
        bench, run_env = [py, "-m", "bench"], env
        if args.quick_start:
            bench = [str(quick_start_venv(clone, work / "venv", work / "install.log"))]
            run_env = {k: v for k, v in env.items() if k != "PYTHONPATH"}  # the venv's own install of the clone
        timed("first bench run", [*bench, "run", "--out", "runs/first"], clone, run_env, work / "first.log")
        timed("repeated bench run", [*bench, "run", "--out", "runs/again"], clone, run_env, work / "again.log")
    if args.pytest:
        timed("pytest", [py, "-m", "pytest", "-q"], clone, env, work / "pytest.log")
    if args.ci:
        timed(".ci/run", ["bash", ".ci/run"], clone, {**os.environ, "CI": "true"}, work / "ci.log")
    print(f"reference workload (after)       {reference_s():8.2f} CPU s", flush=True)
    return 0


def quick_start_venv(clone: Path, venv: Path, log: Path) -> Path:
    """A venv installed as the README's quick start says (a CPU torch first, then the project alone); its `bench`."""
    with log.open("w") as f:
        for argv in ([sys.executable, "-m", "venv", str(venv)],
                     [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "torch==2.13.0"],
                     [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "-e", str(clone)]):
            subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, check=True)
    print(f"quick-start venv: {venv} (install log: {log})", flush=True)
    return venv / "bin" / "bench"


if __name__ == "__main__":
    sys.exit(main())
