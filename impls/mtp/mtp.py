"""Multi-token prediction (DeepSeek-V3, DeepSeek-AI 2024, arXiv:2412.19437 §2.2): D sequential MTP modules on top of
the main model, each predicting one token further ahead and keeping the full causal chain.

Module k (1..D) at position i (1..T-k), with h^0 the main model's hidden state:
    h'_i^k = M_k [RMSNorm(h_i^{k-1}); RMSNorm(Emb(t_{i+k}))]        (eq. 21, M_k: a 2d -> d projection)
    h_{1:T-k}^k = TRM_k(h'_{1:T-k}^k)                               (eq. 22, one transformer block)
    P_{i+k+1}^k = OutHead(h_i^k)                                    (eq. 23)
    L_MTP^k = -1/T sum_{i=2+k}^{T+1} log P_i^k[t_i]                 (eq. 24: divided by T, not by its T-k terms)
    L = L_main + lambda/D sum_k L_MTP^k                             (eq. 25; DeepSeek-V3: D=1, lambda 0.3 then 0.1)
Emb and OutHead are the main model's (shared, not copied). OutHead reads RMSNorm(h^k) through a norm of the module's
own, as the released DeepSeek-V3 weights do (`shared_head.norm`); the main model's final norm stays its own.
With D=0 there are no modules and the model and loss are the plain model's exactly.

Conventions: module k's block runs at RoPE positions 0..T-k-1, the positions i of the h_i^{k-1} it reads (not
i + k), over its own KV cache. M_k takes [hnorm(h); enorm(emb)] in eq. 21's order; the released implementations
(vLLM's deepseek_mtp.py: eh_proj(cat([enorm(emb), hnorm(h)]))) take the halves the other way round, so their
eh_proj weights load into proj with its two input halves swapped. h^0 here is the main model's residual stream
before its final norm (TransformerLM.hidden); vLLM hands the module the main model's output after it (model.norm), so
its hnorm reads that norm's weight times RMSNorm(h), not RMSNorm(h): released MTP weights loaded here want it fed
main.norm(h^0), as vLLM serves them (an inference engine that hooks the pre-norm stream differs on this too).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from impls.mtp.reference import Block, KVCache, LMConfig, RMSNorm, TransformerLM, check_tokens, positions, upcast


@dataclass(frozen=True)
class MTPConfig:
    depth: int = 1
    """D, the number of extra tokens predicted (DeepSeek-V3: 1); 0 is the plain model."""
    lam: float = 0.3
    """lambda, the weight of the mean MTP loss (DeepSeek-V3: 0.3 for the first 10T tokens, then 0.1)."""

    def __post_init__(self):
        if not isinstance(self.depth, int) or self.depth < 0:
            raise ValueError(f"MTP depth D must be an integer >= 0, got {self.depth!r}")
        if not self.lam >= 0:
            raise ValueError(f"MTP loss weight lambda must be >= 0, got {self.lam!r}")


class MTPModule(nn.Module):
    """One prediction depth: (h^{k-1} [B, S, D], Emb(t_{i+k}) [B, S, D]) -> h^k [B, S, D]."""

    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.cfg = cfg
        self.hnorm, self.enorm = RMSNorm(cfg.d_model), RMSNorm(cfg.d_model)
        self.proj = nn.Linear(2 * cfg.d_model, cfg.d_model, bias=False)  # M_k
        self.block = Block(cfg)  # TRM_k
        self.norm = RMSNorm(cfg.d_model)  # before the shared output head

    def forward(self, h_prev: Tensor, emb_ahead: Tensor, cache: KVCache | None = None) -> Tensor:
        start = 0 if cache is None else cache.length
        if cache is not None and start + h_prev.shape[1] > cache.max_len:
            raise ValueError(f"cache holds {cache.max_len} positions, {start} used, {h_prev.shape[1]} more asked")
        pos = positions(self.cfg, start, h_prev.shape[1], h_prev.device)
        x = self.proj(torch.cat([self.hnorm(h_prev), self.enorm(emb_ahead)], dim=-1))  # [B, S, 2D] -> [B, S, D]
        h = self.block(x, pos, cache, 0)
        if cache is not None:
            cache.length += h_prev.shape[1]
        return h

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        p = self.proj.weight
        return KVCache(self.cfg, 1, batch, max_len, p.device, p.dtype)


class MTPModel(nn.Module):
    """The main model (a reference.TransformerLM, built first so that a seed gives it the plain model's weights) and
    D MTP modules sharing its embedding and output head."""

    def __init__(self, cfg: LMConfig, mtp: MTPConfig):
        super().__init__()
        self.cfg, self.mtp_cfg = cfg, mtp
        self.main = TransformerLM(cfg)
        self.mtp = nn.ModuleList(MTPModule(cfg) for _ in range(mtp.depth))

    def forward(self, inputs: Tensor) -> tuple[Tensor, list[Tensor]]:
        """inputs t_1..t_T [B, T] -> (main logits [B, T, V] for t_2..t_{T+1}, per depth k logits [B, T-k, V] for
        t_{k+2}..t_{T+1})."""
        check_tokens(inputs, self.mtp_cfg.depth + 1)
        T = inputs.shape[1]
        h0 = self.main.hidden(inputs)  # h^0 [B, T, D]
        emb = self.main.embed(inputs)  # [B, T, D], shared
        h, out = h0, []
        for k, module in enumerate(self.mtp, start=1):
            h = module(h[:, :T - k], emb[:, k:])  # h^k at positions 1..T-k reads Emb(t_{i+k})
            out.append(self.head(module, h))
        return self.main.logits(h0), out

    def head(self, module: MTPModule, h: Tensor) -> Tensor:
        return self.main.head(module.norm(h))


def mtp_loss(model: MTPModel, tokens: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
    """(L_main + lambda/D sum_k L_MTP^k, L_main, [L_MTP^k]) of tokens [B, T+1] (eqs. 24-25).

    Each L_MTP^k sums the T-k cross-entropies of depth k and divides by B*T, as eq. 24 does: a deeper module's loss
    is not re-scaled for predicting fewer positions. Needs T+1 >= D+2 tokens so that depth D has a position.
    """
    D = model.mtp_cfg.depth
    check_tokens(tokens, D + 2)
    B, T = tokens.shape[0], tokens.shape[1] - 1
    main_logits, depth_logits = model(tokens[:, :-1])
    main = F.cross_entropy(upcast(main_logits).flatten(0, 1), tokens[:, 1:].flatten())
    per_depth = [F.cross_entropy(upcast(logits).flatten(0, 1), tokens[:, k + 1:].flatten(), reduction="sum") / (B * T)
                 for k, logits in enumerate(depth_logits, start=1)]
    if not per_depth:
        return main, main, []
    return main + model.mtp_cfg.lam / D * torch.stack(per_depth).sum(), main, per_depth
