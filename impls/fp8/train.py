"""A small next-token MLP trained on a fixed random Markov chain, in high precision or with its hidden Linears in FP8,
on the same data: the loss gap to high precision is what a recipe costs in quality (DeepSeek-V3 §3.3 reports a
relative loss error below 0.25% at scale).

The embedding and output head stay in high precision, as in DeepSeek-V3 (§3.3 keeps embedding, output head, gating
and normalization in BF16/FP32); the two MLP Linears, where a transformer block spends its FLOPs, run in FP8.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from impls.fp8.linear import convert as fp8_convert
from impls.fp8.reference import Recipe

VOCAB = 256
DIM = 128  # 128-multiples, so DeepSeek-V3's 1x128 tiles and 128x128 blocks are whole
HIDDEN = 512
BATCH = 256  # tokens per step: [M] = 256, two 128-token tiles along M for Wgrad
LR = 3e-3
HIGH_PRECISION = frozenset({"head"})  # Linears kept out of FP8 by every route, ours or a library's (DeepSeek-V3 §3.3)


def transition_logits(vocab: int = VOCAB, seed: int = 0) -> Tensor:
    """[vocab, vocab] logits of the chain: N(0, 3^2) makes each row peaked, so there is something to learn."""
    return 3.0 * torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(seed))


def batches(steps: int, seed: int = 0, batch: int = BATCH, vocab: int = VOCAB) -> list[tuple[Tensor, Tensor]]:
    """(prev, next) token pairs [batch] each per step: prev uniform, next drawn from the chain; CPU, deterministic."""
    probs = transition_logits(vocab, seed).softmax(-1)
    g = torch.Generator().manual_seed(seed + 1)
    out = []
    for _ in range(steps):
        prev = torch.randint(0, vocab, (batch,), generator=g)
        out.append((prev, torch.multinomial(probs[prev], 1, generator=g).squeeze(-1)))
    return out


class MLPLM(nn.Module):
    def __init__(self, vocab: int = VOCAB, dim: int = DIM, hidden: int = HIDDEN):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.up = nn.Linear(dim, hidden)
        self.down = nn.Linear(hidden, dim)
        self.head = nn.Linear(dim, vocab, bias=False)

    def forward(self, tokens: Tensor) -> Tensor:
        h = self.embed(tokens)  # [B, D]
        h = h + self.down(F.gelu(self.up(h)))  # residual MLP block
        return self.head(h)  # [B, V]


def train(recipe: Recipe | None, steps: int = 50, seed: int = 0, device="cpu", dtype: torch.dtype = torch.float32,
          lr: float = LR, convert: Callable[[nn.Module], object] | None = None) -> list[float]:
    """Losses per step of MLPLM with AdamW; recipe None is the high-precision reference. The same seed gives the same
    initial weights and data whatever the recipe. `convert` (with recipe None) swaps the model's Linears in place by
    another route, e.g. a library's FP8 training (impls.fp8.torchao_training); it keeps HIGH_PRECISION as ours do."""
    _, _, step = training_step(recipe, seed, device, dtype, lr, convert)
    return [step(prev, nxt).item() for prev, nxt in batches(steps, seed)]


def training_step(recipe: Recipe | None, seed: int = 0, device="cpu", dtype: torch.dtype = torch.float32,
                  lr: float = LR, convert: Callable[[nn.Module], object] | None = None):
    """`train`'s model, optimizer and step: (model, opt, step(prev, nxt) -> loss), one AdamW step on a batch of
    (prev, next) token pairs (on the CPU, moved to `device`)."""
    if recipe is not None and convert is not None:
        raise ValueError("give a recipe or a convert function, not both")
    torch.manual_seed(seed)
    if torch.device(device).type == "meta":  # shapes only: no weights to draw
        with torch.device("meta"):
            model = MLPLM().to(dtype=dtype)
    else:
        model = MLPLM().to(device=device, dtype=dtype)
    if recipe is not None:
        fp8_convert(model, recipe, keep=lambda name, _: name in HIGH_PRECISION)
    elif convert is not None:
        convert(model)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)

    def step(prev: Tensor, nxt: Tensor) -> Tensor:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(prev.to(device)).float(), nxt.to(device))
        loss.backward()
        opt.step()
        return loss.detach()

    return model, opt, step


def loss_gap(ref_losses: Sequence[float], losses: Sequence[float]) -> tuple[float, float]:
    """(final, mean) relative loss error |loss - ref| / ref: at the last step, and averaged over all steps."""
    if len(ref_losses) != len(losses) or not losses:
        raise ValueError(f"need two equally long, non-empty loss curves, got {len(ref_losses)} and {len(losses)}")
    gaps = [abs(b - a) / a for a, b in zip(ref_losses, losses)]
    return gaps[-1], sum(gaps) / len(gaps)


if __name__ == "__main__":
    from impls.fp8.reference import RECIPES

    ref = train(None)
    print(f"reference: first {ref[0]:.4f} final {ref[-1]:.4f}")
    for name, r in RECIPES.items():
        final, mean = loss_gap(ref, train(r))
        print(f"{name:<12} final gap {100 * final:.3f}%  mean gap {100 * mean:.3f}%")
