"""Activation offloading: move every tensor saved for backward to host memory and back.

Not ZeRO-Offload, which moves optimizer state and gradients; DeepSpeed's activation checkpointing with
cpu_checkpointing moves only the checkpointed inputs (and recomputes the rest), where this moves every saved tensor.

torch.autograd.graph.save_on_cpu(pin_memory=x.is_cuda) around the whole model, final norm included: nothing is
recomputed, every saved tensor is copied to the host in forward and back in backward.
"""

import torch
from torch import Tensor

from impls.checkpointing.check import check
from impls.checkpointing.reference import Transformer


def forward(model: Transformer, x: Tensor) -> Tensor:
    # On a CPU device the "offloaded" copies are the tensors themselves (.cpu() of a CPU tensor is a no-op), so
    # nothing is saved there: a result, not a bug. Pinned host memory lets the CUDA copies run asynchronously.
    with torch.autograd.graph.save_on_cpu(pin_memory=x.is_cuda):
        return model(x)


if __name__ == "__main__":
    check(forward, "offload")
