"""Blockwise FP8 GEMM in Triton: DeepSeek-V3's 1x128 x 128x128 scaling (§3.3) with per-128-of-K FP32 promotion.

Each program owns a [BLOCK_M, BLOCK_N] output tile and walks K in 128-wide chunks: one fp8 tl.dot per chunk into an
fp32 partial, scaled there by the chunk's activation-tile scales [BLOCK_M] and weight-block scale, then added to an
fp32 accumulator. Its expected result is gemm.blockwise_reference.

Operands and scales are laid out as DeepSeek-V3's inference/kernel.py fp8_gemm takes them: a [M, K] and b [N, K]
fp8, a_s [M, ceil(K / 128)] and b_s [ceil(N / 128), ceil(K / 128)] fp32 dequantizing multipliers (reference.py),
c = a @ b^T; that kernel also adds tl.dot(a, b) * a_s * b_s per 128-wide K chunk.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from impls.fp8.reference import BLOCK


@triton.jit
def _blockwise_kernel(
    a_ptr, b_ptr, sa_ptr, sb_ptr, c_ptr,
    M, N, K, KB,
    stride_am, stride_bn, stride_cm,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    nb = (pid_n * BLOCK_N) // BLOCK_K  # BLOCK_N divides 128: the whole tile shares one weight block row
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kb in range(0, KB):
        k = kb * BLOCK_K + rk
        a = tl.load(a_ptr + rm[:, None] * stride_am + k[None, :], mask=(rm[:, None] < M) & (k[None, :] < K), other=0.0)
        b = tl.load(b_ptr + rn[:, None] * stride_bn + k[None, :], mask=(rn[:, None] < N) & (k[None, :] < K), other=0.0)
        partial = tl.dot(a, tl.trans(b), out_dtype=tl.float32)  # [BLOCK_M, BLOCK_N]
        sa = tl.load(sa_ptr + rm * KB + kb, mask=rm < M, other=0.0)  # [BLOCK_M]
        sb = tl.load(sb_ptr + nb * KB + kb)
        acc += partial * (sa[:, None] * sb)
    mask = (rm[:, None] < M) & (rn[None, :] < N)
    tl.store(c_ptr + rm[:, None] * stride_cm + rn[None, :], acc.to(c_ptr.dtype.element_ty), mask=mask)


def blockwise_fp8_matmul(
    qa: Tensor, sa: Tensor, qb: Tensor, sb: Tensor, out_dtype: torch.dtype = torch.bfloat16,
    block_m: int = 64, block_n: int = 64,
) -> Tensor:  # fmt: skip
    """qa [M, K] fp8 with sa [M, ceil(K / 128)]; qb [N, K] fp8 with sb [ceil(N / 128), ceil(K / 128)] -> [M, N]."""
    m, k = qa.shape
    n = qb.shape[0]
    kb = triton.cdiv(k, BLOCK)
    if qb.shape[1] != k or sa.shape != (m, kb) or sb.shape != (triton.cdiv(n, BLOCK), kb):
        raise ValueError(f"bad blockwise operands: {qa.shape} {sa.shape} x {qb.shape} {sb.shape}")
    if BLOCK % block_n:
        raise ValueError(f"block_n must divide {BLOCK}, got {block_n}")
    qa, qb = qa.contiguous(), qb.contiguous()
    sa, sb = sa.float().contiguous(), sb.float().contiguous()
    c = torch.empty(m, n, dtype=out_dtype, device=qa.device)
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    _blockwise_kernel[grid](qa, qb, sa, sb, c, m, n, k, kb, qa.stride(0), qb.stride(0), c.stride(0),
                            BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=BLOCK)  # fmt: skip
    return c
