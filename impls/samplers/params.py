"""The model interface every sampler shares, and the one place that converts between eps, x0, score and velocity.

A model is a callable model(x [B, D], t [B]) -> prediction [B, D] with two attributes:
    parameterization: one of PARAMETERIZATIONS, what the prediction is
    schedule:         the Schedule (schedules.py) it was trained or built for
ExactModel wraps an analytic target; a learned network only needs the same call and the two attributes.

With x = alpha x0 + sigma eps (all conditional means given x_t = x):
    eps      = (x - alpha x0) / sigma
    score    = -eps / sigma
    velocity = d_alpha x0 + d_sigma eps     (dx/dt of the probability-flow ODE; eps - x0 for rectified flow)
The velocity is the time derivative along the path, not Salimans & Ho's (diffusers' "v_prediction") v = alpha eps -
sigma x0, which is dx/dphi for phi = atan(sigma / alpha): on a VP schedule the two differ by the factor dphi/dt,
which depends on t. Salimans & Ho's v is defined for VP schedules only; on rectified flow (alpha = 1 - t, sigma = t)
the velocity here is eps - x0 (flow matching's target, diffusers' "flow_prediction"), while alpha eps - sigma x0
would be (1 - t) eps - t x0, not a multiple of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Protocol

import torch
from torch import Tensor

from impls.samplers.schedules import Schedule
from impls.samplers.targets import GaussianMixture

PARAMETERIZATIONS = ("eps", "x0", "score", "velocity")


class Model(Protocol):
    parameterization: str
    schedule: Schedule

    def __call__(self, x: Tensor, t: Tensor) -> Tensor: ...


class Coeffs(NamedTuple):
    """alpha, sigma and their time derivatives at t, each a [B, 1] column (or [1, 1]) in the state's dtype."""

    alpha: Tensor
    sigma: Tensor
    d_alpha: Tensor
    d_sigma: Tensor


def coeffs(schedule: Schedule, t, like: Tensor) -> Coeffs:
    """Computed in float64, then cast: at t = 1e-3, 1 - alpha^2 in float32 keeps only ~4 digits."""
    t = torch.as_tensor(t, dtype=torch.float64).reshape(-1, 1)
    vals = (schedule.alpha(t), schedule.sigma(t), schedule.d_alpha(t), schedule.d_sigma(t))
    return Coeffs(*(v.to(dtype=like.dtype, device=like.device) for v in vals))


def _check(kind: str) -> None:
    if kind not in PARAMETERIZATIONS:
        raise ValueError(f"unknown parameterization {kind!r}; choose one of {list(PARAMETERIZATIONS)}")


def to_x0(pred: Tensor, kind: str, x: Tensor, c: Coeffs) -> Tensor:
    """E[x0 | x] from a prediction of `kind`."""
    _check(kind)
    if kind == "x0":
        return pred
    if kind == "eps":
        return (x - c.sigma * pred) / c.alpha
    if kind == "score":
        return (x + c.sigma**2 * pred) / c.alpha
    # v = d_alpha x0 + d_sigma (x - alpha x0) / sigma, solved for x0; the denominator is alpha sigma dlambda/dt != 0.
    return (c.sigma * pred - c.d_sigma * x) / (c.sigma * c.d_alpha - c.alpha * c.d_sigma)


def from_x0(x0: Tensor, kind: str, x: Tensor, c: Coeffs) -> Tensor:
    """The prediction of `kind` that E[x0 | x] = x0 implies."""
    _check(kind)
    if kind == "x0":
        return x0
    eps = (x - c.alpha * x0) / c.sigma
    if kind == "eps":
        return eps
    if kind == "score":
        return -eps / c.sigma
    return c.d_alpha * x0 + c.d_sigma * eps


def convert(pred: Tensor, src: str, dst: str, x: Tensor, c: Coeffs) -> Tensor:
    """A prediction of kind src as kind dst, through x0; unchanged when src == dst."""
    _check(src)
    _check(dst)
    return pred if src == dst else from_x0(to_x0(pred, src, x, c), dst, x, c)


def _call(model: Model, x: Tensor, t: float) -> tuple[Tensor, Coeffs]:
    tt = torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)
    return model(x, tt), coeffs(model.schedule, float(t), x)


def predict(model: Model, x: Tensor, t: float, kind: str) -> Tensor:
    """One model call at time t (a float), returned as kind."""
    pred, c = _call(model, x, t)
    return convert(pred, model.parameterization, kind, x, c)


def predict_x0_eps(model: Model, x: Tensor, t: float) -> tuple[Tensor, Tensor]:
    """One model call at time t: (E[x0 | x], E[eps | x]), the pair DDPM and DDIM step with."""
    pred, c = _call(model, x, t)
    if model.parameterization == "eps":
        return to_x0(pred, "eps", x, c), pred
    x0 = to_x0(pred, model.parameterization, x, c)
    return x0, (x - c.alpha * x0) / c.sigma


@dataclass(frozen=True)
class ExactModel:
    """The exact prediction for a GaussianMixture target under a schedule: the perfectly trained network."""

    target: GaussianMixture
    """The data distribution whose noisy marginals the model knows exactly."""
    schedule: Schedule
    """Maps t to (alpha, sigma)."""
    parameterization: str = "eps"
    """What __call__ returns; samplers convert through params.py, so the choice only changes rounding."""

    def __post_init__(self):
        _check(self.parameterization)

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        c = coeffs(self.schedule, t.double(), x)  # t [B] -> [B, 1] columns
        return from_x0(self.target.denoise(x, c.alpha, c.sigma), self.parameterization, x, c)


class Counted:
    """Counts calls to a model; a call on a batch is one function evaluation (NFE) per sample."""

    def __init__(self, model: Model):
        self.model = model
        self.parameterization = model.parameterization
        self.schedule = model.schedule
        self.calls = 0

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.calls += 1
        return self.model(x, t)
