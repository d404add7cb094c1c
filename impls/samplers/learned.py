"""Learned models on the samplers' model interface: a small MLP trained by denoising score matching (noise prediction
for the VP family, Ho et al. 2020) or flow matching (velocity on straight paths, Lipman et al. 2023; Liu et al. 2023),
on a Gaussian mixture or on scikit-learn's bundled 8x8 digits; and reflow (Liu et al. 2023, 2-rectified flow): flow
matching again on (noise, sample) pairs drawn from the 1-rectified model, which straightens its paths so that one
Euler step goes far. With a learned model, a sampler's error adds to the
model's, which is the realistic case; the exact model (params.ExactModel) isolates the sampler's.

Training is seeded and cached per config (cache.py), so a suite trains each config once per machine.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from impls.cache import fetch, progress
from impls.samplers.schedules import SCHEDULES, Schedule
from impls.samplers.targets import TARGETS, make_target

DATASETS = (*TARGETS, "digits")
FAMILIES = ("vp", "flow", "reflow")
REFLOW_PAIRS = 16384  # (noise, sample) pairs the reflow model trains on, drawn once
REFLOW_SOLVER_STEPS = 64  # Heun steps (127 NFE) per pair: far below the learned model's own error on these targets


class TimeMLP(nn.Module):
    """prediction(x [B, D], t [B]): an MLP on x and sinusoidal features of t; `parameterization` names the output.

    t is the schedule's continuous time in [0, 1] (t = 1 noise), not a 0..T-1 timestep index."""

    def __init__(self, dim: int, schedule: Schedule, parameterization: str, hidden: int = 256, layers: int = 3,
                 freqs: int = 16):
        super().__init__()
        self.schedule, self.parameterization, self.freqs = schedule, parameterization, freqs
        sizes = [dim + 2 * freqs] + [hidden] * layers
        self.body = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.out = nn.Linear(hidden, dim)

    def time_features(self, t: Tensor) -> Tensor:
        # Frequencies 1..2^(freqs/2) on t in [0, 1]: resolves the ~1e-3 spacing of DDPM's grid near the data.
        f = torch.exp2(torch.linspace(0, self.freqs / 2, self.freqs, device=t.device)) * math.pi
        angle = t.to(torch.float32)[:, None] * f  # [B, freqs]
        return torch.cat([angle.sin(), angle.cos()], dim=1)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        h = torch.cat([x.to(torch.float32), self.time_features(t.reshape(-1).expand(x.shape[0]))], dim=1)
        for layer in self.body:
            h = F.silu(layer(h))
        return self.out(h).to(x.dtype)


@dataclass(frozen=True)
class LearnedConfig:
    """What is trained; its fields are the cache key."""

    data: str = "gmm2d"
    """A target name (targets.TARGETS) or "digits" (scikit-learn's 8x8 digits, 64-D in [-1, 1])."""
    family: str = "vp"
    """"vp": noise prediction under `schedule`; "flow": velocity on rectified flow's straight paths; "reflow": velocity
    on the straight lines between noise and the samples the "flow" model (same other fields) makes from it."""
    schedule: str = "vp_linear"
    """The VP schedule (schedules.SCHEDULES) the eps model is trained and sampled under; ignored for "flow"."""
    steps: int = 2000
    """Adam steps."""
    batch: int = 512
    hidden: int = 256
    layers: int = 3
    lr: float = 2e-3
    seed: int = 0

    def __post_init__(self):
        assert self.data in DATASETS, f"data must be one of {DATASETS}, got {self.data!r}"
        assert self.family in FAMILIES, f"family must be one of {FAMILIES}, got {self.family!r}"
        assert self.schedule in SCHEDULES and self.schedule != "rectified_flow", f"bad VP schedule {self.schedule!r}"
        assert self.steps >= 1 and self.batch >= 1 and self.hidden >= 1 and self.layers >= 1 and self.lr > 0

    @property
    def parameterization(self) -> str:
        return "eps" if self.family == "vp" else "velocity"

    def make_schedule(self) -> Schedule:
        return SCHEDULES[self.schedule if self.family == "vp" else "rectified_flow"]()


def digits(split: str = "train") -> Tensor:
    """scikit-learn's 1,797 bundled 8x8 digits (no download) as [N, 64] float32 in [-1, 1]; a seeded 80/20 split,
    so "train" and "test" never share an image. Labels: digit_labels(split)."""
    return _digits(split)[0]


def digit_labels(split: str = "train") -> Tensor:
    return _digits(split)[1]


DIGITS = 1797  # images in scikit-learn's load_digits (the UCI test set it bundles): known without importing it
TRAIN_FRACTION = 0.8


