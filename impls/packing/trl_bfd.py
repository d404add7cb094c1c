"""Hugging Face TRL's packing, the one SFTTrainer(packing=True) runs: trl.data_utils.pack_dataset(dataset, seq_length,
strategy="bfd") over a datasets.Dataset of token lists, read back as a Packing so it is measured as ours are.

The algorithm is ours (impls.packing.ffd): best-fit decreasing, longest first, each sample into the open row with the
least free space that still fits it (a segment tree over free-space values where ours bisects a sorted list; among
rows with equal free space it takes the oldest, ours the newest, which moves samples between rows but never changes
the row count). Two things differ:
- It packs per batch of Dataset.map: pack_dataset runs _pack_bfd through map(batched=True) with map's default
  batch_size, 1,000 sequences, and SFTTrainer passes no batch_size. Each batch of 1,000 is packed alone, so each
  leaves its own half-empty last rows; with map_kwargs={"batch_size": None} the whole dataset is one batch and the
  rows are ours, row for row in count (tests/impls/test_trl_packing.py).
- A sample longer than seq_length is truncated, its tail dropped ("bfd"; "bfd_split" cuts it into pieces as our
  overlong="split" does). `trl_bfd` rejects such samples as our packers do by default (overlong="reject"), so TRL
  never truncates here: the suite's lengths never exceed the packing length.

The dataset has one column, input_ids, whose sample i is `length[i]` copies of i (int64, the type datasets infers
for token lists): TRL's output names no samples, so the first token of each of its segments says which sample it
is. Only pack_dataset on the prebuilt Dataset is TRL's packing (`pack`); building the Dataset (`dataset`) and reading
its rows back (`to_packing`) are this adapter's. Memory is the tokens' and not the lengths': 8 bytes a token in,
as much again out (at the full grid's 1M uniform lengths under 4096, ~16 GB each).

trl is imported lazily (`api`): `import trl.data_utils` pulls in transformers, ~5 s. It is in techbench[ecosystem]
(trl==1.16.0, with datasets). A trl whose pack_dataset moved or takes other arguments raises ApiMoved, never a skip.
"""

from __future__ import annotations

import functools
import importlib
import threading
from collections.abc import Callable

import numpy as np

from impls import libraries
from impls.libraries import ApiMoved as ApiMoved  # re-exported: callers catch the adapter's
from impls.packing.reference import Items, Overlong, Packing, make_packing, to_items

WRITTEN_FOR = "1.16.0"
PIP = libraries.ECOSYSTEM
LIBRARY = libraries.Library("trl", WRITTEN_FOR, "impls/packing/trl_bfd.py", PIP)
version, label, _moved = LIBRARY.version, LIBRARY.label, LIBRARY.moved
MODULE = "trl.data_utils"
NAME = "pack_dataset"
PARAMS = ("dataset", "seq_length", "strategy", "map_kwargs")  # what `pack` passes
STRATEGY = "bfd"  # SFTConfig.packing_strategy's default


@functools.cache
def api() -> Callable:
    """trl.data_utils.pack_dataset; ApiMoved when it is gone or takes other arguments. An absent trl raises
    ModuleNotFoundError (callers check with bench.suite.requires first and skip)."""
    try:
        module = libraries.quiet_import(MODULE)  # trl's import pulls in torchao, whose warnings would fill the output
    except ModuleNotFoundError as e:
        if e.name != MODULE:  # trl itself or a dependency is missing
            raise
        raise _moved(f"{MODULE} is gone") from e
    return libraries.function(module, MODULE, NAME, PARAMS, _moved)


def dataset(lengths: np.ndarray):
    """A datasets.Dataset with an input_ids list column, sample i being length[i] copies of i (int64), built from
    arrow arrays without a Python list per sample."""
    import datasets
    import pyarrow as pa

    length = np.asarray(lengths, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(length)])
    tokens = np.repeat(np.arange(length.size, dtype=np.int64), length)  # [sum(length)]
    column = pa.LargeListArray.from_arrays(offsets, tokens) if offsets[-1] >= 2**31 else \
        pa.ListArray.from_arrays(offsets.astype(np.int32), tokens)
    return datasets.Dataset(datasets.table.InMemoryTable(pa.table({"input_ids": column})))


def pack(data, packing_length: int, map_kwargs: dict | None = None):
    """TRL's packing of `data` into rows of packing_length, as SFTTrainer calls it (map_kwargs None: map's default
    batch of 1,000 sequences), datasets' progress bar off. The packed Dataset: input_ids and seq_lengths per row."""
    import datasets

    fn = api()
    tqdm = importlib.import_module("tqdm").tqdm
    if not hasattr(tqdm, "_lock"):  # map's bar, even off, makes tqdm's lock, whose default holds a multiprocessing
        tqdm.set_lock(threading.RLock())  # semaphore that a case's process leaves behind: a warning as bench exits
    shown = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        return fn(data, packing_length, strategy=STRATEGY, map_kwargs=map_kwargs)
    finally:
        if shown:
            datasets.enable_progress_bars()


def to_packing(packed, lengths: np.ndarray, packing_length: int, batch_size: int) -> Packing:
    """TRL's rows as a Packing, rows in TRL's order, each row's samples in TRL's order, every row of capacity
    packing_length. ValueError if a segment is not a whole sample (TRL truncated it, or the tokens are not
    `dataset`'s)."""
    import pyarrow.compute as pc

    table = packed.data.table
    seg = pc.list_flatten(table.column("seq_lengths")).to_numpy().astype(np.int64)  # [entries] tokens per segment
    per_row = pc.list_value_length(table.column("seq_lengths")).to_numpy().astype(np.int64)  # [rows] segments
    tokens = pc.list_flatten(table.column("input_ids")).to_numpy()  # [tokens], rows back to back
    sample = tokens[np.cumsum(seg) - seg]  # the first token of each segment is its sample's id
    length = np.asarray(lengths, dtype=np.int64)
    if tokens.size != seg.sum() or not np.array_equal(length[sample], seg):
        raise ValueError("TRL's segments are not whole samples of the dataset (a truncated or foreign sample)")
    items = Items(sample, np.zeros_like(sample), seg)
    row_ptr = np.concatenate([[0], np.cumsum(per_row)])
    return make_packing(items, np.arange(sample.size), row_ptr, np.full(per_row.size, packing_length), batch_size)


def trl_bfd(lengths, *, packing_length: int, batch_size: int, overlong: Overlong = "reject", seed: int = 0,
            map_kwargs: dict | None = None) -> Packing:
    """Our packer signature around TRL: lengths validated as ours are, then dataset, pack, to_packing. Only
    overlong="reject" (TRL's "bfd" would truncate); seed is unused."""
    if overlong != "reject":
        raise ValueError(f"TRL's bfd truncates a sample longer than a row: only overlong='reject', got {overlong!r}")
    items = to_items(lengths, packing_length, batch_size, overlong)
    return to_packing(pack(dataset(items.length), packing_length, map_kwargs), items.length, packing_length,
                      batch_size)
