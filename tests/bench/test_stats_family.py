"""The gate's test across the timings of one comparison (bench.stats.family_p): Holm's correction over per-row
one-sided p-values whose run-to-run spreads are moderated across the rows. A/A nights of 40 timings must fail it
about 1% of the time (family-wise alpha), not the 8-23% that each row's own test at alpha made of them."""

import math

import numpy as np
import pytest

from bench.stats import compare_runs, family_p, holm, spread_prior

ROWS = 40


def night(rng, nb: int, nn: int, sd, shift=None):
    """Per row, what compare_runs gives the gate: (worse, s, df, scale) from log run values drawn with spread sd;
    `shift` adds a log change to NEW's runs."""
    lb, ln = rng.normal(0, sd[:, None], (ROWS, nb)), rng.normal(0, sd[:, None], (ROWS, nn))
    if shift is not None:
        ln += shift[:, None]
    ss = sum(((x - x.mean(1, keepdims=True)) ** 2).sum(1) for x in (lb, ln) if x.shape[1] > 1)
    df = sum(x.shape[1] - 1 for x in (lb, ln) if x.shape[1] > 1)
    scale = np.full(ROWS, math.sqrt(1 / nb + 1 / nn))
    return ln.mean(1) - lb.mean(1), np.sqrt(ss / df), np.full(ROWS, float(df)), scale


def test_holm_adjusts_in_steps_and_leaves_nan_out():
    adj = holm([0.01, 0.04, 0.03, math.nan, 0.005])
    assert adj[:3] == pytest.approx([0.03, 0.06, 0.06]) and adj[4] == pytest.approx(0.02) and math.isnan(adj[3])
    assert holm([]).size == 0 and holm([0.9, 0.8]).max() == 1.0


def test_spread_prior():
    rng = np.random.default_rng(1)
    assert spread_prior([0.03, 0.02], [2, 2]) == (0.0, 0.0)  # too few spreads to weigh together
    same = np.sqrt(0.03**2 * rng.chisquare(4, 400) / 4)  # one spread for all, sampled with 4 degrees of freedom
    d0, s0 = spread_prior(same, np.full(400, 4.0))
    assert d0 > 50 and s0 == pytest.approx(0.03, rel=0.1)
    mixed = rng.uniform(0.02, 0.10, 400) * np.sqrt(rng.chisquare(4, 400) / 4)
    d0, _ = spread_prior(mixed, np.full(400, 4.0))
    assert 1 < d0 < 20  # spreads that differ by more than sampling does: a prior of few degrees of freedom


@pytest.mark.parametrize("nb, nn", [(3, 1), (5, 1), (3, 3)])
def test_aa_nights_fail_the_gate_about_alpha_of_the_time(nb, nn):
    # 600 A/A nights of 40 timings, each timing's run-to-run spread 2-10%. Each row alone at one-sided alpha/2 (the
    # slower half of the per-row test) fails about 1 - 0.995^40 = 18% of nights; the family's rows at alpha: ~1%
    rng = np.random.default_rng(20261207 + nb * 10 + nn)
    from scipy.stats import t as student_t

    fails = alone = 0
    for _ in range(600):
        worse, s, df, scale = night(rng, nb, nn, rng.uniform(0.02, 0.10, ROWS))
        fails += bool((family_p(worse, s, df, scale) < 0.01).any())
        alone += bool((student_t.sf(worse / (s * scale), df) < 0.005).any())
    assert fails / 600 <= 0.025 and alone / 600 > 0.08, (fails, alone)


def test_a_real_regression_still_fails_the_gate():
    # five nights against one, one timing of 40 slower by x1.5 at a 3% run-to-run spread: found nearly every night
    rng = np.random.default_rng(5)
    found = 0
    for _ in range(200):
        shift = np.zeros(ROWS)
        shift[0] = math.log(1.5)
        found += family_p(*night(rng, 5, 1, np.full(ROWS, 0.03), shift))[0] < 0.01
    assert found / 200 > 0.9


def test_compare_runs_carries_what_the_gate_needs():
    t = compare_runs([100.0, 102.0, 98.0], [110.0])
    assert t.df == 2 and t.scale == pytest.approx(math.sqrt(1 / 3 + 1)) and t.base == 100.0 and t.new == 110.0
    assert t.diff == pytest.approx(math.log(110) - np.log([100.0, 102.0, 98.0]).mean())
    assert t.ratio == t.new / t.base
    even = compare_runs([4.0, 16.0], [10.0, 10.0, 10.0])
    assert (even.base, even.new, even.ratio) == (8.0, 10.0, 1.25)
