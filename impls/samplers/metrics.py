"""Sample-quality metrics against a known target; torch only, deterministic given their seeds.

Each takes samples x [N, D] and a reference (samples y [M, D] or the GaussianMixture itself); lower is better except
mean_log_likelihood.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from impls.samplers.targets import GaussianMixture

PROJECTIONS = 256  # sliced W2's Monte-Carlo error falls as 1/sqrt(256) = 6% of its spread over directions
BANDWIDTHS = (0.5, 1.0, 2.0)  # MMD kernel widths, as multiples of the reference's median pairwise distance


def sliced_w2(x: Tensor, y: Tensor, projections: int = PROJECTIONS, seed: int = 0) -> float:
    """Sliced Wasserstein-2: sqrt(mean over directions of W2^2 between the 1-D projections).

    Directions are `projections` uniform unit vectors from a CPU generator seeded with `seed`, so two calls compare
    on the same directions. 1-D W2 is exact from sorted samples when N == M, and otherwise compares at the smaller
    sample's quantile levels.
    """
    return sliced_w2_to(y, projections, seed)(x)


def _directions(dim: int, projections: int, seed: int, device) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(dim, projections, generator=g, dtype=torch.float64)
    return (theta / theta.norm(dim=0)).to(device=device)


def _sorted_projections(x: Tensor, theta: Tensor) -> Tensor:
    """[P, N]: sorting along the contiguous last dim is 2.4x faster than along dim 0 (20000 x 256: 0.44 s vs 1.06 s)."""
    return (theta.T @ x.double().to(theta.device).T).sort(dim=1).values


def _quantiles(p: Tensor, levels: int) -> Tensor:
    """p's sorted rows [P, K] at `levels` levels (i + 1/2) / levels, interpolated as torch.quantile does."""
    k = p.shape[1]
    pos = (torch.arange(levels, dtype=torch.float64, device=p.device) + 0.5) / levels * (k - 1)
    lo = pos.floor().long().clamp(max=max(k - 2, 0))
    return torch.lerp(p[:, lo], p[:, (lo + 1).clamp(max=k - 1)], pos - lo)


def _distance(px: Tensor, py: Tensor) -> float:
    """Sorted projections [P, N] and [P, M]. Unequal sizes compare at the smaller one's levels: a large reference gives
    its quantiles there, so 8 draws of 2,000 against 20,000 cost 8 x [256, 2000], not 8 x [256, 20000]."""
    n, m = px.shape[1], py.shape[1]
    if n < m:
        py = _quantiles(py, n)
    elif n > m:
        px = _quantiles(px, m)
    return float(((px - py) ** 2).mean().sqrt())


def sliced_w2_to(y: Tensor, projections: int = PROJECTIONS, seed: int = 0) -> Callable[[Tensor], float]:
    """x -> sliced_w2(x, y), with y's projections sorted once: for many x against one large reference."""
    theta = _directions(y.shape[1], projections, seed, y.device)
    py = _sorted_projections(y, theta)
    return lambda x: _distance(_sorted_projections(x, theta), py)


def reference_quantiles(y: Tensor, n: int, projections: int = PROJECTIONS, seed: int = 0) -> Tensor:
    """All that sliced_w2(x, y) reads of y for samples x of n points: y's sorted projections [P, M] at the levels a
    comparison with n points uses (n of them when n < M). Small enough to cache, unlike sorting a 10,000-point
    reference on 256 directions for every sample (0.1-0.3 s on a CPU). sliced_w2_at(x, q) gives the same value as
    sliced_w2(x, y), bit for bit."""
    py = _sorted_projections(y, _directions(y.shape[1], projections, seed, y.device))
    return _quantiles(py, n) if n < py.shape[1] else py


def sliced_w2_at(x: Tensor, quantiles: Tensor, seed: int = 0) -> float:
    """sliced_w2(x, y) from reference_quantiles(y, len(x)) (the directions come from `seed` and its row count)."""
    px = _sorted_projections(x, _directions(x.shape[1], quantiles.shape[0], seed, quantiles.device))
    n, m = px.shape[1], quantiles.shape[1]
    if n < m:
        raise ValueError(f"quantiles at {m} levels are for samples of {m} points or more, not {n}")
    return _distance(px, quantiles)


def mmd(x: Tensor, y: Tensor, bandwidths: tuple[float, ...] = BANDWIDTHS, reference: dict | None = None) -> float:
    """MMD with a sum of RBF kernels exp(-|a - b|^2 / (2 h^2)), h = b * median pairwise distance of y for b in
    bandwidths; the biased (V-statistic) estimate, so MMD(x, x) = 0 exactly and it is never negative.

    The median comes from the reference y alone, so shifting x does not move the kernel. O((N + M)^2) memory.
    `reference`: mmd_reference(y, bandwidths), y's own terms computed once for many x (bit for bit the same result).
    """
    x, y = x.double(), y.double().to(x.device)
    ref = reference if reference is not None else mmd_reference(y, bandwidths)
    med2, k_yy = (torch.as_tensor(ref[k], dtype=torch.float64, device=x.device) for k in ("med2", "k_yy"))
    d_xx, d_xy = torch.cdist(x, x) ** 2, torch.cdist(x, y) ** 2
    mmd2 = _kernel(d_xx, med2, bandwidths).mean() + k_yy - 2 * _kernel(d_xy, med2, bandwidths).mean()
    return float(mmd2.clamp(min=0).sqrt())


def mmd_reference(y: Tensor, bandwidths: tuple[float, ...] = BANDWIDTHS) -> dict[str, Tensor]:
    """What mmd(x, y) computes from y alone: the squared median pairwise distance and the mean kernel over y x y
    (the [M, M] distances are most of MMD's cost against a 1000-point reference)."""
    y = y.double()
    d_yy = torch.cdist(y, y) ** 2
    med2 = d_yy[~torch.eye(y.shape[0], dtype=torch.bool, device=y.device)].median()
    return {"med2": med2, "k_yy": _kernel(d_yy, med2, bandwidths).mean()}


def _kernel(d2: Tensor, med2: Tensor, bandwidths: tuple[float, ...]) -> Tensor:
    return sum(torch.exp(-d2 / (2 * b**2 * med2)) for b in bandwidths)


def mode_weights(x: Tensor, target: GaussianMixture) -> Tensor:
    """[K] mass each component receives: the mean of the true posterior p(k | x) over samples (soft assignment).

    Soft, not argmax: E_x[p(k | x)] = w_k exactly for x from the target, where argmax is biased wherever modes overlap.
    """
    return target.responsibilities(x.double()).mean(0)


def mode_weight_err(x: Tensor, target: GaussianMixture) -> float:
    """Total-variation distance between recovered and true mixture weights: 0.5 sum_k |w^_k - w_k|, in [0, 1]."""
    return float(0.5 * (mode_weights(x, target) - target.weights.to(x.device)).abs().sum())


def mean_log_likelihood(x: Tensor, target: GaussianMixture) -> float:
    """Mean log p(x) under the true mixture: minus the cross-entropy; for exact samples it estimates -entropy."""
    return float(target.log_prob(x.double()).mean())
