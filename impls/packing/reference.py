"""Reference for sequence packing: pad_to_max, every sample its own row padded to the longest allowed length.

Also the shared core of every packer: the Packing result, input validation, and the overlong policy (split or reject,
never truncate).
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Literal, NamedTuple

import numpy as np

Overlong = Literal["split", "reject"]


class Ragged(Sequence):
    """Rows of a flat int64 array cut at `row_ptr`: row r is `flat[row_ptr[r]:row_ptr[r + 1]]`, read as a list of
    ints. A view, built on read: a packing of 1M samples as a million small Python lists took most of a packer's time
    (at 1M lognormal lengths, rows of 512: 1.5-1.7 s for the padding strategies, 1.3 s for ffd, 0.8 s for spfhp,
    against 0.04-0.4 s as flat arrays), and a training step reads a few rows."""

    __slots__ = ("flat", "row_ptr")

    def __init__(self, flat: np.ndarray, row_ptr: np.ndarray):
        self.flat, self.row_ptr = flat, row_ptr

    def __len__(self) -> int:
        return self.row_ptr.size - 1

    def __getitem__(self, r):
        if isinstance(r, slice):
            return [self[i] for i in range(*r.indices(len(self)))]
        r = operator.index(r)
        n = len(self)
        if not -n <= r < n:
            raise IndexError(f"row {r} of {n}")
        r %= n
        return self.flat[self.row_ptr[r] : self.row_ptr[r + 1]].tolist()

    def __iter__(self):
        flat, bounds = self.flat.tolist(), self.row_ptr.tolist()
        return (flat[a:b] for a, b in zip(bounds[:-1], bounds[1:]))

    def __eq__(self, other) -> bool:
        if isinstance(other, Ragged):
            return np.array_equal(self.row_ptr, other.row_ptr) and np.array_equal(self.flat, other.flat)
        return isinstance(other, Sequence) and not isinstance(other, (str, bytes)) and list(self) == list(other)

    __hash__ = None  # mutable arrays inside, as a list

    def __repr__(self) -> str:
        head = ", ".join(map(str, self[:3]))
        return f"Ragged([{head}{', ...' if len(self) > 3 else ''}], {len(self)} rows)"


def _by_row(flat: str, doc: str) -> property:
    """A Packing's flat array `flat` read row by row (Ragged)."""
    return property(lambda self: Ragged(getattr(self, flat), self.row_ptr), doc=doc)


