"""torchsde's SDE solvers (Li et al. 2020; Kidger et al. 2021; k-diffusion draws its Brownian-tree noise from it),
driven by our models on our schedule and grid: the reverse-time VP SDE that our sde_em solves.

Every variant solves dx = [f x - g^2 score(x, t)] dt + g dw from t_max down to t_min (sde.py: the same drift and
diffusion, sde.reverse_drift) with torchsde.sdeint, on sde_em's uniform grid (timesteps(schedule, steps)). Model
calls are counted by wrapping the model (params.Counted).

What torchsde 0.2.6 does, read from its source (torchsde/_core):
- Time only increases: sdeint refuses a ts that does not strictly increase (check_contract). Its maintainers' way
  backwards (google-research/torchsde#115) is to solve in a time that increases, f and g mapping it back. Ours is
  s = (t_max - t) / h, the time counted in steps of our grid (h = t - t' of the step from t to t'), with ts = [0,
  steps] and dt = 1: in s the SDE is dy = -h [f y - g^2 score] ds + sqrt(h) g dW, W a standard Brownian motion in s
  (one step of our reverse-time w has variance h, one of W has 1). Between grid points t is linear in s.
- Why steps as the unit: a fixed-step solve steps from ts[0] by dt, to min(t + dt, ts[-1]), not onto ts's points,
  and interpolates linearly to them (base_solver.integrate). In t, the sum of dt rounds: a last step that ends an ulp
  short of the end is followed by one ~1e-16 long, a model call more. Whole numbers add exactly, so each step is one
  of our grid's, and the state at s = steps is the last step's own (interpolation weight exactly 1).
- NFE: before solving, check_contract calls the drift once on x_T to check its shape: one model call a solve,
  counted (SamplerSpec.first_calls). "euler" (Euler-Maruyama) then calls it once a step: NFE = steps + 1. "srk" on
  additive noise is Roessler's SRA1 (2 stages, strong order 1.5; sdeint's default for an Ito SDE with additive noise),
  but its additive_step evaluates the first stage's drift again for the second: 3 calls a step, NFE = 3 steps + 1.
- Noise: g(t) does not depend on x, so the SDE is declared noise_type "additive" (for which Ito and Stratonovich
  calculus agree) and sde_type "ito"; its g is given as g_prod(t, y, v) = g v, not as a [B, D, D] matrix g. euler takes
  any noise (strong order 1 on additive noise); srk needs the Brownian motion's space-time Levy area
  (levy_area_approximation "space-time": U = integral of W - W(s0) over the step = W / 2 + H, H ~ N(0, 1/12) a step).
  milstein adds g's x-derivative (0 here: it is euler); heun, midpoint and reversible_heun are Stratonovich methods of
  strong order 1 on additive noise, beside euler's.
- The Brownian motion (bm=) is ours, drawn from the sampler's generator as sde_em draws its noise: one N(0, I) [B, D]
  a step, in step order, srk's H after each step's W (so srk's W are not sde_em's). On the last step W = H = 0: as in
  sde_em (score_sde's denoise), the last step adds no noise: euler's is the mean of an Euler step, srk's its 2-stage
  Runge-Kutta step of the drift alone. With the same generator torchsde_euler gives sde_em's samples (tests). torchsde's
  own BrownianInterval draws from its own seed (entropy), not a torch.Generator; it serves any query, ours only sdeint's
  one a step, in order, and raises ApiMoved at any other. check_contract's shape check of g_prod draws a [B, D] randn
  from torch's global generator: sample() restores that generator's state after the solve.
- What differs from sde_em: NFE steps + 1 for sde_em's steps (the shape check), and nothing else for euler.

torchsde is imported lazily (`api`), only when a variant runs; this adapter is written against torchsde 0.2.6
(pip install -e ".[ecosystem]"). `api` checks what the counts above rely on, on a one-element SDE: a renamed method or
argument, a changed call count or a changed query of the Brownian motion raises ApiMoved naming it, never a skip.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import cache, partial
from types import SimpleNamespace

import torch
from torch import Tensor

from impls import libraries
from impls.libraries import ApiMoved as ApiMoved  # re-exported: callers catch the adapter's
from impls.samplers.base import Sampled, SamplerSpec, check_schedule, noise_like
from impls.samplers.params import Counted, Model
from impls.samplers.schedules import timesteps
from impls.samplers.sde import diffusion_sq, reverse_drift

WRITTEN_FOR = "0.2.6"
LIBRARY = libraries.Library("torchsde", WRITTEN_FOR, "impls/samplers/torchsde_solvers.py")
version, label, _moved = LIBRARY.version, LIBRARY.label, LIBRARY.moved
CHECK_CALLS = 1
"""Drift calls sdeint makes before its first step: check_contract's shape check on y0."""


