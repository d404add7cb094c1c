"""The target's optimizer implementation for a step on the meta device (`target_foreach`, for bench.plan).

torch.optim's optimizers built with foreach=None (the default) take the foreach implementation where every
parameter is on a device with foreach kernels (CUDA), and the per-tensor loop elsewhere (the CPU, meta):
torch.optim.optimizer._default_to_fused_or_foreach. The two differ in memory: foreach Adam/AdamW computes
sqrt(exp_avg_sq) for every parameter of a group at once (torch._foreach_sqrt, then in-place), a temporary of all the
parameters' bytes, where the loop holds one parameter's at a time. On a model whose step peaks in the optimizer
(mtp at quick size) that is the difference: 0.7-1.3 MiB of the H100 run's measured peaks, the parameters' fp32 bytes.
For a CUDA target, meta counts as a foreach device while a plan runs, so the planned step takes the CUDA path (the
foreach ops run on meta through their per-tensor fallbacks, whose outputs are the kernels' own).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.utils._foreach_utils as foreach_utils
from torch.optim import optimizer as optimizer_module  # torch.optim's __init__ drops the name `optimizer`


@contextmanager
def target_foreach(target: str):
    """torch's foreach-or-loop choice on meta tensors made as `target` ("cpu" or "cuda") makes it."""
    original = foreach_utils._get_foreach_kernels_supported_devices
    if torch.device(target).type != "cuda":
        yield
        return

    def supported() -> list[str]:
        return [*original(), "meta"]

    # torch.optim.optimizer imported the function by name; clip_grad_norm_ and the rest read _foreach_utils'
    foreach_utils._get_foreach_kernels_supported_devices = supported
    optimizer_module._get_foreach_kernels_supported_devices = supported
    try:
        yield
    finally:
        foreach_utils._get_foreach_kernels_supported_devices = original
        optimizer_module._get_foreach_kernels_supported_devices = original
