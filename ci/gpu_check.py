"""The GPU check: what the CPU CI cannot run, sized to the time a lent GPU gives, stopped cleanly at a budget.

Steps, in order, each timed and printed: the GPU and environment, `bench doctor --json` (OUT/doctor.json: what could
disturb the timings) and `bench plan` where the installed bench has them, SELECTION, a curated slice of every suite's
quick grid that reaches each CUDA path once (one `bench run --predict`, with its report), the CUDA tests (`pytest -m
cuda`: every test a CPU machine skips), then a quick step of each PROFILED case with the allocator's history
(OUT/profile-SUITE). `full` adds every suite at full size; `SUITE=SIZE` adds that suite at that size. The selection
comes before the tests: where a budget runs short, what it cuts is the steps the next check can redo soonest.

The budget (--budget-s) is wall-clock for the whole check: a step starts only with time left, a `bench run` gets what
is left as its --budget (it records the cases it finished and lists the rest), and anything that did not run is
written to OUT/not-run.txt. Everything lands in OUT and is packed into OUT/gpu-check.tar.gz, but for each profiled
case's trace and allocator snapshot, in tarballs of their own (OUT/gpu-trace-SUITE.tar.gz, gpu-snapshot-SUITE.tar.gz):
see tarball_of.
Usage: bash ci/gpu-check.sh OUT [full] [SUITE=SIZE ...] [--budget-s S] [--device cuda|cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

# (case_id glob, the CUDA path it proves): a curated slice of the quick grid, run as one `bench run --case ...`.
# Sized from per-case times (ci/README.md); the budget stops the check cleanly if a GPU is slower than they say.
SELECTION = [
    ("checkpointing/*", "CUDA-event timing, allocator peaks, NVML energy; CPU offload's pinned copies"),
    ("fsdp_checkpointing/none/*", "FSDP2 on a one-rank NCCL group"),
    ("fsdp_checkpointing/full/*", "FSDP2 + full checkpointing on a one-rank NCCL group"),
    ("moe_ep/*/*experts=16,*", "all_to_all_single on a one-rank NCCL group"),
    ("fp8/*/*part=gemm,shape=pow2_1024", "_scaled_mm tensorwise and rowwise, the Triton blockwise GEMM compiled"),
    ("fp8/*/impl=triton,*part=quantize", "the Triton FP8 quantizers compiled, GB/s against bandwidth"),
    ("rmpad/*/*dist=lognormal,*mode=train,*", "FlexAttention compiled, with backward; nested SDPA; flash_attn"),
    ("packing/*/*dist=lognormal,*", "packed rows with document masks: effective tokens/s"),
    ("moe/*/*experts=64,*part=dispatch,*", "torch._grouped_mm and the Triton grouped GEMM compiled"),
    ("moe/aux_free/*part=balance,*", "aux-loss-free routing trained on the GPU"),
    ("mla/*/*context=2048,*part=decode,*", "decode with MLA's latent cache, naive and absorbed"),
    ("mtp/*", "MTP training (its models prepared once) and speculative decoding"),
    ("detection/single/*", "a detector trained and evaluated (COCO AP)"),
    ("detection/fpn/*", "the FPN detector trained and evaluated"),
    ("detection/torchvision_fpn/*", "torchvision's FPN as the neck, beside ours (torchvision carried as a wheel)"),
    ("samplers/*/model=exact,*nfe_budget=16,*", "every sampler at 16 model calls on the exact mixture"),
]
# (suite, variant, the quick case's params, why): steps profiled with the allocator's history, where the first H100
# run measured more or less than bench.plan predicts and the plan alone cannot say why (README, "Planning a GPU run")
PROFILED = [
    ("checkpointing", "full", "model=None", "4.5 MiB over the plan in every variant of our model, none in Llama's"),
    ("rmpad", "segments", "mode=train,dist=lognormal",
     "first GPU run of its fused attention: the plan is 9% under the earlier, math-path measurement"),
]
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BUDGET_S = 420.0  # 7 min of a lent GPU's 15, leaving time for its start-up and one rerun
RESERVE_S = 15.0  # kept back for the run's report and the tarball
STARTUP_S = 20.0  # a `bench run`'s start-up before its --budget clock starts: imports torch and every suite
AFTER_SELECTION_S = 150.0  # kept from the selection for the CUDA tests and the profiles (on a CPU: 10 s and 55 s)


class Check:
    def __init__(self, out: Path, budget_s: float | None):
        self.out, self.t0 = out, time.monotonic()
        self.deadline = None if budget_s is None else self.t0 + budget_s
        self.steps: list[tuple[str, str, float]] = []  # (name, status, seconds)
        self.not_run: list[str] = []

    def left(self) -> float | None:
        return None if self.deadline is None else self.deadline - RESERVE_S - time.monotonic()

    def step(self, name: str, cmd: list[str], log: str | None = None, budgeted_run: bool = False,
             keep_s: float = 0.0) -> str:
        """Run one step unless the budget is spent; returns its status (ok, failed, timeout, not run). A budgeted
        `bench run` gets what is left less `keep_s`, kept for the steps after it."""
        left = self.left()
        if left is not None and left <= 1:
            self.not_run.append(f"{name}: not started, the budget was spent ({' '.join(cmd)})")
            self.steps.append((name, "not run", 0.0))
            print(f"-- {name}: not run (budget spent)", flush=True)
            return "not run"
        if budgeted_run and left is not None:  # its clock starts after its own start-up (torch, the suites)
            own = left - STARTUP_S
            cmd = [*cmd, "--budget", f"{max(own - keep_s, own / 2, 1):.0f}"]  # never less than half of what is left
        print(f"-- {name}: {' '.join(cmd)}", flush=True)
        t = time.monotonic()
        sink = open(self.out / log, "w") if log else None  # noqa: SIM115 - closed below
        try:
            # a run stops itself at its --budget; the rest are killed at the deadline (+ a grace for a run's last
            # record), so a hung step cannot eat the time of the ones after it
            done = subprocess.run(cmd, stdout=sink, stderr=subprocess.STDOUT if sink else None,
                                  timeout=None if left is None else left + (30 if budgeted_run else 0))
            status = "ok" if done.returncode == 0 else f"failed (exit {done.returncode})"
        except subprocess.TimeoutExpired:
            status = "timeout"
            self.not_run.append(f"{name}: killed at the budget ({' '.join(cmd)})")
        except OSError as e:  # e.g. no nvidia-smi: this step failed, the others still run
            status = f"failed ({e.strerror or e})"
        finally:
            if sink:
                sink.close()
        seconds = time.monotonic() - t
        self.steps.append((name, status, seconds))
        print(f"-- {name}: {status} in {seconds:.1f} s (total {time.monotonic() - self.t0:.0f} s)", flush=True)
        return status


    def runs_stopped(self, run_dir: Path, name: str) -> None:
        """After a budgeted `bench run`: its cases not run join the list, and its step says it was stopped."""
        cases = not_run_cases(run_dir)
        if cases:
            self.not_run += [f"{name}: {c}" for c in cases]
            step, status, seconds = self.steps[-1]
            log = self.out / f"{name}.log"
            said = log.read_text(errors="replace") if log.exists() else ""
            if status != "failed (exit 1)" or BUDGET_RAN_OUT not in said:  # a crash or a kill: its status stands
                return
            failed = failed_cases(run_dir)  # the run exits 1 when stopped; say so if cases failed too
            status = f"stopped at the budget, {len(cases)} cases not run" + (f"; {failed} failed" if failed else "")
            self.steps[-1] = (step, status, seconds)


BUDGET_RAN_OUT = "bench: the --budget of "
"""How `bench run` begins the line it prints when its --budget stopped it (bench/cli_run.py)."""


def bench_has(command: str) -> bool:
    done = subprocess.run([sys.executable, "-m", "bench", "--help"], capture_output=True, text=True)
    return f" {command} " in done.stdout or f"{{{command}" in done.stdout or f",{command}" in done.stdout


def failed_cases(run_dir: Path) -> int:
    return sum(1 for r in _records(run_dir) if r.get("status") in ("error", "timeout"))


def _records(run_dir: Path) -> list[dict]:
    """records.jsonl's records, read raw: none where it is missing (killed before its first), and no line a kill cut
    short."""
    try:
        lines = (run_dir / "records.jsonl").read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return [r for r in out if isinstance(r, dict)]


def not_run_cases(run_dir: Path) -> list[str]:
    """The run's cases with no record: run.json lists them as the run starts and again as it ends, so a run killed
    in between lists cases it did record."""
    try:
        listed = json.loads((run_dir / "run.json").read_text()).get("not_run") or []
    except (OSError, ValueError):
        return []
    recorded = {r.get("case_id") for r in _records(run_dir)} if listed else set()
    return [c for c in listed if c not in recorded]


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="ci/gpu-check.sh", description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="output folder (new or empty)")
    p.add_argument("extra", nargs="*", help="`full` (every suite at full size) and/or SUITE=SIZE runs")
    p.add_argument("--budget-s", type=float, help=f"seconds for the whole check (default {DEFAULT_BUDGET_S:g}; "
                   "none with extra runs)")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu, for a dry run of the logic on a CPU")
    args = p.parse_args(argv)
    full = "full" in args.extra
    extras = [e for e in args.extra if e != "full"]
    if any("=" not in e for e in extras):
        p.error(f"extra runs are `full` or SUITE=SIZE, got {extras}")
    # extra runs are the longer check: no budget unless one is given
    budget = args.budget_s if args.budget_s is not None else (None if args.extra else DEFAULT_BUDGET_S)
    if budget is not None and not 0 < budget < float("inf"):
        p.error(f"--budget-s must be a positive number, got {budget}")
    out = args.out.resolve()
    os.chdir(ROOT)
    if out.exists() and any(out.iterdir()):
        p.error(f"{out} is not empty")
    out.mkdir(parents=True, exist_ok=True)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(ROOT)]))
    os.environ["PYTHONUNBUFFERED"] = "1"
    bench = [sys.executable, "-m", "bench"]
    check = Check(out, budget)
    print(f"gpu check: device {args.device}, budget {'none' if budget is None else f'{budget:g} s'} -> {out}")

    if args.device.startswith("cuda"):
        check.step("gpus", ["nvidia-smi", "-L"])
    check.step("env", [*bench, "env", "--json"], log="env.json")
    suites = sorted({glob.split("/")[0] for glob, _ in SELECTION})
    gpu = "auto" if args.device.startswith("cuda") else "cpu"  # a dry run plans for the CPU it runs on
    # doctor: what on this machine could disturb the timings that follow (load, clocks, other GPU processes)
    for command, cmd, log in (("doctor", [*bench, "doctor", "--json"], "doctor.json"),
                              ("plan", [*bench, "plan", *suites, "--size", "quick", "--gpu", gpu, "-o",
                                        str(out / "plan.html")], "plan.log")):
        if bench_has(command):
            check.step(command, cmd, log=log)
        else:
            print(f"-- {command}: this bench has no `{command}` command yet; skipped", flush=True)
    # first of the runs: the plan's CUDA error and reserved bytes, and every suite's CUDA path, come from it
    quick = out / "quick"
    # --predict: each case records bench.plan's peak beside the allocator's, so the run measures the plan's CUDA error
    cmd = [*bench, "run", "--size", "quick", "--device", args.device, "--out", str(quick), "--predict"]
    check.step("quick selection", cmd + [f"--case={glob}" for glob, _ in SELECTION], log="quick.log",
               budgeted_run=True, keep_s=AFTER_SELECTION_S)
    check.runs_stopped(quick, "quick")

    check.step("cuda tests", [sys.executable, "-m", "pytest", "-q", "-rs", "-m", "cuda", "-p", "no:cacheprovider",
                              "tests"], log="pytest-cuda.log")

    # a quick step of each PROFILED case under the profiler, with the allocator's history on CUDA (profile-SUITE/
    # memory_snapshot.pickle, for pytorch.org/memory_viz): what a measured peak holds beyond bench.plan's prediction
    for suite, variant, params, _ in PROFILED:
        check.step(f"profile {suite}", [*bench, "profile", suite, "--variant", variant, "--size", "quick", "--device",
                                        args.device, "--params", params, "--out", str(out / f"profile-{suite}")],
                   log=f"profile-{suite}.log")

    later = [("full", ["--size", "full"], out / "full")] if full else []
    later += [(e, [e.split("=")[0], "--size", e.split("=")[1]], out / e.replace("=", "-")) for e in extras]
    for name, sel, run_dir in later:
        check.step(name, [*bench, "run", *sel, "--device", args.device, "--out", str(run_dir), "--predict"],
                   log=f"{name}.log", budgeted_run=True)
        check.runs_stopped(run_dir, name)

    (out / "not-run.txt").write_text("".join(f"{line}\n" for line in check.not_run))
    (out / "steps.tsv").write_text("step\tstatus\tseconds\n" + "".join(
        f"{n}\t{s}\t{t:.1f}\n" for n, s, t in check.steps))
    total = time.monotonic() - check.t0
    width = max(len(n) for n, _, _ in check.steps)
    print("\nstep".ljust(width + 1) + "  seconds  status")
    for name, status, seconds in check.steps:
        print(f"{name:<{width}}  {seconds:7.1f}  {status}")
    print(f"{'total':<{width}}  {total:7.1f}  ({len(check.not_run)} not run: {out / 'not-run.txt'})")
    for tarball in pack(out):
        print(f"-> {tarball} ({tarball.stat().st_size / 2**20:.1f} MiB)")
    failed = [n for n, s, _ in check.steps if s != "ok" and s != "not run"
              and not (s.startswith("stopped at") and "failed" not in s)]
    return 1 if failed or check.not_run else 0


LIMIT = 16 << 20  # bytes: a file larger than this does not come back from a lent GPU (../shared/device/README.md)


def tarball_of(rel: Path) -> str:
    """The tarball a file of OUT (its path relative to OUT) is packed into: each profiled case's trace and allocator
    snapshot in one of their own, the records, logs and pages in gpu-check.tar.gz. Each comes back from a lent GPU
    only up to LIMIT, and a trace can pass that alone (rmpad's quick step traced on a CPU: 137 MB, 7.5 MiB packed;
    the rest packs to 2.9 MiB), which would lose what shares its tarball."""
    parts = rel.parts
    if len(parts) > 1 and parts[0].startswith("profile-"):
        suite = parts[0].removeprefix("profile-")
        if len(parts) > 2 and parts[1] == "trace":
            return f"gpu-trace-{suite}.tar.gz"
        if rel.name == "memory_snapshot.pickle":
            return f"gpu-snapshot-{suite}.tar.gz"
    return "gpu-check.tar.gz"


def pack(out: Path) -> list[Path]:
    """OUT's files packed into tarballs in OUT (tarball_of), gpu-check.tar.gz last; returns them. One over LIMIT is
    named on stderr."""
    files = sorted(p for p in out.rglob("*") if p.is_file() and not
                   (p.parent == out and p.name.startswith("gpu-") and p.name.endswith(".tar.gz")))
    groups: dict[str, list[Path]] = {}
    for path in files:
        groups.setdefault(tarball_of(path.relative_to(out)), []).append(path)
    made = []
    for name in sorted(groups, key=lambda n: (n == "gpu-check.tar.gz", n)):
        tarball = out.parent / f"{out.name}.{name}"  # beside OUT while packing it, then moved in
        with tarfile.open(tarball, "w:gz") as tar:
            for path in groups[name]:
                tar.add(path, arcname=str(Path(out.name) / path.relative_to(out)))
        made.append(Path(shutil.move(tarball, out / name)))
        if made[-1].stat().st_size > LIMIT:
            print(f"{made[-1]}: {made[-1].stat().st_size / 2**20:.1f} MiB, over the {LIMIT >> 20} MiB a lent GPU "
                  "sends back", file=sys.stderr)
    return made


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
