"""torchdiffeq's ODE solvers (Chen et al. 2018), the library flow-matching and score-SDE users integrate with, driven
by our models on our schedules and grids.

Every variant integrates dx/dt = predict(model, x, t, "velocity") = d_alpha E[x0 | x] + d_sigma E[eps | x] (params.py)
with torchdiffeq.odeint from t = t_max (1) to the schedule's t_min: the probability-flow ODE on a VP schedule, the
straight-path flow on rectified flow (ode.py). Model calls are counted by wrapping the model (params.Counted).

What torchdiffeq 0.2.5 does, read from its source (torchdiffeq/_impl):
- Time: odeint(func, y0, t) with t decreasing negates time inside and calls func at the original t, cast to the
  state's dtype (a float32 state is called at float32 t). It returns the state at every point of t; we keep the last.
- Fixed-grid methods take t as their grid (no step_size option): one step between each pair of points, our
  timesteps(schedule, steps, spacing). "euler" makes 1 call a step, at its start, so torchdiffeq_euler on the uniform
  grid is our flow_euler (measured equal at 1 to 256 steps, float64 and float32 alike; with a float32 state it hands
  us t rounded to float32). "rk4" is Kutta's 3/8 rule (rk4_alt_step_func), not the classic RK4: 4 calls a step, at t,
  t + h/3, t + 2h/3 and t + h, weights (1, 3, 3, 1) / 8, nothing reused across steps: NFE = 4 steps.
- "dopri5" is Dormand-Prince 5(4), first same as last: NFE = 2 + 6 (accepted + rejected steps). One call at t_max,
  one more in Hairer's initial-step selection, then 6 a step attempt (stages 2 to 7; the 7th, at the step's end, is the
  next step's first); a rejected step's 6 are lost. scipy's RK45, which score_sde's probability-flow sampler calls
  (solve_ivp, rtol = atol = 1e-5, from t = 1 to 1e-3), counts the same way: its nfev. The error is the RMS over the
  whole state, here the [B, D] batch as one system (as score_sde flattens its batch), against atol + rtol |x|; we set
  rtol = atol = tol. NFE is an outcome of tol, the batch and the model (a learned network's roughness costs steps),
  never a budget: the suite's cases are named by tol and placed on the NFE axis by the calls counted.
- An adaptive method given a grid steps as it likes and evaluates its dense (4th-order) interpolant at the grid's
  points; its last step overshoots the end and interpolates back. On linear VP that calls the model below t = 0, where
  sigma is 0 (measured: down to t = -1.67 at tol 0.1; at 1e-5 NaN, then "underflow in dt"). So t = [t_max, t_min] and
  options step_t = [t_min], which clips the step that would cross t_min to land on it, as scipy clips at t_bound:
  every call is in [t_min, t_max] (the stage at a step's end is called one float64 ulp inside it: Perturb.PREV).
- The RK methods call the model at the end time (rk4's last stage, dopri5's 7th). On rectified flow that is t = 0,
  where the exact model's velocity is 0 / 0 (eps = (x - x0) / sigma): NaN. So rk4 and dopri5 run on linear VP (t_min =
  1e-3; rk4 on our EDM grid, the grid of ode_euler and ode_heun), and euler, which never calls at the end, on
  rectified flow.

torchdiffeq is imported lazily (`api`), only when a variant runs; this adapter is written against torchdiffeq 0.2.5
(pip install -e ".[ecosystem]"). `api` checks what the counts above rely on, on a one-element ODE: a renamed method
or option (torchdiffeq warns of an option it does not know, and ignores it), or a changed call count, raises ApiMoved
naming it, never a skip.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import cache, partial
from types import SimpleNamespace
from typing import NamedTuple

import torch
from torch import Tensor

from impls import libraries
from impls.libraries import ApiMoved as ApiMoved  # re-exported: callers catch the adapter's
from impls.samplers.base import Sampled, SamplerSpec, check_schedule
from impls.samplers.params import Counted, Model, predict
from impls.samplers.schedules import timesteps

WRITTEN_FOR = "0.2.5"
LIBRARY = libraries.Library("torchdiffeq", WRITTEN_FOR, "impls/samplers/torchdiffeq_solvers.py")
version, label, _moved = LIBRARY.version, LIBRARY.label, LIBRARY.moved


@dataclass(frozen=True)
class Fixed:
    """A fixed-grid torchdiffeq method, stepping once between each pair of points of one of our grids."""

    method: str
    """torchdiffeq's name for it."""
    calls_per_step: int
    """Model calls a step makes: 1 for euler, 4 for rk4 (3/8 rule)."""
    family: str
    """"vp" (the probability-flow ODE on linear VP) or "flow" (rectified flow)."""
    spacing: str
    """Our grid it steps on (schedules.timesteps)."""

    def __post_init__(self):
        assert self.calls_per_step >= 1 and self.family in ("vp", "flow")


