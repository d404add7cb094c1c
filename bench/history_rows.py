"""The rows of one run in the history store (bench.history's columns): one per case and metric, from its records
and run.json."""

from __future__ import annotations

import json
import statistics

from bench.interference import reason
from bench.machines import record_env, record_gpu
from bench.metrics import default, digest_hex, is_clocked, of_weights, specs_of
from bench.records import Record
from bench.sides import reference_case


def rows(records: list[Record], meta: dict, run_id: str):
    """The store's rows of a run (run.json `meta`, its records), under `run_id`: one per case and metric, one with
    metric null for a case without any."""
    env = meta.get("env") or {}
    git = meta.get("git") or env.get("git") or {}
    device = str(meta.get("device") or "")
    merged = bool(meta.get("merged_from"))  # its records keep the run_ids and env_ids of the shards that measured them
    run = {"run_id": run_id, "timestamp": _utc(meta.get("started_at") or meta.get("finished_at")),
           "git_sha": git.get("sha"), "git_dirty": git.get("dirty"), "env_id": meta.get("env_id"),
           "device": device, "size": meta.get("size"),
           "imported": bool(meta.get("imported_from"))}
    specs = specs_of([meta])  # what the run's suites declared; unit-suffix defaults for older runs
    suites = meta.get("suites") if isinstance(meta.get("suites"), dict) else {}
    by_case = {r.case_id: r for r in records}
    for r in records:
        # a merge's shard's env, or its machine's (bench.machines): the GPU it names is the one that measured the case
        declared, mine = specs.get(r.suite, {}), record_env(meta, r)
        info = suites.get(r.suite) if isinstance(suites.get(r.suite), dict) else {}
        library = info["libraries"].get(r.variant) if isinstance(info.get("libraries"), dict) else None
        threads = (info.get("threads") or (mine or env).get("torch_threads")) if device.startswith("cpu") else None
        case = {**run, "suite": r.suite, "variant": r.variant, "library": library if isinstance(library, str) else None,
                "case_id": r.case_id, "threads": threads if isinstance(threads, int) else None,
                "params": json.dumps(r.params, sort_keys=True, default=str), "status": r.status, "error": r.error,
                "source_run": (r.run_id if merged and isinstance(r.run_id, str) else None) or run_id,
                **_contention(r.metrics), **({"env_id": r.env_id} if mine else {}),
                "gpu": _gpu(record_gpu(meta, r))}
        artifacts = digest_hex(r.metrics.get("artifacts_digest"))
        if run["timestamp"] is None:
            case["timestamp"] = _utc(r.started_at)
        metrics = {m: _float(v) for m, v in r.metrics.items() if v is None or _float(v) is not None}  # drops text
        if not metrics:
            yield {**case, "metric": None, "value": None, "direction": None, "kind": None, "n_samples": 0,
                   "iqr": None, "artifacts": artifacts, "inputs": None}
        ratios = _reference_contention(r, by_case, suites, declared) if not case["contended"] else {}
        for metric, value in metrics.items():
            s = [x for x in (r.samples.get(metric) or []) if isinstance(x, (int, float))]
            spec = declared.get(metric) or default(metric)
            yield {**case, **ratios.get(metric, {}), "metric": metric, "value": value, "direction": spec.direction,
                   "kind": _kind(spec, declared, s), "n_samples": len(s), "iqr": _relative_iqr(s),
                   "artifacts": artifacts if of_weights(spec) else None,
                   "inputs": json.dumps(list(spec.inputs)) if spec.kind == "derived" and spec.inputs else None,
                   "nonfinite": r.nonfinite.get(metric)}


def _gpu(gpu: dict | None) -> str:
    """The name of the GPU a case ran on (cuda:N of a machine with mixed GPUs: its Nth, not the first), or cpu."""
    return str(gpu.get("name") or "gpu") if gpu else "cpu"


def _kind(spec, declared: dict, samples: list) -> str:
    """measured, exact or info, by compare's rule: a metric with samples, or derived from a measured one, is
    measured; the rest of exact and derived ones are exact."""
    if spec.kind == "info":
        return "info"
    return "measured" if samples or is_clocked(spec.name, declared) else "exact"


def _contention(metrics: dict) -> dict:
    flag = metrics.get("contended")
    flag = flag if isinstance(flag, bool) else None
    why = (reason(metrics) or "flagged contended in its timed window") if flag else None
    return {"contended": flag, "contended_reason": why}


def _reference_contention(r: Record, by_case: dict[str, Record], suites: dict, declared: dict) -> dict[str, dict]:
    """metric -> contended columns, for the ratios of a timing to the reference variant (`relative` metrics:
    speedup_x, time_overhead_x) of a case whose reference case was contended in the same run: such a ratio carries
    the reference's clock too, as bench.compare judges it (bench.verdicts.reference_disturbed). A ratio of bytes is
    left alone: contention does not change a count."""
    found = reference_case(r.case_id, suites)
    ref = by_case.get(found[0]) if found and found[0] != r.case_id else None
    if ref is None or ref.metrics.get("contended") is not True:
        return {}
    why = f"its reference case {ref.case_id}: {reason(ref.metrics) or 'flagged contended in its timed window'}"
    return {m: {"contended": True, "contended_reason": why} for m in found[1] if is_clocked(m, declared)}


def _utc(text):
    if not text:
        return None
    import pandas as pd

    t = pd.Timestamp(text)
    return (t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")).to_pydatetime()


def _float(value) -> float | None:
    """The metric as a float; None for a null or a value that is not a number (text)."""
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def _relative_iqr(samples: list[float]) -> float | None:
    if len(samples) < 2:
        return None
    q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    median = statistics.median(samples)
    return (q3 - q1) / abs(median) if median else None
