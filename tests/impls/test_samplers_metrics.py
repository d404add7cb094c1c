"""The samplers' quality metrics: sanity on known shifts, and the fast paths (numpy sort, cached reference terms, one
exp per kernel) against the straightforward computation they replace."""

import math

import pytest
import torch

from impls.samplers.metrics import (
    BANDWIDTHS,
    _kernel,
    mean_log_likelihood,
    mmd,
    mmd_reference,
    mode_weight_err,
    reference_quantiles,
    sliced_w2,
    sliced_w2_at,
)
from impls.samplers.targets import TARGETS, make_target

F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("target", list(TARGETS))
def test_metrics_sanity(target):
    tg = make_target(target)
    x = tg.sample(1000, gen(0), F64)
    assert sliced_w2(x, x) == 0.0 and mmd(x, x) == 0.0
    shifts = (0.05, 0.2, 1.0)
    sw = [sliced_w2(x + d, x) for d in shifts]
    mm = [mmd(x + d, x) for d in shifts]
    assert 0 < sw[0] < sw[1] < sw[2] and 0 < mm[0] < mm[1] < mm[2]
    # A shift by d in every coordinate projects on a random unit direction with mean square d^2: SW2 = d, up to the
    # Monte-Carlo error of 256 projections (~2% in 2-D, less in more dims).
    for d, v in zip(shifts, sw):
        assert v == pytest.approx(d, rel=0.1)
    # Exact samples: sampling noise alone, measured 0.012 (gmm64) to 0.022 (gmm2d) at n = 1000.
    assert mode_weight_err(x, tg) < 0.05
    assert sliced_w2(tg.sample(300, gen(1), F64), x) < 0.25  # unequal sizes go through quantiles


@pytest.mark.parametrize("n", [300, 1000, 2500])
def test_sliced_w2_from_cached_reference_quantiles_is_bit_for_bit(n):
    # the suite caches the reference's quantiles at n levels rather than sorting 10,000 projections a case: fewer
    # sample points than the reference, as many, and more
    tg = make_target("gmm16")
    y, x = tg.sample(1000, gen(0), F64), tg.sample(n, gen(1), F64) + 0.1
    q = reference_quantiles(y, n)
    assert q.shape == (256, min(n, 1000)) and sliced_w2_at(x, q) == sliced_w2(x, y) > 0
    with pytest.raises(ValueError, match="for samples of 1000 points or more"):
        sliced_w2_at(x[:999], reference_quantiles(y, 1000))
    assert mmd(x, y, reference=mmd_reference(y)) == mmd(x, y) > 0  # MMD's reference terms, cached alike


def _sliced_w2_torch_sort(x, y, projections=256, seed=0):
    """sliced_w2 the straightforward way: torch.sort of every projection, torch.quantile at the smaller sample's
    levels."""
    theta = torch.randn(x.shape[1], projections, generator=gen(seed), dtype=F64)
    theta = theta / theta.norm(dim=0)
    px, py = ((theta.T @ v.double().T).sort(dim=1).values for v in (x, y))
    n, m = px.shape[1], py.shape[1]
    if n != m:  # the smaller sample's levels, as torch.quantile interpolates
        levels = (torch.arange(min(n, m), dtype=F64) + 0.5) / min(n, m)
        big = py if n < m else px
        q = torch.quantile(big, levels, dim=1, interpolation="linear").T
        px, py = (px, q) if n < m else (q, py)
    return float(((px - py) ** 2).mean().sqrt())


@pytest.mark.parametrize("n", [300, 1000, 2500])
def test_sliced_w2_sorts_as_torch_sort_does(n):
    # numpy sorts the projections on a CPU (8x faster than torch.sort), in place; a sort's values do not depend on
    # its algorithm, so the distance is the same float. Rounded points give ties, which must not matter either.
    tg = make_target("gmm16")
    y, x = tg.sample(1000, gen(0), F64), tg.sample(n, gen(1), F64) + 0.1
    assert sliced_w2(x, y) == pytest.approx(_sliced_w2_torch_sort(x, y), rel=1e-15, abs=0)
    q = reference_quantiles(y, n)
    kept = q.clone()
    assert sliced_w2_at(x, q) == sliced_w2(x, y) and torch.equal(q, kept)  # sorts in place, but its own projections
    if n == 1000:  # the suite's case: equal sizes or cached quantiles, compared bit for bit
        assert sliced_w2(x, y) == _sliced_w2_torch_sort(x, y)
        ties = (x * 4).round() / 4
        assert sliced_w2(ties, y) == _sliced_w2_torch_sort(ties, y)


