"""What every sampler returns and how the registry states its NFE rule.

Every sampler has the signature
    sample(model, x_T, steps, *, spacing=..., generator=None, **options) -> Sampled
where x_T [B, D] is the state at model.schedule.t_max (prior_noise draws one), steps the number of solver steps on
timesteps(schedule, steps, spacing), and generator feeds any noise the sampler injects (deterministic samplers take
and ignore it, so callers pass it uniformly). Sampled.nfe is counted by
wrapping the model (params.Counted), not computed from the rule.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from impls.samplers.schedules import RectifiedFlow, Schedule

GRID_NFE = (1, 2, 4, 8, 16, 32, 64, 128, 256, 1000)  # the NFE axis suites sweep, where a sampler allows it


class Sampled(NamedTuple):
    x: Tensor
    """[B, D] samples: at t = 0 on the "discrete" grid, else at the schedule's t_min."""
    nfe: int
    """Model calls made, each on the whole batch: function evaluations per sample."""


def prior_noise(schedule: Schedule, n: int, dim: int, generator: torch.Generator | None = None,
                dtype=torch.float32) -> Tensor:
    """x_T ~ N(0, sigma(t_max)^2 I) [n, dim] on CPU: the prior, ignoring alpha(t_max) x0 (alpha(1) = 0.0066 for VP)."""
    z = torch.randn(n, dim, generator=generator, dtype=torch.float64)
    return (float(schedule.sigma(schedule.t_max)) * z).to(dtype)


@dataclass(frozen=True)
class SamplerSpec:
    """A registered sampler: its function and its NFE rule nfe(steps) = first_calls + calls_per_step * steps -
    last_step_saves."""

    fn: Callable[..., Sampled]
    """sample(model, x_T, steps, **options) -> Sampled, options already bound."""
    calls_per_step: int = 1
    """Model calls per step: 2 for Heun."""
    last_step_saves: int = 0
    """Calls the last step saves: 1 for Heun, whose last step is Euler (Karras et al. 2022, Alg. 1)."""
    max_steps: int | None = None
    """Most steps allowed: T = 1000 on DDPM's discrete grid; None for continuous time."""
    family: str = "vp"
    """The model a suite pairs it with: "vp" (a variance-preserving schedule) or "flow" (rectified flow)."""
    stochastic: bool = False
    """Injects noise, so its samples depend on the generator, not only on x_T."""
    first_calls: int = 0
    """Calls a solve makes before its first step: 1 for torchsde's sdeint, which checks the drift's shape on x_T."""

    def __post_init__(self):
        assert self.calls_per_step >= 1 and 0 <= self.last_step_saves < self.calls_per_step and self.first_calls >= 0
        assert self.family in ("vp", "flow"), f"family must be vp or flow, got {self.family!r}"

    def nfe(self, steps: int) -> int:
        return self.first_calls + self.calls_per_step * steps - self.last_step_saves

    def steps_for(self, nfe: int) -> int | None:
        """Most steps whose NFE fits in the budget `nfe`; None when not even one step does."""
        steps = (nfe - self.first_calls + self.last_step_saves) // self.calls_per_step
        if self.max_steps is not None:
            steps = min(steps, self.max_steps)
        return steps if steps >= 1 else None

    def allows(self, nfe: int) -> bool:
        """True when some step count costs exactly `nfe` calls (Heun: odd NFEs only)."""
        steps = self.steps_for(nfe)
        return steps is not None and self.nfe(steps) == nfe

    def plan(self, budgets: Iterable[int] = GRID_NFE) -> list[tuple[int, int]]:
        """(steps, nfe) for each budget, largest fitting step count, duplicates dropped: Heun on GRID_NFE gives
        NFE 1, 3, 7, 15, ..., 255, 999."""
        out = []
        for b in budgets:
            steps = self.steps_for(b)
            if steps is not None and (steps, self.nfe(steps)) not in out:
                out.append((steps, self.nfe(steps)))
        return out


def check_schedule(model, needs: str, name: str) -> None:
    """ValueError naming the mismatch when a sampler's maths does not hold for the model's schedule."""
    vp = getattr(model.schedule, "variance_preserving", False)
    if needs == "vp" and not vp:
        raise ValueError(f"{name} needs a variance-preserving schedule, got {model.schedule}")
    if needs == "flow" and not isinstance(model.schedule, RectifiedFlow):
        raise ValueError(f"{name} integrates the rectified-flow ODE; got schedule {model.schedule}")


def noise_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """N(0, I) shaped like x, drawn on the generator's device (x's when None), then moved to x's."""
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=device).to(x.device)
