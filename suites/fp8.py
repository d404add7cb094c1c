"""FP8: what each scaling recipe buys in GEMM speed and costs in accuracy, against bf16 (fp32 on CPU).

Four parts, one `part` param each: gemm (time, TFLOP/s, % of peak, error against an fp64 product), quantize (the
activation quantizer's GB/s), accuracy (SQNR on normal inputs and on inputs with 100x outlier channels), and
training (the loss gap to the high-precision run on the same data). The blockwise recipe's GEMM is a Triton kernel:
its speed needs a CUDA device, while its accuracy and training use the dequantize-then-matmul reference, which gives
the same numbers up to fp32 summation order, so they exist on every device. The same holds for tensorwise and rowwise
accuracy where this torch's _scaled_mm cannot take the recipe's scales on the device (torch 2.11's CPU kernel is
per-tensor only): their gemm case is skipped with torch's reason, and their accuracy is that of the emulated GEMM.
So too on a CPU whose _scaled_mm is oneDNN's reference kernel (impls.fp8.gemm.reference_kernel: no FP8 instructions,
~250x an fp32 matmul): the gemm cases and torchao's training are skipped with that reason, since they would time a
scalar loop for minutes, and the accuracy is the emulated GEMM's.
The training part also runs torchao's float8 training (the library users pick, declared in `libraries`) against the
same reference; torchao has no public blockwise recipe nor bare scaled GEMM to add to the other parts.
"""

from __future__ import annotations

import time

import torch

from bench import hardware
from bench.memory import peak_bytes
from bench.metrics import Metric, timing
from bench.suite import Measurement, NotPlannable, Part, Relative, Skip, Suite, Workload, register, requires
from bench.timing import Timing, time_fn
from bench.work import Work, rates
from impls.cache import load_or_build, store
from impls.fp8 import torchao_training
from impls.fp8.gemm import (
    blockwise_reference,
    dequantized_matmul,
    fp8_matmul,
    gemm_flops,
    matmul_fp64,
    matmul_reference,
    max_rel_err,
    reference_dtype,
    reference_kernel,
    scaled_mm,
)
from impls.fp8.reference import QUANTIZERS, RECIPES, outlier_activations, sqnr_db
from impls.fp8.train import BATCH, LR, batches, loss_gap, train, training_step
from impls.libraries import ECOSYSTEM

# The library users pick, as variants of the training part: variant -> torchao's float8 recipe name
TORCHAO = {"torchao_tensorwise": "tensorwise", "torchao_rowwise": "rowwise"}
REFERENCE_VERSION = 1  # bump when impls.fp8.train changes what a high-precision run computes: cached curves then miss

# Named GEMM shapes (M, N, K): powers of two, and LLM projections (a 4096-token batch through Llama-style MLP and
# DeepSeek-V3's 7168-wide hidden size).
SHAPES = {
    "pow2_256": (256, 256, 256), "pow2_512": (512, 512, 512), "pow2_1024": (1024, 1024, 1024),
    "pow2_4096": (4096, 4096, 4096), "pow2_8192": (8192, 8192, 8192), "pow2_16384": (16384, 16384, 16384),
    "llama_mlp": (4096, 4096, 14336), "dsv3_7168": (4096, 7168, 7168),
}
GRIDS = {
    "smoke": {"gemm": ("pow2_256",), "accuracy": (128, 256, 384), "quantize": (256, 1024), "steps": 10},
    "quick": {"gemm": ("pow2_512", "pow2_1024"), "accuracy": (512, 1024, 1024), "quantize": (2048, 4096),
              "steps": 50},
    "full": {"gemm": ("pow2_1024", "pow2_4096", "pow2_8192", "pow2_16384", "llama_mlp", "dsv3_7168"),
             "accuracy": (4096, 4096, 4096), "quantize": (16384, 7168), "steps": 200},
}


