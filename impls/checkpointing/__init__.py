"""Activation checkpointing variants: each maps (model, x) to the model's output, trading memory for recompute."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from impls import lazy_exports

if TYPE_CHECKING:
    from torch import Tensor

    from impls.checkpointing.reference import Transformer, TransformerConfig

VARIANTS: dict[str, Callable[[Transformer, Tensor], Tensor]]

__all__ = ["VARIANTS", "Transformer", "TransformerConfig"]


def _load() -> dict:
    from impls.checkpointing import full, offload, reference, selective, sqrt

    return dict(
        VARIANTS={
            "none": reference.forward,
            "full": full.forward,
            "sqrt": sqrt.forward,
            "selective": selective.forward,
            "offload": offload.forward,
        },
        Transformer=reference.Transformer,
        TransformerConfig=reference.TransformerConfig,
    )


__getattr__ = lazy_exports(globals(), _load)
