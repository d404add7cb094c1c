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
or --benchmark-json).

This module never imports torch.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

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
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2, allow_nan=False, default=str) + "\n")
    return out


def _stamp(iso: str | None) -> str:
    """pytest-benchmark's datetime as our '%Y-%m-%dT%H:%M:%SZ' (UTC); now when absent or unreadable."""
    try:
        when = dt.datetime.fromisoformat(iso) if iso else None
    except ValueError:
        when = None
    when = (when or dt.datetime.now(dt.timezone.utc))
    if when.tzinfo is not None:
        when = when.astimezone(dt.timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _env_from(machine_info: dict, commit_info: dict) -> dict:
    """A techbench env: ours when the file carries it (export, the pytest plugin), else what pytest-benchmark knows."""
    git = {"sha": commit_info.get("id"), "dirty": commit_info.get("dirty")}
    ours = (machine_info.get("techbench") or {}).get("env")
    if isinstance(ours, dict):
        return {**ours, "git": git}
    cpu = machine_info.get("cpu") if isinstance(machine_info.get("cpu"), dict) else {}
    return {"python_version": machine_info.get("python_version"),
            "python_implementation": machine_info.get("python_implementation"),
            "platform": " ".join(str(machine_info[k]) for k in ("system", "release") if machine_info.get(k)) or None,
            "hostname": machine_info.get("node"), "cpu_model": cpu.get("brand_raw"),
            "cpu_logical_cores": cpu.get("count"), "gpus": [], "git": git}


def _case(bench: dict) -> tuple[str, str, dict, str | None, dict]:
    """(suite, variant, params, series, tags) of one benchmark; series is None for a foreign benchmark."""
    params = bench.get("params") if isinstance(bench.get("params"), dict) else {}
    extra = bench.get("extra_info") if isinstance(bench.get("extra_info"), dict) else {}
    tags = extra.get("techbench")
    if isinstance(tags, dict) and {"suite", "variant", "series"} <= tags.keys():
        return tags["suite"], tags["variant"], params, tags["series"], tags
    return bench.get("group") or "pytest", str(bench.get("name") or bench.get("fullname")), params, None, {}


def _common(values) -> Any:
    values = set(values)
    return values.pop() if len(values) == 1 else None


def import_pytest_benchmark(file: str | Path, out_dir: str | Path) -> Path:
    """Turn a pytest-benchmark JSON file into a run directory (run.json + records.jsonl) at `out_dir`."""
    from bench import __version__
    from bench.runner import new_run_id

    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ValueError(f"--out {out_dir} already exists and is not empty; choose a new directory")
    try:
        doc = json.loads(Path(file).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read {file}: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("benchmarks"), list):
        raise ValueError(f"{file} is not a pytest-benchmark JSON file (no 'benchmarks' list)")
    machine_info = doc.get("machine_info") if isinstance(doc.get("machine_info"), dict) else {}
    commit_info = doc.get("commit_info") if isinstance(doc.get("commit_info"), dict) else {}
    env = _env_from(machine_info, commit_info)
    started = _stamp(doc.get("datetime"))

    cases = [(_case(b), b) for b in doc["benchmarks"] if isinstance(b, dict) and isinstance(b.get("stats"), dict)]
    foreign = [(suite, variant, json.dumps(params, sort_keys=True, default=str))
               for (suite, variant, params, series, _), _ in cases if series is None]
    tags_all = [tags for (*_, tags), _ in cases if tags]
    run_id = _common(t.get("run_id") for t in tags_all) if tags_all else None
    run_id = run_id or new_run_id()
    eid = (_common(t.get("env_id") for t in tags_all) if tags_all else None) or env_id(env)
    records: dict[str, Record] = {}
    for (suite, variant, params, series, tags), bench in cases:
        stats = bench["stats"]
        data = stats.get("data") if isinstance(stats.get("data"), list) else []
        if series is None:
            if foreign.count((suite, variant, json.dumps(params, sort_keys=True, default=str))) > 1:
                variant = str(bench.get("fullname") or variant)  # same name in two test modules
            series, scale = "time_ms", 1e-3
            metrics = {"time_ms": stats.get("median", 0) / scale, "time_mean_ms": stats.get("mean", 0) / scale,
                       "time_stddev_ms": stats.get("stddev", 0) / scale}
        else:
            scale = seconds_per_unit(series) or 1.0
            metrics = {k: v for k, v in bench["extra_info"].items() if k != "techbench"}
            metrics.setdefault(series, stats.get("median", 0) / scale)
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

    out_dir.mkdir(parents=True, exist_ok=True)
    write_run_json(out_dir, RunMeta(
        run_id=run_id, argv=["bench", "import", str(file)],
        size=_common(t.get("size") for t in tags_all) if tags_all else None,
        device=_common(r.device for r in records.values()) or "unknown", started_at=started, finished_at=started,
        env=env, env_id=eid, git=env["git"], version=__version__,
        extra={"imported_from": {"format": "pytest-benchmark", "file": str(file), "version": doc.get("version")}},
    ))
    with RecordWriter(out_dir / RECORDS_JSONL) as writer:
        for record in records.values():
            writer.write(record)
    return out_dir
