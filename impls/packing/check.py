"""Checks a packer: every token placed exactly once, no row over capacity; prints efficiency and packer speed.

Used by each packer's `python -m impls.packing.<packer>`; numpy only.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from impls.packing.reference import Packing


def lognormal_lengths(n: int = 2000, max_len: int = 512, seed: int = 0) -> np.ndarray:
    """Long-tailed lengths like chat data: median 96, mean ~140; ~3% clipped to max_len (at 512)."""
    rng = np.random.default_rng(seed)
    return np.clip(np.rint(rng.lognormal(np.log(96), 0.9, n)), 1, max_len).astype(np.int64)


def assert_valid(p: Packing, lengths, packing_length: int) -> None:
    """Every token of every sample lands exactly once; entries are contiguous from 0; no row exceeds its capacity."""
    lengths = np.asarray(lengths)
    covered = np.zeros(lengths.size, dtype=np.int64)
    pieces: dict[int, list[tuple[int, int]]] = {}
    for r, (ids, offs, lens, starts) in enumerate(zip(p.rows, p.offsets, p.lengths, p.starts, strict=True)):
        assert len(ids) == len(offs) == len(lens) == len(starts) > 0, f"row {r} is empty or ragged"
        assert offs == np.concatenate([[0], np.cumsum(lens)[:-1]]).tolist(), f"row {r}: offsets {offs} for {lens}"
        assert sum(lens) <= p.row_len[r] <= packing_length, f"row {r}: {sum(lens)} tokens, capacity {p.row_len[r]}"
        for i, s, n in zip(ids, starts, lens):
            covered[i] += n
            pieces.setdefault(i, []).append((s, n))
    assert (covered == lengths).all(), f"samples with wrong token counts: {np.flatnonzero(covered != lengths)[:5]}"
    for i, spans in pieces.items():
        spans.sort()
        assert spans[0][0] == 0 and all(s + n == t for (s, n), (t, _) in zip(spans, spans[1:])), f"sample {i}: {spans}"


def check(packer: Callable[..., Packing], name: str, throughput: bool = False) -> None:
    """Print the packer's efficiency on 2,000 lognormal lengths (rows of 512); with throughput, its speed on 1M."""
    lengths = lognormal_lengths()
    p = packer(lengths, packing_length=512, batch_size=8)
    assert_valid(p, lengths, 512)
    print(f"{name}: efficiency {p.efficiency:.4f}, {p.n_rows} rows for {lengths.size} samples (lognormal, rows of 512)")
    if throughput:
        for packing_length in (512, 4096):
            big = lognormal_lengths(1_000_000, max_len=packing_length, seed=1)
            t = time.perf_counter()
            p = packer(big, packing_length=packing_length, batch_size=8)
            dt = time.perf_counter() - t
            print(
                f"{name}: 1M lognormal lengths into rows of {packing_length} in {dt:.2f} s "
                f"({big.size / dt:,.0f} seqs/s), efficiency {p.efficiency:.4f}"
            )
