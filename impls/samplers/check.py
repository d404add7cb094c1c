"""Prints a registered sampler's quality against gmm2d with the exact model, per NFE; `python -m impls.samplers.<file>`
(a library's samplers beside ours: `against_ours`).

Deterministic samplers also print the endpoint error against a fine solve of the same ODE from the same noise.
"""

from __future__ import annotations

import torch

from impls.samplers import SAMPLERS
from impls.samplers.base import prior_noise
from impls.samplers.metrics import mode_weight_err, sliced_w2
from impls.samplers.params import ExactModel
from impls.samplers.schedules import RectifiedFlow, VPLinear
from impls.samplers.targets import make_target

N = 2000  # samples: sliced W2 between two exact gmm2d draws of this size is ~0.05


def model_for(family: str, target_name: str = "gmm2d", dtype=torch.float64) -> ExactModel:
    """The exact model a registry family pairs with: eps on linear VP, velocity on rectified flow."""
    if family == "flow":
        return ExactModel(make_target(target_name), RectifiedFlow(), "velocity")
    return ExactModel(make_target(target_name), VPLinear(), "eps")


def check(name: str, budgets=(1, 4, 16, 64, 256)) -> None:
    spec = SAMPLERS[name]
    model = model_for(spec.family)
    target = model.target
    x_T = prior_noise(model.schedule, N, target.dim, torch.Generator().manual_seed(0), torch.float64)
    exact = target.sample(N, torch.Generator().manual_seed(1), torch.float64)
    fine = None if spec.stochastic else spec.fn(model, x_T, spec.steps_for(1000)).x
    for steps, nfe in spec.plan(budgets):
        out = spec.fn(model, x_T, steps, generator=torch.Generator().manual_seed(2))
        assert out.nfe == nfe, f"{name}: counted {out.nfe} calls, rule says {nfe}"
        line = f"{name} nfe {nfe:4d}: sliced_w2 {sliced_w2(out.x, exact):.4f}"
        line += f" mode_weight_err {mode_weight_err(out.x, target):.4f}"
        if fine is not None:
            line += f" endpoint rms vs 1000-NFE solve {(out.x - fine).pow(2).sum(1).mean().sqrt():.2e}"
        print(line)
    print(f"{name}: exact samples vs exact samples sliced_w2 "
          f"{sliced_w2(target.sample(N, torch.Generator().manual_seed(3), torch.float64), exact):.4f}")


def against_ours(specs: dict, paired_with: dict, budgets=(1, 4, 16, 64, 256)) -> None:
    """A library's sampler `specs` beside the sampler of ours each is paired with, from the same noise, per NFE."""
    for name, spec in specs.items():
        model = model_for(spec.family)
        x_T = prior_noise(model.schedule, N, 2, torch.Generator().manual_seed(0), torch.float64)
        exact = model.target.sample(N, torch.Generator().manual_seed(1), torch.float64)
        ours = SAMPLERS[paired_with[name]]
        for steps, nfe in spec.plan(budgets):
            out = spec.fn(model, x_T, steps, generator=torch.Generator().manual_seed(2))
            ref = ours.fn(model, x_T, ours.steps_for(nfe), generator=torch.Generator().manual_seed(2))
            print(f"{name} nfe {out.nfe:4d}: sliced_w2 {sliced_w2(out.x, exact):.4f} "
                  f"({paired_with[name]} at {ref.nfe}: {sliced_w2(ref.x, exact):.4f})")
