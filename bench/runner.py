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
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import launchers
from bench.case import SEED, Case, cpu_threads
from bench.distributed import Launch
from bench.records import (
    FAILED,
    RECORDS_JSONL,
    Record,
    RecordWriter,
    RunMeta,
    SchemaError,
    read_records,
    read_run_json,
    write_run_json,
)
from bench.suite import SUITES, Suite, case_id

DEFAULT_TIMEOUT_S = 900.0


def plan(suites: list[Suite], size: str, device: str, variants: list[str] | None = None,
         shard: tuple[int, int] = (1, 1), where: dict[str, str] | None = None, world_size: int = 1,
         cases_like: list[str] | None = None) -> list[Case]:
    """Every case to run, grouped by params with the reference variant first; shard i of n takes every n-th group.

    `where` keeps the cases whose params match it (values compared as text, as typed on the command line);
    `cases_like` keeps those whose case_id matches one of its shell-style globs; a distributed suite's params gain the
    `world_size` of the launch."""
    cases = []
    for suite in suites:
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


class RunDirError(ValueError):
    """The output directory cannot take this run (it holds another run, or another schema); nothing was written."""


def _open_run_dir(cfg: RunConfig, shard: str) -> tuple[dict | None, dict[str, Record]]:
    """run.json and finished records of cfg.out, after checking it can take this run; raises RunDirError."""
    if cfg.out.exists() and not cfg.out.is_dir():
        raise RunDirError(f"--out {cfg.out} is a file, not a run directory")
    try:
        meta = read_run_json(cfg.out)
        finished = {r.case_id: r for r in read_records(cfg.out / RECORDS_JSONL)}
    except SchemaError as e:
        raise RunDirError(f"{cfg.out} holds another schema: {e}") from None
    if (meta is not None or finished) and not cfg.resume:
        raise RunDirError(f"{cfg.out} already holds a run; pass --resume to continue it or choose another --out")
    if meta is not None:
        was = (meta.get("size"), meta.get("device"), meta.get("shard", "1/1"))
        if was != (cfg.size, cfg.device, shard):
            raise RunDirError(f"{cfg.out} was run with --size {was[0]} --device {was[1]} --shard {was[2]}; "
                              "resume it with the same")
    try:
        cfg.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirError(f"cannot create --out {cfg.out}: {e.strerror or e}") from None
    return meta, finished


def run(cfg: RunConfig, progress=None) -> tuple[int, list[Record]]:
    """Run every planned case not yet finished in cfg.out; returns (exit code, records of the planned cases)."""
    from bench import __version__
    from bench import env as envmod

    cases = plan(cfg.suites, cfg.size, cfg.device, cfg.variants, cfg.shard, cfg.where, cfg.launch.world_size,
                 cfg.cases_like)
    shard = "{}/{}".format(*cfg.shard)
    meta, finished = _open_run_dir(cfg, shard)
    environment = envmod.collect()
    env_id = envmod.env_id(environment)  # of this machine now: a resumed run may continue elsewhere
    if meta is None:
        meta = RunMeta(run_id=cfg.run_id or new_run_id(), argv=cfg.argv, size=cfg.size, device=cfg.device,
                       shard=shard, variants=cfg.variants, started_at=now(), env=environment, env_id=env_id,
                       git=environment.get("git"), version=__version__, seed=SEED)
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
