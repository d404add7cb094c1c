"""Statistical comparison of two runs (or two sets of runs): per case and metric, the ratio NEW/BASE and a verdict.

Verdicts, by kind of metric:
- sampled (raw samples on both sides, e.g. step_time_ms): faster | slower | same | noisy, from `compare_samples`.
- deterministic (bytes, FLOP counts, quality): same | better | worse by the metric's direction, compared exactly
  (`changed` when the metric has no direction).
- measured without samples (rates, percentiles, energy, timing ratios): n/a. One number per side cannot separate a
  change from run-to-run noise, so only the ratio is reported; comparing it exactly would flag every A/A run.
Reads run directories only: no torch.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import mannwhitneyu

from bench.records import RECORDS_JSONL, Record, direction, read_records, read_run_json

ROW_COLUMNS = ["case_id", "suite", "variant", "metric", "base", "new", "ratio", "direction", "verdict", "p_value",
               "ci_low", "ci_high"]
STATUS_COLUMNS = ["case_id", "suite", "variant", "base_status", "new_status", "change", "reason"]
REGRESSION, IMPROVEMENT = ("slower", "worse"), ("faster", "better")
ABSENT = "absent"

# 2000 resamples put 10 draws in each 0.5% tail of a 99% interval: endpoints move by ~0.3% of the ratio between seeds
# at n=30 and 2% spread, well inside the 5% default threshold. The fixed seed makes a comparison reproducible.
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
MIN_SAMPLES = 2  # per side; below this neither the test nor the interval exists

# Metrics measured by a clock (or derived from one) vary from run to run even when nothing changed.
MEASURED_SUFFIXES = ("_ms", "_s", "_tflops", "_gbps", "_j", "_w", "_mhz", "_c", "_pct")
MEASURED_WORDS = ("time", "speedup", "latency", "throughput", "pct_of_peak")


def is_measured(metric: str) -> bool:
    return metric.endswith(MEASURED_SUFFIXES) or any(w in metric for w in MEASURED_WORDS)


@dataclass(frozen=True)
class SampleTest:
    """Outcome of `compare_samples`: NEW/BASE ratio of medians, its bootstrap CI, the Mann-Whitney p-value."""

    ratio: float
    p_value: float
    ci_low: float
    ci_high: float
    change: str
    """One of: up, down (significant and beyond the threshold), same (CI inside the band), noisy."""


def _boot_medians(x: np.ndarray, rng: np.random.Generator, resamples: int) -> np.ndarray:
    chunk = max(1, 2_000_000 // len(x))  # bounds memory at ~16 MB for long sample sets
    parts = [np.median(x[rng.integers(0, len(x), (min(chunk, resamples - i), len(x)))], axis=1)
             for i in range(0, resamples, chunk)]
    return np.concatenate(parts)


def compare_samples(base, new, threshold: float = 0.05, alpha: float = 0.01) -> SampleTest:
    """Two sample sets of one metric. A change is reported ("up"/"down") only when the two-sided Mann-Whitney U
    p-value is below alpha, the (1-alpha) percentile-bootstrap CI of median(new)/median(base) excludes 1, and the
    ratio lies outside the band [1/(1+threshold), 1+threshold]. Otherwise "same" when that CI lies inside the band
    (any change is smaller than the threshold), else "noisy": the spread cannot resolve a threshold-sized change."""
    b, n = np.asarray(base, dtype=float), np.asarray(new, dtype=float)
    mb, mn = float(np.median(b)), float(np.median(n))
    if mb <= 0 or mn < 0 or len(b) < MIN_SAMPLES or len(n) < MIN_SAMPLES:
        return SampleTest(math.nan, math.nan, math.nan, math.nan, "noisy")
    p = float(mannwhitneyu(b, n, alternative="two-sided").pvalue)
    p = 1.0 if math.isnan(p) else p  # every sample identical on both sides
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    boot_b, boot_n = _boot_medians(b, rng, BOOTSTRAP_RESAMPLES), _boot_medians(n, rng, BOOTSTRAP_RESAMPLES)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = boot_n / boot_b
    lo, hi = (float(q) for q in np.quantile(ratios, [alpha / 2, 1 - alpha / 2]))
    ratio, upper, lower = mn / mb, 1 + threshold, 1 / (1 + threshold)
    significant = p < alpha and (lo > 1 or hi < 1)
    if significant and ratio > upper:
        change = "up"
    elif significant and ratio < lower:
        change = "down"
    elif lower <= lo and hi <= upper:
        change = "same"
    else:
        change = "noisy"
    return SampleTest(ratio, p, lo, hi, change)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass
class _Case:
    """One case on one side, merged over that side's run directories (ok records pool their samples)."""

    suite: str
    variant: str
    status: str
    error: str | None
    values: dict[str, float] = field(default_factory=dict)
    samples: dict[str, list[float]] = field(default_factory=dict)


