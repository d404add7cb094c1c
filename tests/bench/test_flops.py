import pytest
import torch
import torch.nn.functional as F

from bench.flops import flop_counter_mode


@pytest.mark.parametrize("is_causal, share", [(False, 1.0), (True, 0.5)])
def test_attention_is_counted_on_cpu_and_causal_as_half(is_causal, share):
    B, H, S, D = 2, 3, 42, 16
    q, k, v = (torch.randn(B, H, S, D, requires_grad=True) for _ in range(3))
    with flop_counter_mode() as counter:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)
    dense = 2 * (2 * B * H * S * S * D)  # Q @ K^T and P @ V, 2 FLOPs per multiply-add
    assert counter.get_total_flops() == dense * share
    with flop_counter_mode() as counter:
        out.sum().backward()
    # backward: the scores recomputed, then dP, dV, dQ, dK: five matmuls of the forward's two
    assert counter.get_total_flops() == 5 * dense // 2 * share


def test_grouped_query_attention_is_counted_as_its_key_value_heads_broadcast():
    # 8 query heads over 2 key/value heads costs what 8 over 8 does (torch 2.11's formula refused these shapes)
    B, S, D = 2, 42, 16
    q = torch.randn(B, 8, S, D, requires_grad=True)
    k, v = (torch.randn(B, 2, S, D, requires_grad=True) for _ in range(2))
    with flop_counter_mode() as counter:
        out = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    dense = 2 * (2 * B * 8 * S * S * D)
    assert counter.get_total_flops() == dense
    with flop_counter_mode() as counter:
        out.sum().backward()
    assert counter.get_total_flops() == 5 * dense // 2


def test_matmuls_are_torchs_count():
    a, b = torch.randn(6, 42), torch.randn(42, 123)
    with flop_counter_mode() as counter:
        a @ b
    assert counter.get_total_flops() == 2 * 6 * 42 * 123


@pytest.mark.parametrize("layout", ["2d x 3d", "3d x 2d", "3d x 3d"])
def test_grouped_mm_counts_every_group_forward_and_backward(layout):
    # torch has no formula for torch._grouped_mm (moe's grouped_mm dispatch counted zero FLOPs); on meta, shapes only.
    # 2D x 3D: rows split by the offsets, each times its group's [K, N]; 3D x 2D: columns split, each group's [M, K]
    # times them; 3D x 3D: batched. The backward's weight gradient of 2D x 3D is the 2D x 2D layout, whose groups
    # split the shared dimension. M, K and N count the whole problem: 2 M K N FLOPs forward in every layout.
    E, M, K, N = 4, 64, 16, 32
    meta = {"device": "meta", "dtype": torch.bfloat16}
    a = {"2d x 3d": (M, K), "3d x 2d": (E, M, K), "3d x 3d": (E, M // E, K)}[layout]
    a = torch.empty(*a, **meta)
    b = torch.empty(N, K, **meta).t() if layout == "3d x 2d" else torch.empty(E, N, K, **meta).transpose(-2, -1)
    a.requires_grad_(), b.requires_grad_()
    offs = None if layout == "3d x 3d" else torch.empty(E, dtype=torch.int32, device="meta")
    with flop_counter_mode() as counter:
        out = torch._grouped_mm(a, b, offs)
    assert out.shape == {"2d x 3d": (M, N), "3d x 2d": (M, N), "3d x 3d": (E, M // E, N)}[layout]
    assert counter.get_total_flops() == 2 * M * K * N
    with flop_counter_mode() as counter:
        out.backward(torch.empty_like(out))
    assert counter.get_total_flops() == 2 * (2 * M * K * N)  # the data and the weight gradients
