"""`bench profile`: one case of a suite under torch.profiler, written where TensorBoard, Perfetto and HTA read it.

A profiler step is one call of the suite's `measure()`, run the way `bench run --inline` runs a case
(`bench.case.execute`: same seed, same telemetry, on CPU the suite's intra-op thread count), inside a
`record_function("case:<case_id>")` range. The schedule (wait, warmup, active) counts those calls: the `wait` calls run
unprofiled, `warmup` calls start the profiler without keeping events, and the `active` calls are recorded into one
trace. A suite's `measure()` already holds its own warm-up and timing loop (several training steps, say), so each active
step shows the case's whole work: set-up, memory and FLOP passes, and the timed calls. Stepping once per timed call
would need a per-call hook in the timer; this module does without one and leaves suites and the timer untouched. For the
same reason `active` defaults to 1: one measure() of checkpointing at smoke size is ~20 training steps, a 37 MB trace,
and ~5 s for torch to tabulate the top operators on a 2-core CPU; three would triple both, past what chrome://tracing
opens comfortably.

The case's record (records.jsonl + run.json, as `bench run` writes them) takes its metrics from the last unprofiled
call when `wait` >= 1, so they carry no profiler overhead; with wait=0 they come from the last active call and
profile.json says so. Written into `out`:

    trace/<worker>.<ns>.pt.trace.json   Chrome trace: `tensorboard --logdir OUT` (torch-tb-profiler), ui.perfetto.dev,
                                        Holistic Trace Analysis (TraceAnalysis(trace_dir="OUT/trace"))
    top_ops.txt, top_ops.json           top 25 operators by self CPU time (and by self CUDA time on CUDA)
    memory_snapshot.pickle              CUDA only: allocator history for pytorch.org/memory_viz
    profile.json                        links the case to the files above (paths relative to OUT)
    run.json, records.jsonl             the case's record
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from bench import runner
from bench.atomic import atomic_path
from bench.case import SEED, Case, cpu_threads, execute
from bench.records import RECORDS_JSONL, Record, RecordWriter, RunMeta, write_run_json
from bench.suite import SIZES, SUITES, discover

TOP_ROWS = 25
# Allocator events kept for the memory snapshot: one training step of a 24-layer model makes ~10^4 alloc/free events,
# so 10^5 covers the profiled steps without the history growing without bound.
MEMORY_HISTORY_ENTRIES = 100_000
PATHS = ("trace", "top_ops", "top_ops_json", "memory_snapshot", "profile")  # what profile_case returns as paths


def _suite(name: str):
    registry = SUITES if name in SUITES else discover()
    if name not in registry:
        raise ValueError(f"unknown suite {name!r} (valid: {', '.join(sorted(registry)) or 'none registered'})")
    return registry[name]


def _device(device: str) -> str:
    from bench.env import resolve_device

    return resolve_device(device)


def select_case(suite_name: str, variant: str, size: str, device: str,
                params: dict[str, str] | None) -> Case:
    """The one case of the suite's grid whose params match `params` (values compared as text); ValueError naming the
    valid choices when the variant or size is unknown, or when no case or several cases match."""
    suite = _suite(suite_name)
    if variant not in suite.variants:
        raise ValueError(f"unknown variant {variant!r} for {suite.name} (valid: {', '.join(suite.variants)})")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r} (valid: {', '.join(SIZES)})")
    cases = runner.plan([suite], size, device, [variant], where=params or None)
    exact = [c for c in cases if {k: str(v) for k, v in c.params.items()} == dict(params or {})]
    if len(cases) == 1 or len(exact) == 1:  # all of one case's params: that case, whatever params others add
        return exact[0] if exact else cases[0]
    mine = [c.params for c in runner.plan([suite], size, device, [variant])]
    keys = sorted({k for p in mine for k in p})  # a key some cases lack reads k=None, as --params takes it
    if unknown := [k for k in params or {} if k not in keys]:  # a typo'd key: no value of it would do
        raise ValueError(f"{unknown[0]} is no param of {suite.name} --variant {variant} at size {size} "
                         f"(params: {', '.join(keys)})")
    choices = "; ".join(",".join(f"{k}={p.get(k)}" for k in keys) for p in mine)
    wanted = ",".join(f"{k}={v}" for k, v in (params or {}).items()) or "(none)"
    what = "no" if not cases else f"{len(cases)}"
    raise ValueError(f"{what} {size} cases of {suite.name} match params {wanted}; pick one of: {choices}")


def _rows(prof, device_kind: str) -> tuple[str, list[dict[str, Any]]]:
    """The top-operator tables (text) and their rows (dicts, times in microseconds)."""
    averages = prof.key_averages()
    sorts = ["self_cpu_time_total"] + (["self_device_time_total"] if device_kind == "cuda" else [])
    text, rows = [], []
    for sort in sorts:
        text.append(f"top {TOP_ROWS} operators by {sort}\n{averages.table(sort_by=sort, row_limit=TOP_ROWS)}")
        top = sorted(averages, key=lambda e: getattr(e, sort), reverse=True)[:TOP_ROWS]
        rows += [{"sort_by": sort, "rank": i + 1, "name": e.key, "calls": e.count,
                  "self_cpu_us": e.self_cpu_time_total, "cpu_total_us": e.cpu_time_total,
                  "self_device_us": e.self_device_time_total, "device_total_us": e.device_time_total,
                  "self_cpu_memory_bytes": e.self_cpu_memory_usage,
                  "self_device_memory_bytes": e.self_device_memory_usage} for i, e in enumerate(top)]
    return "\n\n".join(text), rows


def profile_case(suite_name: str, variant: str, size: str, device: str, params: dict[str, str] | None,
                 out: str | Path, wait: int = 1, warmup: int = 1, active: int = 1) -> dict:
    """Profile one case into `out` (a new or empty directory); see the module docstring for what is written.

    Returns {"case_id", "status", "reason", "trace", "top_ops", "top_ops_json", "memory_snapshot", "profile"}: the
    case's status in its record (ok, oom, error, ...), the last line of its reason where it did not run through, and
    absolute paths (memory_snapshot is None off CUDA, trace is None when the case failed before its active steps).
    Everything is written into a temporary folder beside `out` and renamed onto it at the end, so a read-only folder
    or a full disk (OutputError) leaves no partial profile.
    """
    if wait < 0 or warmup < 0 or active < 1:
        raise ValueError(f"need wait >= 0, warmup >= 0, active >= 1; got {wait}, {warmup}, {active}")
    device = _device(device)
    case = select_case(suite_name, variant, size, device, params)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--out {out} already exists and is not empty; choose a new directory")
    with atomic_path(out, directory=True) as staged:
        result = _profile(case, variant, size, device, params, out, staged, wait, warmup, active)
    return {k: str(out / v) if k in PATHS and v is not None else v for k, v in result.items()}


def _profile(case: Case, variant: str, size: str, device: str, params: dict[str, str] | None, out: Path,
             staged: Path, wait: int, warmup: int, active: int) -> dict:
    """Profile into `staged`, the folder that becomes `out`; the paths returned are relative to it."""
    import torch
    from torch.profiler import ProfilerActivity, record_function, schedule, tensorboard_trace_handler

    from bench import __version__
    from bench import env as envmod

    on_cuda = device.startswith("cuda")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])
    trace_handler = tensorboard_trace_handler(str(staged / "trace"), worker_name="techbench")
    tables: dict[str, Any] = {}

    def ready(prof) -> None:
        trace_handler(prof)
        tables["text"], tables["rows"] = _rows(prof, device.split(":")[0])

    threads = cpu_threads(SUITES[case.suite], device, None)  # the suite's count on CPU, as `bench run` sets it
    environment = envmod.collect()
    argv = ["bench", "profile", case.suite, "--variant", variant, "--size", size, "--device", device]
    argv += ["--params", ",".join(f"{k}={v}" for k, v in params.items())] if params else []
    meta = RunMeta(run_id=runner.new_run_id(), argv=argv + ["--out", str(out)], size=size, device=device,
                   variants=[variant], started_at=runner.now(), env=environment, env_id=envmod.env_id(environment),
                   git=environment.get("git"), version=__version__, seed=SEED,
                   suites={case.suite: {**SUITES[case.suite].describe(), "threads": threads}},
                   extra={"profile": {"wait": wait, "warmup": warmup, "active": active}})
    write_run_json(staged, meta)

    snapshot = staged / "memory_snapshot.pickle" if on_cuda else None
    if snapshot is not None:
        torch.cuda.memory._record_memory_history(max_entries=MEMORY_HISTORY_ENTRIES, stacks="python", device=device)
    kept = None  # (step, started_at, elapsed_s, result) of the call whose metrics the record keeps
    try:
        # repeat=1: one cycle; the default (0) would start another after the active steps and save it, empty.
        # acc_events: with one cycle, what torch keeps either way (torch 2.11 warns, for any schedule, that events
        # are cleared between cycles unless it is set)
        steps = schedule(wait=wait, warmup=warmup, active=active, repeat=1)
        with torch.profiler.profile(activities=activities, schedule=steps, on_trace_ready=ready, record_shapes=True,
                                    profile_memory=True, with_stack=False, acc_events=True) as prof:
            for step in range(wait + warmup + active):
                started, t0 = runner.now(), time.perf_counter()
                with record_function(f"case:{case.id}"):
                    result = execute(case, device, threads=threads)
                if result["status"] != "ok" or step < wait or wait == 0:
                    kept = (step, started, round(time.perf_counter() - t0, 3), result)
                prof.step()
                if result["status"] != "ok":
                    break
        if snapshot is not None:
            torch.cuda.memory._dump_snapshot(str(snapshot))
    finally:
        if snapshot is not None:
            torch.cuda.memory._record_memory_history(enabled=None)

    step, started, elapsed, result = kept
    metrics = dict(result.get("metrics") or {})
    if result["status"] == "ok" and step >= wait:  # timed under the profiler (wait=0): never judged as a timing
        metrics["contended"] = True
    record = Record(run_id=meta.run_id, suite=case.suite, variant=case.variant, params=case.params,
                    case_id=case.id, status=result["status"], metrics=metrics,
                    samples=result.get("samples") or {}, error=result.get("error"), device=device,
                    started_at=started, elapsed_s=elapsed, env_id=meta.env_id, nonfinite=result.get("nonfinite") or {})
    with RecordWriter(staged / RECORDS_JSONL) as writer:
        writer.write(record)
    meta.finished_at = runner.now()  # only once its record is written
    write_run_json(staged, meta)

    traces = sorted((staged / "trace").glob("*.pt.trace.json"))
    top_txt, top_json = staged / "top_ops.txt", staged / "top_ops.json"
    reason = (record.error or "").strip().splitlines()  # a case that did not run through: why, on its one line
    ended = "" if record.status == "ok" else (f": the case ended {record.status} in measure() call {step + 1} of "
                                             f"{wait + warmup + active}" + (f" ({reason[-1]})" if reason else ""))
    top_txt.write_text((tables.get("text") or f"no profiled step finished{ended}") + "\n")
    top_json.write_text(json.dumps(tables.get("rows") or [], indent=1) + "\n")
    paths = {"trace": traces[-1] if traces else None, "top_ops": top_txt, "top_ops_json": top_json,
             "memory_snapshot": snapshot if snapshot is not None and snapshot.exists() else None}
    links = {k: None if p is None else p.relative_to(staged).as_posix() for k, p in paths.items()}
    meta.extra["profile"] = {"case_id": case.id, **links}  # the run links its trace, beside its one record
    write_run_json(staged, meta)
    (staged / "profile.json").write_text(json.dumps({
        "case_id": case.id, "status": record.status, **links,
        "schedule": {"wait": wait, "warmup": warmup, "active": active},
        "step": "one call of the suite's measure()",
        "metrics_profiled": step >= wait,
    }, indent=2) + "\n")
    return {"case_id": case.id, "status": record.status, "reason": reason[-1] if reason else None, **links,
            "profile": "profile.json"}
