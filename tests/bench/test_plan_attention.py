"""The plan's attention: F.scaled_dot_product_attention on meta routed to the kernel the target would run
(bench.plan_attention), and the kernels a planned case's step took."""

import contextlib
import math

import pytest
import torch
import torch.nn.functional as F

from bench import plan_attention
from bench.plan import plan_case
from bench.plan_attention import kernel_choice, target_attention
from bench.plan_autocast import MetaAutocast
from bench.suite import NotPlannable, discover
from tests.optional import needs_cuda


@pytest.mark.usefixtures("flash_first")
def test_attention_on_meta_takes_the_targets_kernel():
    q = torch.empty(2, 4, 64, 16, device="meta")
    assert kernel_choice("cpu", q, q, q, None, 0.0, True, None, False) == "flash"
    wide = torch.empty(2, 4, 64, 24, device="meta")  # MLA-like: the value's width differs
    assert kernel_choice("cpu", wide, wide, q, None, 0.0, True, None, False) == "math"
    if not torch.cuda.is_available():  # the sm80+ rule: flash for 16-bit without a mask, else memory-efficient
        half = q.to(torch.bfloat16)
        mask = torch.empty(2, 1, 64, 64, device="meta", dtype=torch.bfloat16)
        assert kernel_choice("cuda", half, half, half, None, 0.0, True, None, False) == "flash"
        assert kernel_choice("cuda", half, half, half, mask, 0.0, False, None, False) == "efficient"
    q.requires_grad_()
    for target, dtype, kernel in (("cpu", torch.float32, "FlashAttentionForCpu"),
                                  ("cuda", torch.float32, "EfficientAttention"),
                                  ("cuda", torch.bfloat16, "FlashAttention")):
        with target_attention(target):
            x = q.to(dtype)
            out = F.scaled_dot_product_attention(x, x, x, is_causal=True)
        assert type(out.grad_fn).__name__ == f"ScaledDotProduct{kernel}Backward0"
    # outside the plan, meta takes the math path again (what materialises the S x S scores)
    assert type(F.scaled_dot_product_attention(q, q, q).grad_fn).__name__ == "UnsafeViewBackward0"


@pytest.mark.usefixtures("flash_first")
def test_a_plan_for_another_gpu_asks_its_rule_not_this_machines_gpu(monkeypatch):
    # `bench plan --gpu h200` on a machine with an A100: torch's choice there is the A100's, not the H200's
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-80GB")
    monkeypatch.setattr(plan_attention, "settle_cuda_priority", lambda: None)
    monkeypatch.setattr(plan_attention, "_torch_choice", lambda *args: "asked here")
    q = torch.empty(2, 4, 64, 16, device="meta", dtype=torch.bfloat16)
    assert kernel_choice("cuda", q, q, q, None, 0.0, True, None, False, "h200") == "flash"
    assert kernel_choice("cuda", q, q, q, None, 0.0, True, None, False, "a100") == "asked here"
    assert kernel_choice("cuda", q, q, q, None, 0.0, True, None, False) == "asked here"  # None: this machine's


@pytest.mark.usefixtures("flash_first")
@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine with CUDA asks torch's own choice, not the rule")
def test_the_rule_reads_the_target_gpus_compute_capability():
    # flash's backward on sm86, sm89 and sm120 (the L4 and L40S of the table) refuses head dims in (192, 224]
    q = torch.empty(2, 4, 64, 200, device="meta", dtype=torch.bfloat16, requires_grad=True)
    assert kernel_choice("cuda", q, q, q, None, 0.0, True, None, False, "h200") == "flash"
    assert kernel_choice("cuda", q, q, q, None, 0.0, True, None, False, "l4") == "efficient"
    with torch.no_grad():  # no backward: flash on sm89 too
        assert kernel_choice("cuda", q, q, q, None, 0.0, True, None, False, "l4") == "flash"


