"""Speculative decoding with the first MTP module as the draft (DeepSeek-V3 §5.4.3: the MTP token accepted 85-90% of
the time, 1.8x decode tokens/s), against plain greedy decoding of the same main model. Both keep a KV cache.

Greedy, batch 1. Each step feeds the main model the committed token c (x_{n+1}) and the draft d for x_{n+2} in one
forward. If the main model's argmax after c equals d, d is accepted and the argmax after d comes free: two tokens for
one main forward; otherwise the argmax after c replaces d, one token, and d is dropped from the cache. The MTP module
then reads the main model's hidden states of the new positions with the embeddings of the tokens after them and
drafts the next token. Every emitted token is the main model's argmax given the tokens before it, so the output is
greedy decoding's token for token (up to float ties between a 1- and a 2-token forward; tests check equality).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from impls.mtp.mtp import MTPModel
from impls.mtp.reference import TransformerLM, check_tokens


@dataclass(frozen=True)
class DecodeStats:
    tokens: int
    """Tokens emitted."""
    main_forwards: int
    """Forward passes of the main model, the prefill included."""
    drafted: int
    """Drafts the main model verified."""
    accepted: int
    """Drafts it accepted."""

    @property
    def acceptance_rate(self) -> float | None:
        return self.accepted / self.drafted if self.drafted else None


def _check(prompt: Tensor, n: int) -> None:
    check_tokens(prompt, 1)
    if prompt.shape[0] != 1:
        raise ValueError(f"decoding takes one prompt [1, P], got a batch of {prompt.shape[0]}")
    if n < 1:
        raise ValueError(f"tokens to generate must be >= 1, got {n}")


@torch.no_grad()
def greedy_decode(lm: TransformerLM, prompt: Tensor, n: int) -> Tensor:
    """prompt [1, P] -> [1, P + n]: one main forward per token, over the KV cache."""
    _check(prompt, n)
    cache = lm.new_cache(1, prompt.shape[1] + n)
    token = lm(prompt, cache)[:, -1:].argmax(-1)  # [1, 1]
    out = [token]
    for _ in range(n - 1):
        token = lm(token, cache).argmax(-1)
        out.append(token)
    return torch.cat([prompt, *out], dim=1)


@torch.no_grad()
def speculative_decode(model: MTPModel, prompt: Tensor, n: int) -> tuple[Tensor, DecodeStats]:
    """prompt [1, P] -> ([1, P + n], stats): greedy decoding of model.main, drafting with model.mtp[0]."""
    _check(prompt, n)
    if model.mtp_cfg.depth < 1:
        raise ValueError("speculative decoding needs an MTP module to draft with (depth >= 1)")
    main, module = model.main, model.mtp[0]
    room = prompt.shape[1] + n + 1  # +1: a rejected draft is written to the cache before it is dropped
    cache, draft_cache = main.new_cache(1, room), module.new_cache(1, room)
    h = main.hidden(prompt, cache)  # [1, P, D]
    token = main.logits(h[:, -1:]).argmax(-1)  # x_{P+1} [1, 1]
    out, emitted, forwards, drafted, accepted = [token], 1, 1, 0, 0
    draft = _draft(model, h, torch.cat([prompt[:, 1:], token], dim=1), draft_cache) if n > 1 else None
    while emitted < n:
        h = main.hidden(torch.cat([token, draft], dim=1), cache)  # positions of c and d: [1, 2, D]
        verify = main.logits(h).argmax(-1)  # [1, 2]: main's token after c, after d
        forwards, drafted = forwards + 1, drafted + 1
        if verify[0, 0].item() == draft[0, 0].item():
            accepted += 1
            new = torch.cat([draft, verify[:, 1:]], dim=1)  # x_{n+2} = d, x_{n+3}
        else:
            cache.truncate(cache.length - 1)
            new, h = verify[:, :1], h[:, :1]
        out.append(new)
        emitted += new.shape[1]
        token = new[:, -1:]
        if emitted < n:
            draft = _draft(model, h, new, draft_cache)
    tokens = torch.cat([prompt, *out], dim=1)[:, :prompt.shape[1] + n]
    return tokens, DecodeStats(tokens=n, main_forwards=forwards, drafted=drafted, accepted=accepted)


def _draft(model: MTPModel, h: Tensor, ahead: Tensor, cache) -> Tensor:
    """The MTP module over new positions (main hidden h [1, S, D], the token after each [1, S]) -> the draft [1, 1]
    for the token after the last of `ahead`."""
    module = model.mtp[0]
    h1 = module(h, model.main.embed(ahead), cache)
    return model.head(module, h1[:, -1:]).argmax(-1)


@torch.no_grad()
def acceptance_rate(model: MTPModel, tokens: Tensor) -> float:
    """Teacher-forced acceptance on sequences [B, L]: the fraction of positions i where depth 1's draft for t_{i+2}
    (read from t_1..t_{i+1}) equals the main model's argmax after t_1..t_{i+1}, i.e. the rate at which speculative
    decoding along these sequences would accept."""
    if model.mtp_cfg.depth < 1:
        raise ValueError("acceptance needs an MTP module (depth >= 1)")
    check_tokens(tokens, 2)
    main_logits, depth_logits = model(tokens)
    draft = depth_logits[0].argmax(-1)  # [B, L-1]: position i drafts t_{i+2}
    verify = main_logits[:, 1:].argmax(-1)  # [B, L-1]: main's token after t_1..t_{i+1}
    return (draft == verify).float().mean().item()
