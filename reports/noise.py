"""The noise band a measured series of the dashboard is judged by (reports/regressions.py): its width from the
series' run-to-run noise, and while a series is young, from its environment's other series as well.
"""

from __future__ import annotations

import functools
import math
import statistics

from scipy.stats import t as student_t

from bench.stats import spread_prior

# The band's half-width: the one-sided 3-sigma quantile (0.135% of a normal sample's points beyond it) of a prediction
# from an estimated noise: Student's t at the degrees of freedom the estimate has, times sqrt(1 + 1/m) for a baseline of
# m points, which is 3.5 sigma from 28 points, 5.9 from 6 and 22 from 3. The bare 3 sigma trusted an estimate that from
# 7 points misses the standard deviation by +-48% (one sd; from 28 by +-25%): 30 stable nights at 5% noise flagged 17%
# of 400 series at some night (1.4% a night), at 10% noise 26%; with this band, and the noise read from every
# undisturbed point (below), 2.8% and 3.3% (0.16% and 0.22% a night). It costs power early in a series: a 30% step at
# 5% noise is flagged within 5 nights in 67% of series with 6 nights before it, 86% with 10, 97% with 20 (99.7% / 98% /
# 99.7% before); at 2% noise, with 4 nights before it, on 86-90% of each of the 6 nights after.
BAND_QUANTILE = 0.99865
MAD_TO_SIGMA = 1.4826  # MAD of a normal sample times this estimates its standard deviation
# The noise estimate reads the last 4 windows of undisturbed points, bad ones included: leaving the points judged bad
# out of it (as they are left out of the baseline) cut the tail it measures, so a low estimate flagged more points,
# which then left it lower (at 5% noise 7% of series flagged in 30 nights with them, 17% without, both at 3 sigma).
SPREAD_WINDOWS = 4
# Until a series has its own noise estimate (more than `window` undisturbed points), its spread is moderated by its
# environment's (Smyth 2004, as compare's gate does across timings: `prior_of`), unless its own sample variance lies
# outside the central 90% of what that prior allows (_alike): a new case noisier than the machine's others keeps its
# own, and so does one quieter, whose band the environment's noise would widen. The estimates are MADs, whose real
# degrees of freedom are fewer than the nominal ones passed: the prior comes out weaker (d0 ~14 from 40 series of one
# noise, not infinite) and the series' own estimate weighs more, the cautious side.
# Simulated series of 12 and 30 nights, 1000 each, a 30% step found within 5 nights of it (ci/dashboard_band.py), own
# spread -> moderated:
#   environment of 40 series at 5%, new at 5%: false flags 1.8% -> 0.2% (12 nights), 2.6% -> 1.6% (30); step after 4
#     nights found 36% -> 91%, after 6 70% -> 93%
#   40 at 1-10% (log-uniform), new alike: false 0.6% -> 0.2%, 1.3% -> 0.8%; step after 4: 64% -> 82%, 6: 80% -> 86%
#   40 at 1-10%, new at 10%: false 2.0% -> 3.0%, 3.2% -> 3.4%; step after 4: 15% -> 32%
#   40 at 2%, new at 8% (a case it costs): false 2.4% -> 4.1%, 3.2% -> 5.5%; step after 4: 18% -> 23%
#   40 at 5%, new at 1%, a 10% step (the other): after 4 nights 73% -> 69% (0% with the upper bound alone), after 6
#     97% either way; 40 at 10%, new at 1%, a 15% step: 94% -> 93%
ALIKE = 0.90


