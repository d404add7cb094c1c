"""Padding removal: a padded batch with a mask against an unpadded token stream with varlen attention backends.

The sweep moves the pad fraction (through the length distribution) at a fixed count of real tokens, so the figures
show what removing the padding saves as padding grows; ideally memory and time follow real tokens, so at 50% padding
the savings approach 2x.

What a user of Hugging Face transformers would pick, measured on its own model: grid points with `model=hf_llama`
train a LlamaForCausalLM sized like the suite's decoder; there `padded` is that model on the padded batch with its
attention mask (sdpa), and the `hf_flat_*` variants train it on DataCollatorWithFlattening's padding-free row under one
of the library's attention implementations, so their ratios compare like with like.
"""

from __future__ import annotations

import math

import torch

from bench import hardware
from bench.memory import peak_bytes
from bench.metrics import Metric, timing
from bench.suite import (
    Measurement,
    NotPlannable,
    Relative,
    Skip,
    Suite,
    Workload,
    build_module,
    register,
    requires,
    run_dtype,
)
from bench.timing import time_fn
from bench.work import Work, rates
from impls.libraries import ECOSYSTEM, label
from impls.rmpad import Decoder, DecoderConfig, forward_unpadded, hf, supports
from impls.rmpad.lengths import make_lengths
from impls.rmpad.reference import make_batch

# Named model shapes; the grids pick from them per size.
SHAPES = {
    "tiny": {"d_model": 32, "heads": 2, "layers": 2, "vocab": 128},
    "small": {"d_model": 128, "heads": 4, "layers": 2, "vocab": 1024},
    "350m": {"d_model": 1024, "heads": 16, "layers": 8, "vocab": 32000},
}
GRIDS = {
    # (shape, length distributions, longest sequence, real tokens per batch)
    "smoke": ("tiny", ("uniform", "lognormal"), 64, 512),
    # quick: the two ends of the pad fraction (0.41, 0.86); bimodal's 0.82 sits beside lognormal's and cost a first
    # run 26 s of its 5-minute budget, most of it an eager FlexAttention forward (12 s on 2 CPU cores)
    "quick": ("small", ("uniform", "lognormal"), 256, 4096),
    "full": ("350m", ("uniform", "lognormal", "zipf", "bimodal"), 4096, 65536),
}
MODES = ("train", "forward")  # a training step, and a forward alone (what FlexAttention can do on CPU)
HF = "hf_llama"  # the `model` param of the library's grid points (absent on the suite's own)
# Length distributions of the library's points per size (None: all of the size's). Smoke and quick have the
# long-tailed one alone, where padding costs most: each library case also pays a transformers import (~2 s on 2 cores).
HF_DISTS = {"smoke": ("lognormal",), "quick": ("lognormal",), "full": None}
# Backends `bench plan` cannot run on the meta device, and why. FlexAttention is planned for a CUDA target
# (bench.plan_flex: its compiled kernels' buffers); on a CPU target it runs eagerly, unplanned
UNPLANNABLE = {
    "flex": "FlexAttention on a CPU runs eagerly through torch.compile, which the plan does not model (and its CPU "
            "runs record no peak); it is planned for a CUDA target",
    "flash": "flash_attn's varlen kernel is a CUDA extension with no meta kernel",
}


def _unplannable(backend: str, device: str, target: str) -> str | None:
    """Why a backend's case cannot be planned for `target`, or None (also where it is not planned at all)."""
    if device != "meta" or backend not in UNPLANNABLE:
        return None
    return None if backend == "flex" and torch.device(target).type == "cuda" else UNPLANNABLE[backend]


def _unprobed(backend: str, device: str, target: str) -> bool:
    """A plan for a GPU that is not this machine's (bench.hardware.here), of a backend whose support is probed by a
    real step on the target (nested tensors, FlexAttention's backward): the plan takes the step the GPU runs
    (bench.plan_attention, bench.plan_flex), as the H100 ran it."""
    return device == "meta" and backend in ("nested", "flex") and torch.device(target).type == "cuda" and \
        not hardware.here(hardware.planned_gpu())


def batch_lengths(dist: str, max_len: int, real_tokens: int) -> list[int]:
    """The shortest prefix of a seeded length stream that holds `real_tokens`: the same real work for every
    distribution, with the padding each distribution brings."""
    stream = make_lengths(dist, max(1, math.ceil(4 * real_tokens / max_len)) * 8, max_len, seed=0)
    out, total = [], 0
    for n in stream:
        out.append(n)
        total += n
        if total >= real_tokens:
            return out
    raise ValueError(f"{dist} lengths up to {max_len} did not reach {real_tokens} real tokens")


