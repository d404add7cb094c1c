"""How the live-tensor tracker (bench.memory) reads an op: the tensors in its arguments and outputs, which composite
ops every device runs as their decomposition, which ops backward runs out of place only because a dispatch mode
is active (the out-of-place twins of in-place ones), which ops a float8 tensor subclass runs for itself, and what
a CPU kernel allocates inside (cpu_scratch). The plan's dispatch modes (bench.plan) read ops the same way."""

from __future__ import annotations

import functools

import torch
from torch.utils._python_dispatch import is_traceable_wrapper_subclass


def tensors_in(tree) -> list[torch.Tensor]:
    """The tensors in an op's arguments or outputs (nested tuples, lists and dicts), in order.

    Written here rather than pytree's tree_flatten, which the dispatch modes called on every op: its generality
    (registered node types, leaves kept for unflattening) made it a third of a plan's time (~25 us a call)."""
    found: list[torch.Tensor] = []
    _collect(tree, found)
    return found


def _collect(x, found: list) -> None:
    if isinstance(x, torch.Tensor):
        found.append(x)
    elif isinstance(x, (tuple, list)):
        for item in x:
            _collect(item, found)
    elif isinstance(x, dict):
        for item in x.values():
            _collect(item, found)


def storages(tree) -> list[torch.UntypedStorage]:
    return [t.untyped_storage() for t in tensors_in(tree) if t.layout == torch.strided]


IN_PLACE_TWINS = {torch.ops.aten.add.Tensor, torch.ops.aten.index_put.default, torch.ops.aten.scatter_add.default}
"""Ops backward runs out of place only because a tensor is subclass-like (under a dispatch mode, on meta): the
engine's gradient sum (InputBuffer::accumulate), index_backward, gather_backward (torch/csrc/autograd)."""


def replaced(func, args, kwargs, out) -> torch.UntypedStorage | None:
    """The storage of the first argument of an IN_PLACE_TWINS op in backward, where its output has that argument's
    layout: the in-place op would have written there.

    Only with grad mode off, as the engine runs backward unless asked for create_graph (then it sums out of place
    on every device) and not in a checkpoint's recompute (a forward, under grad mode); an add of two tensors of one
    shape and no alpha. A custom autograd.Function whose backward writes `a = a + g` looks the same and is counted
    as in place: no suite's does."""
    if func not in IN_PLACE_TWINS or torch.is_grad_enabled() or torch._C._current_graph_task_id() < 0:
        return None
    first = args[0] if args else None
    if not isinstance(first, torch.Tensor) or not isinstance(out, torch.Tensor) or first.layout != torch.strided:
        return None
    if first.shape != out.shape or first.dtype != out.dtype or first.device != out.device or \
            not first.is_contiguous():
        return None
    if func is torch.ops.aten.add.Tensor and (kwargs or not isinstance(args[1], torch.Tensor) or
                                              args[1].shape != out.shape):
        return None
    return first.untyped_storage()


@functools.lru_cache(maxsize=None)
def runs_decomposed(func) -> bool:
    """Whether every device runs `func` as its CompositeImplicitAutograd decomposition (linear, matmul, SDPA's
    composite): it has one and no kernel of its own, for the CPU or for meta (silu_backward has both; an op with a
    CUDA kernel alone, as _fused_rms_norm, bench.plan_norm routes itself)."""
    name = func.name()
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    try:
        return has(name, "CompositeImplicitAutograd") and not any(has(name, key) for key in ("CPU", "Meta"))
    except RuntimeError:  # an op of Python's own, unknown to the dispatcher (nested tensors' aten.sym_size.int)
        return False


def decomposes(func, args, kwargs) -> bool:
    """Whether a dispatch mode should run `func` as its decomposition (runs_decomposed): not for a tensor subclass's
    arguments, whose own dispatch runs the op (a nested tensor's is_contiguous would decompose into itself)."""
    return runs_decomposed(func) and not any(is_traceable_wrapper_subclass(t) for t in tensors_in((args, kwargs)))


def cpu_scratch(func, args, kwargs, out) -> list[int]:
    """A bench.memory.TensorMemoryTracker `scratch` for this machine's CPU: the bytes an op's CPU kernel allocates for
    itself (no op returns them, so no dispatch mode sees them), as one figure, its peak. Only torch._scaled_mm's
    emulation is modelled (its functional overload: not `.out`, nor torch 2.13's _scaled_mm_v2, which no suite
    calls); every other CPU kernel the suites call allocates nothing past a few bytes (the tracker is checked
    against the CPU allocator's timeline within 1 KiB: tests/bench/test_memory.py, tests/bench/test_plan.py)."""
    if func is not _SCALED_MM or args[0].device.type not in ("cpu", "meta"):
        return []
    a, b, scale_a, scale_b = args[:4]
    if not _scaled_mm_emulated(a.dtype != b.dtype, scale_a.numel() == 1 and scale_b.numel() == 1):
        return []
    out_dtype = args[6] if len(args) > 6 else kwargs.get("out_dtype")
    return [scaled_mm_emulation_peak(a, b, out, out_dtype in FLOAT8)]


_SCALED_MM = torch.ops.aten._scaled_mm.default


def scaled_mm_emulation_peak(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, rescaled: bool) -> int:
    """Peak bytes torch's CPU emulation of _scaled_mm (Blas.cpp, _scaled_mm_out_cpu_emulated, torch 2.11 and 2.13)
    holds beside its output: `a` and `b` made contiguous (a copy each where they are not; b usually is
    column-major), each converted to float32 and multiplied by its scale (the converted copy freed once the product
    exists), the float32 product, for an fp8 `out_dtype` asked for (`rescaled`) that divided by the output scale
    into a new tensor, and the product converted to the output's dtype before it is copied into the output."""
    m, k, n = a.shape[0], a.shape[1], b.shape[1]
    copies = (0 if a.is_contiguous() else a.numel() * a.element_size()) + \
        (0 if b.is_contiguous() else b.numel() * b.element_size())
    fa, fb, fo = 4 * m * k, 4 * k * n, 4 * m * n
    peaks = [copies + 2 * fa, copies + fa + 2 * fb, copies + fa + fb + fo]
    if rescaled:
        peaks.append(copies + fa + fb + 2 * fo)
    if out.dtype != torch.float32:
        peaks.append(copies + fa + fb + fo + m * n * out.element_size())
    return max(peaks)


def _scaled_mm_emulated(mixed: bool, tensorwise: bool = True) -> bool:
    """Whether torch runs _scaled_mm on this CPU by its emulation (_scaled_mm_out_cpu): it takes oneDNN's kernel only
    with oneDNN enabled, one scale per operand, and by cpuinfo AMX-INT8 for operands of one fp8 format, AMX-FP16 for
    mixed ones (torch.cpu.get_capabilities reads the same cpuinfo)."""
    if not (tensorwise and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
        return True
    return not _cpu_capabilities().get("amx_fp16" if mixed else "amx_int8", False)


@functools.cache
def _cpu_capabilities() -> dict:
    return dict(torch.cpu.get_capabilities())


FLOAT8 = (torch.float8_e4m3fn, torch.float8_e5m2)


def wraps_float8(args, kwargs) -> bool:
    """Whether an op's arguments include a tensor subclass that holds float8 data (torchao's Float8TrainingTensor)."""
    for t in tensors_in((args, kwargs)):
        if is_traceable_wrapper_subclass(t):
            names, _ = t.__tensor_flatten__()
            if any(getattr(getattr(t, name, None), "dtype", None) in FLOAT8 for name in names):
                return True
    return False
