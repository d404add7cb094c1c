"""Running a workload on the meta device as it would run on a target device: shapes and bytes without data.

Two things keep a meta run honest about what the target would allocate:

- Values for index tensors (`IndexValues`). A step whose shapes depend on data (the real tokens of a padding mask,
  tokens per expert, `.item()` of a length) cannot run on meta alone. Integer and bool tensors up to INDEX_LIMIT
  elements keep their real values on the CPU beside their meta twins: a CPU tensor moved to meta keeps its values,
  an op whose meta inputs all have values computes them on the CPU too (when they are first read), and an op whose
  output shape needs values (nonzero, bincount, a bool-mask index, `.item()`, `.tolist()`) takes its shape from
  them. The heavy (float) tensors stay on meta. A data-dependent op with no values to use raises NotPlannable
  naming the op: never a guess.
- The target's attention kernel (bench.plan_attention.target_attention): F.scaled_dot_product_attention routed to
  the kernel the target would run, never the math path in its place.

Distributed suites (`fake_ranks`): a case at world size N is planned as rank 0 of N in torch's fake process group,
FSDP2 included; what one rank holds is what the GPU of rank 0 must fit.

Speed (`MetaKernels`): most meta kernels are Python (torch._refs, torch._meta_registrations), ~200 us an op, and a
model's layers repeat the same ops on the same shapes. The output shapes, strides and dtypes of an op that neither
views nor mutates are a function of its arguments' metadata and of torch's default dtype (a factory given no dtype),
so they are computed once per signature and later calls get fresh meta tensors of the same layout (a full
checkpointing step: 0.6 s -> 0.17 s).
"""

from __future__ import annotations

import functools
import weakref
from contextlib import contextmanager

import torch
from torch.utils._python_dispatch import TorchDispatchMode, _get_current_dispatch_mode_stack
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.weak import WeakIdKeyDictionary

from bench.memory_ops import tensors_in
from bench.suite import NotPlannable

aten = torch.ops.aten
INDEX_LIMIT = 1 << 24  # elements: index tensors of the full grids are a few million at most (rmpad: 65k tokens)
_INDEXING = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default}
# Losses whose reduced scalar keeps the unreduced [*input] buffer as its storage on CPU (Loss.cpp reduces into it;
# measured: mse_loss of a [2, 64, 64] fp32 input holds 32 KiB until the loss is freed), where the meta kernels make
# a fresh 4-byte scalar. The loss lives through backward, so the buffer is part of the peak.
_UNREDUCED_LOSSES = {aten.mse_loss.default: 2, aten.smooth_l1_loss.default: 2, aten.soft_margin_loss.default: 2}


def _is_index(t) -> bool:
    return isinstance(t, torch.Tensor) and not t.is_floating_point() and not t.is_complex() and \
        t.numel() <= INDEX_LIMIT


def _meta(t) -> bool:
    return isinstance(t, torch.Tensor) and t.device.type == "meta"


class _Later:
    """An index tensor's CPU value, computed when first read. Most never are: a causal mask's ones(S, S).tril() is
    only ever shaped, and at full size computing such values took half of rmpad's plan."""

    __slots__ = ("thunk", "value", "__weakref__")

    def __init__(self, thunk):
        self.thunk, self.value = thunk, None

    def get(self):
        if self.thunk is not None:
            self.value, self.thunk = self.thunk(), None
        return self.value


def _read(x):
    return x.get() if isinstance(x, _Later) else x


