"""Activation checkpointing: memory saved against recompute paid, for a stack of pre-norm transformer blocks.

What a user of Hugging Face transformers would pick, measured on its own model: grid points with `model=hf_llama`
train a Llama stack of the same width, heads and depth on the same batch and loss; there `none` is that model without
checkpointing, and the `hf_*` variants turn on the library's switch, so their ratios compare like with like.
"""

from __future__ import annotations

import torch

from bench.flops import flop_counter_mode
from bench.memory import TensorMemoryTracker, cuda_peak
from bench.metrics import Metric, timing
from bench.suite import (
    Measurement,
    Relative,
    Suite,
    Workload,
    build_module,
    register,
    requires,
    run_dtype,
)
from bench.timing import time_fn
from bench.work import Work, rates
from impls.checkpointing import VARIANTS, Transformer, TransformerConfig, hf
from impls.checkpointing.reference import loss_fn, make_batch
from impls.libraries import ECOSYSTEM

# Named model shapes; the grids below pick from them per size.
SHAPES = {
    "tiny": {"d_model": 64, "heads": 4},
    "small": {"d_model": 256, "heads": 4},
    "1b": {"d_model": 2048, "heads": 16},  # 24 layers of this: 1.2B parameters
}
GRIDS = {
    # smoke: seconds on a 2-core CPU; 8 layers so that sqrt(8) ~ 3 segments differ from full and none.
    "smoke": [("tiny", {"layers": 8, "seq": 64, "batch": 2})],
    "quick": [("small", {"layers": 8, "seq": 256, "batch": 4})],
    # full: ~17 bf16 [B, S, D] per layer kept without checkpointing: 51 GiB at batch 8, 102 GiB at batch 16, which
    # with 4.8 GB of weights and grads fills an H200 (139 GiB usable).
    "full": [("1b", {"layers": 24, "seq": 4096, "batch": 8}), ("1b", {"layers": 24, "seq": 4096, "batch": 16})],
}
HF = "hf_llama"  # the `model` param of the library's grid points (absent on the suite's own)

# What a training step of `training_step` emits, here and in the fsdp_checkpointing suite (there per rank).
STEP_METRICS = (
    *timing("step_time", "one training step (forward, loss, backward)"),
    Metric("peak_mem_bytes", "exact", "lower", "peak bytes a step allocates beyond the parameters and the batch"),
    Metric("activation_bytes", "exact", "lower", "bytes the forward leaves held for backward"),
    *rates("step_time", tokens=True, what="a step trains, all ranks"),
)


@register
class Checkpointing(Suite):
    name = "checkpointing"
    description = "memory for recompute: saved activations vs step time and FLOPs"
    variants = {
        "none": "reference: every activation saved",
        "full": "every block checkpointed (torch.utils.checkpoint, non-reentrant)",
        "sqrt": "round(sqrt(layers)) segments, each checkpointed (Chen et al. 2016)",
        "selective": "selective checkpointing: save matmul and attention outputs, recompute pointwise work",
        "offload": "saved activations moved to host memory (save_on_cpu, pinned on CUDA)",
        "hf_full": "transformers: activation_checkpointing_enable(), every decoder layer, non-reentrant",
        "hf_selective": "transformers: the same switch with torch's selective policy as context_fn",
    }
    libraries = {v: hf.label() for v in ("hf_full", "hf_selective")}
    param_defaults = {"model": "techbench"}  # grid points without `model` train our Transformer, not HF's Llama
    requires = {v: ("transformers", ECOSYSTEM) for v in libraries}
    relative = (
        Relative("mem_saving_x", "peak_mem_bytes", invert=True),
        Relative("activation_saving_x", "activation_bytes", invert=True),
        Relative("time_overhead_x", "step_time_ms"),
        Relative("recompute_flops_x", "step_flops"),
    )
    metrics = (
        *STEP_METRICS,
        Metric("step_flops", "exact", "lower", "FLOPs of one training step, recompute included (FLOP counter)"),
        *rates("step_time", flops=True, what="step_flops"),
    )

    def grid(self, size, device):
        dtype = run_dtype(device)
        ours = [{**SHAPES[shape], **dims, "dtype": dtype} for shape, dims in GRIDS[size]]
        return ours + [{**p, "model": HF} for p in ours]

    def applies(self, variant, params):
        return variant == "none" or variant.startswith("hf_") == (params.get("model") == HF)

    def workload(self, variant, params, device, target=None):
        model, _, _, _, step = build_training_step(variant, params, device)
        # our model has no lazy state and the step sets the gradients to None first; transformers' may have some
        return Workload(step, modules=(model,), clear=lambda: model.zero_grad(set_to_none=True),
                        stateless=params.get("model") != HF)

    def measure(self, variant, params, device):
        model, forward, x, target, step = training_step(variant, params, device)
        peak, activation = step_memory(model, forward, x, target, device)
        with flop_counter_mode() as flops:
            step()
        # the three steps above warmed up already; 3 reps at least, as rmpad's and fsdp_checkpointing's training steps
        timing = time_fn(step, device, warmup=0, min_reps=3)
        work = Work("step_time", tokens=params["batch"] * params["seq"], flops=flops.get_total_flops(),
                    dtype=params["dtype"])
        metrics = {"peak_mem_bytes": peak, "activation_bytes": activation, "step_flops": flops.get_total_flops()}
        return Measurement(metrics, timed=timing, timings={"step_time": timing}, work=[work])


