"""Activation offload on the meta device as the target runs it (`target_offload`, for bench.plan).

torch.autograd.graph.save_on_cpu packs every tensor saved for backward into host memory and unpacks it back at its
backward. On meta its pack cannot copy (a meta tensor has no data), so a planned step that offloads would fail. While
a plan runs, save_on_cpu does on meta tensors what it does on the target:

- a CUDA target: each saved tensor is copied to host memory, which the GPU's tracker does not count (a meta tensor
  made with the dispatch modes off), so autograd holds nothing on the device for it; at each backward that reads it,
  a device copy of its size comes back (`.to(device)` of the host copy, numel x itemsize whatever its strides),
  counted where backward makes it. Every saved tensor is copied, parameters (the matmuls' weights) included, once per
  save. The host copies alive at once are counted apart (`Offload.peak_host_bytes`): pinned host memory, which no
  fits verdict checks (53.4 GiB at full-size checkpointing, batch 8);
- a CPU target: save_on_cpu installs no hooks, as its `.cpu()` of a CPU tensor is the tensor itself: the tensors are
  saved as without it, and the plan's activations count them.

Tensors with data (a plan's index values on the CPU) take save_on_cpu's own hooks. An index tensor offloaded on a
CUDA target loses its values on meta: a step that reads them after backward unpacks it is not plannable, and says so.
Code that bound save_on_cpu at import (torch's checkpoint_wrapper.offload_wrapper) is not rerouted: on meta its
copy fails, and the case is not plannable. Checked against the H100 run's full-size checkpointing offload case, to
the byte (README, "Planning a GPU run").
"""

from __future__ import annotations

import contextlib
import weakref
from contextlib import contextmanager

import torch
from torch.utils._python_dispatch import _disable_current_modes

from bench.plan_meta import _meta


class Offload:
    """The host memory a plan's offloaded copies hold: `host_bytes` now, `peak_host_bytes` the most at once."""

    def __init__(self):
        self.host_bytes = self.peak_host_bytes = 0

    def _hold(self, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        self.host_bytes += size
        self.peak_host_bytes = max(self.peak_host_bytes, self.host_bytes)
        weakref.finalize(tensor, self._release, size)

    def _release(self, size: int) -> None:
        self.host_bytes -= size


@contextmanager
def target_offload(target: str):
    """torch.autograd.graph.save_on_cpu, while active, offloading meta tensors as `target` ("cpu" or "cuda") would;
    yields the Offload that counts the host copies."""
    original = torch.autograd.graph.save_on_cpu
    offload = Offload()

    class SaveOnHost(torch.autograd.graph.saved_tensors_hooks):
        def __init__(self, pin_memory: bool = False, device_type: str = "cuda"):
            real = original(pin_memory, device_type)  # the hooks for tensors with data

            def pack(tensor):
                if not _meta(tensor):
                    return False, real.pack_hook(tensor)
                with _disable_current_modes():  # host memory: none of the device's
                    host = torch.empty(tensor.size(), dtype=tensor.dtype, device="meta")
                offload._hold(host)
                return True, host

            def unpack(packed):
                planned, value = packed
                return value.clone() if planned else real.unpack_hook(value)  # the copy back, at its backward

            super().__init__(pack, unpack)

    class SaveInPlace(contextlib.nullcontext):  # a CPU target: `.cpu()` of a CPU tensor is the tensor
        def __init__(self, pin_memory: bool = False, device_type: str = "cuda"):
            super().__init__()

    torch.autograd.graph.save_on_cpu = SaveInPlace if torch.device(target).type == "cpu" else SaveOnHost
    try:
        yield offload
    finally:
        torch.autograd.graph.save_on_cpu = original