@dataclass(frozen=True, eq=False)
class Packing:
    """Rows in training order; rows [k * batch_size, (k + 1) * batch_size) form batch k.

    An entry is one sample, or one piece of a sample that was longer than a row (overlong="split"). The entries of
    all rows are stored flat, row after row (`sample`, `start`, `length`), and row r holds entries
    [row_ptr[r], row_ptr[r + 1]): entry j of row r holds tokens [starts[r][j], starts[r][j] + lengths[r][j]) of
    sample rows[r][j], at row positions [offsets[r][j], offsets[r][j] + lengths[r][j]). `rows`, `offsets`,
    `lengths` and `starts` read the flat arrays row by row (Ragged).
    """

    sample: np.ndarray
    """Sample id of each entry, [entries] int64; a split sample's id appears once per piece."""
    start: np.ndarray
    """Start of each entry within its sample, [entries]: 0 unless the sample was split; (sample, start) names a
    piece."""
    length: np.ndarray
    """Tokens of each entry, [entries]: the sample's length, or its piece's length when split."""
    row_ptr: np.ndarray
    """[n_rows + 1]: where each row's entries begin in the flat arrays, and the end."""
    row_len: list[int]
    """Capacity of each row: packing_length for packers, the padded length (a batch's longest) for padding."""
    batch_size: int
    """Rows per batch; the last batch may be short."""

    def __post_init__(self):
        n = self.row_ptr.size - 1
        assert self.sample.size == self.start.size == self.length.size == self.row_ptr[-1], "ragged Packing"
        assert n == len(self.row_len), "ragged Packing"
        assert self.batch_size > 0, f"batch_size must be positive, got {self.batch_size}"

    def __eq__(self, other) -> bool:
        flat = ("sample", "start", "length", "row_ptr")
        return isinstance(other, Packing) and self.row_len == other.row_len and self.batch_size == other.batch_size \
            and all(np.array_equal(getattr(self, f), getattr(other, f)) for f in flat)

    __hash__ = None  # arrays inside

    rows = _by_row("sample", "Sample ids per row, in row order.")
    lengths = _by_row("length", "Tokens of each entry, per row.")
    starts = _by_row("start", "Start of each entry within its sample, per row.")
    offsets = _by_row("offset", "Start of each entry within its row; entries are contiguous from 0, so the padding "
                                "is the row's tail.")

    @cached_property
    def offset(self) -> np.ndarray:
        before = np.cumsum(self.length) - self.length  # tokens placed before each entry, over all rows
        return before - np.repeat(before[self.row_ptr[:-1]], np.diff(self.row_ptr))

    @cached_property
    def real_tokens(self) -> int:
        return int(self.length.sum())

    @cached_property
    def capacity_tokens(self) -> int:
        return sum(self.row_len)

    @property
    def efficiency(self) -> float:
        """Real tokens / capacity tokens: sum of entry lengths over sum of row_len, every row counted once, so 1 means
        no padding at all. A short last batch adds only the rows it has (no empty padding rows), and row_len is each
        row's own capacity: packing_length for pad_to_max and the packers, the batch's longest sample for
        pad_to_batch_max and bucketing."""
        return self.real_tokens / self.capacity_tokens

    @property
    def n_rows(self) -> int:
        return self.row_ptr.size - 1

    @property
    def n_batches(self) -> int:
        return -(-self.n_rows // self.batch_size)


class Items(NamedTuple):
    """What packers place, one per sample or per piece of a split sample; three int64 arrays of equal length."""

    sample: np.ndarray
    start: np.ndarray
    length: np.ndarray


def validate(lengths) -> np.ndarray:
    """The lengths as a 1-D int64 array; ValueError with a one-line reason for anything that is not positive ints."""
    if isinstance(lengths, (str, bytes)):
        raise ValueError(f"lengths must be a sequence of ints, got a {type(lengths).__name__}")
    if not isinstance(lengths, np.ndarray):
        lengths = list(lengths)
        # np.asarray would quietly turn True into 1 and 3.0 into a float array, so check each element; ~60 ms at 1M.
        ok = (int, np.integer)
        bad = next((i for i, x in enumerate(lengths) if isinstance(x, bool) or not isinstance(x, ok)), None)
        if bad is not None:
            x = lengths[bad]
            raise ValueError(f"lengths[{bad}] is {x!r} ({type(x).__name__}): lengths must be ints")
        lengths = np.asarray(lengths, dtype=np.int64)
    elif lengths.dtype.kind not in "iu":
        raise ValueError(f"lengths has dtype {lengths.dtype}: lengths must be ints")
    if lengths.ndim != 1:
        raise ValueError(f"lengths must be 1-D, got shape {lengths.shape}")
    if lengths.size == 0:
        raise ValueError("lengths is empty: nothing to pack")
    lengths = lengths.astype(np.int64, copy=False)
    if (lengths <= 0).any():
        i = int(np.argmax(lengths <= 0))
        raise ValueError(f"lengths[{i}] is {lengths[i]}: every sample needs at least one token")
    return lengths


def to_items(lengths, packing_length: int, batch_size: int, overlong: Overlong) -> Items:
    """Validate everything a packer gets, then apply the overlong policy."""
    for name, v in (("packing_length", packing_length), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if overlong not in ("split", "reject"):
        raise ValueError(f"overlong must be 'split' or 'reject', got {overlong!r}")
    lengths = validate(lengths)
    ids = np.arange(lengths.size, dtype=np.int64)
    over = lengths > packing_length
    if not over.any():
        return Items(ids, np.zeros_like(ids), lengths)
    if overlong == "reject":
        i = int(np.argmax(over))
        raise ValueError(
            f"sample {i} has length {lengths[i]} > packing_length {packing_length} "
            f"({int(over.sum())} such samples); pass overlong='split' to cut them into pieces"
        )
    pieces = -(-lengths // packing_length)  # ceil: 1100 tokens into rows of 512 -> pieces of 512, 512, 76
    sample = np.repeat(ids, pieces)
    first = np.cumsum(pieces) - pieces  # index of each sample's first piece
    start = (np.arange(sample.size) - np.repeat(first, pieces)) * packing_length
    return Items(sample, start, np.minimum(packing_length, lengths[sample] - start))


def make_packing(items: Items, order: np.ndarray, row_ptr: np.ndarray, row_len, batch_size: int) -> Packing:
    """Packing from item indices in row-major order; row r holds order[row_ptr[r]:row_ptr[r + 1]]."""
    return Packing(items.sample[order], items.start[order], items.length[order], np.asarray(row_ptr, dtype=np.int64),
                   np.asarray(row_len, dtype=np.int64).tolist(), batch_size)


def one_per_row(items: Items, order: np.ndarray, row_len, batch_size: int) -> Packing:
    """Padding strategies: each item alone in its row, rows in the given order."""
    return make_packing(items, order, np.arange(order.size + 1), row_len, batch_size)


def pad_to_max(
    lengths, *, packing_length: int, batch_size: int = 1, overlong: Overlong = "reject", seed: int = 0
) -> Packing:
    """Every sample its own row, padded to packing_length (the max length), in dataset order.

    Efficiency is mean length / packing_length exactly. seed is unused (the uniform packer signature).
    """
    items = to_items(lengths, packing_length, batch_size, overlong)
    n = items.length.size
    return one_per_row(items, np.arange(n), np.full(n, packing_length), batch_size)


if __name__ == "__main__":
    from impls.packing.check import check

    check(pad_to_max, "pad_to_max")