@pytest.mark.usefixtures("flash_first")
@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine with CUDA asks torch's own choice, not the rule")
def test_the_rule_gives_grouped_query_attention_with_a_mask_or_in_fp32_to_math():
    # memory-efficient attention admits no key and value with fewer heads than the query (torch's sdp_utils.cpp,
    # check_batch_size_and_num_heads_dense<false>): such a call with a mask, or in fp32 where flash cannot run, takes
    # math on the GPU, which expands keys and values to the query's heads. Flash admits them.
    q, kv = (torch.empty(2, h, 64, 32, device="meta", dtype=torch.bfloat16) for h in (8, 2))
    mask = torch.empty(2, 1, 64, 64, device="meta", dtype=torch.bfloat16)
    assert kernel_choice("cuda", q, kv, kv, None, 0.0, True, None, True) == "flash"
    assert kernel_choice("cuda", q, kv, kv, mask, 0.0, False, None, True) == "math"
    assert kernel_choice("cuda", q.float(), kv.float(), kv.float(), None, 0.0, True, None, True) == "math"
    assert kernel_choice("cuda", q, q, q, mask, 0.0, False, None, False) == "efficient"
    # its head dims: a multiple of 8 in 16 bits, of 4 in fp32 (minimum_gemm_alignment on sm80+)
    q12 = torch.empty(2, 4, 64, 12, device="meta")
    assert kernel_choice("cuda", q12, q12, q12, None, 0.0, True, None, False) == "efficient"
    assert kernel_choice("cuda", *(q12.bfloat16(),) * 3, mask, 0.0, False, None, False) == "math"
    # a case so planned: mla's GQA decode in fp32 holds the keys and values expanded to the query's 8 heads
    suite = discover()["mla"]
    params = next(p for p in suite.grid("quick", "cuda:0") if p["part"] == "decode" and p["context"] == 256)
    planned = plan_case(suite, "gqa", {**params, "dtype": "float32"}, "cuda", "h100")
    expanded = 2 * params["batch"] * 8 * (256 + 1) * 32 * 4  # keys and values [B, 8, T, 32] in fp32
    assert planned.attention == ["math"] and planned.step_peak_bytes > expanded


def test_cudnn_attention_is_routed_and_an_unknown_kernel_is_not_plannable(monkeypatch):
    q = torch.empty(2, 4, 64, 16, device="meta", dtype=torch.bfloat16, requires_grad=True)
    monkeypatch.setattr(plan_attention, "kernel_choice", lambda *args: "cudnn")
    with target_attention("cuda"):
        out = F.scaled_dot_product_attention(q, q, q, is_causal=True)
    assert type(out.grad_fn).__name__ == "ScaledDotProductCudnnAttentionBackward0"
    monkeypatch.setattr(plan_attention, "kernel_choice", lambda *args: "overrideable")
    with target_attention("cuda"), pytest.raises(NotPlannable, match="overrideable SDPA kernel"):
        F.scaled_dot_product_attention(q, q, q, is_causal=True)


def test_a_choice_is_torchs_under_the_settings_in_force_and_sees_which_inputs_need_grad(monkeypatch):
    # torch's choice is cached; it must still follow sdpa_kernel (kernels enabled, priority) and grad mode, and the
    # proxies it is asked about require grad where the inputs do (flash's head-dim limit for a backward on sm86/89)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.empty(2, 4, 64, 16, device="meta")
    assert kernel_choice("cpu", q, q, q, None, 0.0, True, None, False) == "flash"
    with sdpa_kernel([SDPBackend.MATH]):
        assert kernel_choice("cpu", q, q, q, None, 0.0, True, None, False) == "math"
    if not torch.cuda.is_available():  # the rule for a CUDA target follows them too
        half = q.to(torch.bfloat16)
        with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]):
            assert kernel_choice("cuda", half, half, half, None, 0.0, True, None, False) == "efficient"
        order = [SDPBackend.MATH, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]
        with sdpa_kernel(order, set_priority=True):
            assert kernel_choice("cuda", half, half, half, None, 0.0, True, None, False) == "math"
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]), pytest.raises(NotPlannable, match="no SDPA kernel enabled"):
            kernel_choice("cuda", q, q, q, None, 0.0, True, None, False)  # fp32: flash cannot run it
    asked = []
    monkeypatch.setattr(torch, "_fused_sdp_choice", lambda *args, **kwargs: asked.append(
        (args[0].requires_grad, torch.is_grad_enabled())) or 1)
    grad = q.clone().requires_grad_()
    kernel_choice("cpu", grad, q, q, None, 0.0, False, 0.5, False)
    with torch.no_grad():
        kernel_choice("cpu", grad, q, q, None, 0.0, False, 0.5, False)
    kernel_choice("cpu", q, q, q, None, 0.0, False, 0.5, False)
    kernel_choice("cpu", grad, q, q, None, 0.0, False, 0.5, False)  # the first call's, from the cache
    assert asked == [(True, True), (True, False), (False, True)]


