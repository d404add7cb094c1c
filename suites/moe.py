"""DeepSeek-V3 MoE: how well each router balances expert load, and what dispatching the experts costs.

Two parts, one `part` param each. balance trains a small DeepSeekMoE language model on a skewed, topic-dependent
synthetic stream under each router (the aux_loss router is this part's reference; sigmoid_aux_loss keeps its loss but
takes aux_free's sigmoid gate, so its gap to aux_free is the bias's alone) and measures MaxVio (Wang et al.
2024: (max load - mean load) / mean load, averaged over layers): max_vio_batch per training step (its mean over the
last quarter of training, when the bias has moved; a batch of a few sequences draws few topics, a skew no bias can
follow, so it keeps a floor), max_vio_train over all training tokens at once (the bias steers toward exactly this
count, step by step), and max_vio_global over a held-out pass with the final, frozen routing (the paper's
MaxVio_global); beside them the final training loss (mean of the last quarter) and the held-out perplexity. Results
are cached per config (impls.cache), so a second run does not retrain; the smoke and quick CPU runs ship with the
package (impls/weights), and their records say so (shipped_run). Every router trains with the same dispatch
(auto grouped GEMM, equal to the loop: tests/impls/test_moe.py).

dispatch times one forward + backward of the routed experts of one layer (router outside, random top-k routing) per
dispatch: the per-expert loop (reference), torch._grouped_mm, a Triton grouped GEMM, and sorted segments run as plain
matmuls; tokens_per_s, TFLOP/s of the expert GEMMs, and peak bytes. `fused_grouped_gemm` says which path ran: true
when the expert GEMMs ran as one kernel each (Triton; torch._grouped_mm on CUDA sm90+ in bf16), false when torch
looped over experts inside (torch._grouped_mm on CPU or in fp32). No token is dropped in either part.

What a user of Hugging Face transformers runs, on the same routed tokens, expert weights (copied into the library's
[out, in] layout), shapes, dtype and timing: the `hf_*` dispatch variants are transformers' DeepseekV3Experts under
one of its experts implementations (impls/moe/hf.py): eager (its per-expert loop), grouped_mm (the library's
default: sorted slots, torch's grouped_mm, or a per-expert loop of its own where it judges torch's unusable, which
`grouped_mm_fallback` records; never counted as fused) and batched_mm (every slot's expert weights gathered, one bmm
per projection).
"""

from __future__ import annotations

import importlib.util
import math

import torch

from bench.memory import peak_bytes
from bench.metrics import Metric, timing
from bench.plan_meta import INDEX_LIMIT
from bench.suite import (
    Measurement,
    NotPlannable,
    Part,
    Relative,
    Skip,
    Suite,
    Workload,
    register,
    requires,
    run_dtype,
)
from bench.timing import time_fn
from bench.work import Work, rates
from impls.libraries import ECOSYSTEM, label
from impls.moe import hf
from impls.moe.grouped import dispatcher, grouped_mm_fused, grouped_mm_unsupported
from impls.moe.lm import LMConfig, load_or_train, tuned
from impls.moe.reference import RoutedExperts, loop_dispatch, max_vio
from impls.moe.router import ROUTERS

DISPATCH = {"loop": None, "grouped_mm": "grouped_mm", "grouped_torch": "torch", "grouped_triton": "triton"}
# dispatch variants that run transformers' experts module -> its experts_implementation (impls/moe/hf.py)
HF_EXPERTS = {"hf_eager": "eager", "hf_grouped_mm": "grouped_mm", "hf_batched_mm": "batched_mm"}
# balance: the model and run per size. gamma: DeepSeek-V3's 0.001 moves a bias by at most 0.12 in the 120 steps of
# quick, too little at this size (MaxVio over the training tokens 0.20 with 0.001, 0.04 with 0.01, 0.47 with the aux
# loss), so the short grids take 0.01 and say so in their params; full runs 2000 steps at 0.001.
BALANCE = {
    "smoke": {"steps": 30, "gamma": 0.01, "dim": 32, "experts": 8, "top_k": 4, "layers": 1, "seq": 32, "batch": 4},
    "quick": {"steps": 120, "gamma": 0.01, "dim": 64, "experts": 16, "top_k": 4, "layers": 2, "seq": 64, "batch": 8},
    "full": {"steps": 2000, "gamma": 0.001, "dim": 128, "experts": 64, "top_k": 8, "layers": 4, "seq": 256,
             "batch": 16},
}
AUX_ALPHA = 1e-3  # Wang et al.'s auxiliary-loss baseline
EVAL_SEQS = {"smoke": 32, "quick": 256, "full": 1024}
# dispatch: (tokens, experts, top_k, dim, expert hidden). full spans 8..256 experts at DeepSeek-V3's top-8, top-k at
# 64 experts, and DeepSeek-V3's own layer (7168 wide, 256 experts of 2048: w1 + w2 = 22.5 GB in bf16).
SHAPES = {
    "smoke": [(256, 8, 2, 32, 32), (256, 16, 2, 32, 32)],
    # quick: 2 points: the live-tensor tracker behind peak_mem_bytes spends ~2 s on the loop's ~3,000 ops at 64 experts
    "quick": [(512, 8, 4, 64, 64), (512, 64, 4, 64, 64)],
    "full": [*((8192, e, 8, 2048, 1024) for e in (8, 16, 32, 64, 128, 256)),
             *((8192, 64, k, 2048, 1024) for k in (2, 4)), (8192, 64, 8, 4096, 1024), (8192, 256, 8, 7168, 2048)],
}


