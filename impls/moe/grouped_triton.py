"""Grouped GEMM in Triton for MoE experts (the MegaBlocks / torch._grouped_mm idea: Gale et al. 2023, "MegaBlocks"):
rows sorted by expert, one launch for all experts, forward and both backward GEMMs.

out[rows of e] = a[rows of e] @ b[e], with offs [E] int32 the cumulative row ends (offs[-1] = M). The forward and the
data gradient (da = g @ b[e]^T, b read through its strides, no copy) share one kernel: a program owns BLOCK_M rows of
one expert and BLOCK_N columns, and the (expert, first row) of every row tile is computed on the device from offs, so
nothing waits on the host. The weight gradient (db[e] = a[rows of e]^T @ g[rows of e]) is a second kernel: a program
owns a [BLOCK_K, BLOCK_N] tile of one expert and walks that expert's rows. fp32 accumulation; empty experts get zero
gradients and no tile.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _grouped_kernel(
    a_ptr, b_ptr, c_ptr, offs_ptr, tile_expert_ptr, tile_row_ptr,
    N, K, E,
    stride_am, stride_ak, stride_be, stride_bk, stride_bn, stride_cm,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    tile = tl.program_id(0)
    e = tl.load(tile_expert_ptr + tile)
    if e >= E:  # the grid is an upper bound on the tile count: spare programs exit
        return
    row0 = tl.load(tile_row_ptr + tile)
    row_end = tl.load(offs_ptr + e)
    # Address products in int64: e, the rows and program ids are int32, and at DeepSeek-V3's layer (w1 [256, 7168,
    # 4096]) one expert's weights span 29.4M elements, so in int32 e * stride_be passes 2^31 from expert 74 and wraps
    # into another expert's weights (tests/impls/test_moe_triton.py puts an expert past 2^31 elements).
    b_ptr += e.to(tl.int64) * stride_be
    rm = row0 + tl.arange(0, BLOCK_M)
    rm64 = rm.to(tl.int64)
    rn = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + rk
        a = tl.load(a_ptr + rm64[:, None] * stride_am + k[None, :] * stride_ak,
                    mask=(rm[:, None] < row_end) & (k[None, :] < K), other=0.0)
        b = tl.load(b_ptr + k[:, None] * stride_bk + rn[None, :] * stride_bn,
                    mask=(k[:, None] < K) & (rn[None, :] < N), other=0.0)
        acc += tl.dot(a, b)
    mask = (rm[:, None] < row_end) & (rn[None, :] < N)
    tl.store(c_ptr + rm64[:, None] * stride_cm + rn[None, :], acc.to(c_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _wgrad_kernel(
    a_ptr, g_ptr, db_ptr, offs_ptr,
    N, K,
    stride_am, stride_gm, stride_de, stride_dk,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    e = tl.program_id(0)
    start = tl.load(offs_ptr + e - 1, mask=e > 0, other=0)
    end = tl.load(offs_ptr + e)
    db_ptr += e.to(tl.int64) * stride_de  # int64 as in _grouped_kernel: E * K * N passes 2^31 at DeepSeek-V3's size
    rk = tl.program_id(1).to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    rn = tl.program_id(2).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    rm = tl.arange(0, BLOCK_M)
    acc = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
    for m0 in range(start, end, BLOCK_M):
        rows = (m0 + rm).to(tl.int64)
        at = tl.load(a_ptr + rows[None, :] * stride_am + rk[:, None], mask=(rows[None, :] < end) & (rk[:, None] < K),
                     other=0.0)  # [BLOCK_K, BLOCK_M]
        g = tl.load(g_ptr + rows[:, None] * stride_gm + rn[None, :], mask=(rows[:, None] < end) & (rn[None, :] < N),
                    other=0.0)  # [BLOCK_M, BLOCK_N]
        acc += tl.dot(at, g)
    mask = (rk[:, None] < K) & (rn[None, :] < N)
    tl.store(db_ptr + rk[:, None] * stride_dk + rn[None, :], acc.to(db_ptr.dtype.element_ty),
             mask=mask)


def _row_tiles(offs: Tensor, m: int, block_m: int) -> tuple[Tensor, Tensor]:
    """(expert, first row) of every BLOCK_M row tile, padded with expert E up to the bound cdiv(M, BLOCK_M) + E."""
    n_experts = offs.numel()
    ends = offs.long()
    counts = torch.diff(ends, prepend=ends.new_zeros(1))  # [E]
    tiles = (counts + block_m - 1) // block_m  # [E]
    last = tiles.cumsum(0)  # [E]: one past each expert's last tile
    ids = torch.arange(triton.cdiv(m, block_m) + n_experts, device=offs.device)
    expert = torch.searchsorted(last, ids, right=True)  # [n_tiles], E past the real tiles
    e = expert.clamp(max=n_experts - 1)
    row0 = (ends - counts)[e] + (ids - (last - tiles)[e]) * block_m
    return expert.to(torch.int32), row0.to(torch.int32)


def _check(a: Tensor, b: Tensor, offs: Tensor) -> None:
    if a.ndim != 2 or b.ndim != 3 or a.shape[1] != b.shape[1] or offs.shape != (b.shape[0],):
        raise ValueError(f"need a [M, K], b [E, K, N], offs [E]; got {tuple(a.shape)}, {tuple(b.shape)}, "
                         f"{tuple(offs.shape)}")


def _forward(a: Tensor, b: Tensor, offs: Tensor, block_m: int = 64, block_n: int = 64, block_k: int = 32) -> Tensor:
    """a [M, K] @ b[e] per expert segment -> [M, N]; b may be any strided view (the backward passes b^T)."""
    _check(a, b, offs)
    m, k = a.shape
    n = b.shape[2]
    c = torch.empty(m, n, dtype=a.dtype, device=a.device)
    if m == 0:
        return c
    expert, row0 = _row_tiles(offs, m, block_m)
    if c.is_meta:  # a plan's step (bench.plan): the kernel allocates nothing, so these buffers are all its bytes
        return c
    grid = (expert.numel(), triton.cdiv(n, block_n))
    _grouped_kernel[grid](a, b, c, offs, expert, row0, n, k, b.shape[0], a.stride(0), a.stride(1), b.stride(0),
                          b.stride(1), b.stride(2), c.stride(0),
                          BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k)  # fmt: skip
    return c


def _wgrad(a: Tensor, g: Tensor, offs: Tensor, block_m: int = 32, block_n: int = 64, block_k: int = 64) -> Tensor:
    """[E, K, N]: a[rows of e]^T @ g[rows of e] per expert."""
    a, g = a.contiguous(), g.contiguous()
    n_experts, k, n = offs.numel(), a.shape[1], g.shape[1]
    db = torch.empty(n_experts, k, n, dtype=a.dtype, device=a.device)
    if db.is_meta:  # as in _forward
        return db
    grid = (n_experts, triton.cdiv(k, block_k), triton.cdiv(n, block_n))
    _wgrad_kernel[grid](a, g, db, offs, n, k, a.stride(0), g.stride(0), db.stride(0), db.stride(1),
                        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k)  # fmt: skip
    return db


class _GroupedGemm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, offs: Tensor) -> Tensor:
        ctx.save_for_backward(a, b, offs)
        return _forward(a, b, offs)

    @staticmethod
    def backward(ctx, g: Tensor):
        a, b, offs = ctx.saved_tensors
        da = _forward(g, b.transpose(1, 2), offs) if ctx.needs_input_grad[0] else None  # [M, K]
        db = _wgrad(a, g, offs) if ctx.needs_input_grad[1] else None  # [E, K, N]
        return da, db, None


def grouped_gemm_triton(a: Tensor, b: Tensor, offs: Tensor) -> Tensor:
    """a [M, K] sorted by expert, b [E, K, N], offs [E] int32 cumulative row ends -> [M, N]; differentiable."""
    _check(a, b, offs)
    return _GroupedGemm.apply(a, b, offs.to(torch.int32))
