"""Portable varlen attention: one SDPA call per cu_seqlens segment, causal within it; trains on every device."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def varlen_attention(
    q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, max_seqlen: int, causal: bool = True
) -> Tensor:
    """q, k, v [T, H, Dh] -> [T, H, Dh]; each token attends only within its own sequence."""
    # One host sync for the bounds, then B small kernels: no pad FLOPs, but launch cost grows with B.
    # Each segment goes in as [1, H, n, Dh]: SDPA's fused kernels (flash, memory-efficient; CPU's and CUDA's) take
    # 4-D inputs only, and a 3-D [H, n, Dh] one takes the math path, which materialises the n x n scores.
    bounds = cu_seqlens.tolist()
    outs = []
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        if end > start:
            qs, ks, vs = (t[start:end].transpose(0, 1).unsqueeze(0) for t in (q, k, v))  # [1, H, n, Dh]
            out = F.scaled_dot_product_attention(qs, ks, vs, is_causal=causal)
            outs.append(out[0].transpose(0, 1))  # [n, H, Dh]
    return torch.cat(outs) if outs else torch.empty_like(q)


if __name__ == "__main__":
    from impls.rmpad.check import check

    check("segments")
