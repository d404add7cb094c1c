"""Padding removal: the padded reference loss and the unpadded path over varlen attention backends."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from impls.rmpad.reference import Decoder, DecoderConfig
    from impls.rmpad.unpadded import VarlenAttention, forward_unpadded, supports

BACKENDS: dict[str, VarlenAttention]

__all__ = ["BACKENDS", "Decoder", "DecoderConfig", "forward_unpadded", "supports"]


def __getattr__(name: str):
    # Resolved on first use, not at import: `python -m impls.rmpad.flex` runs flex.py as __main__, and runpy warns
    # when importing the package has already imported that same file.
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from impls.rmpad import flash, flex, nested, reference, segments, unpadded

    globals().update(
        BACKENDS={
            "segments": segments.varlen_attention,
            "flex": flex.varlen_attention,
            "nested": nested.varlen_attention,
            "flash": flash.varlen_attention,
        },
        Decoder=reference.Decoder,
        DecoderConfig=reference.DecoderConfig,
        forward_unpadded=unpadded.forward_unpadded,
        supports=unpadded.supports,
    )
    return globals()[name]
