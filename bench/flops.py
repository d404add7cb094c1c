"""FLOP counting: torch.utils.flop_counter (matmuls, convolutions, attention; 2 FLOPs a multiply-add; every other op
counts none), with corrections for attention and one formula it lacks.

- torch has formulas for the CUDA SDPA kernels only; without the CPU ones, attention counts zero FLOPs on CPU and
  every CPU ratio or TFLOP/s figure silently covers the matmuls alone.
- torch counts causal attention as dense. A causal kernel computes only the lower triangle of the S x S scores, so
  it is counted here as half (as FlashAttention reports its FLOP/s); dense counts would overstate achieved TFLOP/s
  by the attention share's half (~14% for a 2048-wide model at seq 4096).
- Grouped-query attention (`enable_gqa`: key and value with fewer heads than the query) is counted as the kernel
  computes it, each key/value head broadcast to its query heads. torch 2.11's formulas refuse those shapes (an
  AssertionError that stopped a plan of mla's gqa and mqa); later versions count them the same way as here.

- Varlen flash attention (aten._flash_attention_forward and _backward: nested-jagged SDPA on CUDA, which
  bench.plan_attention routes nested tensors to) is counted per sequence from the offsets' values, causal as half
  as above. torch counts every sequence at the longest one's length wherever it cannot read the offsets (on meta),
  and dense: rmpad's nested case at full size counted 113 TFLOPs where its segments case, the same attention over
  the same 65,536 tokens, counted 19.7. On meta the offsets' values are those bench.plan_meta.IndexValues keeps.

And one formula torch lacks: torch._grouped_mm's (moe's grouped_mm dispatch), which counted zero FLOPs.
"""

from __future__ import annotations

import math
from collections import Counter

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


def _varlen_flash(packet, backward: bool):
    """aten._flash_attention_forward's or _backward's FLOPs: torch's per-sequence count (sdpa_flop_count or
    sdpa_backward_flop_count on [1, H, n, D] shapes) summed over the sequences the cumulative lengths give, with key
    and value broadcast to the query's heads (GQA), and half that where causal, as `_causal_aware` counts an SDPA call
    (of one sequence, or a batch of equal ones: the same sum). Without offsets: the [B, S, H, D] batch's B sequences."""
    names = [a.name for a in packet.default._schema.arguments]
    count = flop_counter.sdpa_backward_flop_count if backward else flop_counter.sdpa_flop_count

    def formula(*args, out_val=None, **kwargs):
        a = {**dict(zip(names, args)), **kwargs}
        q, v = a["query"], a["value"]
        if a.get("cum_seq_q") is None:  # dense [B, S, H, D]
            heads, pairs = q.shape[2], [(q.shape[1], a["key"].shape[1])] * q.shape[0]
        else:  # values [T, H, D] of the sequences the offsets bound
            heads = q.shape[1]
            pairs = zip(_lengths(a["cum_seq_q"], a["max_q"]), _lengths(a["cum_seq_k"], a["max_k"]), strict=True)
        total = 0
        for (sq, sk), n in Counter(pairs).items():  # full size: thousands of sequences, far fewer lengths
            shapes = (1, heads, sq, q.shape[-1]), (1, heads, sk, q.shape[-1]), (1, heads, sk, v.shape[-1])
            total += n * count(*(((1, heads, sq, v.shape[-1]),) if backward else ()), *shapes)
        return total // 2 if a.get("is_causal") else total

    formula._get_raw = True
    return formula


def _lengths(offsets, max_len: int) -> list[int]:
    """The sequence lengths cumulative `offsets` give: on meta, from the values the running plan keeps beside them
    (bench.plan_meta.index_value); where it keeps none, torch's worst case (every sequence `max_len` long)."""
    if offsets.device.type == "meta":
        from bench.plan_meta import index_value

        values = index_value(offsets)
        if values is not None:
            offsets = values
    return flop_counter._offsets_to_lengths(offsets, max_len)


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
FORMULAS.update({packet: _varlen_flash(packet, name.endswith("backward"))
                 for name in ("_flash_attention_forward", "_flash_attention_backward")
                 if (packet := getattr(aten, name, None)) is not None})
if hasattr(aten, "_grouped_mm"):
    FORMULAS[aten._grouped_mm] = _grouped_mm_flop


def flop_counter_mode() -> flop_counter.FlopCounterMode:
    """A FlopCounterMode (display off) with attention counted on CPU and causal attention as half; read
    `.get_total_flops()`."""
    return flop_counter.FlopCounterMode(display=False, custom_mapping=FORMULAS)
