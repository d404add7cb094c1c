"""Train the main model with D MTP modules (D=0: the plain model) on the synthetic language (data.py), in a small
seeded budget, and cache the weights per config (impls.cache) so a suite run measures without retraining."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch

from impls.cache import fetch, progress
from impls.mtp.data import Language, LanguageConfig, windows
from impls.mtp.mtp import MTPConfig, MTPModel, mtp_loss
from impls.mtp.reference import LMConfig

NAMESPACE = "mtp"
CACHE_VERSION = 1  # part of the cache key: bump when the model or training code changes what a config trains to


@dataclass(frozen=True)
class TrainConfig:
    model: LMConfig = field(default_factory=LMConfig)
    mtp: MTPConfig = field(default_factory=MTPConfig)
    language: LanguageConfig = field(default_factory=LanguageConfig)
    seq: int = 65
    """Tokens per training sequence, T+1: T inputs and the last target."""
    batch: int = 32
    steps: int = 300
    """AdamW steps (5% linear warm-up, cosine decay); each draws fresh windows of the training text."""
    lr: float = 3e-3
    train_tokens: int = 200_000
    """Length of the training text that windows are drawn from (the held-out text is another stream)."""
    seed: int = 0
    """Seeds the weights and the windows; the text has its own seeds (below), so every depth sees the same batches."""

    def __post_init__(self):
        if self.model.vocab != self.language.vocab:
            raise ValueError(f"model vocab {self.model.vocab} != language vocab {self.language.vocab}")
        if self.seq < self.mtp.depth + 2:
            raise ValueError(f"seq {self.seq} is shorter than depth + 2 = {self.mtp.depth + 2}")
        if min(self.batch, self.steps) < 1 or self.lr <= 0 or self.train_tokens < self.seq:
            raise ValueError("batch and steps must be positive, lr > 0, train_tokens >= seq")


TRAIN_TEXT_SEED, HELDOUT_SEED = 1, 2


def cache_key(cfg: TrainConfig) -> dict:
    return {"version": CACHE_VERSION, **dataclasses.asdict(cfg)}


def train(cfg: TrainConfig, device="cpu", dtype: torch.dtype = torch.float32) -> tuple[MTPModel, dict]:
    """The trained model (eval mode) and its loss curves: main head and mean MTP loss per step. fp32 weights; a bf16
    `dtype` trains under autocast."""
    torch.manual_seed(cfg.seed)
    model = MTPModel(cfg.model, cfg.mtp).to(device)
    text = Language(cfg.language).stream(cfg.train_tokens, TRAIN_TEXT_SEED)
    g = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    warm = max(1, cfg.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: min(1.0, (t + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(t, cfg.steps) / cfg.steps)))
    main_curve, mtp_curve = [], []
    model.train()
    report = progress(f"mtp d{cfg.mtp.depth}", cfg.steps)
    for step in range(cfg.steps):
        batch = windows(text, cfg.batch, cfg.seq, g).to(device)
        with torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype != torch.float32):
            loss, main, per_depth = mtp_loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        main_curve.append(main.item())
        mtp_curve.append(sum(x.item() for x in per_depth) / len(per_depth) if per_depth else float("nan"))
        report(step + 1)
    return model.eval(), {"main_loss_curve": main_curve, "mtp_loss_curve": mtp_curve}


def trained(cfg: TrainConfig, device="cpu", dtype: torch.dtype = torch.float32) -> tuple[MTPModel, dict]:
    """train(cfg), cached per (config, dtype): a second call loads the weights and curves instead of training."""
    return load_or_train(cfg, device, dtype)[:2]


def load_or_train(cfg: TrainConfig, device="cpu", dtype: torch.dtype = torch.float32) -> tuple[MTPModel, dict, str]:
    """(model, curves, source) as trained(); source is impls.cache.fetch's: "shipped" (the package's artifact, built
    elsewhere, fp16 weights), "cache" or "built"."""

    def build():
        model, curves = train(cfg, device, dtype)
        return {"state": {k: v.cpu() for k, v in model.state_dict().items()},
                **{k: torch.tensor(v) for k, v in curves.items()}}

    payload, source = fetch(NAMESPACE, {**cache_key(cfg), "dtype": str(dtype)}, build)
    model = MTPModel(cfg.model, cfg.mtp)
    model.load_state_dict(payload["state"])
    curves = {k: payload[k].tolist() for k in ("main_loss_curve", "mtp_loss_curve")}
    return model.to(device).eval(), curves, source


def heldout(cfg: TrainConfig, count: int, length: int) -> torch.Tensor:
    """count held-out sequences [count, length] of the same language, from text the training never drew."""
    return Language(cfg.language).sequences(count, length, HELDOUT_SEED)
