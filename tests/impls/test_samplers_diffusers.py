"""diffusers' schedulers (impls/samplers/diffusers_schedulers.py) held to what our samplers meet on the exact gmm2d
model: where configured alike they reproduce ours from the same x_T (and, for DDPM, the same generator); elsewhere they
converge to the target as our ODE solvers do, at the order their method has. Also their time conversion, NFE count,
version contract and skip. Tests that run diffusers skip (with the reason) only where it is not installed."""

import importlib.util
import math
import sys
import types

import pytest
import torch

from bench.suite import Skip
from impls.libraries import ECOSYSTEM
from impls.samplers import SAMPLERS
from impls.samplers import diffusers_schedulers as dfs
from impls.samplers.base import prior_noise
from impls.samplers.ddim import ddim
from impls.samplers.dpm_solver import dpm_solver_2m
from impls.samplers.metrics import sliced_w2
from impls.samplers.params import ExactModel
from impls.samplers.schedules import DiscreteVP, RectifiedFlow, VPLinear, timesteps
from impls.samplers.targets import make_target
from suites.samplers import DIFFUSERS, Samplers
from tests.optional import needs

F64 = torch.float64
NEEDS = needs("diffusers")
SPECS = dfs.specs()


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def exact_model(family: str, schedule=None) -> ExactModel:
    if family == "flow":
        return ExactModel(make_target("gmm2d"), RectifiedFlow(), "velocity")
    return ExactModel(make_target("gmm2d"), schedule or VPLinear(), "eps")


def x_T(model: ExactModel, n: int = 64, seed: int = 0) -> torch.Tensor:
    return prior_noise(model.schedule, n, 2, gen(seed), F64)


@pytest.fixture
def fresh_api():
    """api() and scheduler() are cached per process: a test that changes what `import diffusers` gives clears them."""
    dfs.api.cache_clear()
    dfs.scheduler.cache_clear()
    yield
    dfs.api.cache_clear()
    dfs.scheduler.cache_clear()


# --- configuration: betas and times --------------------------------------------------------------------------------


def test_trained_betas_are_the_models_schedule():
    # DiscreteVP's betas are DDPM's linear 1e-4..0.02, what diffusers' beta_schedule="linear" builds (in float64 here)
    torch.testing.assert_close(dfs.trained_betas(DiscreteVP()), torch.linspace(1e-4, 0.02, 1000, dtype=F64),
                               rtol=1e-12, atol=1e-15)
    # VPLinear's: their cumulative product is the model's alpha^2 at t = (tau + 1) / 1000, which DDPM's betas miss
    sch, t = VPLinear(), torch.arange(1, 1001, dtype=F64) / 1000
    alphas_cumprod = torch.cumprod(1 - dfs.trained_betas(sch), 0)
    torch.testing.assert_close(alphas_cumprod, sch.alpha(t) ** 2, rtol=1e-12, atol=0)
    assert (alphas_cumprod / DiscreteVP().alpha(t) ** 2).log().abs().max() > 0.05  # 2 x 0.034 in log alpha at t = 1


@NEEDS
@pytest.mark.parametrize("name", [n for n, r in dfs.RECIPES.items() if r.family == "vp"])
def test_schedulers_hold_the_models_alphas(name):
    sched = dfs.scheduler(name, VPLinear())
    t = torch.arange(1, 1001, dtype=F64) / 1000
    # diffusers keeps alphas_cumprod in float32, a cumulative product of 1000 roundings: measured 7.8e-7 relative
    torch.testing.assert_close(sched.alphas_cumprod.double(), VPLinear().alpha(t) ** 2, rtol=3e-6, atol=0)


