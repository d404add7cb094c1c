"""FLOP counting: torch.utils.flop_counter with two corrections for attention.

- torch has formulas for the CUDA SDPA kernels only; without the CPU ones, attention counts zero FLOPs on CPU and
  every CPU ratio or TFLOP/s figure silently covers the matmuls alone.
- torch counts causal attention as dense. A causal kernel computes only the lower triangle of the S x S scores, so
  it is counted here as half (as FlashAttention reports its FLOP/s); dense counts would overstate achieved TFLOP/s
  by the attention share's half (~14% for a 2048-wide model at seq 4096).
- Grouped-query attention (`enable_gqa`: key and value with fewer heads than the query) is counted as the kernel
  computes it, each key/value head broadcast to its query heads. torch 2.11's formulas refuse those shapes (an
  AssertionError that stopped a plan of mla's gqa and mqa); later versions count them the same way as here.
"""

from __future__ import annotations

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


FORMULAS = {
    packet: _causal_aware(packet, dense)
    for name, dense in _ATTENTION.items()
    if (packet := getattr(aten, name, None)) is not None
}


def flop_counter_mode() -> flop_counter.FlopCounterMode:
    """A FlopCounterMode (display off) with attention counted on CPU and causal attention as half; read
    `.get_total_flops()`."""
    return flop_counter.FlopCounterMode(display=False, custom_mapping=FORMULAS)
