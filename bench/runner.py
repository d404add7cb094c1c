"""Expands suites into cases and runs each one into a run directory: plan -> launcher -> execute -> record.

plan() turns (suites, size, device, variants, shard) into an ordered list of cases; a launcher (bench.launchers)
runs each, isolated in a child process by default, where bench.case.execute measures it and says how it ended;
run() drives the loop: run.json, resume, timeouts, the budget, progress, records appended as they finish.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import json
import random
import sys
import time
import warnings
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench import distributed, interference, launchers, pinning
from bench.atomic import OutputError, atomic_write_bytes
from bench.case import SEED, Case, cpu_threads
from bench.distributed import Launch
from bench.eta import Eta
from bench.records import FAILED, RECORDS_JSONL, RUN_JSON, Record, RecordWriter, RunMeta, Scan, write_run_json
from bench.resumes import code_changed, declarations, keep_measured, note_machine, thread_counts
from bench.rundir import LOCK, keep_damaged, open_run_dir
from bench.rundir import RunDirError as RunDirError  # re-exported: callers of run() catch runner.RunDirError
from bench.suite import SUITES, Suite, case_id, warn_undeclared
from bench.validation import check_measurement
from bench.widen import widened

AGREE_TIMEOUT_S = 600.0
"""How long a node of a run over several nodes waits for the others at the rendezvous, before its first case, to
agree on what each planned and holds (they start by hand)."""
# Seconds a case may run before it is killed and recorded as a timeout, by size (--timeout overrides). smoke: cases
# of seconds on a 2-core CPU, so 5 min is a hang. quick: the whole quick run fits 5 min on a 2-core CPU, so a case
# past 15 min is 3x that: a hang, or a machine far slower than intended (the record says what it was doing). full:
# GPU shapes and 3,000-step trainings that take minutes on an H200; an hour still ends a hung nightly job.
TIMEOUTS = {"smoke": 300.0, "quick": 900.0, "full": 3600.0}
# The machine's counters as `bench` starts, before it loads the suites: machine_start in run.json measures the CPU
# other processes used from here (seconds, in `bench run`) rather than over env collection alone (milliseconds).
IMPORTED = interference.snapshot()


def plan(suites: list[Suite], size: str, device: str, variants: list[str] | None = None,
         shard: tuple[int, int] = (1, 1), where: dict[str, str] | None = None, world_size: int = 1,
         cases_like: list[str] | None = None) -> list[Case]:
    """Every case to run, grouped by params with the reference variant first; shard i of n takes every n-th group.

    `where` keeps the cases whose params match it (values compared as text, as typed on the command line);
    `cases_like` keeps those whose case_id matches one of its shell-style globs; a distributed suite's params gain the
    `world_size` of the launch."""
    cases = []
    for suite in {s.name: s for s in suites}.values():  # a suite named twice runs once
        for params in suite.points(size, device):
            if suite.world_sizes:
                params = {**params, "world_size": world_size}
            if where and any(str(params.get(k)) != v for k, v in where.items()):
                continue
            ref = suite.reference_variant(params)
            names = [ref] + [v for v in suite.variants if v != ref]
            cases += [Case(suite.name, v, params, type(suite).__module__, size=size)
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
    timeout_s: float | None = None
    """Seconds per case; None: TIMEOUTS of the size."""
    launch: Launch = field(default_factory=Launch)
    """How distributed suites' cases are launched (torchrun processes per node, nodes, rendezvous)."""
    inline: bool = False
    resume: bool = False
    retry_failed: bool = False
    """With resume: run again the cases recorded as error or timeout; each new record replaces the old one."""
    threads: int | None = None
    """Intra-op threads for every CPU case (`--threads`), over each suite's `cpu_threads`."""
    cpus: frozenset[int] | None = None
    """The CPUs every case is pinned to (`--cpus`; bench.launchers); None: not pinned."""
    predict: bool = False
    """`--predict`: each case records bench.plan's prediction of its peak memory (predicted_peak_mem_bytes)."""
    skip_predicted_oom: bool = False
    """`--skip-predicted-oom`: on a GPU, a case predicted not to fit is skipped with the predicted and free bytes."""
    wait_idle_s: float | None = None
    """`--wait-idle`: before each case, wait at most this long for other processes to leave its CPUs."""
    budget_s: float | None = None
    """Wall-clock seconds for the whole run: no case starts after it, and the case running then is given only what
    is left; a case cut off by it is not recorded, so --resume runs it. None: no budget."""
    run_id: str | None = None
    argv: list[str] = field(default_factory=lambda: list(sys.argv))


