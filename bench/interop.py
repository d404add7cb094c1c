"""pytest-benchmark JSON in and out: `bench export RUN --format pytest-benchmark` and `bench import FILE.json`.

Export writes one pytest-benchmark benchmark per timing series of each ok record (a series is a `samples` entry whose
name ends in `_ms` or `_s`): name and fullname are the case_id (with `[series]` appended when a record has more than
one series), group is the suite, params are the record's params, stats are computed by pytest-benchmark's own `Stats`
from the raw samples in seconds, `stats.data` holds those samples, and extra_info holds the record's metrics
plus a `techbench` entry (suite, variant, series, run_id, device, size, and the record's `nonfinite` where it names
any) that lets import restore the case exactly.
Failed, OOM and skipped records have no samples and are left out, as pytest-benchmark leaves out errored tests, and
so are ok records with no timing series; a warning counts them. Only a finished, intact run is exported (what the
history takes), and machine_info["techbench"]["runs"] carries each run's run_id, size, finished_at and its suites'
declarations (what each metric is), which import writes back to run.json.

Import turns any pytest-benchmark JSON into a run directory. One run exported comes back with its run_id; several as one
run listing them under merged_from (bench.merge's field), each record keeping its run's id; a foreign file's run_id
comes from its datetime and a hash of its bytes. A benchmark written by export gets its case back; any other becomes
suite = its group (or "pytest"), variant = its name, params = its params (a list or object one, such as a parametrized
shape, as its JSON text), with metrics time_ms (the median, its timing), time_mean_ms and time_stddev_ms (declared
context in run.json, not judged), and samples time_ms when
the file holds raw data (--benchmark-save-data or --benchmark-json). Every field import reads is type-checked first: a
wrong one is a ValueError (exit 2) naming it, e.g. benchmarks[3].stats.median, and nothing is written. Both commands
write through bench.atomic: a failure leaves no partial file or run directory.

This module never imports torch.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

from bench.atomic import atomic_path, atomic_write_text
from bench.env import env_id
from bench.interop_fields import Fields, env_from, stamp
from bench.metrics import Metric
from bench.records import (
    RECORDS_JSONL,
    Record,
    RecordWriter,
    RunMeta,
    write_run_json,
)
from bench.suite import case_id
from bench.validation import run_json_problem

# GPU fields copied into machine_info["techbench"]["gpus"]: what a reader of a benchmark dashboard needs to tell two
# machines apart (model, driver, max clocks, power limit), without UUIDs, bus ids or the clocks of the moment, which
# would make pytest-benchmark's machine comparison warn on every run.
GPU_SUMMARY = ("name", "driver_version", "cuda_driver_version", "compute_capability", "memory_total_bytes",
               "max_sm_clock_mhz", "max_mem_clock_mhz", "power_limit_w")
VOLATILE_ENV = ("git", "hostname", "techbench")  # per commit or per host
# What a foreign benchmark's metrics are, declared in run.json as a suite declares its own: the median is its timing,
# the mean (led by outliers) and the standard deviation are context beside it, as a techbench timing's p20 and p80 are,
# so that a noisier run at the same median is not judged slower
FOREIGN_SUITE = {"description": "pytest-benchmark tests (bench import)", "metrics": {m.name: m.to_json() for m in (
    Metric("time_ms", "measured", "lower", "median time of one call (pytest-benchmark's stats.median)", "ms"),
    Metric("time_mean_ms", "info", None, "mean time of one call (stats.mean): context beside the median", "ms"),
    Metric("time_stddev_ms", "info", None, "standard deviation of the time of one call (stats.stddev)", "ms"))}}
VOLATILE_GPU = ("uuid", "pci_bus_id", "sm_clock_mhz", "mem_clock_mhz")  # per card or per moment


def seconds_per_unit(series: str) -> float | None:
    """1e-3 for a `_ms` series, 1 for a `_s` duration, None for anything else (rates such as `_per_s` included)."""
    if series.endswith("_ms"):
        return 1e-3
    if series.endswith("_s") and not series.endswith("_per_s"):
        return 1.0
    return None


def techbench_machine_info(env: dict) -> dict:
    """machine_info["techbench"]: GPUs, driver, CUDA/torch versions and env_id, plus the whole env for import.

    git state is left out (commit_info carries it), so that pytest-benchmark's machine_info comparison does not
    warn on every commit.
    """
    gpus = env.get("gpus") or []
    return {
        "env_id": env_id(env),
        "gpus": [{k: g.get(k) for k in GPU_SUMMARY} for g in gpus],
        "driver_version": next((g.get("driver_version") for g in gpus if g.get("driver_version")), None),
        "torch": env.get("torch"), "torch_cuda": env.get("torch_cuda"), "cudnn": env.get("cudnn"),
        "triton": env.get("triton"),
        "env": {**{k: v for k, v in env.items() if k not in VOLATILE_ENV},
                "gpus": [{k: v for k, v in g.items() if k not in VOLATILE_GPU} for g in gpus]},
    }


def _machine_info(env: dict) -> dict:
    """pytest-benchmark's own machine_info keys, filled from a techbench env, plus the techbench entry."""
    return {
        "node": env.get("hostname"), "processor": None, "machine": None, "python_compiler": None,
        "python_implementation": env.get("python_implementation"),
        "python_implementation_version": env.get("python_version"), "python_version": env.get("python_version"),
        "python_build": None, "release": None, "system": env.get("platform"),
        "cpu": {"brand_raw": env.get("cpu_model"), "count": env.get("cpu_logical_cores")},
        "techbench": techbench_machine_info(env),
    }