@dataclass(frozen=True)
class Method:
    """A torchsde fixed-step method, one step per step of our uniform grid."""

    method: str
    """torchsde's name for it."""
    calls_per_step: int
    """Drift (model) calls a step makes: 1 for euler, 3 for srk on additive noise (SRA1's first stage twice)."""
    levy_area: str
    """The levy_area_approximation it needs of the Brownian motion: "none" (increments only) or "space-time"."""

    def __post_init__(self):
        assert self.calls_per_step >= 1 and self.levy_area in ("none", "space-time")


METHODS = {"torchsde_euler": Method("euler", 1, "none"), "torchsde_srk": Method("srk", 3, "space-time")}
PAIRED_WITH = {name: "sde_em" for name in METHODS}
"""The sampler of ours each variant sits beside (same starting noise in the suite): the same SDE, model and grid."""


class StepNoise:
    """The Brownian motion sdeint gets, in s (steps): W over step k ~ N(0, I) [B, D] from `generator`, drawn when sdeint
    asks for step k (then H, for "space-time"); 0 on the last step. Only one query a step, in order, is served."""

    def __init__(self, like: Tensor, steps: int, generator: torch.Generator | None, levy_area: str):
        self.like, self.steps, self.generator = like, steps, generator
        self.levy_area_approximation = levy_area
        self.served = 0
        """Steps asked for so far."""

    shape = property(lambda self: self.like.shape)
    dtype = property(lambda self: self.like.dtype)
    device = property(lambda self: self.like.device)

    def size(self):
        return self.shape

    def __call__(self, ta, tb=None, return_U=False, return_A=False):
        k = self.served
        if tb is None or return_A or (float(ta), float(tb)) != (k, k + 1) or k >= self.steps or (
                return_U and self.levy_area_approximation != "space-time"):
            raise _moved(f"sdeint asked its Brownian motion for ({ta}, {tb}, return_U={return_U}, "
                         f"return_A={return_A}), not for step [{k}, {k + 1}] of {self.steps}")
        self.served += 1
        last = k == self.steps - 1
        w = torch.zeros_like(self.like) if last else noise_like(self.like, self.generator)
        if not return_U:
            return w
        h = torch.zeros_like(self.like) if last else noise_like(self.like, self.generator) * (1 / 12) ** 0.5
        return w, 0.5 * w + h  # U = dt (W / 2 + H), dt = 1 step

    def __repr__(self):
        return f"StepNoise(steps={self.steps}, served={self.served}, levy_area={self.levy_area_approximation!r})"


class ReverseVP:
    """The reverse-time VP SDE in s = steps from t_max on `grid` (t_max -> t_min), as sdeint calls it: f(s, y) =
    -h (f y - g^2 score) and g_prod(s, y, v) = sqrt(h g^2) v, h the length in t of the step that s is in."""

    noise_type = "additive"
    sde_type = "ito"

    def __init__(self, model: Model, grid: list[float]):
        self.model, self.grid = model, grid

    def _at(self, s) -> tuple[float, float]:
        """(t, h) at s: t on the grid at whole s, linear between; h of the step s is in (the last one at s = steps)."""
        s = float(s)
        k = min(int(s), len(self.grid) - 2)
        t0, t1, frac = self.grid[k], self.grid[k + 1], s - k
        return (t0 if frac == 0 else t1 if frac == 1 else t0 + frac * (t1 - t0)), t0 - t1

    def f(self, s, y: Tensor) -> Tensor:
        t, h = self._at(s)
        return -h * reverse_drift(self.model, y, t)[0]

    def g_prod(self, s, y: Tensor, v: Tensor) -> Tensor:
        t, h = self._at(s)
        return (diffusion_sq(self.model.schedule, t, y) * h).sqrt() * v