def run(cfg: RunConfig, progress=None, opened=None) -> tuple[int, list[Record]]:
    """Run every planned case not yet finished in cfg.out; returns (exit code, records of the planned cases). The
    run holds cfg.out's lock (bench.rundir) from its first check to its last write. `opened()`, if given, is called
    once cfg.out is found fit and locked, before anything is written (a usage error comes before it)."""
    cases = plan(cfg.suites, cfg.size, cfg.device, cfg.variants, cfg.shard, cfg.where, cfg.launch.world_size,
                 cfg.cases_like)
    shard = "{}/{}".format(*cfg.shard)
    created = not cfg.out.exists()
    lock, meta, scan, rebuild = open_run_dir(cfg.out, cfg.resume, (cfg.size, cfg.device, shard),
                                             [s.name for s in cfg.suites])
    try:
        if rebuild is not None:
            _check_rebuild(cfg, scan, rebuild)
        elsewhere = _skipped_by_peers(cases, _todo(cases, scan, cfg), cfg) if cfg.launch.nnodes > 1 else set()
        if opened is not None:
            opened()
        return _run(cfg, progress, cases, shard, meta, scan, rebuild, elsewhere)
    except distributed.NodesDiffer as e:
        if created:  # the folder this run made holds only its lock
            with suppress(OSError):
                (cfg.out / LOCK).unlink()
                cfg.out.rmdir()
        raise RunDirError(str(e)) from None
    finally:
        lock.release()


def _todo(cases: list[Case], scan: Scan, cfg: RunConfig) -> list[Case]:
    """The cases of `cases` this run measures: those `scan` holds no record of; with --retry-failed, failed ones too."""
    finished = {r.case_id: r for r in scan.records}
    return [c for c in cases if c.id not in finished or (cfg.retry_failed and finished[c.id].status in FAILED)]


