"""Full activation checkpointing: keep only each block's input, recompute the block in backward (Chen et al. 2016)."""

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
