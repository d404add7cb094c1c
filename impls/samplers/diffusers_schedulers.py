"""Hugging Face diffusers' schedulers, the samplers users pick, driven by our models on our schedules and grids.

A diffusers pipeline calls its denoiser as model(sample, timestep) and steps with scheduler.step(output, timestep,
sample). `sample` runs that loop with a stand-in denoiser: our model (params.py), called at the time t the timestep
tau denotes, returning what the scheduler's prediction_type wants: eps on VP schedules ("epsilon"), and on rectified
flow the velocity eps - x0, which is both our model's output and the flow-match schedulers' (dx/dt, t from 1 to 0).

Time conventions:
- VP: diffusers' training grid is tau = 0..T-1 (T = 1000), alphas_cumprod[tau] the alphabar after tau + 1 betas, so
  tau is our t = (tau + 1) / T, and the step past tau = 0 (final_alpha_cumprod = 1, set_alpha_to_one, or a final
  sigma of 0) lands on t = 0. The scheduler gets trained_betas = 1 - alpha(t_i)^2 / alpha(t_i - 1/T)^2 at
  t_i = (i + 1) / T from the model's schedule, so its alphas_cumprod are the model's alpha^2 there (in diffusers'
  float32). For DiscreteVP these are diffusers' own beta_schedule="linear", beta_start=1e-4, beta_end=0.02 (DDPM's);
  the suite's VPLinear is their continuous limit, 0.034 from it in log alpha at t = 1, so a scheduler on DDPM's betas
  would not be on the model's schedule. Fractional tau (Euler's and Heun's Karras sigmas, from diffusers'
  _sigma_to_t) interpolate log sigma linearly between grid points; t is where the model's log-SNR equals that.
- Euler and Heun step the VE state x / alpha in sigma = sigma_VP / alpha_VP (Karras et al. 2022), starting from
  x_T / alpha(1) (sigma_max, their init_noise_sigma); scale_model_input's 1 / sqrt(sigma^2 + 1) is alpha, so the
  model gets our VP x_t. Euler in that sigma with eps is DDIM (eta 0): on the same sigmas it is our ddim.
- Flow match: x_t = (1 - sigma) x0 + sigma eps, timestep = 1000 sigma, so t = tau / 1000; shift=1.0 keeps sigmas.

Each variant (RECIPES), x0 never clipped (clip_sample=False; diffusers' default clips it to the image range [-1, 1],
inside gmm2d's ring of radius 2). PAIRED_WITH names the sampler of ours each sits beside in the suite:
- diffusers_ddpm: DDPMScheduler, variance fixed_small (the posterior's), set_timesteps(timesteps=...) on our discrete
  grid (tau = 1000 t - 1). It is our ddpm: the same generator gives the same chain (one N(0, I) a step, in our order;
  the last step, variance 0, draws none).
- diffusers_ddim: DDIMScheduler, eta 0, set_alpha_to_one=True, timestep_spacing="trailing". DDIM steps from tau to
  tau - T // N and takes no custom timesteps, so no spacing is our discrete grid: "linspace" calls the model on it
  but steps elsewhere, and "leading" (the default; steps_offset shifts it) starts at tau = (N - 1) (T // N), t = 0.75
  at N = 4 (Lin et al. 2024). Trailing starts at t = 1 and is t = k / N when N divides 1000: our ddim on the uniform
  grid with t_min = 0 (at N = 1 and 1000, our discrete grid too). Otherwise the step lands up to one training step
  above the next call's timestep: the state keeps noise the model is not told of, one step's at most per step.
- diffusers_dpmpp_2m: DPMSolverMultistepScheduler, algorithm_type="dpmsolver++", solver_order=2 (DPM-Solver++(2M)),
  final_sigmas_type="zero", lower_order_final=True, timestep_spacing="linspace" (its defaults): tau =
  round(linspace(999, 0, N + 1)) but the last, then a first-order step to t = 0. With custom timesteps on our
  discrete grid it is our dpm_solver_2m with spacing "discrete" (tests), a grid whose last call, at t = 0.001, is
  all but wasted (2M reads worse at 8 steps than at 4 on it). The suite's dpm_solver_2m runs the log-SNR grid, which
  diffusers cannot take: custom timesteps are integers, and use_lu_lambdas spaces N points in lambda, then jumps to 0
  and calls the model at rounded timesteps. From N = 1000 on the rounded linspace repeats a timestep (h = 0): 999 at
  most, as UniPC.
- diffusers_euler, diffusers_heun: EulerDiscreteScheduler, HeunDiscreteScheduler, use_karras_sigmas=True: N sigmas
  of our "edm" grid (rho 7) from sigma(t = 1) to sigma(t = 0.001), then 0 (ours: N + 1 points, ending at t_min).
  Karras takes its range from the "linspace" timesteps, which at N = 1 are [0]: one step from sigma(t = 0.001) to 0,
  so the sample stays noise. Heun corrects every step but the last (to 0): 2 N - 1 calls, as our ode_heun, which
  steps in t on the VP ODE rather than in sigma.
- diffusers_unipc: UniPCMultistepScheduler, bh2, order 2, lower_order_final=True, on DPM-Solver++'s grid above:
  the corrector reuses the next step's call, so one call a step. None of ours.
- diffusers_flow_euler: FlowMatchEulerDiscreteScheduler, shift=1.0, set_timesteps(sigmas=...) on our uniform grid:
  our flow_euler. Its default sigmas run N points from 1 to 1/T, then jump to 0.

diffusers is imported lazily (`api`), only when a variant runs; this adapter is written against diffusers 0.42.1
(pip install -e ".[ecosystem]"), and a diffusers whose names moved raises ApiMoved naming the name, never a skip.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from functools import cache, partial
from types import SimpleNamespace

import torch
from torch import Tensor

from impls import libraries
from impls.libraries import ApiMoved as ApiMoved  # re-exported: callers catch the adapter's
from impls.samplers.base import Sampled, SamplerSpec, check_schedule
from impls.samplers.params import Counted, Model, coeffs, convert
from impls.samplers.schedules import DDPM_T, Schedule, timesteps

WRITTEN_FOR = "0.42.1"
LIBRARY = libraries.Library("diffusers", WRITTEN_FOR, "impls/samplers/diffusers_schedulers.py")
version, label, _moved = LIBRARY.version, LIBRARY.label, LIBRARY.moved
T = DDPM_T  # diffusers' num_train_timesteps: the grid its VP timesteps index




@dataclass(frozen=True)
class Recipe:
    """One diffusers scheduler as a sampler: its class, its options, and how `steps` sets its timesteps."""

    cls: str
    """The class name in diffusers' top-level namespace."""
    options: dict = field(default_factory=dict)
    """Constructor keywords besides num_train_timesteps, and on VP trained_betas and prediction_type."""
    grid: str = "steps"
    """"steps": set_timesteps(steps); "discrete": set_timesteps(timesteps=...) on our discrete grid; "uniform":
    set_timesteps(sigmas=...) on our uniform grid, the last point (0) left to the scheduler."""
    family: str = "vp"
    """"vp" (eps; the betas from the model's schedule) or "flow" (velocity on rectified flow)."""
    ve: bool = False
    """Its state is x / alpha, its sigma sigma_VP / alpha_VP (Euler, Heun)."""
    step_options: dict = field(default_factory=dict)
    """Keywords to scheduler.step (DDIM's eta)."""
    stochastic: bool = False
    """step() draws noise: the generator goes to it."""
    max_steps: int | None = None
    """Most steps whose timesteps stay distinct (None: diffusers' own limit or ours: T on the training grid)."""

    def __post_init__(self):
        assert self.grid in ("steps", "discrete", "uniform"), f"unknown grid {self.grid!r}"
        assert self.family in ("vp", "flow") and not (self.ve and self.family == "flow")

    def init_keywords(self) -> tuple[str, ...]:
        return ("num_train_timesteps", *(("trained_betas", "prediction_type") if self.family == "vp" else ()),
                *self.options)


