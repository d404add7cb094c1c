"""FlexAttention on the meta device as a CUDA target runs it (`target_flex`, for bench.plan).

On CUDA, FlexAttention runs compiled: torch.compile lowers `create_block_mask` and `flex_attention` to fused Triton
kernels (torch/_inductor/kernel/flex/flex_attention.py, 2.11-2.13). Neither runs on meta: eager FlexAttention refuses
a meta query and traces its call through torch.compile (which refuses the plan's dispatch modes), and eager
`create_block_mask` holds the [B, H, Q, KV] boolean mask that the compiled one reduces block by block. So, for a CUDA
target, while the plan runs: torch.compile runs what it wraps as written (the "force_eager" stance); torch's
flex_attention module takes meta queries, calls its higher-order op without tracing it, and finds the stand-ins below
in place of that op and of the mask's two steps inside create_block_mask. Whatever calls FlexAttention (this
package's rmpad, transformers' flex_attention integration) runs the rest of torch's code on meta as it is, its
BlockMask included:

- The block mask. `create_mask`'s [B, H, Q, KV] boolean mask is not made. Where the mask_mod's captured tensors have
  values (bench.plan_meta.IndexValues) and B x H x Q x KV is at most MASK_BUDGET, it is evaluated on the CPU by
  torch's own create_mask and reduced to the partial and full block maps as torch does, and those maps carry their
  values onto meta; beyond that the maps are shapes alone. Torch's code then makes the BlockMask from them on meta
  (its kv/q block counts and indices, int32), as on the device.
- The attention call. torch's higher-order op is answered by `techbench::flex_forward`, a stand-in op of the
  compiled forward's memory: the output (the query's stride order, as inductor lays it out), the log-sum-exp and the
  max scores (fp32 [B, Hq, L] each; the max scores freed after the kernel unless asked for), saving for backward
  what the compiled graph saves (query, key, value, output, log-sum-exp, the block mask's tensors and the tensors
  the mask_mod captures). Its backward, `techbench::flex_backward`: delta (fp32 [B, Hq, L], contiguous) beside
  dq, dk and dv (each in its input's stride order) while the kernel runs, after the output's gradient is copied
  into the layout the compiled backward was traced with where it arrives in another (`_as_traced`).
- FLOPs: the tiles the kernel computes (every partial and full block of the block mask, Q_BLOCK x KV_BLOCK each),
  2 x (E + Ev) FLOPs a query-key pair forward and 2 x (3E + 2Ev) backward, as torch counts attention; a block mask
  without values (past MASK_BUDGET) counts none, and the plan says so ("flex, FLOPs uncounted"): the roofline
  stays a lower bound, a looser one. Full-size rmpad's masks (4.3G pairs, ~18 s each on 2 CPU cores) are past it.

The tensors a mask_mod or score_mod captures are found through functions (closures, defaults), partials, lists,
tuples and dicts; a callable object's are not seen (not saved; a mask_mod holding one counts no FLOPs). Not counted:
where the caller asks for the log-sum-exp (transformers does), its gradient: zeros (fp32 [B, Hq, L]) where it is
unused, and two buffers of that size in the backward where it is used.

Not modelled, so not plannable: the decoding kernel (queries shorter than 128), the FLASH backend, a key and value
broadcast over the query's batch, a score_mod whose captured tensors take gradients, and a CPU target (eager
FlexAttention there materialises the scores, and its runs record no peak to check a prediction against). Checked
against the H100 run's two FlexAttention cases (rmpad quick, ours and transformers'; torch 2.11): +0.7% and -0.7%.
"""

from __future__ import annotations

import functools
import sys
import types
from contextlib import contextmanager

import torch
from torch import Tensor
from torch.utils._python_dispatch import _disable_current_modes

from bench.plan_meta import _meta, index_value
from bench.suite import NotPlannable

MASK_BUDGET = 1 << 26  # query-key pairs of a mask evaluated on the CPU: ~0.3 s (rmpad quick: 17M; full: 4.3G)
UNCOUNTED = "flex, FLOPs uncounted"


def _dense_strides(size, like) -> list[int]:
    """Inductor's infer_dense_strides (and the fake kernel's _permute_strides): dense strides of `size` in the fill
    order of strides `like` (of equal strides, the later dimension inner, as inductor's argsort), the last dimension
    innermost."""
    order = sorted(range(len(size)), key=lambda d: (like[d], -d))
    if order[0] != len(size) - 1:
        order.remove(len(size) - 1)
        order.insert(0, len(size) - 1)
    strides, step = [0] * len(size), 1
    for d in order:
        strides[d] = step
        step *= size[d]
    return strides


def _like(size, like: Tensor) -> Tensor:
    return torch.empty_strided(size, _dense_strides(size, like.stride()), dtype=like.dtype, device=like.device)


