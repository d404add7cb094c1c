"""Dynamic padding: consecutive batches in dataset order, each padded to its own longest sample (HF DataCollator)."""

from __future__ import annotations

import numpy as np

from impls.packing.reference import Items, Overlong, Packing, one_per_row, to_items


def batch_max(items: Items, order: np.ndarray, batch_size: int) -> np.ndarray:
    """Each row's padded length: the longest item of its batch of batch_size consecutive rows."""
    length = items.length[order]
    starts = np.arange(0, length.size, batch_size)
    longest = np.maximum.reduceat(length, starts)  # [n_batches]
    return np.repeat(longest, np.diff(np.append(starts, length.size)))


def pad_to_batch_max(
    lengths, *, packing_length: int, batch_size: int, overlong: Overlong = "reject", seed: int = 0
) -> Packing:
    """Rows in dataset order, padded to their batch's longest; packing_length is the max length. seed is unused."""
    items = to_items(lengths, packing_length, batch_size, overlong)
    order = np.arange(items.length.size)
    return one_per_row(items, order, batch_max(items, order, batch_size), batch_size)


if __name__ == "__main__":
    from impls.packing.check import check

    check(pad_to_batch_max, "pad_to_batch_max")
