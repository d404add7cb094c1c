"""FLOP counting: torch.utils.flop_counter with two corrections for attention.

- torch has formulas for the CUDA SDPA kernels only; without the CPU ones, attention counts zero FLOPs on CPU and
  every CPU ratio or TFLOP/s figure silently covers the matmuls alone.
- torch counts causal attention as dense. A causal kernel computes only the lower triangle of the S x S scores, so
  it is counted here as half (as FlashAttention reports its FLOP/s); dense counts would overstate achieved TFLOP/s
  by the attention share's half (~14% for a 2048-wide model at seq 4096).
- Grouped-query attention (`enable_gqa`: key and value with fewer heads than the query) is counted as the kernel
  computes it, each key/value head broadcast to its query heads. torch 2.11's formulas refuse those shapes (an
  AssertionError that stopped a plan of mla's gqa and mqa); later versions count them the same way as here.

And one formula torch lacks: torch._grouped_mm's (moe's grouped_mm dispatch), which counted zero FLOPs.
"""

from __future__ import annotations

import math

import torch
from torch.utils import flop_counter

aten = torch.ops.aten

# op name -> torch's shape-level formula for it (forward or backward); every FLOP of both is an S x S-sized matmul.
_ATTENTION = {
    "_scaled_dot_product_flash_attention": flop_counter.sdpa_flop,
    "_scaled_dot_product_efficient_attention": flop_counter.sdpa_flop,
    "_scaled_dot_product_cudnn_attention": flop_counter.sdpa_flop,
    "_scaled_dot_product_flash_attention_for_cpu": flop_counter.sdpa_flop,
    "_scaled_dot_product_flash_attention_backward": flop_counter.sdpa_backward_flop,
    "_scaled_dot_product_efficient_attention_backward": flop_counter.sdpa_backward_flop,
    "_scaled_dot_product_cudnn_attention_backward": flop_counter.sdpa_backward_flop,
    "_scaled_dot_product_flash_attention_for_cpu_backward": flop_counter.sdpa_backward_flop,
}


def _causal_aware(packet, dense):
    names = [a.name for a in packet.default._schema.arguments]
    index = names.index("is_causal") if "is_causal" in names else None
    query, key, value = (names.index(n) for n in ("query", "key", "value"))

    def formula(*args, out_val=None, **kwargs):
        heads, kv_heads = args[query].shape[1], args[key].shape[1]
        if kv_heads != heads:  # GQA: count key and value as broadcast to the query's heads, shapes alone
            args = list(args)
            for i in (key, value):
                b, _, s, d = args[i].shape
                args[i] = torch.empty(b, heads, s, d, device="meta")
        flops = dense(*args, out_val=out_val, **kwargs)  # `dense` takes raw tensors and reads their shapes
        causal = kwargs.get("is_causal", index is not None and len(args) > index and args[index])
        return flops // 2 if causal else flops

    formula._get_raw = True  # FlopCounterMode: pass tensors through, do not wrap in shape extraction again
    return formula


def _grouped_mm_flop(a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    """torch._grouped_mm (MoE experts' GEMMs, forward and backward), which torch's counter has no formula for (2.11-
    2.13): 2 x M x K x N summed over the groups. Two 2D operands split the shared K into groups ([M, K] @ [K, N] ->
    [G, M, N]), so the groups' K sum to K; in the other layouts (2D x 3D, 3D x 2D, 3D x 3D) every output element
    reduces the whole K. From shapes alone: where the offsets end short of the split dimension (offs[-1] < M), the
    rows past them are counted though not computed; MoE dispatch's offsets end at its rows."""
    if len(a_shape) == 2 and len(b_shape) == 2:
        return 2 * a_shape[0] * a_shape[1] * b_shape[1]
    return 2 * math.prod(out_shape) * a_shape[-1]


FORMULAS = {
    packet: _causal_aware(packet, dense)
    for name, dense in _ATTENTION.items()
    if (packet := getattr(aten, name, None)) is not None
}
if hasattr(aten, "_grouped_mm"):
    FORMULAS[aten._grouped_mm] = _grouped_mm_flop


def flop_counter_mode() -> flop_counter.FlopCounterMode:
    """A FlopCounterMode (display off) with attention counted on CPU and causal attention as half; read
    `.get_total_flops()`."""
    return flop_counter.FlopCounterMode(display=False, custom_mapping=FORMULAS)