def _merge(records: list[Record]) -> _Case:
    ok = [r for r in records if r.status == "ok"]
    last = records[-1]
    case = _Case(last.suite, last.variant, "ok" if ok else last.status, None if ok else last.error)
    for r in ok:
        for m, s in r.samples.items():
            case.samples.setdefault(m, []).extend(float(x) for x in s if _number(x))
    for m in dict.fromkeys(m for r in ok for m in r.metrics):
        vals = [r.metrics[m] for r in ok if _number(r.metrics.get(m))]
        if vals:
            case.values[m] = float(np.median(vals)) if len(vals) > 1 else vals[0]
    for m, s in case.samples.items():
        if s:  # the median of the pooled samples, as compare_samples tests it
            case.values[m] = float(np.median(s))
    return case


def _load(run_dirs) -> tuple[dict[str, _Case], list[dict], list[str]]:
    by_case: dict[str, list[Record]] = {}
    metas, names = [], []
    for d in map(Path, run_dirs):
        meta = read_run_json(d)
        if meta is None and not (d / RECORDS_JSONL).exists():
            raise FileNotFoundError(f"{d} is not a run directory (no run.json or records.jsonl)")
        metas.append(meta or {})
        names.append((meta or {}).get("run_id") or d.name)
        for r in read_records(d / RECORDS_JSONL):
            by_case.setdefault(r.case_id, []).append(r)
    return {c: _merge(rs) for c, rs in by_case.items()}, metas, names


def _verdict(metric: str, b: _Case, n: _Case, threshold: float, alpha: float) -> dict:
    d = direction(metric)
    sb, sn = b.samples.get(metric, []), n.samples.get(metric, [])
    base, new = b.values[metric], n.values[metric]
    row = {"base": base, "new": new, "direction": d, "p_value": math.nan, "ci_low": math.nan, "ci_high": math.nan}
    if len(sb) >= MIN_SAMPLES and len(sn) >= MIN_SAMPLES:
        t = compare_samples(sb, sn, threshold, alpha)
        row.update(ratio=t.ratio, p_value=t.p_value, ci_low=t.ci_low, ci_high=t.ci_high)
        if t.change in ("same", "noisy"):
            verdict = t.change if not math.isnan(t.ratio) else "n/a"
        elif d is None:
            verdict = "changed"
        else:
            verdict = "slower" if (t.change == "up") == (d == "lower") else "faster"
        return {**row, "verdict": verdict}
    row["ratio"] = new / base if base else (1.0 if new == base else math.nan)
    if is_measured(metric) or sb or sn:
        verdict = "n/a"
    elif new == base:
        verdict = "same"
    elif d is None:
        verdict = "changed"
    else:
        verdict = "better" if (new < base) == (d == "lower") else "worse"
    return {**row, "verdict": verdict}


def _env(meta: dict) -> dict:
    return meta.get("env") or {}