def digits_count(split: str = "train") -> int:
    """len(digits(split)), without scikit-learn: a suite's grid names it while planning on a machine without it."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be train or test, got {split!r}")
    cut = int(TRAIN_FRACTION * DIGITS)
    return cut if split == "train" else DIGITS - cut


def _digits(split: str) -> tuple[Tensor, Tensor]:
    from sklearn.datasets import load_digits

    if split not in ("train", "test"):
        raise ValueError(f"split must be train or test, got {split!r}")
    bunch = load_digits()
    if len(bunch.data) != DIGITS:
        raise RuntimeError(f"scikit-learn's digits have {len(bunch.data)} images, not {DIGITS}: update DIGITS")
    x = torch.as_tensor(bunch.data, dtype=torch.float32) / 8.0 - 1.0  # pixel values 0..16
    y = torch.as_tensor(bunch.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    cut = int(TRAIN_FRACTION * len(x))
    idx = order[:cut] if split == "train" else order[cut:]
    return x[idx], y[idx]


@lru_cache(maxsize=1)
def _digit_classifier():
    from sklearn.linear_model import LogisticRegression

    # ~96% held-out accuracy on these 8x8 digits: enough to read which digit a sample looks like.
    return LogisticRegression(max_iter=2000).fit(digits("train").numpy(), digit_labels("train").numpy())


def classify_digits(x: Tensor) -> Tensor:
    """[N] digit class (0-9) of each [N, 64] image in [-1, 1], by logistic regression fitted on the train split."""
    return torch.as_tensor(_digit_classifier().predict(x.detach().cpu().double().numpy()))


def training_data(data: str, n: int, generator: torch.Generator) -> Tensor:
    """[n, D] training examples: fresh mixture samples, or digits drawn with replacement from the train split."""
    if data == "digits":
        pool = digits("train")
        return pool[torch.randint(len(pool), (n,), generator=generator)]
    return make_target(data).sample(n, generator)


def reflow_pairs(config: LearnedConfig, n: int = REFLOW_PAIRS) -> tuple[Tensor, Tensor]:
    """(x0, eps) [n, D] each: noise eps and the sample the 1-rectified model's ODE carries it to."""
    from impls.samplers.flow import flow_heun

    base = learned_model(replace(config, family="flow"))
    eps = torch.randn(n, base.out.out_features, generator=torch.Generator().manual_seed(config.seed + 1))
    with torch.no_grad():
        return flow_heun(base, eps, REFLOW_SOLVER_STEPS).x, eps


def loss_fn(model: TimeMLP, x0: Tensor, generator: torch.Generator, eps: Tensor | None = None) -> Tensor:
    """Denoising loss at t ~ U(t_min, t_max): ||eps_hat - eps||^2 (vp) or ||v_hat - (eps - x0)||^2 (flow), with eps
    fresh noise, or the noise paired with x0 (reflow)."""
    s = model.schedule
    t = s.t_min + (s.t_max - s.t_min) * torch.rand(len(x0), generator=generator, dtype=torch.float64)
    if eps is None:
        eps = torch.randn(x0.shape, generator=generator)
    alpha, sigma = (v.to(torch.float32)[:, None] for v in (s.alpha(t), s.sigma(t)))
    xt = alpha * x0 + sigma * eps
    target = eps if model.parameterization == "eps" else eps - x0
    return F.mse_loss(model(xt, t), target)


def fit(module: nn.Module, steps: int, lr: float, step_loss: Callable[[], Tensor], log_every: int = 0,
        what: str = "sampler model") -> list[float]:
    """Adam with cosine decay over `steps`, minimising step_loss() (a fresh minibatch's loss each call); losses.
    Progress goes to the "techbench.progress" logger as "training <what> i/steps"."""
    opt = torch.optim.Adam(module.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    losses = []
    report = progress(what, steps)
    for step in range(steps):
        loss = step_loss()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        report(step + 1)
        if log_every and step % log_every == 0:
            print(f"step {step:5d} loss {loss.item():.4f}")
    return losses


def train(config: LearnedConfig, log_every: int = 0) -> tuple[TimeMLP, list[float]]:
    """A TimeMLP trained on `config` from scratch: same config and seed give the same weights; CPU, float32."""
    torch.manual_seed(config.seed)
    g = torch.Generator().manual_seed(config.seed)
    dim = digits().shape[1] if config.data == "digits" else make_target(config.data).dim
    model = TimeMLP(dim, config.make_schedule(), config.parameterization, config.hidden, config.layers)
    pairs = reflow_pairs(config) if config.family == "reflow" else None

    def step_loss() -> Tensor:
        if pairs is None:
            return loss_fn(model, training_data(config.data, config.batch, g), g)
        i = torch.randint(len(pairs[0]), (config.batch,), generator=g)
        return loss_fn(model, pairs[0][i], g, pairs[1][i])

    losses = fit(model, config.steps, config.lr, step_loss, log_every, f"{config.family} {config.data}")
    return model.eval().requires_grad_(False), losses


def learned_model(config: LearnedConfig) -> TimeMLP:
    """The trained model for `config`, from the cache when it holds it, else trained now and cached."""
    return load_or_train(config)[0]


def load_or_train(config: LearnedConfig) -> tuple[TimeMLP, str]:
    """(learned_model(config), source): impls.cache.fetch's source, "shipped" when the weights are the package's
    (trained elsewhere, stored in fp16), "cache" or "built"."""

    def build() -> dict:
        model, losses = train(config)
        return {"state": model.state_dict(), "final_loss": losses[-1]}

    state, source = fetch("samplers", asdict(config), build)
    dim = digits().shape[1] if config.data == "digits" else make_target(config.data).dim
    model = TimeMLP(dim, config.make_schedule(), config.parameterization, config.hidden, config.layers)
    model.load_state_dict(state["state"])
    return model.eval().requires_grad_(False), source


if __name__ == "__main__":
    for family in FAMILIES:
        cfg = LearnedConfig(family=family, steps=1000)
        _, losses = train(cfg, log_every=250)
        print(f"{family}: final loss {losses[-1]:.4f}")
