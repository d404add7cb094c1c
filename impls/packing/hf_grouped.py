"""transformers' length grouping, the order Trainer(group_by_length=True) trains in (transformers 5.23 spells it
train_sampling_strategy="group_by_length"): LengthGroupedSampler, whose __iter__ is
get_length_grouped_indices(lengths, batch_size, generator), then each batch of batch_size consecutive indices padded
to its longest sample, as DataCollatorWithPadding does (padding="longest").

Its conventions, transformers' own (read against 5.23.0):
- torch.randperm of all indices under `generator`, cut into megabatches of min(n // (4 * batch_size), 50) *
  batch_size indices (1 * batch_size when that is 0); the last megabatch takes what is left.
- Each megabatch sorted by length, longest first (Python's stable sort: ties keep the permutation's order).
- The longest megabatch head is swapped with the first megabatch's head, so the first batch holds a longest sample
  (an out-of-memory error comes in the first step); the megabatch it came from starts with the other head.
Sorting within megabatches of up to 50 batches, not the whole dataset (impls.packing.bucketing), pads more.

Trainer passes no generator (the sampler draws from torch's global generator, which Trainer seeds) and a batch of
train_batch_size * gradient_accumulation_steps; here the generator is a torch.Generator seeded with `seed`, the batch
is `batch_size`. transformers is imported lazily (`api`: 0.4 s after torch, warm disk). It is in techbench[ecosystem]; a
transformers whose get_length_grouped_indices moved or takes other arguments raises ApiMoved, never a skip.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from impls import libraries
from impls.libraries import ApiMoved as ApiMoved  # re-exported: callers catch the adapter's
from impls.packing.dynamic import batch_max
from impls.packing.reference import Items, Overlong, Packing, one_per_row, to_items

WRITTEN_FOR = "5.23.0"
PIP = libraries.ECOSYSTEM
LIBRARY = libraries.Library("transformers", WRITTEN_FOR, "impls/packing/hf_grouped.py", PIP)
version, label, _moved = LIBRARY.version, LIBRARY.label, LIBRARY.moved
MODULE = "transformers.trainer_pt_utils"
NAME = "get_length_grouped_indices"
PARAMS = ("lengths", "batch_size", "generator")  # what `order` passes


@functools.cache
def api() -> Callable:
    """transformers.trainer_pt_utils.get_length_grouped_indices; ApiMoved when it is gone or takes other arguments.
    An absent transformers raises ModuleNotFoundError (callers check with bench.suite.requires first and skip)."""
    try:
        module = libraries.quiet_import(MODULE)  # transformers pulls in torchao, whose warnings would fill the output
    except ModuleNotFoundError as e:
        if e.name != MODULE:  # transformers itself or a dependency is missing
            raise
        raise _moved(f"{MODULE} is gone") from e
    return libraries.function(module, MODULE, NAME, PARAMS, _moved)


def generator(seed: int):
    import torch

    return torch.Generator().manual_seed(seed)


def order(lengths_list: list[int], batch_size: int, seed: int) -> np.ndarray:
    """The indices LengthGroupedSampler yields for one epoch under a generator seeded with `seed`, [n] int64.
    lengths_list is a Python list of ints, what the sampler holds (it turns a tensor into one with .tolist())."""
    return np.asarray(api()(lengths_list, batch_size, generator=generator(seed)), dtype=np.int64)


def rows(items: Items, indices: np.ndarray, batch_size: int) -> Packing:
    """One sample per row in HF's order, each batch of batch_size rows padded to its longest, as bucketing builds."""
    return one_per_row(items, indices, batch_max(items, indices, batch_size), batch_size)


def hf_group_by_length(lengths, *, packing_length: int, batch_size: int, overlong: Overlong = "reject", seed: int = 0,
                       shuffle: bool = True) -> Packing:
    """Our packer signature around HF's order: lengths validated as ours are, then `order`, then `rows`; packing_length
    is the max length. Only shuffle=True: HF's grouping starts from a random permutation and has no unshuffled order."""
    if not shuffle:
        raise ValueError("LengthGroupedSampler groups a random permutation: only shuffle=True")
    items = to_items(lengths, packing_length, batch_size, overlong)
    return rows(items, order(items.length.tolist(), batch_size, seed), batch_size)
