"""Noise schedules x_t = alpha(t) x0 + sigma(t) eps on t in [0, 1] (t=0 data, t=1 noise), and the time grids on them.

Every method takes t as a float or a tensor and returns a float64 tensor. lambda(t) = log(alpha / sigma) is the
half log-SNR, decreasing in t; d_alpha, d_sigma are time derivatives, which the probability-flow ODE needs.
Each schedule states t_max (where sampling starts) and t_min (where the continuous grids stop):
- VP schedules stop at t_min = 1e-3 (Song et al. 2021's eps, and the DDPM grid's last point 1/T): sigma(t) ~ sqrt(t)
  near 0, so the ODE's d_sigma blows up there; sigma(1e-3) = 0.010 for linear VP, 25x below gmm2d's component std.
- Cosine VP starts at t_max = 0.9946 (Lu et al. 2022's choice): alpha(1) = 0 makes lambda(1) = -inf.
- Rectified flow runs on all of [0, 1]: its velocity eps - x0 stays finite at both ends.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

DDPM_T = 1000  # Ho et al. 2020's step count; the "discrete" grid's resolution
SPACINGS = ("discrete", "uniform", "quadratic", "edm", "logsnr")


def _t(t) -> Tensor:
    return torch.as_tensor(t, dtype=torch.float64)


class Schedule:
    """Base for variance-preserving schedules (alpha^2 + sigma^2 = 1): subclasses give log_alpha and its derivative."""

    t_min: float
    t_max: float
    variance_preserving = True

    def log_alpha(self, t) -> Tensor:
        raise NotImplementedError

    def d_log_alpha(self, t) -> Tensor:
        raise NotImplementedError

    def alpha(self, t) -> Tensor:
        return self.log_alpha(t).exp()

    def sigma(self, t) -> Tensor:
        # expm1: 1 - alpha^2 loses digits when alpha ~ 1; the clamp absorbs cosine's log alpha(0) = +1e-17 rounding.
        return (-torch.expm1(2 * self.log_alpha(t))).clamp(min=0).sqrt()

    def d_alpha(self, t) -> Tensor:
        return self.alpha(t) * self.d_log_alpha(t)

    def d_sigma(self, t) -> Tensor:
        return -self.alpha(t) * self.d_alpha(t) / self.sigma(t)

    def lam(self, t) -> Tensor:
        """lambda(t) = log(alpha / sigma); +inf at t=0."""
        return self.log_alpha(t) - self.sigma(t).log()

    def t_of_lambda(self, lam) -> Tensor:
        """Inverse of lam by bisection on [0, 1] (lambda is strictly decreasing); 60 halvings reach float64 spacing."""
        lam = _t(lam)
        lo, hi = torch.zeros_like(lam), torch.ones_like(lam)
        for _ in range(60):
            mid = (lo + hi) / 2
            above = self.lam(mid) > lam
            lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
        return (lo + hi) / 2


@dataclass(frozen=True)
class VPLinear(Schedule):
    """VP SDE with linear beta(t) (Song et al. 2021): log alpha = -(beta_min t + (beta_max - beta_min) t^2 / 2) / 2.

    alpha is score_sde's VPSDE.marginal_prob mean coefficient (its log_mean_coeff) at the same beta_min, beta_max.
    """

    beta_min: float = 0.1
    """beta(0); beta_min / T = 1e-4 is DDPM's first beta."""
    beta_max: float = 20.0
    """beta(1); beta_max / T = 0.02 is DDPM's last beta, so this is the DDPM chain's continuous limit."""
    t_min: float = 1e-3
    t_max: float = 1.0

    def log_alpha(self, t) -> Tensor:
        t = _t(t)
        return -0.5 * (self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2)

    def d_log_alpha(self, t) -> Tensor:
        return -0.5 * (self.beta_min + (self.beta_max - self.beta_min) * _t(t))


@dataclass(frozen=True)
class VPCosine(Schedule):
    """Cosine schedule (Nichol & Dhariwal 2021): alpha = cos((t + s) / (1 + s) pi/2) / cos(s / (1 + s) pi/2), the
    continuous formula, unclipped: the paper and diffusers' squaredcos_cap_v2 clip each discrete beta at 0.999, which
    changes alpha^2 only within a step of t = 1 (3.7e-33 here at tau = 999, 2.4e-9 there), above t_max."""

    s: float = 0.008
    """Offset that keeps beta from vanishing near t=0 (the paper's value)."""
    t_min: float = 1e-3
    t_max: float = 0.9946

    def _u(self, t) -> Tensor:
        return (_t(t) + self.s) / (1 + self.s) * (math.pi / 2)

    def log_alpha(self, t) -> Tensor:
        return self._u(t).cos().log() - math.log(math.cos(self.s / (1 + self.s) * math.pi / 2))

    def d_log_alpha(self, t) -> Tensor:
        return -self._u(t).tan() * (math.pi / 2) / (1 + self.s)


