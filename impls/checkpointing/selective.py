"""Selective activation checkpointing: save matmul and attention outputs, recompute pointwise ops (Korthikanti 2022).

Korthikanti et al. recompute the attention core (QK^T, softmax, dropout, attention over V), whose S x S tensors are
large and cheap to redo. A fused SDPA keeps no S x S tensor, so here its output is saved and the recompute falls on
the pointwise ops instead (norms, GELU, residual adds). Each block is one checkpoint(use_reentrant=False,
context_fn=create_selective_checkpoint_contexts(policy)) with torch's other defaults (preserve_rng_state=True); the
final LayerNorm runs outside.
"""

from torch import Tensor
from torch.ops import aten
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from impls.checkpointing.check import check
from impls.checkpointing.reference import Transformer

_SDPA_OPS = (
    "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention",
    "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_fused_attention_overrideable",
)
# Matmuls cost O(S * D^2) and fused attention O(S^2 * D) FLOPs per layer; their outputs are what is worth keeping.
# Norms, GELU, adds and softmax are O(S * D) and memory bound, so recomputing them is nearly free.
LINEAR_OPS = frozenset([aten.mm, aten.addmm])
SAVE_OPS = frozenset(
    [aten.bmm, aten.baddbmm] + [op for name in _SDPA_OPS if (op := getattr(aten, name, None)) is not None]
)
# A block runs four Linears: qkv, proj, fc1, fc2. fc2's output only feeds the residual add, whose backward needs no
# input, and non-reentrant recompute stops before fc2, so saving it would keep one [B, S, D] per block for nothing.
SAVED_LINEARS = 3


def make_policy(saved_linears: int = SAVED_LINEARS):
    """A policy for one checkpointed block: save the outputs of its first `saved_linears` matmuls and of attention and
    bmm, recompute pointwise work (norms, activations, rotary, adds)."""
    seen = {False: 0, True: 0}  # Linears met in the forward and in the recompute: both passes run in the same order

    def policy(ctx, op, *args, **kwargs) -> CheckpointPolicy:
        if op.overloadpacket in LINEAR_OPS:
            seen[ctx.is_recompute] += 1
            keep = seen[ctx.is_recompute] <= saved_linears
            return CheckpointPolicy.MUST_SAVE if keep else CheckpointPolicy.PREFER_RECOMPUTE
        if op.overloadpacket in SAVE_OPS:
            return CheckpointPolicy.MUST_SAVE
        return CheckpointPolicy.PREFER_RECOMPUTE

    return policy


def _contexts():
    return create_selective_checkpoint_contexts(make_policy())


def forward(model: Transformer, x: Tensor) -> Tensor:
    for block in model.blocks:
        x = checkpoint(block, x, use_reentrant=False, context_fn=_contexts)  # [B, S, D]
    return model.norm(x)


if __name__ == "__main__":
    check(forward, "selective")
