"""torchsde's solvers (impls/samplers/torchsde_solvers.py) held to our sde_em on the same reverse-time VP SDE:
euler with sde_em's noise is sde_em; srk converges at a higher strong order than euler on one Brownian path; their
NFE counts (exact), the noise-free last step, the global generator left as found, the version contract and the skip.
Tests that run torchsde skip (with the reason) only where it is not installed."""

import importlib.util
import math

import pytest
import torch

from bench.suite import Skip
from impls.libraries import ECOSYSTEM
from impls.samplers import SAMPLERS
from impls.samplers import torchsde_solvers as tsd
from impls.samplers.params import ExactModel
from impls.samplers.schedules import RectifiedFlow, VPLinear
from impls.samplers.targets import GaussianMixture, make_target
from suites.samplers import PAIRED_WITH, SPECS, Samplers
from tests.impls.sampler_helpers import F64, Times, fake_module, fresh_api_fixture, gen, rms, x_T
from tests.optional import needs

NEEDS = needs("torchsde")
SPEC = tsd.specs()
EULER, SRK = "torchsde_euler", "torchsde_srk"


def vp_model(target=None) -> ExactModel:
    return ExactModel(target or make_target("gmm2d"), VPLinear(), "eps")


fresh_api = fresh_api_fixture(tsd.api)


# --- reproduction ----------------------------------------------------------------------------------------------------


@NEEDS
@pytest.mark.parametrize("dtype, atol", [
    (F64, 1e-12),  # the same operations in the same order, the same draws: measured 0.0 at every step count
    (torch.float32, 1e-6),  # measured 0.0 too (samples of size ~2, 7.7 at one step)
])
@pytest.mark.parametrize("steps", [1, 2, 7, 64])
def test_euler_is_our_sde_em(dtype, atol, steps):
    model = vp_model()
    x = x_T(model, dtype=dtype)
    out = SPEC[EULER].fn(model, x, steps, generator=gen(2))
    ours = SAMPLERS["sde_em"].fn(model, x, steps, generator=gen(2))
    assert out.nfe == ours.nfe + 1 == steps + 1 and out.x.dtype == dtype  # + sdeint's shape check
    torch.testing.assert_close(out.x, ours.x, rtol=0, atol=atol)


class FinePath:
    """One Brownian path [n, 2] in reverse time tau = t_max - t on `fine` steps, with its space-time Levy area,
    served to sdeint in s (steps of the coarse grid) for a solve of `steps` steps: every coarse step is r whole fine
    ones, so the paths at every resolution are one path, and every step has noise (unlike StepNoise's last)."""

    levy_area_approximation = "space-time"

    def __init__(self, n: int, fine: int, total: float, generator: torch.Generator):
        self.fine, self.delta = fine, total / fine
        w = torch.randn(fine, n, 2, generator=generator, dtype=F64) * self.delta**0.5
        h = torch.randn(fine, n, 2, generator=generator, dtype=F64) * (self.delta / 12) ** 0.5
        zero = torch.zeros(1, n, 2, dtype=F64)
        self.W = torch.cat([zero, w.cumsum(0)])  # W at the fine nodes
        # the integral of W from 0 to each node: per fine step, delta W(start) + U, U = delta (w / 2 + H)
        self.I = torch.cat([zero, (self.delta * (self.W[:-1] + 0.5 * w + h)).cumsum(0)])
        self.shape, self.dtype, self.device = (n, 2), F64, torch.device("cpu")

    def at(self, steps: int) -> "FinePath":
        assert self.fine % steps == 0
        self.r = self.fine // steps
        return self

    def size(self):
        return self.shape

    def __call__(self, ta, tb=None, return_U=False, return_A=False):
        p, q = round(float(ta) * self.r), round(float(tb) * self.r)
        h = self.r * self.delta  # a coarse step in tau: W in s is W in tau / sqrt(h), U in s is U in tau / h^1.5
        w = (self.W[q] - self.W[p]) / h**0.5
        if not return_U:
            return w
        return w, (self.I[q] - self.I[p] - (q - p) * self.delta * self.W[p]) / h**1.5


def slope(steps, errs) -> float:
    """Least-squares slope of log error on log steps."""
    n, e = (torch.tensor([math.log(v) for v in vals], dtype=F64) for vals in (steps, errs))
    return float(((n - n.mean()) * (e - e.mean())).sum() / ((n - n.mean()) ** 2).sum())


