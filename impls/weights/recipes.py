"""What ships in impls/weights: every model the suites' smoke and quick grids train on a CPU, with how to load (or
train) it through its technique's own loader and how to score what loaded.

The configs repeat the training part of the suites' grids (suites/detection.py, samplers.py, moe.py and mtp.py; impls
may not import suites): tests/impls/test_weights.py asserts that the keys those grids ask for at smoke and quick sizes
on a CPU are exactly the keys listed here, so a grid change without a rebuild fails there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

SIZES = ("smoke", "quick")
N_TEST = 100  # detection test images scored per model (quick's own n_test)
SAMPLES = 4000  # sampler samples scored per model (sliced W2 of 4000 exact samples: ~0.04, the floor)


@dataclass(frozen=True)
class Artifact:
    name: str
    """suite/size/model, e.g. "detection/quick/centernet-fpn"."""
    namespace: str
    key: dict
    """The cache key its technique's loader asks impls.cache for."""
    weights: str | None
    """The payload entry that holds a state dict, shipped in fp16; None ships the payload as trained (moe's balance
    payload is the training run's loads and losses: the figures its records report)."""
    threads: int | None
    """Intra-op threads it trains on (its suite's cpu_threads; None: torch's default)."""
    load: Callable[[], str]
    """Fetches it through its technique's loader (training when nothing holds it); returns the source."""
    quality: Callable[[], dict[str, float]]
    """Scores what load() gives: held-out figures, deterministic given the weights."""
    unavailable: Callable[[], str | None] = lambda: None
    """Why it can be neither loaded nor trained here, in one line (a library's model whose library does not import:
    detection's torchvision_fpn); None where it can. Its key and shipped file need no library."""


# Agreement bands of each quality figure, as (absolute, relative): |shipped - retrained| <= abs + rel * |retrained|.
# Measured: fp16 storage moved quick AP by 0.0004 and every other figure by <= 5e-4; retraining on 1 thread instead
# of 2, or on torch 2.11 instead of the build's 2.13, moved none by more than 1e-3 (moe: not at all). The bands leave
# ~10x that for another CPU's rounding and stay under the gaps between models (quick AP: no neck 0.180, SPP 0.191).
BANDS = {
    "ap": (0.01, 0.0),  # COCO AP on 100 images (~300 objects)
    "ap50": (0.015, 0.0),
    "test_loss": (0.0, 0.01),
    "sliced_w2": (0.002, 0.03),  # same seeds, same samples: moves only with the weights
    "heldout_nll": (0.01, 0.0),  # nats
    "heldout_loss": (0.01, 0.0),  # nats/token
    "acceptance_rate": (0.01, 0.0),
    "eval_loss": (0.01, 0.0),
    "final_loss": (0.01, 0.0),
    "max_vio_global": (0.02, 0.05),  # one token routed elsewhere moves it by ~1/4096 at quick
}


def within(name: str, shipped: float, trained: float) -> bool:
    tol_abs, tol_rel = BANDS[name]
    return abs(shipped - trained) <= tol_abs + tol_rel * abs(trained)


def artifacts(size: str) -> list[Artifact]:
    if size not in SIZES:
        raise ValueError(f"weights ship for sizes {', '.join(SIZES)}, not {size!r}")
    return [*_detection(size), *_samplers(size), *_moe(size), *_mtp(size)]


def _detection(size: str) -> list[Artifact]:
    from impls.detection.backbone import NECKS
    from impls.detection.train import NAMESPACE, cache_key, preset

    # suites/detection.py: centernet at the preset's resolution and steps, one model per neck (pyramid and snip run
    # the no-neck model's weights); torchvision's FPN was trained where torchvision imports (torch 2.11's CUDA build)
    return [Artifact(f"detection/{size}/{cfg.head}-{cfg.neck}", NAMESPACE, cache_key(cfg), "state_dict", None,
                     _detection_load(cfg), _detection_quality(cfg), NECKS[cfg.neck].unavailable)
            for cfg in (preset(size, head="centernet", neck=neck) for neck in NECKS)]


def _detection_load(cfg):
    def load() -> str:
        from impls.detection.train import load_or_train

        trained = load_or_train(cfg)
        return "shipped" if trained.shipped else "cache" if trained.cached else "built"

    return load