@register
class Moe(Suite):
    name = "moe"
    description = ("balance and dispatch: aux-loss vs aux-loss-free MoE routing (MaxVio), loop vs grouped-GEMM experts "
                   "(ours and transformers')")
    variants = {
        "loop": "reference of dispatch: one gather, two GEMMs and one scatter per expert",
        "grouped_mm": "tokens sorted by expert, each projection one torch._grouped_mm",
        "grouped_torch": "tokens sorted by expert, each projection a loop of matmuls over the segments (any device)",
        "grouped_triton": "tokens sorted by expert, each projection one Triton grouped GEMM (forward and backward)",
        "hf_eager": "transformers' DeepseekV3Experts, experts_implementation='eager': its own per-expert loop (one_hot "
                    "masks, F.linear, index_add_); our weights in its [out, in] layout",
        "hf_grouped_mm": "transformers' default experts_implementation='grouped_mm': slots sorted by expert, each "
                         "projection one torch grouped_mm, or transformers' per-expert fallback (grouped_mm_fallback)",
        "hf_batched_mm": "transformers' experts_implementation='batched_mm': each slot's expert weights gathered "
                         "([T*K, 2H, D]), one bmm per projection",
        "aux_loss": "reference of balance: softmax top-k, expert-level auxiliary loss (alpha 0.001)",
        "sigmoid_aux_loss": "sigmoid, normalized top-k weights, the aux loss (alpha 0.001), no bias: the gate alone",
        "aux_free": "DeepSeek-V3: sigmoid, normalized top-k weights, balancing bias moved +/- gamma a step",
        "aux_free_seqaux": "aux_free plus DeepSeek-V3's sequence-wise balance loss (alpha 0.0001)",
        "node_limited": "aux_free with the experts on 4 nodes and each token sent to at most 2",
    }
    # CPU: a few hundred tokens of width 32-64 per GEMM: on 2 cores an intra-op thread pool costs more in wake-ups than
    # it gives, and the loop's per-expert overhead, the thing measured, is single-threaded anyway.
    cpu_threads = 1
    libraries = {v: label("transformers") for v in HF_EXPERTS}
    requires = {v: ("transformers", ECOSYSTEM) for v in HF_EXPERTS}
    parts = {
        "balance": Part(("aux_loss", "sigmoid_aux_loss", "aux_free", "aux_free_seqaux", "node_limited"),
                        description="routers trained on a small MoE LM: MaxVio and loss, against the aux-loss router"),
        "dispatch": Part(("loop", "grouped_mm", "grouped_torch", "grouped_triton", *HF_EXPERTS),
                         (Relative("speedup_x", "step_time_ms", invert=True),
                          Relative("mem_saving_x", "peak_mem_bytes", invert=True)),
                         description="one MoE layer's experts, forward and backward, against the per-expert loop"),
    }
    metrics = (
        # balance: a seeded training run (cached), so exact
        Metric("max_vio_batch", "exact", "lower", "MaxVio per training step, mean over the last quarter of training"),
        Metric("max_vio_train", "exact", "lower", "MaxVio of the expert loads over all training tokens at once"),
        Metric("max_vio_global", "exact", "lower", "MaxVio of a held-out pass with the final, frozen routing"),
        Metric("final_loss", "exact", "lower", "training loss (nats/token), mean over the last quarter of training"),
        Metric("eval_loss", "exact", "lower", "held-out loss (nats/token)"),
        Metric("perplexity", "exact", "lower", "held-out perplexity: exp(eval_loss)"),
        Metric("shipped_run", "info", None, "the training run these figures come from is the one shipped with the "
               "package (impls/weights: the same seeded run, made elsewhere), not one made on this machine"),
        # dispatch
        *timing("step_time", "one forward + backward of the routed experts of one layer"),
        *rates("step_time", tokens=True, flops=True, what="through the routed experts' GEMMs, forward + backward"),
        Metric("peak_mem_bytes", "exact", "lower", "peak bytes allocated by one step"),
        Metric("fused_grouped_gemm", "info", None, "the expert GEMMs ran as one grouped kernel each (else a loop over "
               "the experts inside; none for hf_batched_mm, whose bmm over gathered weights is no grouped GEMM)"),
        Metric("grouped_mm_fallback", "info", None, "hf_grouped_mm: transformers ran its own per-expert loop "
               "(_grouped_mm_fallback) for a projection, judging torch's grouped_mm unusable here"),
    )

    def grid(self, size, device):
        dtype = run_dtype(device)
        balance = {"part": "balance", **BALANCE[size], "aux_alpha": AUX_ALPHA, "eval_seqs": EVAL_SEQS[size],
                   "dtype": "float32"}
        return [balance] + [{"part": "dispatch", "tokens": t, "experts": e, "top_k": k, "dim": d, "hidden": h,
                             "dtype": dtype} for t, e, k, d, h in SHAPES[size]]

    def workload(self, variant, params, device, target=None):
        if params["part"] == "balance":
            raise NotPlannable("balance is a whole training run (cached), not one step; its routing depends on the "
                               "trained weights")
        return dispatch_workload(variant, params, device, target)

    def measure(self, variant, params, device):
        return (_dispatch if params["part"] == "dispatch" else _balance)(variant, params, device)


