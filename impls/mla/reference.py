"""Reference for MLA's comparison: standard multi-head attention (Vaswani et al. 2017) decoding with a KV cache.

Each token caches a key and a value per head: 2 * n_heads * head_dim elements per token per layer, 32,768 at
DeepSeek-V3's width (128 heads x 128 channels), the figure Multi-head Latent Attention (DeepSeek-V2, arXiv 2405.04434)
cuts to 576. Rotary positions (RoFormer) on the whole head, as LLaMA does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from impls.mla.common import KVCache, apply_rope, causal_mask, check_positive, positions, rope_tables


@dataclass(frozen=True)
class MHAConfig:
    d_model: int
    """Width of the residual stream: the layer maps [B, S, d_model] -> [B, S, d_model]."""
    n_heads: int
    """Query heads."""
    head_dim: int
    """Channels per head (128 in DeepSeek-V3 and LLaMA); even, for rotary positions."""

    def __post_init__(self):
        check_positive(self, "d_model", "n_heads", "head_dim")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary positions, got {self.head_dim}")

    @property
    def n_kv_heads(self) -> int:
        return self.n_heads

    @property
    def cache_elements_per_token(self) -> int:
        """The formula: a key and a value of head_dim channels per KV head."""
        return 2 * self.n_kv_heads * self.head_dim


def cache_bytes_per_token(cfg, dtype: torch.dtype) -> int:
    """Expected cache bytes per token per layer of any config here (MHA, GQA, MLA) at `dtype`."""
    return cfg.cache_elements_per_token * dtype.itemsize


class MHA(nn.Module):
    """Multi-head attention over a KV cache. forward(x) alone is full-sequence causal attention; forward(x, cache)
    appends x's keys and values to the cache and attends over everything cached (prefill, then one token a step)."""

    def __init__(self, cfg: MHAConfig, device=None, dtype=None):
        super().__init__()
        self.cfg = cfg
        kw = {"bias": False, "device": device, "dtype": dtype}
        h, hkv, dh = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.wq = nn.Linear(cfg.d_model, h * dh, **kw)
        self.wk = nn.Linear(cfg.d_model, hkv * dh, **kw)
        self.wv = nn.Linear(cfg.d_model, hkv * dh, **kw)
        self.wo = nn.Linear(h * dh, cfg.d_model, **kw)

    def new_cache(self, batch: int, capacity: int, device=None, dtype=None) -> KVCache:
        w = self.wk.weight
        shape = (batch, self.cfg.n_kv_heads, capacity, self.cfg.head_dim)  # [B, H_kv, capacity, Dh]
        kw = {"device": device or w.device, "dtype": dtype or w.dtype}
        return KVCache({"k": torch.zeros(shape, **kw), "v": torch.zeros(shape, **kw)})

    def forward(self, x: Tensor, cache: KVCache | None = None) -> Tensor:
        B, S, _ = x.shape  # [B, S, D]
        cfg, start = self.cfg, cache.length if cache is not None else 0
        q = self.wq(x).view(B, S, cfg.n_heads, cfg.head_dim).transpose(1, 2)  # [B, H, S, Dh]
        k = self.wk(x).view(B, S, cfg.n_kv_heads, cfg.head_dim).transpose(1, 2)  # [B, H_kv, S, Dh]
        v = self.wv(x).view(B, S, cfg.n_kv_heads, cfg.head_dim).transpose(1, 2)
        cos, sin = rope_tables(positions(start, S, x.device), cfg.head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            kv = cache.append(k=k, v=v)
            k, v = kv["k"], kv["v"]  # [B, H_kv, T, Dh], T = start + S
        o = self.attend(q, k, v, start)  # [B, H, S, Dh]
        return self.wo(o.transpose(1, 2).reshape(B, S, cfg.n_heads * cfg.head_dim))

    def attend(self, q: Tensor, k: Tensor, v: Tensor, start: int) -> Tensor:
        return sdpa(q, k, v, start)


def sdpa(q: Tensor, k: Tensor, v: Tensor, start: int, scale: float | None = None, enable_gqa: bool = False) -> Tensor:
    """Causal scaled-dot-product attention of q [B, H, S, d] at positions start.. over k, v [B, H_kv, T, d]."""
    S, T = q.shape[-2], k.shape[-2]
    kw = {"scale": scale, "enable_gqa": enable_gqa}
    if start == 0 and S == T:
        return F.scaled_dot_product_attention(q, k, v, is_causal=S > 1, **kw)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(start, S, T, q.device), **kw)
