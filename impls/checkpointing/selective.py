"""Selective activation checkpointing: save matmul and attention outputs, recompute pointwise ops (Korthikanti 2022)."""

import functools

from torch import Tensor
from torch.ops import aten
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from impls.checkpointing.reference import Transformer, check

_SDPA_OPS = (
    "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention",
    "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_fused_attention_overrideable",
)
# Matmuls cost O(S * D^2) and fused attention O(S^2 * D) FLOPs per layer; their outputs are what is worth keeping.
# Norms, GELU, adds and softmax are O(S * D) and memory bound, so recomputing them is nearly free.
SAVE_OPS = frozenset(
    [aten.mm, aten.addmm, aten.bmm, aten.baddbmm, aten.linear]
    + [op for name in _SDPA_OPS if (op := getattr(aten, name, None)) is not None]
)


def policy(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    if op.overloadpacket in SAVE_OPS:
        return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


def forward(model: Transformer, x: Tensor) -> Tensor:
    context_fn = functools.partial(create_selective_checkpoint_contexts, policy)
    for block in model.blocks:
        x = checkpoint(block, x, use_reentrant=False, context_fn=context_fn)  # [B, S, D]
    return model.norm(x)


if __name__ == "__main__":
    check(forward, "selective")
