"""Multi-head Latent Attention (DeepSeek-V2, arXiv 2405.04434 §2.1; DeepSeek-V3 §2.1.1), naive form.

Keys and values come from a low-rank latent c_KV = W_DKV h (d_c channels) shared by every head; position enters through
a decoupled rotary key k_R = RoPE(W_KR h) of d_rope channels, also shared by the heads. Only c_KV and k_R are cached:
d_c + d_rope elements per token per layer (512 + 64 = 576 at DeepSeek-V3's sizes). Queries may be compressed too
(c_Q = W_DQ h, d_c' channels), which saves activations in training, not cache. Each head's query is
[q_C, RoPE(q_R)] of d_head + d_rope channels, its key [k_C, k_R], and the softmax scale 1/sqrt(d_head + d_rope), as
in DeepSeek-V3's inference/model.py. The naive form up-projects every cached latent to per-head keys and values at
every decode step (W_UK, W_UV stacked as wkv_b); absorbed.py folds those matrices into the query and output instead.

Layouts follow DeepSeek-V3's MLA (same module names): wkv_a's output is [c_KV (d_c) | k_R (d_rope)]; wq / wq_b give
per head [q_C (d_head) | q_R (d_rope)]; wkv_b gives per head [k_C (d_head) | v (d_v)]. RoPE (common.apply_rope,
rotate-half pairing) rotates q_R and k_R only, at absolute positions cache.length.. ; kv_norm (RMSNorm, eps 1e-6)
applies to c_KV alone. The cache holds kv_norm(c_KV) and the rotated k_R, as V3's absorb path caches them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from impls.mla.common import KVCache, apply_rope, check_positive, positions, rope_tables
from impls.mla.reference import sdpa

NORM_EPS = 1e-6  # DeepSeek-V3's RMSNorm epsilon on c_Q and c_KV


@dataclass(frozen=True)
class MLAConfig:
    d_model: int
    """Width of the residual stream (7168 in DeepSeek-V3)."""
    n_heads: int
    """Attention heads (128 in DeepSeek-V3)."""
    d_head: int
    """Per-head channels of the compressed query/key part q_C, k_C (128 in DeepSeek-V3)."""
    d_rope: int
    """Per-head channels of the decoupled rotary query q_R, and of the one rotary key k_R all heads share (64)."""
    d_c: int
    """KV latent width d_c, cached per token (512 in DeepSeek-V3); must compress, so at most d_model."""
    d_cq: int = 0
    """Query latent width d_c' (1536 in DeepSeek-V3); 0 projects queries straight from the hidden state."""
    d_v: int | None = None
    """Per-head value channels (128 in DeepSeek-V3); None means d_head."""

    def __post_init__(self):
        check_positive(self, "d_model", "n_heads", "d_head", "d_rope", "d_c")
        if self.d_rope % 2:
            raise ValueError(f"d_rope must be even for rotary positions, got {self.d_rope}")
        if self.d_c > self.d_model:
            raise ValueError(f"d_c {self.d_c} is larger than the model width d_model {self.d_model}: the KV latent "
                             "would expand the hidden state instead of compressing it")
        if self.d_cq < 0 or self.d_cq > self.d_model:
            raise ValueError(f"d_cq must be 0 (no query compression) or in 1..d_model {self.d_model}, got {self.d_cq}")
        if self.d_v is not None and self.d_v <= 0:
            raise ValueError(f"d_v must be positive, got {self.d_v}")

    @property
    def value_dim(self) -> int:
        return self.d_head if self.d_v is None else self.d_v

    @property
    def cache_elements_per_token(self) -> int:
        """The formula: the KV latent plus the shared rotary key, independent of the head count."""
        return self.d_c + self.d_rope

    @property
    def softmax_scale(self) -> float:
        return (self.d_head + self.d_rope) ** -0.5