@register
class Fp8(Suite):
    name = "fp8"
    description = "precision for speed: FP8 GEMMs per scaling recipe against bf16, and what they cost in accuracy"
    variants = {
        "bf16": "reference: bf16 matmul (fp32 on CPU)",
        "tensorwise": "FP8 E4M3, one scale per tensor (torch._scaled_mm)",
        "rowwise": "FP8 E4M3, one power-of-two scale per row (torch._scaled_mm)",
        "deepseek_v3": "FP8 E4M3, 1x128 activation tiles and 128x128 weight blocks (DeepSeek-V3 §3.3)",
        "torchao_tensorwise": "torchao.float8.convert_to_float8_training, Float8LinearConfig.from_recipe_name("
                              "'tensorwise'): per-tensor scales, dY in E5M2 (torch._scaled_mm)",
        "torchao_rowwise": "torchao.float8.convert_to_float8_training, Float8LinearConfig.from_recipe_name("
                           "'rowwise'): power-of-two axiswise scales, E4M3 (torch._scaled_mm)",
    }
    libraries = {variant: torchao_training.label() for variant in TORCHAO}
    requires = {variant: ("torchao", ECOSYSTEM) for variant in TORCHAO}
    parts = {
        "gemm": Part(("bf16", "tensorwise", "rowwise", "deepseek_v3"),
                     (Relative("speedup_x", "gemm_time_ms", invert=True),),
                     description="GEMM time, TFLOP/s and % of peak per recipe, against the high-precision matmul"),
        "accuracy": Part(("bf16", "tensorwise", "rowwise", "deepseek_v3"),
                         description="SQNR against an fp64 product, on normal inputs and on 100x outlier channels"),
        "quantize": Part(("tensorwise", "rowwise", "deepseek_v3"),
                         description="each recipe's quantizer, torch and Triton, GB/s against the memory bandwidth"),
        "training": Part(("bf16", "tensorwise", "rowwise", "deepseek_v3", *TORCHAO),
                         description="the loss gap of FP8 training to the high-precision run on the same data, "
                                     "our recipes and torchao's"),
    }
    metrics = (
        # gemm
        *timing("gemm_time", "one GEMM"),
        *rates("gemm_time", "gemm_", flops=True, bytes=True, what="2MNK; operands and scales read, output written"),
        # accuracy (and gemm): the output against an fp64 product of the same operands
        Metric("sqnr_db", "exact", "higher", "signal-to-quantization-noise ratio of the output against fp64"),
        Metric("max_rel_err", "exact", "lower", "largest |error| of the output against fp64, over max |fp64 output|"),
        # quantize
        *timing("quantize_time", "one quantization of the operand"),
        *rates("quantize_time", "quantize_", bytes=True, what="the operand read, the FP8 values and scales written"),
        # training: measured, not exact. Seeded, and the same every run on a CPU; but each case trains afresh, and on a
        # GPU the embedding's backward (and atomics in other kernels) adds in a varying order, so the losses move a
        # little run to run: held exactly, one GPU night against the committed baseline would fail about every other
        # time
        Metric("final_loss", "measured", "lower", "cross-entropy at the last step of the seeded run", unit="nats"),
        Metric("loss_gap_final", "measured", "lower", "|loss - reference loss| / reference loss at the last step"),
        Metric("loss_gap_mean", "measured", "lower", "|loss - reference loss| / reference loss, mean over steps"),
        # timed for bf16 and torchao's recipes only: ours emulate every FP8 GEMM (impls.fp8.linear: quantize,
        # dequantize, an fp32 matmul), so their wall time is the emulation's, not FP8's, and beside torchao's real
        # kernels it would read as a speed comparison that it is not
        *timing("train_time", "the whole training run (one wall-clock sample); bf16 and torchao's recipes only (ours "
                              "are emulated)"),
        *rates("train_time", "train_", tokens=True, what="of the whole run"),
        # the step's memory, of bf16 and torchao's recipes alone for the same reason: our emulation holds fp32 copies
        Metric("peak_mem_bytes", "exact", "lower", "peak bytes of one training step beyond what was live before it "
                                                   "(the CUDA allocator's; the live-tensor tracker's on CPU); bf16 "
                                                   "and torchao's recipes only"),
    )

    def grid(self, size, device):
        g = GRIDS[size]
        m, n, k = g["accuracy"]
        return ([{"part": "gemm", "shape": s, "m": SHAPES[s][0], "n": SHAPES[s][1], "k": SHAPES[s][2]}
                 for s in g["gemm"]]
                + [{"part": "accuracy", "input": i, "m": m, "n": n, "k": k} for i in ("normal", "outliers")]
                + [{"part": "quantize", "impl": impl, "operand": operand, "m": g["quantize"][0], "k": g["quantize"][1]}
                   for impl in ("torch", "triton") for operand in ("activation", "weight")]
                + [{"part": "training", "steps": g["steps"]}])

    def workload(self, variant, params, device, target=None):
        if params["part"] != "training":
            raise NotPlannable(f"the {params['part']} part times single kernels on operands it quantizes first; it "
                               "has no training step (its bytes are the operands')")
        return _training_workload(variant, device, target or device)

    def measure(self, variant, params, device):
        return {"gemm": _gemm, "accuracy": _accuracy, "quantize": _quantize, "training": _training}[params["part"]](
            variant, params, device)


