"""A structured synthetic language for multi-token prediction: phrases chained by a Markov source.

A seeded grammar draws `phrases` fixed token strings (3..8 tokens from the vocabulary, so tokens recur across phrases
and context tells them apart) and gives each phrase `successors` possible next phrases with Dirichlet(1) weights. Text
is phrases chained by those weights, each token replaced by a uniform one with probability `noise`. Inside a phrase
the next two tokens are fixed, so a model that knows the phrase predicts the second token as well as the first; at a
phrase boundary the next phrase is a weighted guess, often between near-equal successors, and after a noise token the
context is garbled: there the main model and a draft can disagree, so acceptance is meaningful but not 100%.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class LanguageConfig:
    vocab: int = 64
    phrases: int = 24
    """Distinct phrases in the grammar."""
    min_len: int = 3
    max_len: int = 8
    """Phrase lengths are uniform in min_len..max_len tokens."""
    successors: int = 3
    """Phrases that may follow each phrase."""
    noise: float = 0.03
    """Probability that a token is replaced by a uniform random one."""
    seed: int = 0
    """Seeds the grammar (phrases and transitions), not the text drawn from it."""

    def __post_init__(self):
        if min(self.vocab, self.phrases, self.successors) < 2:
            raise ValueError("vocab, phrases and successors must be at least 2")
        if not 1 <= self.min_len <= self.max_len:
            raise ValueError(f"need 1 <= min_len <= max_len, got {self.min_len}, {self.max_len}")
        if self.successors > self.phrases:
            raise ValueError(f"successors ({self.successors}) cannot exceed phrases ({self.phrases})")
        if not 0 <= self.noise < 1:
            raise ValueError(f"noise must be in [0, 1), got {self.noise}")


class Language:
    def __init__(self, cfg: LanguageConfig):
        self.cfg = cfg
        rng = random.Random(cfg.seed)
        self.phrases = [[rng.randrange(cfg.vocab) for _ in range(rng.randint(cfg.min_len, cfg.max_len))]
                        for _ in range(cfg.phrases)]
        self.next = [rng.sample(range(cfg.phrases), cfg.successors) for _ in range(cfg.phrases)]
        # Dirichlet(1): normalized exponentials, so some successors are near-ties and some dominate
        weights = [[rng.expovariate(1.0) for _ in range(cfg.successors)] for _ in range(cfg.phrases)]
        self.weights = [[w / sum(ws) for w in ws] for ws in weights]

    def stream(self, n: int, seed: int) -> Tensor:
        """n tokens [n] of text, starting at a random phrase and offset; the same seed gives the same text."""
        rng, cfg = random.Random(seed), self.cfg
        phrase = rng.randrange(cfg.phrases)
        out = list(self.phrases[phrase][rng.randrange(len(self.phrases[phrase])):])
        while len(out) < n:
            phrase = rng.choices(self.next[phrase], self.weights[phrase])[0]
            out += self.phrases[phrase]
        out = [rng.randrange(cfg.vocab) if rng.random() < cfg.noise else t for t in out[:n]]
        return torch.tensor(out, dtype=torch.long)

    def sequences(self, count: int, length: int, seed: int) -> Tensor:
        """count independent sequences [count, length], each its own stream."""
        return torch.stack([self.stream(length, seed * 1_000_003 + i) for i in range(count)])


def windows(stream: Tensor, batch: int, length: int, generator: torch.Generator) -> Tensor:
    """batch random windows [batch, length] of a long stream."""
    start = torch.randint(0, len(stream) - length + 1, (batch,), generator=generator)
    return stream[start[:, None] + torch.arange(length)]
