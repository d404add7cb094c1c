"""Analytic targets: isotropic Gaussian mixtures, whose noisy marginals are again mixtures with closed-form scores.

With x_t = alpha x0 + sigma eps, component k of p_t is N(alpha mu_k, (alpha^2 s_k^2 + sigma^2) I), so the exact score,
the exact denoiser E[x0 | x_t] and everything derived from them (params.py) are closed-form at every time. Methods take
(alpha, sigma) rather than t: a target knows no schedule; ExactModel (params.py) maps t to (alpha, sigma).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


def _col(v, x: Tensor) -> Tensor:
    """alpha or sigma as a [B, 1] or [1, 1] column in x's dtype: a float, a [B] or a [B, 1] tensor."""
    return torch.as_tensor(v, dtype=x.dtype, device=x.device).reshape(-1, 1)


@dataclass(frozen=True)
class GaussianMixture:
    """sum_k weights[k] N(means[k], stds[k]^2 I); float64 parameters, cast to the query's dtype on use."""

    weights: Tensor
    """[K] mixture weights, positive, summing to 1."""
    means: Tensor
    """[K, D] component means."""
    stds: Tensor
    """[K] isotropic standard deviation of each component, positive."""

    def __post_init__(self):
        k, d = self.means.shape
        assert self.weights.shape == (k,) and self.stds.shape == (k,), "weights and stds need one entry per mean"
        assert (self.weights > 0).all() and abs(float(self.weights.sum()) - 1) < 1e-9, "weights must be a distribution"
        assert (self.stds > 0).all(), "stds must be positive"

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def noisy(self, alpha: float, sigma: float) -> GaussianMixture:
        """The marginal of x_t = alpha x0 + sigma eps: another mixture with the same weights."""
        stds = (alpha**2 * self.stds**2 + sigma**2).sqrt()
        return GaussianMixture(self.weights, alpha * self.means, stds)

    def _parts(self, x: Tensor, alpha, sigma) -> tuple[Tensor, Tensor, Tensor]:
        """log w_k + log N_k(x) [B, K], component variances [B or 1, K], offsets x - alpha mu_k [B, K, D]."""
        a, s = _col(alpha, x), _col(sigma, x)
        w, mu, std = (p.to(dtype=x.dtype, device=x.device) for p in (self.weights, self.means, self.stds))
        var = a**2 * std**2 + s**2
        diff = x[:, None, :] - a[:, :, None] * mu  # [B, K, D]: direct differences, no |x|^2 - 2x.mu cancellation
        logn = -0.5 * (diff**2).sum(-1) / var - 0.5 * self.dim * torch.log(2 * math.pi * var)
        return w.log() + logn, var, diff

    def log_prob(self, x: Tensor, alpha=1.0, sigma=0.0) -> Tensor:
        """log p_t(x) [B] of x [B, D]; alpha=1, sigma=0 (the defaults) is the data density."""
        return torch.logsumexp(self._parts(x, alpha, sigma)[0], dim=-1)

    def responsibilities(self, x: Tensor, alpha=1.0, sigma=0.0) -> Tensor:
        """p(k | x_t) [B, K]."""
        return torch.softmax(self._parts(x, alpha, sigma)[0], dim=-1)

    def score(self, x: Tensor, alpha, sigma) -> Tensor:
        """grad_x log p_t(x) [B, D] = -sum_k p(k | x) (x - alpha mu_k) / var_k."""
        logj, var, diff = self._parts(x, alpha, sigma)
        r = torch.softmax(logj, dim=-1)
        return -((r / var)[:, :, None] * diff).sum(1)

    def denoise(self, x: Tensor, alpha, sigma) -> Tensor:
        """E[x0 | x_t = x] [B, D] = sum_k p(k | x) (mu_k + alpha s_k^2 / var_k (x - alpha mu_k))."""
        logj, var, diff = self._parts(x, alpha, sigma)
        r = torch.softmax(logj, dim=-1)
        std = self.stds.to(dtype=x.dtype, device=x.device)
        gain = _col(alpha, x) * std**2 / var  # [B, K]: the per-component Wiener gain
        mu = self.means.to(dtype=x.dtype, device=x.device)
        return (r[:, :, None] * (mu + gain[:, :, None] * diff)).sum(1)

    def sample(self, n: int, generator: torch.Generator | None = None, dtype=torch.float32) -> Tensor:
        """n exact samples [n, D], drawn on CPU in float64 from `generator`, then cast."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return (self.means[k] + self.stds[k, None] * z).to(dtype)


def ring(modes: int = 8, radius: float = 2.0, std: float = 0.25) -> GaussianMixture:
    """Modes on a circle in 2-D with weights proportional to 1..modes, so a sampler that drops or evens out modes shows.

    Neighbours sit 2 r sin(pi / 8) = 1.53 apart at r=2, 6.1 stds: separated, yet close enough that a coarse sampler
    can smear mass between them.
    """
    angle = torch.arange(modes, dtype=torch.float64) * (2 * math.pi / modes)
    means = radius * torch.stack([angle.cos(), angle.sin()], dim=1)
    weights = torch.arange(1, modes + 1, dtype=torch.float64)
    return GaussianMixture(weights / weights.sum(), means, torch.full((modes,), std, dtype=torch.float64))


def random_mixture(dim: int, modes: int, seed: int, radius: float = 2.0) -> GaussianMixture:
    """Seeded mixture in `dim` dimensions: means of norm ~radius in random directions, stds in [0.2, 0.4].

    Random directions are near-orthogonal in high dimension, so means sit ~radius * sqrt(2) = 2.8 apart, >= 7 stds
    along the line that separates two modes.
    """
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(modes, dim, generator=g, dtype=torch.float64) * (radius / math.sqrt(dim))
    weights = 0.5 + torch.rand(modes, generator=g, dtype=torch.float64)  # unequal: ratios up to 3
    stds = 0.2 + 0.2 * torch.rand(modes, generator=g, dtype=torch.float64)
    return GaussianMixture(weights / weights.sum(), means, stds)


TARGETS = {
    "gmm2d": lambda: ring(),
    "gmm16": lambda: random_mixture(16, modes=6, seed=16),
    "gmm64": lambda: random_mixture(64, modes=4, seed=64),
}


def make_target(name: str) -> GaussianMixture:
    """A named target; the same mixture on every call and machine (fixed construction or CPU-seeded draws)."""
    if name not in TARGETS:
        raise ValueError(f"unknown target {name!r}; choose one of {sorted(TARGETS)}")
    return TARGETS[name]()
