"""Reference for activation checkpointing: a pre-norm transformer trained with every activation saved."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


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


class _StorageTracker(TorchDispatchMode):
    """Weakly remembers the storage of every op output, to see which ones autograd keeps alive."""

    def __init__(self):
        super().__init__()
        self.refs: dict[int, tuple[StorageWeakRef, int, str]] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, Tensor):
                s = t.untyped_storage()
                self.refs.setdefault(s._cdata, (StorageWeakRef(s), s.nbytes(), str(t.device.type)))
        return out


def saved_bytes(variant: Callable[[Transformer, Tensor], Tensor], model: Transformer, x: Tensor) -> dict[str, int]:
    """Bytes per device type that the forward leaves alive for backward (output, params and input excluded)."""
    tracker = _StorageTracker()
    with tracker:
        out = variant(model, x)
    skip = {t.untyped_storage()._cdata for t in (out, x, *model.parameters())}
    total: dict[str, int] = {}
    for cdata, (ref, nbytes, device) in tracker.refs.items():
        if cdata not in skip and not ref.expired():
            total[device] = total.get(device, 0) + nbytes
    return total


def check(variant: Callable[[Transformer, Tensor], Tensor], name: str) -> None:
    """Print the variant's loss and gradient gap to the reference and the activation bytes each keeps."""
    cfg = TransformerConfig(d_model=64, n_heads=4, n_layers=4)
    torch.manual_seed(0)
    model = Transformer(cfg)
    x, target = make_batch(cfg, batch=2, seq=32, device="cpu", dtype=torch.float32)
    grads = {}
    for label, fn in (("reference", forward), (name, variant)):
        model.zero_grad(set_to_none=True)
        xg = x.clone().requires_grad_()
        loss = loss_fn(fn(model, xg), target)
        loss.backward()
        grads[label] = (loss.detach(), [xg.grad, *(p.grad for p in model.parameters())])
    (ref_loss, ref_g), (loss, g) = grads["reference"], grads[name]
    gap = max((a - b).abs().max().item() for a, b in zip(ref_g, g, strict=True))
    x.requires_grad_()
    ref_mib = {k: round(v / 2**20, 3) for k, v in saved_bytes(forward, model, x).items()}
    mib = {k: round(v / 2**20, 3) for k, v in saved_bytes(variant, model, x).items()}
    print(f"{name}: loss gap {abs(loss - ref_loss).item():.2e}, max abs grad diff {gap:.2e}")
    print(f"saved activations: reference {ref_mib} MiB, {name} {mib} MiB ({cfg}, batch 2, seq 32)")


if __name__ == "__main__":
    check(forward, "none")
