"""The unpadded model path: token-wise layers on the [T, d] stream of real tokens, varlen attention per backend.

Same nn.Module and weights as the padded reference (reference.Decoder); only the forward path differs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from impls.rmpad.reference import Decoder, token_loss
from impls.rmpad.unpad import position_ids_from_cu_seqlens, unpad_input

# q, k, v [T, H, Dh], cu_seqlens [B+1] int32, max_seqlen -> [T, H, Dh], causal within each sequence.
VarlenAttention = Callable[[Tensor, Tensor, Tensor, Tensor, int], Tensor]


def _resolve(backend: str | VarlenAttention) -> VarlenAttention:
    if callable(backend):
        return backend
    from impls.rmpad import BACKENDS

    if backend not in BACKENDS:
        raise ValueError(f"unknown rmpad backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    return BACKENDS[backend]


def logits_unpadded(
    model: Decoder, input_ids: Tensor, attention_mask: Tensor, backend: str | VarlenAttention
) -> tuple[Tensor, Tensor, Tensor]:
    """(logits [T, vocab], input_ids [T], cu_seqlens [B+1]) for the real tokens of a right-padded [B, L] batch."""
    attention = _resolve(backend)
    ids, _, cu_seqlens, max_seqlen = unpad_input(input_ids.unsqueeze(-1), attention_mask)
    ids = ids.squeeze(-1)  # [T]
    position_ids = position_ids_from_cu_seqlens(cu_seqlens, ids.shape[0])  # [T]
    logits = model.logits_from(ids, position_ids, lambda q, k, v: attention(q, k, v, cu_seqlens, max_seqlen))
    return logits, ids, cu_seqlens


def forward_unpadded(
    model: Decoder, input_ids: Tensor, attention_mask: Tensor, backend: str | VarlenAttention
) -> Tensor:
    """The reference loss (mean next-token cross-entropy over real targets), computed on real tokens only."""
    logits, ids, cu_seqlens = logits_unpadded(model, input_ids, attention_mask, backend)
    valid = torch.ones_like(ids, dtype=torch.bool)  # [T]
    valid[cu_seqlens[1:].long() - 1] = False  # a sequence's last token has no next token in the same sequence
    return token_loss(logits[valid], ids.roll(-1)[valid])


def supports(
    backend: str, device: torch.device | str, dtype: torch.dtype = torch.float32, backward: bool = True
) -> tuple[bool, str]:
    """Whether a backend runs here (forward, plus backward when asked); when not, the reason to record."""
    from impls.rmpad import flash, flex, nested

    if backend == "segments":
        return True, ""
    if backend == "flex":
        return flex.supports_backward(device) if backward else (True, "")
    if backend == "nested":
        return nested.supports(device, causal=True, dtype=dtype, backward=backward)
    if backend == "flash":
        return flash.available(device, dtype)
    _resolve(backend)  # raises the ValueError naming the valid choices
    return True, ""