def _run(cfg: RunConfig, progress, cases: list[Case], shard: str, meta: dict | None, scan: Scan,
         rebuild: str | None, elsewhere: set[str]) -> tuple[int, list[Record]]:
    from bench import __version__
    from bench import env as envmod

    marks = [IMPORTED, interference.snapshot()]  # where machine_start's span may begin (see IMPORTED)
    if (message := scan.warning(cfg.out / RECORDS_JSONL)) is not None:
        warnings.warn(message, stacklevel=3)
    finished = {r.case_id: r for r in scan.records}
    environment = envmod.collect()
    env_id = envmod.env_id(environment)  # of this machine now: a resumed run may continue elsewhere
    if meta is None:
        run_id = scan.records[0].run_id if scan.records else cfg.run_id or new_run_id()
        started = min((r.started_at for r in scan.records), default="") or now()
        # a rebuilt run's selection holds the variants its records show too (None: every variant, as before)
        variants = sorted({*cfg.variants, *(r.variant for r in scan.records)}) if cfg.variants else None
        meta = RunMeta(run_id=run_id, argv=cfg.argv, size=cfg.size, device=cfg.device, shard=shard,
                       variants=variants, started_at=started, env=environment, env_id=env_id,
                       git=environment.get("git"), version=__version__, seed=SEED)
        if rebuild is not None:
            meta.extra["rebuilt"] = f"{rebuild}; rebuilt by bench run --resume at {now()} from its records"
            n = len(scan.records)
            kept = keep_damaged(cfg.out / RUN_JSON)
            warnings.warn(f"{rebuild}: rebuilt it from {n} record{'s' * (n != 1)} of run {run_id} (its size, "
                          "device and shard are taken from this command, its environment from this machine)"
                          + (f"; the damaged file is kept as {kept.name}" if kept else ""), stacklevel=3)
    else:
        meta = RunMeta.from_json(meta)
        meta.argv, meta.variants = widened(meta, cfg, finished, cases, plan)  # a resume that selects more
    # the run's selection is what it was started for and every --resume since: a narrower resume leaves it
    # unfinished, with the rest listed; written now, so that a run killed from here on still lists them
    selection = [*_still_cases(cfg, meta.not_run or []), *(c.id for c in cases)]
    was = (meta.finished_at, meta.machine_end)  # kept by a resume that finds nothing to run
    meta.finished_at, meta.not_run = None, [c for c in dict.fromkeys(selection) if c not in finished] or None
    meta.cpus = sorted(cfg.cpus) if cfg.cpus else None  # run-wide, as --threads' counts under suites are
    meta.machine_start = meta.machine_start or interference.machine_state(marks)  # a resumed run keeps its first
    # each suite as the code that measures its cases declares it (one this resume runs no case of keeps its entry)
    todo = [c for c in _todo(cases, scan, cfg) if c.id not in elsewhere]
    threads, mixed = thread_counts(meta.suites, {s.name: cpu_threads(s, cfg.device, cfg.threads, cfg.cpus)
                                                 for s in cfg.suites}, todo, scan.records, cfg.out)
    meta.suites = declarations(meta.suites, {s.name: s.describe() for s in cfg.suites}, todo, threads)
    if todo:  # a resume on another machine or GPU than run.json's: each listed, as a merge lists its shards'
        mixed += note_machine(meta, env_id, environment, [c.id for c in todo], scan.records, cfg.out)
    write_run_json(cfg.out, meta)
    changed = code_changed(meta.git, environment.get("git"), cfg.out) if todo and scan.records else None
    for message in [*mixed, *filter(None, [changed])]:  # run.json keeps the code it was started with
        warnings.warn(message, stacklevel=3)
    if cfg.predict or cfg.skip_predicted_oom:
        todo = [replace(c, predict=True, skip_predicted_oom=cfg.skip_predicted_oom) for c in todo]
    launchers.preload(m for c in todo for m in (c.module, *SUITES[c.suite].preload))
    refs = {r.case_id: r.metrics for r in finished.values() if r.status == "ok"}
    undeclared: set[str] = set()  # the metrics a warning has named
    deadline = None if cfg.budget_s is None else time.monotonic() + cfg.budget_s
    limit = cfg.timeout_s or TIMEOUTS[cfg.size]
    if progress is not None:
        progress.start(len(cases), len(cases) - len(todo), Eta.from_runs(cfg.out, [c.id for c in todo], cfg.device))
    # the writer closes before _replacing drops what the retried cases' new records replace
    with _replacing(cfg.out / RECORDS_JSONL, cfg.resume), RecordWriter(cfg.out / RECORDS_JSONL) as writer, \
            _stopping(progress), distributed.scratch("techbench-progress-") as notes:
        for i, case in enumerate(todo):
            waited = _wait_idle(case, cfg, deadline, progress)  # not part of the case's time, nor of its timeout
            timeout_s = limit
            if deadline is not None:
                timeout_s = min(timeout_s, deadline - time.monotonic())
                if timeout_s <= 0:
                    break
            said = notes / f"{i}.json"  # the case's progress: a file of its own, so none shows as the next's
            if progress is not None:
                progress.begin(case, said)
            started, t0 = now(), time.perf_counter()
            marks.append(interference.snapshot())  # machine_end measures from one of these, about a second back
            result = _execute(case, cfg, timeout_s, said)
            if result is None:  # a distributed case whose rank 0 ran on another node: that node records it
                elsewhere.add(case.id)
                continue
            if result["status"] == "timeout" and timeout_s < limit:  # cut off by the budget, not its own
                break
            result = _checked(result)
            record = Record(run_id=meta.run_id, suite=case.suite, variant=case.variant, params=case.params,
                            case_id=case.id, status=result["status"], metrics=result.get("metrics") or {},
                            samples=result.get("samples") or {}, error=result.get("error"), device=cfg.device,
                            started_at=started, elapsed_s=round(time.perf_counter() - t0, 3), env_id=env_id,
                            nonfinite=result.get("nonfinite") or {})
            if record.status == "ok" and cfg.wait_idle_s:
                record.metrics["idle_wait_s"] = waited
            if record.status == "ok":
                warn_undeclared(SUITES[case.suite], record.metrics, undeclared)
                refs[record.case_id] = record.metrics  # first, so the reference gets its own ratios of 1
                _add_relative(record, refs)
            writer.write(record)
            finished[case.id] = record
            if progress is not None:
                progress.end(record)
    # unfinished while a case of its selection has no record: stopped by the budget, or outside a narrower resume's
    meta.not_run = [c for c in meta.not_run or [] if c not in finished and c not in elsewhere] or None
    meta.finished_at = None if meta.not_run else now()
    meta.recorded, meta.machine_end = len(finished), interference.machine_state(marks)
    keep_measured(meta, finished.values())  # a resume's GPU whose every case a --retry-failed ran elsewhere
    if not todo and was[0] and meta.finished_at:  # a resume of a finished run with nothing to do: it ran nothing
        meta.finished_at, meta.machine_end = was
    write_run_json(cfg.out, meta)
    records = [finished[c.id] for c in cases if c.id in finished]
    stopped = any(c.id in (meta.not_run or ()) for c in cases)  # by the budget: this selection's cases not run
    return (1 if stopped or any(r.status in FAILED for r in records) else 0), records


