"""torchdiffeq's solvers (impls/samplers/torchdiffeq_solvers.py) held to what our samplers meet on the exact gmm2d
model: euler on our uniform grid is our flow_euler; rk4 is Kutta's 3/8 rule and converges to the probability-flow ODE's
endpoint at more than second order; dopri5 converges to it as its tolerance tightens. Also their NFE counts (exact),
the calls dopri5 makes inside [t_min, t_max], the version contract and the skip. Tests that run torchdiffeq skip (with
the reason) only where it is not installed."""

import contextlib
import importlib.util
import math

import pytest
import torch

from bench.suite import Skip
from impls.libraries import ECOSYSTEM
from impls.samplers import SAMPLERS
from impls.samplers import torchdiffeq_solvers as tds
from impls.samplers.params import ExactModel, predict
from impls.samplers.schedules import RectifiedFlow, VPLinear, timesteps
from impls.samplers.targets import make_target
from suites.samplers import PAIRED_WITH, SPECS, Samplers, _sampler
from tests.impls.sampler_helpers import F64, Times, fake_module, fresh_api_fixture, rms, x_T
from tests.optional import needs

NEEDS = needs("torchdiffeq")
FIXED = tds.specs()
DOPRI5 = "torchdiffeq_dopri5"


def exact_model(family: str) -> ExactModel:
    if family == "flow":
        return ExactModel(make_target("gmm2d"), RectifiedFlow(), "velocity")
    return ExactModel(make_target("gmm2d"), VPLinear(), "eps")


fresh_api = fresh_api_fixture(tds.api)


# --- reproductions ---------------------------------------------------------------------------------------------------


@NEEDS
@pytest.mark.parametrize("dtype, atol", [
    (F64, 1e-12),  # the same operations in the same order: measured 0.0 at every step count
    # a float32 state: torchdiffeq hands the field t rounded to float32 (ours converts at the float64 t); measured 0.0
    (torch.float32, 1e-6),
])
@pytest.mark.parametrize("steps", [1, 7, 64, 256])
def test_euler_is_our_flow_euler(dtype, atol, steps):
    model = exact_model("flow")
    x = x_T(model, dtype=dtype)
    out = FIXED["torchdiffeq_euler"].fn(model, x, steps)
    ours = SAMPLERS["flow_euler"].fn(model, x, steps)
    assert out.nfe == ours.nfe == steps and out.x.dtype == dtype
    torch.testing.assert_close(out.x, ours.x, rtol=0, atol=atol)


def kutta_3_8(model, x, steps):
    """Kutta's 3/8 rule on our EDM grid: the method torchdiffeq's "rk4" names."""
    ts = timesteps(model.schedule, steps, "edm").tolist()
    for t, s in zip(ts[:-1], ts[1:]):
        h = s - t
        k1 = predict(model, x, t, "velocity")
        k2 = predict(model, x + h * k1 / 3, t + h / 3, "velocity")
        k3 = predict(model, x + h * (k2 - k1 / 3), t + 2 * h / 3, "velocity")
        k4 = predict(model, x + h * (k1 - k2 + k3), s, "velocity")
        x = x + h * (k1 + 3 * (k2 + k3) + k4) / 8
    return x


@NEEDS
@pytest.mark.parametrize("steps", [1, 3, 16])
def test_rk4_is_kuttas_three_eighths_rule(steps):
    model = exact_model("vp")
    x = x_T(model)
    out = FIXED["torchdiffeq_rk4"].fn(model, x, steps)
    # float64, the same stages summed in another order: measured 6.1e-14 (1 step, |x| up to 150 before the last
    # alpha), 8.4e-15, 2.5e-16
    torch.testing.assert_close(out.x, kutta_3_8(model, x, steps), rtol=0, atol=1e-12)
    assert out.nfe == 4 * steps


@NEEDS
def test_rk4_order():
    # endpoint error against its own 512-step solve, slope of log error on log NFE 32-256: measured -3.27 (errors
    # 8.7e-3, 8.7e-4, 1.1e-4, 9.2e-6). Fourth order is not yet asymptotic on the VP ODE's stiff end (d_sigma ~
    # 1/sigma near t_min): the band holds 4 and the measurement, and excludes Heun's 2.
    spec = FIXED["torchdiffeq_rk4"]
    model = exact_model("vp")
    x = x_T(model, 256)
    fine = spec.fn(model, x, 512).x
    log_nfe, log_err = [], []
    for steps in (8, 16, 32, 64):
        out = spec.fn(model, x, steps)
        log_nfe.append(math.log(out.nfe))
        log_err.append(math.log(rms(out.x, fine)))
    n, e = torch.tensor(log_nfe, dtype=F64), torch.tensor(log_err, dtype=F64)
    slope = float(((n - n.mean()) * (e - e.mean())).sum() / ((n - n.mean()) ** 2).sum())
    assert -4.4 <= slope <= -2.8, f"slope {slope:.2f}, errors {[f'{math.exp(v):.1e}' for v in log_err]}"