UNCLIPPED = {"clip_sample": False}
RECIPES = {
    "diffusers_ddpm": Recipe("DDPMScheduler", {**UNCLIPPED, "variance_type": "fixed_small"}, "discrete",
                             stochastic=True),
    "diffusers_ddim": Recipe("DDIMScheduler", {**UNCLIPPED, "set_alpha_to_one": True, "timestep_spacing": "trailing"},
                             step_options={"eta": 0.0}),
    "diffusers_dpmpp_2m": Recipe("DPMSolverMultistepScheduler",
                                 {"algorithm_type": "dpmsolver++", "solver_order": 2, "final_sigmas_type": "zero",
                                  "lower_order_final": True, "timestep_spacing": "linspace"}, max_steps=T - 1),
    "diffusers_euler": Recipe("EulerDiscreteScheduler", {"use_karras_sigmas": True}, ve=True),
    "diffusers_heun": Recipe("HeunDiscreteScheduler", {"use_karras_sigmas": True}, ve=True),
    "diffusers_unipc": Recipe("UniPCMultistepScheduler",
                              {"solver_type": "bh2", "solver_order": 2, "predict_x0": True, "lower_order_final": True,
                               "timestep_spacing": "linspace", "final_sigmas_type": "zero"}, max_steps=T - 1),
    "diffusers_flow_euler": Recipe("FlowMatchEulerDiscreteScheduler", {"shift": 1.0}, "uniform", family="flow"),
}
PAIRED_WITH = {"diffusers_ddpm": "ddpm", "diffusers_ddim": "ddim", "diffusers_dpmpp_2m": "dpm_solver_2m",
               "diffusers_euler": "ode_euler", "diffusers_heun": "ode_heun", "diffusers_unipc": "dpm_solver_2m",
               "diffusers_flow_euler": "flow_euler"}