class _Decay:
    """dy/ds = -y, dW of 0.1: the SDE `api` probes each method on, counting drift calls."""

    noise_type = "additive"
    sde_type = "ito"

    def __init__(self):
        self.calls = 0

    def f(self, s, y):
        self.calls += 1
        return -y

    def g_prod(self, s, y, v):
        return 0.1 * v


def _sdeint(sdeint, sde, y0: Tensor, steps: int, method: str, bm) -> Tensor:
    """sdeint from s = 0 to `steps` in steps of 1; the state at s = steps. ApiMoved where torchsde no longer knows
    the method or an argument (it raises ValueError, or warns of an argument it does not know, and ignores it)."""
    ts = torch.tensor([0.0, float(steps)], dtype=torch.float64)  # on the CPU: s is read as a Python float
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ys = sdeint(sde, y0, ts, bm=bm, method=method, dt=1.0)
        except ValueError as e:
            raise _moved(f"sdeint(method={method!r}): {e}") from e
    ignored = [str(w.message) for w in caught if "unexpected" in str(w.message).lower()]
    if ignored:
        raise _moved(f"sdeint(method={method!r}) ignores what this adapter passes: {'; '.join(ignored)}")
    return ys[-1]


@cache
def api() -> SimpleNamespace:
    """torchsde.sdeint, imported once, after a probe of the conventions the module docstring states (dy = -y ds +
    0.1 dW, 2 steps): each method's drift calls, one query of the Brownian motion a step. An absent torchsde raises
    ModuleNotFoundError (callers check first, skip)."""
    import torchsde

    sdeint = libraries.function(torchsde, "torchsde", "sdeint", ("sde", "y0", "ts", "bm", "method", "dt"), _moved)
    for m in METHODS.values():
        sde, y0 = _Decay(), torch.ones(1, 1, dtype=torch.float64)
        bm = StepNoise(y0, 2, torch.Generator().manual_seed(0), m.levy_area)
        _sdeint(sdeint, sde, y0, 2, m.method, bm)
        if sde.calls != CHECK_CALLS + 2 * m.calls_per_step or bm.served != 2:
            raise _moved(f"sdeint(method={m.method!r}) made {sde.calls} drift calls and {bm.served} Brownian queries "
                         f"in 2 steps, not {CHECK_CALLS} + {2 * m.calls_per_step} and 2")
    return SimpleNamespace(sdeint=sdeint)


def _check_steps(steps) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")


@torch.no_grad()
def integrate(name: str, model: Model, x_T: Tensor, steps: int, bm) -> Sampled:
    """The variant `name` from x_T [B, D] at t_max to t_min in `steps` uniform steps, with the Brownian motion `bm`
    in s (steps): StepNoise, or any of torchsde's (a BrownianInterval over s in [0, steps]: noise on every step)."""
    _check_steps(steps)
    check_schedule(model, "vp", name)
    m = METHODS[name]
    counted = Counted(model)
    sde = ReverseVP(counted, timesteps(model.schedule, steps, "uniform").tolist())
    cuda = [x_T.device] if x_T.device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):  # check_contract's randn, from the global generator
        x = _sdeint(api().sdeint, sde, x_T, steps, m.method, bm)
    return Sampled(x, counted.calls)


def sample(name: str, model: Model, x_T: Tensor, steps: int, *, generator: torch.Generator | None = None) -> Sampled:
    """The variant `name` from x_T [B, D] in `steps` steps, its noise from `generator` (StepNoise); x at t_min."""
    _check_steps(steps)
    return integrate(name, model, x_T, steps, StepNoise(x_T, steps, generator, METHODS[name].levy_area))


def specs() -> dict[str, SamplerSpec]:
    """The variants as SamplerSpecs: NFE = 1 + calls_per_step x steps."""
    return {name: SamplerSpec(partial(sample, name), calls_per_step=m.calls_per_step, first_calls=CHECK_CALLS,
                              stochastic=True) for name, m in METHODS.items()}


if __name__ == "__main__":
    from impls.samplers.check import against_ours

    against_ours(specs(), PAIRED_WITH)