@NEEDS
def test_srk_strong_order_beats_eulers():
    # A Gaussian target N(mu, I): the score is linear, so is the reverse SDE (additive noise). On gmm2d the paths that
    # change mode between resolutions swamp the rms (slopes -1.0 to -1.9 from seed to seed). Error against srk's own
    # 256-step solve on the same path, 8 to 64 steps, 64 paths: measured slopes euler -0.99 / -0.95 / -0.94 (strong
    # order 1 on additive noise) and srk -1.67 / -1.63 / -1.63 (order 1.5) over three seeds; the bands keep them apart.
    target = GaussianMixture(torch.ones(1, dtype=F64), torch.tensor([[1.0, -0.5]], dtype=F64), torch.ones(1, dtype=F64))
    model = vp_model(target)
    sch = model.schedule
    x = x_T(model)
    path = FinePath(64, 256, sch.t_max - sch.t_min, gen(100))
    fine = tsd.integrate(SRK, model, x, 256, path.at(256)).x
    steps = (8, 16, 32, 64)
    got = {}
    for name in (EULER, SRK):
        errs = [rms(tsd.integrate(name, model, x, n, path.at(n)).x, fine) for n in steps]
        got[name] = slope(steps, errs), errs
    assert -1.25 <= got[EULER][0] <= -0.75, got
    assert -1.95 <= got[SRK][0] <= -1.4, got
    assert all(s < e for s, e in zip(got[SRK][1], got[EULER][1])), got  # closer at every step count


# --- what a run costs, and its noise ---------------------------------------------------------------------------------


@NEEDS
@pytest.mark.parametrize("name", [EULER, SRK])
@pytest.mark.parametrize("steps", [1, 2, 7, 13])
def test_nfe_is_counted_and_follows_the_rule(name, steps):
    # 7 and 13: with ts = [0, 0.999] and dt = 0.999 / steps (time in t's units) sdeint took a step more at 126 of
    # steps 1 to 300, the first at 7 (the sum of dt an ulp short of the end); in steps' units it never does
    spec = SPEC[name]
    model = Times(vp_model())
    out = spec.fn(model, x_T(model, 3), steps, generator=gen(1))
    assert out.nfe == spec.nfe(steps) == 1 + tsd.METHODS[name].calls_per_step * steps == len(model.times) // 3
    assert torch.isfinite(out.x).all()
    # every call in (t_min, t_max]: euler calls at a step's start, srk at its start and 3/4 of the way (SRA1's C0)
    assert max(model.times) == model.schedule.t_max and min(model.times) > model.schedule.t_min


def test_spec_budgets():
    # sdeint's shape check costs a call: no run fits one, and euler's budget b buys b - 1 steps
    assert SPEC[EULER].steps_for(1) is None and SPEC[SRK].steps_for(3) is None
    assert SPEC[EULER].plan((1, 4, 16, 64)) == [(3, 4), (15, 16), (63, 64)]
    assert SPEC[SRK].plan((1, 4, 8, 16, 64)) == [(1, 4), (2, 7), (5, 16), (21, 64)]


@NEEDS
@pytest.mark.parametrize("name", [EULER, SRK])
def test_last_step_adds_no_noise(name):
    # one step is the last: no draw, whatever the generator; two steps draw on the first only
    model = vp_model()
    x = x_T(model, 16)
    one = [SPEC[name].fn(model, x, 1, generator=gen(seed)).x for seed in (1, 2)]
    torch.testing.assert_close(one[0], one[1], rtol=0, atol=0)
    two = [SPEC[name].fn(model, x, 2, generator=gen(seed)).x for seed in (1, 2)]
    assert not torch.equal(two[0], two[1])


@NEEDS
def test_global_generator_is_left_as_found():
    # sdeint's shape check of g_prod draws torch.randn from the global generator
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    SPEC[SRK].fn(vp_model(), x_T(vp_model(), 4), 2, generator=gen(1))
    torch.testing.assert_close(torch.rand(3), expected, rtol=0, atol=0)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="steps must be a positive int"):
        SPEC[EULER].fn(vp_model(), torch.zeros(2, 2, dtype=F64), 0)
    flow = ExactModel(make_target("gmm2d"), RectifiedFlow(), "velocity")
    with pytest.raises(ValueError, match="variance-preserving"):
        SPEC[SRK].fn(flow, torch.zeros(2, 2, dtype=F64), 2)


