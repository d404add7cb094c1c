"""Reference DeepSeekMoE layer (Dai et al. 2024, "DeepSeekMoE"): shared experts plus fine-grained routed experts, a
softmax top-k router trained with the classic expert-level auxiliary balance loss, and per-expert-loop dispatch.

Capacity policy: no token is ever dropped (an unbounded capacity factor), as DeepSeek-V3 (§2.1.2: "DeepSeek-V3 does
not drop any tokens during training", nor in inference). Every dispatch here computes all T x K routed slots.

MaxVio (Wang et al. 2024, §4.1): (max_i load_i - mean load) / mean load over the routed experts of one layer, 0 for a
perfectly balanced layer and E - 1 when one expert takes every slot.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class MoEConfig:
    dim: int
    """Width of the residual stream: the layer maps [B, S, dim] -> [B, S, dim]."""
    n_routed: int
    """Routed experts (DeepSeek-V3: 256)."""
    top_k: int
    """Routed experts per token (DeepSeek-V3: 8)."""
    expert_hidden: int
    """Hidden width of each expert's SwiGLU (DeepSeek-V3: 2048, against a 7168-wide residual: fine-grained experts)."""
    n_shared: int = 1
    """Shared experts every token passes through (DeepSeek-V3: 1); 0 for none."""

    def __post_init__(self):
        for name in ("dim", "n_routed", "top_k", "expert_hidden"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.n_shared < 0:
            raise ValueError(f"n_shared must be >= 0, got {self.n_shared}")
        check_top_k(self.top_k, self.n_routed)


def check_top_k(top_k: int, n_experts: int) -> None:
    if not 0 < top_k <= n_experts:
        raise ValueError(f"top_k must be in 1..{n_experts} (the number of routed experts), got {top_k}")


@dataclass
class Routing:
    """What a router decides for T tokens."""

    indices: Tensor
    """[T, K] int64: the experts each token goes to."""
    weights: Tensor
    """[T, K]: their gating weights (differentiable: the router learns through them)."""
    scores: Tensor
    """[T, E]: the affinities the weights come from (softmax or sigmoid)."""
    aux_loss: Tensor
    """[] balance loss to add to the training loss (0 when the router has none)."""


def expert_load(indices: Tensor, n_experts: int) -> Tensor:
    """[E] int64: routed slots per expert."""
    return torch.bincount(indices.reshape(-1), minlength=n_experts)


def max_vio(load: Tensor) -> float:
    """(max load - mean load) / mean load of a [E] load vector (Wang et al. 2024)."""
    load = torch.as_tensor(load).double()
    if load.ndim != 1 or load.numel() == 0:
        raise ValueError(f"max_vio needs a non-empty [E] load vector, got shape {tuple(load.shape)}")
    mean = load.mean()
    if mean <= 0:
        raise ValueError("max_vio of a layer that routed no token is undefined")
    return float((load.max() - mean) / mean)


def balance_loss(probs: Tensor, indices: Tensor, n_experts: int) -> Tensor:
    """sum_i f_i P_i with f_i = E / (K T) * slots of expert i and P_i = mean over tokens of probs[:, i]: 1 when both
    are uniform (DeepSeekMoE §3.3 expert-level loss; DeepSeek-V3 eq. 17-20 applies it per sequence). probs [T, E]."""
    T, K = indices.shape
    f = expert_load(indices, n_experts).to(probs.dtype) * (n_experts / (K * T))  # [E], no gradient: counts
    return (f * probs.mean(0)).sum()


class SoftmaxRouter(nn.Module):
    """Softmax affinities, top-k by affinity, weights = the top-k affinities (unnormalized, as DeepSeekMoE), and the
    auxiliary loss aux_alpha * balance_loss. Wang et al.'s baseline uses aux_alpha 0.001; larger values balance better
    at a perplexity cost (their Fig. 2). Selection and weights are DeepSeek-V3's inference/model.py Gate.forward with
    score_func="softmax" (fp32 softmax), no bias, n_groups=1 and route_scale 1."""

    def __init__(self, dim: int, n_experts: int, top_k: int, aux_alpha: float = 1e-3):
        super().__init__()
        check_top_k(top_k, n_experts)
        if aux_alpha < 0:
            raise ValueError(f"aux_alpha must be >= 0, got {aux_alpha}")
        self.n_experts, self.top_k, self.aux_alpha = n_experts, top_k, aux_alpha
        self.gate = nn.Linear(dim, n_experts, bias=False)

    def forward(self, x: Tensor, seq_len: int | None = None) -> Routing:
        scores = self.gate(x).float().softmax(-1)  # [T, E]
        weights, indices = scores.topk(self.top_k, dim=-1)  # [T, K]
        aux = self.aux_alpha * balance_loss(scores, indices, self.n_experts) if self.aux_alpha else scores.new_zeros(())
        return Routing(indices, weights.to(x.dtype), scores, aux)

    def update_bias(self, load: Tensor) -> None:
        """Balance comes from the loss alone: nothing to update after a step."""


class RoutedExperts(nn.Module):
    """E SwiGLU experts as stacked weights, so the loop and a grouped GEMM read the same parameters: w1 [E, D, 2H]
    (gate and up side by side: one GEMM for both) and w2 [E, H, D]."""

    def __init__(self, n: int, dim: int, hidden: int, device=None, dtype=None):
        super().__init__()
        self.n, self.hidden = n, hidden
        # drawn where they live: DeepSeek-V3's 256 x 7168 x 3 x 2048 would be 45 GB of fp32 on the host first
        kw = {"device": device, "dtype": dtype}
        self.w1 = nn.Parameter(torch.randn(n, dim, 2 * hidden, **kw) / dim**0.5)
        self.w2 = nn.Parameter(torch.randn(n, hidden, dim, **kw) / hidden**0.5)

    def ffn(self, x: Tensor, e: int) -> Tensor:
        """Expert e on its tokens x [n, D] -> [n, D]."""
        return swiglu(x @ self.w1[e]) @ self.w2[e]


def swiglu(h: Tensor) -> Tensor:
    """[.., 2H] gate | up -> [.., H]."""
    gate, up = h.chunk(2, dim=-1)
    return F.silu(gate) * up


def loop_dispatch(x: Tensor, indices: Tensor, weights: Tensor, experts: RoutedExperts) -> Tensor:
    """sum_k weights[t, k] * expert_{indices[t, k]}(x[t]): one gather, two GEMMs and one scatter per expert.
    x [T, D], indices and weights [T, K] -> [T, D]. An expert with no token costs a lookup and no GEMM. The scatter is
    in place into one buffer: an out-of-place index_add per expert would copy all of [T, D] E times (traffic the grouped
    dispatch does not pay); autograd needs nothing of `out` to differentiate index_add_, so in place is safe."""
    out = torch.zeros_like(x)  # [T, D]
    for e in range(experts.n):
        tok, slot = (indices == e).nonzero(as_tuple=True)  # [n_e] each
        if tok.numel():
            out.index_add_(0, tok, experts.ffn(x[tok], e) * weights[tok, slot, None])
    return out


class SharedExperts(nn.Module):
    """n_shared SwiGLU experts of width H that every token passes through: one dense SwiGLU of width n_shared * H."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, 2 * hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(swiglu(self.w1(x)))


class MoE(nn.Module):
    """DeepSeekMoE layer: y = shared(x) + sum_k g_k expert_k(x). `dispatch` computes the routed sum (loop_dispatch, or
    one from grouped.py); `router` defaults to the softmax router with the auxiliary loss."""

    def __init__(self, cfg: MoEConfig, router: nn.Module | None = None, dispatch=loop_dispatch):
        super().__init__()
        self.cfg = cfg
        self.router = router if router is not None else SoftmaxRouter(cfg.dim, cfg.n_routed, cfg.top_k)
        if (self.router.n_experts, self.router.top_k) != (cfg.n_routed, cfg.top_k):
            raise ValueError(f"router routes top-{self.router.top_k} of {self.router.n_experts} experts, the layer "
                             f"has top-{cfg.top_k} of {cfg.n_routed}")
        self.experts = RoutedExperts(cfg.n_routed, cfg.dim, cfg.expert_hidden)
        self.shared = SharedExperts(cfg.dim, cfg.n_shared * cfg.expert_hidden) if cfg.n_shared else None
        self.dispatch = dispatch

    def forward(self, x: Tensor) -> tuple[Tensor, Routing]:
        B, S, D = x.shape
        flat = x.reshape(B * S, D)  # [T, D]
        routing = self.router(flat, seq_len=S)
        y = self.dispatch(flat, routing.indices, routing.weights, self.experts)  # [T, D]
        if self.shared is not None:
            y = y + self.shared(flat)
        return y.view(B, S, D), routing


if __name__ == "__main__":
    torch.manual_seed(0)
    layer = MoE(MoEConfig(dim=64, n_routed=16, top_k=4, expert_hidden=32))
    y, r = layer(torch.randn(2, 32, 64))
    load = expert_load(r.indices, 16)
    print(f"out {tuple(y.shape)}  aux {r.aux_loss.item():.4f}  load {load.tolist()}  MaxVio {max_vio(load):.3f}")
