"""DDIM (Song, Meng & Ermon 2021): x_s = alpha_s x0 + sqrt(sigma_s^2 - c^2) eps + c z, one call per step.

c = eta sigma_s sqrt(1 - exp(2 (lambda_t - lambda_s))) is eta times the DDPM posterior's std, so eta = 1 is DDPM
ancestral sampling with the posterior variance and eta = 0 the deterministic sampler (an exponential integrator of the
probability-flow ODE, first order in the step). Written for any alpha, sigma, so it also runs on rectified flow.

On a VP schedule a step from t to s is diffusers' DDIMScheduler.step(eta=eta) from alphabar_t = alpha_t^2 to
alphabar_prev = alpha_s^2 (its std_dev_t is c, its direction sqrt(1 - alphabar_prev - c^2) eps), with
set_alpha_to_one=True on the step to t = 0 and x0 unclipped; the model's own eps is used when it predicts eps.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from impls.samplers.base import Sampled, noise_like
from impls.samplers.params import Counted, Model, predict_x0_eps
from impls.samplers.schedules import timesteps


@torch.no_grad()
def ddim(model: Model, x_T: Tensor, steps: int, *, eta: float = 0.0, spacing: str = "discrete",
         generator: torch.Generator | None = None) -> Sampled:
    """eta in [0, 1]; with eta > 0 it draws one N(0, I) per step, in DDPM's order, so eta = 1 reproduces ddpm."""
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    model = Counted(model)
    sch = model.schedule
    ts = timesteps(sch, steps, spacing).tolist()
    x = x_T
    for t, s in zip(ts[:-1], ts[1:]):
        x0, eps = predict_x0_eps(model, x, t)
        a_s, sig_s = float(sch.alpha(s)), float(sch.sigma(s))
        if eta == 0.0:
            x = a_s * x0 + sig_s * eps
            continue
        # lambda_s = +inf at s = 0: expm1(-inf) = -1 and sig_s = 0, so c = 0 there, no NaN.
        c = eta * sig_s * math.sqrt(-math.expm1(2 * float(sch.lam(t) - sch.lam(s))))
        x = a_s * x0 + math.sqrt(max(sig_s**2 - c**2, 0.0)) * eps + c * noise_like(x, generator)
    return Sampled(x, model.calls)


if __name__ == "__main__":
    from impls.samplers.check import check

    check("ddim")
