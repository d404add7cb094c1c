"""A small DeepSeekMoE language model trained on a synthetic token stream whose statistics are skewed and depend on a
hidden topic, to measure how each router balances expert load (Wang et al. 2024 train 1B-3B models on real text and
report MaxVio; this is the same measurement at a size a CPU trains in seconds).

The stream: each sequence draws a topic from a Zipf law over `topics` (exponent 1.2: the first topic 3^1.2 = 3.7x the
third); each topic owns a quarter of the vocabulary with Zipf-distributed token frequencies, plus a topic-specific
bigram table over it. So a few tokens and topics dominate, and a router that follows the data unchecked piles them
onto a few experts. Everything is seeded: the same config gives the same stream, initial weights and result.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from impls.cache import fetch, progress
from impls.moe.reference import MoE, MoEConfig, expert_load, loop_dispatch
from impls.moe.router import RouterConfig

# Part of the cache key of trained results (suites/moe.py): bump when the stream, model, router or training code changes
# what a config trains to, so cached figures from the old code are not reported as the new code's.
CACHE_VERSION = 1


@dataclass(frozen=True)
class LMConfig:
    vocab: int = 256
    dim: int = 64
    """Residual width; 16-byte-aligned so torch._grouped_mm takes the expert GEMMs in fp32 and bf16."""
    layers: int = 2
    """Transformer blocks, each causal attention then a DeepSeekMoE layer."""
    heads: int = 4
    n_routed: int = 16
    top_k: int = 4
    n_shared: int = 1
    expert_hidden: int = 32
    seq: int = 64
    batch: int = 8
    """Sequences per step: batch * seq tokens go through each MoE layer per step (512 at the defaults)."""
    topics: int = 8
    lr: float = 3e-3
    seed: int = 0

    def __post_init__(self):
        for name, value in asdict(self).items():
            if name not in ("lr", "seed") and value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} must be a multiple of heads {self.heads}")
        if self.vocab < 4 * self.topics:
            raise ValueError(f"vocab {self.vocab} is too small for {self.topics} topics of vocab // 4 tokens")
        MoEConfig(self.dim, self.n_routed, self.top_k, self.expert_hidden, self.n_shared)  # validates top_k


def topic_tables(cfg: LMConfig) -> tuple[Tensor, Tensor]:
    """(topic probabilities [topics], bigram probabilities [topics, V, V]) of the stream."""
    g = torch.Generator().manual_seed(cfg.seed)
    topic_p = 1.0 / torch.arange(1, cfg.topics + 1).double() ** 1.2
    size = cfg.vocab // 4
    zipf = -torch.log(torch.arange(1, size + 1).double())  # log-frequency of each topic's tokens by rank
    logits = torch.full((cfg.topics, cfg.vocab, cfg.vocab), -30.0, dtype=torch.double)
    for t in range(cfg.topics):
        own = torch.randperm(cfg.vocab, generator=g)[:size]  # topics overlap at random
        bigram = 2.0 * torch.randn(cfg.vocab, size, generator=g, dtype=torch.double)
        logits[t][:, own] = zipf + bigram
    return topic_p / topic_p.sum(), logits.softmax(-1)


def stream(cfg: LMConfig, n_seqs: int, seed: int) -> Tensor:
    """[n_seqs, seq + 1] tokens: inputs [:, :-1] and targets [:, 1:]."""
    topic_p, bigram = topic_tables(cfg)
    cdf = bigram.cumsum(-1).float()  # [topics, V, V]: inverse-CDF sampling, ~30x faster than torch.multinomial here
    g = torch.Generator().manual_seed(seed)
    topic = torch.multinomial(topic_p, n_seqs, replacement=True, generator=g)  # [n]
    tokens = torch.zeros(n_seqs, cfg.seq + 1, dtype=torch.long)  # position 0 draws from the rows of token 0
    for i in range(cfg.seq + 1):
        u = torch.rand(n_seqs, 1, generator=g)
        row = cdf[topic, tokens[:, i - 1] if i else tokens[:, 0]]  # [n, V]
        tokens[:, i] = torch.searchsorted(row, u).squeeze(1).clamp(max=cfg.vocab - 1)
    return tokens


class Block(nn.Module):
    def __init__(self, cfg: LMConfig, router: RouterConfig, dispatch):
        super().__init__()
        self.heads = cfg.heads
        self.norm1, self.norm2 = nn.RMSNorm(cfg.dim), nn.RMSNorm(cfg.dim)
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=False)
        self.proj = nn.Linear(cfg.dim, cfg.dim, bias=False)
        moe = MoEConfig(cfg.dim, cfg.n_routed, cfg.top_k, cfg.expert_hidden, cfg.n_shared)
        self.moe = MoE(moe, router.build(cfg.dim, cfg.n_routed, cfg.top_k), dispatch)

    def forward(self, x: Tensor):
        """Pre-norm causal attention with no positional encoding (the stream is bigram-driven), then the MoE."""
        B, S, D = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(B, S, 3, self.heads, -1).permute(2, 0, 3, 1, 4)  # [B, H, S, Dh] each
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(B, S, D))
        y, routing = self.moe(self.norm2(x))
        return x + y, routing


class MoELM(nn.Module):
    def __init__(self, cfg: LMConfig, router: RouterConfig, dispatch=loop_dispatch):
        super().__init__()
        self.embed = nn.Embedding(cfg.vocab, cfg.dim)
        self.blocks = nn.ModuleList(Block(cfg, router, dispatch) for _ in range(cfg.layers))
        self.norm = nn.RMSNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.vocab, bias=False)

    def forward(self, tokens: Tensor):
        """tokens [B, S] -> (logits [B, S, V], one Routing per layer)."""
        x, routings = self.embed(tokens), []
        for block in self.blocks:
            x, routing = block(x)
            routings.append(routing)
        return self.head(self.norm(x)), routings


def train(cfg: LMConfig, router: RouterConfig, steps: int, eval_seqs: int = 64, dispatch=loop_dispatch,
          device="cpu") -> dict:
    """Train for `steps` AdamW steps (20-step warm-up) and evaluate on held-out sequences. Returns the per-step
    losses [steps], aux losses [steps] and loads [steps, layers, E] (routed slots per expert), and the held-out
    eval_loss and eval_load [layers, E]. Routers with a bias update it after every step from that step's loads."""
    if steps <= 0 or eval_seqs <= 0:
        raise ValueError(f"steps and eval_seqs must be positive, got {steps} and {eval_seqs}")
    torch.manual_seed(cfg.seed)
    model = MoELM(cfg, router, dispatch).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    data = stream(cfg, steps * cfg.batch, seed=cfg.seed + 1).to(device)
    losses, aux_losses, loads = [], [], []
    report = progress(f"moe {router.kind}", steps)
    for step in range(steps):
        batch = data[step * cfg.batch:(step + 1) * cfg.batch]
        logits, routings = model(batch[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1).float(), batch[:, 1:].flatten())
        aux = torch.stack([r.aux_loss for r in routings]).sum()
        opt.zero_grad(set_to_none=True)
        (loss + aux).backward()
        opt.step()
        sched.step()
        step_loads = [expert_load(r.indices, cfg.n_routed) for r in routings]
        for block, load in zip(model.blocks, step_loads):
            block.moe.router.update_bias(load)
        losses.append(loss.item())
        aux_losses.append(aux.item())
        loads.append(torch.stack(step_loads).cpu())
        report(step + 1)
    eval_loss, eval_load = evaluate(model, cfg, eval_seqs, device)
    return {"losses": losses, "aux_losses": aux_losses, "loads": torch.stack(loads), "eval_loss": eval_loss,
            "eval_load": eval_load}