def _detection_quality(cfg):
    def quality() -> dict[str, float]:
        from impls.detection.data import make_dataset
        from impls.detection.evaluate import evaluate_detector
        from impls.detection.train import load_or_train

        model = load_or_train(cfg).detector
        test = make_dataset(cfg.data(), N_TEST, "test", cfg.seed)
        m = evaluate_detector(model, test)
        side = cfg.resolution
        with torch.no_grad():
            loss = model.head.loss(model(test.images), model.head.encode(test.boxes, test.labels, (side, side)))
        return {"ap": m["ap"], "ap50": m["ap50"], "test_loss": loss.item()}

    return quality


SAMPLER_TRAINING = {"smoke": (300, 64), "quick": (1500, 128)}  # suites/samplers.py GRIDS: (train steps, hidden)
SAMPLER_PROBE = {"vp": ("ddim", 50), "flow": ("flow_heun", 16), "reflow": ("flow_euler", 4)}  # sampler, steps


def _samplers(size: str) -> list[Artifact]:
    from impls.samplers.learned import FAMILIES, LearnedConfig
    from impls.samplers.nflow import FlowConfig

    steps, hidden = SAMPLER_TRAINING[size]
    out = []
    for family in FAMILIES:
        cfg = LearnedConfig(data="gmm2d", family=family, steps=steps, hidden=hidden)
        out.append(Artifact(f"samplers/{size}/{family}", "samplers", asdict(cfg), "state", 1,
                            _learned_load(cfg), _learned_quality(cfg)))
    flow = FlowConfig(data="gmm2d", steps=steps, hidden=hidden)
    out.append(Artifact(f"samplers/{size}/nflow", "samplers-nflow", asdict(flow), "state", 1, _flow_load(flow),
                        _flow_quality(flow)))
    return out


def _reference(data: str):
    from impls.samplers.targets import make_target

    return make_target(data).sample(10_000, torch.Generator().manual_seed(2))


def _learned_load(cfg):
    def load() -> str:
        from impls.samplers.learned import load_or_train

        return load_or_train(cfg)[1]

    return load


def _learned_quality(cfg):
    def quality() -> dict[str, float]:
        from impls.samplers import SAMPLERS
        from impls.samplers.base import prior_noise
        from impls.samplers.learned import learned_model
        from impls.samplers.metrics import sliced_w2

        model = learned_model(cfg)
        sampler, steps = SAMPLER_PROBE[cfg.family]
        x_T = prior_noise(model.schedule, SAMPLES, model.out.out_features, torch.Generator().manual_seed(1))
        with torch.no_grad():
            x = SAMPLERS[sampler].fn(model, x_T, steps).x
        return {"sliced_w2": sliced_w2(x, _reference(cfg.data))}

    return quality


def _flow_load(cfg):
    def load() -> str:
        from impls.samplers.nflow import load_or_train

        return load_or_train(cfg)[1]

    return load


def _flow_quality(cfg):
    def quality() -> dict[str, float]:
        from impls.samplers.metrics import sliced_w2
        from impls.samplers.nflow import trained_flow
        from impls.samplers.targets import make_target

        flow = trained_flow(cfg)
        held_out = make_target(cfg.data).sample(SAMPLES, torch.Generator().manual_seed(3))
        with torch.no_grad():
            nll = -flow.log_prob(held_out).mean().item()
        return {"sliced_w2": sliced_w2(flow.sample(SAMPLES, torch.Generator().manual_seed(1)), _reference(cfg.data)),
                "heldout_nll": nll}

    return quality


# suites/moe.py BALANCE, AUX_ALPHA and EVAL_SEQS at the sizes that ship
MOE_BALANCE = {
    "smoke": {"steps": 30, "gamma": 0.01, "dim": 32, "experts": 8, "top_k": 4, "layers": 1, "seq": 32, "batch": 4,
              "eval_seqs": 32},
    "quick": {"steps": 120, "gamma": 0.01, "dim": 64, "experts": 16, "top_k": 4, "layers": 2, "seq": 64, "batch": 8,
              "eval_seqs": 256},
}
MOE_AUX_ALPHA = 1e-3


