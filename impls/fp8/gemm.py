"""FP8 GEMMs: tensorwise and rowwise through torch._scaled_mm, DeepSeek-V3 blockwise (§3.3) through its reference.

Every GEMM here takes a [M, K] and b [N, K] (nn.Linear's weight layout, operand B of a Recipe) and returns
a @ b.T [M, N]: b.T is then column-major, the layout torch._scaled_mm wants for its second operand, without a copy.
"""

from __future__ import annotations

import functools
import timeit

import torch
from torch import Tensor

from impls.fp8.reference import QUANTIZERS, RECIPES, Recipe

# (activation, weight) granularities torch._scaled_mm takes; scale shapes [] x [], and [M, 1] x [1, N].
SCALED_MM = {("tensorwise", "tensorwise"), ("rowwise", "rowwise")}
BLOCKWISE = ("1x128", "128x128")


def _check(a: Tensor, b: Tensor) -> None:
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"need a [M, K] and b [N, K], got {tuple(a.shape)} and {tuple(b.shape)}")


def reference_dtype(device: torch.device | str) -> torch.dtype:
    """The high-precision GEMM FP8 is measured against: bf16 on CUDA, fp32 on CPU (where bf16 matmul is slow)."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def matmul_reference(a: Tensor, b: Tensor) -> Tensor:
    """a @ b.T in the inputs' dtype (pass reference_dtype(device) inputs): the speed baseline for FP8."""
    _check(a, b)
    if a.dtype != b.dtype:
        raise ValueError(f"a and b must share a dtype, got {a.dtype} and {b.dtype}")
    return a @ b.T


def matmul_fp64(a: Tensor, b: Tensor) -> Tensor:
    """a @ b.T in fp64: the truth that sqnr_db and max_rel_err compare against."""
    _check(a, b)
    return a.double() @ b.double().T


def dequantized_matmul(qa: Tensor, sa: Tensor, qb: Tensor, sb: Tensor, recipe: Recipe) -> Tensor:
    """Dequantize both operands per the recipe's granularities, then a @ b.T in fp32: what each FP8 GEMM should equal.

    FP8 products are exact in fp32 (4-bit significands give 8-bit products), so an FP8 GEMM that accumulates in fp32
    differs from this only by fp32 summation order and the rounding of the scale multiplies.
    """
    a = QUANTIZERS[recipe.activation][1](qa, sa)
    b = QUANTIZERS[recipe.weight][1](qb, sb)
    return a @ b.T


def blockwise_reference(a: Tensor, b: Tensor, recipe: Recipe = RECIPES["deepseek_v3"]) -> Tensor:
    """DeepSeek-V3's FP8 GEMM (1x128 activation tiles x 128x128 weight blocks) as quantize, dequantize, fp32 matmul.

    DeepSeek-V3 (§3.3) promotes the tensor cores' partial sums to FP32 registers every 128 elements of K and applies
    the two blocks' scales there; since a 128-wide K chunk shares one scale per operand, that equals the dequantized
    product summed in fp32, so this computes the same numbers up to fp32 summation order. Returns fp32 [M, N].
    """
    _check(a, b)
    if (recipe.activation, recipe.weight) != BLOCKWISE:
        raise ValueError(f"recipe {recipe.name!r} is not blockwise {BLOCKWISE}")
    return dequantized_matmul(*recipe.quantize_activation(a), *recipe.quantize_weight(b), recipe)


def _granularity(sa: Tensor, sb: Tensor) -> str:
    if sa.numel() == 1 and sb.numel() == 1:
        return "tensorwise"
    if sa.dim() == 2 and sa.shape[1] == 1 and sb.dim() == 2 and 1 in sb.shape:
        return "rowwise"
    raise NotImplementedError(
        f"torch._scaled_mm takes tensorwise x tensorwise or rowwise x rowwise scales, got {tuple(sa.shape)} x "
        f"{tuple(sb.shape)}"
    )


@functools.cache
def scaled_mm_support(device: str, granularity: str) -> str | None:
    """None where this torch runs torch._scaled_mm with `granularity` scales on `device`; else why not (one line).

    Found by running a 16 x 16 x 16 GEMM (CUDA's minimum multiples) to bf16, not from version numbers: torch 2.11's
    CPU kernel takes per-tensor scales only (rowwise hits an INTERNAL ASSERT), torch 2.13's takes both, and CUDA's
    rowwise scaling needs sm_89+. Cached per (device, granularity), so each GPU of a mixed machine is asked. A call
    the probe passes can still be refused for its shape or output dtype: scaled_mm then raises NotImplementedError.
    """
    if granularity not in ("tensorwise", "rowwise"):
        raise ValueError(f"granularity must be 'tensorwise' or 'rowwise', got {granularity!r}")
    q = torch.ones(16, 16, device=device).to(torch.float8_e4m3fn)  # [16, 16]
    s = torch.ones((), device=device) if granularity == "tensorwise" else torch.ones(16, 1, device=device)
    try:
        torch._scaled_mm(q, q.T, scale_a=s, scale_b=s.reshape(1, -1) if s.dim() else s, out_dtype=torch.bfloat16)
    except (RuntimeError, ValueError, NotImplementedError) as e:
        first = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
        return f"torch {torch.__version__} cannot run _scaled_mm with {granularity} scales on {device}: {first}"
    return None


REFERENCE_KERNEL_X = 20
"""torch._scaled_mm this many times slower than an fp32 matmul of the same shape is taken for oneDNN's reference
kernel: ~250x where it runs (below), 1-3x where the CPU has an FP8 kernel."""


