"""Reference for padding removal: a small decoder trained on a right-padded [B, L] batch with a key-padding mask."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Maps q, k, v [..., H, Dh] (tokens in the caller's layout: [B, L] padded or [T] unpadded) to [..., H, Dh].
Attend = Callable[[Tensor, Tensor, Tensor], Tensor]
PAD_ID = 0  # token id at padded positions; real tokens are drawn from 1..vocab-1
ROPE_BASE = 10000.0  # RoFormer / LLaMA default


@dataclass(frozen=True)
class DecoderConfig:
    vocab: int = 256
    """Vocabulary size: embedding rows and LM-head outputs."""
    d_model: int = 64
    """Width of the residual stream; token-wise layers map [..., d_model] -> [..., d_model]."""
    n_heads: int = 4
    """Attention heads; each has d_model // n_heads channels, an even number for rotary positions."""
    n_layers: int = 2
    """Number of pre-norm decoder blocks."""
    mlp_ratio: int = 4
    """MLP hidden width as a multiple of d_model (4 in GPT-2 and most LLMs)."""

    def __post_init__(self):
        for name in ("vocab", "d_model", "n_heads", "n_layers", "mlp_ratio"):
            assert getattr(self, name) > 0, f"{name} must be positive, got {getattr(self, name)}"
        assert self.vocab >= 2, f"vocab must leave room for the pad id and one real token, got {self.vocab}"
        assert self.d_model % self.n_heads == 0, f"d_model {self.d_model} not divisible by n_heads {self.n_heads}"
        assert self.head_dim % 2 == 0, f"head_dim {self.head_dim} must be even for rotary positions"

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


def rope_tables(position_ids: Tensor, head_dim: int) -> tuple[Tensor, Tensor]:
    """cos and sin [..., 1, Dh/2] for position_ids [...]; positions restart per sequence, so both layouts agree."""
    inv_freq = ROPE_BASE ** -(torch.arange(0, head_dim, 2, device=position_ids.device).float() / head_dim)
    angle = position_ids.float()[..., None] * inv_freq  # [..., Dh/2]
    return angle.cos()[..., None, :], angle.sin()[..., None, :]


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x [..., H, Dh] rotated in fp32, rotate-half pairing (channel j with j + Dh/2, GPT-NeoX / HF Llama layout) by
    angle position * ROPE_BASE^(-2j / Dh) from rope_tables."""
    x1, x2 = x.float().chunk(2, dim=-1)  # [..., H, Dh/2] each, rotated in fp32
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)


class Block(nn.Module):
    """Pre-norm block; every layer but attention is token-wise, so it runs on [B, L, D] and [T, D] alike."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        d, h = cfg.d_model, cfg.mlp_ratio * cfg.d_model
        self.n_heads = cfg.n_heads
        self.norm1 = nn.RMSNorm(d)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d, bias=False)
        self.norm2 = nn.RMSNorm(d)
        self.fc1 = nn.Linear(d, h, bias=False)
        self.fc2 = nn.Linear(h, d, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, attend: Attend) -> Tensor:
        *lead, D = x.shape  # lead is [B, L] or [T]
        H = self.n_heads
        q, k, v = self.qkv(self.norm1(x)).view(*lead, 3, H, D // H).unbind(-3)  # each [..., H, Dh]
        a = attend(apply_rope(q, cos, sin), apply_rope(k, cos, sin), v)  # [..., H, Dh]
        x = x + self.proj(a.reshape(*lead, D))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))  # fc1 out [..., mlp_ratio * D]


class Decoder(nn.Module):
    """Embeddings, rotary positions, blocks, final norm, LM head; forward is the padded reference loss."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.RMSNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab, bias=False)

    def logits_from(self, input_ids: Tensor, position_ids: Tensor, attend: Attend) -> Tensor:
        """Logits [..., vocab] for tokens in any layout, given their positions and an attention over that layout."""
        cos, sin = rope_tables(position_ids, self.cfg.head_dim)
        x = self.embed(input_ids)  # [..., D]
        for block in self.blocks:
            x = block(x, cos, sin, attend)
        return self.head(self.norm(x))

    def logits(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Padded path: logits [B, L, vocab]; values at pad positions are finite and meaningless."""
        B, L = input_ids.shape
        position_ids = torch.arange(L, device=input_ids.device).expand(B, L)  # [B, L]
        return self.logits_from(input_ids, position_ids, padded_attention(attention_mask))

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Mean next-token cross-entropy over real target tokens of a right-padded batch."""
        logits = self.logits(input_ids, attention_mask)  # [B, L, V]
        # With right padding, position t predicts t+1 exactly when t+1 is real (t is then real too).
        valid = attention_mask[:, 1:].bool()  # [B, L-1]
        return token_loss(logits[:, :-1][valid], input_ids[:, 1:][valid])


def padded_attention(attention_mask: Tensor) -> Attend:
    """SDPA over [B, L, H, Dh] with causal plus key-padding masking."""
    L = attention_mask.shape[1]
    causal = torch.ones(L, L, dtype=torch.bool, device=attention_mask.device).tril()  # [L, L]
    allowed = causal & attention_mask.bool()[:, None, None, :]  # [B, 1, L, L]
    # A query with no allowed key would softmax over all -inf and give NaN (then NaN gradients). Letting every query
    # see itself changes nothing for real queries (their own key is real and causal) and keeps pad rows finite.
    allowed = allowed | torch.eye(L, dtype=torch.bool, device=attention_mask.device)

    def attend(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, L, Dh]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed).transpose(1, 2)  # [B, L, H, Dh]

    return attend


def token_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy over N real targets; logits [N, V] reduced in fp32 so bf16 runs compare alike."""
    return F.cross_entropy(logits.float(), targets, reduction="sum") / max(1, targets.numel())


def forward(model: Decoder, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    return model(input_ids, attention_mask)


def make_batch(
    cfg: DecoderConfig, lengths: Sequence[int], seed: int = 0, device: torch.device | str = "cpu"
) -> tuple[Tensor, Tensor]:
    """Right-padded input_ids [B, L] (pad id 0) and attention_mask [B, L] (1 real, 0 pad), L = max(lengths)."""
    if not lengths or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in lengths):
        raise ValueError(f"lengths must be a non-empty list of integers >= 1, got {list(lengths)[:8]!r}")
    g = torch.Generator().manual_seed(seed)
    L = max(lengths)
    mask = (torch.arange(L)[None, :] < torch.tensor(lengths)[:, None]).long()  # [B, L]
    ids = torch.randint(1, cfg.vocab, (len(lengths), L), generator=g) * mask
    return ids.to(device), mask.to(device)


if __name__ == "__main__":
    cfg = DecoderConfig()
    torch.manual_seed(0)
    ids, mask = make_batch(cfg, [5, 12, 1, 9])
    loss = Decoder(cfg)(ids, mask)
    print(f"padded reference: loss {loss.item():.4f} (ln vocab {torch.tensor(float(cfg.vocab)).log().item():.4f})")