@needs_cuda
@pytest.mark.parametrize("first", ["torch's own", "FLASH_ATTENTION", "CUDNN_ATTENTION"])
def test_the_plans_cuda_attention_is_the_kernel_cuda_runs(first):
    # the planned kernel (torch's choice on proxies of a few elements) is the one a real step's SDPA runs: for separate
    # q, k, v, for views of a fused qkv projection (as the checkpointing model's), with a mask, a head dim of 256
    # (no flash backward on sm86/89/120) and without grad; in torch's own priority (cuDNN first on an H100 or H200
    # with cuDNN above 9.15), and with flash or cuDNN put first
    from torch.nn.attention import SDPBackend, sdpa_kernel

    plan_attention.settle_cuda_priority()  # torch's own default is set at its first choice, over an order set before
    order = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH, SDPBackend.CUDNN_ATTENTION]
    if first != "torch's own":
        order.remove(getattr(SDPBackend, first))
        order.insert(0, getattr(SDPBackend, first))
    B, S, H = 2, 256, 4
    fused = torch.randn(B, S, 3, H, 64, device="cuda", dtype=torch.bfloat16).permute(2, 0, 3, 1, 4)
    separate, wide = ([torch.randn(B, H, S, d, device="cuda", dtype=torch.bfloat16) for _ in range(3)]
                      for d in (64, 256))
    mask = torch.rand(B, 1, S, S, device="cuda") > 0.5
    calls = [(separate, None, True, True), (fused.unbind(0), None, True, True), (separate, mask, False, True),
             (wide, None, True, True), (wide, None, True, False), (separate, mask, False, False)]
    with sdpa_kernel(order, set_priority=True) if first != "torch's own" else contextlib.nullcontext():
        for (q, k, v), m, causal, grad in calls:
            q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
            metas = [torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta", requires_grad=True)
                     for t in (q, k, v)]
            with torch.set_grad_enabled(grad):
                real = F.scaled_dot_product_attention(q, k, v, attn_mask=m, is_causal=causal)
                additive = None if m is None else torch.zeros(m.shape, device="cuda", dtype=q.dtype).masked_fill(
                    ~m, -math.inf)  # what SDPA's composite makes of a boolean mask before it chooses
                choice = torch._fused_sdp_choice(q, k, v, attn_mask=additive, is_causal=causal)
                with target_attention("cuda") as kernels:
                    planned = F.scaled_dot_product_attention(*metas, attn_mask=None if m is None else m.to("meta"),
                                                             is_causal=causal)
            assert kernels == {plan_attention.BACKENDS[choice]}, (kernels, choice, m is None, q.shape, grad)
            assert type(planned.grad_fn) is type(real.grad_fn), (planned.grad_fn, real.grad_fn, m is None, q.shape)


@pytest.mark.usefixtures("flash_first")
@pytest.mark.parametrize("target", ["cpu", "cuda"])
def test_a_plan_names_the_attention_kernels_its_step_takes(target):
    """Each sequence of rmpad's per-sequence backend reaches a fused kernel (it took math as [H, n, Dh], holding the
    scores); a masked step takes memory-efficient attention on CUDA; MLA's wider query and key take math on a CPU."""
    suites, grid = discover(), "cuda:0" if target == "cuda" else "cpu"  # the target's grid: bf16 on CUDA
    rmpad, packing, mla, moe = (suites[name] for name in ("rmpad", "packing", "mla", "moe"))
    train = next(p for p in rmpad.grid("smoke", grid) if p["mode"] == "train" and "model" not in p)
    assert plan_case(rmpad, "segments", train, target).attention == ["flash"]
    masked = plan_case(packing, "ffd", packing.grid("smoke", grid)[0], target).attention
    assert masked == (["efficient"] if target == "cuda" else masked) and masked
    decode = next(p for p in mla.grid("quick", grid) if p["part"] == "decode")  # smoke's head dims: no multiple of 8
    naive = plan_case(mla, "mla_naive", decode, target)
    assert naive.status == "ok" and naive.attention == (["math"] if target == "cpu" else ["efficient"])
    dispatch = next(p for p in moe.grid("smoke", grid) if p["part"] == "dispatch")
    assert plan_case(moe, "loop", dispatch, target).attention == []  # no attention in the layer


