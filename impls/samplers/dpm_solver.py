"""DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): multistep second-order data-prediction solver, one call per step.

In h = lambda_s - lambda_t: x_s = (sigma_s / sigma_t) x_t - alpha_s expm1(-h) D, where D = x0 on the first step and
D = (1 + 1/(2r)) x0_t - 1/(2r) x0_prev with r = h_prev / h after it, reusing the previous call's x0.
A step landing on sigma = 0 (the "discrete" grid's t = 0) has h = inf and is taken first order, x_s = x0, as the
paper's lower_order_final does; one first-order step keeps the global error O(h^2).

The update is diffusers' DPMSolverMultistepScheduler with algorithm_type="dpmsolver++", solver_order=2 and
solver_type="midpoint" (D1 = (x0_t - x0_prev) / r, x_s += -0.5 alpha_s expm1(-h) D1); its final_sigmas_type="zero"
step to sigma = 0 is the first-order one above. Grids that stop at t_min > 0 take their last step second order.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from impls.samplers.base import Sampled
from impls.samplers.params import Counted, Model, predict
from impls.samplers.schedules import timesteps


@torch.no_grad()
def dpm_solver_2m(model: Model, x_T: Tensor, steps: int, *, spacing: str = "logsnr",
                  generator: torch.Generator | None = None) -> Sampled:
    model = Counted(model)
    sch = model.schedule
    ts = timesteps(sch, steps, spacing)
    lam, alpha, sigma = sch.lam(ts).tolist(), sch.alpha(ts).tolist(), sch.sigma(ts).tolist()
    x, x0_prev, h_prev = x_T, None, None
    for i in range(steps):
        x0 = predict(model, x, float(ts[i]), "x0")
        h = lam[i + 1] - lam[i]  # > 0: lambda rises toward the data
        if x0_prev is None or math.isinf(h):
            d = x0
        else:
            k = h / (2 * h_prev)  # 1 / (2 r); 0 after an infinite first step (rectified flow starts at lambda = -inf)
            d = (1 + k) * x0 - k * x0_prev
        x = (sigma[i + 1] / sigma[i]) * x - alpha[i + 1] * math.expm1(-h) * d
        x0_prev, h_prev = x0, h
    return Sampled(x, model.calls)


if __name__ == "__main__":
    from impls.samplers.check import check

    check("dpm_solver_2m")