@dataclass(frozen=True)
class Adaptive:
    """An adaptive torchdiffeq Runge-Kutta method: NFE = initial_calls + stages (accepted + rejected steps)."""

    method: str
    """torchdiffeq's name for it."""
    family: str
    """As Fixed.family."""
    stages: int = 6
    """Calls a step attempt makes: dopri5's 7 stages, the first reused from the step before (FSAL)."""
    initial_calls: int = 2
    """Calls before the first step: f(t_max) and the initial-step selection's probe."""

    def nfe(self, accepted: int, rejected: int) -> int:
        return self.initial_calls + self.stages * (accepted + rejected)


FIXED = {"torchdiffeq_euler": Fixed("euler", 1, "flow", "uniform"), "torchdiffeq_rk4": Fixed("rk4", 4, "vp", "edm")}
ADAPTIVE = {"torchdiffeq_dopri5": Adaptive("dopri5", "vp")}
PAIRED_WITH = {"torchdiffeq_euler": "flow_euler", "torchdiffeq_rk4": "ode_heun", "torchdiffeq_dopri5": "ode_heun"}
"""The sampler of ours each variant sits beside (same starting noise in the suite): the same ODE, family and grid."""


class Solved(NamedTuple):
    """An adaptive solve: the samples, the calls made, and the steps its error control accepted and rejected."""

    x: Tensor
    """[B, D] samples at the schedule's t_min."""
    nfe: int
    accepted: int
    rejected: int


class _Steps:
    """Counts the steps an adaptive method accepts and rejects (torchdiffeq's step callbacks; a fixed-grid method
    warns of them, so only the adaptive ones' fields have them)."""

    accepted = rejected = 0

    def callback_accept_step(self, t0, y0, dt):
        self.accepted += 1

    def callback_reject_step(self, t0, y0, dt):
        self.rejected += 1


class _Field:
    """The ODE's right-hand side as odeint calls it, f(t, x), counting model calls."""

    def __init__(self, model: Model):
        self.model = Counted(model)

    def __call__(self, t: Tensor, x: Tensor) -> Tensor:
        return predict(self.model, x, float(t), "velocity")


class _SteppedField(_Steps, _Field):
    pass


class _Decay:
    """dx/dt = -x, keeping the times it is called at: the probe `api` runs each method on."""

    def __init__(self):
        self.times: list[float] = []

    def __call__(self, t: Tensor, x: Tensor) -> Tensor:
        self.times.append(float(t))
        return -x


class _SteppedDecay(_Steps, _Decay):
    pass


