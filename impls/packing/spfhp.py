"""SPFHP: shortest-pack-first histogram packing (Krell et al. 2021, "Efficient Sequence Packing without
Cross-contamination", Algorithm 1; Graphcore's packedBERT spfhp.py).

It packs the length histogram, not the samples: lengths go longest first, and each group of equal-length samples
joins the open pack with the most free tokens (the shortest pack) that fits it, splitting that pack's repeat count
when the group is smaller. A pack closes when full or at max_sequences_per_pack. The work is O(distinct strategies),
not O(samples); sample ids are dealt to the strategies afterwards.
"""

from __future__ import annotations

from bisect import insort

import numpy as np

from impls.packing.reference import Overlong, Packing, make_packing, to_items


def spfhp_strategies(
    histogram: np.ndarray, capacity: int, max_sequences_per_pack: int | None = None
) -> list[tuple[int, tuple[int, ...]]]:
    """(repeat count, pack lengths) pairs; histogram[n] = samples of length n, for n in 1..capacity."""
    limit = max_sequences_per_pack or capacity
    open_: dict[int, list[list]] = {}  # free tokens -> [count, pack] entries, newest last (the paper pops the last)
    keys: list[int] = []  # sorted free-token counts present in open_
    done: list[tuple[int, tuple[int, ...]]] = []

    def add(count: int, pack: tuple[int, ...], free: int) -> None:
        if free == 0 or len(pack) == limit:
            done.append((count, pack))
            return
        if free not in open_:
            open_[free] = []
            insort(keys, free)
        open_[free].append([count, pack])

    for n in range(capacity, 0, -1):
        left = int(histogram[n])
        while left:
            if not keys or keys[-1] < n:  # fits nowhere: `left` new packs holding one sample each
                add(left, (n,), capacity - n)
                break
            free = keys[-1]  # most free tokens: the shortest pack
            entry = open_[free][-1]
            count, pack = entry
            if count > left:  # only part of this strategy's repeats take the sample; the rest stay open
                entry[0] = count - left
                take = left
            else:
                open_[free].pop()
                if not open_[free]:
                    del open_[free]
                    keys.pop()
                take = count
            left -= take
            add(take, pack + (n,), free - n)
    return done + [(c, p) for free in keys for c, p in open_[free]]


def spfhp(
    lengths,
    *,
    packing_length: int,
    batch_size: int,
    overlong: Overlong = "reject",
    seed: int = 0,
    max_sequences_per_pack: int | None = None,
) -> Packing:
    """Rows of at most packing_length tokens, strategy by strategy; None means no cap on samples per row (the paper
    used 3 for BERT-length Wikipedia; long rows of short chat samples need far more). seed is unused."""
    cap = max_sequences_per_pack
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
        raise ValueError(f"max_sequences_per_pack must be a positive int or None, got {cap!r}")
    items = to_items(lengths, packing_length, batch_size, overlong)
    histogram = np.bincount(items.length, minlength=packing_length + 1)
    by_length = np.argsort(items.length, kind="stable")  # ids of each length, in dataset order
    next_id = np.concatenate([[0], np.cumsum(histogram)[:-1]])  # where each length's unused ids start in by_length
    blocks, row_sizes = [], []
    for count, pack in spfhp_strategies(histogram, packing_length, max_sequences_per_pack):
        cols = []
        for n in pack:
            cols.append(by_length[next_id[n] : next_id[n] + count])
            next_id[n] += count
        blocks.append(np.stack(cols, axis=1).ravel())  # [count, len(pack)] row-major: one row per repeat
        row_sizes.append(np.full(count, len(pack)))
    row_sizes = np.concatenate(row_sizes)
    row_ptr = np.concatenate([[0], np.cumsum(row_sizes)])
    return make_packing(items, np.concatenate(blocks), row_ptr, np.full(row_sizes.size, packing_length), batch_size)


if __name__ == "__main__":
    from impls.packing.check import check

    check(spfhp, "spfhp", throughput=True)
