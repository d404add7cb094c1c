"""FLOP counting: torch.utils.flop_counter, plus the fused CPU attention kernels it has no formula for."""

from __future__ import annotations

import torch
from torch.utils import flop_counter

aten = torch.ops.aten

# torch registers FLOP formulas for the CUDA SDPA kernels only; without these, attention counts zero FLOPs on CPU and
# every CPU ratio or TFLOP/s figure silently covers the matmuls alone. Same shapes, same formula (non-causal, as
# torch counts on CUDA).
_CPU_ATTENTION = {
    "_scaled_dot_product_flash_attention_for_cpu": flop_counter.sdpa_flop,
    "_scaled_dot_product_flash_attention_for_cpu_backward": flop_counter.sdpa_backward_flop,
}
EXTRA_FORMULAS = {
    getattr(aten, name): formula.__wrapped__  # the shape-level formula; FlopCounterMode wraps it again
    for name, formula in _CPU_ATTENTION.items()
    if hasattr(aten, name) and getattr(aten, name) not in flop_counter.flop_registry
}


def flop_counter_mode() -> flop_counter.FlopCounterMode:
    """A FlopCounterMode (display off) that also counts fused attention on CPU; read `.get_total_flops()`."""
    return flop_counter.FlopCounterMode(display=False, custom_mapping=EXTRA_FORMULAS)