def _probe(odeint, method: str, field, t: Tensor, **kwargs) -> None:
    """odeint on a one-element state; ApiMoved where torchdiffeq no longer knows the method, an option or a
    callback (it warns of those and goes on without them)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            odeint(field, torch.ones(1, dtype=torch.float64), t, method=method, **kwargs)
        except ValueError as e:
            raise _moved(f"odeint(method={method!r}): {e}") from e
    ignored = [str(w.message) for w in caught if "Unexpected arguments" in str(w.message)
               or "does not support callbacks" in str(w.message)]
    if ignored:
        raise _moved(f"odeint(method={method!r}) ignores what this adapter passes: {'; '.join(ignored)}")


@cache
def api() -> SimpleNamespace:
    """torchdiffeq.odeint, imported once, after a probe of the conventions the module docstring states (dx/dt = -x
    from t = 1 to 1/2): each fixed method's calls a step, dopri5's count and its last step clipped to step_t. An absent
    torchdiffeq raises ModuleNotFoundError (callers check first, skip)."""
    import torchdiffeq

    odeint = libraries.function(torchdiffeq, "torchdiffeq", "odeint",
                                ("func", "y0", "t", "rtol", "atol", "method", "options"), _moved)
    grid = torch.tensor([1.0, 0.75, 0.5], dtype=torch.float64)
    for m in FIXED.values():
        f = _Decay()
        _probe(odeint, m.method, f, grid)
        if len(f.times) != 2 * m.calls_per_step:
            raise _moved(f"odeint(method={m.method!r}) made {len(f.times)} calls in 2 steps, not "
                         f"{2 * m.calls_per_step}")
    for a in ADAPTIVE.values():
        f = _SteppedDecay()
        _probe(odeint, a.method, f, grid[[0, -1]], rtol=1e-6, atol=1e-6, options={"step_t": grid[-1:]})
        if len(f.times) != a.nfe(f.accepted, f.rejected) or f.accepted < 1:
            raise _moved(f"odeint(method={a.method!r}) made {len(f.times)} calls for {f.accepted} accepted and "
                         f"{f.rejected} rejected steps, not {a.initial_calls} + {a.stages} a step")
        if min(f.times) < float(grid[-1]):
            raise _moved(f"odeint(method={a.method!r}) called f at t = {min(f.times)}, past step_t = 0.5")
    return SimpleNamespace(odeint=odeint)


def _check_steps(steps) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")


@torch.no_grad()
def sample(name: str, model: Model, x_T: Tensor, steps: int, *, generator: torch.Generator | None = None) -> Sampled:
    """The fixed-grid variant `name` from x_T [B, D] (at t_max) in `steps` steps on its grid; x at t_min."""
    _check_steps(steps)
    m = FIXED[name]
    check_schedule(model, m.family, name)
    grid = timesteps(model.schedule, steps, m.spacing).to(x_T.device)  # [steps + 1], t_max -> t_min
    field = _Field(model)
    x = api().odeint(field, x_T, grid, method=m.method)[-1]
    return Sampled(x, field.model.calls)


@torch.no_grad()
def solve(name: str, model: Model, x_T: Tensor, tol: float, *, generator: torch.Generator | None = None) -> Solved:
    """The adaptive variant `name` from x_T [B, D] at t_max to t_min with rtol = atol = tol."""
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol > 0:
        raise ValueError(f"tol must be a positive number, got {tol!r}")
    a = ADAPTIVE[name]
    check_schedule(model, a.family, name)
    sch = model.schedule
    ends = torch.tensor([sch.t_max, sch.t_min], dtype=torch.float64, device=x_T.device)
    field = _SteppedField(model)
    x = api().odeint(field, x_T, ends, rtol=tol, atol=tol, method=a.method, options={"step_t": ends[1:]})[-1]
    return Solved(x, field.model.calls, field.accepted, field.rejected)


def specs() -> dict[str, SamplerSpec]:
    """The fixed-grid variants as SamplerSpecs: NFE = calls_per_step x steps (no step saves one)."""
    return {name: SamplerSpec(partial(sample, name), calls_per_step=m.calls_per_step, family=m.family)
            for name, m in FIXED.items()}


if __name__ == "__main__":
    from impls.samplers.base import prior_noise
    from impls.samplers.check import against_ours, model_for
    from impls.samplers.metrics import sliced_w2

    against_ours(specs(), PAIRED_WITH)
    for name, a in ADAPTIVE.items():
        model = model_for(a.family)
        x_T = prior_noise(model.schedule, 2000, 2, torch.Generator().manual_seed(0), torch.float64)
        exact = model.target.sample(2000, torch.Generator().manual_seed(1), torch.float64)
        for tol in (1e-1, 1e-2, 1e-3, 1e-4, 1e-5):
            out = solve(name, model, x_T, tol)
            print(f"{name} tol {tol:.0e}: nfe {out.nfe:4d} ({out.accepted} steps, {out.rejected} rejected), "
                  f"sliced_w2 {sliced_w2(out.x, exact):.4f}")
