"""Reference FP8 quantizers in plain torch: tensorwise, rowwise, and DeepSeek-V3's 1x128 / 128x128 tiles (§3.3).

Every quantizer returns (q, scale) with x ~= q.float() * scale: scale = amax / fp8_max over its group, so the group's
largest magnitude lands exactly on fp8_max and nothing is clipped. Shapes need not be multiples of 128: a tail tile
or block is scaled over the elements it has.

Conventions: scale is the dequantizing multiplier, as DeepSeek-V3's inference/kernel.py act_quant (s = amax / 448)
and torch._scaled_mm's scale_a / scale_b take it; torchao keeps the reciprocal (amax_to_scale: fp8_max / amax).
Scaling is current (dynamic): the amax of the tensor being quantized, no amax history (transformer_engine's
DelayedScaling keeps one). q = (x / scale) clamped to [-fp8_max, fp8_max], then torch's cast (round to nearest
even). Formats are float8_e4m3fn (max 448) and float8_e5m2 (max 57344), not the fnuz variants.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

E4M3 = torch.float8_e4m3fn
E5M2 = torch.float8_e5m2
FP8_MAX = {E4M3: 448.0, E5M2: 57344.0}  # torch.finfo(dtype).max; E4M3 has 3 mantissa bits, E5M2 2 bits and more range
BLOCK = 128  # tile and block edge: DeepSeek-V3 §3.3, one scale per 128 elements of K matches its 128-wide MMA promotion
# Smallest normal fp32: amax / 448 of a denormal amax would round to a zero scale, and x / 0 to inf.
MIN_SCALE = torch.finfo(torch.float32).tiny

Granularity = Literal["tensorwise", "rowwise", "1x128", "128x128"]


def _check(x: Tensor, dtype: torch.dtype) -> Tensor:
    if dtype not in FP8_MAX:
        raise ValueError(f"dtype must be one of {list(FP8_MAX)}, got {dtype}")
    finite = torch.isfinite(x).all()  # on meta (memory planning: shapes only) the check allocates, nothing to read
    if x.device.type != "meta" and not finite:
        raise ValueError("cannot quantize a tensor holding inf or NaN to fp8: its scale would be inf or NaN")
    return x.float()


def scale_from_amax(amax: Tensor, dtype: torch.dtype, pow2: bool) -> Tensor:
    """fp32 scale per group from its amax: amax / fp8_max correctly rounded, at least MIN_SCALE, 1 for an all-zero
    group (never 0), rounded up to 2^k when pow2.

    The same bits on every device. The divisor is a tensor on amax's device: CUDA divides by a CPU scalar as a multiply
    by its reciprocal (torch's div_true_kernel_cuda), one ulp off for some amax. The power of two is taken from the
    float's bits, not from log2, which a GPU may round.

    torchao's amax_to_scale returns fp8_max / max(amax, 1e-12), computed in fp64, and with round_scales_to_power_of_2
    rounds that down to 2^k: its reciprocal is this pow2 scale (equal on 1e5 random amaxes over 1e-6..1e6); an
    all-zero group gets fp8_max / 1e-12 there and 1 here, q = 0 either way."""
    scale = (amax / torch.full_like(amax, FP8_MAX[dtype])).clamp(min=MIN_SCALE)
    if pow2:
        # Rounding up keeps x / scale <= fp8_max; a power of two makes the scaling multiply exact in any float format.
        # The smallest 2^k >= scale (a normal float): carry any mantissa bit into the exponent, then clear the mantissa.
        scale = ((scale.view(torch.int32) + 0x7FFFFF) & 0x7F800000).view(torch.float32)
    return torch.where(amax == 0, torch.ones_like(scale), scale)


def _cast(x: Tensor, scale: Tensor, dtype: torch.dtype) -> Tensor:
    # x / (amax / max) can come out one ulp above max in fp32; the clamp saturates whatever the cast would do with it
    # (torch 2.13's CPU cast saturates e4m3fn, inf included, to 448, but casts 1e6 to e5m2 inf).
    m = FP8_MAX[dtype]
    return (x / scale).clamp(-m, m).to(dtype)


def quantize_tensorwise(x: Tensor, dtype: torch.dtype = E4M3, pow2: bool = False) -> tuple[Tensor, Tensor]:
    """One scale for the whole tensor: scale shape []."""
    x = _check(x, dtype)
    scale = scale_from_amax(x.abs().amax() if x.numel() else x.new_zeros(()), dtype, pow2)
    return _cast(x, scale, dtype), scale


def quantize_rowwise(x: Tensor, dtype: torch.dtype = E4M3, pow2: bool = False) -> tuple[Tensor, Tensor]:
    """One scale per row (over the last dim): scale shape [..., 1], the layout torch._scaled_mm takes for A."""
    x = _check(x, dtype)
    scale = scale_from_amax(x.abs().amax(dim=-1, keepdim=True), dtype, pow2)
    return _cast(x, scale, dtype), scale


def dequantize(q: Tensor, scale: Tensor) -> Tensor:
    """Inverse of quantize_tensorwise and quantize_rowwise: their scales broadcast against q."""
    return q.float() * scale


def _pad_to(x: Tensor, dim: int, block: int) -> Tensor:
    # Zero padding never raises a tile's amax, so a tail tile is scaled over its real elements only.
    pad = -x.shape[dim] % block
    if pad == 0:
        return x
    shape = list(x.shape)
    shape[dim] = pad
    return torch.cat([x, x.new_zeros(shape)], dim=dim)


def quantize_1x128(x: Tensor, dtype: torch.dtype = E4M3, pow2: bool = False) -> tuple[Tensor, Tensor]:
    """Activations: one scale per 1x128 tile along the last dim (K): scale shape [..., ceil(K / 128)]."""
    x = _check(x, dtype)
    if x.dim() < 1:
        raise ValueError("quantize_1x128 needs at least one dim")
    k = x.shape[-1]
    tiles = _pad_to(x, -1, BLOCK).unflatten(-1, (-1, BLOCK))  # [..., K / 128, 128]
    scale = scale_from_amax(tiles.abs().amax(dim=-1), dtype, pow2)  # [..., K / 128]
    q = _cast(tiles, scale.unsqueeze(-1), dtype).flatten(-2)[..., :k]
    return q, scale


def dequantize_1x128(q: Tensor, scale: Tensor) -> Tensor:
    k = q.shape[-1]
    return q.float() * scale.repeat_interleave(BLOCK, dim=-1)[..., :k]


def quantize_128x128(w: Tensor, dtype: torch.dtype = E4M3, pow2: bool = False) -> tuple[Tensor, Tensor]:
    """Weights [N, K]: one scale per 128x128 block: scale shape [ceil(N / 128), ceil(K / 128)]."""
    w = _check(w, dtype)
    if w.dim() != 2:
        raise ValueError(f"quantize_128x128 takes a 2-D weight [N, K], got shape {tuple(w.shape)}")
    n, k = w.shape
    padded = _pad_to(_pad_to(w, 0, BLOCK), 1, BLOCK)
    nb, kb = padded.shape[0] // BLOCK, padded.shape[1] // BLOCK
    blocks = padded.reshape(nb, BLOCK, kb, BLOCK)  # [N / 128, 128, K / 128, 128]
    scale = scale_from_amax(blocks.abs().amax(dim=(1, 3)), dtype, pow2)  # [N / 128, K / 128]
    q = _cast(blocks, scale[:, None, :, None], dtype).reshape(nb * BLOCK, kb * BLOCK)[:n, :k]
    return q, scale


def dequantize_128x128(q: Tensor, scale: Tensor) -> Tensor:
    n, k = q.shape
    full = scale.repeat_interleave(BLOCK, dim=0).repeat_interleave(BLOCK, dim=1)[:n, :k]
    return q.float() * full


Quantizer = Callable[..., tuple[Tensor, Tensor]]
QUANTIZERS: dict[str, tuple[Quantizer, Callable[[Tensor, Tensor], Tensor]]] = {
    "tensorwise": (quantize_tensorwise, dequantize),
    "rowwise": (quantize_rowwise, dequantize),
    "1x128": (quantize_1x128, dequantize_1x128),
    "128x128": (quantize_128x128, dequantize_128x128),
}
"""Granularity -> (quantize, dequantize)."""


def round_trip(x: Tensor, granularity: Granularity, dtype: torch.dtype = E4M3, pow2: bool = False) -> Tensor:
    quantize, dequant = QUANTIZERS[granularity]
    return dequant(*quantize(x, dtype, pow2))


def sqnr_db(ref: Tensor, approx: Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB, 20 log10(|ref| / |ref - approx|), as torchao's compute_error."""
    ref, approx = ref.double(), approx.double()
    noise = torch.linalg.vector_norm(ref - approx).item()
    if noise == 0:
        return math.inf
    return 20 * math.log10(torch.linalg.vector_norm(ref).item() / noise)


@dataclass(frozen=True)
class Recipe:
    """How a training step's FP8 GEMM operands are scaled."""

    name: str
    """Preset name, as it appears in records and figures."""
    activation: Granularity
    """Scaling granularity of activations (GEMM operand A, [M, K])."""
    weight: Granularity
    """Scaling granularity of weights (GEMM operand B, [N, K])."""
    dtype: torch.dtype = E4M3
    """FP8 format of both operands."""
    pow2: bool = False
    """Round every scale up to a power of two, so scaling is exact and loses at most one bit of range."""

    def __post_init__(self):
        assert self.activation in QUANTIZERS, f"unknown activation granularity {self.activation!r}"
        assert self.weight in QUANTIZERS, f"unknown weight granularity {self.weight!r}"
        assert self.dtype in FP8_MAX, f"dtype must be one of {list(FP8_MAX)}, got {self.dtype}"

    def quantize_activation(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return QUANTIZERS[self.activation][0](x, self.dtype, self.pow2)

    def quantize_weight(self, w: Tensor) -> tuple[Tensor, Tensor]:
        return QUANTIZERS[self.weight][0](w, self.dtype, self.pow2)


RECIPES = {
    r.name: r
    for r in (
        # dY in E4M3 too, where torchao's tensorwise casts grad_output to E5M2 (grad_dtype=E5M2 matches it)
        Recipe("tensorwise", "tensorwise", "tensorwise"),
        # torchao's rowwise recipe rounds scales to powers of two.
        Recipe("rowwise", "rowwise", "rowwise", pow2=True),
        Recipe("deepseek_v3", "1x128", "128x128"),  # DeepSeek-V3 §3.3: E4M3 for every operand
    )
}


def outlier_activations(m: int, k: int, n_channels: int = 4, factor: float = 100.0, seed: int = 0) -> Tensor:
    """N(0, 1) activations [M, K] with a few channels (columns) `factor` times larger, as seen in LLM activations."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g)
    channels = torch.randperm(k, generator=g)[:n_channels]
    x[:, channels] *= factor
    return x


if __name__ == "__main__":
    torch.manual_seed(0)
    normal = torch.randn(512, 1024)
    outliers = outlier_activations(512, 1024)
    print(f"{'granularity':<12} {'dtype':<14} {'N(0,1) dB':>10} {'outliers dB':>12}")
    for dtype in (E4M3, E5M2):
        for g in QUANTIZERS:
            a, b = (sqnr_db(x, round_trip(x, g, dtype)) for x in (normal, outliers))
            print(f"{g:<12} {str(dtype).removeprefix('torch.'):<14} {a:>10.2f} {b:>12.2f}")
