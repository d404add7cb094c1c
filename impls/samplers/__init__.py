"""Diffusion and flow samplers measured against exact answers: analytic Gaussian-mixture targets, one model interface,
and one sampler per file; see base.py for the signature and params.py for the model interface.

SAMPLERS maps a name to a SamplerSpec (function with options bound, NFE rule, the model family it pairs with):
    ddpm            1 call/step, steps <= 1000 on the discrete grid (the reference at 1000)
    ddim            eta = 0, 1 call/step, steps <= 1000 on the discrete grid
    ddim_eta0.5     eta = 0.5, as ddim
    sde_em          reverse VP SDE, Euler-Maruyama, 1 call/step, uniform grid
    ode_euler       probability-flow ODE, Euler, 1 call/step, EDM (rho = 7) grid
    ode_heun        probability-flow ODE, Heun, 2 calls/step, last step Euler: NFE = 2 steps - 1, EDM grid
    dpm_solver_2m   DPM-Solver++(2M), 1 call/step, log-SNR grid
    flow_euler      rectified flow, Euler, 1 call/step, uniform grid
    flow_heun       rectified flow, Heun, NFE = 2 steps - 1, uniform grid
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from impls import lazy_exports

if TYPE_CHECKING:
    from impls.samplers.base import SamplerSpec

SAMPLERS: dict[str, SamplerSpec]

__all__ = ["SAMPLERS"]


def _load() -> dict:
    from functools import partial

    from impls.samplers import ddim, dpm_solver, flow, ode, reference, sde
    from impls.samplers.base import SamplerSpec
    from impls.samplers.schedules import DDPM_T

    return dict(
        SAMPLERS={
            "ddpm": SamplerSpec(reference.ddpm, max_steps=DDPM_T, stochastic=True),
            "ddim": SamplerSpec(ddim.ddim, max_steps=DDPM_T),
            "ddim_eta0.5": SamplerSpec(partial(ddim.ddim, eta=0.5), max_steps=DDPM_T, stochastic=True),
            "sde_em": SamplerSpec(sde.euler_maruyama, stochastic=True),
            "ode_euler": SamplerSpec(partial(ode.euler, spacing="edm")),
            "ode_heun": SamplerSpec(partial(ode.heun, spacing="edm"), calls_per_step=2, last_step_saves=1),
            "dpm_solver_2m": SamplerSpec(dpm_solver.dpm_solver_2m),
            "flow_euler": SamplerSpec(flow.flow_euler, family="flow"),
            "flow_heun": SamplerSpec(flow.flow_heun, calls_per_step=2, last_step_saves=1, family="flow"),
        },
    )


__getattr__ = lazy_exports(globals(), _load)