@torch.library.custom_op("techbench::flex_forward", mutates_args=())
def flex_forward(query: Tensor, key: Tensor, value: Tensor, kept: list[Tensor], pairs: int) -> tuple[
        Tensor, Tensor, Tensor]:
    """The compiled FlexAttention forward's outputs on meta: (output, log-sum-exp, max scores). `kept`: the tensors
    the compiled graph saves for backward beside q, k, v. `pairs`: the query-key pairs it computes, -1 where
    unknown."""
    raise NotImplementedError("techbench::flex_forward stands for FlexAttention on the meta device only")


@flex_forward.register_fake
def _(query, key, value, kept, pairs):
    B, Hq, L, _ = query.shape
    stats = query.new_empty((B, Hq, L), dtype=torch.float32)
    return _like((B, Hq, L, value.shape[-1]), query), stats, torch.empty_like(stats)


@torch.library.custom_op("techbench::flex_backward", mutates_args=())
def flex_backward(query: Tensor, key: Tensor, value: Tensor, out: Tensor, lse: Tensor, grad_out: Tensor,
                  pairs: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The compiled FlexAttention backward's buffers on meta: (dq, dk, dv, delta)."""
    raise NotImplementedError("techbench::flex_backward stands for FlexAttention on the meta device only")


@flex_backward.register_fake
def _(query, key, value, out, lse, grad_out, pairs):
    delta = torch.empty(lse.shape, dtype=torch.float32, device=lse.device)
    return _like(query.shape, query), _like(key.shape, key), _like(value.shape, value), delta


def _setup(ctx, inputs, output):
    query, key, value, kept, pairs = inputs
    out, lse, _ = output
    ctx.save_for_backward(query, key, value, out, lse, *kept)
    ctx.pairs, ctx.kept = pairs, len(kept)
    ctx.set_materialize_grads(False)  # no zero-filled gradients of the unused log-sum-exp and max scores


def _backward(ctx, grad_out, grad_lse, grad_max):
    query, key, value, out, lse = ctx.saved_tensors[:5]
    if grad_out is None:  # the output reached no loss (the log-sum-exp did): AOTAutograd fills its gradient with zeros
        grad_out = torch.zeros_like(out)
    dq, dk, dv, _ = flex_backward(query, key, value, out, lse, _as_traced(grad_out, out), ctx.pairs)
    return dq, dk, dv, [None] * ctx.kept, None


def _as_traced(grad: Tensor, out: Tensor) -> Tensor:
    """The output's gradient as the compiled backward takes it: AOTAutograd copies an incoming gradient into the
    layout it traced with (runtime_wrappers.coerce_to_expected_memory_format), the output's own strides, size-1
    dimensions' included, where functorch's guess_tangent_strides_as_outputs is set (torch 2.13), else the output's
    suggested memory format (contiguous here; torch 2.11). Static shapes: a case's step repeats its batch (after a
    recompile for another length torch 2.13 traces symbolic shapes and takes the memory format instead)."""
    import torch._functorch.config as functorch

    if not getattr(functorch, "guess_tangent_strides_as_outputs", False):
        return grad.contiguous(memory_format=torch._prims_common.suggest_memory_format(out))
    if grad.stride() == out.stride():
        return grad
    return torch.empty_strided(out.shape, out.stride(), dtype=grad.dtype, device=grad.device).copy_(grad)


flex_forward.register_autograd(_backward, setup_context=_setup)


def _forward_flops(query, key, value, kept, pairs, out_val=None, **kwargs) -> int:
    """2 x (E + Ev) a query-key pair: QK^T and PV, as torch counts attention."""
    return 0 if pairs < 0 else 2 * pairs * (query.shape[-1] + value.shape[-1])


def _backward_flops(query, key, value, out, lse, grad_out, pairs, out_val=None, **kwargs) -> int:
    """2 x (3E + 2Ev) a pair: the scores recomputed, dO V^T, dV, dQ and dK, as torch counts attention's backward."""
    return 0 if pairs < 0 else 2 * pairs * (3 * query.shape[-1] + 2 * value.shape[-1])


_forward_flops._get_raw = _backward_flops._get_raw = True
FORMULAS = {torch.ops.techbench.flex_forward: _forward_flops, torch.ops.techbench.flex_backward: _backward_flops}
"""FLOP formulas of the stand-in ops, for bench.plan's StepCounter."""


def _parts(fn) -> list | None:
    """What a mask_mod or score_mod holds: a function's closure and defaults, a partial's function and arguments;
    None for any other callable (whose tensors the plan does not see)."""
    if isinstance(fn, types.FunctionType):
        return [c.cell_contents for c in fn.__closure__ or () if _filled(c)] + list(fn.__defaults__ or ()) + \
            list((fn.__kwdefaults__ or {}).values())
    if isinstance(fn, functools.partial):
        return [fn.func, *fn.args, *fn.keywords.values()]
    return None


def _captured(x, seen: set | None = None) -> list[Tensor]:
    """The tensors a mask_mod or score_mod captures, through nested functions, partials, lists, tuples and dicts."""
    seen = set() if seen is None else seen
    if isinstance(x, Tensor):
        return [x]
    if id(x) in seen:
        return []
    seen.add(id(x))
    items = x.values() if isinstance(x, dict) else x if isinstance(x, (list, tuple)) else \
        _parts(x) or () if callable(x) else ()
    return [t for item in items for t in _captured(item, seen)]


def _filled(cell) -> bool:
    try:
        cell.cell_contents
    except ValueError:  # a closure variable not yet assigned
        return False
    return True


def _on_cpu(fn, values: dict, seen: dict | None = None):
    """A copy of mask_mod `fn` whose captured meta tensors are their CPU values (`values`: id -> value). A function
    is registered before its cells are filled, so a closure that refers to itself is copied once."""
    seen = {} if seen is None else seen
    if id(fn) in seen:
        return seen[id(fn)]

    def swap(x):
        if isinstance(x, Tensor):
            return values.get(id(x), x)
        if isinstance(x, (list, tuple)):
            items = [swap(i) for i in x]
            return type(x)(*items) if hasattr(x, "_fields") else type(x)(items)  # a namedtuple takes fields
        if isinstance(x, dict):
            return type(x)((k, swap(v)) for k, v in x.items())
        return _on_cpu(x, values, seen) if callable(x) else x

    if isinstance(fn, types.FunctionType):
        cells = tuple(types.CellType() for _ in fn.__closure__ or ())
        copy = seen[id(fn)] = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, None, cells or None)
        for cell, old in zip(cells, fn.__closure__ or ()):
            if _filled(old):
                cell.cell_contents = swap(old.cell_contents)
        copy.__defaults__ = swap(fn.__defaults__)
        copy.__kwdefaults__ = {k: swap(v) for k, v in fn.__kwdefaults__.items()} if fn.__kwdefaults__ else None
        return copy
    if isinstance(fn, functools.partial):
        seen[id(fn)] = functools.partial(swap(fn.func), *swap(fn.args), **{k: swap(v) for k, v in fn.keywords.items()})
        return seen[id(fn)]
    return fn


