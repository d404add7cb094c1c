"""Sample-quality metrics against a known target; torch only, deterministic given their seeds.

Each takes samples x [N, D] and a reference (samples y [M, D] or the GaussianMixture itself); lower is better except
mean_log_likelihood.
"""

from __future__ import annotations

import math
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
    """[P, N]: sorting along the contiguous last dim is 2.4x faster than along dim 0 (20000 x 256: 0.44 s vs 1.06 s).

    On a CPU numpy sorts, in place: 12 ms for [256, 4000] float64 on one thread against torch.sort's 100 ms, most
    of a quick case's metric time. A sort's values are the same whichever algorithm orders them (ties are equal
    values), so the distance is the same, bit for bit (tests/impls/test_samplers.py compares it with torch.sort's).
    """
    p = theta.T @ x.double().to(theta.device).T
    if p.device.type != "cpu" or p.requires_grad:
        return p.sort(dim=1).values
    p.numpy().sort(axis=1)
    return p


def _quantiles(p: Tensor, levels: int) -> Tensor:
    """p's sorted rows [P, K] at `levels` levels (i + 1/2) / levels, interpolated as torch.quantile does."""
    k = p.shape[1]
    pos = (torch.arange(levels, dtype=torch.float64, device=p.device) + 0.5) / levels * (k - 1)
    lo = pos.floor().long().clamp(max=max(k - 2, 0))
    return torch.lerp(p[:, lo], p[:, (lo + 1).clamp(max=k - 1)], pos - lo)


def _distance(px: Tensor, py: Tensor) -> float:
    """Sorted projections [P, N] and [P, M]. Unequal sizes compare at the smaller one's levels: a large reference gives
    its quantiles there, so 8 draws of 2,000 against 20,000 cost 8 x [256, 2000], not 8 x [256, 20000].

    Overwrites px, which every caller sorts for it alone: (px - py) ** 2 in place is the same floats without two
    fresh [P, N] tensors, whose first touch costs a case's fresh process ~10 ms at [256, 4000]."""
    n, m = px.shape[1], py.shape[1]
    if n < m:
        py = _quantiles(py, n)
    elif n > m:
        px = _quantiles(px, m)
    return float(px.sub_(py).square_().mean().sqrt())


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

    The median comes from the reference y alone, so shifting x does not move the kernel. O(N (N + M)) time;
    memory for MMD_BLOCK rows at a time (mmd_reference: O(M^2)).
    `reference`: mmd_reference(y, bandwidths), y's own terms computed once for many x (bit for bit the same result).
    """
    x, y = x.double(), y.double().to(x.device)
    ref = reference if reference is not None else mmd_reference(y, bandwidths)
    med2, k_yy = (torch.as_tensor(ref[k], dtype=torch.float64, device=x.device) for k in ("med2", "k_yy"))
    mmd2 = _kernel_mean(x, x, med2, bandwidths) + k_yy - 2 * _kernel_mean(x, y, med2, bandwidths)
    return float(mmd2.clamp(min=0).sqrt())


def mmd_reference(y: Tensor, bandwidths: tuple[float, ...] = BANDWIDTHS) -> dict[str, Tensor]:
    """What mmd(x, y) computes from y alone: the squared median pairwise distance and the mean kernel over y x y
    (the [M, M] distances are most of MMD's cost against a 1000-point reference)."""
    y = y.double()
    d_yy = torch.cdist(y, y) ** 2
    med2 = d_yy[~torch.eye(y.shape[0], dtype=torch.bool, device=y.device)].median()
    # summed as mmd sums x x x, so that mmd(y, y) is exactly 0
    return {"med2": med2, "k_yy": _kernel_mean(y, y, med2, bandwidths)}


MMD_BLOCK = 64  # rows of a at a time: [64, 1000] float64 is 0.5 MB, and the kernel's 3 such buffers stay in cache


def _kernel_mean(a: Tensor, b: Tensor, med2: Tensor, bandwidths: tuple[float, ...]) -> Tensor:
    """The kernel's mean over a x b, MMD_BLOCK rows of a at a time. Whole [1000, 1000] passes allocate 8 MB a
    buffer, whose first touch a case's fresh process pays (~5 ms each, 6 of them an MMD); blocks reuse a few small
    buffers. Blocked sums and _kernel's powers round differently from one mean of 3 exps: MMD^2, a difference of
    such means of order 1, moves by ~1e-15, which is ~1e-12 of MMD at its smallest in a quick run (0.025; tests/
    impls/test_samplers.py)."""
    total = torch.zeros((), dtype=torch.float64, device=a.device)
    for rows in a.split(MMD_BLOCK):
        total += _kernel(torch.cdist(rows, b).square_(), med2, bandwidths).sum()  # square_: ** 2 without a copy
    return total / (a.shape[0] * b.shape[0])


def _kernel(d2: Tensor, med2: Tensor, bandwidths: tuple[float, ...]) -> Tensor:
    """sum over bandwidths b of exp(-d2 / (2 b^2 med2)), in their order. Overwrites d2, which its callers compute for
    it alone.

    One exp rather than one per bandwidth: with e = exp(-d2 / (2 w^2 med2)) at the widest w, a bandwidth b = w / 2^k
    gives e^(4^k), 2k squarings of e (BANDWIDTHS: e^16 + e^4 + e). Passes over the distances were most of MMD's
    cost, and a pass that allocates its result costs several times an in-place one: 3 exps and 9 new tensors a
    kernel, against 1 exp and 2 new tensors. The powers add a few ulp to each term (16 ulp at most for e^16).
    Bandwidths that are not distinct powers of 2 below the widest take the 3-exp sum.
    """
    widest = max(bandwidths)
    ks = [math.log2(widest / b) for b in bandwidths]
    if len(set(ks)) < len(ks) or not all(k.is_integer() for k in ks):
        return sum(torch.exp(-d2 / (2 * b**2 * med2)) for b in bandwidths)
    powers = [d2.div_(-2 * widest**2 * med2).exp_()]  # e^(4^k) at k; d2 / -c is the same float as -d2 / c
    while len(powers) <= max(ks):
        powers.append((powers[-1] * powers[-1]).square_())
    terms = [powers[int(k)] for k in ks]  # distinct tensors: summing into the first leaves the others as they are
    total = terms[0]
    for term in terms[1:]:
        total.add_(term)
    return total


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