@NEEDS
@pytest.mark.parametrize("name", ["diffusers_euler", "diffusers_heun"])
def test_fractional_timesteps_map_to_the_schedulers_sigma(name):
    sch = VPLinear()
    sched = dfs.scheduler(name, sch)
    sched.set_timesteps(64)
    taus = sched.timesteps
    assert (taus != taus.round()).any()  # Karras sigmas fall between the training grid's points
    t = torch.tensor(dfs.model_times(taus, sch, "vp"), dtype=F64)
    want = sched.sigmas[: len(taus)].double()  # the sigma the scheduler steps from at each call
    got = (-sch.lam(t)).exp()  # the model's sigma / alpha at the time it is called at
    # Measured 1.2e-4: diffusers' float32 table (1 - alphabar keeps ~4 digits at t = 0.001); t = (tau + 1) / 1000 on
    # fractional tau would be 1.6e-2 off near sigma_min, where log sigma bends between grid points.
    assert ((got - want) / want).abs().max() < 1e-3
    whole = torch.tensor([999.0, 500.0, 0.0])
    assert dfs.model_times(whole, sch, "vp") == [1.0, 0.501, 0.001]
    assert dfs.model_times(torch.tensor([1000.0, 250.0]), RectifiedFlow(), "flow") == [1.0, 0.25]


@NEEDS
def test_karras_range_collapses_at_one_step():
    # diffusers takes the Karras range from its "linspace" timesteps, which are [0] at one step: one step from
    # sigma(t = 0.001) to 0, so a 1-NFE Euler or Heun run returns noise. From two steps on it starts at sigma(t = 1).
    sch = VPLinear()
    sigma = (-sch.lam(torch.tensor([0.001, 1.0], dtype=F64))).exp()
    for name in ("diffusers_euler", "diffusers_heun"):
        sched = dfs.scheduler(name, sch)
        sched.set_timesteps(1)
        assert float(sched.sigmas[0]) == pytest.approx(float(sigma[0]), rel=1e-3)
        sched.set_timesteps(2)
        assert float(sched.sigmas[0]) == pytest.approx(float(sigma[1]), rel=1e-5)


# --- reproductions of ours -----------------------------------------------------------------------------------------

# diffusers keeps its schedule in float32 (alphas_cumprod, sigmas; Euler and DPM-Solver++ also cast the state to
# float32 each step), so agreement stops at float32 rounding amplified by the steps: measured max |diff| on samples of
# size ~2 in the comments; our float64 samplers agree with each other to 1e-10. One step reads 7.7e-6: x0 = x /
# alpha(1) scales alphabar's float32 rounding by 1 / alpha(1) = 152.
TOL = 2e-4


@NEEDS
@pytest.mark.parametrize("steps", [1, 7, 64, 1000])  # 1000: the reference; measured 7.7e-6, 3.9e-6, 1.4e-5, 9.0e-5
def test_ddpm_is_ours_with_the_same_noise(steps):
    model = exact_model("vp")
    x = x_T(model)
    out = SPECS["diffusers_ddpm"].fn(model, x, steps, generator=gen(3))
    ref = SAMPLERS["ddpm"].fn(model, x, steps, generator=gen(3))
    assert out.nfe == ref.nfe == steps
    torch.testing.assert_close(out.x, ref.x, rtol=0, atol=TOL)
    other = SPECS["diffusers_ddpm"].fn(model, x, steps, generator=gen(4))  # the noise is what makes them agree
    assert steps == 1 or (other.x - ref.x).abs().max() > 100 * TOL


@NEEDS
@pytest.mark.parametrize("steps", [1, 2, 8, 40, 1000])  # measured 7.7e-6, 6.6e-7, 3.6e-7, 4.3e-7, 7.9e-7
def test_ddim_trailing_is_ours_where_1000_divides(steps):
    model = exact_model("vp")
    x = x_T(model)
    out = SPECS["diffusers_ddim"].fn(model, x, steps)
    # trailing is t = k / N: our uniform grid run to t = 0, and at 1 and 1000 steps our discrete grid
    uniform = ddim(exact_model("vp", VPLinear(t_min=0.0)), x, steps, spacing="uniform")
    torch.testing.assert_close(out.x, uniform.x, rtol=0, atol=TOL)
    if steps in (1, 1000):
        torch.testing.assert_close(out.x, ddim(model, x, steps).x, rtol=0, atol=TOL)
    assert out.nfe == steps


