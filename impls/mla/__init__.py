"""Attention variants and their KV caches: MHA (reference), GQA, MQA, and DeepSeek's Multi-head Latent Attention in
its naive and absorbed forms. Every layer maps [B, S, d_model] -> [B, S, d_model] and decodes over a `KVCache`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from impls import lazy_exports

if TYPE_CHECKING:
    from impls.mla.common import KVCache
    from impls.mla.reference import cache_bytes_per_token
    from impls.mla.shapes import SHAPES, VARIANTS, Shape, build, config

__all__ = ["KVCache", "SHAPES", "VARIANTS", "Shape", "build", "cache_bytes_per_token", "config"]


def _load() -> dict:
    from impls.mla import common, reference, shapes

    return dict(KVCache=common.KVCache, SHAPES=shapes.SHAPES, VARIANTS=shapes.VARIANTS, Shape=shapes.Shape,
                build=shapes.build, cache_bytes_per_token=reference.cache_bytes_per_token, config=shapes.config)


__getattr__ = lazy_exports(globals(), _load)
