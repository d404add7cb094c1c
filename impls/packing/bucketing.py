"""Length-grouped bucketing: sort the whole dataset by length, cut it into batches, pad each to its longest.

Sorting first minimises the padding of fixed-size batches; the batch order is then shuffled with a seed so training
does not see short batches first and long ones last. This is not transformers' LengthGroupedSampler
(group_by_length; variant `hf_group_by_length`, impls.packing.hf_grouped), which sorts only within random megabatches
of up to 50 batches (longest first), so its batches mix more lengths and pad more.
"""

from __future__ import annotations

import numpy as np

from impls.packing.dynamic import batch_max
from impls.packing.reference import Overlong, Packing, one_per_row, to_items


def bucketing(
    lengths,
    *,
    packing_length: int,
    batch_size: int,
    overlong: Overlong = "reject",
    seed: int = 0,
    shuffle: bool = True,
) -> Packing:
    """Length-sorted batches (stable, so ties keep dataset order), padded to each batch's longest."""
    items = to_items(lengths, packing_length, batch_size, overlong)
    order = np.argsort(items.length, kind="stable")
    if shuffle:
        # Only whole batches move: the short last batch stays last, so rows still group into batches by batch_size.
        n_full = order.size // batch_size
        perm = np.random.default_rng(seed).permutation(n_full)
        head = order[: n_full * batch_size].reshape(n_full, batch_size)[perm].ravel()
        order = np.concatenate([head, order[n_full * batch_size :]])
    return one_per_row(items, order, batch_max(items, order, batch_size), batch_size)


if __name__ == "__main__":
    from impls.packing.check import check

    check(bucketing, "bucketing")
