"""flash-attn varlen: flash_attn_varlen_func over the [T] stream with cu_seqlens (FlashAttention-2), when installed."""

from __future__ import annotations

import torch
from torch import Tensor

try:
    from flash_attn import flash_attn_varlen_func
except (ImportError, OSError) as e:  # OSError: a wheel built against another torch fails to load its .so
    flash_attn_varlen_func = None
    _IMPORT_ERROR = f"flash_attn is not importable ({type(e).__name__}: {e})"
else:
    _IMPORT_ERROR = ""


def available(device: torch.device | str = "cuda", dtype: torch.dtype = torch.bfloat16) -> tuple[bool, str]:
    """Whether flash_attn_varlen_func can run for this device and dtype; when not, why."""
    if flash_attn_varlen_func is None:
        return False, _IMPORT_ERROR
    if torch.device(device).type != "cuda":
        return False, f"flash_attn needs a CUDA device, got {device}"
    if dtype not in (torch.float16, torch.bfloat16):
        return False, f"flash_attn needs float16 or bfloat16, got {dtype}"
    return True, ""


def varlen_attention(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, max_seqlen: int) -> Tensor:
    """q, k, v [T, H, Dh] -> [T, H, Dh], causal within each sequence."""
    ok, why = available(q.device, q.dtype)
    if not ok:
        raise RuntimeError(why)
    cu = cu_seqlens.to(torch.int32)
    return flash_attn_varlen_func(q, k, v, cu, cu, max_seqlen, max_seqlen, causal=True)


if __name__ == "__main__":
    from impls.rmpad.check import check

    check("flash")
