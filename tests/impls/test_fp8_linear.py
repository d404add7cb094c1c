import dataclasses

import pytest
import torch
from torch import nn

from impls.fp8.linear import Fp8Linear, convert, fp8_gemm
from impls.fp8.reference import E4M3, E5M2, RECIPES, quantize_rowwise, quantize_tensorwise, sqnr_db
from impls.fp8.train import loss_gap, train

SHAPES = [(6, 123, 42), (256, 256, 128)]  # (M, K, N): odd (tail tiles and blocks), and whole 128-tiles


def pair(m, k, n, recipe, grad_dtype=None, seed=0):
    """A high-precision nn.Linear and an Fp8Linear with the same parameters, run forward and backward on the same
    x [M, K] and dY [M, N]; returns (ref, fp8, x_ref, x_fp8, y_ref, y_fp8)."""
    g = torch.Generator().manual_seed(seed)
    ref = nn.Linear(k, n)
    fp8 = Fp8Linear(k, n, recipe, grad_dtype=grad_dtype)
    fp8.load_state_dict(ref.state_dict())
    x = torch.randn(m, k, generator=g)
    dy = torch.randn(m, n, generator=g)
    xr, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
    yr, yf = ref(xr), fp8(xf)
    yr.backward(dy)
    yf.backward(dy)
    return ref, fp8, xr, xf, yr, yf


@pytest.mark.parametrize("m, k, n", SHAPES)
@pytest.mark.parametrize("recipe", RECIPES.values(), ids=RECIPES)
@pytest.mark.parametrize(
    "grad_dtype, grad_floor_db",
    [
        # Measured 28.1-31.4 dB for every recipe and shape on N(0, 1): x, W and dY each lose ~31.5 dB to E4M3 (see
        # test_fp8_quant), and two quantized operands per GEMM add their noise, ~3 dB less. Floor 25 dB, as issue 5's.
        (None, 25.0),
        # E5M2 for dY, one mantissa bit fewer (x and W stay E4M3): measured 24.5-27.9 dB on the gradients (forward
        # unchanged).
        (E5M2, 19.0),
    ],
    ids=["e4m3", "e5m2_grads"],
)
def test_forward_and_grads_sqnr(m, k, n, recipe, grad_dtype, grad_floor_db):
    ref, fp8, xr, xf, yr, yf = pair(m, k, n, recipe, grad_dtype)
    assert yf.dtype == yr.dtype and xf.grad.dtype == xr.grad.dtype and fp8.weight.grad.dtype == ref.weight.dtype
    assert sqnr_db(yr, yf) >= 25.0  # measured 28.1-29.1 dB, forward is E4M3 in every recipe
    assert sqnr_db(xr.grad, xf.grad) >= grad_floor_db
    assert sqnr_db(ref.weight.grad, fp8.weight.grad) >= grad_floor_db
    torch.testing.assert_close(fp8.bias.grad, ref.bias.grad)  # sum of dY over tokens, no GEMM, kept in fp32


def test_leading_dims_and_dtype():
    lin = Fp8Linear(123, 42, RECIPES["deepseek_v3"], dtype=torch.bfloat16)
    x = torch.randn(2, 3, 123, dtype=torch.bfloat16, requires_grad=True)
    y = lin(x)  # [2, 3, 42]
    y.sum().backward()
    assert y.shape == (2, 3, 42) and y.dtype == torch.bfloat16
    assert x.grad.shape == x.shape and lin.weight.grad.dtype == torch.bfloat16


@pytest.mark.parametrize("recipe", RECIPES.values(), ids=RECIPES)
def test_zero_batch(recipe):
    lin = Fp8Linear(123, 42, recipe)
    x = torch.zeros(6, 123, requires_grad=True)
    y = lin(x)
    torch.testing.assert_close(y, lin.bias.detach().expand(6, 42), rtol=0, atol=0)
    y.sum().backward()
    for grad in (x.grad, lin.weight.grad, lin.bias.grad):
        assert torch.isfinite(grad).all()
    assert (lin.weight.grad == 0).all()  # dW = dY^T x with x = 0
    # and an all-zero dY: every scale is 1, not 0, so no 0/0 in the backward GEMMs
    x = torch.randn(6, 123, requires_grad=True)
    lin.zero_grad()
    (lin(x) * 0).sum().backward()
    assert (x.grad == 0).all() and (lin.weight.grad == 0).all()


