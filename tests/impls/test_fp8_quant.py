import math

import pytest
import torch

from impls.fp8.reference import (
    E4M3,
    E5M2,
    FP8_MAX,
    QUANTIZERS,
    RECIPES,
    Recipe,
    dequantize_1x128,
    outlier_activations,
    quantize_1x128,
    quantize_128x128,
    quantize_rowwise,
    quantize_tensorwise,
    round_trip,
    scale_from_amax,
    sqnr_db,
)
from tests.optional import CUDA

ALL = tuple(QUANTIZERS)


def normal(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "granularity, dtype, floor_db",
    [
        # E4M3 keeps 3 mantissa bits: relative rounding error <= 2^-4, uniform over a binade -> ~31.5 dB measured on
        # N(0, 1) at every granularity (dynamic scaling puts the bulk in E4M3's normal range); floor 25 dB per issue 5.
        *((g, E4M3, 25.0) for g in ALL),
        # E5M2 has 2 mantissa bits, one fewer: ~6 dB lower, measured ~25.6 dB.
        *((g, E5M2, 22.0) for g in ALL),
    ],
)
def test_sqnr_floor_normal(granularity, dtype, floor_db):
    x = normal(256, 512)
    assert sqnr_db(x, round_trip(x, granularity, dtype)) >= floor_db


def test_finer_is_not_worse_and_e5m2_below_e4m3():
    x = normal(256, 512)
    db = {(g, d): sqnr_db(x, round_trip(x, g, d)) for g in ALL for d in (E4M3, E5M2)}
    # Each row's amax element is represented exactly, so a finer scale can only add exact points; 0.05 dB of slack
    # because which other elements round up or down still shifts with the scale.
    assert db["rowwise", E4M3] >= db["tensorwise", E4M3] - 0.05
    assert db["1x128", E4M3] >= db["rowwise", E4M3] - 0.05
    for g in ALL:
        # One mantissa bit fewer costs ~6 dB (measured 5.9-6.0); require at least 4.
        assert db[g, E5M2] <= db[g, E4M3] - 4.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fine_grained_wins_on_outlier_channels(seed):
    # [512, 1024] N(0, 1) with 4 channels x100 (issue 5's accuracy input). Measured E4M3 SQNR, seeds 0-2:
    # tensorwise 31.5-31.6, rowwise 35.5-35.8, 1x128 40.7-41.7, 128x128 31.7-31.9 dB. The outliers carry ~97% of
    # the energy, and a tile's amax element is exact, so 1x128 (most tiles hold one outlier) wins ~9-10 dB. 128x128 wins
    # little here: a channel outlier runs through every row block of its column, and at 100x the bulk still sits in
    # E4M3's normal range (2^15 wide) under a tensorwise scale; test_128x128_keeps_small_blocks shows where it matters.
    x = outlier_activations(512, 1024, seed=seed)
    db = {g: sqnr_db(x, round_trip(x, g)) for g in ALL}
    assert db["1x128"] >= db["tensorwise"] + 8.0
    assert db["rowwise"] >= db["tensorwise"] + 3.0
    assert db["128x128"] >= db["tensorwise"]  # measured +0.04 to +0.32 dB: no margin to assert


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_128x128_keeps_small_blocks(seed):
    # One 128x128 block 1e-5 times the rest: under one tensorwise scale it falls below E4M3's smallest subnormal
    # (2^-9 of a scale ~ amax / 448) and mostly flushes to zero. Measured SQNR of that block, seeds 0-2: tensorwise
    # 4.8-5.1 dB, rowwise 8.8-8.9 dB, 128x128 31.5-31.6 dB (as good as any N(0, 1) block).
    w = normal(256, 256, seed=seed)
    w[:128, :128] *= 1e-5
    small = {g: sqnr_db(w[:128, :128], round_trip(w, g)[:128, :128]) for g in ("tensorwise", "128x128")}
    assert small["tensorwise"] < 10.0
    assert small["128x128"] >= 25.0


@pytest.mark.parametrize("shape", [(6, 42), (123, 431), (129, 257), (128, 128), (1, 1)])
@pytest.mark.parametrize("dtype", [E4M3, E5M2])
def test_odd_shapes(shape, dtype):
    m, k = shape
    x = normal(m, k)
    expected = {
        "tensorwise": (),
        "rowwise": (m, 1),
        "1x128": (m, math.ceil(k / 128)),
        "128x128": (math.ceil(m / 128), math.ceil(k / 128)),
    }
    for g, (quantize, dequant) in QUANTIZERS.items():
        q, scale = quantize(x, dtype)
        assert q.dtype == dtype and q.shape == x.shape
        assert scale.dtype == torch.float32 and tuple(scale.shape) == expected[g], g
        assert dequant(q, scale).shape == x.shape
        # (1, 1) is one element, its own amax, so exact; the rest clear E5M2's floor above.
        assert sqnr_db(x, dequant(q, scale)) >= 22.0, g


def test_1x128_tail_tile_scaled_over_its_own_elements():
    # K = 130: the second tile holds 2 elements; its scale must come from those, not from the first tile.
    x = torch.ones(3, 130)
    x[:, :128] = 1000.0
    q, scale = quantize_1x128(x)
    torch.testing.assert_close(scale[:, 1], torch.full((3,), 1 / 448))
    assert (dequantize_1x128(q, scale)[:, 128:] == 1.0).all()


