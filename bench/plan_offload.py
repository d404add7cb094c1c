"""Activation offload on the meta device as the target runs it (`target_offload`, for bench.plan).

torch.autograd.graph.save_on_cpu packs every tensor saved for backward into host memory and unpacks it back at its
backward. On meta its pack cannot copy (a meta tensor has no data), so a planned step that offloads would fail. While
a plan runs, save_on_cpu's hooks on meta tensors do what the target's would to the target's memory:

- a CUDA target: the saved tensor goes to host memory, which the GPU's tracker does not count (a meta tensor made
  with the dispatch modes off), so autograd holds nothing on the device for it; at backward it comes back as a fresh
  contiguous device copy of its size (`.to(device)` of the host copy), counted where backward makes it and freed
  after the node that used it;
- a CPU target: the hooks hand the tensor itself on, as save_on_cpu does there (`.cpu()` of a CPU tensor is the
  tensor).

Tensors with data (a plan's index values on the CPU) take save_on_cpu's own hooks. Checked against the H100 run's
full-size checkpointing offload case (README, "Planning a GPU run").
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch.utils._python_dispatch import _disable_current_modes

from bench.plan_meta import _meta


@contextmanager
def target_offload(target: str):
    """torch.autograd.graph.save_on_cpu, while active, offloading meta tensors as `target` ("cpu" or "cuda") would."""
    original = torch.autograd.graph.save_on_cpu
    to_host = torch.device(target).type != "cpu"

    class SaveOnHost(torch.autograd.graph.saved_tensors_hooks):
        def __init__(self, pin_memory: bool = False, device_type: str = "cuda"):
            real = original(pin_memory, device_type)  # the hooks for tensors with data

            def pack(tensor):
                if not _meta(tensor):
                    return False, real.pack_hook(tensor)
                if not to_host:
                    return True, tensor
                with _disable_current_modes():  # host memory: none of the device's
                    return True, torch.empty(tensor.size(), dtype=tensor.dtype, device="meta")

            def unpack(packed):
                planned, value = packed
                if not planned:
                    return real.unpack_hook(value)
                return value.clone() if to_host else value  # the copy back to the device, at its backward

            super().__init__(pack, unpack)

    torch.autograd.graph.save_on_cpu = SaveOnHost
    try:
        yield
    finally:
        torch.autograd.graph.save_on_cpu = original
