"""A training step on packed rows: positions restart per sample and attention stays inside each sample, so packing
changes nothing but the padding; or, deliberately naive, plain causal attention across the whole row (cross-
contamination), to show what that costs. The loss is the same mean next-token cross-entropy as one sample at a time.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from impls.packing.reference import Packing
from impls.rmpad.reference import Decoder, token_loss

MASKS = ("document", "naive")


def token_ids(samples: np.ndarray, positions: np.ndarray, vocab: int, seed: int = 0) -> np.ndarray:
    """int64 token ids (1..vocab-1) of the given (sample, position-in-sample) pairs: a sample's tokens are the same
    whatever row or packer it lands in, or which piece of it a row holds.

    A counter-based hash (splitmix64's finaliser of the sample's key, then of key + position) rather than a seeded
    generator per sample: the ids of thousands of samples come from a few array ops (a 4096-token row of 500 samples
    was 500 generator calls, a third of a full-size plan's packing step)."""
    with np.errstate(over="ignore"):
        key = _splitmix(np.asarray(samples, dtype=np.uint64) + np.uint64(seed * 1_000_003))
        mixed = _splitmix(key + np.asarray(positions, dtype=np.uint64))
    return (mixed % np.uint64(vocab - 1)).astype(np.int64) + 1


def _splitmix(x: np.ndarray) -> np.ndarray:
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def sample_tokens(sample: int, length: int, vocab: int, seed: int = 0) -> Tensor:
    """[length] int64 token ids of one sample (token_ids at positions 0..length-1)."""
    return torch.from_numpy(token_ids(np.full(length, sample), np.arange(length), vocab, seed))


def packed_rows(packing: Packing, rows: Sequence[int], vocab: int, device="cpu", seed: int = 0):
    """The given rows as tensors, padded to their longest row: input_ids, position_ids, document ids [R, L] and
    `real` [R, L] (False on the padded tail). Built in numpy (token_ids) and moved once: the positions and document
    ids are masks.position_ids' and masks.document_ids' (the tail its own document, its positions from 0)."""
    L = max(packing.row_len[r] for r in rows)
    ids, pos, doc = (np.zeros((len(rows), L), dtype=np.int64) for _ in range(3))
    real = np.zeros((len(rows), L), dtype=bool)
    for i, r in enumerate(rows):
        lengths = np.asarray(packing.lengths[r], dtype=np.int64)
        used = int(lengths.sum())
        entry = np.repeat(np.arange(lengths.size), lengths)  # [used] entry index per token
        offset = np.cumsum(lengths) - lengths  # each entry's first position in the row
        within = np.asarray(packing.starts[r], dtype=np.int64)[entry] + np.arange(used) - offset[entry]  # in sample
        ids[i, :used] = token_ids(np.asarray(packing.rows[r], dtype=np.int64)[entry], within, vocab, seed)
        pos[i, :used], pos[i, used:] = within, np.arange(L - used)
        doc[i, :used], doc[i, used:] = entry, lengths.size
        real[i, :used] = True
    return tuple(torch.from_numpy(t).to(device) for t in (ids, pos, doc, real))


def _attention(doc: Tensor, mask: str):
    """SDPA over [R, L, H, Dh]; `doc` [R, L] document ids. The padded tail is its own document, so no row of the
    mask is empty."""
    L = doc.shape[1]
    allowed = torch.ones(L, L, dtype=torch.bool, device=doc.device).tril()  # [L, L]
    if mask == "document":
        allowed = allowed & (doc[:, :, None] == doc[:, None, :])  # [R, L, L]
    allowed = allowed.expand(doc.shape[0], L, L)[:, None]  # [R, 1, L, L]

    def attend(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [R, H, L, Dh]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed).transpose(1, 2)

    return attend


def packed_logits(model: Decoder, ids: Tensor, pos: Tensor, doc: Tensor, mask: str = "document") -> Tensor:
    """[R, L, vocab] logits of packed rows."""
    if mask not in MASKS:
        raise ValueError(f"unknown mask {mask!r} (valid: {', '.join(MASKS)})")
    return model.logits_from(ids, pos, _attention(doc, mask))


def packed_loss(model: Decoder, ids: Tensor, pos: Tensor, doc: Tensor, real: Tensor, mask: str = "document"):
    """Mean next-token cross-entropy over targets inside each sample (a token never predicts the next sample's).

    The targets are those transformers' DataCollatorWithFlattening keeps (labels -100 at each sample's first token);
    the mean is over them all, summed in fp32 (token_loss), not per row or per sample."""
    logits = packed_logits(model, ids, pos, doc, mask)
    valid = (doc[:, 1:] == doc[:, :-1]) & real[:, 1:]  # [R, L-1]
    return token_loss(logits[:, :-1][valid], ids[:, 1:][valid])


def unpacked_loss(model: Decoder, packing: Packing, rows: Sequence[int], vocab: int, device="cpu", seed: int = 0):
    """The reference: the same samples one at a time (right-padded batches with a mask), the same mean over the same
    targets in the same order. Samples are batched by length, each padded to the next power of two rather than all to
    the longest: a long-tailed row holds hundreds of short samples, and padding them all to 512 made this reference
    most of a case's time. Padding changes no real token's value (the masked keys add exact zeros)."""
    samples = [(s, start, n) for r in rows for s, start, n in
               zip(packing.rows[r], packing.starts[r], packing.lengths[r])]
    buckets: dict[int, list[int]] = {}
    for i, (_, _, n) in enumerate(samples):
        buckets.setdefault(1 << (n - 1).bit_length(), []).append(i)
    logits: list[Tensor] = [None] * len(samples)  # per sample: [n - 1, vocab], the positions with a target
    targets: list[Tensor] = [None] * len(samples)
    for L, members in buckets.items():
        tokens = [sample_tokens(s, start + n, vocab, seed)[start:] for s, start, n in (samples[i] for i in members)]
        lengths = torch.tensor([len(t) for t in tokens])
        ids = torch.stack([F.pad(t, (0, L - len(t))) for t in tokens]).to(device)  # [b, L]
        mask = (torch.arange(L)[None, :] < lengths[:, None]).long().to(device)
        out = model.logits(ids, mask)  # [b, L, vocab]
        for j, (i, n) in enumerate(zip(members, lengths.tolist(), strict=True)):
            logits[i], targets[i] = out[j, :n - 1], ids[j, 1:n]
    return token_loss(torch.cat(logits), torch.cat(targets))


if __name__ == "__main__":
    from impls.packing import PACKERS
    from impls.rmpad.reference import DecoderConfig

    torch.manual_seed(0)
    cfg = DecoderConfig(vocab=64, d_model=32, n_heads=2, n_layers=2)
    model = Decoder(cfg)
    packing = PACKERS["ffd"]([5, 9, 3, 12, 7, 2, 8], packing_length=16, batch_size=2)
    rows = range(packing.n_rows)
    tensors = packed_rows(packing, rows, cfg.vocab)
    ref = unpacked_loss(model, packing, rows, cfg.vocab)
    for mask in MASKS:
        loss = packed_loss(model, *tensors, mask=mask)
        print(f"{mask}: packed loss {loss.item():.6f}, one sample at a time {ref.item():.6f}, "
              f"gap {abs(loss - ref).item():.2e}")
