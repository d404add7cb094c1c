"""Probability-flow ODE dx/dt = d_alpha E[x0|x] + d_sigma E[eps|x] (Song et al. 2021) by Euler and by Heun in t.

Heun follows Karras et al. 2022, Algorithm 1: a trapezoidal correction per step (2 calls) except the last, which is
Euler (1 call), so NFE = 2 steps - 1; one first-order step among N keeps the global error O(h^2). Algorithm 1 skips
the correction only on its step to sigma = 0; here the last step is Euler wherever it lands, also on a VP schedule's
continuous grids, which end at t_min = 1e-3 > 0. Both step in t, not in sigma / alpha as Karras et al. and
diffusers' Euler/Heun schedulers do. On rectified flow the same ODE is the straight-path flow, dx/dt = eps - x0
(flow.py).
"""

from __future__ import annotations

import torch
from torch import Tensor

from impls.samplers.base import Sampled
from impls.samplers.params import Counted, Model, predict
from impls.samplers.schedules import timesteps


@torch.no_grad()
def euler(model: Model, x_T: Tensor, steps: int, *, spacing: str = "uniform",
          generator: torch.Generator | None = None) -> Sampled:
    """x_s = x_t + (s - t) v(x_t, t): first order, one call per step."""
    model = Counted(model)
    ts = timesteps(model.schedule, steps, spacing).tolist()
    x = x_T
    for t, s in zip(ts[:-1], ts[1:]):
        x = x + (s - t) * predict(model, x, t, "velocity")
    return Sampled(x, model.calls)


@torch.no_grad()
def heun(model: Model, x_T: Tensor, steps: int, *, spacing: str = "uniform",
         generator: torch.Generator | None = None) -> Sampled:
    """Euler predictor, trapezoid corrector: second order, 2 steps - 1 calls."""
    model = Counted(model)
    ts = timesteps(model.schedule, steps, spacing).tolist()
    x = x_T
    for i, (t, s) in enumerate(zip(ts[:-1], ts[1:])):
        d = predict(model, x, t, "velocity")
        x_euler = x + (s - t) * d
        if i == steps - 1:
            x = x_euler
        else:
            x = x + (s - t) * 0.5 * (d + predict(model, x_euler, s, "velocity"))
    return Sampled(x, model.calls)


if __name__ == "__main__":
    from impls.samplers.check import check

    check("ode_euler")
    check("ode_heun")
