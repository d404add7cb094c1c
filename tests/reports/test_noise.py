import math
import random

import pandas as pd
import pytest

from reports import dashboard, noise
from reports import regressions as regressions_rule


def frame_of(series: dict[str, list[float]], env_id: str = "e1") -> pd.DataFrame:
    """A history frame of step_time_ms series, one per case, each night a run (series may start late)."""
    nights = max(map(len, series.values()))
    rows = [{"suite": "s", "case_id": case, "variant": "v", "metric": "step_time_ms", "env_id": env_id,
             "device": "cuda:0", "run_id": f"r{nights - len(values) + i:02d}", "status": "ok", "value": v,
             "direction": "lower", "kind": "measured",
             "timestamp": pd.Timestamp("2026-11-01", tz="UTC") + pd.Timedelta(days=nights - len(values) + i)}
            for case, values in series.items() for i, v in enumerate(values)]
    return pd.DataFrame(rows)


def mature(n: int = 10, nights: int = 30, sigma: float = 0.02, seed: int = 0) -> dict[str, list[float]]:
    rng = random.Random(seed)
    return {f"s/v/n={i}": [100 * math.exp(rng.gauss(0, sigma)) for _ in range(nights)] for i in range(n)}


# 4 nights at ~2.5% sd, then +15%: its own MAD of 4 points makes a band of ~25%, its environment's 2% one of ~7%
YOUNG = [100.0, 103.0, 97.0, 100.0, 115.0, 116.0]
NOISY = [100.0, 110.0, 90.0, 100.0, 115.0, 116.0]  # an 8% sd, four times its environment's


def flagged_cases(frame) -> list[str]:
    return list(dashboard.regressions(frame, threshold=0.05, window=7)["case_id"])


def test_a_young_series_is_judged_with_its_environments_noise():
    assert flagged_cases(frame_of({"s/v/new": YOUNG})) == []  # alone: its own 4 points give a band of ~25%
    assert flagged_cases(frame_of({**mature(), "s/v/new": YOUNG})) == ["s/v/new"]


def test_a_young_series_noisier_than_its_environment_keeps_its_own_noise():
    assert flagged_cases(frame_of({**mature(), "s/v/new": NOISY})) == []


def test_a_young_series_quieter_than_its_environment_keeps_its_own_noise():
    # a long step at ~1% among 5% kernels: the environment's noise would widen its band past a 10% step
    quiet = [100.0, 101.0, 99.0, 100.5, 110.0, 111.0]
    assert flagged_cases(frame_of({"s/v/new": quiet})) == ["s/v/new"]  # its own 4 points: a band of ~7.6%
    assert flagged_cases(frame_of({**mature(sigma=0.05), "s/v/new": quiet})) == ["s/v/new"]
    d0, s0 = noise.prior_of(list(mature(n=40, sigma=0.05).values()), 7)
    own = noise.band(quiet[:4], quiet[:4], 0.05, 7)
    assert noise.band(quiet[:4], quiet[:4], 0.05, 7, (d0, s0)) == own


def test_another_environments_series_lend_no_noise():
    frame = pd.concat([frame_of(mature(), env_id="other"), frame_of({"s/v/new": YOUNG})], ignore_index=True)
    assert flagged_cases(frame) == []


def test_the_prior_is_fitted_on_the_environments_mature_series():
    d0, s0 = noise.prior_of(list(mature(n=40, sigma=0.05).values()), 7)
    assert d0 > 10 and s0 == pytest.approx(0.05, rel=0.2)  # 40 series of one noise: a strong prior near it
    assert noise.prior_of(list(mature(n=2).values()), 7) == (0.0, 0.0)  # fewer than 3: none
    assert noise.prior_of([v[:7] for v in mature().values()], 7) == (0.0, 0.0)  # none past its first window


def test_a_series_with_its_own_noise_estimate_is_judged_on_it_alone():
    values = mature(n=1, nights=30, sigma=0.05)["s/v/n=0"]
    own = regressions_rule._judge(values, "lower", 0.05, 7)
    moderated = regressions_rule._judge(values, "lower", 0.05, 7, prior=(math.inf, 0.05))
    young = [i for i, (a, b) in enumerate(zip(own, moderated)) if a != b]
    assert young and max(young) <= 7  # only while its undisturbed points are 7 or fewer
    assert [p["half"] for p in own[8:]] == [p["half"] for p in moderated[8:]]


def test_a_quantile_is_computed_once_per_degrees_of_freedom(monkeypatch):
    # every point of every series needs a t quantile (and a young one an F interval), from a few distinct dof: scipy's,
    # ~0.3 ms a call, took 30 s of a dashboard of 400 cases of 60 nights computed afresh at each point
    from scipy.stats import f, t

    calls = []
    for dist in (t, f):
        ppf = dist.ppf
        monkeypatch.setattr(dist, "ppf", lambda *a, ppf=ppf, name=dist.name: calls.append(name) or ppf(*a))
    noise._t_quantile.cache_clear()
    noise._alike_bounds.cache_clear()
    frame = frame_of({**mature(n=20, nights=30, sigma=0.03), "s/v/new": YOUNG})
    judged = regressions_rule.judged(frame, 0.05, 7)
    points = sum(p is not None for _, j in judged for p in j)
    assert points > 500 and len(calls) < 80, (points, len(calls))
    assert flagged_cases(frame) == ["s/v/new"]  # the same verdicts
