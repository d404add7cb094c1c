"""Reference for multi-token prediction: a plain pre-norm causal transformer LM trained on next-token prediction only.

RMSNorm, rotary positions (Su et al. 2021) and a KV cache for decoding; the trunk that DeepSeek-V3's MTP modules
(mtp.py, DeepSeek-AI 2024, arXiv:2412.19437 §2.2) sit on, and the model that plain greedy decoding runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class LMConfig:
    vocab: int = 64
    """Token ids 0..vocab-1."""
    d_model: int = 64
    """Width of the residual stream."""
    n_heads: int = 4
    """Attention heads of d_model // n_heads channels each (an even count: RoPE rotates channel pairs)."""
    n_layers: int = 2
    """Transformer blocks of the main model (each MTP module adds one more)."""
    mlp_ratio: int = 4
    """MLP hidden width as a multiple of d_model."""
    rope_base: float = 10000.0

    def __post_init__(self):
        for name in ("vocab", "d_model", "n_heads", "n_layers", "mlp_ratio"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ValueError(f"d_model {self.d_model} must split into {self.n_heads} heads of an even width")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


class KVCache:
    """Keys and values of the positions processed so far, for `layers` blocks: [layers, B, H, max_len, Dh] buffers
    and one length. A verified-and-rejected draft is dropped by `truncate`, not by copying."""

    def __init__(self, cfg: LMConfig, layers: int, batch: int, max_len: int, device=None, dtype=None):
        shape = (layers, batch, cfg.n_heads, max_len, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    def truncate(self, length: int) -> None:
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a cache of {self.length} positions to {length}")
        self.length = length


@dataclass(frozen=True)
class Positions:
    """What attention needs to know of positions start..start+length-1: RoPE's cos and sin [length, 1, 1, Dh/2] and the
    causal mask of these queries against the cache (None where SDPA's own causal flag or no mask is exact)."""

    start: int
    length: int
    cos: Tensor
    sin: Tensor
    mask: Tensor | None


def positions(cfg: LMConfig, start: int, length: int, device) -> Positions:
    cos, sin = _rope_table(cfg, _round_up(start + length), str(device))
    mask = None
    if start > 0 and length > 1:  # a token and its draft at start, start+1: causal against the cache
        query = torch.arange(start, start + length, device=device)[:, None]
        mask = torch.arange(start + length, device=device) <= query  # [length, start + length]
    return Positions(start, length, cos[start:start + length], sin[start:start + length], mask)


def _round_up(n: int) -> int:
    return max(64, 1 << (n - 1).bit_length())


@lru_cache(maxsize=16)
def _rope_table(cfg: LMConfig, n: int, device: str) -> tuple[Tensor, Tensor]:
    # computed once per (config, length bucket, device): the angles cost 6 small ops, ~33 us against ~1.1 ms for a
    # 1-token forward of the quick model on CPU, paid per decode step by the main model and the MTP module alike
    inv_freq = cfg.rope_base ** -(torch.arange(0, cfg.head_dim, 2, device=device, dtype=torch.float32) / cfg.head_dim)
    angle = torch.arange(n, device=device, dtype=torch.float32)[:, None, None, None] * inv_freq  # [n, 1, 1, Dh/2]
    return angle.cos(), angle.sin()


def apply_rope(x: Tensor, pos: Positions) -> Tensor:
    """x [B, S, ..., H, Dh] rotated by position: interleaved pairs, channel 2j with 2j + 1, by angle
    position * rope_base^(-2j / Dh) (Meta's LLaMA and DeepSeek-V3's view_as_complex layout; impls.mla and impls.rmpad
    use the rotate-half layout instead). Positions are absolute: pos.start.. over the KV cache."""
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)  # [B, S, ..., H, Dh/2] each
    cos, sin = pos.cos, pos.sin
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2).to(x.dtype)


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