@NEEDS
def test_dopri5_converges_to_the_odes_endpoint():
    # the endpoint: our ode_heun at 1024 steps on the EDM grid, ~7e-6 from the ODE's solution (tests/impls)
    model = exact_model("vp")
    x = x_T(model, 256)
    fine = SAMPLERS["ode_heun"].fn.func(model, x, 1024, spacing="edm").x
    errs = [rms(tds.solve(DOPRI5, model, x, tol).x, fine) for tol in (1e-1, 1e-2, 1e-3, 1e-4, 1e-5)]
    # measured 1.46, 0.082, 4.0e-3, 8.4e-4, 1.6e-4: each tolerance tighter, closer
    assert all(b < a for a, b in zip(errs, errs[1:])), errs
    assert errs[-1] < 5e-4, errs


# --- what a run costs, and where it calls ----------------------------------------------------------------------------


@NEEDS
@pytest.mark.parametrize("name", list(FIXED))
@pytest.mark.parametrize("steps", [1, 2, 5])
def test_fixed_grid_nfe_is_counted_and_follows_the_rule(name, steps):
    spec = FIXED[name]
    model = Times(exact_model(spec.family))
    out = spec.fn(model, x_T(model, 3), steps)
    assert out.nfe == spec.nfe(steps) == tds.FIXED[name].calls_per_step * steps == len(model.times) // 3
    assert torch.isfinite(out.x).all()


@NEEDS
@pytest.mark.parametrize("tol", [1e-1, 1e-2, 1e-3, 1e-5])
def test_dopri5_nfe_is_two_plus_six_a_step_attempt(tol):
    # measured NFE 14, 26, 50, 98 on 256 samples: 2 + 6 (accepted + rejected), the 7th stage reused (FSAL)
    model = Times(exact_model("vp"))
    out = tds.solve(DOPRI5, model, x_T(model, 256), tol)
    assert out.nfe == len(model.times) // 256 == 2 + 6 * (out.accepted + out.rejected)
    assert out.nfe == tds.ADAPTIVE[DOPRI5].nfe(out.accepted, out.rejected) and out.accepted >= 1


@NEEDS
@pytest.mark.parametrize("tol", [1e-1, 1e-3])
def test_dopri5_calls_the_model_only_inside_the_schedule(tol):
    model = Times(exact_model("vp"))
    x = x_T(model)
    tds.solve(DOPRI5, model, x, tol)
    sch = model.schedule
    # its last step clipped to land on t_min; the stage at a step's end is called 1 ulp before it (torchdiffeq's
    # Perturb.PREV, for a field that jumps there)
    assert max(model.times) == sch.t_max and sch.t_min <= min(model.times) <= sch.t_min * (1 + 1e-12)
    # what step_t prevents: given only its end points, odeint steps past t_min and interpolates back (measured t down
    # to -1.7 at tol 0.1), where VP's sigma is 0; the NaN it can meet there ends it ("underflow in dt")
    unclipped = Times(exact_model("vp"))
    ends = torch.tensor([sch.t_max, sch.t_min], dtype=F64)
    with contextlib.suppress(AssertionError):
        tds.api().odeint(tds._Field(unclipped), x, ends, rtol=tol, atol=tol, method="dopri5")
    assert min(unclipped.times) < 0


@NEEDS
def test_bad_input_is_refused():
    vp, flow = exact_model("vp"), exact_model("flow")
    with pytest.raises(ValueError, match="steps must be a positive int"):
        FIXED["torchdiffeq_rk4"].fn(vp, torch.zeros(2, 2, dtype=F64), 0)
    for tol in (0, -1e-3, True):
        with pytest.raises(ValueError, match="tol must be a positive number"):
            tds.solve(DOPRI5, vp, torch.zeros(2, 2, dtype=F64), tol)
    with pytest.raises(ValueError, match="rectified-flow"):
        FIXED["torchdiffeq_euler"].fn(vp, torch.zeros(2, 2, dtype=F64), 2)
    for call in (lambda: FIXED["torchdiffeq_rk4"].fn(flow, torch.zeros(2, 2, dtype=F64), 2),
                 lambda: tds.solve(DOPRI5, flow, torch.zeros(2, 2, dtype=F64), 1e-3)):
        with pytest.raises(ValueError, match="variance-preserving"):  # they call at t = 0, where flow's eps is 0/0
            call()