def _cases_of(cfg: RunConfig, suite_names) -> set[str]:
    """The case_ids this command's size, device and world size give the named suites (those loaded here), of every
    variant and params and of every shard (a shard is cut after --variant, --params and --case select, so which
    shard holds a case depends on them): what a run made this way may hold."""
    suites = [SUITES[name] for name in sorted(set(suite_names)) if name in SUITES]
    return {c.id for c in plan(suites, cfg.size, cfg.device, world_size=cfg.launch.world_size)}


def _check_rebuild(cfg: RunConfig, scan: Scan, rebuild: str) -> None:
    """A run.json rebuilt from the records takes its size, device, shard and world size from this command: refused
    (RunDirError) unless every record is a case these would plan, of any variant (a resume may select fewer), so
    that a smoke run's records are never relabelled quick."""
    absent = sorted({r.suite for r in scan.records if r.suite not in SUITES})
    if absent:
        raise RunDirError(f"cannot resume {cfg.out}: {rebuild}, and its records name suites not loaded here "
                          f"({', '.join(absent)}); install the plug-in that has them, or choose another --out")
    known = _cases_of(cfg, (r.suite for r in scan.records))
    strange = [r.case_id for r in scan.records if r.case_id not in known]
    if strange:
        world = f" over {cfg.launch.world_size} ranks" if cfg.launch.world_size > 1 else ""
        raise RunDirError(f"cannot resume {cfg.out}: {rebuild}, and {len(strange)} of its records are not "
                          f"{cfg.size} cases on {cfg.device}{world} (such as {strange[0]}); resume it with the "
                          "--size, --device, --shard, --nproc-per-node and --nnodes that made it, or choose another "
                          "--out")


def _still_cases(cfg: RunConfig, listed: list[str]) -> list[str]:
    """Of the case_ids a run listed as not run, those this code still plans for it (a grid may have changed since):
    the others are dropped with a warning, or the run could never finish. Those of a suite not loaded here (a
    plug-in) stay: installing it lets a resume run them."""
    if not listed:
        return []
    known = _cases_of(cfg, (c.split("/", 1)[0] for c in listed))
    gone = [c for c in listed if c not in known and c.split("/", 1)[0] in SUITES]
    if gone:
        warnings.warn(f"{len(gone)} of the cases {cfg.out / 'run.json'} lists as not run are no {cfg.size} cases "
                      f"here now (such as {gone[0]}: its grid changed); dropped from not_run", stacklevel=4)
    return [c for c in listed if c not in gone]


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