def _gpu(key: str, scale: float = 1.0):
    def get(meta):
        vals = [g.get(key) for g in _env(meta).get("gpus") or []]
        vals = [round(v / scale) if scale != 1.0 and _number(v) else v for v in vals if v is not None]
        return ", ".join(dict.fromkeys(map(str, vals))) or None
    return get


def _git(key: str):
    def get(meta):
        value = (meta.get("git") or _env(meta).get("git") or {}).get(key)
        return value[:12] if key == "sha" and isinstance(value, str) else value
    return get


# (field, getter, part of the identity that env_id hashes). Clocks, power limit, git state, device and size are
# shown for whoever investigates a shift but do not make two environments different.
ENV_FIELDS = (
    ("gpu", _gpu("name"), True),
    ("gpu_count", lambda m: len(_env(m).get("gpus") or []), True),
    ("driver", _gpu("driver_version"), True),
    ("compute_capability", _gpu("compute_capability"), True),
    ("gpu_memory_gib", _gpu("memory_total_bytes", 2**30), True),
    ("sm_clock_mhz", _gpu("sm_clock_mhz"), False),
    ("max_sm_clock_mhz", _gpu("max_sm_clock_mhz"), False),
    ("power_limit_w", _gpu("power_limit_w"), False),
    ("torch", lambda m: _env(m).get("torch"), True),
    ("cuda", lambda m: _env(m).get("torch_cuda"), True),
    ("cudnn", lambda m: _env(m).get("cudnn"), True),
    ("triton", lambda m: _env(m).get("triton"), True),
    ("python", lambda m: _env(m).get("python_version"), True),
    ("cpu", lambda m: _env(m).get("cpu_model"), True),
    ("cpu_cores", lambda m: _env(m).get("cpu_logical_cores"), True),
    ("git_sha", _git("sha"), False),
    ("git_dirty", _git("dirty"), False),
    ("device", lambda m: m.get("device"), False),
    ("size", lambda m: m.get("size"), False),
)


def _side(metas: list[dict], get) -> str | None:
    vals = list(dict.fromkeys("-" if v is None else str(v) for v in map(get, metas)))
    return None if vals in ([], ["-"]) else " | ".join(vals)


@dataclass
class Comparison:
    """The result of `compare`: per-metric rows, per-case status changes and the environment diff."""

    rows: pd.DataFrame
    """One row per case and metric present on both sides (ok on both): ROW_COLUMNS."""
    status_rows: pd.DataFrame
    """Cases not ok on either side or present on one side only: STATUS_COLUMNS; change is added, removed, still
    <status> or "<base> -> <new>"."""
    env_diff: list[tuple[str, str | None, str | None]]
    """(field, base, new) for each environment field that differs."""
    same_env: bool
    """Both sides have the same env_id(s): an A/B of code or settings rather than of hardware or software."""
    env_fields: list[tuple[str, str | None, str | None]] = field(default_factory=list)
    """Every environment field, differing or not."""
    base_runs: list[str] = field(default_factory=list)
    new_runs: list[str] = field(default_factory=list)
    threshold: float = 0.05
    alpha: float = 0.01

    @property
    def regressions(self) -> pd.DataFrame:
        return self.rows[self.rows["verdict"].isin(REGRESSION)]

    @property
    def improvements(self) -> pd.DataFrame:
        return self.rows[self.rows["verdict"].isin(IMPROVEMENT)]

    @property
    def newly_failing(self) -> pd.DataFrame:
        """Cases ok in BASE that ran out of memory, timed out or errored in NEW: regressions of another kind."""
        s = self.status_rows
        return s[(s["base_status"] == "ok") & s["new_status"].isin(["oom", "timeout", "error"])]

    @property
    def env_verdict(self) -> str:
        return "same environment (A/B of code or settings)" if self.same_env else "hardware or software comparison"

    def summary_lines(self) -> list[str]:
        lines = [f"base {', '.join(self.base_runs)}  vs  new {', '.join(self.new_runs)}",
                 f"environment: {self.env_verdict}"]
        lines += [f"  {f}: {b} -> {n}" for f, b, n in self.env_diff]
        sampled, verdict = self.rows["p_value"].notna(), self.rows["verdict"]
        for label, verdicts in (("timings", verdict[sampled]), ("other metrics", verdict[~sampled]),
                                ("cases", self.status_rows["change"])):
            if len(verdicts):
                lines.append(f"{label}: " + ", ".join(f"{c} {v}" for v, c in sorted(Counter(verdicts).items())))
        lines.append(f"(threshold {self.threshold:.0%}, alpha {self.alpha:g})")
        for title, part in (("regressions", self.regressions), ("improvements", self.improvements)):
            if len(part):
                lines.append(f"{title} ({len(part)}):")
                lines += [_line(r) for r in part.itertuples()]
        if len(self.newly_failing):
            lines.append(f"newly failing ({len(self.newly_failing)}):")
            lines += [f"  {r.change:<11} {r.case_id}" for r in self.newly_failing.itertuples()]
        return lines


