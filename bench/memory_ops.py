"""How the live-tensor tracker (bench.memory) reads an op: the tensors in its arguments and outputs, which composite
ops every device runs as their decomposition, and which ops backward runs out of place only because a dispatch mode
is active (the out-of-place twins of in-place ones). The plan's dispatch modes (bench.plan) read ops the same way."""

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