def band(kept: list[float], seen: list[float], threshold: float, window: int,
         prior: tuple[float, float] = (0.0, 0.0)) -> tuple[float, float] | None:
    """(baseline, relative band half-width), None when there is no usable baseline: the baseline from the earlier
    not-bad values `kept`; the noise from the successive differences of the earlier undisturbed values `seen` (bad
    ones too: one step is one large difference, which their MAD passes over), or while they are `window` or fewer,
    from the spread of the baseline's own points about it. While it is the latter, it is moderated by `prior`, the
    (d0, s0) of its environment's series (`prior_of`), unless the series is unlike them (`_alike`)."""
    recent = kept[-window:]
    if not recent:
        return None
    baseline = statistics.median(recent)
    if baseline == 0:
        return None
    sigma, dof = _spread(seen[-SPREAD_WINDOWS * window:], window)
    young = sigma is None
    if young:  # about the baseline: of the points it is made of, as points judged bad would widen it past a step
        sigma = MAD_TO_SIGMA * statistics.median(abs(x - baseline) for x in recent)
        dof = len(recent) - 1
    relative = sigma / abs(baseline)
    d0, s0 = prior
    if young and d0 > 0 and _alike(statistics.stdev(recent) / abs(baseline) if dof else 0.0, dof, s0, d0):
        # Smyth's moderated spread: the series' own, weighed against its environment's by their dof
        relative = s0 if math.isinf(d0) else math.sqrt((d0 * s0**2 + dof * relative**2) / (d0 + dof))
        dof += d0
    k = _t_quantile(max(1, dof)) * math.sqrt(1 + 1 / len(recent))
    return baseline, max(threshold, k * relative)


def _alike(sd: float, dof: int, s0: float, d0: float) -> bool:
    """The series' own relative sample sd, on `dof` degrees of freedom, is one its environment's prior allows: its
    variance over s0^2 inside the central ALIKE of F(dof, d0) (chi2(dof) / dof where d0 is infinite). A series
    noisier than its environment's (a new case unlike the others) keeps its own spread, and so does one quieter (a long
    step among short kernels), which its environment's would blunt."""
    if dof <= 0:
        return False
    low, high = _alike_bounds(dof, d0)
    return low <= (sd / s0) ** 2 <= high


# A store's series take a handful of degrees of freedom between them, and scipy's quantiles cost ~0.3 ms a call:
# 400 cases of 60 nights judged ~100,000 points, 30 s of quantiles, almost all of them repeats.
@functools.lru_cache(maxsize=4096)
def _t_quantile(dof: float) -> float:
    return float(student_t.ppf(BAND_QUANTILE, dof))


@functools.lru_cache(maxsize=4096)
def _alike_bounds(dof: int, d0: float) -> tuple[float, float]:
    """The central ALIKE of F(dof, d0) (of chi2(dof) / dof where d0 is infinite)."""
    from scipy.stats import chi2, f

    tails = ((1 - ALIKE) / 2, (1 + ALIKE) / 2)
    low, high = (float(chi2.ppf(q, dof) / dof if math.isinf(d0) else f.ppf(q, dof, d0)) for q in tails)
    return low, high


def _spread(points: list[float], window: int) -> tuple[float | None, int]:
    """(sigma, its degrees of freedom) of run-to-run noise from successive differences of `points` (a slow drift or
    one step does not widen it); (None, 0) while they are `window` or fewer."""
    if len(points) <= window:
        return None, 0
    diffs = [b - a for a, b in zip(points, points[1:])]
    centre = statistics.median(diffs)
    return MAD_TO_SIGMA * statistics.median(abs(d - centre) for d in diffs) / math.sqrt(2), len(diffs) - 1


def prior_of(seen: list[list[float]], window: int) -> tuple[float, float]:
    """(d0, s0) of the relative run-to-run noise of an environment's measured series, each given as its undisturbed
    values: Smyth's prior (bench.stats.spread_prior) over those with more than `window` points (the same estimate as
    `band`'s, at their latest point). (0, 0), no prior, from fewer than 3 such series."""
    s, df = [], []
    for values in seen:
        points = values[-SPREAD_WINDOWS * window:]
        sigma, dof = _spread(points, window)
        centre = statistics.median(points) if sigma is not None else 0
        if sigma and centre:
            s.append(sigma / abs(centre))
            df.append(dof)
    return spread_prior(s, df)
