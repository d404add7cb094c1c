"""Padding removal: the padded reference loss and the unpadded path over varlen attention backends."""

from __future__ import annotations

from typing import TYPE_CHECKING

from impls import lazy_exports

if TYPE_CHECKING:
    from impls.rmpad.reference import Decoder, DecoderConfig
    from impls.rmpad.unpadded import VarlenAttention, forward_unpadded, supports

BACKENDS: dict[str, VarlenAttention]

__all__ = ["BACKENDS", "Decoder", "DecoderConfig", "forward_unpadded", "supports"]


def _load() -> dict:
    from impls.rmpad import flash, flex, nested, reference, segments, unpadded

    return dict(
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


__getattr__ = lazy_exports(globals(), _load)