class Block(nn.Module):
    """Pre-norm block: causal self-attention with RoPE, then a GELU MLP."""

    def __init__(self, cfg: LMConfig):
        super().__init__()
        d = cfg.d_model
        self.cfg = cfg
        self.norm1, self.norm2 = RMSNorm(d), RMSNorm(d)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d, bias=False)
        self.fc1 = nn.Linear(d, cfg.mlp_ratio * d, bias=False)
        self.fc2 = nn.Linear(cfg.mlp_ratio * d, d, bias=False)

    def forward(self, x: Tensor, pos: Positions, cache: KVCache | None = None, layer: int = 0) -> Tensor:
        B, S, D = x.shape  # [B, S, D]
        H, Dh = self.cfg.n_heads, self.cfg.head_dim
        qkv = self.qkv(self.norm1(x)).view(B, S, 3, H, Dh)
        qk = apply_rope(qkv[:, :, :2], pos).transpose(1, 3)  # [B, H, 2, S, Dh]: q and k rotated in one pass
        q, k, v = qk[:, :, 0], qk[:, :, 1], qkv[:, :, 2].transpose(1, 2)  # [B, H, S, Dh]
        start = pos.start
        if cache is not None:
            cache.k[layer, :, :, start:start + S] = k
            cache.v[layer, :, :, start:start + S] = v
            k, v = cache.k[layer, :, :, :start + S], cache.v[layer, :, :, :start + S]  # [B, H, start + S, Dh]
        # from 0: SDPA's causal flag; one new query: it sees every cached key; else the mask of `positions`
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=pos.mask, is_causal=start == 0 and S > 1)
        x = x + self.proj(a.transpose(1, 2).reshape(B, S, D))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class TransformerLM(nn.Module):
    """tokens [B, S] -> next-token logits [B, S, V]; `hidden` gives the residual stream before the final norm, which
    is what an MTP module reads (h^0 in DeepSeek-V3 eq. 21)."""

    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab, bias=False)

    def hidden(self, tokens: Tensor, cache: KVCache | None = None) -> Tensor:
        start = 0 if cache is None else cache.length
        if cache is not None and start + tokens.shape[1] > cache.max_len:
            raise ValueError(f"cache holds {cache.max_len} positions, {start} used, {tokens.shape[1]} more asked")
        pos = positions(self.cfg, start, tokens.shape[1], tokens.device)
        x = self.embed(tokens)  # [B, S, D]
        for i, block in enumerate(self.blocks):
            x = block(x, pos, cache, i)
        if cache is not None:
            cache.length += tokens.shape[1]
        return x

    def logits(self, h: Tensor) -> Tensor:
        return self.head(self.norm(h))

    def forward(self, tokens: Tensor, cache: KVCache | None = None) -> Tensor:
        return self.logits(self.hidden(tokens, cache))

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        p = self.head.weight
        return KVCache(self.cfg, self.cfg.n_layers, batch, max_len, p.device, p.dtype)


def check_tokens(tokens: Tensor, min_len: int) -> None:
    if tokens.dim() != 2 or tokens.dtype != torch.long:
        raise ValueError(f"tokens must be a [B, S] long tensor, got {tuple(tokens.shape)} {tokens.dtype}")
    if tokens.shape[1] < min_len:
        raise ValueError(f"sequences of {tokens.shape[1]} tokens are too short: need at least {min_len}")


def lm_loss(model: TransformerLM, tokens: Tensor) -> Tensor:
    """Next-token cross-entropy of tokens [B, T+1]: inputs t_1..t_T, targets t_2..t_{T+1}, mean over B*T."""
    check_tokens(tokens, 2)
    logits = model(tokens[:, :-1])  # [B, T, V]
    return F.cross_entropy(upcast(logits).flatten(0, 1), tokens[:, 1:].flatten())


def upcast(logits: Tensor) -> Tensor:
    """bf16/fp16 logits to fp32 for the loss (a 4096-way softmax in bf16 loses ~2 digits); fp32/fp64 kept."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))