def _moe(size: str) -> list[Artifact]:
    from impls.moe.lm import LMConfig, balance_key, tuned
    from impls.moe.router import ROUTERS

    p = MOE_BALANCE[size]
    cfg = LMConfig(dim=p["dim"], layers=p["layers"], n_routed=p["experts"], top_k=p["top_k"], seq=p["seq"],
                   batch=p["batch"])
    out = []
    for variant, router in ROUTERS.items():
        router = tuned(router, MOE_AUX_ALPHA, p["gamma"])
        run = (cfg, router, p["steps"], p["eval_seqs"])
        out.append(Artifact(f"moe/{size}/{variant}", "moe_balance", balance_key(*run, "cpu"), None, 1,
                            _moe_load(run), _moe_quality(run)))
    return out


def _moe_fetch(run) -> tuple[dict, str]:
    from impls.moe.grouped import dispatcher
    from impls.moe.lm import load_or_train

    return load_or_train(*run, dispatcher("auto"), "cpu")


def _moe_load(run):
    return lambda: _moe_fetch(run)[1]


def _moe_quality(run):
    def quality() -> dict[str, float]:
        from impls.moe.reference import max_vio

        out = _moe_fetch(run)[0]
        tail = max(1, len(out["losses"]) // 4)
        return {"eval_loss": float(out["eval_loss"]), "final_loss": sum(out["losses"][-tail:]) / tail,
                "max_vio_global": sum(max_vio(layer) for layer in out["eval_load"]) / len(out["eval_load"])}

    return quality


# suites/mtp.py SHAPES and the training part of GRIDS at the sizes that ship; LAMBDA; depths of its variants
MTP_TRAINING = {
    "smoke": {"vocab": 32, "d_model": 32, "heads": 2, "layers": 2, "phrases": 16, "seq": 17, "batch": 8, "steps": 30,
              "lr": 3e-3, "train_tokens": 20_000},
    "quick": {"vocab": 64, "d_model": 64, "heads": 4, "layers": 4, "phrases": 48, "seq": 33, "batch": 16,
              "steps": 150, "lr": 4e-3, "train_tokens": 200_000},
}
MTP_LAMBDA, MTP_DEPTHS, HELDOUT_SEQS = 0.3, (0, 1, 2), 64


def _mtp(size: str) -> list[Artifact]:
    from impls.mtp.data import LanguageConfig
    from impls.mtp.mtp import MTPConfig
    from impls.mtp.reference import LMConfig
    from impls.mtp.train import NAMESPACE, TrainConfig, cache_key

    p = MTP_TRAINING[size]
    model = LMConfig(vocab=p["vocab"], d_model=p["d_model"], n_heads=p["heads"], n_layers=p["layers"])
    language = LanguageConfig(vocab=p["vocab"], phrases=p["phrases"])
    out = []
    for depth in MTP_DEPTHS:
        cfg = TrainConfig(model=model, mtp=MTPConfig(depth=depth, lam=MTP_LAMBDA), language=language, seq=p["seq"],
                          batch=p["batch"], steps=p["steps"], lr=p["lr"], train_tokens=p["train_tokens"])
        key = {**cache_key(cfg), "dtype": str(torch.float32)}  # impls.mtp.train.load_or_train's key on a CPU
        out.append(Artifact(f"mtp/{size}/d{depth}", NAMESPACE, key, "state", 1, _mtp_load(cfg), _mtp_quality(cfg)))
    return out


def _mtp_load(cfg):
    def load() -> str:
        from impls.mtp.train import load_or_train

        return load_or_train(cfg)[2]

    return load


def _mtp_quality(cfg):
    def quality() -> dict[str, float]:
        from impls.mtp.mtp import mtp_loss
        from impls.mtp.speculative import acceptance_rate
        from impls.mtp.train import heldout, load_or_train

        model = load_or_train(cfg)[0]
        text = heldout(cfg, HELDOUT_SEQS, cfg.seq)
        with torch.no_grad():
            out = {"heldout_loss": mtp_loss(model, text)[1].item()}
            if cfg.mtp.depth:
                out["acceptance_rate"] = acceptance_rate(model, text)
        return out

    return quality