def _mmd_three_exps(x, y, bandwidths=BANDWIDTHS):
    """mmd the straightforward way: one exp per bandwidth over whole distance matrices, then their means."""
    x, y = x.double(), y.double()
    d_yy = torch.cdist(y, y) ** 2
    med2 = d_yy[~torch.eye(len(y), dtype=torch.bool)].median()

    def kernel(d2):
        return sum(torch.exp(-d2 / (2 * b**2 * med2)) for b in bandwidths)

    mmd2 = kernel(torch.cdist(x, x) ** 2).mean() + kernel(d_yy).mean() - 2 * kernel(torch.cdist(x, y) ** 2).mean()
    return float(mmd2.clamp(min=0).sqrt())


@pytest.mark.parametrize("target", list(TARGETS))
def test_mmd_agrees_with_one_exp_per_bandwidth(target):
    # mmd takes one exp and squares it (e^16 + e^4 + e for BANDWIDTHS) and sums by blocks of rows. Each term moves by a
    # few ulp and the sums round in another order: MMD^2, a difference of kernel means of order 1, moves by ~1e-15, so
    # MMD by ~1e-12 relative at the smallest values a quick run sees (0.025; these draws: 0.04 and up, 2e-13).
    tg = make_target(target)
    y = tg.sample(1000, gen(2), F64)
    for seed, shift in ((1, 0.0), (4, 0.01), (6, 1.0)):
        x = tg.sample(1000, gen(seed), F64) + shift
        want = _mmd_three_exps(x, y)
        assert mmd(x, y) == pytest.approx(want, rel=1e-12), (seed, shift)
        assert mmd(x, y, reference=mmd_reference(y)) == mmd(x, y)
        # other bandwidths: one alone, out of order, and one that is no power of 2 below the widest (3-exp sum)
        for bandwidths in ((1.0,), (1.0, 0.25, 0.5), (0.3, 1.0)):
            got = mmd(x, y, bandwidths)
            assert abs(got**2 - _mmd_three_exps(x, y, bandwidths) ** 2) < 1e-14, (seed, shift, bandwidths)


def test_kernel_powers_are_the_exps_they_replace():
    d2, med2 = torch.rand(200, 300, generator=gen(0), dtype=F64) * 20, torch.tensor(1.3, dtype=F64)
    for b in (0.5, 1.0, 2.0, 0.3):  # one bandwidth: exactly the one exp
        assert torch.equal(_kernel(d2.clone(), med2, (b,)), torch.exp(-d2 / (2 * b**2 * med2)))
    want = sum(torch.exp(-d2 / (2 * b**2 * med2)) for b in BANDWIDTHS)
    got = _kernel(d2.clone(), med2, BANDWIDTHS)
    assert torch.allclose(got, want, rtol=1e-14, atol=0)  # e^16 carries 16 times e's rounding, and a few squarings


def test_mean_log_likelihood_prefers_the_target():
    tg = make_target("gmm2d")
    x = tg.sample(2000, gen(0), F64)
    ll = mean_log_likelihood(x, tg)
    assert mean_log_likelihood(1.3 * x, tg) < ll - 0.5 and mean_log_likelihood(0.8 * x, tg) < ll
    # For exact samples, the mean log-likelihood estimates -entropy; the ring's modes barely overlap, so the entropy
    # is that of the weights plus a 2-D Gaussian's: H(w) + log(2 pi e s^2).
    w = tg.weights
    entropy = float(-(w * w.log()).sum()) + math.log(2 * math.pi * math.e * 0.25**2)
    assert ll == pytest.approx(-entropy, abs=0.05)