def _stats(seconds: list[float]) -> dict:
    from pytest_benchmark.stats import Stats

    stats = Stats()
    for s in seconds:
        stats.update(s)
    return {**stats.as_dict(), "data": list(seconds), "iterations": 1}


def _iso(stamp: str | None) -> str | None:
    """Our '...Z' timestamps as pytest-benchmark writes them (datetime.isoformat, '+00:00')."""
    return stamp[:-1] + "+00:00" if stamp and stamp.endswith("Z") else stamp


def _pytest_benchmark_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pytest-benchmark")
    except PackageNotFoundError:
        return "5.0.0"


def export_pytest_benchmark(run_dirs: list[str | Path], out: str | Path) -> Path:
    """Write the ok records of `run_dirs` (one machine and software stack) as a pytest-benchmark JSON file. A run
    exported is one the history would take (bench.history.check: finished, its records whole, each case once): its
    import is read as a finished run. A warning counts the records left out (not ok, or with no timing series)."""
    from bench.history import check

    runs = []
    for run_dir in run_dirs:
        runs.append(check(run_dir, taker="an export is imported as a finished run, so it takes an intact run only"))
    if not runs:
        raise ValueError("no run directory to export")
    ids = sorted({meta.get("env_id") for meta, _ in runs}, key=str)
    if len(ids) > 1:
        raise ValueError(f"the runs come from different environments (env_id {', '.join(map(str, ids))}); "
                         "export each to its own file")
    first = runs[0][0]
    env = first.get("env") or {}
    git = first.get("git") or env.get("git") or {}
    benchmarks, seen, left = [], {}, Counter()
    for meta, records in runs:
        for r in records:
            if r.status != "ok":
                left[r.status] += 1
                continue
            if seen.setdefault(r.case_id, r.run_id) != r.run_id:
                raise ValueError(f"{r.case_id} is in runs {seen[r.case_id]} and {r.run_id}; export each to its own "
                                 "file (pytest-benchmark keys benchmarks by name)")
            series = [k for k, v in r.samples.items() if seconds_per_unit(k) and v]
            if not series:
                left["ok without a timing series"] += 1
            for name in series:
                label = r.case_id if len(series) == 1 else f"{r.case_id}[{name}]"
                extra = dict(r.metrics)
                extra["techbench"] = {"suite": r.suite, "variant": r.variant, "series": name, "run_id": r.run_id,
                                      "device": r.device, "size": meta.get("size"), "started_at": r.started_at,
                                      "elapsed_s": r.elapsed_s, "env_id": r.env_id,
                                      **({"nonfinite": r.nonfinite} if r.nonfinite else {})}
                benchmarks.append({
                    "group": r.suite, "name": label, "fullname": label, "params": r.params,
                    "param": ",".join(f"{k}={r.params[k]}" for k in sorted(r.params)), "extra_info": extra,
                    "options": {"disable_gc": False, "timer": "techbench", "min_rounds": len(r.samples[name]),
                                "max_time": None, "min_time": None, "warmup": None},
                    "stats": _stats([x * seconds_per_unit(name) for x in r.samples[name]]),
                })
    if not benchmarks:  # an empty file would import as a run that measured nothing: import refuses it
        held = ", ".join(f"{n} {what}" for what, n in sorted(left.items())) or "no records"
        raise ValueError(f"nothing to export: no ok record of {', '.join(str(m.get('run_id')) for m, _ in runs)} has "
                         f"a timing series ({held})")
    info = _machine_info(env)
    # what import gives back to run.json: each run's state and its suites' declarations (what each metric is)
    info["techbench"]["runs"] = [{"run_id": m.get("run_id"), "size": m.get("size"), "finished_at": m.get("finished_at"),
                                  "suites": m.get("suites") or {}} for m, _ in runs]
    doc = {
        "machine_info": info,
        "commit_info": {"id": git.get("sha") or "unknown", "time": None, "author_time": None,
                        "dirty": bool(git.get("dirty")), "project": "techbench", "branch": "(unknown)"},
        "benchmarks": benchmarks,
        "datetime": _iso(first.get("started_at")),
        "version": _pytest_benchmark_version(),
    }
    written = atomic_write_text(out, json.dumps(doc, indent=2, allow_nan=False, default=str) + "\n")
    if left:  # pytest-benchmark holds timings: the rest of a run stays in its run directory
        warnings.warn("left out of the export (records with no timing series to export): "
                      + ", ".join(f"{n} {what}" for what, n in sorted(left.items())), stacklevel=2)
    return written