class IndexValues(TorchDispatchMode):
    """Keeps real CPU values beside meta index tensors and answers data-dependent ops from them (see the module);
    makes the few meta kernels whose outputs hold less storage than the real ones hold as much (_UNREDUCED_LOSSES).

    An op that needs no values to run on meta gets its outputs' values later, when something reads them (`_Later`);
    an op that mutates a value first computes every value still waiting, so that none reads what came after it."""

    def __init__(self):
        super().__init__()
        self.values = WeakIdKeyDictionary()
        self._waiting: weakref.WeakSet = weakref.WeakSet()

    def __enter__(self):
        _RUNNING.append(self)
        return super().__enter__()

    def __exit__(self, *exc):
        _RUNNING.remove(self)
        return super().__exit__(*exc)

    def _get(self, t) -> torch.Tensor:
        value = self.values[t]
        if isinstance(value, _Later):
            value = self.values[t] = value.get()
        return value

    def _keep(self, meta_out, cpu_out) -> None:
        metas, _ = tree_flatten(meta_out)
        if isinstance(cpu_out, _Later):
            single = isinstance(meta_out, torch.Tensor)
            for i, m in enumerate(metas):
                if _meta(m) and _is_index(m):
                    later = cpu_out if single else _Later(lambda i=i: tree_flatten(cpu_out.get())[0][i])
                    self.values[m] = later
                    self._waiting.add(later)
            return
        cpus, _ = tree_flatten(cpu_out)
        for m, c in zip(metas, cpus):
            if _meta(m) and isinstance(c, torch.Tensor) and _is_index(m):
                self.values[m] = c

    def _on_values(self, func, args, kwargs, later: bool = False):
        """func run on the CPU values of its meta arguments (None where one has none); with `later`, a _Later that
        runs it when read, unless func views or mutates."""
        if any(_meta(t) and t not in self.values for t in tensors_in((args, kwargs))):
            return None

        def held(x):
            if _meta(x):
                return self.values[x]
            return torch.device("cpu") if isinstance(x, torch.device) and x.type == "meta" else x

        args, kwargs = tree_map(held, args), tree_map(held, kwargs)
        if later and not _views_or_mutates(func):
            return _Later(lambda: func(*tree_map(_read, args), **tree_map(_read, kwargs)))
        if func._schema.is_mutable:
            for waiting in list(self._waiting):
                waiting.get()
            self._waiting.clear()
        return func(*tree_map(_read, args), **tree_map(_read, kwargs))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat = tensors_in((args, kwargs))
        if func is aten._local_scalar_dense.default and _meta(args[0]):  # .item()
            if args[0] not in self.values:
                raise NotPlannable(f".item() of a {args[0].dtype} tensor that the plan keeps on meta (no values)")
            return self._get(args[0]).item()
        if func is aten._to_copy.default and not _meta(args[0]) and _meta_device(kwargs.get("device")):
            out = func(*args, **kwargs)  # a CPU tensor moved to meta keeps its values
            if _is_index(out):
                self.values[out] = args[0].to(dtype=out.dtype).clone()
            return out
        if func is aten._to_copy.default and _meta(args[0]) and not _meta_device(kwargs.get("device", "meta")):
            if args[0] not in self.values:  # .tolist(), .cpu()
                raise NotPlannable(f"copying a {args[0].dtype} tensor off the meta device (no values to copy)")
            return func(self._get(args[0]), **{k: v for k, v in kwargs.items() if k != "device"})
        if func in _INDEXING:
            args = self._long_indices(func, args)
        if func in _UNREDUCED_LOSSES and _meta(args[0]):
            reduction = args[2] if len(args) > 2 else kwargs.get("reduction", 1)
            if reduction:  # mean or sum: the scalar viewing a buffer of the broadcast input's size
                out = func(*args, **kwargs)
                buffer = torch.empty(torch.broadcast_shapes(args[0].shape, args[1].shape), dtype=out.dtype,
                                     device="meta")
                return buffer.as_strided((), ())
        try:
            out = func(*args, **kwargs)
        except (RuntimeError, NotImplementedError) as e:  # the output's shape needs values: take it from them
            values = self._on_values(func, args, kwargs)
            if values is None:  # a data-dependent op without values, or a meta kernel stricter than the device's
                raise NotPlannable(f"{func} does not run on meta (and has no values to run on): "
                                   f"{str(e).strip().splitlines()[0]}") from None
            out = tree_map(lambda c: torch.empty_strided(c.shape, c.stride(), dtype=c.dtype, device="meta")
                           if isinstance(c, torch.Tensor) else c, values)
            self._keep(out, values)
            return out
        outs = tensors_in(out)
        if any(_meta(o) and _is_index(o) for o in outs) and any(_meta(t) for t in flat):
            values = self._on_values(func, args, kwargs, later=True)
            if values is not None:
                self._keep(out, values)
        elif any(_meta(o) and _is_index(o) for o in outs) and not flat:
            self._keep(out, self._on_values(func, args, kwargs, later=True))  # a factory (arange, ones): on the CPU
        return out

    def _long_indices(self, func, args):
        """A bool-mask index as the long indices its nonzero gives (what the CPU and CUDA kernels do inside)."""
        indices = args[1]
        if not any(_meta(i) and i.dtype == torch.bool for i in indices if i is not None):
            return args
        out = []
        for i in indices:
            if _meta(i) and i.dtype == torch.bool:
                if i not in self.values:
                    raise NotPlannable(f"{func} with a boolean mask that the plan keeps on meta (no values)")
                for column in self._get(i).nonzero().unbind(1):
                    long = torch.empty(column.shape, dtype=torch.long, device="meta")
                    self.values[long] = column
                    out.append(long)
            else:
                out.append(i)
        return (args[0], out, *args[2:])


