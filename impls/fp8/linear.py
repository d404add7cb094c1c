"""FP8 Linear for training: forward, grad_input and grad_weight GEMMs with FP8 operands, master weights kept in
high precision (DeepSeek-V3 §3.3; torchao.float8's Float8Linear).

Every GEMM here is emulated: both operands are quantized per the recipe, dequantized, multiplied in fp32 and cast to
the output dtype. A scaled FP8 GEMM with fp32 accumulation computes sum_k (qa * sa) * (qb * sb) as well, with the
scales applied per group instead of per element, so the emulation gives the same numbers up to fp32 rounding
(summation order, and one rounding of each dequantized element, none with pow2 scales). It runs on any device and
defines the accuracy of a recipe; speed is the business of the real kernels.

Which operand is quantized how, each written as [rows, K] with the contracted dim K last, so that a rowwise scale
(one per row) or a 1x128 tile (along K) factors out of every dot product:

  forward     y  = x  @ W^T    A = x   [M, K] recipe.activation   B = W   [N, K] recipe.weight
  grad_input  dx = dY @ W      A = dY  [M, N] recipe.activation   B = W^T [K, N] recipe.weight
  grad_weight dW = dY^T @ x    A = dY^T [N, M] recipe.activation  B = x^T [K, M] recipe.activation

- DeepSeek-V3 (§3.3, Fig. 7): E4M3 everywhere; dY in 1x128 tiles along N for Dgrad; W in 128x128 blocks, which are
  the same blocks whether W or W^T is read, so Dgrad reuses them; for Wgrad, x and dY are contracted over tokens, so
  both are re-tiled 128x1 (1x128 along M in the transposed layout), as the paper describes for the cached activation.
- torchao rowwise: Dgrad scales dY per row (axiswise dim -1) and W per column (axiswise dim 0); Wgrad scales dY and x
  per column (axiswise dim 0), i.e. always one scale per row of the [rows, K] operand above, pow2 scales.
- tensorwise: one scale per operand per GEMM, dynamic (amax of the current tensor), as torchao's default scaling
  (its dY format is not: see below).

dY is quantized to recipe.dtype (E4M3 in every preset) unless `grad_dtype` says otherwise; x and W stay in
recipe.dtype in every GEMM they enter. grad_dtype=E5M2 is thus the older "hybrid" recipe (more range for dY, one
mantissa bit less), as torchao's Float8LinearConfig casts grad_output to E5M2 and its inputs and weights to E4M3:
each backward GEMM then has one E5M2 and one E4M3 operand, which torch._scaled_mm takes (two E5M2 it does not).
Unlike DeepSeek-V3, which caches x in FP8 and re-tiles that copy, x is saved in
high precision and quantized afresh for Wgrad (as torchao does): one quantization error, not two.
The forward's bias is added in fp32 after the GEMM; its gradient is dY summed in high precision, no FP8.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from impls.fp8.reference import QUANTIZERS, Granularity, Recipe


def fp8_gemm(a: Tensor, b: Tensor, a_gran: Granularity, b_gran: Granularity, dtype: torch.dtype, pow2: bool,
             b_dtype: torch.dtype | None = None) -> Tensor:
    """Emulated scaled FP8 GEMM a @ b^T in fp32: a [M, K], b [N, K], each quantized with K as its last dim -> [M, N];
    a in `dtype`, b in `b_dtype` (default: `dtype`)."""
    qa, da = QUANTIZERS[a_gran]
    qb, db = QUANTIZERS[b_gran]
    return da(*qa(a, dtype, pow2)) @ db(*qb(b, dtype if b_dtype is None else b_dtype, pow2)).T


class _Fp8LinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, recipe: Recipe, grad_dtype: torch.dtype):
        ctx.save_for_backward(x, weight)
        ctx.recipe, ctx.grad_dtype, ctx.has_bias = recipe, grad_dtype, bias is not None
        x2 = x.reshape(-1, x.shape[-1])  # [M, K]
        y = fp8_gemm(x2, weight, recipe.activation, recipe.weight, recipe.dtype, recipe.pow2)  # [M, N] fp32
        if bias is not None:
            y = y + bias.float()
        return y.to(x.dtype).reshape(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, dy: Tensor):
        x, weight = ctx.saved_tensors
        r, gd = ctx.recipe, ctx.grad_dtype
        x2 = x.reshape(-1, x.shape[-1])  # [M, K]
        dy2 = dy.reshape(-1, dy.shape[-1])  # [M, N]
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = fp8_gemm(dy2, weight.T, r.activation, r.weight, gd, r.pow2, r.dtype)  # [M, K]
            dx = dx.to(x.dtype).reshape(x.shape)
        if ctx.needs_input_grad[1]:
            dw = fp8_gemm(dy2.T, x2.T, r.activation, r.activation, gd, r.pow2, r.dtype).to(weight.dtype)  # [N, K]
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = dy2.float().sum(0).to(weight.dtype)  # [N], no GEMM: kept in high precision
        return dx, dw, db, None, None


class Fp8Linear(nn.Linear):
    """nn.Linear whose three GEMMs run in (emulated) FP8 per `recipe`; parameters stay in the module's dtype."""

    def __init__(self, in_features: int, out_features: int, recipe: Recipe, bias: bool = True,
                 grad_dtype: torch.dtype | None = None, device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.recipe = recipe
        self.grad_dtype = recipe.dtype if grad_dtype is None else grad_dtype

    def forward(self, x: Tensor) -> Tensor:
        return _Fp8LinearFn.apply(x, self.weight, self.bias, self.recipe, self.grad_dtype)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, recipe={self.recipe.name}"


def convert(model: nn.Module, recipe: Recipe, keep: Callable[[str, nn.Linear], bool] | None = None,
            grad_dtype: torch.dtype | None = None) -> nn.Module:
    """Swap every nn.Linear in `model` (in place) for an Fp8Linear sharing its parameters, except those for which
    keep(qualified_name, module) is true (DeepSeek-V3 keeps e.g. the output head in high precision). Returns model."""
    for name, child in list(model.named_modules()):
        for attr, sub in list(child.named_children()):
            qualified = f"{name}.{attr}" if name else attr
            if type(sub) is not nn.Linear or (keep is not None and keep(qualified, sub)):
                continue
            new = Fp8Linear(sub.in_features, sub.out_features, recipe, sub.bias is not None, grad_dtype,
                            device="meta")
            new.weight, new.bias = sub.weight, sub.bias  # the same Parameter objects: optimizer state stays valid
            setattr(child, attr, new)
    return model
