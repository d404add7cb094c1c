"""Normalizing-flow baseline: RealNVP affine couplings (Dinh et al. 2017) trained by maximum likelihood; sampling is one
pass through the flow (NFE 1), the one-step end of the steps-for-quality trade that diffusion samplers walk along.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from impls.cache import fetch
from impls.samplers.learned import DATASETS, digits, fit, training_data
from impls.samplers.targets import make_target


class Coupling(nn.Module):
    """y = x on the kept half; y = x * exp(s(x_kept)) + t(x_kept) on the other, with s bounded by tanh for stability."""

    def __init__(self, dim: int, keep: Tensor, hidden: int):
        super().__init__()
        self.register_buffer("keep", keep)  # [D] bool
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, 2 * dim))
        nn.init.zeros_(self.net[-1].weight)  # starts as the identity
        nn.init.zeros_(self.net[-1].bias)

    def _st(self, x: Tensor) -> tuple[Tensor, Tensor]:
        s, t = self.net(x * self.keep).chunk(2, dim=1)
        free = ~self.keep
        return torch.tanh(s) * free, t * free

    def forward(self, z: Tensor) -> Tensor:
        s, t = self._st(z)
        return z * s.exp() + t

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        s, t = self._st(y)  # the kept half is unchanged, so s and t are computed from the same inputs both ways
        return (y - t) * (-s).exp(), -s.sum(dim=1)


class RealNVP(nn.Module):
    """x = f_L(...f_1(z)), z ~ N(0, I) in D dims; log p(x) = log N(z; 0, I) - sum of the couplings' sum s (the inverse's
    log-determinant, exact). Coupling i keeps the channels whose index has parity i % 2 (in 2-D: x, then y, in
    turn) and transforms the others: an even/odd split of the channels, not Dinh et al.'s checkerboard or channel
    halves of an image. s = tanh(raw) with no learned rescale (Dinh et al.'s code scales tanh by a learned factor),
    so each coupling scales a channel by at most e; each last layer starts at zero, so the flow starts as the
    identity and log p as the standard normal's."""

    def __init__(self, dim: int, couplings: int = 8, hidden: int = 128):
        super().__init__()
        masks = []
        for i in range(couplings):  # alternate halves; odd couplings keep the other half
            keep = torch.zeros(dim, dtype=torch.bool)
            keep[torch.arange(dim) % 2 == i % 2] = True
            if dim == 1:
                keep[:] = i % 2 == 0
            masks.append(keep)
        self.layers = nn.ModuleList(Coupling(dim, m, hidden) for m in masks)
        self.dim = dim

    def log_prob(self, x: Tensor) -> Tensor:
        logdet = torch.zeros(len(x), device=x.device)
        for layer in reversed(self.layers):
            x, ld = layer.inverse(x)
            logdet = logdet + ld
        base = -0.5 * (x**2).sum(dim=1) - 0.5 * self.dim * math.log(2 * math.pi)
        return base + logdet

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """[n, D] on the flow's device: one pass from N(0, I) (drawn where the generator is) through the couplings."""
        z = torch.randn(n, self.dim, generator=generator).to(self.layers[0].keep.device)
        for layer in self.layers:
            z = layer(z)
        return z


@dataclass(frozen=True)
class FlowConfig:
    """What is trained; its fields are the cache key."""

    data: str = "gmm2d"
    """A target name or "digits", as learned.LearnedConfig.data."""
    couplings: int = 8
    hidden: int = 128
    steps: int = 2000
    batch: int = 512
    lr: float = 2e-3
    seed: int = 0

    def __post_init__(self):
        assert self.data in DATASETS, f"data must be one of {DATASETS}, got {self.data!r}"
        assert self.couplings >= 2 and self.hidden >= 1 and self.steps >= 1 and self.batch >= 1 and self.lr > 0


def _dim(data: str) -> int:
    return digits().shape[1] if data == "digits" else make_target(data).dim


def train(config: FlowConfig) -> tuple[RealNVP, list[float]]:
    """RealNVP fitted by maximum likelihood (Adam, cosine decay) on fresh draws each step; seeded."""
    torch.manual_seed(config.seed)
    g = torch.Generator().manual_seed(config.seed)
    flow = RealNVP(_dim(config.data), config.couplings, config.hidden)
    nll = lambda: -flow.log_prob(training_data(config.data, config.batch, g)).mean()  # noqa: E731
    losses = fit(flow, config.steps, config.lr, nll, what=f"realnvp {config.data}")
    return flow.eval().requires_grad_(False), losses


def trained_flow(config: FlowConfig) -> RealNVP:
    """The flow for `config`, from the cache when it holds it, else trained now and cached."""
    return load_or_train(config)[0]


def load_or_train(config: FlowConfig) -> tuple[RealNVP, str]:
    """(trained_flow(config), source), source as impls.cache.fetch's ("shipped": the package's fp16 weights)."""

    def build() -> dict:
        flow, losses = train(config)
        return {"state": flow.state_dict(), "final_nll": losses[-1]}

    state, source = fetch("samplers-nflow", asdict(config), build)
    flow = RealNVP(_dim(config.data), config.couplings, config.hidden)
    flow.load_state_dict(state["state"])
    return flow.eval().requires_grad_(False), source


if __name__ == "__main__":
    flow, losses = train(FlowConfig(steps=1000))
    target = make_target("gmm2d")
    x = flow.sample(4000, torch.Generator().manual_seed(1))
    print(f"final nll {losses[-1]:.3f}; mean log-likelihood of samples under the target "
          f"{target.log_prob(x).mean().item():.3f} (exact samples: {target.log_prob(target.sample(4000)).mean():.3f})")
