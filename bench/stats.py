"""The statistics behind `bench compare`: one run against one (within-run samples) and runs against runs.

compare_samples: two sample sets of one run each (Mann-Whitney U, a bootstrap interval on the ratio of medians, and
a threshold). compare_runs: the per-run values of several runs per side against their run-to-run spread (Welch's t
on log values when both sides have enough runs). Both return a SampleTest. family_p: the gate's test over all the
timings of one comparison (Holm's correction, spreads moderated across them). numpy and scipy only.
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
# compare_samples' change where its rank test cannot reach alpha with the samples it has (min_p >= alpha): 2 / C(6, 3)
# = 0.1 at 3 samples a side, 0.029 at 4, 0.0079 at 5. Neither same nor noisy: the test could not decide at all.
TOO_FEW = "too few"


@dataclass(frozen=True)
class SampleTest:
    """Outcome of `compare_samples` or `compare_runs`: NEW/BASE ratio, its CI, a p-value and the change."""

    ratio: float
    p_value: float
    ci_low: float
    ci_high: float
    change: str
    """One of: up, down (significant and beyond the threshold), same (inside the band), noisy, TOO_FEW."""
    spread: float = math.nan
    """`compare_runs` only: relative run-to-run spread (standard deviation of log run values); NaN otherwise."""
    base: float = math.nan
    new: float = math.nan
    """The centres whose quotient `ratio` is (new / base): the medians the test compared. For `compare_runs` the
    medians of the log run values, taken back (exp): with an odd number of runs the middle run's value, with an even
    number the geometric mean of the two middle ones (runs 4 and 16: 8, where the arithmetic median says 10). The row
    shows these as base and new, so that its ratio is always new / base."""
    diff: float = math.nan
    df: float = math.nan
    scale: float = math.nan
    """`compare_runs` only, for the gate's test across rows (`family_p`): mean(log new runs) - mean(log base runs),
    the degrees of freedom of `spread`, and sqrt(1/runs_base + 1/runs_new), the standard error of `diff` in spreads."""
    min_p: float = math.nan
    sizes: tuple[int, int] | None = None
    """`compare_samples` only: the smallest p its rank test can give with these samples (`_min_p`; NaN when every
    sample is equal), and the samples' counts (base, new)."""


