"""Train a detector configuration in a small, seeded budget, and cache its weights per config (impls.cache) so a
suite run measures inference without retraining. A corrupt or unreadable cache entry is retrained and rewritten."""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from impls.cache import entry, fetch, progress
from impls.detection.backbone import NECKS
from impls.detection.data import DataConfig, DetectionData, make_dataset
from impls.detection.detector import HEADS, Detector

NAMESPACE = "detection"
CACHE_VERSION = 1  # part of the cache key: bump when the model or training code changes what a config trains to


@dataclass(frozen=True)
class TrainConfig:
    head: str = "centernet"
    """One of HEADS: yolo, centernet, fcos."""
    neck: str = "fpn"
    """One of NECKS: none, fpn, spp, torchvision_fpn (torchvision's, where it imports)."""
    resolution: int = 128
    """Training image side in px, also the base (scale 1) of inference; a multiple of 32."""
    width: int = 16
    """Backbone base channels (stages w, 2w, 4w, 8w; neck and head 4w)."""
    steps: int = 300
    """Optimizer steps (AdamW, 5% linear warm-up, cosine decay)."""
    batch: int = 16
    lr: float = 3e-3
    n_train: int = 512
    """Training images, cycled in seeded random order; with horizontal flips."""
    n_classes: int = 4
    max_objects: int = 6
    occlusion: bool = False
    seed: int = 0
    """Seeds the weights, the data order and the train split (the test split is another stream)."""

    def __post_init__(self):
        if self.head not in HEADS or self.neck not in NECKS:
            raise ValueError(f"unknown head {self.head!r} or neck {self.neck!r} (heads: {', '.join(HEADS)}; "
                             f"necks: {', '.join(NECKS)})")
        if self.resolution % 32 or self.resolution < 32:
            raise ValueError(f"resolution must be a positive multiple of 32, got {self.resolution}")
        if min(self.steps, self.batch, self.n_train, self.width) < 1 or self.lr <= 0:
            raise ValueError("steps, batch, n_train, width and lr must be positive")

    def data(self) -> DataConfig:
        return DataConfig(image_size=self.resolution, n_classes=self.n_classes, max_objects=self.max_objects,
                          occlusion=self.occlusion)

    def key(self) -> str:
        """The cache entry's name (hex digits of the sha256 of cache_key)."""
        return entry(NAMESPACE, cache_key(self)).stem


# Measured training time per config on one thread of a busy 2-core VM (FPN neck): smoke 1.7-3.2 s (64 px); quick
# at 300 steps 16 s (yolo), 31 s (centernet), 45 s (fcos) at 128 px, where width 16 would cost ~3x, and 720 steps
# cost 2.4x that; full (256 px, width 32) is sized for a GPU and has not been timed on one.
PRESETS = {
    "smoke": TrainConfig(resolution=64, width=8, steps=60, batch=8, n_train=64, lr=5e-3),
    "quick": TrainConfig(resolution=128, width=8, steps=720, batch=16, n_train=512),
    "full": TrainConfig(resolution=256, width=32, steps=3000, batch=32, n_train=8192),
}


def preset(size: str, **overrides) -> TrainConfig:
    """A named preset with fields replaced, e.g. preset("quick", head="fcos", neck="none")."""
    if size not in PRESETS:
        raise ValueError(f"unknown size {size!r} (valid: {', '.join(PRESETS)})")
    return dataclasses.replace(PRESETS[size], **overrides)


def cache_key(cfg: TrainConfig) -> dict:
    """What the cached weights depend on: every field of the config and CACHE_VERSION."""
    return {"version": CACHE_VERSION, **dataclasses.asdict(cfg)}


def build(cfg: TrainConfig) -> Detector:
    """The untrained detector of a config. Its SNIP band runs from two cells of the head's finest map (a smaller
    object covers under 2x2 cells of it) to the largest object training shows it, and spans at least 2x, the ratio
    of the suite's scales, so that every size has a scale (a 64 px YOLO grid at stride 16 sees objects to 32 px)."""
    model = Detector(cfg.head, cfg.neck, cfg.n_classes, cfg.width)
    lo = 2.0 * min(model.head.strides)
    model.band = (lo, max(2 * lo, cfg.data().max_side * cfg.resolution))
    return model