def test_convert_keeps_parameters_and_trains():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(123, 64), nn.GELU(), nn.Linear(64, 42), nn.Sequential(nn.Linear(42, 7)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = list(model.parameters())
    convert(model, RECIPES["deepseek_v3"], keep=lambda name, _: name == "3.0")
    assert isinstance(model[0], Fp8Linear) and isinstance(model[2], Fp8Linear)
    assert type(model[3][0]) is nn.Linear  # kept in high precision
    assert all(a is b for a, b in zip(params, model.parameters()))  # same Parameters: an optimizer stays valid
    assert model.state_dict().keys() == before.keys()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, target = torch.randn(16, 123), torch.randn(16, 7)
    losses = []
    for _ in range(5):
        loss = nn.functional.mse_loss(model(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert not torch.equal(model[0].weight, before["0.weight"])


@pytest.mark.parametrize("quantize", [quantize_tensorwise, quantize_rowwise])
def test_emulation_matches_scaled_mm(quantize):
    # The emulated GEMM is what a scaled FP8 GEMM with fp32 accumulation computes, up to fp32 rounding.
    a, b = torch.randn(64, 96), torch.randn(48, 96)  # [M, K], [N, K]
    (qa, sa), (qb, sb) = quantize(a, E4M3), quantize(b, E4M3)
    try:
        ref = torch._scaled_mm(qa, qb.T, sa, sb.reshape(1, -1) if sb.dim() else sb, out_dtype=torch.float32)
    except (RuntimeError, NotImplementedError) as e:
        pytest.skip(f"torch._scaled_mm with these scales is not supported on this build/device: {e}")
    gran = "tensorwise" if quantize is quantize_tensorwise else "rowwise"
    torch.testing.assert_close(fp8_gemm(a, b, gran, gran, E4M3, False), ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("pow2", [False, True])
def test_grad_dtype_quantizes_dy_alone(pow2):
    # the "hybrid" recipe: dY in E5M2, W (Dgrad) and x (Wgrad) in E4M3 as in the forward; torch._scaled_mm takes one
    # E5M2 operand, not two
    recipe = dataclasses.replace(RECIPES["tensorwise"], pow2=pow2)
    lin = Fp8Linear(96, 48, recipe, bias=False, grad_dtype=E5M2)
    x, dy = torch.randn(64, 96, requires_grad=True), torch.randn(64, 48)
    lin(x).backward(dy)

    def deq(t, dtype):
        q, scale = quantize_tensorwise(t, dtype, pow2)
        return q.float() * scale

    torch.testing.assert_close(x.grad, deq(dy, E5M2) @ deq(lin.weight.detach(), E4M3), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lin.weight.grad, deq(dy, E5M2).T @ deq(x.detach(), E4M3), rtol=1e-5, atol=1e-5)


def test_training_loss_gap():
    ref = train(None, steps=50, seed=0)
    assert ref[-1] < 0.6 * ref[0]  # measured 5.71 -> 3.32: the reference learns
    for name, recipe in RECIPES.items():
        final, mean = loss_gap(ref, train(recipe, steps=50, seed=0))
        # Measured after 50 steps (seeds 0-3): final 0.18/0.03/0.05% (seed 0) and at most 0.18% for any seed; mean
        # 0.03-0.04%. Floor 1%: the gap is this small because every GEMM is E4M3 with an fp32 accumulator.
        assert final < 0.01 and mean < 0.005, (name, final, mean)


def test_loss_gap():
    assert loss_gap([2.0, 1.0], [2.0, 1.01]) == pytest.approx((0.01, 0.005))
    with pytest.raises(ValueError):
        loss_gap([1.0], [1.0, 2.0])
