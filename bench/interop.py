"""pytest-benchmark JSON in and out: `bench export RUN --format pytest-benchmark` and `bench import FILE.json`.

Export writes one pytest-benchmark benchmark per timing series of each ok record (a series is a `samples` entry whose
name ends in `_ms` or `_s`): name and fullname are the case_id (with `[series]` appended when a record has more than
one series), group is the suite, params are the record's params, stats are computed by pytest-benchmark's own `Stats`
from the raw samples in seconds, `stats.data` holds those samples, and extra_info holds the record's metrics
plus a `techbench` entry (suite, variant, series, run_id, device, size) that lets import restore the case exactly.
Failed, OOM and skipped records have no samples and are left out, as pytest-benchmark leaves out errored tests.

Import turns any pytest-benchmark JSON into a run directory. A benchmark written by export gets its case back; any
other becomes suite = its group (or "pytest"), variant = its name, params = its params, with metrics time_ms (the
median), time_mean_ms and time_stddev_ms, and samples time_ms when the file holds raw data (--benchmark-save-data
or --benchmark-json). Every field import reads is type-checked first: a wrong one is a ValueError (exit 2) naming it,
e.g. benchmarks[3].stats.median, and nothing is written. Both commands write through bench.atomic: a failure leaves
no partial file or run directory.

This module never imports torch.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path
from typing import Any

from bench.atomic import atomic_path, atomic_write_text
from bench.env import env_id
from bench.records import (
    RECORDS_JSONL,
    Record,
    RecordWriter,
    RunMeta,
    read_records,
    read_run_json,
    write_run_json,
)
from bench.suite import case_id

# GPU fields copied into machine_info["techbench"]["gpus"]: what a reader of a benchmark dashboard needs to tell two
# machines apart (model, driver, max clocks, power limit), without UUIDs, bus ids or the clocks of the moment, which
# would make pytest-benchmark's machine comparison warn on every run.
GPU_SUMMARY = ("name", "driver_version", "cuda_driver_version", "compute_capability", "memory_total_bytes",
               "max_sm_clock_mhz", "max_mem_clock_mhz", "power_limit_w")
VOLATILE_ENV = ("git", "hostname", "techbench")  # per commit or per host
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
    """Write the ok records of `run_dirs` (one machine and software stack) as a pytest-benchmark JSON file."""
    runs = []
    for run_dir in run_dirs:
        meta = read_run_json(run_dir)
        if meta is None:
            raise ValueError(f"{run_dir} is not a run directory (no run.json)")
        runs.append((meta, read_records(Path(run_dir) / RECORDS_JSONL)))
    if not runs:
        raise ValueError("no run directory to export")
    ids = sorted({meta.get("env_id") for meta, _ in runs}, key=str)
    if len(ids) > 1:
        raise ValueError(f"the runs come from different environments (env_id {', '.join(map(str, ids))}); "
                         "export each to its own file")
    first = runs[0][0]
    env = first.get("env") or {}
    git = first.get("git") or env.get("git") or {}
    benchmarks, seen = [], {}
    for meta, records in runs:
        for r in records:
            if r.status != "ok":
                continue
            if seen.setdefault(r.case_id, r.run_id) != r.run_id:
                raise ValueError(f"{r.case_id} is in runs {seen[r.case_id]} and {r.run_id}; export each to its own "
                                 "file (pytest-benchmark keys benchmarks by name)")
            series = [k for k, v in r.samples.items() if seconds_per_unit(k) and v]
            for name in series:
                label = r.case_id if len(series) == 1 else f"{r.case_id}[{name}]"
                extra = dict(r.metrics)
                extra["techbench"] = {"suite": r.suite, "variant": r.variant, "series": name, "run_id": r.run_id,
                                      "device": r.device, "size": meta.get("size"), "started_at": r.started_at,
                                      "elapsed_s": r.elapsed_s, "env_id": r.env_id}
                benchmarks.append({
                    "group": r.suite, "name": label, "fullname": label, "params": r.params,
                    "param": ",".join(f"{k}={r.params[k]}" for k in sorted(r.params)), "extra_info": extra,
                    "options": {"disable_gc": False, "timer": "techbench", "min_rounds": len(r.samples[name]),
                                "max_time": None, "min_time": None, "warmup": None},
                    "stats": _stats([x * seconds_per_unit(name) for x in r.samples[name]]),
                })
    doc = {
        "machine_info": _machine_info(env),
        "commit_info": {"id": git.get("sha") or "unknown", "time": None, "author_time": None,
                        "dirty": bool(git.get("dirty")), "project": "techbench", "branch": "(unknown)"},
        "benchmarks": benchmarks,
        "datetime": _iso(first.get("started_at")),
        "version": _pytest_benchmark_version(),
    }
    return atomic_write_text(out, json.dumps(doc, indent=2, allow_nan=False, default=str) + "\n")


# What readers of run.json do with an env (reports join GPU names, scale memory bytes, read gpus as a list of objects
# and nvml as an object): in an imported env these names must be text and names with these endings numbers; fields
# no reader looks into are copied as they are.
ENV_TEXT = ("name", "driver_version", "cuda_driver_version", "compute_capability", "cpu_model", "python_version",
            "torch", "torch_cuda", "triton")
ENV_NUMBER_SUFFIXES = ("_bytes", "_mhz", "_w", "_cores", "_count")
KINDS = {"text": (str,), "number": (int, float), "bool": (bool,), "object": (dict,), "list": (list,),
         "metric": (int, float, bool), "value": (str, int, float, bool)}


class _Fields:
    """Reads a parsed pytest-benchmark file field by field, each type-checked: a field of the wrong type is a
    ValueError naming it by its path (benchmarks[2].stats.median), so a bad file never becomes a bad run directory.
    Wants are the keys of KINDS; null and a missing field are allowed unless the field is required."""

    def __init__(self, file):
        self.file = file

    def bad(self, field: str, why: str) -> ValueError:
        return ValueError(f"{self.file}: {field} {why}")

    def need(self, value, field: str, want: str, required: bool = True):
        if value is None:
            if required:
                raise self.bad(field, f"is missing (it must be {_a(want)})")
            return None
        ok = isinstance(value, KINDS[want]) and not (isinstance(value, bool) and want == "number")
        if ok and isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                ok = math.isfinite(value)  # NaN or Infinity (json.loads reads them) or past float's range
            except OverflowError:
                ok = False
        if not ok:
            raise self.bad(field, f"must be {_a(want)}, got {_kind(value)}")
        return value

    def get(self, obj: dict, key: str, where: str, want: str, required: bool = False):
        return self.need(obj.get(key), f"{where}.{key}" if where else key, want, required)


def _a(want: str) -> str:
    return {"text": "a string", "number": "a finite number", "bool": "true or false", "object": "an object",
            "list": "a list", "metric": "a number or boolean", "value": "a string, number or boolean"}[want]


def _kind(value) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, float):
        return "a number" if math.isfinite(value) else repr(value)
    if isinstance(value, int):  # 2**1024 and up has no float
        return "a number" if value.bit_length() < 1024 else "a number beyond the range of a float"
    return {str: "a string", dict: "an object", list: "a list"}.get(type(value), type(value).__name__)


def _stamp(f: _Fields, iso: str | None) -> str:
    """pytest-benchmark's datetime as our '%Y-%m-%dT%H:%M:%SZ' (UTC); now when absent."""
    try:
        when = dt.datetime.fromisoformat(iso) if iso else dt.datetime.now(dt.timezone.utc)
        when = when.astimezone(dt.timezone.utc) if when.tzinfo is not None else when
    except (ValueError, OverflowError):
        when = None
    if when is None or not 1970 <= when.year < 2262:  # the range of pandas' timestamps, which the history uses
        raise f.bad("datetime", f"must be an ISO 8601 time between 1970 and 2261, got {iso[:40]!r}")
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _check_env(f: _Fields, env: dict, where: str) -> dict:
    """A techbench env carried by the file (export, the pytest plugin), checked as readers of run.json use it."""
    for key, value in env.items():
        field = f"{where}.{key}"
        if key == "git":  # replaced by commit_info
            continue
        if key == "gpus":
            for i, gpu in enumerate(f.need(value, field, "list", required=False) or []):
                _check_flat(f, f.need(gpu, f"{field}[{i}]", "object"), f"{field}[{i}]")
        elif key == "nvml":
            _check_flat(f, f.need(value, field, "object", required=False) or {}, field)
        else:
            _check_flat(f, {key: value}, where)
    return env


