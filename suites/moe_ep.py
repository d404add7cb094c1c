"""Expert parallelism: the DeepSeekMoE layer with its routed experts sharded over torchrun ranks and tokens moved by
all-to-all (impls.moe_ep), against every rank holding every expert (data parallelism: no all-to-all, but each rank
stores all experts and all-reduces all their gradients).

Each rank runs `tokens` tokens through one layer, forward and backward, then all-reduces the gradients of what it
replicates (the router and shared experts under EP; everything when replicated), as a data-parallel step would.
alltoall_bytes are what this rank sends to other ranks per step (dispatch and combine, forward and backward; counted
from the split sizes), alltoall_time_ms the same all-to-alls replayed alone, and alltoall_share their fraction of the
step; allreduce_bytes the gradient bytes all-reduced per step. Softmax top-k routing of an untrained gate: about
even loads, the best case for EP.
"""

from __future__ import annotations

import torch

from bench.memory import peak_bytes
from bench.metrics import Metric, timing
from bench.suite import Measurement, Relative, Suite, register, run_dtype
from bench.timing import time_fixed
from bench.work import Work, rates
from impls.moe.grouped import dispatcher
from impls.moe.reference import MoE, MoEConfig
from impls.moe_ep.ep import Traffic, expert_parallel

# (dim, routed experts, top-k, expert hidden, tokens per rank). full: DeepSeek-V3's layer (7168 wide, 256 experts of
# 2048, top-8): 22.5 GB of bf16 expert weights on one rank when replicated, 1/W of it under EP.
GRIDS = {
    "smoke": [(32, 8, 2, 16, 64)],
    "quick": [(64, 16, 4, 64, 512), (64, 64, 4, 64, 512)],
    "full": [(7168, 64, 8, 2048, 4096), (7168, 256, 8, 2048, 4096)],
}


@register
class MoeEP(Suite):
    name = "moe_ep"
    description = "communication for scale: expert-parallel MoE (all-to-all) against replicated experts, per rank"
    variants = {
        "replicated": "reference: every rank holds every expert; gradients of all of them all-reduced",
        "ep": "experts sharded over the ranks, slots dispatched and combined with all_to_all_single (GShard, "
              "DeepSeek-V3)",
    }
    world_sizes = (1, 2, 4, 8)
    not_plannable = ("the all-to-alls' split sizes come from every rank's gate scoring its own tokens, values that the "
                     "plan's one rank on meta does not have")
    relative = (
        Relative("speedup_x", "step_time_ms", invert=True),
        Relative("mem_saving_x", "peak_mem_bytes", invert=True),
    )
    metrics = (
        *timing("step_time", "one forward + backward of the layer with its gradient all-reduces"),
        *rates("step_time", tokens=True, what="over all ranks"),
        Metric("peak_mem_bytes", "exact", "lower", "peak bytes allocated by one step on this rank"),
        Metric("param_bytes", "exact", "lower", "bytes of the layer's parameters held by this rank"),
        Metric("alltoall_bytes", "exact", "lower", "bytes this rank sends to other ranks by all-to-all per step"),
        Metric("allreduce_bytes", "exact", "lower", "gradient bytes all-reduced per step"),
        Metric("alltoall_time_ms", "measured", "lower", "median time of the step's four all-to-alls replayed alone"),
        Metric("alltoall_share", "derived", "lower", "fraction of the step spent in the all-to-alls",
               inputs=("alltoall_time_ms", "step_time_ms")),
    )

    def grid(self, size, device):
        dtype = run_dtype(device)
        return [{"dim": d, "experts": e, "top_k": k, "hidden": h, "tokens": t, "dtype": dtype}
                for d, e, k, h, t in GRIDS[size]]

    def measure(self, variant, params, device):
        import torch.distributed as dist

        rank, world = dist.get_rank(), dist.get_world_size()
        dtype = getattr(torch, params["dtype"])
        cfg = MoEConfig(dim=params["dim"], n_routed=params["experts"], top_k=params["top_k"],
                        expert_hidden=params["hidden"])
        layer, traffic = MoE(cfg), Traffic()  # the same weights on every rank (the runner seeds each alike)
        if variant == "ep":
            expert_parallel(layer, traffic)
            replicated = [*layer.router.parameters(), *(layer.shared.parameters() if layer.shared else ())]
        else:
            layer.dispatch = dispatcher("auto")
            replicated = list(layer.parameters())
        layer = layer.to(device, dtype)
        g = torch.Generator().manual_seed(rank)
        x = torch.randn(1, params["tokens"], cfg.dim, generator=g).to(device, dtype)

        def step():
            layer.zero_grad(set_to_none=True)
            y, _ = layer(x)
            y.float().square().mean().backward()
            for p in replicated:
                dist.all_reduce(p.grad)

        step()
        traffic.reset()
        step()
        sent_per_step = 2 * traffic.sent_bytes  # the backward moves the gradients of both all-to-alls back
        mem = peak_bytes(step, device, clear=lambda: layer.zero_grad(set_to_none=True))
        timing = time_fixed(step, device)  # every rank the same number of steps
        comm = _alltoall_time(traffic, cfg.dim, dtype, device) if variant == "ep" and world > 1 else None
        local = sum(p.numel() * p.element_size() for p in layer.parameters())
        metrics = {
            "peak_mem_bytes": mem,
            "param_bytes": local,
            "alltoall_bytes": sent_per_step,
            "allreduce_bytes": sum(p.numel() * p.element_size() for p in replicated),
            "alltoall_time_ms": comm,
            "alltoall_share": None if comm is None else comm / timing.median_ms,
        }
        return Measurement(metrics, timed=timing, timings={"step_time": timing},
                           work=[Work("step_time", tokens=world * params["tokens"])])


def _alltoall_time(traffic: Traffic, dim: int, dtype, device) -> float:
    """The step's four all-to-alls of [rows, dim] (dispatch and combine, forward and backward) with its split sizes,
    timed alone: the communication share of a step."""
    import torch.distributed as dist

    send, recv = traffic.splits
    a = torch.randn(sum(send), dim, device=device).to(dtype)
    b = torch.empty(sum(recv), dim, device=device, dtype=dtype)

    def exchange():
        for _ in range(2):
            dist.all_to_all_single(b, a, recv, send)
            dist.all_to_all_single(a, b, send, recv)

    return time_fixed(exchange, device).median_ms
