"""Reference for activation checkpointing: a pre-norm transformer trained with every activation saved.

The model: n_layers blocks x -> x + proj(attn(LayerNorm(x))) -> x + fc2(GELU(fc1(LayerNorm(x)))), Linears with bias,
exact (erf) GELU, causal SDPA with no positional encoding (the inputs are random [B, S, D] embeddings; position does
not change what is saved), then a final LayerNorm. The loss is MSE in fp32 against a random target of the same shape.
Every variant (impls/checkpointing/*.py) runs these same modules and checkpoints per block: a block is the unit
"full" recomputes and "sqrt" groups into segments; the final LayerNorm is never checkpointed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class TransformerConfig:
    d_model: int
    """Width of the residual stream; every block maps [B, S, d_model] -> [B, S, d_model]."""
    n_heads: int
    """Attention heads; each has d_model // n_heads channels."""
    n_layers: int
    """Number of transformer blocks, the units that checkpointing recomputes."""
    mlp_ratio: int = 4
    """MLP hidden width as a multiple of d_model (4 in GPT-2 and most LLMs)."""

    def __post_init__(self):
        for name in ("d_model", "n_heads", "n_layers", "mlp_ratio"):
            assert getattr(self, name) > 0, f"{name} must be positive, got {getattr(self, name)}"
        assert self.d_model % self.n_heads == 0, f"d_model {self.d_model} not divisible by n_heads {self.n_heads}"

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


class Block(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        d, h = cfg.d_model, cfg.mlp_ratio * cfg.d_model
        self.n_heads = cfg.n_heads
        self.norm1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, h)
        self.fc2 = nn.Linear(h, d)

    def forward(self, x: Tensor) -> Tensor:
        B, S, D = x.shape  # [B, S, D]
        H = self.n_heads
        qkv = self.qkv(self.norm1(x)).view(B, S, 3, H, D // H)  # [B, S, 3, H, Dh]
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H, S, Dh]
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # [B, H, S, Dh]
        x = x + self.proj(a.transpose(1, 2).reshape(B, S, D))  # [B, S, D]
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))  # fc1 out [B, S, mlp_ratio * D]


class Transformer(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.d_model)

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return self.norm(x)  # [B, S, D]


def loss_fn(out: Tensor, target: Tensor) -> Tensor:
    return F.mse_loss(out.float(), target.float())  # scalar, fp32 so bf16 runs reduce alike


def forward(model: Transformer, x: Tensor) -> Tensor:
    return model(x)


def make_batch(
    cfg: TransformerConfig, batch: int, seq: int, device: torch.device | str, dtype: torch.dtype, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Input and target, both [B, S, D]; drawn on CPU so every device gets the same numbers."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, seq, cfg.d_model, generator=g)
    target = torch.randn(batch, seq, cfg.d_model, generator=g)
    return x.to(device, dtype), target.to(device, dtype)


if __name__ == "__main__":
    from impls.checkpointing.check import check

    check(forward, "none")