def _check_flat(f: _Fields, obj: dict, where: str) -> None:
    for key in obj:
        want = "text" if key in ENV_TEXT else "number" if key.endswith(ENV_NUMBER_SUFFIXES) else None
        if want:
            f.get(obj, key, where, want)


def _env_from(f: _Fields, machine_info: dict, commit_info: dict) -> dict:
    """A techbench env: ours when the file carries it (export, the pytest plugin), else what pytest-benchmark knows."""
    git = {"sha": f.get(commit_info, "id", "commit_info", "text"),
           "dirty": f.get(commit_info, "dirty", "commit_info", "bool")}
    ours = f.get(f.get(machine_info, "techbench", "machine_info", "object") or {}, "env", "machine_info.techbench",
                 "object")
    if ours is not None:
        return {**_check_env(f, ours, "machine_info.techbench.env"), "git": git}
    cpu = f.get(machine_info, "cpu", "machine_info", "object") or {}
    text = {k: f.get(machine_info, k, "machine_info", "text")
            for k in ("python_version", "python_implementation", "system", "release", "node")}
    return {"python_version": text["python_version"], "python_implementation": text["python_implementation"],
            "platform": " ".join(text[k] for k in ("system", "release") if text[k]) or None,
            "hostname": text["node"], "cpu_model": f.get(cpu, "brand_raw", "machine_info.cpu", "text"),
            "cpu_logical_cores": f.get(cpu, "count", "machine_info.cpu", "number"), "gpus": [], "git": git}


