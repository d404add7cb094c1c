"""Activation checkpointing variants: each maps (model, x) to the model's output, trading memory for recompute."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

    from impls.checkpointing.reference import Transformer, TransformerConfig

VARIANTS: dict[str, Callable[[Transformer, Tensor], Tensor]]

__all__ = ["VARIANTS", "Transformer", "TransformerConfig"]


def __getattr__(name: str):
    # Resolved on first use, not at import: `python -m impls.checkpointing.full` runs full.py as __main__, and runpy
    # warns when importing the package has already imported that same file.
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from impls.checkpointing import full, offload, reference, selective, sqrt

    globals().update(
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
    return globals()[name]