def _operands(params, device, outliers=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    if outliers:
        a = outlier_activations(params["m"], params["k"], seed=seed)
    else:
        a = torch.randn(params["m"], params["k"], generator=g)
    b = torch.randn(params["n"], params["k"], generator=g)
    dtype = reference_dtype(device)
    return a.to(device, dtype), b.to(device, dtype)


def _errors(a, b, out) -> dict:
    truth = matmul_fp64(a, b)
    return {"sqnr_db": sqnr_db(truth, out.double()), "max_rel_err": max_rel_err(truth, out)}


def _gemm(variant, params, device):
    a, b = _operands(params, device)
    if variant == "bf16":
        fn, peak_dtype = (lambda: matmul_reference(a, b)), str(a.dtype).removeprefix("torch.")
        operands = (a, b)
    else:
        recipe = RECIPES[variant]
        qa, sa = recipe.quantize_activation(a)
        qb, sb = recipe.quantize_weight(b)
        peak_dtype = "float8_e4m3fn"
        operands = (qa, sa, qb, sb)
        if variant == "deepseek_v3":
            if not device.startswith("cuda"):
                raise Skip("the blockwise FP8 GEMM is a Triton kernel: its speed needs a CUDA device (its numbers are "
                           "tested under TRITON_INTERPRET=1; the accuracy part covers this recipe everywhere)")
            requires("triton")  # a CUDA torch without triton: skipped, not an error
            from impls.fp8.gemm_triton import blockwise_fp8_matmul

            def fn():
                return blockwise_fp8_matmul(qa, sa, qb, sb, torch.bfloat16)
        else:
            why = reference_kernel(device)
            if why:
                raise Skip(why)

            def fn():
                return scaled_mm(qa, sa, qb, sb, a.dtype)
        try:
            fn()
        except NotImplementedError as e:
            raise Skip(str(e).splitlines()[0]) from None
    out = fn()
    timing = time_fn(fn, device)
    work = Work("gemm_time", "gemm_", flops=gemm_flops(params["m"], params["n"], params["k"]),
                bytes=sum(_nbytes(t) for t in (*operands, out)), dtype=peak_dtype)
    return Measurement(_errors(a, b, out), timed=timing, timings={"gemm_time": timing}, work=[work])


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _accuracy(variant, params, device):
    a, b = _operands(params, device, outliers=params["input"] == "outliers")
    if variant == "bf16":
        out = matmul_reference(a, b)
    elif variant == "deepseek_v3":
        out = blockwise_reference(a.float(), b.float())
    else:
        recipe = RECIPES[variant]
        try:
            slow = reference_kernel(device)
            if slow:  # minutes at quick size, for the same numbers as below
                raise NotImplementedError(slow)
            out = fp8_matmul(a, b, recipe, out_dtype=torch.float32)
        except NotImplementedError:  # exact products summed in fp32, as _scaled_mm does: the same SQNR to ~1e-6 dB
            out = dequantized_matmul(*recipe.quantize_activation(a), *recipe.quantize_weight(b), recipe)
    return Measurement(_errors(a, b, out))


def _quantize(variant, params, device):
    """The recipe's quantizer for one operand, in plain torch or as a Triton kernel: GB/s from bytes read + written."""
    recipe = RECIPES[variant]
    granularity = recipe.activation if params["operand"] == "activation" else recipe.weight
    if params["impl"] == "triton":
        if not device.startswith("cuda"):
            raise Skip("the Triton quantizers need a CUDA device (they are tested bit for bit against the torch "
                       "reference under TRITON_INTERPRET=1)")
        requires("triton")
        from impls.fp8.quant_triton import QUANTIZERS as TRITON

        quantize = TRITON[granularity]
    else:
        quantize = QUANTIZERS[granularity][0]
    x = torch.randn(params["m"], params["k"], device=device, dtype=reference_dtype(device))
    q, s = quantize(x, recipe.dtype, recipe.pow2)
    timing = time_fn(lambda: quantize(x, recipe.dtype, recipe.pow2), device)
    work = Work("quantize_time", "quantize_", bytes=_nbytes(x) + _nbytes(q) + _nbytes(s))
    return Measurement(timed=timing, timings={"quantize_time": timing}, work=[work])


def _training_recipe(variant, device, dtype, planned=False):
    """(our recipe or None, torchao's converter or None) of a training variant; Skip where torchao cannot run.
    `planned`: for a plan's step on meta, where `device` is the target."""
    recipe, convert = RECIPES.get(variant), None  # None for bf16 and for torchao's variants
    if variant in TORCHAO:
        requires("torchao", pip=ECOSYSTEM)
        gpu = hardware.planned_gpu()
        if planned and torch.device(device).type == "cuda" and not hardware.here(gpu):
            why, slow = _scaled_mm_unsupported(gpu), None  # a GPU that is not here: its compute capability says
        else:
            why, slow = torchao_training.unsupported(TORCHAO[variant], device, dtype), reference_kernel(device)
        if why or slow:
            raise Skip(why or f"{slow}; torchao's float8 training runs every GEMM on it")
        convert = torchao_training.converter(TORCHAO[variant])
    return recipe, convert


def _scaled_mm_unsupported(gpu: str | None) -> str | None:
    """Why torchao's float8 training cannot run on `gpu`, planned from elsewhere, or None: its GEMMs are
    torch._scaled_mm, whose FP8 kernels (tensorwise and rowwise scales) need sm89+ (impls.fp8.gemm.scaled_mm_support);
    NotPlannable for a GPU whose compute capability bench.hardware does not know."""
    cap = hardware.capability(gpu)
    if cap is None:
        raise NotPlannable(f"whether torchao's float8 training runs on {gpu or 'this CUDA target'} is found by a real "
                           "step there (torch._scaled_mm's and torchao's checks), and the plan knows no compute "
                           "capability of it: plan it on the GPU machine, or name a GPU of bench.hardware's table")
    if cap < (8, 9):
        return (f"torchao's float8 training runs torch._scaled_mm, whose FP8 kernels need sm89 or newer; {gpu} is "
                f"sm{cap[0]}{cap[1]}")
    return None


def _warm_up(convert, device, dtype) -> None:
    """One training step of the timed model on its first batch, untimed: the process's first matmul, optimizer step
    and kernel loads (cuBLAS's handle and workspace on CUDA) stay out of train_time for bf16 and torchao alike."""
    _, _, step = training_step(None, device=device, dtype=dtype, convert=convert)
    step(*batches(1)[0])


def _training_workload(variant, device, target) -> Workload:
    """One step of the training part's model and optimizer on its first batch, built on `device` for `target`."""
    recipe, convert = _training_recipe(variant, target, reference_dtype(target), planned=device == "meta")
    model, opt, step = training_step(recipe, device=device, dtype=reference_dtype(target), convert=convert)
    prev, nxt = batches(1)[0]
    return Workload(lambda: step(prev, nxt), modules=(model,), optimizer=opt,
                    clear=lambda: opt.zero_grad(set_to_none=True))


def _training(variant, params, device):
    """The same data and initial weights in high precision and in the recipe; the wall time covers the whole run, after
    one untimed warm-up step of the same model (`_warm_up`), for bf16 and torchao's recipes alike.

    The high-precision run is the bf16 case itself: it trains once, timed, and leaves its loss curve in the cache
    (impls.cache) over any older one, where each recipe's case finds it: the run's own where its bf16 case ran first
    (a run plans it first, and a shard keeps the group), else the latest one cached for this device model (a recipe
    run alone, or after a bf16 case that failed), else one trained untimed. Keyed by the device's model, not its
    type: an H100's curve is not an H200's."""
    dtype = reference_dtype(device)
    where = torch.device(device)
    key = {"version": REFERENCE_VERSION, "steps": params["steps"], "batch": BATCH, "lr": LR, "dtype": str(dtype),
           "device": where.type, "torch": torch.__version__,
           "gpu": torch.cuda.get_device_name(where) if where.type == "cuda" else None}
    recipe, convert = _training_recipe(variant, device, dtype)
    if recipe is None:  # timed: one untimed step first, as torchao's probe (`unsupported`) already ran one of its own
        _warm_up(convert, device, dtype)
    t0 = time.monotonic()
    losses = train(recipe, params["steps"], device=device, dtype=dtype, convert=convert)
    t1 = time.monotonic()  # train() returns Python floats: every step has synchronized
    if variant == "bf16":  # this run's own curve, for this run's recipes: a GPU's run differs from an older one
        reference = losses
        store("fp8_reference_losses", key, {"losses": losses})
    else:
        def build():
            return {"losses": train(None, params["steps"], device=device, dtype=dtype)}

        reference = load_or_build("fp8_reference_losses", key, build)["losses"]
    final, mean = loss_gap(reference, losses)
    metrics = {"final_loss": losses[-1], "loss_gap_final": final, "loss_gap_mean": mean}
    curves = {"loss_curve": losses, "reference_loss_curve": list(reference)}
    if recipe is not None:  # our recipe's GEMMs are emulated: its wall time is no FP8 speed (see `metrics`)
        return Measurement(metrics, curves)
    timing = Timing(((t1 - t0) * 1e3,), warmup=0, method="wall", window_s=(t0, t1))
    w = _training_workload(variant, device, device)
    w.step()  # warm-up: the optimizer's state stays out of the peak, as the plan's
    metrics["peak_mem_bytes"] = peak_bytes(w.step, device, w.clear)
    work = Work("train_time", "train_", tokens=params["steps"] * BATCH)
    return Measurement(metrics, curves, timed=timing, timings={"train_time": timing}, work=[work])