def _benchmark(f: _Fields, bench, where: str) -> tuple[str, str, dict, str | None, dict, dict]:
    """(suite, variant, params, series, tags, metrics) of one benchmark, every field it reads checked; series is None
    for a foreign benchmark, and metrics are those of extra_info for one of ours (the timing comes from stats)."""
    bench = f.need(bench, where, "object")
    params = f.get(bench, "params", where, "object") or {}
    for key, value in params.items():  # a record's params are flat: they spell its case_id
        f.need(value, f"{where}.params.{key}", "value", required=False)
    extra = f.get(bench, "extra_info", where, "object") or {}
    tags = f.get(extra, "techbench", f"{where}.extra_info", "object") or {}
    if {"suite", "variant", "series"} <= tags.keys():
        at = f"{where}.extra_info.techbench"
        names = [f.get(tags, k, at, "text", required=True) for k in ("suite", "variant", "series")]
        if not all(names):
            raise f.bad(f"{at}.{('suite', 'variant', 'series')[names.index('')]}", "must not be empty")
        for key in ("run_id", "device", "size", "started_at", "env_id"):
            f.get(tags, key, at, "text")
        f.get(tags, "elapsed_s", at, "number")
        metrics = {k: f.get(extra, k, f"{where}.extra_info", "metric") for k in extra if k != "techbench"}
        return names[0], names[1], params, names[2], tags, metrics
    group, name, fullname = (f.get(bench, k, where, "text") for k in ("group", "name", "fullname"))
    if not (name or fullname):
        raise f.bad(f"{where}.name", "is missing (it must be a string, or fullname one)")
    return group or "pytest", name or fullname, params, None, {}, {}


