"""Seeded sequence-length generators with named distributions, and the pad fraction a batch of them pays."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from itertools import accumulate

# At max_len 2048 (1000 lengths, seed 0) the means are uniform ~1013, lognormal ~213, zipf ~175, bimodal ~361, so
# padding to the longest length wastes 0.50, 0.90, 0.91 and 0.82 of the batch: the sweep spans little to most padding.
LOGNORMAL_MEDIAN = 1 / 16  # median length as a fraction of max_len; chat data is mostly short with a long tail
LOGNORMAL_SIGMA = 1.0
ZIPF_EXPONENT = 1.1  # P(length = k) proportional to k^-1.1 on 1..max_len
BIMODAL_LONG_SHARE = 0.2  # share of long documents; the rest are short prompts
BIMODAL_SHORT_MAX = 1 / 16  # prompts: uniform on [1, max_len / 16]; documents: uniform on [max_len / 2, max_len]


def _uniform(rng: random.Random, n: int, max_len: int) -> list[int]:
    return [rng.randint(1, max_len) for _ in range(n)]


def _lognormal(rng: random.Random, n: int, max_len: int) -> list[int]:
    mu = math.log(max(1.0, LOGNORMAL_MEDIAN * max_len))
    return [min(max_len, max(1, round(rng.lognormvariate(mu, LOGNORMAL_SIGMA)))) for _ in range(n)]


def _zipf(rng: random.Random, n: int, max_len: int) -> list[int]:
    cum = list(accumulate(k**-ZIPF_EXPONENT for k in range(1, max_len + 1)))
    return rng.choices(range(1, max_len + 1), cum_weights=cum, k=n)


def _bimodal(rng: random.Random, n: int, max_len: int) -> list[int]:
    short_max = max(1, int(BIMODAL_SHORT_MAX * max_len))
    long_min = max(1, max_len // 2)
    return [
        rng.randint(long_min, max_len) if rng.random() < BIMODAL_LONG_SHARE else rng.randint(1, short_max)
        for _ in range(n)
    ]


DISTRIBUTIONS: dict[str, Callable[[random.Random, int, int], list[int]]] = {
    "uniform": _uniform,
    "lognormal": _lognormal,
    "zipf": _zipf,
    "bimodal": _bimodal,
}


def make_lengths(dist: str, n: int, max_len: int, seed: int = 0) -> list[int]:
    """n lengths in [1, max_len] drawn from the named distribution; the same seed gives the same list everywhere."""
    if dist not in DISTRIBUTIONS:
        raise ValueError(f"unknown length distribution {dist!r}; choose one of {', '.join(DISTRIBUTIONS)}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
        raise ValueError(f"max_len must be an integer >= 1, got {max_len!r}")
    return DISTRIBUTIONS[dist](random.Random(seed), n, max_len)


def pad_fraction(lengths: list[int], padded_len: int | None = None) -> float:
    """Share of a [len(lengths), padded_len] batch that is padding; padded_len defaults to the longest length."""
    if not lengths:
        raise ValueError("lengths is empty; pass at least one sequence length")
    if any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in lengths):
        raise ValueError("lengths must be integers >= 1")
    padded_len = max(lengths) if padded_len is None else padded_len
    if padded_len < max(lengths):
        raise ValueError(f"padded_len {padded_len} is shorter than the longest sequence ({max(lengths)})")
    return 1.0 - sum(lengths) / (len(lengths) * padded_len)


if __name__ == "__main__":
    for name in DISTRIBUTIONS:
        lens = make_lengths(name, 1000, 2048, seed=0)
        print(f"{name:9s} mean {sum(lens) / len(lens):7.1f}  max {max(lens):4d}  pad fraction {pad_fraction(lens):.3f}")