_RUNNING: list[IndexValues] = []
"""The IndexValues entered and not yet left: a FLOP formula (bench.flops) runs with the dispatch modes set aside."""


def index_value(t) -> torch.Tensor | None:
    """The CPU value the running plan keeps beside meta index tensor `t` (IndexValues), or None where it keeps none;
    also where the modes are set aside (_disable_current_modes)."""
    for mode in [*_get_current_dispatch_mode_stack(), *reversed(_RUNNING)]:
        if isinstance(mode, IndexValues) and t in mode.values:
            return mode._get(t)
    return None


class MetaKernels(TorchDispatchMode):
    """Answers a meta op from the outputs it gave for the same signature (see the module): the op, each argument's
    shape, strides, storage offset and dtype, or its value where it is not a tensor, and torch's default dtype (what a
    factory op given no dtype makes: transformers' layer in mla, built under bf16, got an earlier fp32 case's weight).
    Entered first, so that it sits below every other mode, next to the kernels: those above see every op as before.
    An op that views or mutates, takes a non-meta tensor or a value it cannot compare, or whose outputs are not fresh,
    whole storages of their layout (an offset, a larger buffer, two outputs sharing one, one shared with an input)
    always runs its kernel. The signatures are kept for the process (`SIGNATURES`): a plan's cases share most of
    them."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _views_or_mutates(func):
            return func(*args, **kwargs)
        try:
            # the default dtype too: a factory op without a dtype (nn.Linear's torch.empty) takes it in its kernel
            key = (func, _signature_of(args), _signature_of(tuple(sorted(kwargs.items()))), torch.get_default_dtype())
        except TypeError:  # an argument it cannot compare: the kernel decides
            return func(*args, **kwargs)
        layouts = SIGNATURES.get(key)
        if layouts is not None:
            if layouts is _UNCACHEABLE:
                return func(*args, **kwargs)
            single, layouts = layouts
            outs = tuple(torch.empty_strided(shape, stride, dtype=dtype, device="meta") for shape, stride, dtype in
                         layouts)
            return outs[0] if single else outs
        out = func(*args, **kwargs)
        inputs = {t.untyped_storage()._cdata for t in tensors_in((args, kwargs))}
        SIGNATURES[key] = _layouts(out, inputs)
        return out


_UNCACHEABLE = object()
SIGNATURES: dict = {}
"""(op, argument metadata, default dtype) -> (one tensor or a tuple, [(shape, stride, dtype)] of the outputs), or
_UNCACHEABLE."""
_VALUES = (type(None), bool, int, float, str, torch.dtype, torch.device, torch.layout, torch.memory_format)


@functools.lru_cache(maxsize=None)
def _views_or_mutates(func) -> bool:
    schema = func._schema
    return func.is_view or schema.is_mutable or any(r.alias_info is not None for r in schema.returns)


def _signature_of(x):
    if isinstance(x, torch.Tensor):
        if x.device.type != "meta" or x.layout != torch.strided or x.is_nested or type(x) not in (torch.Tensor,
                                                                                                   torch.nn.Parameter):
            raise TypeError("not a plain meta tensor")
        return (tuple(x.shape), x.stride(), x.storage_offset(), x.dtype)
    if isinstance(x, (list, tuple)):
        return (type(x), tuple(_signature_of(i) for i in x))
    if isinstance(x, _VALUES):
        return (type(x), x)
    raise TypeError(f"cannot compare a {type(x).__name__}")


def _layouts(out, inputs: set[int]):
    """What MetaKernels keeps of an op's outputs: see the class. `inputs`: the op's input storages, which an output
    may share without its schema saying so (_unsafe_view)."""
    single = isinstance(out, torch.Tensor)
    outs = (out,) if single else out
    if not isinstance(outs, (tuple, list)) or not outs or not all(
            isinstance(o, torch.Tensor) and _meta(o) and o.layout == torch.strided and o.storage_offset() == 0
            for o in outs):
        return _UNCACHEABLE
    layouts = [(tuple(o.shape), o.stride(), o.dtype) for o in outs]
    whole = all(torch.empty_strided(shape, stride, dtype=dtype, device="meta").untyped_storage().nbytes() ==
                o.untyped_storage().nbytes() for o, (shape, stride, dtype) in zip(outs, layouts))
    storages = {o.untyped_storage()._cdata for o in outs}
    if not whole or len(storages) < len(outs) or storages & inputs:
        return _UNCACHEABLE
    return single, layouts


def _meta_device(device) -> bool:
    return device is not None and torch.device(device).type == "meta"


@contextmanager
def fake_ranks(world_size: int):
    """A distributed suite's step planned as rank 0 of `world_size` ranks, in this one process: torch's fake process
    group (its collectives complete at once and move nothing; on meta there is nothing to move), and FSDP2 let onto the
    meta device, which it refuses as it stands. Three of FSDP2's private checks are bypassed while the plan runs: the
    one that asks for parameters to be materialized first, the device it takes from the mesh (the mesh's CPU, where it
    would copy meta shards into CPU buffers; meta here), and the stream module of that device (torch.cpu's no-op
    streams stand for meta's). Checked against real gloo runs at smoke size (tests/suites/test_fsdp_checkpointing.py):
    every variant's peak to the byte at one rank; at two, the floor of each rank's peak (a real reduce-scatter still
    out holds its block's gradients a while longer). A torch without those names fails the step, and the case is not
    plannable with the reason."""
    import torch.distributed as dist

    if dist.is_initialized():
        raise NotPlannable("a distributed case is planned in a fake process group of its own, which cannot be made "
                           "inside a running one (a torchrun rank's): `bench plan` plans it")
    from torch.testing._internal.distributed.fake_pg import FakeStore  # registers the "fake" backend

    patches = []
    try:
        from torch.distributed.fsdp._fully_shard import _fsdp_param_group, _fully_shard

        patches = [(_fsdp_param_group.FSDPParamGroup, "_validate_no_meta_params", lambda self: None),
                   (_fully_shard, "_get_device_from_mesh", lambda mesh: torch.device("meta"))]
    except ImportError:  # no FSDP2 in this torch: a suite that needs it fails its step, and says so
        pass
    patches.append((torch, "meta", torch.cpu))  # device_mesh._get_device_handle("meta") is getattr(torch, "meta")
    saved = [(owner, name, owner.__dict__.get(name, _ABSENT)) for owner, name, _ in patches]
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world_size)
    try:
        for owner, name, value in patches:
            setattr(owner, name, value)
        yield
    finally:
        for owner, name, value in saved:
            if value is _ABSENT:
                delattr(owner, name)
            else:
                setattr(owner, name, value)
        dist.destroy_process_group()


_ABSENT = object()


def current_stream() -> int:
    """The stream FSDP2 has current on meta (fake_ranks gives it torch.cpu's stand-in streams): its all-gathers and
    reduce-scatters allocate on streams of their own, whose blocks the CUDA caching allocator keeps apart. Each
    stand-in is a stream of its own, where CUDA hands out its 32 streams of a priority in turn: past 10 FSDP2 roots
    (3 streams each), the roots' streams share CUDA streams, and so their blocks, which this keeps apart. At one rank
    only the reduce-scatter streams allocate and no two of those coincide (the H100 runs, to the byte); at more,
    a rank's planned peak can be above CUDA's by what sharing would have reused."""
    return id(torch.cpu.current_stream())


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """What this rank holds of `t`: a DTensor's local tensor (FSDP2's shards and their gradients), else `t`."""
    local = getattr(t, "_local_tensor", None)
    return local if isinstance(local, torch.Tensor) else t


def unsharded(modules) -> list[torch.Tensor]:
    """The unsharded parameters FSDP2 all-gathers for the units among `modules` (and their all-gather outputs, whose
    storage they view): autograd saves them for backward, but FSDP2 frees their storage after each unit's forward and
    gathers into it again for the backward, so they are no activation the step keeps. Those made so far (FSDP2 makes
    them at a unit's first all-gather: the warm-up's); none for modules FSDP2 does not shard."""
    out = []
    for module in modules:
        for m in module.modules():
            state = m._get_fsdp_state() if hasattr(m, "_get_fsdp_state") else None
            for param in getattr(getattr(state, "_fsdp_param_group", None), "fsdp_params", ()):
                out.extend(t for t in getattr(param, "all_gather_outputs", ()) if isinstance(t, torch.Tensor))
                if isinstance(getattr(param, "_unsharded_param", None), torch.Tensor):
                    out.append(param._unsharded_param)
    return out