def _benchmark(f: Fields, bench, where: str) -> tuple[str, str, dict, str | None, dict, dict]:
    """(suite, variant, params, series, tags, metrics) of one benchmark, every field it reads checked; series is None
    for a foreign benchmark, and metrics are those of extra_info for one of ours (the timing comes from stats)."""
    bench = f.need(bench, where, "object")
    params = f.get(bench, "params", where, "object") or {}
    extra = f.get(bench, "extra_info", where, "object") or {}
    tags = f.get(extra, "techbench", f"{where}.extra_info", "object") or {}
    ours = {"suite", "variant", "series"} <= tags.keys()
    params = params if ours else {key: _param_text(value) for key, value in params.items()}
    for key, value in params.items():  # a record's params are flat: they spell its case_id
        f.need(value, f"{where}.params.{key}", "value", required=False)
    if ours:
        at = f"{where}.extra_info.techbench"
        names = [f.get(tags, k, at, "text", required=True) for k in ("suite", "variant", "series")]
        if not all(names):
            raise f.bad(f"{at}.{('suite', 'variant', 'series')[names.index('')]}", "must not be empty")
        for key in ("run_id", "device", "size", "started_at", "env_id"):
            f.get(tags, key, at, "text")
        f.get(tags, "elapsed_s", at, "number")
        f.get(tags, "nonfinite", at, "object")  # its values are checked with the record it goes into
        metrics = {k: f.get(extra, k, f"{where}.extra_info", "metric") for k in extra if k != "techbench"}
        return names[0], names[1], params, names[2], tags, metrics
    group, name, fullname = (f.get(bench, k, where, "text") for k in ("group", "name", "fullname"))
    if not (name or fullname):
        raise f.bad(f"{where}.name", "is missing (it must be a string, or fullname one)")
    return group or "pytest", name or fullname, params, None, {}, {}