"""The sampler of ours each variant sits beside (same starting noise in the suite)."""
TRAINING_GRID = ("diffusers_ddpm", "diffusers_ddim")  # on the T-step grid like our ddpm and ddim: swept to T steps
SET_BY = {"discrete": "timesteps", "uniform": "sigmas"}  # the set_timesteps keyword a grid needs


@cache
def api() -> SimpleNamespace:
    """The scheduler classes used here, imported once; ApiMoved names a class, constructor option, method or
    set_timesteps keyword that is gone. An absent diffusers raises ModuleNotFoundError (callers check first, skip)."""
    import diffusers

    names = sorted({r.cls for r in RECIPES.values()})
    missing = [n for n in names if not hasattr(diffusers, n)]
    if missing:
        raise _moved(f"diffusers no longer has {', '.join(missing)}")
    ns = SimpleNamespace(**{n: getattr(diffusers, n) for n in names})
    for r in RECIPES.values():
        cls = getattr(ns, r.cls)
        init = inspect.signature(cls.__init__).parameters
        gone = [k for k in r.init_keywords() if k not in init]
        if gone:
            raise _moved(f"{r.cls} no longer takes {', '.join(gone)}")
        methods = ("set_timesteps", "step", *(("scale_model_input",) if r.family == "vp" else ()))
        gone = [m for m in methods if not callable(getattr(cls, m, None))]
        if gone:
            raise _moved(f"{r.cls} has no {', '.join(gone)}")
        if r.grid in SET_BY and SET_BY[r.grid] not in inspect.signature(cls.set_timesteps).parameters:
            raise _moved(f"{r.cls}.set_timesteps no longer takes {SET_BY[r.grid]}=")
    return ns


def trained_betas(schedule: Schedule) -> Tensor:
    """[T] float64: 1 - alpha(t_i)^2 / alpha(t_i - 1/T)^2 at t_i = (i + 1) / T; alpha(0) = 1."""
    log_a = schedule.log_alpha(torch.arange(T + 1, dtype=torch.float64) / T)
    return -torch.expm1(2 * log_a.diff())


@cache
def scheduler(name: str, schedule: Schedule):
    """diffusers' scheduler of the variant `name` on `schedule`, built once (Heun's constructor sets 1000 Karras
    timesteps: 60 ms) and reused, as a pipeline reuses its own: set_timesteps resets its state."""
    r = RECIPES[name]
    cls = getattr(api(), r.cls)
    if r.family == "flow":
        return cls(num_train_timesteps=T, **r.options)
    return cls(num_train_timesteps=T, trained_betas=trained_betas(schedule).tolist(), prediction_type="epsilon",
               **r.options)


