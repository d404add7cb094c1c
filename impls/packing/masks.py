"""What attention needs to train on a packed row without cross-contamination: per-sample position ids, cu_seqlens
(flash-attn varlen), document ids (FlexAttention mask_mod), and a block-diagonal causal document mask; plus the
naive plain-causal mask across the whole row, which lets every sample see the ones packed before it.

Masks are boolean, True where a query may attend to a key (the F.scaled_dot_product_attention convention).
A row's padded tail is its own document: no real token attends to it, and its queries still see themselves, so no
mask row is all False (SDPA gives NaN for one).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def _tail(lengths: Sequence[int], row_len: int | None) -> int:
    used = sum(lengths)
    row_len = used if row_len is None else row_len
    assert used <= row_len, f"{used} tokens do not fit a row of {row_len}"
    return row_len - used


def document_ids(lengths: Sequence[int], row_len: int | None = None) -> Tensor:
    """[row_len] int64: entry index per token; the padded tail gets len(lengths)."""
    sizes = [*lengths, _tail(lengths, row_len)]
    return torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))


def position_ids(lengths: Sequence[int], row_len: int | None = None, starts: Sequence[int] | None = None) -> Tensor:
    """[row_len] int64 restarting at each entry (at its start in the sample for a split piece; 0 for the tail).

    For whole samples these are transformers' DataCollatorWithFlattening position_ids (position_ids_start=0)."""
    doc = document_ids(lengths, row_len)
    first = torch.tensor([0, *lengths]).cumsum(0)  # [n + 1] row offset of each entry and of the tail
    base = torch.tensor([*(starts or [0] * len(lengths)), 0])  # [n + 1]
    return torch.arange(doc.numel()) - first[doc] + base[doc]


def cu_seqlens(lengths: Sequence[int]) -> Tensor:
    """[n + 1] int32 cumulative lengths from 0 (flash_attn_varlen_func's layout); the padded tail is not a sequence."""
    return torch.tensor([0, *lengths]).cumsum(0).to(torch.int32)


def causal_mask(row_len: int) -> Tensor:
    """[row_len, row_len] bool lower triangle: the naive mask, attending across sample boundaries."""
    return torch.ones(row_len, row_len, dtype=torch.bool).tril()


def document_causal_mask(lengths: Sequence[int], row_len: int | None = None) -> Tensor:
    """[row_len, row_len] bool: causal and within one document, i.e. block-diagonal causal."""
    doc = document_ids(lengths, row_len)
    return (doc[:, None] == doc[None, :]) & causal_mask(doc.numel())


if __name__ == "__main__":
    lengths, row_len = [3, 1, 2], 8
    print("position_ids", position_ids(lengths, row_len).tolist(), "cu_seqlens", cu_seqlens(lengths).tolist())
    doc, naive = document_causal_mask(lengths, row_len), causal_mask(row_len)
    print(f"row of {lengths} + 2 padding: document mask keeps {int(doc.sum())} of the naive mask's {int(naive.sum())}")
    print(doc.int())