@dataclass(frozen=True)
class DiscreteVP(Schedule):
    """DDPM's discrete chain (Ho et al. 2020): T linear betas, alphas_cumprod at t = i / T, log-linear in between.

    1-based: alpha(i / T)^2 = prod_{j < i} (1 - betas[j]), betas = linspace(beta_start, beta_end, T) in float64, so
    alpha(0) = 1 and diffusers' alphas_cumprod[tau] (beta_schedule="linear", tau = 0..T-1) is alpha((tau + 1) / T)^2.
    """

    T: int = DDPM_T
    beta_start: float = 1e-4
    beta_end: float = 0.02
    t_min: float = 1e-3
    t_max: float = 1.0

    @cached_property
    def _table(self) -> Tensor:
        """log alpha at t = i / T, i = 0..T [T + 1]; alpha_0 = 1."""
        betas = torch.linspace(self.beta_start, self.beta_end, self.T, dtype=torch.float64)
        return torch.cat([torch.zeros(1, dtype=torch.float64), 0.5 * torch.log1p(-betas).cumsum(0)])

    def _seg(self, t) -> tuple[Tensor, Tensor]:
        pos = _t(t) * self.T
        i = pos.floor().clamp(0, self.T - 1).long()
        return i, pos - i

    def log_alpha(self, t) -> Tensor:
        i, frac = self._seg(t)
        table = self._table.to(i.device)  # the table lives on CPU; t may be on the model's device
        return torch.lerp(table[i], table[i + 1], frac)

    def d_log_alpha(self, t) -> Tensor:
        i, _ = self._seg(t)
        table = self._table.to(i.device)
        return (table[i + 1] - table[i]) * self.T


@dataclass(frozen=True)
class RectifiedFlow(Schedule):
    """Straight paths (Liu et al. 2023; Lipman et al. 2023): alpha = 1 - t, sigma = t, velocity eps - x0.

    Time runs from noise at t = 1 to data at t = 0, as in every schedule here and in diffusers' flow-match schedulers
    (sigma = t); both papers write the path the other way (t = 0 noise, t = 1 data, velocity data - noise)."""

    t_min: float = 0.0
    t_max: float = 1.0
    variance_preserving = False

    def log_alpha(self, t) -> Tensor:
        return torch.log1p(-_t(t))

    def alpha(self, t) -> Tensor:
        return 1 - _t(t)

    def sigma(self, t) -> Tensor:
        return _t(t).clone()

    def d_alpha(self, t) -> Tensor:
        return torch.full_like(_t(t), -1.0)

    def d_sigma(self, t) -> Tensor:
        return torch.ones_like(_t(t))

    def t_of_lambda(self, lam) -> Tensor:
        return torch.sigmoid(-_t(lam))


SCHEDULES = {"vp_linear": VPLinear, "vp_cosine": VPCosine, "ddpm": DiscreteVP, "rectified_flow": RectifiedFlow}


def timesteps(schedule: Schedule, steps: int, spacing: str = "uniform", rho: float = 7.0) -> Tensor:
    """steps + 1 decreasing times [steps + 1] float64; a sampler calls the model at the first `steps` of them.

    discrete:  DDPM's grid t = i / T with i = round(linspace(floor(T t_max), 1, steps)), then 0 (diffusers'
               "linspace" spacing; not DDIM's own range(0, T, T // steps), "leading", whose top call is below T - 1);
               the only grid that lands on t = 0, which DDPM, DDIM and DPM-Solver++ can step to. At t_max = 1 the
               calls, as diffusers timesteps tau = T t - 1, are timestep_spacing="linspace"'s round(linspace(T - 1, 0,
               steps)) except at steps = 1 (diffusers: [0]) and at exact .5 ties, which round half to even on
               numbers one apart and so differ by one (steps = 3: 999, 499, 0 here, 999, 500, 0 there).
    uniform:   t_max -> t_min evenly in t.
    quadratic: t = t_min + (t_max - t_min) u^2 for u evenly 1 -> 0 (DDIM's "quad": dense near the data).
    edm:       sigma / alpha = exp(-lambda) evenly in its 1/rho power (Karras et al. 2022, rho = 7).
    logsnr:    lambda evenly (DPM-Solver's default for small images).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; choose one of {list(SPACINGS)}")
    t_max, t_min = schedule.t_max, schedule.t_min
    if spacing == "discrete":
        top = math.floor(t_max * DDPM_T + 1e-9)  # never above t_max: cosine's 0.9946 -> 994
        if steps > top:
            raise ValueError(f"the discrete grid has {top} steps below t_max={t_max}; asked for {steps}")
        i = torch.linspace(top, 1, steps, dtype=torch.float64).round()
        return torch.cat([i / DDPM_T, torch.zeros(1, dtype=torch.float64)])
    u = torch.linspace(1, 0, steps + 1, dtype=torch.float64)  # 1 at t_max, 0 at t_min
    if spacing == "uniform":
        return t_min + (t_max - t_min) * u
    if spacing == "quadratic":
        return t_min + (t_max - t_min) * u**2
    lam_hi, lam_lo = schedule.lam(t_min), schedule.lam(t_max)
    if not (torch.isfinite(lam_hi) and torch.isfinite(lam_lo)):
        raise ValueError(f"{spacing} spacing needs finite log-SNR on [t_min, t_max]; {schedule} has alpha or sigma 0")
    if spacing == "logsnr":
        lam = lam_hi + (lam_lo - lam_hi) * u
    else:
        s_hi, s_lo = (-lam_lo / rho).exp(), (-lam_hi / rho).exp()  # (sigma / alpha)^(1 / rho) at t_max, t_min
        lam = -rho * torch.log(s_lo + (s_hi - s_lo) * u)
    t = schedule.t_of_lambda(lam)
    t[0], t[-1] = t_max, t_min  # exact ends, not bisection's
    return t
