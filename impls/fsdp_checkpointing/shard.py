"""FSDP2 (torch.distributed.fsdp.fully_shard; Zhao et al. 2023, "PyTorch FSDP") on the checkpointing suite's
transformer. Each block is one sharding unit: its parameters live as 1/world shards, are all-gathered just before
the block's forward (and again before its backward, or its recompute under checkpointing) and freed after, and its
gradients are reduce-scattered back to shards. The final norm is a unit of its own, not part of a root unit: the
checkpointing variants call the blocks and the norm one by one, never the model's forward, which is where a root
unit would gather its parameters.

`python -m torch.distributed.run --standalone --nproc-per-node 2 -m impls.fsdp_checkpointing.check` compares the
sharded gradients of every checkpointing variant with one process's.

Sharding divides parameter, gradient and optimizer bytes by the world size; checkpointing divides activation bytes
by what it recomputes. They compound: per rank, the peak is about params / world + one unsharded block + the
activations the checkpointing variant keeps.
"""

from __future__ import annotations

import torch
from torch import nn

from impls.checkpointing.reference import Transformer


def shard(model: Transformer, reshard_after_forward: bool = True) -> Transformer:
    """`model` with each block and the final norm under fully_shard over the default process group, in place, on a
    mesh of the device the model is on (the CPU's for a model on meta, as bench's plan expects). Not fully_shard's
    default mesh: that is the machine's accelerator's, so on a machine with a GPU it would move a CPU model's
    parameters to the GPU, and gloo's CPU run would fail. fully_shard's other defaults hold: no MixedPrecisionPolicy
    (gathers and reduce-scatters in the parameters' dtype) and gradients averaged over the ranks."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    kind = next(model.parameters()).device.type
    mesh = init_device_mesh("cpu" if kind == "meta" else kind, (dist.get_world_size(),))
    for unit in [*model.blocks, model.norm]:
        fully_shard(unit, mesh=mesh, reshard_after_forward=reshard_after_forward)
    return model


def local_bytes(tensors) -> int:
    """Bytes this rank holds of each (DTensor shard or plain) tensor."""
    total = 0
    for t in tensors:
        local = t.to_local() if hasattr(t, "to_local") else t
        total += local.numel() * local.element_size()
    return total


def full_grads(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter's whole gradient (all-gathered from the shards: a collective, every rank must call it)."""
    return {name: (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).detach().clone()
            for name, p in model.named_parameters()}

