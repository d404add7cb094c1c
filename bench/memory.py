"""Memory measurement: CUDA allocator peaks, a device-agnostic live-tensor tracker, and saved-for-backward bytes.

The tracker is written here because torch has no public, device-agnostic equivalent: the CUDA allocator's statistics
exist only on CUDA, and torch.distributed._tools.mem_tracker is private and organised around modules. On CPU the
tracker is exact and deterministic (it counts storage bytes, not allocator blocks), so tests can assert its numbers.
"""

from __future__ import annotations

import weakref
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode


def device_key(device: str | torch.device) -> str:
    """'cuda' -> 'cuda:<current>', 'cpu' -> 'cpu': one key per physical memory pool."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return str(device)


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


def _storages(tree) -> list[torch.UntypedStorage]:
    return [t.untyped_storage() for t in tensors_in(tree) if t.layout == torch.strided]


class TensorMemoryTracker(TorchDispatchMode):
    """Counts the bytes of every tensor storage created while active, per device, until it is freed.

    A storage is counted once however many views share it; storages that existed before entry (parameters,
    inputs) are not counted, nor are views of them. `live_bytes` is what is held now, `peak_bytes` the most held at
    once since entry or the last `reset_peak`.
    """

    # Higher-order operators (FlexAttention, torch.cond) run whole while the mode is off: their outputs are counted,
    # their transient internals are not.
    supports_higher_order_operators = True

    def __init__(self):
        super().__init__()
        self._live: dict[str, int] = defaultdict(int)
        self._peak: dict[str, int] = defaultdict(int)
        self._seen: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def live_bytes(self, device: str | torch.device) -> int:
        return self._live[device_key(device)]

    def peak_bytes(self, device: str | torch.device) -> int:
        return self._peak[device_key(device)]

    def reset_peak(self) -> None:
        for key, live in self._live.items():
            self._peak[key] = live

    def track(self, storage: torch.UntypedStorage) -> None:
        if storage in self._seen or storage.nbytes() == 0:
            return
        key, nbytes = device_key(storage.device), storage.nbytes()
        self._seen[storage] = nbytes
        self._live[key] += nbytes
        self._peak[key] = max(self._peak[key], self._live[key])
        weakref.finalize(storage, self._free, key, nbytes)

    def _free(self, key: str, nbytes: int) -> None:
        self._live[key] -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        before = {id(s) for s in _storages((args, kwargs))}
        out = func(*args, **(kwargs or {}))
        for storage in _storages(out):
            if id(storage) not in before:  # an output aliasing an input (a view, out=, in-place) is not new memory
                self.track(storage)
        return out


class SavedTensorBytes(torch.autograd.graph.saved_tensors_hooks):
    """Bytes of the tensors autograd saves for backward while active, counted once per storage, per device.

    Storages of `ignore` (e.g. the parameters) are not activations and are left out. Checkpointing and offloading
    install hooks of their own that take precedence, so under them this counts only what they hand on; to measure
    what a checkpointed model holds after forward, use TensorMemoryTracker.live_bytes instead.
    """

    def __init__(self, ignore=()):
        self.bytes: dict[str, int] = defaultdict(int)
        self._seen: weakref.WeakSet = weakref.WeakSet(s for s in _storages(list(ignore)))
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


def peak_bytes(fn, device: str | torch.device) -> int:
    """Peak bytes one call of `fn` allocates on `device` beyond what was live before: the CUDA allocator's peak on
    CUDA, the live-tensor tracker's (exact) elsewhere."""
    if torch.device(device).type == "cuda":
        with cuda_peak(device) as mem:
            fn()
        return mem.peak_bytes
    with TensorMemoryTracker() as tracker:
        fn()
    return tracker.peak_bytes(device)