def test_step_noise_serves_one_query_a_step_in_order():
    bm = tsd.StepNoise(torch.zeros(2, 2), 3, gen(0), "none")
    with pytest.raises(tsd.ApiMoved, match=r"asked its Brownian motion for \(0.0, 2.0.*not for step \[0, 1\] of 3"):
        bm(0.0, 2.0)  # two steps at once
    w = bm(torch.tensor(0.0, dtype=F64), torch.tensor(1.0, dtype=F64))
    torch.testing.assert_close(w, torch.randn(2, 2, generator=gen(0)), rtol=0, atol=0)  # noise_like's draw
    with pytest.raises(tsd.ApiMoved, match=r"not for step \[1, 2\]"):
        bm(0.0, 1.0)  # the same step again
    with pytest.raises(tsd.ApiMoved, match="return_U=True"):
        bm(1.0, 2.0, return_U=True)  # a Levy area it was not built with
    bm(1.0, 2.0)
    assert torch.equal(bm(2.0, 3.0), torch.zeros(2, 2))  # the last step: no noise


# --- version contract, skip, declarations ----------------------------------------------------------------------------


def fake_torchsde(monkeypatch, sdeint):
    """`import torchsde` gives a module whose sdeint is `sdeint`."""
    fake_module(monkeypatch, "torchsde", sdeint=sdeint)
    tsd.api.cache_clear()


@NEEDS
def test_moved_api_is_an_error_naming_it(monkeypatch, fresh_api):
    import torchsde

    real = torchsde.sdeint

    def no_bm(sde, y0, ts, method=None, dt=1e-3):
        return real(sde, y0, ts, method=method, dt=dt)

    fake_torchsde(monkeypatch, no_bm)
    with pytest.raises(tsd.ApiMoved, match=r"torchsde 0.2.6: torchsde.sdeint takes .* not .*bm"):
        tsd.api()
    with pytest.raises(tsd.ApiMoved, match="sdeint takes"):  # an error, not a skip
        Samplers().measure(EULER, {"target": "gmm2d", "model": "exact", "nfe_budget": 4, "n": 8}, "cpu")

    def renamed(sde, y0, ts, bm=None, method=None, dt=1e-3):  # srk renamed
        return real(sde, y0, ts, bm=bm, method={"srk": "srk_new"}.get(method, method), dt=dt)

    fake_torchsde(monkeypatch, renamed)
    with pytest.raises(tsd.ApiMoved, match=r"sdeint\(method='srk'\): Expected method in"):
        tsd.api()

    def halved(sde, y0, ts, bm=None, method=None, dt=1e-3):  # steps of half a grid step: 4 queries in 2 steps
        return real(sde, y0, ts, bm=bm, method=method, dt=dt / 2)

    fake_torchsde(monkeypatch, halved)
    with pytest.raises(tsd.ApiMoved, match=r"\(0.0, 0.5, .*not for step \[0, 1\] of 2"):
        tsd.api()

    def fsal(sde, y0, ts, bm=None, method=None, dt=1e-3):  # srk reusing its first stage: 2 calls a step, not 3
        class Reused:
            noise_type, sde_type, g_prod = sde.noise_type, sde.sde_type, sde.g_prod
            last = None

            def f(self, t, y):
                if self.last is None or self.last[0] is not y or self.last[1] != float(t):
                    self.last = (y, float(t), sde.f(t, y))
                return self.last[2]
        return real(Reused() if method == "srk" else sde, y0, ts, bm=bm, method=method, dt=dt)

    fake_torchsde(monkeypatch, fsal)
    with pytest.raises(tsd.ApiMoved, match=r"sdeint\(method='srk'\) made 4 drift calls .* not 1 \+ 6 and 2"):
        tsd.api()


def test_skipped_without_torchsde(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torchsde" else real(name, *a))
    for variant in (EULER, SRK):
        with pytest.raises(Skip) as e:
            Samplers().measure(variant, {"target": "gmm2d", "model": "exact", "nfe_budget": 4, "n": 8}, "cpu")
        assert str(e.value) == f'needs torchsde, which is not installed (pip install {ECOSYSTEM})'


def test_library_variants_declared():
    suite = Samplers()
    ours = set(tsd.PAIRED_WITH)
    assert ours == set(tsd.METHODS) == set(SPEC) and ours <= set(suite.variants) & set(suite.libraries)
    version = tsd.version()
    assert {suite.libraries[v] for v in ours} == {f"torchsde {version}" if version else "torchsde"}
    assert all(suite.requires[v] == ("torchsde", ECOSYSTEM) for v in ours)
    # beside sde_em, from its noise, on its family (so on its model in the suite)
    assert all(PAIRED_WITH[v] == "sde_em" and SPECS[v].family == SAMPLERS["sde_em"].family for v in ours)
    assert {n: (s.first_calls, s.calls_per_step, s.last_step_saves, s.stochastic) for n, s in SPEC.items()} == {
        EULER: (1, 1, 0, True), SRK: (1, 3, 0, True)}