def _nested(dtype, dim: int = 16, offsets=(0, 3, 10)):
    """q [B, H, j, Dh] nested-jagged on meta: sequences of the offsets' lengths (3 and 7 tokens), 2 heads."""
    values = torch.empty(offsets[-1], 2, dim, device="meta", dtype=dtype, requires_grad=True)
    lengths = [b - a for a, b in zip(offsets, offsets[1:])]
    return torch.nested.nested_tensor_from_jagged(values, torch.tensor(offsets, device="meta"),
                                                  min_seqlen=min(lengths), max_seqlen=max(lengths)).transpose(1, 2)


def _backward_nodes(out) -> set[str]:
    nodes, todo = set(), [out.values().grad_fn]
    while todo:
        node = todo.pop()
        nodes.add(type(node).__name__)
        todo += [n for n, _ in node.next_functions if n is not None]
    return nodes


def test_nested_attention_on_a_cuda_target_takes_flash_over_the_values():
    # torch's jagged path on CUDA: flash over the values, the offsets as cumulative lengths (rmpad's nested backend,
    # to the byte against the H100 run: tests/bench/test_plan_error.py); on meta torch cannot choose it itself
    q = _nested(torch.bfloat16)
    with target_attention("cuda") as kernels:
        out = F.scaled_dot_product_attention(q, q, q, is_causal=True)
    assert kernels == {"flash"} and out.is_nested and out.dtype == torch.bfloat16
    assert "FlashAttentionBackward0" in _backward_nodes(out)
    # fp32 under the plan's bf16 autocast: cast first, as autocast casts SDPA, then flash
    q = _nested(torch.float32)
    with target_attention("cuda") as kernels, MetaAutocast(torch.bfloat16):
        out = F.scaled_dot_product_attention(q, q, q, is_causal=True)
    assert kernels == {"flash"} and out.dtype == torch.bfloat16


@pytest.mark.parametrize("why, q, kwargs", [
    ("fp32", lambda: _nested(torch.float32), {}),  # efficient on CUDA
    ("a head dim over 256", lambda: _nested(torch.bfloat16, dim=264), {}),
    ("a head dim not a multiple of 8", lambda: _nested(torch.bfloat16, dim=12), {}),
    ("an empty sequence", lambda: _nested(torch.bfloat16, offsets=(0, 0, 10)), {}),  # CUDA: no viable backend
    ("dropout", lambda: _nested(torch.bfloat16), {"dropout_p": 0.1}),
])
def test_nested_attention_flash_would_not_run_is_not_plannable(why, q, kwargs):
    q = q()
    with target_attention("cuda"), pytest.raises(NotPlannable, match="flash kernel"):
        F.scaled_dot_product_attention(q, q, q, is_causal=True, **kwargs)


def test_the_jagged_paths_choice_is_restored_after_an_error(monkeypatch):
    import torch.nested._internal.sdpa as jagged

    choice, meta_flops = jagged._select_sdp_backend, jagged._is_computing_meta_flops

    def fails(*args):
        raise RuntimeError("in torch's jagged path")

    monkeypatch.setattr(jagged, "_sdpa_nested_preprocessing", fails)
    q = _nested(torch.bfloat16)
    with target_attention("cuda"), pytest.raises(RuntimeError, match="jagged path"):
        F.scaled_dot_product_attention(q, q, q, is_causal=True)
    assert (jagged._select_sdp_backend, jagged._is_computing_meta_flops) == (choice, meta_flops)


def test_a_nested_case_plans_the_same_in_a_fresh_process_as_planned_again(monkeypatch):
    # torch makes a dummy nested tensor on meta once a process, at the first nested view (60 B): made inside a step's
    # window it was counted as the step's, 1 KiB of blocks over the same case planned again (bench.plan makes it first)
    import torch.nested._internal.nested_tensor as nested

    rmpad = discover()["rmpad"]
    params = next(p for p in rmpad.grid("smoke", "cuda") if p["mode"] == "train" and "model" not in p)
    monkeypatch.setattr(nested, "_dummy_instance", None)  # as in a fresh process
    first, again = (plan_case(rmpad, "nested", params, "cuda", "h200") for _ in range(2))
    assert first.status == again.status == "ok"
    assert (first.step_peak_bytes, first.peak_bytes) == (again.step_peak_bytes, again.peak_bytes)
