"""Reference for sequence packing: pad_to_max, every sample its own row padded to the longest allowed length.

Also the shared core of every packer: the Packing result, input validation, and the overlong policy (split or reject,
never truncate).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Literal, NamedTuple

import numpy as np

Overlong = Literal["split", "reject"]


@dataclass(frozen=True)
class Packing:
    """Rows in training order; rows [k * batch_size, (k + 1) * batch_size) form batch k.

    An entry is one sample, or one piece of a sample that was longer than a row (overlong="split"); entry j of row r
    holds tokens [starts[r][j], starts[r][j] + lengths[r][j]) of sample rows[r][j], at row positions
    [offsets[r][j], offsets[r][j] + lengths[r][j]).
    """

    rows: list[list[int]]
    """Sample ids per row, in row order; a split sample's id appears once per piece."""
    offsets: list[list[int]]
    """Start of each entry within its row; entries are contiguous from 0, so the padding is the row's tail."""
    lengths: list[list[int]]
    """Tokens of each entry: the sample's length, or its piece's length when split."""
    starts: list[list[int]]
    """Start of each entry within its sample: 0 unless the sample was split; (sample, start) names a piece."""
    row_len: list[int]
    """Capacity of each row: packing_length for packers, the padded length (a batch's longest) for padding."""
    batch_size: int
    """Rows per batch; the last batch may be short."""

    def __post_init__(self):
        n = len(self.rows)
        assert n == len(self.offsets) == len(self.lengths) == len(self.starts) == len(self.row_len), "ragged Packing"
        assert self.batch_size > 0, f"batch_size must be positive, got {self.batch_size}"

    @cached_property
    def real_tokens(self) -> int:
        return sum(map(sum, self.lengths))

    @cached_property
    def capacity_tokens(self) -> int:
        return sum(self.row_len)

    @property
    def efficiency(self) -> float:
        """Real tokens / capacity tokens: 1 means no padding at all."""
        return self.real_tokens / self.capacity_tokens

    @property
    def n_rows(self) -> int:
        return len(self.rows)

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
    length = items.length[order]
    before = np.cumsum(length) - length  # tokens placed before each entry, over all rows
    offset = before - np.repeat(before[row_ptr[:-1]], np.diff(row_ptr))
    bounds = list(zip(row_ptr[:-1].tolist(), row_ptr[1:].tolist()))

    def split(flat: np.ndarray) -> list[list[int]]:
        flat = flat.tolist()
        return [flat[a:b] for a, b in bounds]

    return Packing(
        rows=split(items.sample[order]),
        offsets=split(offset),
        lengths=split(length),
        starts=split(items.start[order]),
        row_len=np.asarray(row_len, dtype=np.int64).tolist(),
        batch_size=batch_size,
    )


def one_per_row(items: Items, order: np.ndarray, row_len, batch_size: int) -> Packing:
    """Padding strategies: each item alone in its row, rows in the given order."""

    def single(flat: np.ndarray) -> list[list[int]]:
        return [[x] for x in flat.tolist()]  # skips make_packing's cumsum and slicing: 1M rows 2.0 s -> 1.4 s

    return Packing(
        rows=single(items.sample[order]),
        offsets=[[0] for _ in range(order.size)],
        lengths=single(items.length[order]),
        starts=single(items.start[order]),
        row_len=np.asarray(row_len, dtype=np.int64).tolist(),
        batch_size=batch_size,
    )


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
