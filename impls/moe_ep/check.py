"""Expert-parallel against one process: run under torchrun (gloo on CPU); rank 0 prints the largest differences,
or writes them as JSON to the path given. Every rank routes its own tokens; one process runs all of them."""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist

from impls.moe.reference import MoE, MoEConfig
from impls.moe_ep.ep import Traffic, expert_parallel, expert_range


def compare(cfg: MoEConfig, tokens: int = 24, backend: str = "auto") -> dict:
    rank, world = dist.get_rank(), dist.get_world_size()
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(1, tokens, cfg.dim, generator=g) for _ in range(world)]  # each rank's tokens
    grads_out = [torch.randn(1, tokens, cfg.dim, generator=g) for _ in range(world)]
    torch.manual_seed(0)
    single = MoE(cfg)
    torch.manual_seed(0)
    traffic = Traffic()
    ep = expert_parallel(MoE(cfg), traffic, backend)

    y_all, routing = single(torch.cat(xs, 1))  # one process, every rank's tokens: [1, W T, D]
    (y_all * torch.cat(grads_out, 1)).sum().backward()  # a sum over tokens: gradients add over ranks
    y, _ = ep(xs[rank])
    (y * grads_out[rank]).sum().backward()
    for p in (*ep.router.parameters(), *ep.shared.parameters()):  # replicated: summed, as data parallelism does
        dist.all_reduce(p.grad)

    lo, hi = expert_range(cfg.n_routed, rank, world)
    mine = routing.indices.view(world, tokens, cfg.top_k)[rank]  # this rank's tokens' experts
    remote = int(((mine < lo) | (mine >= hi)).sum())
    expert_grad = max((ep.experts.w1.grad - single.experts.w1.grad[lo:hi]).abs().max().item(),
                      (ep.experts.w2.grad - single.experts.w2.grad[lo:hi]).abs().max().item())
    replicated = [(a.grad - b.grad).abs().max().item() for a, b in
                  zip((*ep.router.parameters(), *ep.shared.parameters()),
                      (*single.router.parameters(), *single.shared.parameters()))]
    return {
        "output": (y - y_all[:, rank * tokens:(rank + 1) * tokens]).abs().max().item(),
        "output_scale": y_all.abs().max().item(),
        "expert_grad": expert_grad,
        "replicated_grad": max(replicated),
        "remote_slots": remote,
        "traffic": {"sent_rows": traffic.sent_rows, "recv_rows": traffic.recv_rows, "sent_bytes": traffic.sent_bytes,
                    "splits": traffic.splits},
        "row_bytes": cfg.dim * 4,
    }


if __name__ == "__main__":
    dist.init_process_group("gloo")
    cfg = MoEConfig(dim=16, n_routed=8, top_k=3, expert_hidden=8)
    results = {backend: compare(cfg, backend=backend) for backend in ("torch", "grouped_mm")}
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, results)
    if dist.get_rank() == 0:
        if len(sys.argv) > 1:
            with open(sys.argv[1], "w") as f:
                json.dump({"world": dist.get_world_size(), "ranks": gathered}, f)
        for r, res in enumerate(gathered):
            for backend, e in res.items():
                print(f"rank {r} {backend:<10} |out diff| {e['output']:.1e} |expert grad diff| {e['expert_grad']:.1e}"
                      f" |replicated grad diff| {e['replicated_grad']:.1e}  remote slots {e['remote_slots']}"
                      f"  sent rows {e['traffic']['sent_rows']}")
    dist.barrier()
    del results, gathered
    import gc

    gc.collect()
    dist.destroy_process_group()