def train(cfg: TrainConfig, device="cpu", data: DetectionData | None = None) -> tuple[Detector, list[float]]:
    """The trained detector (eval mode) and its loss per step. The same config gives the same weights on a device."""
    torch.manual_seed(cfg.seed)
    model = build(cfg).to(device)
    data = data if data is not None else make_dataset(cfg.data(), cfg.n_train, "train", cfg.seed)
    n = data.images.shape[0]
    g = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    warm = max(1, cfg.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: min(1.0, (t + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(t, cfg.steps) / cfg.steps))
    )
    order, pos, losses = torch.randperm(n, generator=g), 0, []
    encoded: dict[tuple[int, bool], dict] = {}  # (image, flipped) -> its targets: encoding loops over objects in
    # Python, ~15% of a 128 px CPU step when redone each step; each of the 2n (image, flip) pairs is encoded once

    def targets(pairs: list[tuple[int, bool]]) -> dict:
        new = [p for p in dict.fromkeys(pairs) if p not in encoded]
        if new:
            w = cfg.resolution
            boxes = [data.boxes[i][:, [2, 1, 0, 3]] * torch.tensor([-1.0, 1, -1, 1]) + torch.tensor([w, 0.0, w, 0])
                     if f else data.boxes[i] for i, f in new]
            t = model.head.encode(boxes, [data.labels[i] for i, _ in new], (w, w))
            encoded.update({p: {k: v[j] for k, v in t.items()} for j, p in enumerate(new)})
        return {k: torch.stack([encoded[p][k] for p in pairs]).to(device) for k in encoded[pairs[0]]}

    model.train()
    report = progress(f"{cfg.head}-{cfg.neck}", cfg.steps)
    for step in range(cfg.steps):
        if pos + cfg.batch > n:
            order, pos = torch.randperm(n, generator=g), 0
        idx = order[pos: pos + cfg.batch].tolist()
        pos += cfg.batch
        flip = (torch.rand(len(idx), generator=g) < 0.5).tolist()
        images = torch.stack([data.images[i].flip(-1) if f else data.images[i] for i, f in zip(idx, flip)])
        loss = model.head.loss(model(images.to(device)), targets(list(zip(idx, flip))))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)  # the first focal-loss steps can spike
        opt.step()
        sched.step()
        losses.append(loss.item())
        report(step + 1)
    return model.eval(), losses


@dataclass(frozen=True)
class Trained:
    detector: Detector
    losses: list[float]
    """Loss per step, as recorded when the weights were trained."""
    train_s: float
    """Wall time of that training run."""
    cached: bool
    """True when the weights were not trained by this call (the user cache or the package's shipped artifacts)."""
    path: Path
    """The cache entry that holds the weights (impls.cache.entry)."""
    shipped: bool = False
    """True when the weights came from the artifacts shipped with the package (impls/weights), not this machine."""


def load_or_train(cfg: TrainConfig, device="cpu") -> Trained:
    """The config's weights from the package's shipped artifacts or the shared weight cache (impls.cache, namespace
    "detection"), else trained on `device` and cached. Weights from the cache equal those of a fresh run (shipped ones
    are stored in fp16); an unreadable entry is retrained."""
    built = []

    def build_payload() -> dict:
        t = time.perf_counter()
        model, losses = train(cfg, device)
        built.append(model)
        return {"state_dict": {k: v.cpu() for k, v in model.state_dict().items()}, "losses": losses,
                "train_s": time.perf_counter() - t}

    key = cache_key(cfg)
    payload, source = fetch(NAMESPACE, key, build_payload)
    if built:
        model = built[0]
    else:
        model = build(cfg)
        model.load_state_dict(payload["state_dict"])
    return Trained(model.to(device).eval(), [float(x) for x in payload["losses"]], float(payload["train_s"]),
                   not built, entry(NAMESPACE, key), source == "shipped")


if __name__ == "__main__":
    from impls.detection.evaluate import evaluate_detector

    for head in HEADS:
        cfg = preset("smoke", head=head)
        t = time.perf_counter()
        model, losses = train(cfg)
        dt = time.perf_counter() - t
        test = make_dataset(cfg.data(), 64, "test", cfg.seed)
        m = evaluate_detector(model, test)
        print(f"{head:<10} loss {losses[0]:.3f} -> {losses[-1]:.3f} in {dt:.1f} s; "
              + ", ".join(f"{k} {v:.3f}" for k, v in m.items()))