@NEEDS
def test_ddim_steps_off_its_own_grid_where_1000_does_not_divide():
    # 16 steps: each step goes 1000 // 16 = 62 training steps, the next call sits 62 or 63 below: measured 0.14 max
    # (rms 0.02) from our uniform grid, where the divisors above agree to 1e-6
    model = exact_model("vp")
    x = x_T(model, 500)
    out = SPECS["diffusers_ddim"].fn(model, x, 16)
    uniform = ddim(exact_model("vp", VPLinear(t_min=0.0)), x, 16, spacing="uniform")
    assert (out.x - uniform.x).abs().max() > 1e-2


@NEEDS
@pytest.mark.parametrize("steps", [1, 7, 64, 256])  # measured 7.7e-6, 7.1e-5, 3.9e-6, 8.3e-6
def test_dpmpp_2m_is_ours_on_the_discrete_grid(steps):
    # the variant runs diffusers' default linspace spacing; given our discrete grid as custom timesteps, it is ours
    model = exact_model("vp")
    x = x_T(model)
    sched = dfs.scheduler("diffusers_dpmpp_2m", model.schedule)
    sched.set_timesteps(timesteps=dfs.discrete_timesteps(model.schedule, steps))
    out = dfs.sample("diffusers_dpmpp_2m", model, x, steps, sched=sched)
    torch.testing.assert_close(out.x, dpm_solver_2m(model, x, steps, spacing="discrete").x, rtol=0, atol=TOL)
    assert out.nfe == steps
    if steps == 7:  # its own grid, the last call at t = 1 / N rather than 0.001: measured 2.0 apart here
        assert (SPECS["diffusers_dpmpp_2m"].fn(model, x, steps).x - out.x).abs().max() > 0.1


@NEEDS
@pytest.mark.parametrize("steps", [1, 7, 64, 256])  # measured 1.1e-7, 1.8e-7, 2.1e-6, 5.2e-6
def test_flow_match_euler_is_our_flow_euler(steps):
    model = exact_model("flow")
    x = x_T(model)
    out = SPECS["diffusers_flow_euler"].fn(model, x, steps)
    torch.testing.assert_close(out.x, SAMPLERS["flow_euler"].fn(model, x, steps).x, rtol=0, atol=TOL)
    assert out.nfe == steps


@NEEDS
@pytest.mark.parametrize("steps", [1, 7, 64])  # measured 3.7e-5, 9.1e-7, 1.7e-6
def test_euler_on_our_edm_sigmas_is_our_ddim(steps):
    # Euler in sigma = sigma_VP / alpha_VP with eps is DDIM: on our EDM grid's sigmas (custom sigmas, ending at t_min)
    # it checks the VE state, scale_model_input, the fractional-timestep map and the conversion back
    model = exact_model("vp")
    x = x_T(model)
    sched = dfs.scheduler("diffusers_euler", model.schedule)
    sched.set_timesteps(sigmas=(-model.schedule.lam(timesteps(model.schedule, steps, "edm"))).exp().tolist())
    out = dfs.sample("diffusers_euler", model, x, steps, sched=sched)
    torch.testing.assert_close(out.x, ddim(model, x, steps, spacing="edm").x, rtol=0, atol=TOL)
    assert out.nfe == steps


# --- the rest: NFE, convergence, order -----------------------------------------------------------------------------


