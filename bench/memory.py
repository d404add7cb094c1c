"""Memory measurement: CUDA allocator peaks, a device-agnostic live-tensor tracker, and saved-for-backward bytes.

The tracker is written here because torch has no public, device-agnostic equivalent: the CUDA allocator's statistics
exist only on CUDA, and torch.distributed._tools.mem_tracker is private and organised around modules. On CPU the
tracker is exact and deterministic (it counts storage bytes, not allocator blocks), so tests can assert its numbers.
"""

from __future__ import annotations

import threading
import weakref
from collections import defaultdict
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch.utils._python_dispatch import TorchDispatchMode, _get_current_dispatch_mode_stack

from bench.memory_ops import cpu_scratch, decomposes, replaced, storages, tensors_in, wraps_float8

if TYPE_CHECKING:
    from bench.plan_alloc import CachingAllocatorModel


def device_key(device: str | torch.device) -> str:
    """'cuda' -> 'cuda:<current>', 'cpu' -> 'cpu': one key per physical memory pool."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return str(device)


class TensorMemoryTracker(TorchDispatchMode):
    """Counts the bytes of every tensor storage created while active, per device, until it is freed.

    A storage is counted once however many views share it; storages that existed before entry (parameters,
    inputs) are not counted, nor are views of them. A storage resized in place (FSDP2 frees and re-allocates its
    unsharded parameters so) counts its new bytes from the resize (`resized`). `live_bytes` is what is held now,
    `peak_bytes` the most held at once since entry or the last `reset_peak`.

    Being a dispatch mode, it changes what autograd runs: with a mode active (or on meta tensors) every tensor is
    "subclass-like" (at::isTensorSubclassLike), and backward takes the out-of-place twin of an in-place op it would
    otherwise run: the engine sums two gradients of one input as `old + new` instead of `old.add_(new)` (which it
    does unobserved when grad mode is off, as it is unless create_graph is asked for), index and gather backward
    fill their zeros with `index_put` and `scatter_add` instead of `_index_put_impl_` and `scatter_add_`. Each twin
    holds its input and its output at once, where the program unobserved holds one (moe dispatch's loop at quick
    size in bf16: +1 MiB, its w1 gradient, over the profiler's peak of the same step without a mode). So an output
    of such a twin (IN_PLACE_TWINS) in backward that replaces a temporary of its layout is counted as the in-place
    op would be, when the temporary is freed before the next op: no new peak. Under inference_mode a composite op
    reaches the mode whole; it is run as its decomposition (runs_decomposed), whose temporaries every device holds.
    tests/bench/test_memory.py checks the step peaks against torch.profiler's allocator timeline, which needs no
    mode."""

    # Higher-order operators (FlexAttention, torch.cond) run whole while the mode is off: their outputs are counted,
    # their transient internals are not.
    supports_higher_order_operators = True

    def __init__(self, allocator: CachingAllocatorModel | None = None, host_builds: bool = True, scratch=None):
        """`allocator`: a model of the CUDA caching allocator fed every storage counted (bench.plan_alloc), for a
        plan's CUDA target. `host_builds`: whether a module made under `built_on_host` counts as it is made (a CPU,
        where it is built) or as each of its tensors copied to the device once it is built (a GPU). `scratch`:
        (func, args, kwargs, out) -> the bytes an op's kernel allocates for itself after its outputs, each freed as
        it returns (bench.plan_scratch for a CUDA target, bench.memory_ops.cpu_scratch for the CPU), counted for that
        moment."""
        super().__init__()
        self.allocator, self.host_builds, self.scratch = allocator, host_builds, scratch
        self._live: dict[str, int] = defaultdict(int)
        self._peak: dict[str, int] = defaultdict(int)
        self._seen: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # storage -> its _Held
        self._pending: tuple[str, int, weakref.ref, _Held, _Held] | None = None
        """(device, live bytes with it, the temporary it replaces, its _Held and the temporary's): a twin's output
        whose peak waits on that temporary, and whose allocator block is the temporary's if that is freed first."""
        self._deferred: list[_Held] = []
        """Frees while a twin is pending, given to the allocator model once the twin has its block (`_settle`)."""

    def live_bytes(self, device: str | torch.device) -> int:
        return self._live[device_key(device)]

    def peak_bytes(self, device: str | torch.device) -> int:
        self._settle()
        return self._peak[device_key(device)]

    def reset_peak(self) -> None:
        self._settle()
        for key, live in self._live.items():
            self._peak[key] = live

    def track(self, storage: torch.UntypedStorage, replaces: torch.UntypedStorage | None = None) -> None:
        """Count a new storage. `replaces`: the input an in-place op would have written into instead (see the
        class): the new bytes raise the peak only if that input is still held when the next op is dispatched."""
        self._settle()
        if storage in self._seen or storage.nbytes() == 0:
            return
        key, held = device_key(storage.device), _Held(storage.nbytes())
        self._seen[storage] = held
        self._live[key] += held.nbytes
        replaced = self._seen.get(replaces) if replaces is not None else None
        if replaced is not None and replaced.nbytes == held.nbytes:
            self._pending = (key, self._live[key], weakref.ref(replaces), held, replaced)
        else:
            self._peak[key] = max(self._peak[key], self._live[key])
            self._allocate(held)
        weakref.finalize(storage, self._free, key, held)

    def copied_to_device(self, module: torch.nn.Module) -> None:
        """Count each parameter and buffer of `module`, made under `built_on_host`, as a GPU receives them from
        Module.to: one at a time, a module's children before its own tensors (its _apply order)."""
        if self.host_builds:
            return  # counted as they were made
        for child in module.children():
            self.copied_to_device(child)
        for t in [*module._parameters.values(), *module._buffers.values()]:
            if t is not None:
                self.track(t.untyped_storage())

    def _take(self, key: str, nbytes: int):
        """Count `nbytes` more held on `key` now; their allocator block, if the tracker feeds a model."""
        self._live[key] += nbytes
        self._peak[key] = max(self._peak[key], self._live[key])
        return self.allocator.malloc(nbytes) if self.allocator is not None and nbytes else None

    def _allocate(self, held: _Held) -> None:
        if self.allocator is not None:
            held.block = self.allocator.malloc(held.nbytes)

    def settle(self) -> None:
        """Resolve a pending twin (see the class) now, before the figures are read outside an op."""
        self._settle()

    def __enter__(self):
        entered = super().__enter__()
        _watch_resizes(+1)
        return entered

    def __exit__(self, *exc):
        try:
            self._settle()  # no op follows: the frees it holds back reach the allocator model now
        finally:  # the mode and the resize patch undone even where settling fails
            try:
                out = super().__exit__(*exc)
            finally:
                _watch_resizes(-1)
        return out

    def resized(self, storage: torch.UntypedStorage, old: int, new: int) -> None:
        """A storage's bytes changed in place from `old` to `new` by Python's UntypedStorage.resize_, which no
        dispatch mode sees: FSDP2 frees and re-allocates its unsharded parameters so. Counted as the device does it:
        the new bytes taken while the old are still held, then the old given back. A storage this tracker never
        counted (made before it, or empty when made) is counted from a resize that gives it bytes. Not seen: a
        storage grown inside an op (Tensor.resize_, an out= into a smaller tensor), which no suite does."""
        self._settle()
        key, held = device_key(storage.device), self._seen.get(storage)
        if held is None:
            if old:
                return  # bytes from before the tracker: as a storage made before it, not counted
            held = self._seen[storage] = _Held(0)
            weakref.finalize(storage, self._free, key, held)
        block = held.block
        held.block = self._take(key, new)
        self._live[key] -= held.nbytes
        held.nbytes = new
        if block is not None:
            self.allocator.free(block)

    def _settle(self) -> None:
        if self._pending is not None:
            key, live, replaced, held, temporary = self._pending
            self._pending = None
            if replaced() is not None:  # still held: the program would have needed both as well
                self._peak[key] = max(self._peak[key], live)
                self._allocate(held)  # at the op, before the frees since: they are replayed below
            else:  # the in-place op writes where the temporary was: its block is the twin's
                held.block, temporary.block = temporary.block, None
            deferred, self._deferred = self._deferred, []
            for h in deferred:
                self._release(h)

    def _free(self, key: str, held: _Held) -> None:
        self._live[key] -= held.nbytes
        if self._pending is not None:
            self._deferred.append(held)  # its block may be the twin's, or come after the twin's in the allocator
        else:
            self._release(held)

    def _release(self, held: _Held) -> None:
        if held.block is not None:
            self.allocator.free(held.block)
            held.block = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self._settle()  # a twin's input is dropped, if at all, as the op returns: before the next op is dispatched
        kwargs = kwargs or {}
        if wraps_float8(args, kwargs):
            # A float8 training tensor's op (torchao's mm) runs torch._scaled_mm and its scaling inside the
            # subclass's own dispatch, where the mode, called first, would not see them: handing the op to the
            # subclass keeps the mode on for what it runs, and so counts _scaled_mm's CPU emulation (cpu_scratch)
            return NotImplemented
        if decomposes(func, args, kwargs):
            # Under inference_mode a composite op (linear, math attention) reaches a dispatch mode whole, and the
            # temporaries of its decomposition, which every device allocates, would go unseen: count its parts
            with self:
                out = func.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
        before = {id(s) for s in storages((args, kwargs))}
        out = func(*args, **kwargs)
        if _HOST_BUILDS[0] and not self.host_builds:
            return out  # on the host: counted when the module is copied to the device (copied_to_device)
        replaces = replaced(func, args, kwargs, out)
        for storage in storages(out):
            if id(storage) not in before:  # an output aliasing an input (a view, out=, in-place) is not new memory
                self.track(storage, replaces)
        if self.scratch is not None:
            sizes = self.scratch(func, args, kwargs, out)
            if sizes:
                self._transient(device_key(tensors_in(args)[0].device), sizes)
        return out

    def _transient(self, key: str, sizes: list[int]) -> None:
        """Bytes held for a moment: taken in order, given back in reverse."""
        self._settle()
        blocks = [self._take(key, n) for n in sizes]
        for n, block in zip(reversed(sizes), reversed(blocks)):
            if block is not None:
                self.allocator.free(block)
            self._live[key] -= n


_RESIZE = {"watchers": 0, "original": None, "patch": None}
_RESIZE_LOCK = threading.Lock()


def _watch_resizes(change: int) -> None:
    """UntypedStorage.resize_ reported to the active trackers while any is entered (`TensorMemoryTracker.resized`).
    Patched rather than observed: a storage's resize reaches no dispatch mode. The patch is put back only where it
    is still ours (another tool may have patched over it since)."""
    with _RESIZE_LOCK:
        if _RESIZE["watchers"] == 0 and change > 0:
            _RESIZE["original"] = torch.UntypedStorage.__dict__.get("resize_", _ABSENT)
            inherited = torch.UntypedStorage.resize_

            def resize_(storage, size):
                old = storage.nbytes()
                out = inherited(storage, size)
                new = storage.nbytes()
                if new != old:
                    told = set()
                    for mode in _get_current_dispatch_mode_stack():
                        if isinstance(mode, TensorMemoryTracker) and id(mode) not in told:
                            told.add(id(mode))
                            mode.resized(storage, old, new)
                return out

            _RESIZE["patch"] = torch.UntypedStorage.resize_ = resize_
        _RESIZE["watchers"] += change
        if _RESIZE["watchers"] == 0 and torch.UntypedStorage.__dict__.get("resize_") is _RESIZE["patch"]:
            if _RESIZE["original"] is _ABSENT:
                del torch.UntypedStorage.resize_
            else:
                torch.UntypedStorage.resize_ = _RESIZE["original"]


_ABSENT = object()


class _Held:
    """A counted storage's bytes and, where the tracker feeds an allocator model, its block."""

    __slots__ = ("nbytes", "block")

    def __init__(self, nbytes: int):
        self.nbytes, self.block = nbytes, None


_HOST_BUILDS = [0]  # how many built_on_host blocks are open


def built_on_host(build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """build(), a module made and cast on the meta device, standing for one made on the host and moved to the device
    with Module.to (bench.suite.build_module): a tracker of a GPU's memory (host_builds=False) leaves out what build
    makes, the float32 weights a cast replaces included, and counts each tensor of the module as it is copied."""
    _HOST_BUILDS[0] += 1
    try:
        module = build()
    finally:
        _HOST_BUILDS[0] -= 1
    for mode in _get_current_dispatch_mode_stack():
        if isinstance(mode, TensorMemoryTracker):
            mode.copied_to_device(module)
    return module


class SavedTensorBytes(torch.autograd.graph.saved_tensors_hooks):
    """Bytes of the tensors autograd saves for backward while active, counted once per storage, per device.

    Storages of `ignore` (e.g. the parameters) are not activations and are left out. Checkpointing and offloading
    install hooks of their own that take precedence, so under them this counts only what they hand on; to measure
    what a checkpointed model holds after forward, use TensorMemoryTracker.live_bytes instead.
    """

    def __init__(self, ignore=()):
        self.bytes: dict[str, int] = defaultdict(int)
        self._seen: weakref.WeakSet = weakref.WeakSet(s for s in storages(list(ignore)))
        super().__init__(self._pack, lambda t: t)

    def __enter__(self) -> SavedTensorBytes:
        super().__enter__()
        return self

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.layout == torch.strided:
            storage = tensor.untyped_storage()
            if storage not in self._seen:
                self._seen.add(storage)
                self.bytes[device_key(storage.device)] += storage.nbytes()
        return tensor

    def total(self, device: str | torch.device) -> int:
        return self.bytes[device_key(device)]


@dataclass
class CudaPeak:
    """Allocator bytes over the baseline at entry: `peak_bytes` the most allocated at once, `end_bytes` at exit."""

    device: str
    baseline_bytes: int = 0
    peak_bytes: int = 0
    end_bytes: int = 0


@contextmanager
def cuda_peak(device: str | torch.device):
    """Peak CUDA allocator bytes above what was allocated at entry (reset_peak_memory_stats, max_memory_allocated)."""
    device = device_key(device)
    torch.cuda.synchronize(device)
    result = CudaPeak(device, baseline_bytes=torch.cuda.memory_allocated(device))
    torch.cuda.reset_peak_memory_stats(device)
    try:
        yield result
    finally:
        torch.cuda.synchronize(device)
        result.peak_bytes = torch.cuda.max_memory_allocated(device) - result.baseline_bytes
        result.end_bytes = torch.cuda.memory_allocated(device) - result.baseline_bytes


def peak_bytes(fn, device: str | torch.device, clear=None) -> int:
    """Peak bytes one call of `fn` allocates on `device` beyond what was live before: the CUDA allocator's peak on
    CUDA, the live-tensor tracker's (exact) elsewhere.

    `clear` (a Workload's) runs first, outside the window: it frees what fn would free of what was live before it (the
    previous step's gradients). The two counters differ there: the allocator nets such frees out of its peak, the
    tracker never sees them. A training step that set its gradients to None inside the window measured its peak
    without them on CUDA and with them on the CPU and in the plan (moe dispatch's grouped_mm at quick size: 1.1 MiB
    on an H100, 2.6 MiB in the plan)."""
    if clear is not None:
        clear()
    if torch.device(device).type == "cuda":
        with cuda_peak(device) as mem:
            fn()
        return mem.peak_bytes
    with TensorMemoryTracker(scratch=cpu_scratch if torch.device(device).type == "cpu" else None) as tracker:
        fn()
    return tracker.peak_bytes(device)
