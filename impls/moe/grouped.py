"""Grouped dispatch for MoE experts: sort the T x K routed slots by expert, run each expert projection as one grouped
GEMM over the sorted rows, and scatter back (the MegaBlocks layout, Gale et al. 2023; torchtitan's MoE uses
torch._grouped_mm the same way). Equal to reference.loop_dispatch up to summation order.

GEMM backends, each a function (a [M, K] sorted by expert, b [E, K, N], offs [E] int32 cumulative row ends) -> [M, N]:
- grouped_mm: torch._grouped_mm. One CUTLASS kernel on CUDA sm90+ in bf16 (torch 2.8+); elsewhere (sm80, fp32/fp16,
  and CPU from torch 2.9) torch runs its own per-group fallback. Needs 16-byte-aligned row strides (K and N a multiple
  of 8 in bf16, 4 in fp32) and fp32/fp16/bf16 operands.
- triton: grouped_triton.grouped_gemm_triton, one launch per GEMM, forward and backward (CUDA; the interpreter on CPU).
- torch: a loop of plain matmuls over the sorted segments, for any device, dtype and shape.
Capacity policy as the reference: no token is dropped.
"""

from __future__ import annotations

import torch
from torch import Tensor

from impls.moe.reference import RoutedExperts, swiglu

BACKENDS = ("grouped_mm", "triton", "torch")
GROUPED_MM_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def grouped_mm_unsupported(a: Tensor, b: Tensor) -> str | None:
    """Why torch._grouped_mm cannot take these operands here, or None when it can."""
    if not hasattr(torch, "_grouped_mm"):
        return f"torch {torch.__version__} has no torch._grouped_mm (added in 2.8)"
    before_2_9 = tuple(int(v) for v in torch.__version__.split(".")[:2]) < (2, 9)
    if a.device.type == "cpu" and before_2_9:
        return f"torch {torch.__version__} has no CPU kernel for torch._grouped_mm (2.9+)"
    if before_2_9 and a.dtype != torch.bfloat16:
        return f"torch {torch.__version__}'s torch._grouped_mm takes bf16 only (fp32 and fp16 from 2.9)"
    if a.device.type not in ("cpu", "cuda", "meta"):  # meta: shapes only (its meta kernel), for memory planning
        return f"torch._grouped_mm has no kernel for {a.device.type}"
    if a.device.type == "cuda" and torch.cuda.get_device_capability(a.device) < (8, 0):
        return "torch._grouped_mm needs CUDA sm80 or newer"
    if a.dtype not in GROUPED_MM_DTYPES or b.dtype != a.dtype:
        return f"torch._grouped_mm takes bf16, fp16 or fp32 operands of one dtype, got {a.dtype} and {b.dtype}"
    align = 16 // a.element_size()
    if a.shape[-1] % align or b.shape[-1] % align:
        return (f"torch._grouped_mm needs 16-byte-aligned rows: K={a.shape[-1]} and N={b.shape[-1]} must be "
                f"multiples of {align} in {str(a.dtype).removeprefix('torch.')}")
    return None


def grouped_mm_fused(device: torch.device | str, dtype: torch.dtype) -> bool:
    """Whether torch._grouped_mm runs as one fused kernel (CUDA sm90+, bf16) rather than torch's per-group loop."""
    device = torch.device(device)
    return device.type == "cuda" and dtype == torch.bfloat16 and torch.cuda.get_device_capability(device) >= (9, 0)


def gemm_grouped_mm(a: Tensor, b: Tensor, offs: Tensor) -> Tensor:
    reason = grouped_mm_unsupported(a, b)
    if reason:
        raise ValueError(reason)
    return torch._grouped_mm(a, b, offs=offs)


def gemm_triton(a: Tensor, b: Tensor, offs: Tensor) -> Tensor:
    from impls.moe.grouped_triton import grouped_gemm_triton

    return grouped_gemm_triton(a, b, offs)


def gemm_torch(a: Tensor, b: Tensor, offs: Tensor) -> Tensor:
    ends = offs.long()
    counts = torch.diff(ends, prepend=ends.new_zeros(1)).tolist()  # one host sync: segment sizes
    return torch.cat([seg @ b[e] for e, seg in enumerate(a.split(counts))])


GEMMS = {"grouped_mm": gemm_grouped_mm, "triton": gemm_triton, "torch": gemm_torch}


def auto_backend(a: Tensor, b: Tensor) -> str:
    """grouped_mm where it takes the operands, else the Triton kernel on CUDA, else the torch loop. Chosen per GEMM:
    w1 [E, D, 2H] and w2 [E, H, D] differ in alignment (H = 6 in fp32: 2H = 12 aligned, K = H = 6 not)."""
    if grouped_mm_unsupported(a, b) is None:
        return "grouped_mm"
    return "triton" if a.device.type == "cuda" else "torch"


def sort_by_expert(indices: Tensor, n_experts: int) -> tuple[Tensor, Tensor, Tensor]:
    """(order [T*K]: slots sorted by expert, stable; tok [T*K]: the token of each sorted slot; offs [E] int32)."""
    flat = indices.reshape(-1)  # [T*K], slot t*K + k
    order = flat.argsort(stable=True)
    offs = torch.bincount(flat, minlength=n_experts).cumsum(0).to(torch.int32)
    return order, order // indices.shape[1], offs


def grouped_dispatch(x: Tensor, indices: Tensor, weights: Tensor, experts: RoutedExperts,
                     backend: str = "auto") -> Tensor:
    """loop_dispatch with two grouped GEMMs: x [T, D], indices and weights [T, K] -> [T, D]."""
    if backend != "auto" and backend not in GEMMS:
        raise ValueError(f"backend must be auto or one of {', '.join(GEMMS)}, got {backend!r}")
    T, K = indices.shape
    order, tok, offs = sort_by_expert(indices, experts.n)
    xs = x[tok]  # [T*K, D] sorted by expert
    h = _gemm(backend, xs, experts.w1)(xs, experts.w1, offs)  # [T*K, 2H]
    a = swiglu(h)  # [T*K, H]
    y = _gemm(backend, a, experts.w2)(a, experts.w2, offs)  # [T*K, D]
    unsort = torch.empty_like(order)
    unsort[order] = torch.arange(order.numel(), device=order.device)
    # a weighted sum over each token's K rows rather than index_add: the same order on every device, no atomics
    return (y[unsort].view(T, K, -1) * weights.unsqueeze(-1)).sum(1)


def _gemm(backend: str, a: Tensor, b: Tensor):
    return GEMMS[auto_backend(a, b) if backend == "auto" else backend]


def dispatcher(backend: str):
    """grouped_dispatch bound to one backend, for MoE(dispatch=...)."""
    if backend != "auto" and backend not in GEMMS:
        raise ValueError(f"backend must be auto or one of {', '.join(GEMMS)}, got {backend!r}")

    def dispatch(x, indices, weights, experts):
        return grouped_dispatch(x, indices, weights, experts, backend)

    return dispatch


if __name__ == "__main__":
    from impls.moe.reference import loop_dispatch

    torch.manual_seed(0)
    experts = RoutedExperts(16, 64, 32)
    x, idx = torch.randn(256, 64), torch.randint(0, 16, (256, 4))
    w = torch.rand(256, 4)
    ref = loop_dispatch(x, idx, w, experts)
    for backend in ("grouped_mm", "torch"):
        diff = (grouped_dispatch(x, idx, w, experts, backend) - ref).abs().max().item()
        print(f"{backend:<10} max |grouped - loop| = {diff:.2e}")
