"""The statistics behind `bench compare`: one run against one (within-run samples) and runs against runs.

compare_samples: two sample sets of one run each (Mann-Whitney U, a bootstrap interval on the ratio of medians, and
a threshold). compare_runs: the per-run values of several runs per side against their run-to-run spread (Welch's t
on log values when both sides have enough runs). Both return a SampleTest. numpy and scipy only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# 2000 resamples put 10 draws in each 0.5% tail of a 99% interval: endpoints move by ~0.3% of the ratio between seeds
# at n=30 and 2% spread, well inside the 5% default threshold. The fixed seed makes a comparison reproducible.
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
MIN_SAMPLES = 2  # per side; below this neither the test nor the interval exists
# A change between runs must exceed 3 run-to-run standard deviations as well as the threshold: with many runs the
# t-test alone would call a sub-spread shift significant, and a shift that small is what the next rerun undoes.
RUN_SPREAD_K = 3.0
MIN_RUNS_FOR_TEST = 3  # per side, for the Welch t-test to gate a verdict: with 2 runs it has 1 degree of freedom


@dataclass(frozen=True)
class SampleTest:
    """Outcome of `compare_samples` or `compare_runs`: NEW/BASE ratio, its CI, a p-value and the change."""

    ratio: float
    p_value: float
    ci_low: float
    ci_high: float
    change: str
    """One of: up, down (significant and beyond the threshold), same (inside the band), noisy."""
    spread: float = math.nan
    """`compare_runs` only: relative run-to-run spread (standard deviation of log run values); NaN otherwise."""


def _boot_medians(x: np.ndarray, rng: np.random.Generator, resamples: int) -> np.ndarray:
    chunk = max(1, 2_000_000 // len(x))  # bounds memory at ~16 MB for long sample sets
    parts = [np.median(x[rng.integers(0, len(x), (min(chunk, resamples - i), len(x)))], axis=1)
             for i in range(0, resamples, chunk)]
    return np.concatenate(parts)


def compare_samples(base, new, threshold: float = 0.05, alpha: float = 0.01) -> SampleTest:
    """The samples of ONE run per side. A change is reported ("up"/"down") only when the two-sided Mann-Whitney U
    p-value is below alpha and the whole (1-alpha) percentile-bootstrap CI of median(new)/median(base) lies beyond
    the band [1/(1+threshold), 1+threshold] on one side (up: CI low > 1+threshold; down: CI high < 1/(1+threshold)).
    Otherwise "same" when that CI lies inside the band, else "noisy".

    The test sees only within-run noise: the run-level offset between two runs of the same code (x1.099 at
    p=0.002 between two smoke runs) passes for a change. Requiring the CI, not only the ratio, to clear the band
    trims borderline calls; only `compare_runs` on several runs per side measures that offset."""
    b, n = np.asarray(base, dtype=float), np.asarray(new, dtype=float)
    mb, mn = float(np.median(b)), float(np.median(n))
    if mb <= 0 or mn < 0 or len(b) < MIN_SAMPLES or len(n) < MIN_SAMPLES:
        return SampleTest(math.nan, math.nan, math.nan, math.nan, "noisy")
    from scipy.stats import mannwhitneyu  # here: scipy.stats takes ~1.3 s to import, and most commands never test

    p = float(mannwhitneyu(b, n, alternative="two-sided").pvalue)
    p = 1.0 if math.isnan(p) else p  # every sample identical on both sides
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    boot_b, boot_n = _boot_medians(b, rng, BOOTSTRAP_RESAMPLES), _boot_medians(n, rng, BOOTSTRAP_RESAMPLES)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = boot_n / boot_b
    lo, hi = (float(q) for q in np.quantile(ratios, [alpha / 2, 1 - alpha / 2]))
    upper, lower = 1 + threshold, 1 / (1 + threshold)
    if p < alpha and lo > upper:
        change = "up"
    elif p < alpha and hi < lower:
        change = "down"
    elif lower <= lo and hi <= upper:
        change = "same"
    else:
        change = "noisy"
    return SampleTest(mn / mb, p, lo, hi, change)


def _welch(lb: np.ndarray, ln: np.ndarray, alpha: float) -> tuple[float, float, float]:
    """Welch t-test of mean(ln) - mean(lb): (p, CI low, CI high) of that difference at 1-alpha."""
    from scipy.stats import t as student_t

    diff = float(ln.mean() - lb.mean())
    vb, vn = lb.var(ddof=1) / len(lb), ln.var(ddof=1) / len(ln)
    se = math.sqrt(vb + vn)
    if se == 0:  # every run identical within each side
        return (1.0 if diff == 0 else 0.0), diff, diff
    df = se**4 / (vb**2 / (len(lb) - 1) + vn**2 / (len(ln) - 1))
    half = float(student_t.ppf(1 - alpha / 2, df)) * se
    return float(2 * student_t.sf(abs(diff) / se, df)), diff - half, diff + half


def _run_spread(b: np.ndarray, n: np.ndarray, alpha: float) -> tuple[float, float]:
    """(s, band): the run-to-run standard deviation pooled over the sides with >= 2 runs, and the change it lets
    through, max(RUN_SPREAD_K * s, the two-sided t prediction bound of a pooled test) (compare_runs' rule)."""
    from scipy.stats import t as student_t

    sides = [x for x in (b, n) if len(x) >= 2]
    df = sum(len(x) - 1 for x in sides)
    s = math.sqrt(sum(float(((x - x.mean()) ** 2).sum()) for x in sides) / df)
    t_bound = float(student_t.ppf(1 - alpha / 2, df)) * math.sqrt(1 / len(b) + 1 / len(n))
    return s, max(RUN_SPREAD_K * s, t_bound * s)


def compare_runs(base, new, threshold: float = 0.05, alpha: float = 0.01) -> SampleTest:
    """One value per run (a run's median) on each side, at least one side with >= 2 runs; all values > 0.

    - ratio = median(new runs) / median(base runs).
    - spread s: run-to-run standard deviation of the log run values, pooled over the sides that have >= 2 runs
      (squared deviations from each side's mean over sum(runs - 1) degrees of freedom). It is relative (0.03 = 3%).
    - band = max(log(1+threshold), RUN_SPREAD_K * s, t(1-alpha/2, df) * s * sqrt(1/runs_base + 1/runs_new)): the
      last term is the two-sided prediction bound of a pooled t-test, so with few runs (or one new run against
      several base runs, the nightly case) a change must clear what those runs can actually resolve.
    - "up"/"down" when |log ratio| > band and, if both sides have >= MIN_RUNS_FOR_TEST runs, the Welch t-test on
      the log run values has p < alpha. "same" when |log ratio| <= log(1+threshold) and s <= log(1+threshold).
      Otherwise "noisy".
    - p_value, ci_low/ci_high: that Welch test and exp of its (1-alpha) interval of mean(log new) - mean(log base),
      whenever both sides have >= 2 runs (with 2 it is reported but does not gate); NaN otherwise.

    The spread is a standard deviation rather than 1.4826*MAD because a comparison has 2-7 runs a side: the MAD
    then underestimates often enough to raise the A/A alarm rate of 3 base runs vs 1 new (3% run noise) from 0.7%
    to 4%."""
    with np.errstate(divide="ignore", invalid="ignore"):
        lb, ln = np.log(np.asarray(base, dtype=float)), np.log(np.asarray(new, dtype=float))
    sides = [x for x in (lb, ln) if len(x) >= 2]
    if not sides or not len(lb) or not len(ln) or not np.isfinite([*lb, *ln]).all():
        return SampleTest(math.nan, math.nan, math.nan, math.nan, "noisy")
    log_ratio = float(np.median(ln) - np.median(lb))
    s, spread_band = _run_spread(lb, ln, alpha)
    floor = math.log1p(threshold)
    band = max(floor, spread_band)
    p, lo, hi = (math.nan,) * 3
    if len(lb) >= 2 and len(ln) >= 2:
        p, lo, hi = _welch(lb, ln, alpha)
    tested = min(len(lb), len(ln)) >= MIN_RUNS_FOR_TEST
    if abs(log_ratio) > band and (not tested or p < alpha):
        change = "up" if log_ratio > 0 else "down"
    elif abs(log_ratio) <= floor and s <= floor:
        change = "same"
    else:
        change = "noisy"
    return SampleTest(math.exp(log_ratio), p, math.exp(lo), math.exp(hi), change, s)


def compare_spread(base, new, alpha: float = 0.01) -> SampleTest:
    """Run values of a metric meant to be exact whose runs disagree, taken on their own scale (a byte count, a loss
    difference or a figure in dB may be 0 or negative, where compare_runs' logs cannot go) and with no threshold: a
    deterministic metric has no noise a threshold would stand for, so a 4% growth in bytes must not hide under 5%.
    The difference of the medians must exceed the run-to-run spread by compare_runs' rule otherwise (RUN_SPREAD_K
    standard deviations pooled over the sides with >= 2 runs, and the t prediction bound), and, with
    MIN_RUNS_FOR_TEST runs a side, Welch's test on the values must agree: "up"/"down", else "noisy" ("same" only when
    the medians are equal). ratio is median(new) / median(base) and spread the standard deviation over
    |median(base)| (NaN from a median of 0); the CI is left NaN (a difference, not a ratio)."""
    b, n = np.asarray(base, dtype=float), np.asarray(new, dtype=float)
    if max(len(b), len(n)) < 2 or not len(b) or not len(n) or not np.isfinite([*b, *n]).all():
        return SampleTest(math.nan, math.nan, math.nan, math.nan, "noisy")
    mb, mn = float(np.median(b)), float(np.median(n))
    s, band = _run_spread(b, n, alpha)
    p = _welch(b, n, alpha)[0] if len(b) >= 2 and len(n) >= 2 else math.nan
    tested = min(len(b), len(n)) >= MIN_RUNS_FOR_TEST
    if mn == mb:
        change = "same"
    elif abs(mn - mb) > band and (not tested or p < alpha):
        change = "up" if mn > mb else "down"
    else:
        change = "noisy"
    ratio, spread = (mn / mb, s / abs(mb)) if mb else (math.nan, math.nan)
    return SampleTest(ratio, p, math.nan, math.nan, change, spread)