@NEEDS
@pytest.mark.parametrize("name", list(SPECS))
@pytest.mark.parametrize("steps", [1, 2, 5])
def test_nfe_is_counted_and_follows_the_rule(name, steps):
    spec = SPECS[name]
    model = exact_model(spec.family)
    x = x_T(model, 3)
    out = spec.fn(model, x, steps, generator=gen(2))
    assert out.nfe == spec.nfe(steps) and out.x.shape == x.shape and torch.isfinite(out.x).all()


def test_nfe_rules():
    heun = SPECS["diffusers_heun"]
    assert [heun.nfe(s) for s in (1, 2, 3)] == [1, 3, 5]  # Karras Alg. 1: the last step, to sigma = 0, is Euler
    assert {n: s.max_steps for n, s in SPECS.items() if s.max_steps} == {"diffusers_ddpm": 1000, "diffusers_ddim": 1000}
    assert [n for n, s in SPECS.items() if s.stochastic] == ["diffusers_ddpm"]
    assert [n for n, s in SPECS.items() if s.family == "flow"] == ["diffusers_flow_euler"]


@NEEDS
@pytest.mark.parametrize("name", ["diffusers_euler", "diffusers_heun", "diffusers_unipc"])
def test_converges_to_the_target_as_ours_do(name):
    model = exact_model("vp")
    x = x_T(model, 1000)
    exact = model.target.sample(4000, gen(1), F64)
    spec = SPECS[name]
    out = spec.fn(model, x, spec.steps_for(256))
    ours = SAMPLERS["ode_heun"].fn(model, x, SAMPLERS["ode_heun"].steps_for(256))  # 255 NFE: its ODE's endpoint
    # From the same x_T, measured 0.1245 (euler), 0.1226 (heun), 0.1228 (unipc) against ode_heun's 0.1226 (ode_euler
    # 0.1213, dpm_solver_2m 0.1226): this draw of 1000 sits above the ~0.06 floor, the same for every solver.
    assert out.nfe == spec.nfe(spec.steps_for(256))
    assert abs(sliced_w2(out.x, exact) / sliced_w2(ours.x, exact) - 1) < 0.1


@NEEDS
@pytest.mark.parametrize(
    "name, fine_steps, budgets, lo, hi",
    [
        # endpoint error against its own fine solve, slope of log error on log NFE: measured -0.94 (Euler, first
        # order), -2.13 (Heun) and -1.93 (UniPC-2), the bands of ours (tests/impls/test_samplers.py)
        ("diffusers_euler", 1000, (16, 32, 64, 128), -1.3, -0.7),
        ("diffusers_heun", 512, (32, 64, 128, 256), -2.4, -1.6),  # NFE 31-255: at 15 it is not yet asymptotic
        ("diffusers_unipc", 512, (32, 64, 128, 256), -2.4, -1.6),
    ],
)
def test_solver_order(name, fine_steps, budgets, lo, hi):
    spec = SPECS[name]
    model = exact_model("vp")
    x = x_T(model)
    fine = spec.fn(model, x, fine_steps).x
    log_nfe, log_err = [], []
    for budget in budgets:
        out = spec.fn(model, x, spec.steps_for(budget))
        log_nfe.append(math.log(out.nfe))
        log_err.append(math.log(float((out.x - fine).pow(2).sum(1).mean().sqrt())))
    n, e = torch.tensor(log_nfe, dtype=F64), torch.tensor(log_err, dtype=F64)
    slope = float(((n - n.mean()) * (e - e.mean())).sum() / ((n - n.mean()) ** 2).sum())
    assert lo <= slope <= hi, f"{name}: slope {slope:.2f}, errors {[f'{math.exp(v):.1e}' for v in log_err]}"