@register
class Rmpad(Suite):
    name = "rmpad"
    description = "padding for memory and time: padded batch + mask vs unpadded tokens with varlen attention"
    variants = {
        "padded": "reference: [B, L] with a causal + key-padding mask, SDPA",
        "segments": "unpadded [T, d]; SDPA per sequence (portable, trains everywhere)",
        "flex": "unpadded; FlexAttention with a causal document mask (compiled on CUDA)",
        "nested": "unpadded; nested jagged tensors + SDPA",
        "flash": "unpadded; flash_attn varlen kernel (when flash_attn is installed)",
        "hf_flat_sdpa": "transformers: DataCollatorWithFlattening row [1, T], position_ids restarting; sdpa",
        "hf_flat_flex": "transformers: DataCollatorWithFlattening row; flex_attention",
        "hf_flat_fa2": "transformers: DataCollatorWithFlattening row; flash_attention_2 (when flash_attn is installed)",
    }
    param_defaults = {"model": "techbench"}  # grid points without `model` run our model, not HF's Llama
    libraries = {"flash": label("flash-attn"), **{v: hf.label() for v in ("hf_flat_sdpa", "hf_flat_flex")},
                 "hf_flat_fa2": f"{hf.label()}, {label('flash-attn')}"}  # transformers' FA2 runs flash_attn's kernel
    cuda_only = {"flash": "flash-attn's varlen kernel", "hf_flat_fa2": "flash-attn's varlen kernel (transformers' "
                 "flash_attention_2)"}
    requires = {"flash": ("flash_attn", "flash-attn"),
                **{v: ("transformers", ECOSYSTEM) for v in libraries if v.startswith("hf_")}}
    relative = (
        Relative("mem_saving_x", "peak_mem_bytes", invert=True),
        Relative("speedup_x", "step_time_ms", invert=True),
    )
    metrics = (
        *timing("step_time", "one step of the mode (a training step, or a forward alone)"),
        Metric("peak_mem_bytes", "exact", "lower", "peak bytes over one step; null for flex on CPU (not trackable)"),
        Metric("pad_fraction", "exact", "lower", "padding's share of the padded [B, L] batch"),
        *rates("step_time", "real_", tokens=True, what="real, padding left out"),
        *rates("step_time", "padded_", tokens=True, what="padded batch positions, B x L"),
        Metric("loss_diff", "exact", "lower", "|loss - the padded run's loss| / the latter, same model, weights and "
                                              "batch (library variants)"),
    )

    def grid(self, size, device):
        shape, dists, max_len, real = GRIDS[size]
        dtype = run_dtype(device)
        ours = [{**SHAPES[shape], "dist": d, "max_len": max_len, "real_tokens": real, "mode": m, "dtype": dtype}
                for m in MODES for d in dists]
        # the library's points train only: its collator is a training collator
        hf_dists = dists if HF_DISTS[size] is None else HF_DISTS[size]
        return ours + [{**p, "model": HF} for p in ours if p["mode"] == "train" and p["dist"] in hf_dists]

    def applies(self, variant, params):
        return variant == "padded" or variant.startswith("hf_") == (params.get("model") == HF)

    def workload(self, variant, params, device, target=None):
        if params.get("model") == HF:
            return _hf_workload(variant, params, device, target or device)
        dtype = getattr(torch, params["dtype"])
        train = params["mode"] == "train"
        why = _unplannable(variant, device, target or device)
        if why:
            raise NotPlannable(why)
        if variant != "padded" and not _unprobed(variant, device, target or device):
            ok, reason = supports(variant, target or device, dtype, backward=train)
            if not ok:
                raise Skip(reason)
        cfg = DecoderConfig(vocab=params["vocab"], d_model=params["d_model"], n_heads=params["heads"],
                            n_layers=params["layers"])
        model = build_module(lambda: Decoder(cfg), device, dtype)
        # the batch is drawn on the CPU and moved: on meta its ids and mask keep their values (bench.plan_meta), so
        # the real tokens' count decides the unpadded shapes as it does on the device
        ids, mask = make_batch(cfg, batch_lengths(params["dist"], params["max_len"], params["real_tokens"]),
                               device=device)

        def loss():
            return model(ids, mask) if variant == "padded" else forward_unpadded(model, ids, mask, variant)

        # stateless: the decoder has no lazy state and the step sets the gradients to None first (the plan checks
        # its prediction against the tracker at smoke and quick size: tests/bench/test_plan.py)
        return _workload(model, loss, train, stateless=True)

    def measure(self, variant, params, device):
        if params.get("model") == HF:
            return _measure_hf(variant, params, device)
        if variant == "flash":
            requires("flash_attn", pip="flash-attn")
        w = self.workload(variant, params, device)
        step = w.step
        step()  # warm-up (and compilation: even eager FlexAttention traces its call through torch.compile, ~2 s)
        # FlexAttention's CPU path runs through torch.compile, which refuses the live-tensor tracker (a user dispatch
        # mode): there is no exact CPU peak to give, so it is left null rather than guessed.
        slow = variant == "flex" and not device.startswith("cuda")
        peak = None if slow else peak_bytes(step, device, w.clear)
        # the steps above warmed up: 3 reps; 1 for eager FlexAttention on the CPU, whose one forward (~3-4 s at quick
        # size, not what it is for) is 15x time_fn's 0.2 s minimum on its own
        timing = time_fn(step, device, warmup=0, min_reps=1 if slow else 3)
        return _measurement(params, peak, timing)


