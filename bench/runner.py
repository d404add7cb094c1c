"""Expands suites into cases and runs each one into a run directory: plan -> launcher -> execute -> record.

plan() turns (suites, size, device, variants, shard) into an ordered list of cases; a launcher (bench.launchers)
runs each, isolated in a child process by default, where bench.case.execute measures it and says how it ended;
run() drives the loop: run.json, resume, timeouts, the budget, progress, records appended as they finish.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import random
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import launchers
from bench.case import SEED, Case, cpu_threads
from bench.distributed import Launch
from bench.records import FAILED, RECORDS_JSONL, Record, RecordWriter, RunMeta, Scan, write_run_json
from bench.rundir import RunDirError as RunDirError  # re-exported: callers of run() catch runner.RunDirError
from bench.rundir import open_run_dir
from bench.suite import SUITES, Suite, case_id
from bench.validation import check_measurement

DEFAULT_TIMEOUT_S = 900.0


def plan(suites: list[Suite], size: str, device: str, variants: list[str] | None = None,
         shard: tuple[int, int] = (1, 1), where: dict[str, str] | None = None, world_size: int = 1,
         cases_like: list[str] | None = None) -> list[Case]:
    """Every case to run, grouped by params with the reference variant first; shard i of n takes every n-th group.

    `where` keeps the cases whose params match it (values compared as text, as typed on the command line);
    `cases_like` keeps those whose case_id matches one of its shell-style globs; a distributed suite's params gain the
    `world_size` of the launch."""
    cases = []
    for suite in {s.name: s for s in suites}.values():  # a suite named twice runs once
        for params in suite.grid(size, device):
            if suite.world_sizes:
                params = {**params, "world_size": world_size}
            if where and any(str(params.get(k)) != v for k, v in where.items()):
                continue
            ref = suite.reference_variant(params)
            names = [ref] + [v for v in suite.variants if v != ref]
            cases += [Case(suite.name, v, params, type(suite).__module__)
                      for v in names if (variants is None or v in variants) and suite.has_case(v, params)]
    if cases_like is not None:
        cases = [c for c in cases if any(fnmatch.fnmatchcase(c.id, g) for g in cases_like)]
    groups = list(dict.fromkeys(c.group for c in cases))
    index, count = shard
    mine = {g for k, g in enumerate(groups) if k % count == index - 1}
    return [c for c in cases if c.group in mine]


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_run_id() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S-") + f"{random.SystemRandom().getrandbits(24):06x}"


@dataclass
class RunConfig:
    suites: list[Suite]
    size: str
    device: str
    out: Path
    variants: list[str] | None = None
    shard: tuple[int, int] = (1, 1)
    where: dict[str, str] | None = None
    cases_like: list[str] | None = None
    """Only cases whose case_id matches one of these shell-style globs (`bench run --case`)."""
    timeout_s: float = DEFAULT_TIMEOUT_S
    launch: Launch = field(default_factory=Launch)
    """How distributed suites' cases are launched (torchrun processes per node, nodes, rendezvous)."""
    inline: bool = False
    resume: bool = False
    threads: int | None = None
    """Intra-op threads for every CPU case (`--threads`), over each suite's `cpu_threads`."""
    budget_s: float | None = None
    """Wall-clock seconds for the whole run: no case starts after it, and the case running then is given only what
    is left; a case cut off by it is not recorded, so --resume runs it. None: no budget."""
    run_id: str | None = None
    argv: list[str] = field(default_factory=lambda: list(sys.argv))


def run(cfg: RunConfig, progress=None) -> tuple[int, list[Record]]:
    """Run every planned case not yet finished in cfg.out; returns (exit code, records of the planned cases). The
    run holds cfg.out's lock (bench.rundir) from its first check to its last write."""
    cases = plan(cfg.suites, cfg.size, cfg.device, cfg.variants, cfg.shard, cfg.where, cfg.launch.world_size,
                 cfg.cases_like)
    shard = "{}/{}".format(*cfg.shard)
    lock, meta, scan, rebuild = open_run_dir(cfg.out, cfg.resume, (cfg.size, cfg.device, shard))
    try:
        return _run(cfg, progress, cases, shard, meta, scan, rebuild)
    finally:
        lock.release()


