"""FP8 quantizers as Triton kernels: tensorwise, rowwise, 1x128 tiles and 128x128 blocks (DeepSeek-V3 §3.3).

Each returns exactly what its reference in reference.py returns (q bit for bit, the same fp32 scales), in one pass
over x for the tiled recipes and two for the whole-tensor and whole-row ones (amax, then the cast). A quantizer is
memory bound: it reads 2 or 4 bytes an element and writes 1, so GB/s against the device's bandwidth is its figure.

The scaled value is rounded to the fp8 grid with integer ops before the cast, so the cast itself is exact. That makes
the rounding the same on every backend: Triton's interpreter casts fp32 to fp8 with round-to-nearest but drops the
carry when rounding up crosses a power of two (31.9 -> 16, not 32), which cost 6 dB of SQNR in tests on CPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from impls.fp8.reference import BLOCK, E4M3, E5M2, FP8_MAX, MIN_SCALE, scale_from_amax

# Per format: (mantissa bits, exponent of the smallest normal). E4M3: 3 bits, 2^-6; E5M2: 2 bits, 2^-14.
_FORMAT = {E4M3: (3, -6), E5M2: (2, -14)}


@triton.jit
def _round_to_fp8_grid(v, MANT: tl.constexpr, MIN_EXP: tl.constexpr):
    """v [fp32, |v| <= fp8 max] rounded to nearest-even on the fp8 grid, still in fp32."""
    # Normal range: keep MANT of fp32's 23 mantissa bits; adding half an ulp (minus one, plus the kept lsb for ties to
    # even) lets a carry run into the exponent, which is the rounding up across a power of two.
    drop: tl.constexpr = 23 - MANT
    bits = v.to(tl.int32, bitcast=True)
    bits = bits + ((1 << (drop - 1)) - 1) + ((bits >> drop) & 1)
    normal = (bits & ~((1 << drop) - 1)).to(tl.float32, bitcast=True)
    # Subnormal range (|v| < 2^MIN_EXP, fixed ulp 2^(MIN_EXP - MANT)): adding and subtracting 1.5 * 2^23 ulps makes
    # fp32's own round-to-nearest-even do it; on |v|, so that a tiny negative rounds to -0 as the cast does.
    magic: tl.constexpr = 1.5 * 2.0 ** (23 + MIN_EXP - MANT)
    sub = (tl.abs(v) + magic) - magic
    # The sign from v's sign bit, so that -0.0 and a tiny negative both give the fp8 code of -0 as torch's cast does
    # (v < 0 misses -0.0); and -1.0 * sub, not -sub: Triton 3.6 lowers unary minus to 0 - x, which makes -0 into +0.
    sub = tl.where(v.to(tl.int32, bitcast=True) < 0, -1.0 * sub, sub)
    return tl.where(tl.abs(v) < 2.0**MIN_EXP, sub, normal)


@triton.jit
def _scale_from_amax(amax, FP8_MAX_: tl.constexpr, MIN_SCALE_: tl.constexpr, POW2: tl.constexpr):
    """Same as reference.scale_from_amax: amax / fp8_max, at least the smallest normal, 1 for amax 0, 2^k with POW2."""
    scale = tl.maximum(tl.math.div_rn(amax, FP8_MAX_), MIN_SCALE_)
    if POW2:  # round up to a power of two on the bits: exact, where log2 on a GPU is an approximation
        scale = ((scale.to(tl.int32, bitcast=True) + 0x7FFFFF) & 0x7F800000).to(tl.float32, bitcast=True)
    return tl.where(amax == 0, 1.0, scale)


@triton.jit
def _abs_nan_as_inf(x):
    # max() drops NaN on a GPU, so a NaN becomes inf here and reaches the scale, where the wrapper refuses it.
    return tl.where(x != x, float("inf"), tl.abs(x))


@triton.jit
def _cast(x, scale, FP8_MAX_: tl.constexpr, MANT: tl.constexpr, MIN_EXP: tl.constexpr, OUT: tl.constexpr):
    v = tl.minimum(tl.maximum(tl.math.div_rn(x, scale), -FP8_MAX_), FP8_MAX_)
    return _round_to_fp8_grid(v, MANT, MIN_EXP).to(OUT)


@triton.jit
def _amax_kernel(x_ptr, partial_ptr, n, BLOCK_SIZE: tl.constexpr):
    offs = tl.program_id(0) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    x = tl.load(x_ptr + offs, mask=offs < n, other=0.0).to(tl.float32)
    tl.store(partial_ptr + tl.program_id(0), tl.max(_abs_nan_as_inf(x), axis=0))


@triton.jit
def _tensorwise_kernel(x_ptr, q_ptr, scale_ptr, n, BLOCK_SIZE: tl.constexpr, FP8_MAX_: tl.constexpr,
                       MANT: tl.constexpr, MIN_EXP: tl.constexpr):
    offs = tl.program_id(0) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    x = tl.load(x_ptr + offs, mask=offs < n, other=0.0).to(tl.float32)
    q = _cast(x, tl.load(scale_ptr), FP8_MAX_, MANT, MIN_EXP, q_ptr.dtype.element_ty)
    tl.store(q_ptr + offs, q, mask=offs < n)


@triton.jit
def _rowwise_kernel(x_ptr, q_ptr, scale_ptr, K, BLOCK_K: tl.constexpr, FP8_MAX_: tl.constexpr,
                    MIN_SCALE_: tl.constexpr, POW2: tl.constexpr, MANT: tl.constexpr, MIN_EXP: tl.constexpr):
    row = tl.program_id(0).to(tl.int64) * K
    amax = tl.zeros((BLOCK_K,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):  # pass 1: the row's amax
        offs = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + row + offs, mask=offs < K, other=0.0).to(tl.float32)
        amax = tl.maximum(amax, _abs_nan_as_inf(x))
    scale = _scale_from_amax(tl.max(amax, axis=0), FP8_MAX_, MIN_SCALE_, POW2)
    tl.store(scale_ptr + tl.program_id(0), scale)
    for k0 in range(0, K, BLOCK_K):  # pass 2: the cast; a row of up to 16k elements reads back from L2
        offs = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + row + offs, mask=offs < K, other=0.0).to(tl.float32)
        tl.store(q_ptr + row + offs, _cast(x, scale, FP8_MAX_, MANT, MIN_EXP, q_ptr.dtype.element_ty), mask=offs < K)


@triton.jit
def _tile_kernel(x_ptr, q_ptr, scale_ptr, M, K, KB, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_K: tl.constexpr, PER_ROW: tl.constexpr, FP8_MAX_: tl.constexpr, MIN_SCALE_: tl.constexpr,
                 POW2: tl.constexpr, MANT: tl.constexpr, MIN_EXP: tl.constexpr):
    """One program per [BLOCK_M, 128] tile: PER_ROW gives each row its own scale (1x128), else one for the tile."""
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rk = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    mask = (rm[:, None] < M) & (rk[None, :] < K)
    offs = rm[:, None].to(tl.int64) * K + rk[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)  # [BLOCK_M, 128]; padding never raises amax
    if PER_ROW:
        scale = _scale_from_amax(tl.max(_abs_nan_as_inf(x), axis=1), FP8_MAX_, MIN_SCALE_, POW2)  # [BLOCK_M]
        tl.store(scale_ptr + rm * KB + tl.program_id(1), scale, mask=rm < M)
        q = _cast(x, scale[:, None], FP8_MAX_, MANT, MIN_EXP, q_ptr.dtype.element_ty)
    else:
        scale = _scale_from_amax(tl.max(tl.max(_abs_nan_as_inf(x), axis=1), axis=0), FP8_MAX_, MIN_SCALE_, POW2)
        tl.store(scale_ptr + tl.program_id(0) * KB + tl.program_id(1), scale)
        q = _cast(x, scale, FP8_MAX_, MANT, MIN_EXP, q_ptr.dtype.element_ty)
    tl.store(q_ptr + offs, q, mask=mask)


def _prepare(x: Tensor, dtype: torch.dtype, dims: int | None = None) -> Tensor:
    if dtype not in _FORMAT:
        raise ValueError(f"dtype must be one of {list(_FORMAT)}, got {dtype}")
    if dims is not None and x.dim() != dims:
        raise ValueError(f"expected a {dims}-D tensor, got shape {tuple(x.shape)}")
    return x.contiguous()


def _consts(dtype: torch.dtype, pow2: bool | None = None) -> dict:
    mant, min_exp = _FORMAT[dtype]
    consts = {"FP8_MAX_": FP8_MAX[dtype], "MANT": mant, "MIN_EXP": min_exp}
    if pow2 is not None:
        consts.update(MIN_SCALE_=MIN_SCALE, POW2=pow2)
    return consts


def _finite(scale: Tensor) -> Tensor:
    # Scales are 1/128 of the data or less: checking them costs nothing next to the pass over x.
    if not torch.isfinite(scale).all():
        raise ValueError("cannot quantize a tensor holding inf or NaN to fp8: its scale would be inf or NaN")
    return scale


def quantize_tensorwise(x: Tensor, dtype: torch.dtype = E4M3, pow2: bool = False) -> tuple[Tensor, Tensor]:
    """One scale for the whole tensor: scale shape []."""
    x = _prepare(x, dtype)
    n, block = x.numel(), 2048
    partial = torch.zeros(max(triton.cdiv(n, block), 1), dtype=torch.float32, device=x.device)
    if n:
        _amax_kernel[(triton.cdiv(n, block),)](x, partial, n, BLOCK_SIZE=block)
    amax = _finite(partial.max())  # a few thousand partial maxima: one tiny reduction
    scale = scale_from_amax(amax, dtype, pow2)  # one scalar: the reference's own formula
    q = torch.empty(x.shape, dtype=dtype, device=x.device)
    if n:
        _tensorwise_kernel[(triton.cdiv(n, block),)](x, q, scale, n, BLOCK_SIZE=block, **_consts(dtype))
    return q, scale


def quantize_rowwise(x: Tensor, dtype: torch.dtype = E4M3, pow2: bool = False) -> tuple[Tensor, Tensor]:
    """One scale per row (over the last dim): scale shape [..., 1]."""
    x = _prepare(x, dtype)
    k = x.shape[-1] if x.dim() else 1
    rows = x.numel() // max(k, 1)
    q = torch.empty(x.shape, dtype=dtype, device=x.device)
    scale = torch.empty(*x.shape[:-1], 1, dtype=torch.float32, device=x.device)
    if x.numel():
        block_k = min(triton.next_power_of_2(k), 4096)
        _rowwise_kernel[(rows,)](x, q, scale, k, BLOCK_K=block_k, **_consts(dtype, pow2))
    return q, _finite(scale)


def _tiles(x: Tensor, dtype: torch.dtype, pow2: bool, block_m: int, per_row: bool) -> tuple[Tensor, Tensor]:
    m, k = x.shape
    kb = triton.cdiv(k, BLOCK)
    q = torch.empty(x.shape, dtype=dtype, device=x.device)
    scale = torch.empty((m if per_row else triton.cdiv(m, BLOCK)), kb, dtype=torch.float32, device=x.device)
    if x.numel():
        grid = (triton.cdiv(m, block_m), kb)
        _tile_kernel[grid](x, q, scale, m, k, kb, BLOCK_M=block_m, BLOCK_N=BLOCK, BLOCK_K=BLOCK, PER_ROW=per_row,
                           **_consts(dtype, pow2))
    return q, _finite(scale)


def quantize_1x128(x: Tensor, dtype: torch.dtype = E4M3, pow2: bool = False) -> tuple[Tensor, Tensor]:
    """Activations: one scale per 1x128 tile along the last dim (K): scale shape [..., ceil(K / 128)]."""
    x = _prepare(x, dtype)
    if x.dim() < 1:
        raise ValueError("quantize_1x128 needs at least one dim")
    flat = x.reshape(-1, x.shape[-1])
    q, scale = _tiles(flat, dtype, pow2, block_m=32, per_row=True)
    return q.reshape(x.shape), scale.reshape(*x.shape[:-1], scale.shape[-1])


def quantize_128x128(w: Tensor, dtype: torch.dtype = E4M3, pow2: bool = False) -> tuple[Tensor, Tensor]:
    """Weights [N, K]: one scale per 128x128 block: scale shape [ceil(N / 128), ceil(K / 128)]."""
    return _tiles(_prepare(w, dtype, dims=2), dtype, pow2, block_m=BLOCK, per_row=False)


QUANTIZERS = {
    "tensorwise": quantize_tensorwise,
    "rowwise": quantize_rowwise,
    "1x128": quantize_1x128,
    "128x128": quantize_128x128,
}
"""Granularity -> Triton quantizer, each a drop-in for reference.QUANTIZERS[granularity][0]."""


if __name__ == "__main__":
    from impls.fp8.reference import QUANTIZERS as REFERENCE

    device = "cuda" if torch.cuda.is_available() else "cpu"
    x = torch.randn(4096, 7168, device=device)
    for name, quantize in QUANTIZERS.items():
        q, s = quantize(x)
        rq, rs = REFERENCE[name][0](x)
        same = (q.view(torch.uint8) == rq.view(torch.uint8)).float().mean().item()
        print(f"{name:<11} q equal to the reference: {100 * same:.4f}%  scales equal: {torch.equal(s, rs)}")