def _boot_medians(x: np.ndarray, rng: np.random.Generator, resamples: int) -> np.ndarray:
    chunk = max(1, 2_000_000 // len(x))  # bounds memory at ~16 MB for long sample sets
    parts = [np.median(x[rng.integers(0, len(x), (min(chunk, resamples - i), len(x)))], axis=1)
             for i in range(0, resamples, chunk)]
    return np.concatenate(parts)


def compare_samples(base, new, threshold: float = 0.05, alpha: float = 0.01) -> SampleTest:
    """The samples of ONE run per side. A change is reported ("up"/"down") only when the two-sided Mann-Whitney U
    p-value is below alpha and the whole (1-alpha) percentile-bootstrap CI of median(new)/median(base) lies beyond
    the band [1/(1+threshold), 1+threshold] on one side (up: CI low > 1+threshold; down: CI high < 1/(1+threshold)).
    Otherwise "same" when that CI lies inside the band, else "noisy"; but TOO_FEW, whatever the CI, where the test's
    smallest attainable p (`_min_p`: 0.1 at 3 samples a side) is not below alpha: it could not have called any
    change, so "noisy" or "same" would claim what it never tested.

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
    min_p = _min_p(b, n)
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    boot_b, boot_n = _boot_medians(b, rng, BOOTSTRAP_RESAMPLES), _boot_medians(n, rng, BOOTSTRAP_RESAMPLES)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = boot_n / boot_b
    lo, hi = (float(q) for q in np.quantile(ratios, [alpha / 2, 1 - alpha / 2]))
    upper, lower = 1 + threshold, 1 / (1 + threshold)
    if min_p >= alpha:
        change = TOO_FEW
    elif p < alpha and lo > upper:
        change = "up"
    elif p < alpha and hi < lower:
        change = "down"
    elif lower <= lo and hi <= upper:
        change = "same"
    else:
        change = "noisy"
    return SampleTest(mn / mb, p, lo, hi, change, base=mb, new=mn, min_p=min_p, sizes=(len(b), len(n)))


def _min_p(b: np.ndarray, n: np.ndarray) -> float:
    """The smallest two-sided p that compare_samples' Mann-Whitney U test can give for samples of these sizes and
    ties: scipy's test on the pooled values split so that every base sample lies below every new one, or above (the
    most extreme U; the tie correction of its normal approximation, and whether it is exact, depend on the pooled
    values only, which any split keeps). Exact, without ties: 2 / C(nb + nn, nb). NaN when every sample is equal."""
    from scipy.stats import mannwhitneyu

    pooled = np.sort(np.concatenate([b, n]))
    if pooled[0] == pooled[-1]:  # no split separates anything: more samples would not help
        return math.nan
    low_base = mannwhitneyu(pooled[:len(b)], pooled[len(b):], alternative="two-sided").pvalue
    low_new = mannwhitneyu(pooled[len(n):], pooled[:len(n)], alternative="two-sided").pvalue
    return float(min(low_base, low_new))


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


def _run_spread(b: np.ndarray, n: np.ndarray, alpha: float) -> tuple[float, float, int]:
    """(s, band, df): the run-to-run standard deviation pooled over the sides with >= 2 runs, the change it lets
    through, max(RUN_SPREAD_K * s, the two-sided t prediction bound of a pooled test) (compare_runs' rule), and the
    degrees of freedom of s."""
    from scipy.stats import t as student_t

    sides = [x for x in (b, n) if len(x) >= 2]
    df = sum(len(x) - 1 for x in sides)
    s = math.sqrt(sum(float(((x - x.mean()) ** 2).sum()) for x in sides) / df)
    t_bound = float(student_t.ppf(1 - alpha / 2, df)) * math.sqrt(1 / len(b) + 1 / len(n))
    return s, max(RUN_SPREAD_K * s, t_bound * s), df


def compare_runs(base, new, threshold: float = 0.05, alpha: float = 0.01) -> SampleTest:
    """One value per run (a run's median) on each side, at least one side with >= 2 runs; all values > 0.

    - ratio = exp(median(log new runs) - median(log base runs)): new / base of the centres the result carries
      (`base`, `new`: the median run, or with an even number of runs the geometric mean of the middle two, so that
      the ratio shown beside them is their quotient, runs 4 and 16 against 10 reading 8 -> 10 x1.25, never 10 -> 10).
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
    centre_b, centre_n = _log_median(base), _log_median(new)
    log_ratio = math.log(centre_n) - math.log(centre_b)
    s, spread_band, df = _run_spread(lb, ln, alpha)
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
    with np.errstate(over="ignore"):  # runs ~1e10 apart put the interval's end past exp(709): inf, not an error
        ci_low, ci_high = (float(x) for x in np.exp([lo, hi]))
    return SampleTest(centre_n / centre_b, p, ci_low, ci_high, change, s, centre_b, centre_n,
                      float(ln.mean() - lb.mean()), float(df), math.sqrt(1 / len(lb) + 1 / len(ln)))


def _log_median(values) -> float:
    """The median on the log scale, taken back: the middle value of an odd number, the geometric mean of the two
    middle ones of an even number (exp(median(log x)), without its rounding: 4 and 16 give 8.0)."""
    x = np.sort(np.asarray(values, dtype=float))
    mid = len(x) // 2
    return float(x[mid]) if len(x) % 2 else math.sqrt(float(x[mid - 1]) * float(x[mid]))


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
    s, band, _ = _run_spread(b, n, alpha)
    p = _welch(b, n, alpha)[0] if len(b) >= 2 and len(n) >= 2 else math.nan
    tested = min(len(b), len(n)) >= MIN_RUNS_FOR_TEST
    if mn == mb:
        change = "same"
    elif abs(mn - mb) > band and (not tested or p < alpha):
        change = "up" if mn > mb else "down"
    else:
        change = "noisy"
    ratio, spread = (mn / mb, s / abs(mb)) if mb else (math.nan, math.nan)
    return SampleTest(ratio, p, math.nan, math.nan, change, spread, mb, mn)


def holm(p) -> np.ndarray:
    """Holm's step-down adjusted p-values: a hypothesis is rejected at family-wise level alpha when its adjusted p is
    below alpha, which holds the chance of any false rejection in the family to alpha whatever the dependence between
    the tests (Holm 1979). NaN p-values are left out of the family and stay NaN."""
    p = np.asarray(p, dtype=float)
    out = np.full(len(p), math.nan)
    idx = np.flatnonzero(~np.isnan(p))
    m, running = len(idx), 0.0
    for k, i in enumerate(idx[np.argsort(p[idx], kind="stable")]):
        running = max(running, (m - k) * p[i])
        out[i] = min(1.0, running)
    return out


def _trigamma_inverse(x: float) -> float:
    """y with trigamma(y) = x (x > 0), by Newton's method as limma's trigammaInverse."""
    from scipy.special import polygamma

    y = 0.5 + 1 / x
    for _ in range(50):
        tri = float(polygamma(1, y))
        step = tri * (1 - tri / x) / float(polygamma(2, y))
        y += step
        if -step / y < 1e-8:
            break
    return y


def spread_prior(s, df) -> tuple[float, float]:
    """(d0, s0): the prior degrees of freedom and spread of the run-to-run spreads `s` (each with its `df`) of the
    rows of one comparison, fitted by moments of log s^2 (Smyth 2004, limma's fitFDist without covariates): d0 = inf
    where the spreads differ no more than sampling does (one spread for all), 0 where fewer than 3 spreads > 0 (no
    prior: each row on its own)."""
    from scipy.special import digamma, polygamma

    s, df = np.asarray(s, dtype=float), np.asarray(df, dtype=float)
    ok = (s > 0) & np.isfinite(s) & (df > 0)
    s, df = s[ok], df[ok]
    if len(s) < 3:
        return 0.0, 0.0
    e = np.log(s**2) - digamma(df / 2) + np.log(df / 2)
    excess = float(e.var(ddof=1) - polygamma(1, df / 2).mean())
    if excess <= 0:
        return math.inf, math.sqrt(math.exp(e.mean()))
    d0 = 2 * _trigamma_inverse(excess)
    return d0, math.sqrt(math.exp(e.mean() + digamma(d0 / 2) - math.log(d0 / 2)))


def family_p(worse, s, df, scale) -> np.ndarray:
    """The gate's p-values for a family of timings, each compared from several runs a side (compare_runs): per row
    `worse` = the change of its mean log run value in the bad direction (log new - log base for a time), its spread
    s with df degrees of freedom, and scale = sqrt(1/runs_base + 1/runs_new). Returns each row's one-sided p that NEW
    is worse, Holm-adjusted over the rows (`holm`): the gate fails on a row only where it is below alpha, which holds
    the chance that an A/A comparison fails the gate to alpha however many timings it judges.

    Each row's spread is moderated (Smyth 2004): s~^2 = (d0 s0^2 + df s^2) / (d0 + df), a t on d0 + df degrees of
    freedom (`spread_prior`). With 3 base runs against 1 a row's own spread has 2 degrees of freedom and is often
    far too small (a ratio of 1.2% whose runs move by 10%); the spreads of the other rows, weighed by how much they
    agree, are what the row's own runs cannot give. Simulated nights of 40 timings, each with its own run-to-run
    spread of 2-10% (compare_runs' verdict per row, then this): A/A nights failing the gate 16% / 17% / 8% (3v1 / 5v1
    / 3v3) on each row's verdict alone, 0.4% / 0.8% / 0.5% with this; one timing x1.5 slower found in 36% / 72% /
    79% of nights (39% / 78% / 80% on each row's verdict; 3% / 32% / 46% with Holm on each row's own spread)."""
    from scipy.stats import t as student_t

    worse, s, df, scale = (np.asarray(x, dtype=float) for x in (worse, s, df, scale))
    d0, s0 = spread_prior(s, df)
    if math.isinf(d0):
        s_mod, df_mod = np.full(len(s), s0), np.full(len(s), math.inf)
    else:
        s_mod, df_mod = np.sqrt((d0 * s0**2 + df * s**2) / (d0 + df)), d0 + df
    with np.errstate(divide="ignore", invalid="ignore"):
        stat = worse / (s_mod * scale)
    stat = np.where(s_mod > 0, stat, np.where(worse > 0, math.inf, -math.inf))
    p = student_t.sf(stat, df_mod)  # df inf: the normal tail
    return holm(np.where(np.isnan(worse) | np.isnan(s), math.nan, p))