def _workload(model, loss, train: bool, stateless: bool = False) -> Workload:
    """A training step (gradients cleared first), or a forward alone."""
    def clear():
        model.zero_grad(set_to_none=True)

    def step():
        if train:
            clear()
            loss().backward()
        else:
            with torch.no_grad():
                loss()

    return Workload(step, modules=(model,), clear=clear if train else None, stateless=stateless)


def _measurement(params, peak, timing, **metrics) -> Measurement:
    lengths = batch_lengths(params["dist"], params["max_len"], params["real_tokens"])
    real, padded = sum(lengths), len(lengths) * max(lengths)  # the padded batch is [B, L]
    work = [Work("step_time", "real_", tokens=real), Work("step_time", "padded_", tokens=padded)]
    return Measurement({"peak_mem_bytes": peak, "pad_fraction": 1 - real / padded, **metrics}, timed=timing,
                       timings={"step_time": timing}, work=work)


def _hf_model(variant, params, device, target):
    """(the library's model for a variant, its DecoderConfig, its attention implementation)."""
    requires("transformers", pip=ECOSYSTEM)
    attn = "sdpa" if variant == "padded" else variant.removeprefix("hf_flat_")
    why = _unplannable("flash" if attn == "fa2" else attn, device, target)
    if why:
        raise NotPlannable(why)
    ok, reason = (True, "") if _unprobed(attn, device, target) else \
        hf.supports(attn, target, backward=params["mode"] == "train")
    if not ok:
        raise Skip(reason)
    dtype = getattr(torch, params["dtype"])
    cfg = DecoderConfig(vocab=params["vocab"], d_model=params["d_model"], n_heads=params["heads"],
                        n_layers=params["layers"])
    try:  # hf.build seeds itself: every variant gets the same weights
        model = build_module(lambda: hf.build(cfg, attn, params["max_len"]), device, dtype)
    except ImportError as e:  # the library's own refusal of an attention implementation it cannot load here
        raise Skip(str(e).strip()) from e
    return model, cfg, attn


def _hf_workload(variant, params, device, target):
    """A library case's step: the Llama model on the padded batch (`padded`, sdpa) or on the collator's flattened
    row (the collator runs in the data loader, as make_batch's padding does: neither is part of the step)."""
    model, cfg, attn = _hf_model(variant, params, device, target)
    ids, mask = make_batch(cfg, batch_lengths(params["dist"], params["max_len"], params["real_tokens"]),
                           device=device)
    if variant == "padded":
        def loss():
            return hf.padded_loss(model, ids, mask)
    else:
        batch = hf.flatten_padded(ids, mask, flash_kwargs=attn == "fa2")

        def loss():
            return hf.flat_loss(model, batch)

    return _workload(model, loss, params["mode"] == "train")


def _measure_hf(variant, params, device):
    """A library case: the workload's step, and the flattened loss against the padded model's on the same batch."""
    w = _hf_workload(variant, params, device, device)
    loss_diff = None
    if variant != "padded":
        reference, cfg, _ = _hf_model("padded", params, device, device)
        ids, mask = make_batch(cfg, batch_lengths(params["dist"], params["max_len"], params["real_tokens"]),
                               device=device)
        batch = hf.flatten_padded(ids, mask, flash_kwargs=variant == "hf_flat_fa2")
        with torch.no_grad():
            ref, flat = hf.padded_loss(reference, ids, mask).item(), hf.flat_loss(w.modules[0], batch).item()
        loss_diff = abs(flat - ref) / abs(ref)
        del reference
    step = w.step
    step()  # warm-up (and compilation, for flex_attention)
    peak = peak_bytes(step, device, w.clear)
    timing = time_fn(step, device, warmup=0, min_reps=3)
    return _measurement(params, peak, timing, loss_diff=loss_diff)