def training_step(variant: str, params: dict, device: str, seed: int = 0, wrap=None):
    """A case's model (passed through `wrap`, e.g. to shard it), its batch (drawn with `seed`) and its training step,
    run once as the warm-up, so that lazy initialisation stays out of the memory figures: (model, forward, x, target,
    step)."""
    built = build_training_step(variant, params, device, seed, wrap)
    built[-1]()
    return built


def build_training_step(variant: str, params: dict, device: str, seed: int = 0, wrap=None):
    """training_step's (model, forward, x, target, step), the step not yet run; on the meta device the batch is
    shapes only (offload's host copies: bench.plan_offload)."""
    dtype = getattr(torch, params["dtype"])
    cfg = TransformerConfig(d_model=params["d_model"], n_heads=params["heads"], n_layers=params["layers"])
    if params.get("model") == HF:
        requires("transformers", pip=ECOSYSTEM)
        model = build_module(lambda: hf.build(cfg, params["seq"], variant.removeprefix("hf_")), device, dtype)
        forward = hf.forward
    else:
        model, forward = build_module(lambda: Transformer(cfg), device, dtype), VARIANTS[variant]
    model = wrap(model) if wrap is not None else model
    if device == "meta":  # no numbers to draw: [B, S, D] twice
        x, target = (torch.empty(params["batch"], params["seq"], cfg.d_model, device=device, dtype=dtype)
                     for _ in range(2))
    else:
        x, target = make_batch(cfg, params["batch"], params["seq"], device, dtype, seed=seed)

    def step():
        model.zero_grad(set_to_none=True)
        loss_fn(forward(model, x), target).backward()

    return model, forward, x, target, step


def step_memory(model, forward, x, target, device) -> tuple[int, int]:
    """(peak bytes over one training step, bytes the forward leaves held for backward), on the compute device.

    On CUDA: the caching allocator's counters. Elsewhere: the live-tensor tracker, exact to the byte. Both count
    what the step allocates beyond the parameters and the batch, gradients included.
    """
    model.zero_grad(set_to_none=True)
    if device.startswith("cuda"):
        with cuda_peak(device) as mem:
            before = torch.cuda.memory_allocated(device)
            loss = loss_fn(forward(model, x), target)
            activation = torch.cuda.memory_allocated(device) - before
            loss.backward()
        return mem.peak_bytes, activation
    with TensorMemoryTracker() as tracker:
        loss = loss_fn(forward(model, x), target)
        activation = tracker.live_bytes(device)
        loss.backward()
        del loss
    return tracker.peak_bytes(device), activation
