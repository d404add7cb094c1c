"""Reference sampler: DDPM ancestral sampling (Ho et al. 2020, Algorithm 2), 1000 steps on the discrete grid.

Fewer steps stride the grid with the respaced betas beta' = 1 - alphabar_t / alphabar_s (Nichol & Dhariwal 2021).
The variance is the posterior's, beta~ = beta' (1 - alphabar_s) / (1 - alphabar_t), which Ho et al. found as good as
beta and which is 0 on the last step to t = 0, so the chain ends on the posterior mean. With beta', beta~ and x0
from alphabar = alpha^2 at the grid's times, this is diffusers' DDPMScheduler.step (variance_type="fixed_small",
x0 unclipped) on the same timesteps (diffusers_schedulers.py: diffusers_ddpm).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from impls.samplers.base import Sampled, check_schedule, noise_like
from impls.samplers.params import Counted, Model, predict_x0_eps
from impls.samplers.schedules import DDPM_T, timesteps


@torch.no_grad()
def ddpm(model: Model, x_T: Tensor, steps: int = DDPM_T, *, spacing: str = "discrete",
         generator: torch.Generator | None = None) -> Sampled:
    """x_s = (x_t - beta' / sqrt(1 - alphabar_t) eps) / sqrt(1 - beta') + sqrt(beta~) z, one call per step."""
    check_schedule(model, "vp", "ddpm")
    model = Counted(model)
    sch = model.schedule
    ts = timesteps(sch, steps, spacing).tolist()
    x = x_T
    for t, s in zip(ts[:-1], ts[1:]):
        _, eps = predict_x0_eps(model, x, t)
        log_a_t, log_a_s = float(sch.log_alpha(t)), float(sch.log_alpha(s))
        beta = -math.expm1(2 * (log_a_t - log_a_s))  # 1 - alphabar_t / alphabar_s
        var_t, var_s = float(sch.sigma(t)) ** 2, float(sch.sigma(s)) ** 2  # 1 - alphabar
        mean = (x - beta / math.sqrt(var_t) * eps) / math.sqrt(1 - beta)
        x = mean + math.sqrt(beta * var_s / var_t) * noise_like(x, generator)
    return Sampled(x, model.calls)


if __name__ == "__main__":
    from impls.samplers.check import check

    check("ddpm")