def _param_text(value):
    """A foreign benchmark's param as a record's flat params hold it: a list or object as its JSON text
    (pytest-benchmark writes a tuple, a shape say, as a list), and without the memory address of an object
    pytest-benchmark could not serialize (`UNSERIALIZABLE[<function f at 0x7f...>]`), which changes from run to run:
    the case keeps its case_id."""
    if isinstance(value, (list, dict)):
        value = json.dumps(value, sort_keys=True)
    if isinstance(value, str) and "UNSERIALIZABLE[" in value:
        value = re.sub(r" at 0x[0-9a-fA-F]+(?=>)", "", value)
    return value


def _read_stats(f: Fields, bench: dict, where: str) -> tuple[dict, list[float]]:
    """The stats of a benchmark ({median, mean, stddev, total}, absent ones left out) and its raw data, if any."""
    stats = f.get(bench, "stats", where, "object", required=True)
    at = f"{where}.stats"
    numbers = {k: f.get(stats, k, at, "number", required=k == "median") for k in ("median", "mean", "stddev", "total")}
    data = [f.need(x, f"{at}.data[{i}]", "number") for i, x in enumerate(f.get(stats, "data", at, "list") or [])]
    return {k: v for k, v in numbers.items() if v is not None}, data


def _common(values) -> Any:
    values = set(values)
    return values.pop() if len(values) == 1 else None


def _runs(f: Fields, machine_info: dict) -> list[dict]:
    """machine_info.techbench.runs of an export: each run's run_id, size, finished_at and its suites' declarations
    (absent from files of older exports and of other tools)."""
    ours = f.get(machine_info, "techbench", "machine_info", "object") or {}
    runs = f.get(ours, "runs", "machine_info.techbench", "list") or []
    for i, run in enumerate(runs):
        f.need(run, f"machine_info.techbench.runs[{i}]", "object")
        for name, declared in (f.get(run, "suites", f"machine_info.techbench.runs[{i}]", "object") or {}).items():
            f.need(declared, f"machine_info.techbench.runs[{i}].suites.{name}", "object")
    return runs