class _Mask:
    """What the stand-in create_mask hands to the stand-in _convert_mask_to_block_mask: the call, not the mask."""

    def __init__(self, mask_mod, B, H, Q, KV):
        self.mask_mod, self.shape = mask_mod, (B, H, Q, KV)


@contextmanager
def target_flex(target: str, taken: set):
    """FlexAttention on meta tensors as `target` runs it (see the module); CUDA targets only. Adds "flex" to `taken`
    (bench.plan_attention's set of the kernels taken), or UNCOUNTED where a call's FLOPs could not be counted."""
    if torch.device(target).type != "cuda":
        yield
        return
    try:
        import torch.nn.attention.flex_attention as fa
    except ImportError:  # a torch without FlexAttention: nothing calls it
        yield
        return
    originals = {name: getattr(fa, name) for name in ("create_mask", "_convert_mask_to_block_mask", "_validate_device",
                                                        "flex_attention_hop", "_FLEX_ATTENTION_DISABLE_COMPILE_DEBUG")}
    pending: dict[int, _Mask] = {}
    create_block_mask_code = fa.create_block_mask.__code__

    def create_mask(mask_mod, B, H, Q_LEN, KV_LEN, device=None, *args, **kwargs):
        # create_block_mask's own call only: a mask asked for by itself is made on CUDA too
        if device is None or torch.device(device).type != "meta" or \
                sys._getframe(1).f_code is not create_block_mask_code:
            return originals["create_mask"](mask_mod, B, H, Q_LEN, KV_LEN, device, *args, **kwargs)
        with _disable_current_modes():  # a placeholder of no bytes: the compiled kernel never makes this mask
            mask = torch.empty((B or 1, H or 1, Q_LEN, KV_LEN), dtype=torch.bool, device="meta")
        pending[id(mask)] = _Mask(mask_mod, B or 1, H or 1, Q_LEN, KV_LEN)
        return mask

    def convert(mask, Q_BLOCK_SIZE=128, KV_BLOCK_SIZE=128, separate_full_blocks=False):
        call = pending.pop(id(mask), None)
        if call is None:
            return originals["_convert_mask_to_block_mask"](mask, Q_BLOCK_SIZE, KV_BLOCK_SIZE, separate_full_blocks)
        B, H, Q, KV = call.shape
        blocks = (B, H, -(-Q // Q_BLOCK_SIZE), -(-KV // KV_BLOCK_SIZE))
        maps = _block_maps(call, Q_BLOCK_SIZE, KV_BLOCK_SIZE, separate_full_blocks)
        if maps is None:
            with _disable_current_modes():  # no values: shapes alone
                maps = [torch.empty(blocks, dtype=torch.int8, device="meta") for _ in range(1 + separate_full_blocks)]
            maps = [m.clone() for m in maps]  # made under the plan's modes: its trackers see them
        else:
            maps = [m.to("meta") for m in maps]  # keeping their values (bench.plan_meta.IndexValues)
        return maps[0], (maps[1] if separate_full_blocks else None)

    def validate_device(query, key, value):
        if not _meta(query):
            originals["_validate_device"](query, key, value)

    def hop(query, key, value, score_mod, block_mask, scale, kernel_options, *rest):
        if not _meta(query):
            return originals["flex_attention_hop"](query, key, value, score_mod, block_mask, scale, kernel_options,
                                                   *rest)
        if kernel_options.get("BACKEND", "AUTO") not in ("AUTO", "TRITON"):
            raise NotPlannable(f"FlexAttention's {kernel_options['BACKEND']} backend is not modelled (Triton's is)")
        if query.shape[-2] < 128:
            raise NotPlannable("FlexAttention's decoding kernel (queries shorter than 128) is not modelled")
        if key.shape[0] != query.shape[0]:
            raise NotPlannable("FlexAttention with key and value broadcast over the query's batch is not modelled")
        scored = _captured(score_mod)
        if any(t.requires_grad for t in scored):
            raise NotPlannable("FlexAttention with a score_mod whose captured tensors take gradients is not modelled")
        kept = [t for t in block_mask if isinstance(t, Tensor)] + _captured(block_mask[-1]) + scored
        pairs = _pairs(block_mask, query, key)
        taken.add("flex" if pairs >= 0 else UNCOUNTED)
        return flex_forward(query, key, value, kept, pairs)

    stance = torch.compiler.set_stance("force_eager")  # torch.compile(flex_attention) and the like run as written
    try:
        fa.create_mask, fa._convert_mask_to_block_mask, fa._validate_device = create_mask, convert, validate_device
        fa.flex_attention_hop, fa._FLEX_ATTENTION_DISABLE_COMPILE_DEBUG = hop, True
        with stance:
            yield
    finally:
        for name, value in originals.items():
            setattr(fa, name, value)


def _block_maps(call: _Mask, q_block: int, kv_block: int, separate_full_blocks: bool) -> list[Tensor] | None:
    """The partial (and full) block maps of a mask, computed on the CPU by torch's own functions, or None where the
    mask is past MASK_BUDGET or captures a tensor without values."""
    import torch.nn.attention.flex_attention as fa

    B, H, Q, KV = call.shape
    if B * H * Q * KV > MASK_BUDGET:
        return None
    captured = _captured(call.mask_mod)
    values = {}
    for t in captured:
        if _meta(t):
            value = index_value(t)
            if value is None:
                return None
            values[id(t)] = value
    with _disable_current_modes():
        # the functions as torch's create_block_mask calls them, on the CPU (the plan's stand-ins step aside there)
        try:
            mask = fa.create_mask(_on_cpu(call.mask_mod, values), B, H, Q, KV, "cpu")
        except Exception:  # noqa: BLE001 - a mask_mod holding what the plan cannot copy or see (a callable object)
            return None
        partial, full = fa._convert_mask_to_block_mask(mask, Q_BLOCK_SIZE=q_block, KV_BLOCK_SIZE=kv_block,
                                                       separate_full_blocks=separate_full_blocks)
    return [partial] if full is None else [partial, full]


def _pairs(block_mask: tuple, query: Tensor, key: Tensor) -> int:
    """Query-key pairs the kernel computes over the query's batch and heads: Q_BLOCK x KV_BLOCK for every partial and
    full block of the block mask, whose batch and heads broadcast to the query's; -1 where a count has no values."""
    tiles = 0
    for counts in (block_mask[2], block_mask[4]):  # kv_num_blocks, full_kv_num_blocks: [B or 1, H or 1, Q blocks]
        if counts is None:
            continue
        value = index_value(counts)
        if value is None:
            return -1
        tiles += int(value.sum()) * (query.shape[0] // value.shape[0]) * (query.shape[1] // value.shape[1])
    # a block no longer than the sequences (no block_mask: torch's one block of 2^30 covers them)
    return tiles * min(block_mask[-3], query.shape[-2]) * min(block_mask[-2], key.shape[-2])
