"""sqrt(n) checkpointing: ~sqrt(n) segments of blocks, each checkpointed, keeping segment inputs (Chen et al. 2016).

Memory O(sqrt(n)) block activations: sqrt(n) segment inputs are kept, and one segment of ~sqrt(n) blocks is live at
a time during recompute. Unlike torch.utils.checkpoint.checkpoint_sequential, which runs its last segment without
checkpointing, every segment here is checkpointed, as in the paper. Each segment is one
torch.utils.checkpoint.checkpoint(use_reentrant=False) call with torch's defaults (preserve_rng_state=True); the
final LayerNorm runs outside, as in full.py.
"""

import math

from torch import Tensor
from torch.utils.checkpoint import checkpoint

from impls.checkpointing.check import check
from impls.checkpointing.reference import Transformer


def segments(n_layers: int) -> list[range]:
    """round(sqrt(n)) contiguous, near-equal ranges of block indices (8 layers: 3, 2, 3)."""
    k = max(1, round(math.sqrt(n_layers)))
    bounds = [round(i * n_layers / k) for i in range(k + 1)]
    return [range(a, b) for a, b in zip(bounds, bounds[1:])]


def _run(blocks):
    def run(x: Tensor) -> Tensor:
        for block in blocks:
            x = block(x)
        return x

    return run


def forward(model: Transformer, x: Tensor) -> Tensor:
    for seg in segments(len(model.blocks)):
        x = checkpoint(_run([model.blocks[i] for i in seg]), x, use_reentrant=False)  # [B, S, D]
    return model.norm(x)


if __name__ == "__main__":
    check(forward, "sqrt")
