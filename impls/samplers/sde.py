"""Reverse-time VP SDE, Euler-Maruyama (Song et al. 2021): dx = [f x - g^2 score] dt + g dw, one call per step.

f = d log alpha / dt and g^2 = d sigma^2 / dt - 2 f sigma^2 (beta(t) for VP). The last step adds no noise: it would
leave sqrt(g^2 dt) of it (0.57 at 8 uniform steps on linear VP, 2x gmm2d's 0.25 component std). score_sde's
pc_sampler does the same with denoise=True (it returns the last predictor step's mean, no extra call; its ODE sampler
is the one that spends an extra call to denoise). Strong order 1/2, weak order 1 in the step.
The steps follow the grid of `timesteps` (steps + 1 points ending exactly at t_min), where score_sde's samplers
step a fixed dt = -1/N from linspace(T, eps, N), so that their last step lands below eps.
"""

from __future__ import annotations

import torch
from torch import Tensor

from impls.samplers.base import Sampled, check_schedule, noise_like
from impls.samplers.params import Counted, Model, coeffs, predict
from impls.samplers.schedules import Schedule, timesteps


def diffusion_sq(schedule: Schedule, t: float, like: Tensor) -> Tensor:
    """g^2 at t, [1, 1] in like's dtype: d sigma^2 / dt - 2 f sigma^2 with f = d log alpha / dt (beta(t) for VP)."""
    c = coeffs(schedule, t, like)
    f = c.d_alpha / c.alpha
    return 2 * c.sigma * c.d_sigma - 2 * f * c.sigma**2


def reverse_drift(model: Model, x: Tensor, t: float) -> tuple[Tensor, Tensor]:
    """The reverse SDE at t: (f x - g^2 score(x, t), g^2), its drift dx/dt and squared diffusion; one model call."""
    score = predict(model, x, t, "score")
    c = coeffs(model.schedule, t, x)
    g2 = diffusion_sq(model.schedule, t, x)
    return (c.d_alpha / c.alpha) * x - g2 * score, g2


@torch.no_grad()
def euler_maruyama(model: Model, x_T: Tensor, steps: int, *, spacing: str = "uniform",
                   generator: torch.Generator | None = None) -> Sampled:
    """From x_T at t_max down the grid: x_s = x_t + (s - t) (f x_t - g^2 score(x_t, t)) + sqrt(g^2 (t - s)) z, with
    f and g^2 at t and z ~ N(0, I) from `generator`; the last step (to t_min) adds no z."""
    check_schedule(model, "vp", "euler_maruyama")
    model = Counted(model)
    ts = timesteps(model.schedule, steps, spacing).tolist()
    x = x_T
    for i, (t, s) in enumerate(zip(ts[:-1], ts[1:])):
        drift, g2 = reverse_drift(model, x, t)
        x = x + (s - t) * drift
        if i < steps - 1:
            x = x + (g2 * (t - s)).sqrt() * noise_like(x, generator)
    return Sampled(x, model.calls)


if __name__ == "__main__":
    from impls.samplers.check import check

    check("sde_em")