def _balance(variant, params, device):
    cfg = LMConfig(dim=params["dim"], layers=params["layers"], n_routed=params["experts"], top_k=params["top_k"],
                   seq=params["seq"], batch=params["batch"])
    router = tuned(ROUTERS[variant], params["aux_alpha"], params["gamma"])
    out, source = load_or_train(cfg, router, params["steps"], params["eval_seqs"], dispatcher("auto"), device)
    loads, losses = out["loads"], out["losses"]  # [steps, layers, E], [steps]
    per_step = [sum(max_vio(layer) for layer in step) / len(step) for step in loads]
    tail = max(1, len(losses) // 4)
    eval_load = out["eval_load"]  # [layers, E]
    metrics = {
        "max_vio_batch": sum(per_step[-tail:]) / tail,
        "max_vio_train": sum(max_vio(layer) for layer in loads.sum(0)) / len(eval_load),
        "max_vio_global": sum(max_vio(layer) for layer in eval_load) / len(eval_load),
        "final_loss": sum(losses[-tail:]) / tail,
        "eval_loss": out["eval_loss"],
        "perplexity": math.exp(out["eval_loss"]),
        "shipped_run": source == "shipped",
    }
    fraction = eval_load.double() / eval_load.sum(-1, keepdim=True)  # share of each layer's routed slots
    samples = {"max_vio_curve": per_step, "loss_curve": list(losses), "load_curve": fraction.flatten().tolist()}
    return Measurement(metrics, samples)


def dispatch_workload(variant, params, device, target=None) -> Workload:
    """One forward + backward of the routed experts under the variant's dispatch: random top-k routing drawn on the
    CPU (on meta its indices keep their values, so tokens per expert are the device's)."""
    return _dispatch_case(variant, params, device, target)[0]


def _dispatch_case(variant, params, device, target=None):
    """(dispatch_workload's Workload, the forward its step runs)."""
    dtype = getattr(torch, params["dtype"])
    T, E, K, D, H = (params[k] for k in ("tokens", "experts", "top_k", "dim", "hidden"))
    target = target or device
    library, backend = HF_EXPERTS.get(variant), DISPATCH.get(variant)
    if library:
        requires("transformers", pip=ECOSYSTEM)
    if library == "grouped_mm" and device == "meta" and (why := _int_histc_unsupported()):
        raise NotPlannable(f"transformers' grouped_mm counts each expert's tokens with torch.histc of int32 ids off "
                           f"the CPU, which the plan must compute on the CPU beside the meta tensors: {why}")
    if library == "eager" and device == "meta" and T * K * (E + 1) > INDEX_LIMIT:
        raise NotPlannable(f"transformers' eager experts find each expert's tokens in a one_hot routing mask [T, K, "
                           f"E + 1] of {T * K * (E + 1):,} elements, past the {INDEX_LIMIT:,} whose values the plan "
                           f"keeps beside the meta tensors")
    if backend == "triton" and not target.startswith("cuda"):
        raise Skip("the Triton grouped GEMM needs a CUDA device (its forward and backward are tested against the loop "
                   "under TRITON_INTERPRET=1)")
    if backend == "triton" and device == "meta" and importlib.util.find_spec("triton") is None:
        # planned without launching (impls/moe/grouped_triton.py), but its module needs triton to import
        raise NotPlannable("the Triton grouped GEMM's module needs triton to import (pip install triton)")
    if backend == "triton":
        requires("triton")  # a CUDA torch without triton: skipped, not an error
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    experts = RoutedExperts(E, D, H, device=device, dtype=dtype)
    x = _draw((T, D), g, device, dtype).requires_grad_()
    # the routing from a generator of its own: a plan draws it alike without drawing the activations
    routing = torch.Generator().manual_seed(1)
    weights, indices = torch.randn(T, E, generator=routing).softmax(-1).topk(K, dim=-1)  # [T, K]: balanced on average
    weights, indices = weights.to(device, dtype).requires_grad_(), indices.to(device)
    grad = _draw((T, D), g, device, dtype)
    if backend == "grouped_mm":
        hidden = x.new_empty(T * K, H)  # the second GEMM's operand: K = H, not D
        reason = grouped_mm_unsupported(x, experts.w1) or grouped_mm_unsupported(hidden, experts.w2)
        if reason:
            raise Skip(reason)
    if library:
        module = hf.experts(experts, library)  # copies of our weights in its layout; ours are dropped here
        del experts

        def forward():
            return module(x, indices, weights)
    else:
        module, dispatch = experts, loop_dispatch if backend is None else dispatcher(backend)

        def forward():
            return dispatch(x, indices, weights, module)

    def clear():
        x.grad = weights.grad = None
        for p in module.parameters():
            p.grad = None

    def step():
        clear()
        forward().backward(grad)

    # the Triton kernels' GEMMs are launched from Python, where the plan's counter cannot see them
    return Workload(step, modules=(module,), clear=clear, stateless=True,  # the step clears every gradient first
                    uncounted_flops=dispatch_flops(params) if backend == "triton" else 0,
                    uncounted_bytes=dispatch_gemm_bytes(params) if backend == "triton" else 0), forward


def dispatch_flops(params) -> int:
    """The routed experts' GEMM FLOPs of one step: forward + 2x backward of w1 [D, 2H] and w2 [H, D] per routed
    slot."""
    T, K, D, H = (params[k] for k in ("tokens", "top_k", "dim", "hidden"))
    return 3 * 2 * T * K * 3 * D * H


def dispatch_gemm_bytes(params) -> int:
    """What the routed experts' six GEMMs of one step read and write, each operand and output once: the forward's
    two (x [TK, D] @ w1 [E, D, 2H], then [TK, H] @ w2 [E, H, D]), and each projection's data and weight gradients."""
    T, E, K, D, H = (params[k] for k in ("tokens", "experts", "top_k", "dim", "hidden"))
    rows, w1, w2 = T * K, E * D * 2 * H, E * H * D
    forward = (rows * D + w1 + rows * 2 * H) + (rows * H + w2 + rows * D)
    data_grads = (rows * D + w2 + rows * H) + (rows * 2 * H + w1 + rows * D)
    weight_grads = (rows * H + rows * D + w2) + (rows * D + rows * 2 * H + w1)
    return getattr(torch, params["dtype"]).itemsize * (forward + data_grads + weight_grads)


def _int_histc_unsupported() -> str | None:
    """Why torch's CPU histc refuses int32 input (torch 2.13: "histogram_cpu" not implemented for 'Int'), or None."""
    try:
        torch.histc(torch.zeros(2, dtype=torch.int32), bins=2, min=0, max=1)
    except (RuntimeError, NotImplementedError) as e:
        return str(e).strip().splitlines()[0]
    return None


def _draw(shape, g, device, dtype):
    """randn drawn on the CPU with `g` and moved; on meta, shapes only."""
    if device == "meta":
        return torch.empty(shape, device=device, dtype=dtype)
    return torch.randn(*shape, generator=g).to(device, dtype)


def _dispatch(variant, params, device):
    T = params["tokens"]
    w, forward = _dispatch_case(variant, params, device)
    step, backend = w.step, DISPATCH.get(variant)
    step()  # warm-up: lazy initialisation and Triton compilation stay out of the figures
    dtype = getattr(torch, params["dtype"])
    fused = {"grouped_mm": grouped_mm_fused(device, dtype), "triton": True}.get(backend, False)
    metrics = {"fused_grouped_gemm": fused}
    if variant == "hf_grouped_mm":  # which GEMMs the library ran, read off one untimed forward
        with torch.no_grad():
            paths, _ = hf.grouped_gemms(forward)
        # gate_up and down, each torch's kernel or transformers' fallback; only torch's can be fused
        metrics["grouped_mm_fallback"] = paths["torch"] < 2
        metrics["fused_grouped_gemm"] = paths["torch"] == 2 and grouped_mm_fused(device, dtype)
    elif variant == "hf_batched_mm":
        metrics["fused_grouped_gemm"] = None  # one bmm over gathered weights: no grouped GEMM, fused or looped
    peak = peak_bytes(step, device, w.clear)
    timing = time_fn(step, device)
    flops = dispatch_flops(params)
    return Measurement({"peak_mem_bytes": peak, **metrics}, timed=timing,
                       timings={"step_time": timing}, work=[Work("step_time", tokens=T, flops=flops,
                                                                 dtype=params["dtype"])])
