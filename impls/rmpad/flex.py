"""FlexAttention varlen: one flex_attention call over the [T] stream with a causal document mask from cu_seqlens."""

from __future__ import annotations

import functools
import warnings

import torch
from torch import Tensor
from torch.nn.attention.flex_attention import create_block_mask, flex_attention
from torch.utils._python_dispatch import _disable_current_modes


@functools.cache
def _compiled_flex():
    # Eager flex_attention materialises the [T, T] scores; compiled, it is a fused kernel that skips masked blocks.
    # T changes every batch: after the first recompile torch marks it dynamic instead of compiling per length.
    return torch.compile(flex_attention)


def document_block_mask(cu_seqlens: Tensor, total: int):
    """BlockMask for [T] queries and keys: causal, and a query sees only keys of its own sequence."""
    doc = torch.searchsorted(cu_seqlens[1:].long(), torch.arange(total, device=cu_seqlens.device), right=True)  # [T]

    def causal_document(b, h, q_idx, kv_idx):
        return (doc[q_idx] == doc[kv_idx]) & (q_idx >= kv_idx)

    # Compiled mask construction works block by block instead of evaluating all T*T pairs at once.
    return create_block_mask(
        causal_document, None, None, total, total, device=cu_seqlens.device, _compile=cu_seqlens.is_cuda
    )


def varlen_attention(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, max_seqlen: int) -> Tensor:
    """q, k, v [T, H, Dh] -> [T, H, Dh], causal within each sequence. On CPU: forward only (see supports_backward)."""
    T = q.shape[0]
    block_mask = document_block_mask(cu_seqlens, T)
    q, k, v = (t.transpose(0, 1).unsqueeze(0) for t in (q, k, v))  # [1, H, T, Dh]
    if q.is_cuda:
        out = _compiled_flex()(q, k, v, block_mask=block_mask)
    else:
        with warnings.catch_warnings():
            # Eager (unfused) flex is the only CPU path here; its "call under torch.compile" advice is for GPUs.
            warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
            out = flex_attention(q, k, v, block_mask=block_mask)
    return out[0].transpose(0, 1)  # [T, H, Dh]


@functools.cache
def _probe_backward(device_type: str) -> tuple[bool, str]:
    try:
        # a real call, outside any dispatch mode watching the caller (bench plan's trackers, when it plans a case for
        # this device): FlexAttention's higher-order op refuses a mode it has no rule for, and the answer is kept
        with warnings.catch_warnings(), _disable_current_modes():
            warnings.simplefilter("ignore")
            x = torch.zeros(1, 1, 1, 16, device=device_type, requires_grad=True)
            flex_attention(x, x, x)
    except (NotImplementedError, RuntimeError) as e:  # 2.13 on CPU: "FlexAttention does not support backward on CPU"
        return False, str(e).split(". ")[0].rstrip(".")
    return True, ""


def supports_backward(device: torch.device | str) -> tuple[bool, str]:
    """Whether a FlexAttention training step can run on this device; when not, torch's own reason."""
    return _probe_backward(torch.device(device).type)


if __name__ == "__main__":
    from impls.rmpad.check import check

    check("flex")