def discrete_timesteps(schedule: Schedule, steps: int) -> list[int]:
    """Our discrete grid's calls as diffusers timesteps, tau = 1000 t - 1 (the step after tau = 0 lands on t = 0)."""
    return [round(t * T) - 1 for t in timesteps(schedule, steps, "discrete")[:-1].tolist()]


def set_grid(sched, recipe: Recipe, schedule: Schedule, steps: int) -> None:
    """set_timesteps for `steps` steps: by count, or on our discrete or uniform grid (schedules.timesteps)."""
    if recipe.grid == "steps":
        sched.set_timesteps(steps)
    elif recipe.grid == "discrete":
        sched.set_timesteps(timesteps=discrete_timesteps(schedule, steps))
    else:
        sched.set_timesteps(sigmas=timesteps(schedule, steps, "uniform")[:-1].tolist())


def model_times(taus: Tensor, schedule: Schedule, family: str) -> list[float]:
    """Our t for each diffusers timestep: tau / T on rectified flow; (tau + 1) / T on VP, and for fractional tau the t
    whose log-SNR is interpolated linearly between the grid points either side (diffusers' _sigma_to_t in log sigma)."""
    tau = taus.detach().double().cpu()
    if family == "flow":
        return (tau / T).tolist()
    whole = tau == tau.round()
    if whole.all():
        return ((tau + 1) / T).tolist()
    lo = tau.floor().clamp(0, T - 2)
    lam = schedule.lam(torch.stack([lo + 1, lo + 2]) / T)  # [2, n]: either side of tau
    return torch.where(whole, (tau + 1) / T, schedule.t_of_lambda(torch.lerp(lam[0], lam[1], tau - lo))).tolist()


@torch.no_grad()
def sample(name: str, model: Model, x_T: Tensor, steps: int, *, generator: torch.Generator | None = None,
           sched=None) -> Sampled:
    """The variant `name` from x_T [B, D] (our state at t = 1) in `steps` steps; returns x at t = 0 (at the last
    sigma's time when `sched`, a scheduler with its timesteps already set, replaces the variant's own)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    r = RECIPES[name]
    check_schedule(model, r.family, name)
    sch = model.schedule
    if sch.t_max != 1.0:
        raise ValueError(f"{name}: diffusers' grid starts at t = 1; {sch} starts at t_max = {sch.t_max}")
    if r.max_steps is not None and steps > r.max_steps:
        raise ValueError(f"{name} takes at most {r.max_steps} steps (its timesteps repeat past that), asked {steps}")
    if sched is None:
        sched = scheduler(name, sch)
        set_grid(sched, r, sch, steps)
    model = Counted(model)
    kind = "velocity" if r.family == "flow" else "eps"
    step_options = {**r.step_options, **({"generator": generator} if r.stochastic else {})}
    x = x_T / float(sch.alpha(sch.t_max)) if r.ve else x_T  # the VE state at sigma_max
    for tau, t in zip(sched.timesteps, model_times(sched.timesteps, sch, r.family)):
        inp = x if r.family == "flow" else sched.scale_model_input(x, tau)  # flow match scales nothing
        tt = torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)
        out = convert(model(inp, tt), model.parameterization, kind, inp, coeffs(sch, t, inp))
        x = sched.step(out, tau, x, **step_options).prev_sample
    if r.ve:  # back to VP at the last sigma: 0 on the variant's own grid, where x is already x_0
        x = x / math.sqrt(float(sched.sigmas[-1]) ** 2 + 1)
    return Sampled(x, model.calls)


def specs() -> dict[str, SamplerSpec]:
    """The variants as SamplerSpecs: one call a step, Heun 2 but its last (NFE = 2 steps - 1); DDPM and DDIM on the
    T-step training grid (max_steps T) like ours; the rest cut where the suite cuts our ODE solvers."""
    out = {}
    for name, r in RECIPES.items():
        heun = r.cls == "HeunDiscreteScheduler"
        out[name] = SamplerSpec(partial(sample, name), calls_per_step=2 if heun else 1, last_step_saves=int(heun),
                                max_steps=T if name in TRAINING_GRID else None, family=r.family,
                                stochastic=r.stochastic)
    return out


if __name__ == "__main__":
    from impls.samplers.check import against_ours

    against_ours(specs(), PAIRED_WITH)
