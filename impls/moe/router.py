"""DeepSeek-V3's router (§2.1.2): sigmoid affinities, top-k normalized gating weights, and the auxiliary-loss-free
balancing bias of Wang et al. 2024, "Auxiliary-Loss-Free Load Balancing Strategy for Mixture-of-Experts".

Selection ranks s_i + b_i; the gating weight uses s_i alone: g_i = s_i / sum_{j in top-k} s_j. After every training
step each bias moves by gamma against its expert's load error: b_i += gamma * sign(mean load - load_i). The bias is a
buffer, not a parameter: no gradient touches it, so balancing adds nothing to the loss. Options: DeepSeek-V3's
complementary sequence-wise balance loss (alpha 1e-4 there, eq. 17-20) and node-limited routing (§2.1.2: each token
reaches at most M nodes, chosen by the sum of the K/M highest affinities on each node; 256 experts on 8 nodes, M=4).
With gamma 0 and aux_alpha > 0 it is the sigmoid gate with the classic batch-wise auxiliary loss and no bias: the
sigmoid_aux_loss preset, which isolates the bias's effect from the change of gate (softmax -> normalized sigmoid).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from impls.moe.reference import Routing, SoftmaxRouter, balance_loss, check_top_k


class AuxFreeRouter(nn.Module):
    """forward: scores = sigmoid(gate(x).float()), top-k by scores + bias, weights = the selected scores over their
    sum, cast to x's dtype. That is DeepSeek-V3's inference/model.py Gate.forward with score_func="sigmoid" except:
    the sigmoid in fp32 of logits in x's dtype (Gate: logits and sigmoid in bf16; HF's DeepseekV3TopkRouter: both
    in fp32), no route_scale (V3's config multiplies the weights by 2.5), and node-limited ranking sums the top
    max(1, top_k // topk_groups) biased scores of a node where Gate sums the top 2 (equal at V3's top-8 over 4 of 8
    nodes). n_groups=1 skips node limiting. Only update_bias (called by the training loop) changes the bias."""

    def __init__(self, dim: int, n_experts: int, top_k: int, gamma: float = 1e-3, seq_alpha: float = 0.0,
                 n_groups: int = 1, topk_groups: int = 1, aux_alpha: float = 0.0):
        super().__init__()
        check_top_k(top_k, n_experts)
        if min(gamma, seq_alpha, aux_alpha) < 0:
            raise ValueError(f"gamma, seq_alpha and aux_alpha must be >= 0, got {gamma}, {seq_alpha} and {aux_alpha}")
        if n_groups < 1 or n_experts % n_groups:
            raise ValueError(f"n_groups must divide the {n_experts} experts into equal nodes, got {n_groups}")
        if not 1 <= topk_groups <= n_groups or topk_groups * (n_experts // n_groups) < top_k:
            raise ValueError(f"topk_groups must be in 1..{n_groups} and its nodes must hold at least top_k={top_k} "
                             f"experts, got {topk_groups} nodes of {n_experts // n_groups}")
        self.n_experts, self.top_k, self.gamma, self.seq_alpha = n_experts, top_k, gamma, seq_alpha
        self.aux_alpha = aux_alpha
        self.n_groups, self.topk_groups = n_groups, topk_groups
        self.gate = nn.Linear(dim, n_experts, bias=False)
        self.register_buffer("bias", torch.zeros(n_experts))  # [E] fp32: selection only

    def select(self, scores: Tensor) -> Tensor:
        """[T, E] affinities -> [T, K] experts, ranked by affinity + bias within the allowed nodes.

        Nodes are ranked by the sum of their K/M highest biased scores s_i + b_i, as DeepSeek-V3's released inference
        code (model.py, Gate.forward: the group score is computed after adding the bias). The paper's wording (§2.1.2)
        ranks nodes by the affinities s_i alone; the two agree while the bias is 0. The biased version is kept so the
        bias can steer load across nodes as well as within them, which is what the released model runs."""
        choice = scores.detach() + self.bias  # [T, E]
        if self.n_groups > 1:
            T = choice.shape[0]
            grouped = choice.view(T, self.n_groups, -1)  # [T, G, E / G]
            per_node = max(1, self.top_k // self.topk_groups)  # DeepSeek-V3: 8 // 4 = top-2 per node
            node_score = grouped.topk(per_node, dim=-1).values.sum(-1)  # [T, G]
            nodes = node_score.topk(self.topk_groups, dim=-1).indices  # [T, M]
            allowed = torch.zeros_like(node_score, dtype=torch.bool).scatter_(1, nodes, True)  # [T, G]
            choice = grouped.masked_fill(~allowed[..., None], float("-inf")).view(T, -1)
        return choice.topk(self.top_k, dim=-1).indices

    def forward(self, x: Tensor, seq_len: int | None = None) -> Routing:
        scores = torch.sigmoid(self.gate(x).float())  # [T, E]
        indices = self.select(scores)  # [T, K]
        top = scores.gather(1, indices)  # [T, K]: the bias never reaches the weights
        weights = top / top.sum(-1, keepdim=True)
        aux = scores.new_zeros(())
        if self.seq_alpha:
            aux = self.seq_alpha * sequence_balance_loss(scores, indices, self.n_experts, seq_len or x.shape[0])
        if self.aux_alpha:  # the classic expert-level loss over the whole batch, on affinities normalized as eq. 19
            aux = aux + self.aux_alpha * balance_loss(scores / scores.sum(-1, keepdim=True), indices, self.n_experts)
        return Routing(indices, weights.to(x.dtype), scores, aux)

    @torch.no_grad()
    def update_bias(self, load: Tensor) -> None:
        """One step of the bias rule, given the [E] load of the step that just ran (summed over its whole batch)."""
        load = load.to(self.bias.device, torch.float32)
        self.bias += self.gamma * torch.sign(load.mean() - load)


def sequence_balance_loss(scores: Tensor, indices: Tensor, n_experts: int, seq_len: int) -> Tensor:
    """DeepSeek-V3 eq. 17-20: balance_loss per sequence on affinities normalized over all experts, averaged over the
    batch's sequences. scores [B * S, E], indices [B * S, K].

    The indicator in f_i (eq. 18) counts `indices`, the experts actually selected (by s + b in AuxFreeRouter), where
    the paper writes TopK over the affinities s alone. The selected experts are the load the experts really receive,
    which is what the loss exists to balance, and they need no second top-k; the two agree while the bias is 0."""
    T = scores.shape[0]
    if T % seq_len:
        raise ValueError(f"{T} tokens do not split into sequences of {seq_len}")
    probs = scores / scores.sum(-1, keepdim=True)
    losses = [balance_loss(p, i, n_experts) for p, i in zip(probs.split(seq_len), indices.split(seq_len))]
    return torch.stack(losses).mean()


@dataclass(frozen=True)
class RouterConfig:
    kind: Literal["softmax_aux", "aux_free", "sigmoid_aux"]
    """softmax top-k with the auxiliary loss, DeepSeek-V3's sigmoid router with the balancing bias, or that sigmoid
    router (normalized top-k weights) with the auxiliary loss and no bias."""
    aux_alpha: float = 1e-3
    """Weight of the expert-level auxiliary loss (softmax_aux and sigmoid_aux; Wang et al.'s baseline: 0.001)."""
    gamma: float = 1e-3
    """Bias update speed (aux_free only; DeepSeek-V3 and Wang et al.: 0.001)."""
    seq_alpha: float = 0.0
    """Weight of the sequence-wise balance loss (aux_free only; DeepSeek-V3: 0.0001; 0 for none)."""
    n_groups: int = 1
    """Nodes the experts are spread over for node-limited routing (aux_free only; 1 for no limit)."""
    topk_groups: int = 1
    """Nodes a token may reach (DeepSeek-V3: 4 of 8)."""

    def __post_init__(self):
        if self.kind not in ("softmax_aux", "aux_free", "sigmoid_aux"):
            raise ValueError(f"kind must be softmax_aux, aux_free or sigmoid_aux, got {self.kind!r}")
        if min(self.aux_alpha, self.gamma, self.seq_alpha) < 0:
            raise ValueError("aux_alpha, gamma and seq_alpha must be >= 0")
        if self.n_groups < 1 or not 1 <= self.topk_groups <= self.n_groups:
            raise ValueError(f"need 1 <= topk_groups <= n_groups, got {self.topk_groups} of {self.n_groups}")

    def build(self, dim: int, n_experts: int, top_k: int) -> nn.Module:
        if self.kind == "softmax_aux":
            return SoftmaxRouter(dim, n_experts, top_k, self.aux_alpha)
        if self.kind == "sigmoid_aux":
            return AuxFreeRouter(dim, n_experts, top_k, gamma=0.0, aux_alpha=self.aux_alpha)
        return AuxFreeRouter(dim, n_experts, top_k, self.gamma, self.seq_alpha, self.n_groups, self.topk_groups)


# Named presets, the balance suite's variants.
ROUTERS = {
    "aux_loss": RouterConfig("softmax_aux"),
    "sigmoid_aux_loss": RouterConfig("sigmoid_aux"),
    "aux_free": RouterConfig("aux_free"),
    "aux_free_seqaux": RouterConfig("aux_free", seq_alpha=1e-4),
    "node_limited": RouterConfig("aux_free", n_groups=4, topk_groups=2),
}
