"""What every attention variant here shares: the per-layer KV cache, rotary positions and the causal mask.

The cache is a set of real, preallocated tensors, so its bytes per token are counted from them (numel x element size)
rather than computed from a formula; each variant's config carries the formula, and the tests hold the two equal.
"""

from __future__ import annotations

import torch
from torch import Tensor

ROPE_BASE = 10000.0  # RoFormer / LLaMA / DeepSeek-V2 default


class KVCache:
    """One layer's cache: named tensors [B, *heads, capacity, dim], filled along dim -2 up to `length`.

    MHA/GQA hold k and v [B, H_kv, capacity, Dh]; MLA holds the latent c_kv [B, capacity, d_c] and the shared rotary
    key k_r [B, capacity, d_rope]. Decoding writes each new token at `length` and attends over [:length].
    """

    def __init__(self, tensors: dict[str, Tensor]):
        if not tensors:
            raise ValueError("a cache needs at least one tensor")
        shapes = {(t.shape[0], t.shape[-2]) for t in tensors.values()}
        if len(shapes) != 1:
            raise ValueError(f"cache tensors disagree on (batch, capacity): {sorted(shapes)}")
        (self.batch, self.capacity), = shapes
        self.tensors = tensors
        self.length = 0

    def append(self, **new: Tensor) -> dict[str, Tensor]:
        """Write S new tokens (each tensor [B, *heads, S, dim]) at `length`; returns views of [:length + S]."""
        if set(new) != set(self.tensors):
            raise ValueError(f"append needs exactly {sorted(self.tensors)}, got {sorted(new)}")
        start, end = self.length, self.length + next(iter(new.values())).shape[-2]
        if end > self.capacity:
            raise ValueError(f"cache holds {self.capacity} tokens; {start} cached + {end - start} new do not fit")
        for name, t in new.items():
            self.tensors[name][..., start:end, :] = t
        self.length = end
        return {name: t[..., :end, :] for name, t in self.tensors.items()}

    def total_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def bytes_per_token(self) -> int:
        """Bytes held per cached token of one sequence in this layer, counted from the tensors themselves."""
        slots = self.batch * self.capacity
        total = self.total_bytes()
        assert total % slots == 0, f"{total} bytes do not split into {slots} token slots"
        return total // slots

    def elements_per_token(self) -> int:
        return sum(t.numel() for t in self.tensors.values()) // (self.batch * self.capacity)


def rope_tables(positions: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """cos and sin [S, dim/2] in fp32 for positions [S]: angle[s, j] = positions[s] * ROPE_BASE^(-2j / dim).

    Plain RoPE, no context extension: DeepSeek-V3's inference/model.py applies YaRN to these frequencies (rope_factor
    40, beta_fast 32, beta_slow 1) whenever max_seq_len > original_seq_len (4096), and then also scales its softmax
    by mscale^2 (MLAConfig.softmax_scale has no such factor)."""
    inv_freq = ROPE_BASE ** -(torch.arange(0, dim, 2, device=positions.device).float() / dim)
    angle = positions.float()[:, None] * inv_freq  # [S, dim/2]
    return angle.cos(), angle.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate x [..., S, dim] by its positions (rotate-half pairing), in fp32; cos/sin [S, dim/2].

    Channel j pairs with j + dim/2 (GPT-NeoX / LLaMA-HF layout). DeepSeek-V3's inference/model.py pairs neighbours
    (2j, 2j+1) through torch.view_as_complex instead; the two are the same rotation up to a fixed permutation of the
    rotary channels of W_QR and W_KR, so they agree on freshly initialised weights, but DeepSeek's checkpoints would
    need that permutation applied to their rotary rows to load here (the tests check the equivalence).
    """
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)


def positions(start: int, length: int, device) -> Tensor:
    return torch.arange(start, start + length, device=device)


def causal_mask(start: int, new: int, total: int, device) -> Tensor | None:
    """Boolean [new, total] mask (True = attend) for `new` queries at positions start.. over `total` keys.

    None when every query sees every key: a single decoded token attends to the whole cache.
    """
    if new == 1:
        return None
    q = torch.arange(start, start + new, device=device)[:, None]
    return torch.arange(total, device=device)[None, :] <= q  # [new, total]


def check_positive(cfg, *names: str) -> None:
    for name in names:
        if getattr(cfg, name) <= 0:
            raise ValueError(f"{name} must be positive, got {getattr(cfg, name)}")
