"""`bench merge`: the shard run directories of one sweep (`bench run --shard I/N` on several machines) as one run
directory, so reports, compare and history see one run.

Records are copied unchanged, each with the run_id of its shard and the env_id of the machine that ran it; run.json
keeps every input's environment under `envs` (env_id -> env) and lists the inputs under `merged_from`, each with its
own env and device, so a report can say which machine ran what, and which GPU of it where shards of one machine ran
on GPUs of their own (CUDA_VISIBLE_DEVICES; one env_id: bench.machines).

Inputs of another schema, of another size, that repeat a case, or that lost records since they finished
(bench.sides.damage: the merge would hold what is left as the whole shard) are refused before anything is written.
The merged run has finished where every shard of the sweep was given, each finished; otherwise its finished_at is
null, as a run killed midway. It is written into a temporary folder beside OUT, records first and run.json last,
and renamed onto OUT whole: a failure leaves no OUT and no half-merged run (OutputError, exit 1).
"""

from __future__ import annotations

import warnings
from pathlib import Path

from bench.atomic import atomic_path
from bench.history import repeated_case
from bench.machines import RESUMED
from bench.records import (
    RECORDS_JSONL,
    RecordWriter,
    RunMeta,
    SchemaError,
    read_run_json,
    scan_records,
    write_run_json,
)
from bench.rundir import rerun_lost
from bench.runner import new_run_id
from bench.sides import damage


class MergeError(ValueError):
    """The inputs cannot be merged, or OUT cannot take them; nothing was written."""


def merge(run_dirs: list[Path], out: Path, argv: list[str] | None = None) -> tuple[dict, int]:
    """Write the merged run to `out` (which must not hold anything yet); returns (its run.json, record count)."""
    named: dict[Path, Path] = {}
    for d in map(Path, run_dirs):  # resolved: ./a and a are one run, and would clash on every case
        if d.resolve() in named:
            raise MergeError(f"run directory {d} is named twice (also as {named[d.resolve()]})")
        named[d.resolve()] = d
    runs = []
    for d in run_dirs:
        twice = repeated_case(d)
        if twice is not None:
            raise MergeError(f"{d} holds case {twice} more than once ({RECORDS_JSONL} has several records of it): a "
                             "run has each case once (after a --retry-failed cut short, `bench run ... --resume --out "
                             f"{d}` drops the failures it replaced)")
        try:
            meta, scan = read_run_json(d), scan_records(Path(d) / RECORDS_JSONL)
        except SchemaError as e:
            raise MergeError(f"{d}: {e}") from None
        if meta is None:
            raise MergeError(f"{d} is not a run directory (no run.json)")
        if (why := damage(meta, scan, Path(d) / RECORDS_JSONL)) is not None:
            # the merge would record what is left as the whole shard, and compare and history would take it so
            raise MergeError(f"{d} is damaged since it finished: {why}; a merged run reads as whole, so merge takes "
                             f"intact runs only: {rerun_lost(meta, Path(d))}")
        if (message := scan.warning(Path(d) / RECORDS_JSONL)) is not None:  # lines of another schema, left out
            warnings.warn(message, stacklevel=2)
        records = scan.records
        runs.append((Path(d), meta, records))

    sizes = {meta.get("size") for _, meta, _ in runs}
    if len(sizes) > 1:
        raise MergeError(f"the runs are of different sizes ({', '.join(sorted(map(str, sizes)))}): shards of one "
                         "sweep share --size")
    seen: dict[str, Path] = {}
    for d, _, records in runs:
        for r in records:
            if r.case_id in seen:
                raise MergeError(f"case {r.case_id} is in both {seen[r.case_id]} and {d}: merge shards of one sweep, "
                                 "each case once")
            seen[r.case_id] = d

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MergeError(f"--out {out} already exists and is not an empty directory; choose another")
    with atomic_path(out, directory=True) as staged:
        meta = _write(runs, staged, argv or [], len(seen))
    return meta, len(seen)