def _skipped_by_peers(cases: list[Case], todo: list[Case], cfg: RunConfig) -> set[str]:
    """The distributed cases of `todo` that another node of a run over several nodes holds a record of
    (bench.distributed.agree), so that every node of a resumed run resumes at the same case. Raises
    distributed.NodesDiffer where the nodes planned different cases, or could not meet (NodesUnreachable): a fresh run
    asks too, so that such nodes stop at once instead of each waiting at its own first case until its timeout."""
    jobs = [c.id for c in cases if SUITES[c.suite].world_sizes]
    if not any(s.world_sizes for s in cfg.suites):  # no distributed suite selected: no job to meet the others at
        return set()  # (one with no case left by the filters still asks: the others may have some, and must stop)
    mine = {c.id for c in todo}
    return distributed.agree({c for c in jobs if c not in mine}, jobs, cfg.launch, AGREE_TIMEOUT_S, cfg.cpus) & mine


def _execute(case: Case, cfg: RunConfig, timeout_s: float, progress: Path) -> dict[str, Any] | None:
    launcher = launchers.for_case(case, cfg.launch, cfg.inline, cfg.cpus, cfg.device)
    try:
        return launcher.launch(case, cfg.device, timeout_s,
                               cpu_threads(SUITES[case.suite], cfg.device, cfg.threads, cfg.cpus), str(progress))
    except launchers.ServerDied as e:  # an isolated case's or a distributed job's: recorded, and the run goes on
        return {"status": "error", "error": str(e)}


def _wait_idle(case: Case, cfg: RunConfig, deadline: float | None, progress) -> float | None:
    """--wait-idle: the seconds waited for the case's CPUs to go quiet, within what the --budget leaves."""
    if not cfg.wait_idle_s:
        return None
    bound = cfg.wait_idle_s if deadline is None else min(cfg.wait_idle_s, deadline - time.monotonic())
    told = None if progress is None else (lambda why: progress.waiting(case, why))
    return pinning.wait_idle(bound, cfg.cpus, cpu_threads(SUITES[case.suite], cfg.device, cfg.threads, cfg.cpus),
                               told)


@contextmanager
def _replacing(path: Path, resume: bool):
    """--resume (--retry-failed among them): when the run ends, however it ends, each error or timeout record that a
    later record of its case replaced is dropped from records.jsonl, so the run holds one record a case, as `bench
    merge` and `bench history add` require; a plain resume so tidies after a --retry-failed that was killed. Readers
    keep the last record of a case anyway: a run killed before this loses nothing."""
    try:
        yield
    finally:
        if resume:
            _drop_replaced(path)


def _drop_replaced(path: Path) -> None:
    try:
        lines = path.read_bytes().splitlines(keepends=True)
    except OSError:
        return
    seen = [_case_and_status(line) for line in lines]
    last = {case: i for i, (case, _) in enumerate(seen) if case is not None}
    keep = [line for i, (line, (case, status)) in enumerate(zip(lines, seen))
            if not (status in FAILED and last[case] > i)]
    if len(keep) < len(lines):
        try:
            atomic_write_bytes(path, b"".join(keep))
        except OutputError as e:
            warnings.warn(f"{e}; the retried cases keep their old records beside the new, and readers take the last",
                          stacklevel=3)


def _case_and_status(line: bytes) -> tuple[str | None, str | None]:
    try:
        d = json.loads(line)
        record = Record.from_dict(d) if isinstance(d, dict) else None
    except (ValueError, TypeError, RecursionError):  # not a record: left as it is, for readers to count
        return None, None
    return (record.case_id, record.status) if record else (None, None)


@contextmanager
def _stopping(progress):
    try:
        yield
    except BaseException:
        if progress is not None:
            with suppress(OSError):  # its terminal may be what stopped the run (SIGHUP, then EIO): that is the news
                progress.stop()
        raise
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
