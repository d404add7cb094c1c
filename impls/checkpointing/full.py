"""Full activation checkpointing: keep only each block's input, recompute the block in backward (Chen et al. 2016).

Each transformer block is one torch.utils.checkpoint.checkpoint(use_reentrant=False) call with torch's defaults:
preserve_rng_state=True (the blocks draw no random numbers), determinism_check="default", early_stop=True. The final
LayerNorm runs outside any checkpoint, its activations saved as in the reference.
"""

from torch import Tensor
from torch.utils.checkpoint import checkpoint

from impls.checkpointing.check import check
from impls.checkpointing.reference import Transformer


def forward(model: Transformer, x: Tensor) -> Tensor:
    for block in model.blocks:
        x = checkpoint(block, x, use_reentrant=False)  # [B, S, D]
    return model.norm(x)


if __name__ == "__main__":
    check(forward, "full")