@NEEDS
def test_bad_input_is_refused():
    vp, flow = exact_model("vp"), exact_model("flow")
    with pytest.raises(ValueError, match="steps must be a positive int"):
        SPECS["diffusers_ddim"].fn(vp, torch.zeros(2, 2, dtype=F64), 0)
    for name in ("diffusers_unipc", "diffusers_dpmpp_2m"):  # the rounded linspace repeats a timestep at 1000
        with pytest.raises(ValueError, match="at most 999 steps"):
            SPECS[name].fn(vp, torch.zeros(2, 2, dtype=F64), 1000)
    with pytest.raises(ValueError, match="variance-preserving"):
        SPECS["diffusers_ddpm"].fn(flow, torch.zeros(2, 2, dtype=F64), 2)
    with pytest.raises(ValueError, match="rectified-flow"):
        SPECS["diffusers_flow_euler"].fn(vp, torch.zeros(2, 2, dtype=F64), 2)


# --- version contract and skip -------------------------------------------------------------------------------------


def fake_diffusers(monkeypatch, real, **replace):
    """`import diffusers` gives a module holding the real scheduler classes (`real`), with `replace` (None: left
    out)."""
    fake = types.ModuleType("diffusers")
    fake.__spec__ = importlib.util.find_spec("diffusers")  # still installed, as far as requires() can tell
    for name in vars(real):
        if replace.get(name, getattr(real, name)) is not None:
            setattr(fake, name, replace.get(name, getattr(real, name)))
    monkeypatch.setitem(sys.modules, "diffusers", fake)
    dfs.api.cache_clear()
    dfs.scheduler.cache_clear()


@NEEDS
def test_moved_api_is_an_error_naming_it(monkeypatch, fresh_api):
    real = dfs.api()
    fake_diffusers(monkeypatch, real, UniPCMultistepScheduler=None)
    with pytest.raises(dfs.ApiMoved, match="diffusers 0.42.1: diffusers no longer has UniPCMultistepScheduler"):
        dfs.api()
    with pytest.raises(dfs.ApiMoved, match="no longer has UniPCMultistepScheduler"):  # an error, not a skip
        Samplers().measure("diffusers_unipc", {"target": "gmm2d", "model": "exact", "nfe_budget": 4, "n": 8}, "cpu")

    class Renamed(real.DDIMScheduler):  # an option renamed
        def __init__(self, num_train_timesteps=1000, trained_betas=None, prediction_type="epsilon", clip_sample=True,
                     set_alpha_to_one=True, spacing="leading"):
            pass

    class NoCustom(real.DDPMScheduler):  # custom timesteps gone
        def set_timesteps(self, num_inference_steps=None, device=None):
            pass

    fake_diffusers(monkeypatch, real, DDIMScheduler=Renamed)
    with pytest.raises(dfs.ApiMoved, match="DDIMScheduler no longer takes timestep_spacing"):
        dfs.api()
    fake_diffusers(monkeypatch, real, DDPMScheduler=NoCustom)
    with pytest.raises(dfs.ApiMoved, match=r"DDPMScheduler.set_timesteps no longer takes timesteps="):
        dfs.api()


def test_skipped_without_diffusers(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "diffusers" else real(name, *a))
    for variant in DIFFUSERS:
        with pytest.raises(Skip) as e:
            Samplers().measure(variant, {"target": "gmm2d", "model": "exact", "nfe_budget": 4, "n": 8}, "cpu")
        assert str(e.value) == f'needs diffusers, which is not installed (pip install {ECOSYSTEM})'


def test_library_variants_declared():
    suite = Samplers()
    # the suite's other library variants are torchdiffeq's and torchsde's (tests/impls/test_samplers_torch*.py)
    assert {v for v, label in suite.libraries.items() if label.split()[0] == "diffusers"} == set(DIFFUSERS)
    assert set(DIFFUSERS) == set(dfs.RECIPES) <= set(suite.variants) & set(suite.libraries)
    version = dfs.version()
    assert all(suite.libraries[v] == (f"diffusers {version}" if version else "diffusers") for v in DIFFUSERS)
    assert set(dfs.PAIRED_WITH) == set(DIFFUSERS) and set(dfs.PAIRED_WITH.values()) <= set(SAMPLERS)