class MLA(nn.Module):
    """MLA over a latent cache, naive form. forward(x) alone is full-sequence causal attention; forward(x, cache)
    appends x's latents and rotary keys to the cache and attends over everything cached."""

    def __init__(self, cfg: MLAConfig, device=None, dtype=None):
        super().__init__()
        self.cfg = cfg
        kw = {"bias": False, "device": device, "dtype": dtype}
        h, dqk = cfg.n_heads, cfg.d_head + cfg.d_rope
        if cfg.d_cq:
            self.wq_a = nn.Linear(cfg.d_model, cfg.d_cq, **kw)  # W_DQ
            self.q_norm = nn.RMSNorm(cfg.d_cq, eps=NORM_EPS, device=device, dtype=dtype)
            self.wq_b = nn.Linear(cfg.d_cq, h * dqk, **kw)  # W_UQ and W_QR, per head [q_C, q_R]
        else:
            self.wq = nn.Linear(cfg.d_model, h * dqk, **kw)
        self.wkv_a = nn.Linear(cfg.d_model, cfg.d_c + cfg.d_rope, **kw)  # W_DKV and W_KR
        self.kv_norm = nn.RMSNorm(cfg.d_c, eps=NORM_EPS, device=device, dtype=dtype)
        self.wkv_b = nn.Linear(cfg.d_c, h * (cfg.d_head + cfg.value_dim), **kw)  # W_UK and W_UV, per head [k_C, v]
        self.wo = nn.Linear(h * cfg.value_dim, cfg.d_model, **kw)

    def new_cache(self, batch: int, capacity: int, device=None, dtype=None) -> KVCache:
        w = self.wkv_a.weight
        kw = {"device": device or w.device, "dtype": dtype or w.dtype}
        return KVCache({"c_kv": torch.zeros(batch, capacity, self.cfg.d_c, **kw),  # [B, capacity, d_c]
                        "k_r": torch.zeros(batch, capacity, self.cfg.d_rope, **kw)})  # [B, capacity, d_rope]

    def forward(self, x: Tensor, cache: KVCache | None = None) -> Tensor:
        B, S, _ = x.shape  # [B, S, D]
        cfg, start = self.cfg, cache.length if cache is not None else 0
        q = self.wq_b(self.q_norm(self.wq_a(x))) if cfg.d_cq else self.wq(x)
        q = q.view(B, S, cfg.n_heads, cfg.d_head + cfg.d_rope).transpose(1, 2)  # [B, H, S, d_head + d_rope]
        q_c, q_r = q.split([cfg.d_head, cfg.d_rope], dim=-1)
        c_kv, k_r = self.wkv_a(x).split([cfg.d_c, cfg.d_rope], dim=-1)  # [B, S, d_c], [B, S, d_rope]
        cos, sin = rope_tables(positions(start, S, x.device), cfg.d_rope)
        q_r, k_r = apply_rope(q_r, cos, sin), apply_rope(k_r, cos, sin)  # RoPE per head on q_R, once on shared k_R
        c_kv = self.kv_norm(c_kv)
        if cache is not None:
            cached = cache.append(c_kv=c_kv, k_r=k_r)
            c_kv, k_r = cached["c_kv"], cached["k_r"]  # [B, T, d_c], [B, T, d_rope]
        o = self.attend(q_c, q_r, c_kv, k_r, start)  # [B, H, S, d_v]
        return self.wo(o.transpose(1, 2).reshape(B, S, cfg.n_heads * cfg.value_dim))

    def attend(self, q_c: Tensor, q_r: Tensor, c_kv: Tensor, k_r: Tensor, start: int) -> Tensor:
        """Up-project all T cached latents to per-head keys and values, then standard attention.

        Per step this moves T x n_heads x (d_head + d_v) elements, 56x the 576 cached per token at DeepSeek-V3's
        sizes: the cache is small but the attention reads as much as MHA's.
        """
        cfg = self.cfg
        B, T, _ = c_kv.shape
        kv = self.wkv_b(c_kv).view(B, T, cfg.n_heads, cfg.d_head + cfg.value_dim).transpose(1, 2)  # [B, H, T, .]
        k_c, v = kv.split([cfg.d_head, cfg.value_dim], dim=-1)
        k = torch.cat([k_c, k_r[:, None].expand(B, cfg.n_heads, T, cfg.d_rope)], dim=-1)  # [B, H, T, dh + d_rope]
        return sdpa(torch.cat([q_c, q_r], dim=-1), k, v, start, scale=cfg.softmax_scale)