def missing_shards(shards: list[str]) -> list[str]:
    """The I/N slices of a sweep that none of `shards` (each "I/N") is, when they all name the same N."""
    counts = {s.split("/")[1] for s in shards}
    if len(counts) != 1:
        return []
    n = int(counts.pop())
    return [f"{i}/{n}" for i in range(1, n + 1) if f"{i}/{n}" not in shards]


def _device(devices: set) -> str | None:
    """The merged run's device: the shards' one, their type where only the index differs (cuda:0 and cuda:1 ran one
    kind of device), else "mixed"."""
    if len(devices) == 1:
        return devices.pop()
    kinds = {str(d).partition(":")[0] for d in devices}
    return kinds.pop() if len(kinds) == 1 and None not in devices else "mixed"


def _shards(runs) -> list[dict]:
    """merged_from of the merge of `runs`: each shard run they hold, a merged input standing for its own shards (a
    sweep merged in stages), with its directory, run_id, shard, env_id, git, records, argv, finished_at, device and
    env (each shard's, where one merged before shards kept theirs lacks them), and resumed_envs where it has them."""
    out = []
    for d, m, rs in runs:
        entries = m.get("merged_from") if not m.get("imported_from") else None
        if isinstance(entries, list) and entries:  # a merge of before finished_at was kept: finished where it was
            out += [{**e, "finished_at": e.get("finished_at", m.get("finished_at"))} for e in entries
                    if isinstance(e, dict)]
            continue
        # its env and device: shards on the GPUs of one machine (CUDA_VISIBLE_DEVICES) share an env_id, and envs
        # keeps one env an env_id, so the shard's own names the GPU its records measured on (bench.machines)
        out.append({"dir": str(d), "run_id": m.get("run_id"), "shard": m.get("shard", "1/1"),
                    "env_id": m.get("env_id"), "git": m.get("git"), "records": len(rs), "argv": m.get("argv"),
                    "finished_at": m.get("finished_at"), "device": m.get("device"), "env": m.get("env"),
                    # a shard resumed on another GPU of its machine: which cases that GPU measured
                    **({RESUMED: m[RESUMED]} if m.get(RESUMED) else {})})
    return out


def _write(runs, out: Path, argv: list[str], n_cases: int) -> dict:
    first = runs[0][1]
    devices = {meta.get("device") for _, meta, _ in runs}
    shards = _shards(runs)
    finished = [e.get("finished_at") for e in shards]
    missing = missing_shards([str(e.get("shard") or "1/1") for e in shards])
    # each input's machines: its own, or those it lists (a merge's shards', a run resumed on another machine); of
    # shards of one env_id (GPUs of one machine), the first's, as run.json's env
    envs: dict = {}
    for _, m, _ in runs:
        for k, e in (m.get("envs") or {m.get("env_id"): m.get("env")}).items():
            envs.setdefault(k, e)
    # what a shard's run.json lists without a record: a shard stopped by its --budget, or killed (listed from its
    # start, so less what it recorded)
    recorded = {r.case_id for _, _, records in runs for r in records}
    not_run = [c for _, m, _ in runs for c in m.get("not_run") or [] if c not in recorded]
    meta = RunMeta(
        run_id="merged-" + new_run_id(), argv=argv or [], size=first.get("size"),
        device=_device(devices),
        started_at=min(m.get("started_at") or "" for _, m, _ in runs) or None,
        # a shard unfinished, or one missing: the sweep has not finished, and compare and history say so
        finished_at=None if None in finished or missing else max(finished),
        env=first.get("env") or {}, env_id=first.get("env_id"), git=first.get("git"), version=first.get("version"),
        seed=first.get("seed"),
        # what the suites' metrics are, as the shards declared them (the last shard's declaration wins)
        suites={name: info for _, m, _ in runs for name, info in (m.get("suites") or {}).items()},
        not_run=not_run or None, recorded=len(recorded),
        extra={"envs": envs,
               "merged_from": shards,
               "missing_shards": missing, "cases": n_cases},
    )
    with RecordWriter(out / RECORDS_JSONL) as writer:
        for _, _, records in runs:
            for r in records:
                writer.write(r)
    write_run_json(out, meta)  # last: a run.json says the records beside it are complete
    return meta.to_json()

