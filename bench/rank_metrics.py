"""How the results of a distributed case's ranks become its one record (bench.distributed: rank 0 writes it).

Per-rank metrics aggregate as: `<metric>`, the worst rank's value (the largest of a lower-is-better metric such
as a step time or peak bytes, the smallest of a higher-is-better one; rank 0's when a metric has no direction), and
`rank_min_<metric>`, `rank_mean_<metric>`, `rank_max_<metric>` across ranks. A metric's samples are those of the
rank that gave its figure (rank 0's for a series such as a loss curve). What disturbed a rank disturbed the case:
`contended` and `gpu_slowdown` are true when any rank's is, and the other interference metrics (bench.interference)
are the most disturbed rank's (the most CPU taken by others, the lowest clock). A metric NaN or infinite on any rank
is so for the case: null, and named in its record's `nonfinite`.
"""

from __future__ import annotations

from typing import Any

from bench.artifacts import artifacts_digest
from bench.interference import GPU_KEYS, HOST_KEYS

# How an interference metric aggregates over ranks: the most disturbed rank's value (a flag: any rank's)
DISTURBED = {**dict.fromkeys((*HOST_KEYS, *GPU_KEYS), max), "host_cpu_mhz_pct": min, "gpu_clock_pct": min}
FLAGS = ("contended", "gpu_slowdown")


def aggregate(results: list[dict], directions: dict[str, str | None]) -> dict[str, Any]:
    """One result from every rank's (rank order): metrics aggregated as the module docstring says."""
    first = results[0]
    skipped = [r for r in results if r["status"] == "skipped"]
    if skipped:
        return {"status": "skipped", "error": skipped[0]["error"]}
    metrics: dict[str, Any] = {}
    for name, value in first["metrics"].items():
        values = [r["metrics"].get(name) for r in results]
        numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if name == "artifacts_digest":  # which cached artifacts: every rank's, not a number to spread over ranks
            seen = {v for v in values if v is not None}
            metrics[name] = artifacts_digest({str(v) for v in seen}) if len(seen) > 1 else next(iter(seen), None)
            continue
        if name in FLAGS:  # null only where no rank could judge it
            flags = {v for v in values if isinstance(v, bool)}
            metrics[name] = (True in flags) if flags else None
            continue
        if name in DISTURBED and numbers:  # a rank that measured nothing (null) hides no other's disturbance
            metrics[name] = DISTURBED[name](numbers)
        if len(numbers) != len(values):
            metrics.setdefault(name, value)
            continue
        worst = DISTURBED.get(name) or {"lower": max, "higher": min}.get(directions.get(name) or "", lambda v: v[0])
        metrics[name] = worst(numbers)
        metrics[f"rank_min_{name}"] = min(numbers)
        metrics[f"rank_mean_{name}"] = sum(numbers) / len(numbers)
        metrics[f"rank_max_{name}"] = max(numbers)
    samples = {}
    for name, values in (first.get("samples") or {}).items():
        # the samples behind a headline figure are those of the rank that gave it
        source = next((r for r in results if r["metrics"].get(name) == metrics.get(name)), first)
        samples[name] = (source.get("samples") or {}).get(name, values)
    # a metric NaN or infinite on any rank is so for the job: null, and named, whatever the other ranks measured
    named = {k: v for r in reversed(results) for k, v in (r.get("nonfinite") or {}).items()}
    metrics.update(dict.fromkeys(named))
    return {"status": "ok", "metrics": metrics, "samples": samples, "error": None,
            **({"nonfinite": named} if named else {})}