def _read_stats(f: _Fields, bench: dict, where: str) -> tuple[dict, list[float]]:
    """The stats of a benchmark ({median, mean, stddev, total}, absent ones left out) and its raw data, if any."""
    stats = f.get(bench, "stats", where, "object", required=True)
    at = f"{where}.stats"
    numbers = {k: f.get(stats, k, at, "number", required=k == "median") for k in ("median", "mean", "stddev", "total")}
    data = [f.need(x, f"{at}.data[{i}]", "number") for i, x in enumerate(f.get(stats, "data", at, "list") or [])]
    return {k: v for k, v in numbers.items() if v is not None}, data


def _common(values) -> Any:
    values = set(values)
    return values.pop() if len(values) == 1 else None


def import_pytest_benchmark(file: str | Path, out_dir: str | Path) -> Path:
    """Turn a pytest-benchmark JSON file into a run directory (run.json + records.jsonl) at `out_dir`.

    ValueError, one line naming the field, for a file that is not pytest-benchmark JSON or holds a field of the wrong
    type, before anything is written. The run is written into a temporary folder beside `out_dir`, records first and
    run.json (which says it finished) last, and renamed onto `out_dir` whole: a failure (OutputError) leaves none."""
    from bench import __version__
    from bench.runner import new_run_id

    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ValueError(f"--out {out_dir} already exists and is not empty; choose a new directory")
    try:
        doc = json.loads(Path(file).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:  # RecursionError: JSON nested thousands deep
        raise ValueError(f"cannot read {file}: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("benchmarks"), list):
        raise ValueError(f"{file} is not a pytest-benchmark JSON file (no 'benchmarks' list)")
    f = _Fields(file)
    env = _env_from(f, f.get(doc, "machine_info", "", "object") or {}, f.get(doc, "commit_info", "", "object") or {})
    started = _stamp(f, f.get(doc, "datetime", "", "text"))
    version = f.get(doc, "version", "", "text")

    cases = [(_benchmark(f, b, f"benchmarks[{i}]"), _read_stats(f, b, f"benchmarks[{i}]"), b)
             for i, b in enumerate(doc["benchmarks"])]
    foreign = [(suite, variant, json.dumps(params, sort_keys=True, default=str))
               for (suite, variant, params, series, *_), _, _ in cases if series is None]
    tags_all = [tags for (*_, tags, _), _, _ in cases if tags]
    run_id = _common(t.get("run_id") for t in tags_all) if tags_all else None
    run_id = run_id or new_run_id()
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
                run_id=run_id, suite=suite, variant=variant, params=params, case_id=cid, status="ok",
                device=tags.get("device") or "unknown", started_at=tags.get("started_at") or started,
                elapsed_s=tags.get("elapsed_s") or round(float(stats.get("total") or 0.0), 3),
                env_id=tags.get("env_id") or eid)
        record.metrics.update(metrics)
        if data:
            record.samples[series] = [x / scale for x in data]
    for cid, record in records.items():  # as the readers will see it: a record they would skip is bad input here
        try:
            Record.from_dict(json.loads(record.to_json()))
        except (ValueError, TypeError) as e:
            raise ValueError(f"{file}: case {cid} would not be a valid record ({e})") from None

    with atomic_path(out_dir, directory=True) as staged:
        with RecordWriter(staged / RECORDS_JSONL) as writer:
            for record in records.values():
                writer.write(record)
        write_run_json(staged, RunMeta(  # last: a run.json with finished_at says the records beside it are complete
            run_id=run_id, argv=["bench", "import", str(file)],
            size=_common(t.get("size") for t in tags_all) if tags_all else None,
            device=_common(r.device for r in records.values()) or "unknown", started_at=started,
            finished_at=started, env=env, env_id=eid, git=env["git"], version=__version__, recorded=len(records),
            extra={"imported_from": {"format": "pytest-benchmark", "file": str(file), "version": version}},
        ))
    return out_dir