# --- version contract, skip, declarations ----------------------------------------------------------------------------


def fake_torchdiffeq(monkeypatch, odeint):
    """`import torchdiffeq` gives a module whose odeint is `odeint`."""
    fake_module(monkeypatch, "torchdiffeq", odeint=odeint)
    tds.api.cache_clear()


@NEEDS
def test_moved_api_is_an_error_naming_it(monkeypatch, fresh_api):
    import torchdiffeq

    real = torchdiffeq.odeint

    def no_options(func, y0, t, *, rtol=1e-7, atol=1e-9, method=None):
        return real(func, y0, t, rtol=rtol, atol=atol, method=method)

    fake_torchdiffeq(monkeypatch, no_options)
    with pytest.raises(tds.ApiMoved, match=r"torchdiffeq 0.2.5: torchdiffeq.odeint takes .* not .*options"):
        tds.api()
    with pytest.raises(tds.ApiMoved, match="odeint takes"):  # an error, not a skip
        Samplers().measure(DOPRI5, {"target": "gmm2d", "model": "exact", "tol": 1e-2, "n": 8}, "cpu")

    def renamed(func, y0, t, *, rtol=1e-7, atol=1e-9, method=None, options=None):  # dopri5 renamed, rk4 gone
        method = {"dopri5": "dopri5_new", "rk4": "rk4_classic"}.get(method, method)
        return real(func, y0, t, rtol=rtol, atol=atol, method=method, options=options)

    fake_torchdiffeq(monkeypatch, renamed)
    with pytest.raises(tds.ApiMoved, match=r"odeint\(method='rk4'\): Invalid method"):
        tds.api()

    def no_step_t(func, y0, t, *, rtol=1e-7, atol=1e-9, method=None, options=None):  # step_t renamed: warned, ignored
        options = {("clip_t" if k == "step_t" else k): v for k, v in (options or {}).items()}
        return real(func, y0, t, rtol=rtol, atol=atol, method=method, options=options)

    fake_torchdiffeq(monkeypatch, no_step_t)
    with pytest.raises(tds.ApiMoved, match=r"odeint\(method='dopri5'\) ignores .*Unexpected arguments.*clip_t"):
        tds.api()

    def classic_rk4(func, y0, t, *, rtol=1e-7, atol=1e-9, method=None, options=None):  # one call more a step
        def counted_twice(t_, y):
            func(t_, y)
            return func(t_, y)
        return real(counted_twice if method == "rk4" else func, y0, t, rtol=rtol, atol=atol, method=method,
                    options=options)

    fake_torchdiffeq(monkeypatch, classic_rk4)
    with pytest.raises(tds.ApiMoved, match=r"odeint\(method='rk4'\) made 16 calls in 2 steps, not 8"):
        tds.api()


def test_skipped_without_torchdiffeq(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torchdiffeq" else real(name, *a))
    base = {"target": "gmm2d", "model": "exact", "n": 8}
    for variant, params in (("torchdiffeq_euler", {"nfe_budget": 4}), ("torchdiffeq_rk4", {"nfe_budget": 4}),
                            (DOPRI5, {"tol": 1e-2})):
        with pytest.raises(Skip) as e:
            Samplers().measure(variant, {**base, **params}, "cpu")
        assert str(e.value) == f'needs torchdiffeq, which is not installed (pip install {ECOSYSTEM})'


def test_library_variants_declared():
    suite = Samplers()
    ours = set(tds.PAIRED_WITH)
    assert ours == set(tds.FIXED) | set(tds.ADAPTIVE) and ours <= set(suite.variants) & set(suite.libraries)
    version = tds.version()
    assert {suite.libraries[v] for v in ours} == {f"torchdiffeq {version}" if version else "torchdiffeq"}
    assert all(suite.requires[v] == ("torchdiffeq", ECOSYSTEM) for v in ours)
    # each sits beside a sampler of ours on the same family (so on the same model in the suite)
    assert all(PAIRED_WITH[v] in SAMPLERS for v in ours)
    assert all(SPECS[_sampler(v)].family == SAMPLERS[tds.PAIRED_WITH[v]].family for v in ours)
    assert tds.ADAPTIVE[DOPRI5].family == SAMPLERS[tds.PAIRED_WITH[DOPRI5]].family
    assert {n: (s.calls_per_step, s.last_step_saves, s.family) for n, s in FIXED.items()} == {
        "torchdiffeq_euler": (1, 0, "flow"), "torchdiffeq_rk4": (4, 0, "vp")}
