"""Rectified flow / flow matching samplers (Liu et al. 2023; Lipman et al. 2023): the straight-path ODE from t=1 to 0.

dx/dt = v(x, t) = E[eps - x0 | x_t = x] on x_t = (1 - t) x0 + t eps; Euler and Heun in t on a uniform grid, the
grid those papers sample on. Flow matching trains v directly, so these want model.parameterization == "velocity",
though any parameterization converts (params.py).
"""

from __future__ import annotations

import torch
from torch import Tensor

from impls.samplers import ode
from impls.samplers.base import Sampled, check_schedule
from impls.samplers.params import Model


def flow_euler(model: Model, x_T: Tensor, steps: int, *, spacing: str = "uniform",
               generator: torch.Generator | None = None) -> Sampled:
    """Euler on the straight-path ODE: NFE = steps; with exact v it equals DDIM on this schedule."""
    check_schedule(model, "flow", "flow_euler")
    return ode.euler(model, x_T, steps, spacing=spacing)


def flow_heun(model: Model, x_T: Tensor, steps: int, *, spacing: str = "uniform",
              generator: torch.Generator | None = None) -> Sampled:
    """Heun on the straight-path ODE, last step Euler: NFE = 2 steps - 1."""
    check_schedule(model, "flow", "flow_heun")
    return ode.heun(model, x_T, steps, spacing=spacing)


if __name__ == "__main__":
    from impls.samplers.check import check

    check("flow_euler")
    check("flow_heun")
