"""Expert parallelism (EP) for the DeepSeekMoE layer of impls.moe: the routed experts are sharded across the ranks
(rank r holds experts [r E/W, (r+1) E/W)), every rank routes its own tokens, sends each routed slot to the rank that
holds its expert and gets the expert's output back, both with all_to_all_single and per-rank split sizes (GShard's
dispatch and combine, Lepikhin et al. 2020; DeepSeek-V3 trains with 64-way EP over 8 nodes, §3.2). The router and
the shared experts are replicated. No token is dropped, as in the single-process layer.

On W ranks each holding T tokens, the layer equals the single-process layer on all W T tokens (tested on 2 gloo
ranks: outputs, and gradients once the replicated parameters' gradients are summed over ranks as data parallelism
does). The gating weights are applied on the token's own rank, so the router's gradient never crosses ranks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor

from impls.moe.grouped import GEMMS, auto_backend
from impls.moe.reference import MoE, RoutedExperts, swiglu


@dataclass
class Traffic:
    """What the all-to-alls of the forwards since the last reset moved, counted from the split sizes."""

    sent_rows: int = 0
    """Routed slots this rank sent to other ranks (dispatch) plus expert outputs it sent back to them (combine)."""
    sent_bytes: int = 0
    recv_rows: int = 0
    recv_bytes: int = 0
    calls: int = 0
    splits: list = field(default_factory=list)
    """(send counts, recv counts) per rank of the last forward."""

    def reset(self) -> None:
        self.sent_rows = self.sent_bytes = self.recv_rows = self.recv_bytes = self.calls = 0


def expert_range(n_experts: int, rank: int, world: int) -> tuple[int, int]:
    if n_experts % world:
        raise ValueError(f"{n_experts} routed experts do not shard evenly over {world} ranks")
    per = n_experts // world
    return rank * per, (rank + 1) * per


def shard_experts(full: RoutedExperts, rank: int, world: int) -> RoutedExperts:
    """A RoutedExperts holding this rank's slice of `full`'s experts (copies: full can be freed)."""
    lo, hi = expert_range(full.n, rank, world)
    local = RoutedExperts(hi - lo, full.w1.shape[1], full.hidden, device="meta")
    local.w1 = torch.nn.Parameter(full.w1.detach()[lo:hi].clone())
    local.w2 = torch.nn.Parameter(full.w2.detach()[lo:hi].clone())
    return local


def _all_to_all(x: Tensor, out_rows: list[int], in_rows: list[int], group) -> Tensor:
    """Rows of x [sum(in_rows), ...] sent in_rows[r] to rank r; returns [sum(out_rows), ...] (differentiable: the
    backward is the reverse all-to-all)."""
    from torch.distributed._functional_collectives import all_to_all_single_autograd, wait_tensor

    return wait_tensor(all_to_all_single_autograd(x, out_rows, in_rows, group or dist.group.WORLD))


def ep_dispatch(x: Tensor, indices: Tensor, weights: Tensor, local: RoutedExperts, n_experts: int,
                traffic: Traffic | None = None, backend: str = "auto", group=None) -> Tensor:
    """The routed sum of x [T, D] (indices, weights [T, K], global expert ids) with the experts spread over the
    group; `local` holds this rank's experts. Returns [T, D], as impls.moe.reference.loop_dispatch."""
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    lo, _ = expert_range(n_experts, rank, world)
    per = n_experts // world
    T, K = indices.shape
    flat = indices.reshape(-1)  # [T*K] slot t*K + k
    order = flat.argsort(stable=True)  # slots by expert, so by destination rank
    dest = flat[order] // per
    send = torch.bincount(dest, minlength=world)  # [W] slots to each rank
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)  # how many each rank sends here
    send_rows, recv_rows = send.tolist(), recv.tolist()
    xr = _all_to_all(x[order // K], recv_rows, send_rows, group)  # [R, D]: by source rank, then by expert
    er = torch.empty(sum(recv_rows), dtype=flat.dtype, device=flat.device)
    dist.all_to_all_single(er, flat[order] - dest * per, recv_rows, send_rows, group=group)  # local expert ids

    by_expert = er.argsort(stable=True)  # received rows grouped by local expert
    offs = torch.bincount(er, minlength=per).cumsum(0).to(torch.int32)
    xl = xr[by_expert]
    h = _gemm(backend, xl, local.w1)(xl, local.w1, offs)  # [R, 2H]
    a = swiglu(h)
    y = _gemm(backend, a, local.w2)(a, local.w2, offs)  # [R, D]
    back = torch.empty_like(by_expert)
    back[by_expert] = torch.arange(by_expert.numel(), device=by_expert.device)
    ys = _all_to_all(y[back], send_rows, recv_rows, group)  # [T*K, D] in `order`
    unsort = torch.empty_like(order)
    unsort[order] = torch.arange(order.numel(), device=order.device)
    if traffic is not None:
        row = x.shape[1] * x.element_size()
        others_sent = sum(send_rows) - send_rows[rank]  # dispatch out, and as many outputs come back
        others_recv = sum(recv_rows) - recv_rows[rank]  # dispatch in, and as many outputs go back
        traffic.sent_rows += others_sent + others_recv
        traffic.recv_rows += others_recv + others_sent
        traffic.sent_bytes += (others_sent + others_recv) * row
        traffic.recv_bytes += (others_recv + others_sent) * row
        traffic.calls += 1
        traffic.splits = [send_rows, recv_rows]
    return (ys[unsort].view(T, K, -1) * weights.unsqueeze(-1)).sum(1)


def _gemm(backend: str, a: Tensor, b: Tensor):
    return GEMMS[auto_backend(a, b) if backend == "auto" else backend]


def expert_parallel(layer: MoE, traffic: Traffic | None = None, backend: str = "auto", group=None) -> MoE:
    """`layer` made expert-parallel over the group, in place: its routed experts replaced by this rank's slice and
    its dispatch by ep_dispatch. Every rank must have built the same layer (the same seed)."""
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    n = layer.cfg.n_routed
    layer.experts = shard_experts(layer.experts, rank, world)

    def dispatch(x, indices, weights, local):
        return ep_dispatch(x, indices, weights, local, n, traffic, backend, group)

    layer.dispatch = dispatch
    return layer