def _run(cfg: RunConfig, progress, cases: list[Case], shard: str, meta: dict | None, scan: Scan,
         rebuild: str | None) -> tuple[int, list[Record]]:
    from bench import __version__
    from bench import env as envmod

    if (message := scan.warning(cfg.out / RECORDS_JSONL)) is not None:
        warnings.warn(message, stacklevel=3)
    finished = {r.case_id: r for r in scan.records}
    environment = envmod.collect()
    env_id = envmod.env_id(environment)  # of this machine now: a resumed run may continue elsewhere
    if meta is None:
        run_id = scan.records[0].run_id if scan.records else cfg.run_id or new_run_id()
        started = min((r.started_at for r in scan.records), default="") or now()
        meta = RunMeta(run_id=run_id, argv=cfg.argv, size=cfg.size, device=cfg.device, shard=shard,
                       variants=cfg.variants, started_at=started, env=environment, env_id=env_id,
                       git=environment.get("git"), version=__version__, seed=SEED)
        if rebuild is not None:
            meta.extra["rebuilt"] = f"{rebuild}; rebuilt by bench run --resume at {now()} from its records"
            n = len(scan.records)
            warnings.warn(f"{rebuild}: rebuilt it from {n} record{'s' * (n != 1)} of run {run_id} (its size, "
                          "device and shard are taken from this command)", stacklevel=3)
    else:
        meta = RunMeta.from_json(meta)
    meta.finished_at, meta.not_run = None, None
    # what each suite's metrics are, as this code declares them (a resumed run takes the current declarations), and
    # the thread count its CPU cases run with (None: torch's default)
    meta.suites = {**meta.suites, **{s.name: {**s.describe(), "threads": cpu_threads(s, cfg.device, cfg.threads)}
                                     for s in cfg.suites}}
    write_run_json(cfg.out, meta)

    todo = [c for c in cases if c.id not in finished]
    refs = {r.case_id: r.metrics for r in finished.values() if r.status == "ok"}
    deadline = None if cfg.budget_s is None else time.monotonic() + cfg.budget_s
    if progress is not None:
        progress.start(len(cases), len(cases) - len(todo))
    with RecordWriter(cfg.out / RECORDS_JSONL) as writer, _stopping(progress):
        for i, case in enumerate(todo):
            timeout_s = cfg.timeout_s
            if deadline is not None:
                timeout_s = min(timeout_s, deadline - time.monotonic())
                if timeout_s <= 0:
                    meta.not_run = [c.id for c in todo[i:]]
                    break
            if progress is not None:
                progress.begin(case)
            started, t0 = now(), time.perf_counter()
            result = _execute(case, cfg, timeout_s)
            if result is None:  # a distributed case whose rank 0 ran on another node: that node records it
                continue
            if result["status"] == "timeout" and timeout_s < cfg.timeout_s:  # cut off by the budget, not its own
                meta.not_run = [c.id for c in todo[i:]]
                break
            result = _checked(result)
            record = Record(run_id=meta.run_id, suite=case.suite, variant=case.variant, params=case.params,
                            case_id=case.id, status=result["status"], metrics=result.get("metrics") or {},
                            samples=result.get("samples") or {}, error=result.get("error"), device=cfg.device,
                            started_at=started, elapsed_s=round(time.perf_counter() - t0, 3), env_id=env_id)
            if record.status == "ok":
                refs[record.case_id] = record.metrics  # first, so the reference gets its own ratios of 1
                _add_relative(record, refs)
            writer.write(record)
            finished[case.id] = record
            if progress is not None:
                progress.end(record)
    meta.finished_at = None if meta.not_run else now()  # a run stopped by its budget is unfinished
    write_run_json(cfg.out, meta)
    records = [finished[c.id] for c in cases if c.id in finished]
    return (1 if meta.not_run or any(r.status in FAILED for r in records) else 0), records


def _checked(result: dict[str, Any]) -> dict[str, Any]:
    """An ok result whose metrics or samples a record cannot hold (an object, a non-string key, a string sample) is
    an error of its case, named by its key: the run goes on, and --resume does not trip on it again."""
    if result["status"] != "ok":
        return result
    try:
        metrics, samples = check_measurement(result.get("metrics") or {}, result.get("samples") or {})
    except ValueError as e:
        return {"status": "error", "error": f"measure() returned what a record cannot hold: {e}"}
    return {**result, "metrics": metrics, "samples": samples}


def _execute(case: Case, cfg: RunConfig, timeout_s: float) -> dict[str, Any] | None:
    launcher = launchers.for_case(case, cfg.launch, cfg.inline)
    return launcher.launch(case, cfg.device, timeout_s, cpu_threads(SUITES[case.suite], cfg.device, cfg.threads))


@contextmanager
def _stopping(progress):
    try:
        yield
    finally:
        if progress is not None:
            progress.stop()


def _add_relative(record: Record, refs: dict[str, dict]) -> None:
    suite = SUITES[record.suite]
    relative = suite.relative_for(record.params)
    ref = refs.get(case_id(record.suite, suite.reference_variant(record.params), record.params))
    if ref is None or not relative:
        return
    for rel in relative:
        record.metrics[rel.name] = rel.of(record.metrics, ref)
