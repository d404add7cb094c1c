"""Sequence packers: each maps a dataset of lengths to rows (a Packing), trading padding for throughput.

Every packer has the signature
    pack(lengths, *, packing_length, batch_size, overlong="reject", seed=0) -> Packing
where packing_length is a row's capacity (for the padding strategies: the max length a sample may have).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from impls import lazy_exports

if TYPE_CHECKING:
    from impls.packing.reference import Packing

PACKERS: dict[str, Callable[..., Packing]]

__all__ = ["PACKERS", "Packing"]


def _load() -> dict:
    from impls.packing import bucketing, dynamic, ffd, reference, spfhp

    return dict(
        PACKERS={
            "pad_to_max": reference.pad_to_max,
            "pad_to_batch_max": dynamic.pad_to_batch_max,
            "bucketing": bucketing.bucketing,
            "ffd": ffd.ffd,
            "spfhp": spfhp.spfhp,
        },
        Packing=reference.Packing,
    )


__getattr__ = lazy_exports(globals(), _load)
