"""Checks a checkpointing variant against the reference: loss and gradient gap, and the bytes its forward keeps.

Used by each variant's `python -m impls.checkpointing.<variant>`; torch only, like the rest of impls/.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from impls.checkpointing.reference import Transformer, TransformerConfig, forward, loss_fn, make_batch


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
