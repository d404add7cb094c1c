"""Named attention shapes and one builder per variant, so that every variant of a shape has the same width and heads.

DeepSeek-V3 (arXiv 2412.19437 §4.2): hidden 7168, 128 heads of 128 channels, KV latent 512, query latent 1536, rotary
64 per head. Its MHA counterpart caches 2 x 128 x 128 = 32,768 elements per token per layer, MLA 512 + 64 = 576.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from impls.mla.absorbed import AbsorbedMLA
from impls.mla.gqa import GQA, GQAConfig
from impls.mla.mla import MLA, MLAConfig
from impls.mla.reference import MHA, MHAConfig


@dataclass(frozen=True)
class Shape:
    d_model: int
    n_heads: int
    d_head: int
    """Per-head channels: MHA/GQA's head_dim, MLA's d_head (the compressed part of its query and key)."""
    d_rope: int
    d_c: int
    d_cq: int
    kv_heads: int
    """GQA's key/value heads."""

    def mha(self) -> MHAConfig:
        return MHAConfig(self.d_model, self.n_heads, self.d_head)

    def gqa(self, kv_heads: int | None = None) -> GQAConfig:
        return GQAConfig(self.d_model, self.n_heads, self.d_head, kv_heads=kv_heads or self.kv_heads)

    def mla(self) -> MLAConfig:
        return MLAConfig(self.d_model, self.n_heads, self.d_head, self.d_rope, self.d_c, self.d_cq)


SHAPES = {
    # for tests: no power of two in the head count or the widths that differ between variants
    "tiny": Shape(d_model=60, n_heads=6, d_head=10, d_rope=4, d_c=20, d_cq=30, kv_heads=2),
    # CPU-sized with DeepSeek-V3's proportions: d_c = 4 d_head, d_rope = d_head / 2
    "small": Shape(d_model=512, n_heads=8, d_head=32, d_rope=16, d_c=128, d_cq=192, kv_heads=2),
    # GQA with 8 KV heads as LLaMA-3 70B/405B use
    "deepseek_v3": Shape(d_model=7168, n_heads=128, d_head=128, d_rope=64, d_c=512, d_cq=1536, kv_heads=8),
}

VARIANTS = ("mha", "gqa", "mqa", "mla_naive", "mla_absorbed")


def config(variant: str, shape: Shape):
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {VARIANTS}")
    return {"mha": shape.mha, "gqa": shape.gqa, "mqa": lambda: shape.gqa(1)}.get(variant, shape.mla)()


def build(variant: str, shape: Shape, device=None, dtype=None) -> nn.Module:
    """The variant's attention layer at `shape`, with default (uniform) nn.Linear initialisation.

    mla_absorbed is MLA as deployed: prefill in the naive form, decode absorbed (AbsorbedMLA(naive_prefill=True)).
    """
    cfg = config(variant, shape)
    if variant == "mla_absorbed":
        return AbsorbedMLA(cfg, device=device, dtype=dtype, naive_prefill=True)
    cls = {"mha": MHA, "gqa": GQA, "mqa": GQA, "mla_naive": MLA}[variant]
    return cls(cfg, device=device, dtype=dtype)
