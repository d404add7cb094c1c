"""What bench.plan counts of a step besides its memory: FLOPs per dtype and bytes moved (`StepCounter`), the bytes of
a set of tensors' storages (`storage_bytes`), and the roofline bound they give on a GPU (`roofline_ms`)."""

from __future__ import annotations

from collections import defaultdict

import torch
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

from bench import hardware
from bench.flops import flop_counter_mode
from bench.memory_ops import decomposes, tensors_in
from bench.plan_flex import FORMULAS as FLEX_FORMULAS
from bench.plan_meta import local_tensor
from bench.suite import NotPlannable

# What multiplies float8 tensors on CUDA: its other matmuls and attention have no float8 kernel there ("addmm_cuda" not
# implemented for 'Float8_e4m3fn'), though meta, and the CPU's mm, run them
FP8_KERNELS = {op for op in (torch.ops.aten._scaled_mm, getattr(torch.ops.aten, "_scaled_grouped_mm", None)) if op}
_ALLOCATIONS = {torch.ops.aten.empty.memory_format, torch.ops.aten.empty_strided.default,
                torch.ops.aten.empty_like.default, torch.ops.aten.new_empty.default}  # no bytes move


class StepCounter(TorchDispatchMode):
    """FLOPs and bytes moved. FLOPs: those of the ops torch's FLOP counter has a formula for, with bench.flops' and
    bench.plan_flex's: matmuls (mm, addmm, bmm, baddbmm, _scaled_mm, _grouped_mm; linear, matmul and einsum count as
    the ones they run), convolutions, and attention (SDPA's kernels, varlen flash, FlexAttention's tiles), 2 FLOPs a
    multiply-add, on the shapes the target's kernel is called with: a masked SDPA call counts every query-key pair,
    a causal one half, and a CUDA flash call its head dim padded to a multiple of 8 (the composite pads it: mla's tiny
    shape, 10 -> 16). Every other op counts none: elementwise ops, norms, softmax, losses, embeddings, an optimizer's
    update. Bytes moved: what each op reads (its tensor inputs) and writes (its tensor outputs), views and bare
    allocations left out. `by_dtype`: the FLOPs per dtype an op computes in, its first floating-point input's (bf16
    matmuls, float8 _scaled_mm, fp32 ones), for the roofline.

    It counts FLOPs itself rather than under FlopCounterMode: that mode's module hooks keep tensors alive past their
    last use (+77% peak at smoke checkpointing, full variant), so the step it counts is not the step measured."""

    def __init__(self, cuda: bool = False):
        super().__init__()
        self.cuda = cuda  # a CUDA target: a matmul of float8 tensors other than FP8_KERNELS' cannot run there
        self.bytes = 0
        self.flops = 0
        self.by_dtype: dict[str, int] = defaultdict(int)
        self._formulas = {**flop_counter_mode().flop_registry, **FLEX_FORMULAS}  # FlexAttention's stand-ins

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        formula = self._formulas.get(func._overloadpacket)
        if formula is None and decomposes(func, args, kwargs):
            # Under inference_mode a composite op (linear, SDPA) reaches a dispatch mode whole: count what it
            # decomposes into, as FlopCounterMode does, or its matmuls go uncounted. Only an op the device runs as
            # its decomposition: silu_backward has one too, but a kernel of its own on every device, and its
            # decomposition's temporaries (0.75 MiB in moe's quick dispatch step) are no step's memory
            with self:
                out = func.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
        out = func(*args, **kwargs)
        if formula is not None:
            with _disable_current_modes():  # a formula's stand-in tensors (bench.flops, GQA) are no step's memory
                flops = formula(*args, **kwargs, out_val=out)
            self.flops += flops
            if flops:
                dtype = compute_dtype((args, kwargs, out))
                if self.cuda and dtype.startswith("float8") and func._overloadpacket not in FP8_KERNELS:
                    raise NotPlannable(f"its step runs {func._overloadpacket.__name__} on {dtype} tensors, which CUDA "
                                       "has no kernel for (float8 matmuls run as torch._scaled_mm only)")
                self.by_dtype[dtype] += flops
        if not func.is_view and func not in _ALLOCATIONS:
            self.bytes += sum(t.numel() * t.element_size() for t in tensors_in((args, kwargs, out)))
        return out


def compute_dtype(tree) -> str:
    """The dtype an op computes in: its first floating-point tensor's ("bfloat16", "float8_e4m3fn"), "unknown" for
    none."""
    return next((str(t.dtype).removeprefix("torch.") for t in tensors_in(tree) if t.is_floating_point()), "unknown")


def roofline_ms(gpu: str | None, flops_by_dtype: dict[str, int], bytes_moved: int) -> float | None:
    """The roofline bound on a step's time on `gpu`, in ms: max(the FLOPs of each dtype over the GPU's peak TFLOP/s
    for it, summed; bytes moved over its bandwidth). None where bench.hardware has no bandwidth for the GPU, or no
    rate for a dtype with FLOPs: never a guess."""
    gbps = hardware.peak_gbps(gpu)
    compute = 0.0
    for dtype, flops in flops_by_dtype.items():
        tflops = hardware.peak_tflops(gpu, dtype) if flops else 1.0
        if not tflops:
            return None
        compute += flops / (tflops * 1e12)
    return 1e3 * max(compute, bytes_moved / (gbps * 1e9)) if gbps else None


def storage_bytes(tensors) -> int:
    """Bytes of the storages of `tensors`, each storage counted once. A DTensor's (FSDP2's sharded parameters and
    their gradients) are its local tensor's: what this rank holds. The wrapper's own storage is the global tensor's
    size, and FSDP2's gradients are views at offsets into one reduce-scatter output per unit, whose wrappers' storages
    measured offset + numel each (65.3 MB for 12.6 MB of gradients at one rank)."""
    seen, total = set(), 0
    for t in tensors:
        if isinstance(t, torch.Tensor):
            s = local_tensor(t).untyped_storage()
            if s._cdata not in seen:
                seen.add(s._cdata)
                total += s.nbytes()
    return total