@functools.cache
def reference_kernel(device: str) -> str | None:
    """Why torch._scaled_mm on `device` would time no FP8 hardware (one line), or None.

    On a CPU without FP8 matmul instructions oneDNN runs its reference kernel, a scalar loop (`ONEDNN_VERBOSE=1`
    names it `ref:any`): measured on a Xeon with AMX-BF16/INT8 and AVX512-FP16 but no AMX-FP16 (torch 2.13, oneDNN
    3.12), a 256x256x128 GEMM in 0.27 s against 1 ms in fp32, and 1024^3 in 35 s, where other CPUs run FP8 near fp32
    speed. Its times say nothing about FP8, and at quick size one case took minutes. Found by timing both on a 128^3
    GEMM (best of 3 each: ~0.15 s in all on the reference kernel, a few ms elsewhere; the gap is two orders of
    magnitude, far outside noise), not from CPU flags: oneDNN's dispatch, not the flags, decides. Timed on one thread:
    with two on a loaded machine, an fp32 matmul took 30 us or 16 ms by turns (its threads waiting on each other),
    and the verdict flipped between processes. Asked only where torch hands the call to oneDNN (`_onednn_takes_it`);
    elsewhere torch emulates it in fp32, never the reference kernel. Cached per process. Always None on CUDA and
    where _scaled_mm does not run at all."""
    if torch.device(device).type != "cpu" or scaled_mm_support(device, "tensorwise") is not None \
            or not _onednn_takes_it():
        return None
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(128, 128, generator=g), torch.randn(128, 128, generator=g)
    qa, qb, s = a.to(torch.float8_e4m3fn), b.to(torch.float8_e4m3fn), torch.ones(())

    def best(fn) -> float:
        fn()  # warm-up: oneDNN makes its primitive on the first call
        return min(timeit.repeat(fn, number=1, repeat=3))

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fp8 = best(lambda: torch._scaled_mm(qa, qb.T, scale_a=s, scale_b=s, out_dtype=torch.float32))
        fp32 = best(lambda: a @ b.T)
    finally:
        torch.set_num_threads(threads)
    if fp8 < REFERENCE_KERNEL_X * fp32:
        return None
    return (f"torch._scaled_mm on this CPU is oneDNN's reference kernel, with no FP8 instructions under it (a 128^3 "
            f"GEMM {1e3 * fp8:.1f} ms, {fp8 / fp32:.0f}x fp32): its time would measure no FP8 hardware")


def _onednn_takes_it() -> bool:
    """Whether torch hands a _scaled_mm of two e4m3 operands, one scale each, on this CPU to oneDNN (Blas.cpp,
    torch 2.11-2.13: oneDNN enabled, and AMX-INT8 by cpuinfo, which torch.cpu.get_capabilities reads). Else
    _scaled_mm_out_cpu emulates it: the operands in fp32, scaled, one fp32 matmul."""
    return torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled and \
        bool(torch.cpu.get_capabilities().get("amx_int8", False))


def scaled_mm(qa: Tensor, sa: Tensor, qb: Tensor, sb: Tensor, out_dtype: torch.dtype = torch.bfloat16) -> Tensor:
    """torch._scaled_mm on quantized operands: qa [M, K] fp8 with sa [] or [M, 1]; qb [N, K] fp8 with sb [] or [N, 1].

    Raises NotImplementedError with a one-line reason where this device or build cannot run the call (see
    scaled_mm_support; e.g. CUDA needs K and N multiples of 16, and rowwise scaling there only writes bf16), so a
    suite can skip with that reason.
    """
    why = scaled_mm_support(str(qa.device), _granularity(sa, sb))
    if why is not None:
        raise NotImplementedError(why)
    # _scaled_mm takes B [K, N] column-major (qb.T is) and B's row scales as [1, N].
    sb = sb if sb.dim() == 0 else sb.reshape(1, -1)
    try:
        return torch._scaled_mm(qa, qb.T, scale_a=sa, scale_b=sb, out_dtype=out_dtype)
    except (RuntimeError, ValueError) as e:
        raise NotImplementedError(
            f"torch._scaled_mm ({torch.__version__}, {qa.device.type}) cannot run a {tuple(qa.shape)} x "
            f"{tuple(qb.T.shape)} {qa.dtype} GEMM with scales {tuple(sa.shape)} x {tuple(sb.shape)} to {out_dtype}: {e}"
        ) from e


def fp8_matmul(a: Tensor, b: Tensor, recipe: Recipe, out_dtype: torch.dtype = torch.bfloat16) -> Tensor:
    """Quantize a [M, K] and b [N, K] per the recipe and return a @ b.T [M, N] in out_dtype.

    Tensorwise and rowwise run torch._scaled_mm; blockwise runs blockwise_reference (the Triton kernel is separate).
    """
    _check(a, b)
    kinds = (recipe.activation, recipe.weight)
    if kinds in SCALED_MM:
        return scaled_mm(*recipe.quantize_activation(a), *recipe.quantize_weight(b), out_dtype)
    if kinds == BLOCKWISE:
        return blockwise_reference(a, b, recipe).to(out_dtype)
    raise NotImplementedError(f"no FP8 GEMM for activation {recipe.activation!r} x weight {recipe.weight!r} scaling")


def gemm_flops(m: int, n: int, k: int) -> int:
    """One multiply and one add per (m, n, k)."""
    return 2 * m * n * k


def max_rel_err(ref: Tensor, out: Tensor) -> float:
    """max |out - ref| / max |ref| in fp64: relative to the output's scale, so near-zero entries do not blow it up."""
    ref, out = ref.double(), out.double()
    err = (out - ref).abs().max().item()
    scale = ref.abs().max().item()
    if scale == 0:
        return 0.0 if err == 0 else float("inf")
    return err / scale
