"""Sharded against one process: every checkpointing variant under FSDP2 gives the gradients that one process gets
on all ranks' batches at once (run under torchrun; rank 0 prints, or writes them as JSON to the path given)."""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist

from impls.checkpointing import VARIANTS, Transformer, TransformerConfig
from impls.checkpointing.reference import loss_fn, make_batch
from impls.fsdp_checkpointing.shard import full_grads, shard


def grad_errors(cfg: TransformerConfig, batch: int = 2, seq: int = 16) -> dict[str, dict[str, float]]:
    """Per variant: the largest |sharded - one-process| gradient and loss differences, on this rank."""
    rank, world = dist.get_rank(), dist.get_world_size()
    batches = [make_batch(cfg, batch, seq, "cpu", torch.float32, seed=r) for r in range(world)]
    x, target = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    out = {}
    for name, forward in VARIANTS.items():
        torch.manual_seed(0)
        single = Transformer(cfg)
        torch.manual_seed(0)
        sharded = shard(Transformer(cfg))  # the same initial weights, then sharded
        # equal batches per rank: the mean of the ranks' mean losses is the mean loss over every rank's batch,
        # and FSDP averages gradients over ranks
        full_loss = loss_fn(forward(single, x), target)
        full_loss.backward()
        loss = loss_fn(forward(sharded, batches[rank][0]), batches[rank][1])
        loss.backward()
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        grads = full_grads(sharded)
        out[name] = {"grad": max((grads[n] - p.grad).abs().max().item() for n, p in single.named_parameters()),
                     "loss": abs(mean_loss.item() / world - full_loss.item()),
                     "grad_scale": max(p.grad.abs().max().item() for p in single.parameters())}
    return out


if __name__ == "__main__":
    dist.init_process_group("gloo")
    errors = grad_errors(TransformerConfig(d_model=32, n_heads=4, n_layers=4))
    if dist.get_rank() == 0:
        if len(sys.argv) > 1:
            with open(sys.argv[1], "w") as f:
                json.dump({"world": dist.get_world_size(), "errors": errors}, f)
        for name, e in errors.items():
            print(f"{name:<10} max |grad diff| {e['grad']:.2e} (largest grad {e['grad_scale']:.2e}), "
                  f"|loss diff| {e['loss']:.2e}")
    dist.barrier()  # no rank tears gloo down while another still works: that race can abort at exit
    dist.destroy_process_group()
