import torch
import torch.nn.functional as F

from bench.flops import flop_counter_mode


def test_cpu_fused_attention_is_counted_like_cuda():
    B, H, S, D = 2, 3, 42, 16
    q, k, v = (torch.randn(B, H, S, D, requires_grad=True) for _ in range(3))
    with flop_counter_mode() as counter:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    forward = counter.get_total_flops()
    assert forward == 2 * (2 * B * H * S * S * D)  # Q @ K^T and P @ V, 2 FLOPs per multiply-add
    with flop_counter_mode() as counter:
        out.sum().backward()
    # backward: the scores recomputed, then dP, dV, dQ, dK: five matmuls of the forward's two
    assert counter.get_total_flops() == 5 * forward // 2