def tuned(router: RouterConfig, aux_alpha: float, gamma: float) -> RouterConfig:
    """The router with its balancing strength: aux_alpha for the routers with the auxiliary loss (no bias, so gamma
    does not apply), gamma for the bias routers."""
    with_aux = router.kind in ("softmax_aux", "sigmoid_aux")
    return replace(router, **({"aux_alpha": aux_alpha} if with_aux else {"gamma": gamma}))


def balance_key(cfg: LMConfig, router: RouterConfig, steps: int, eval_seqs: int, device="cpu") -> dict:
    """The cache key of a training run: the device type is part of it, since the run's loads and losses are the
    results a suite reports and a CUDA run rounds differently from a CPU one."""
    return {"version": CACHE_VERSION, "lm": asdict(cfg), "router": asdict(router), "steps": steps,
            "eval_seqs": eval_seqs, "device": torch.device(device).type}


def load_or_train(cfg: LMConfig, router: RouterConfig, steps: int, eval_seqs: int, dispatch=loop_dispatch,
                  device="cpu") -> tuple[dict, str]:
    """(train()'s result, source): from the package's shipped runs ("shipped": the same seeded run, made by
    `python -m impls.weights build` on another machine), the user cache ("cache"), or trained now ("built")."""
    key = balance_key(cfg, router, steps, eval_seqs, device)
    return fetch("moe_balance", key, lambda: train(cfg, router, steps, eval_seqs, dispatch, device))


@torch.no_grad()
def evaluate(model: MoELM, cfg: LMConfig, n_seqs: int, device="cpu") -> tuple[float, Tensor]:
    """(mean next-token loss, [layers, E] loads) over n_seqs held-out sequences (another seed than training's)."""
    data = stream(cfg, n_seqs, seed=cfg.seed + 10_000).to(device)
    total, tokens, load = 0.0, 0, torch.zeros(cfg.layers, cfg.n_routed, dtype=torch.long)
    for batch in data.split(cfg.batch):
        logits, routings = model(batch[:, :-1])
        total += F.cross_entropy(logits.flatten(0, 1).float(), batch[:, 1:].flatten(), reduction="sum").item()
        tokens += batch[:, 1:].numel()
        load += torch.stack([expert_load(r.indices, cfg.n_routed) for r in routings]).cpu()
    return total / tokens, load


if __name__ == "__main__":
    from impls.moe.grouped import dispatcher
    from impls.moe.reference import max_vio
    from impls.moe.router import ROUTERS

    cfg = LMConfig()
    for name in ("aux_loss", "aux_free"):
        out = train(cfg, ROUTERS[name], steps=150, dispatch=dispatcher("auto"))
        vio = sum(max_vio(layer) for layer in out["eval_load"]) / cfg.layers
        print(f"{name:<10} loss {out['losses'][-1]:.3f}  eval ppl {math.exp(out['eval_loss']):.2f}  "
              f"eval MaxVio {vio:.3f}")