def import_pytest_benchmark(file: str | Path, out_dir: str | Path) -> Path:
    """Turn a pytest-benchmark JSON file into a run directory (run.json + records.jsonl) at `out_dir`.

    ValueError, one line naming the field, for a file that is not pytest-benchmark JSON or holds a field of the wrong
    type, before anything is written. The run is written into a temporary folder beside `out_dir`, records first and
    run.json (which says it finished) last, and renamed onto `out_dir` whole: a failure (OutputError) leaves none."""
    from bench import __version__

    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ValueError(f"--out {out_dir} already exists and is not empty; choose a new directory")
    try:
        doc = json.loads(Path(file).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:  # RecursionError: JSON nested thousands deep
        raise ValueError(f"cannot read {file}: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("benchmarks"), list):
        raise ValueError(f"{file} is not a pytest-benchmark JSON file (no 'benchmarks' list)")
    if not doc["benchmarks"]:  # an empty run would read as one that measured nothing, in compare and the history
        raise ValueError(f"{file} holds no benchmarks (its 'benchmarks' list is empty): nothing to import")
    f = Fields(file)
    env = env_from(f, f.get(doc, "machine_info", "", "object") or {}, f.get(doc, "commit_info", "", "object") or {})
    started = stamp(f, f.get(doc, "datetime", "", "text"))
    version = f.get(doc, "version", "", "text")

    cases = [(_benchmark(f, b, f"benchmarks[{i}]"), _read_stats(f, b, f"benchmarks[{i}]"), b)
             for i, b in enumerate(doc["benchmarks"])]
    foreign = [(suite, variant, json.dumps(params, sort_keys=True, default=str))
               for (suite, variant, params, series, *_), _, _ in cases if series is None]
    tags_all = [tags for (*_, tags, _), _, _ in cases if tags]
    # One run exported comes back as that run (its run_id: compare and history know it for the same run). Several
    # come back as one run that lists them under merged_from, as bench merge does, its records keeping their runs'
    # ids, so that it is counted once beside any of them. A foreign file's run is named by its content: importing
    # the same file again gives the same run.
    ids = sorted({t["run_id"] for t in tags_all if t.get("run_id")})
    runs = _runs(f, f.get(doc, "machine_info", "", "object") or {})
    if len(ids) == 1:
        run_id = ids[0]
    else:
        digest = hashlib.sha256(Path(file).read_bytes()).hexdigest()
        run_id = (f"{started[:10].replace('-', '')}-{started[11:19].replace(':', '')}-{digest[:6]}"
                  if f.get(doc, "datetime", "", "text") else f"imported-{digest[:12]}")  # no time: now is no name
    eid = (_common(t.get("env_id") for t in tags_all) if tags_all else None) or env_id(env)
    records: dict[str, Record] = {}
    for (suite, variant, params, series, tags, extra), (stats, data), bench in cases:
        if series is None:
            if foreign.count((suite, variant, json.dumps(params, sort_keys=True, default=str))) > 1:
                variant = bench.get("fullname") or variant  # same name in two test modules (checked as text)
            series, scale = "time_ms", 1e-3
            metrics = {f"time{name}_ms": stats[key] / scale for key, name in
                       (("median", ""), ("mean", "_mean"), ("stddev", "_stddev")) if key in stats}
        else:
            scale = seconds_per_unit(series) or 1.0
            metrics = dict(extra)
            metrics.setdefault(series, stats["median"] / scale)
        cid = case_id(suite, variant, params)
        record = records.get(cid)
        if record is None:
            record = records[cid] = Record(
                run_id=tags.get("run_id") or run_id, suite=suite, variant=variant, params=params, case_id=cid,
                status="ok",
                device=tags.get("device") or "unknown", started_at=tags.get("started_at") or started,
                elapsed_s=tags.get("elapsed_s") or round(float(stats.get("total") or 0.0), 3),
                env_id=tags.get("env_id") or eid, nonfinite=dict(tags.get("nonfinite") or {}))
        record.metrics.update(metrics)
        if data:
            record.samples[series] = [x / scale for x in data]
    for cid, record in records.items():  # as the readers will see it: a record they would skip is bad input here
        try:
            Record.from_dict(json.loads(record.to_json()))
        except (ValueError, TypeError) as e:
            raise ValueError(f"{file}: case {cid} would not be a valid record ({e})") from None

    meta = RunMeta(
        run_id=run_id, argv=["bench", "import", str(file)],
        size=_common(t.get("size") for t in tags_all) if tags_all else None,
        device=_common(r.device for r in records.values()) or "unknown", started_at=started,
        finished_at=started, env=env, env_id=eid, git=env["git"], version=__version__, recorded=len(records),
        suites={**{suite: FOREIGN_SUITE for suite, *_ in foreign},
                **{k: v for r in runs for k, v in (r.get("suites") or {}).items()}},
        extra={"imported_from": {"format": "pytest-benchmark", "file": str(file), "version": version,
                                 "origin": "techbench" if not foreign else "pytest" if not tags_all else "both"},
               **({"merged_from": [{"run_id": i} for i in ids]} if len(ids) > 1 else {})})
    if (problem := run_json_problem(meta.to_json())) is not None:  # as its readers will check it (the declarations)
        raise ValueError(f"{file}: machine_info.techbench.runs would make a bad run.json: {problem}")
    with atomic_path(out_dir, directory=True) as staged:
        with RecordWriter(staged / RECORDS_JSONL) as writer:
            for record in records.values():
                writer.write(record)
        write_run_json(staged, meta)  # last: a run.json with finished_at says the records beside it are complete
    return out_dir