def _line(r) -> str:
    stats = "" if math.isnan(r.p_value) else f"  p={r.p_value:.2g}  CI {r.ci_low:.3f}..{r.ci_high:.3f}"
    ratio = "" if math.isnan(r.ratio) else f"  x{r.ratio:.3f}"
    return f"  {r.verdict:<7} {r.case_id}  {r.metric}  {r.base:.4g} -> {r.new:.4g}{ratio}{stats}"


def compare(base: list[str | Path], new: list[str | Path], threshold: float = 0.05, alpha: float = 0.01) -> Comparison:
    """Compare run directories BASE against NEW (several per side: their cases are pooled by case_id)."""
    if not 0 <= threshold < 1 or not 0 < alpha < 1:
        raise ValueError(f"threshold must lie in [0, 1) and alpha in (0, 1), got {threshold} and {alpha}")
    b_cases, b_metas, b_names = _load([base] if isinstance(base, (str, Path)) else base)
    n_cases, n_metas, n_names = _load([new] if isinstance(new, (str, Path)) else new)
    rows, status = [], []
    for case_id in sorted(b_cases.keys() | n_cases.keys()):
        b, n = b_cases.get(case_id), n_cases.get(case_id)
        either = b or n
        if b is not None and n is not None and b.status == n.status == "ok":
            for metric in sorted(b.values.keys() & n.values.keys()):
                rows.append({"case_id": case_id, "suite": b.suite, "variant": b.variant, "metric": metric,
                             **_verdict(metric, b, n, threshold, alpha)})
        else:
            bs, ns = b.status if b else ABSENT, n.status if n else ABSENT
            change = ("added" if b is None else "removed" if n is None
                      else f"still {bs}" if bs == ns else f"{bs} -> {ns}")
            reason = (n.error if n and n.status != "ok" else None) or (b.error if b else None)
            status.append({"case_id": case_id, "suite": either.suite, "variant": either.variant,
                           "base_status": bs, "new_status": ns, "change": change, "reason": reason})
    env_fields = [(name, _side(b_metas, get), _side(n_metas, get)) for name, get, _ in ENV_FIELDS]
    env_diff = [f for f in env_fields if f[1] != f[2]]
    ids = [{m.get("env_id") for m in metas} for metas in (b_metas, n_metas)]
    if None in ids[0] | ids[1]:  # a run without env_id: fall back to the identity fields
        identity = {name for name, _, ident in ENV_FIELDS if ident}
        same_env = not any(f in identity for f, _, _ in env_diff)
    else:
        same_env = ids[0] == ids[1]
    return Comparison(pd.DataFrame(rows, columns=ROW_COLUMNS), pd.DataFrame(status, columns=STATUS_COLUMNS),
                      env_diff, same_env, env_fields, b_names, n_names, threshold, alpha)