def test_1x128_leading_dims():
    x = normal(2, 5, 300)  # [B, T, K]
    q, scale = quantize_1x128(x)
    assert scale.shape == (2, 5, 3)
    assert sqnr_db(x, dequantize_1x128(q, scale)) >= 25.0


@pytest.mark.parametrize("granularity", ALL)
@pytest.mark.parametrize("dtype", [E4M3, E5M2])
def test_pow2_scales(granularity, dtype):
    x = normal(129, 257) * 3.7
    quantize, dequant = QUANTIZERS[granularity]
    q, scale = quantize(x, dtype, pow2=True)
    _, plain = quantize(x, dtype)  # amax / fp8_max
    mantissa, _ = torch.frexp(scale)
    assert (mantissa == 0.5).all(), "pow2 scales must be exact powers of two"
    assert (scale >= plain).all() and (scale < 2 * plain).all()
    assert q.float().abs().max() <= FP8_MAX[dtype]
    assert sqnr_db(x, dequant(q, scale)) >= (25.0 if dtype == E4M3 else 22.0)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
@pytest.mark.parametrize("dtype", [E4M3, E5M2])
def test_scales_are_amax_over_fp8_max_correctly_rounded_on_every_device(device, dtype):
    # A float64 quotient of two floats, rounded once to fp32, is the correctly rounded fp32 quotient. CUDA divides by a
    # CPU scalar as a multiply by its reciprocal, one ulp off for about half of these amax (6.3056078 among them): the
    # scale, and so the Triton kernels' equality with the reference, must not depend on the device.
    amax = torch.cat([torch.tensor([6.305607795715332]), normal(4096).abs() * 100]).to(device)
    expected = (amax.double().cpu() / FP8_MAX[dtype]).float()
    assert torch.equal(scale_from_amax(amax, dtype, pow2=False).cpu(), expected)
    pow2 = scale_from_amax(amax, dtype, pow2=True).cpu()
    assert torch.equal(pow2, torch.exp2(torch.ceil(torch.log2(expected.double()))).float())  # exact in float64


@pytest.mark.parametrize("granularity", ALL)
@pytest.mark.parametrize("pow2", [False, True])
def test_all_zero(granularity, pow2):
    x = torch.zeros(6, 200)
    quantize, dequant = QUANTIZERS[granularity]
    q, scale = quantize(x, E4M3, pow2)
    assert torch.isfinite(scale).all() and (scale > 0).all()
    assert (dequant(q, scale) == 0).all()


@pytest.mark.parametrize("granularity", ALL)
def test_zero_tiles_next_to_nonzero(granularity):
    # Zero tiles get scale 1 while their neighbours get amax / 448; neither may become 0 or inf.
    x = torch.zeros(256, 256)
    x[:128, :128] = normal(128, 128)
    quantize, dequant = QUANTIZERS[granularity]
    q, scale = quantize(x)
    assert torch.isfinite(scale).all() and (scale > 0).all()
    y = dequant(q, scale)
    assert (y[128:, 128:] == 0).all() and torch.isfinite(y).all()


@pytest.mark.parametrize("granularity", ALL)
@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_non_finite_raises(granularity, bad):
    x = normal(6, 42)
    x[3, 17] = bad
    with pytest.raises(ValueError, match="inf or NaN"):
        QUANTIZERS[granularity][0](x)


def test_denormal_amax_gives_finite_scale():
    # amax 1e-44 (an fp32 denormal): amax / 448 rounds to 0 in fp32, which would divide by zero.
    x = torch.full((4, 4), 1e-44)
    for quantize, dequant in QUANTIZERS.values():
        q, scale = quantize(x)
        assert (scale > 0).all() and torch.isfinite(dequant(q, scale)).all()


@pytest.mark.parametrize("dtype", [E4M3, E5M2])
def test_amax_lands_on_fp8_max_without_clipping(dtype):
    x = normal(129, 257) * 123.4
    m = FP8_MAX[dtype]
    assert torch.finfo(dtype).max == m
    for quantize, _ in QUANTIZERS.values():
        q, _ = quantize(x, dtype)
        qf = q.float()
        assert not torch.isnan(qf).any()
        assert qf.abs().max() == m
        flat = x.flatten().abs().argmax()
        assert qf.flatten()[flat].abs() == m


def test_low_precision_input():
    x = normal(64, 256).bfloat16()
    q, scale = quantize_1x128(x)
    assert sqnr_db(x.float(), dequantize_1x128(q, scale)) >= 25.0


def test_weight_must_be_2d():
    with pytest.raises(ValueError, match="2-D"):
        quantize_128x128(normal(2, 3, 4))


def test_recipes():
    assert set(RECIPES) == {"tensorwise", "rowwise", "deepseek_v3"}
    ds = RECIPES["deepseek_v3"]
    assert (ds.activation, ds.weight, ds.dtype) == ("1x128", "128x128", E4M3)
    x, w = normal(6, 300), normal(130, 300, seed=1)
    assert ds.quantize_activation(x)[1].shape == (6, 3)
    assert ds.quantize_weight(w)[1].shape == (2, 3)
    assert RECIPES["tensorwise"].quantize_weight(w)[1].shape == ()
    assert quantize_rowwise(x)[1].shape == (6, 1) and quantize_tensorwise(x)[1].shape == ()
    with pytest.raises(AssertionError):
        Recipe("bad", "1x64", "128x128")
    with pytest.raises(AssertionError):
        Recipe("bad", "1x128", "128x128", dtype=torch.bfloat16)
    with pytest.raises(Exception):
        ds.pow2 = True  # frozen
