"""Padding removal (flash-attn bert_padding style): gather real tokens of [B, L, ...] into a [T, ...] stream and back.

Both directions are index_select / index_put, so autograd flows through them and pad positions get zero gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def unpad_input(hidden: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor, Tensor, int]:
    """hidden [B, L, ...], mask [B, L] -> (hidden [T, ...], indices [T] into B*L, cu_seqlens [B+1] int32, max_seqlen).

    cu_seqlens describes contiguous sequences, so the mask must be right (or left) padded, as from make_batch.
    The first four outputs of flash_attn.bert_padding.unpad_input, computed the same way (newer flash-attn also
    returns seqused and takes unused_mask): indices int64, row-major over the flattened [B * L]; cu_seqlens int32,
    [0, n_0, n_0 + n_1, ..., T]; max_seqlen a Python int (a row with no real token gives a zero-length sequence).
    """
    B, L = attention_mask.shape
    seqlens = attention_mask.sum(dim=-1, dtype=torch.int32)  # [B]
    indices = torch.nonzero(attention_mask.flatten(), as_tuple=False).flatten()  # [T]
    max_seqlen = int(seqlens.max().item()) if B else 0  # one host sync, as in flash-attn
    cu_seqlens = F.pad(torch.cumsum(seqlens, dim=0, dtype=torch.int32), (1, 0))  # [B+1]
    return hidden.reshape(B * L, *hidden.shape[2:]).index_select(0, indices), indices, cu_seqlens, max_seqlen


def pad_input(hidden: Tensor, indices: Tensor, batch: int, seqlen: int) -> Tensor:
    """hidden [T, ...] -> [batch, seqlen, ...] with zeros at the positions indices does not name."""
    out = hidden.new_zeros(batch * seqlen, *hidden.shape[1:])
    return out.index_put((indices,), hidden).view(batch, seqlen, *hidden.shape[1:])


def position_ids_from_cu_seqlens(cu_seqlens: Tensor, total: int) -> Tensor:
    """Positions [T] restarting at 0 at each sequence start: [0, 1, 2, 0, 1, ...] for cu_seqlens [0, 3, 5, ...]."""
    seqlens = cu_seqlens.diff().long()  # [B]
    starts = torch.repeat_interleave(cu_seqlens[:-1].long(), seqlens, output_size=total)  # [T]
    return torch.arange(total, device=cu_seqlens.device) - starts


if __name__ == "__main__":
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
    x = torch.randn(3, 4, 2) * mask[..., None]
    xu, idx, cu, mx = unpad_input(x, mask)
    back = pad_input(xu, idx, 3, 4)
    pos = position_ids_from_cu_seqlens(cu, xu.shape[0]).tolist()
    print(f"T={xu.shape[0]} cu_seqlens={cu.tolist()} max_seqlen={mx} positions={pos} round trip {torch.equal(back, x)}")
