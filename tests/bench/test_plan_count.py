"""What the plan counts besides memory (bench.plan_count, bench.flops): varlen flash attention's FLOPs per sequence
and causal, as SDPA's; the dtype each FLOP runs in, and the roofline from them."""

import pytest
import torch
from torch.utils import flop_counter

from bench import hardware
from bench.flops import FORMULAS, flop_counter_mode
from bench.plan import plan_case
from bench.plan_count import StepCounter, roofline_ms
from bench.plan_meta import IndexValues
from bench.suite import NotPlannable, discover

aten = torch.ops.aten
LENGTHS = [7, 1, 33, 12]


@pytest.fixture(scope="module")
def registry():
    return discover()


def per_sequence(count, causal=True, lengths=LENGTHS, heads=2, dim=16) -> int:
    """What SDPA's formulas count for `lengths` one sequence at a time ([1, H, n, D] each), causal as half."""
    shapes = [((1, heads, n, dim),) * 3 for n in lengths]
    flops = [count(*((s[0],) if count is flop_counter.sdpa_backward_flop_count else ()), *s) for s in shapes]
    return sum(f // 2 if causal else f for f in flops)


@pytest.mark.parametrize("causal", [True, False])
def test_varlen_flash_is_counted_per_sequence_and_causal_as_half(causal):
    total = sum(LENGTHS)
    q = torch.empty(total, 2, 16)  # [T, H, D], the values of a nested tensor
    offsets = torch.tensor([0, *torch.tensor(LENGTHS).cumsum(0).tolist()], dtype=torch.int32)
    forward, backward = FORMULAS[aten._flash_attention_forward], FORMULAS[aten._flash_attention_backward]
    lse = torch.empty(2, total)

    def counts(cu, q):
        return (forward(q, q, q, cu, cu, max(LENGTHS), max(LENGTHS), 0.0, causal, False, out_val=None),
                backward(q, q, q, q, q, lse, cu, cu, max(LENGTHS), max(LENGTHS), 0.0, causal, None, None,
                         out_val=None))

    expected = (per_sequence(flop_counter.sdpa_flop_count, causal=causal),
                per_sequence(flop_counter.sdpa_backward_flop_count, causal=causal))
    assert counts(offsets, q) == expected
    # on meta, the lengths come from the values the plan keeps beside the offsets (bench.plan_meta.IndexValues)
    with IndexValues():
        meta_offsets = offsets.to("meta")
        assert counts(meta_offsets, q.to("meta")) == expected
    # without values, torch's worst case: every sequence as long as the longest
    longest = [max(LENGTHS)] * len(LENGTHS)
    assert counts(torch.empty(len(LENGTHS) + 1, dtype=torch.int32, device="meta"), q.to("meta")) == \
        tuple(per_sequence(c, causal, longest) for c in (flop_counter.sdpa_flop_count,
                                                          flop_counter.sdpa_backward_flop_count))


@pytest.mark.parametrize("mode", ["forward", "train"])
def test_nested_attention_plans_the_flops_of_segments_and_of_a_real_step(registry, mode):
    # nested and segments run the same causal attention over the same tokens, one SDPA call a sequence or one varlen
    # flash call: their FLOPs are equal exactly (tolerance 0: the same per-sequence formula). Nested was counted at
    # the longest length for every sequence, and dense: 48x segments' attention FLOPs at full size.
    # rmpad records no FLOP metric: the real step's count is torch's counter on the CPU run of segments.
    rmpad = registry["rmpad"]
    for params in (p for p in rmpad.grid("smoke", "cuda:0") if p["mode"] == mode and "model" not in p):
        plans = {v: plan_case(rmpad, v, params, "cuda", "h200") for v in ("segments", "nested")}
        assert all(p.status == "ok" for p in plans.values()), {v: p.reason for v, p in plans.items()}
        assert plans["nested"].attention == ["flash"]
        assert plans["nested"].flops == plans["segments"].flops, params["dist"]
        w = rmpad.workload("segments", {**params, "dtype": "float32"}, "cpu")
        with flop_counter_mode() as real:
            w.step()
        assert plans["nested"].flops == real.get_total_flops() > 0, params["dist"]


def test_the_roofline_divides_each_dtypes_flops_by_its_peak(registry):
    # fp8's training part has no dtype param; on CUDA its reference step is bf16 (it was planned at the fp32 peak,
    # 1.3x its bound on an H200), and its own recipes' emulated GEMMs multiply in fp32 (impls/fp8/linear.py)
    fp8 = registry["fp8"]
    params = next(p for p in fp8.grid("smoke", "cuda:0") if p["part"] == "training")
    assert "dtype" not in params
    bf16 = plan_case(fp8, "bf16", params, "cuda", "h200")
    assert bf16.status == "ok" and bf16.dtype == "bfloat16" and bf16.flops_by_dtype == {"bfloat16": bf16.flops}
    assert bf16.roofline_ms == pytest.approx(1e3 * max(bf16.flops / 989.4e12, bf16.bytes_moved / 4800e9))
    assert bf16.to_json()["dtype"] == "bfloat16"
    emulated = plan_case(fp8, "tensorwise", params, "cuda", "h200")
    by = emulated.flops_by_dtype
    assert set(by) == {"float32", "bfloat16"} and sum(by.values()) == emulated.flops and emulated.dtype == "float32"
    assert emulated.roofline_ms == pytest.approx(1e3 * max(by["float32"] / 66.9e12 + by["bfloat16"] / 989.4e12,
                                                           emulated.bytes_moved / 4800e9))
    cpu = plan_case(fp8, "bf16", next(p for p in fp8.grid("smoke", "cpu") if p["part"] == "training"), "cpu")
    assert cpu.dtype == "float32" and cpu.roofline_ms is None  # fp32 on the CPU; no GPU named, no roofline


def test_a_roofline_needs_a_rate_for_every_dtype_with_flops():
    assert hardware.peak_tflops("h200", "float64") is None
    assert roofline_ms("h200", {"bfloat16": 10**12, "float64": 1}, 0) is None  # never a guess
    assert roofline_ms("h200", {}, 4800 * 10**9) == pytest.approx(1e3)  # bytes alone: 1 s at 4.8 TB/s
    assert roofline_ms("h200", {"bfloat16": int(989.4e12)}, 0) == pytest.approx(1e3)
    assert roofline_ms(None, {"bfloat16": 1}, 1) is None


@pytest.mark.parametrize("target", ["cpu", "cuda"])
def test_a_steps_flops_are_its_matmuls_and_attention_forward_backward_and_recompute(registry, target):
    # the convention bench.plan_count states, in closed form for checkpointing's smoke model: per block 24 T D^2 of
    # Linears forward (qkv 3, proj 1, fc1 4, fc2 4: 2 x 12 T D^2), causal attention's 2 B S^2 D forward (half of SDPA's
    # dense 4 B S^2 D) and 2.5x that backward, Linears 2x backward; the norms, GELU and the loss count none. A
    # checkpointed block recomputes its forward but fc2, whose output no backward reads (non-reentrant early stop)
    suite = registry["checkpointing"]
    params = next(p for p in suite.grid("smoke", "cuda:0" if target == "cuda" else "cpu") if "model" not in p)
    B, S, D, L = params["batch"], params["seq"], params["d_model"], params["layers"]
    T = B * S
    linears, attention, fc2 = 24 * T * D * D, 2 * B * S * S * D, 8 * T * D * D
    none = L * (3 * linears + 7 * attention // 2)
    segments = round(L ** 0.5)
    expected = {"none": none, "selective": none, "offload": none,  # SAC saves the matmuls: none repeat
                "full": none + L * (linears + attention - fc2),
                "sqrt": none + L * (linears + attention) - segments * fc2}
    planned = {v: plan_case(suite, v, params, target, "h100" if target == "cuda" else None) for v in expected}
    assert {v: p.flops for v, p in planned.items()} == expected


def test_a_float8_matmul_other_than_scaled_mm_is_not_plannable_for_cuda():
    # meta runs addmm on float8 tensors, CUDA has no kernel for it: a model --set to dtype=float8_e4m3fn was planned
    # "fits" with a roofline at the fp8 peak, for a step that fails at its first linear layer on the GPU
    a = torch.empty(16, 32, device="meta", dtype=torch.float8_e4m3fn)
    b = torch.empty(32, 16, device="meta", dtype=torch.float8_e4m3fn)
    with pytest.raises(NotPlannable, match="runs mm on float8_e4m3fn tensors, which CUDA has no kernel for"):
        with StepCounter(cuda=True):
            a @ b
    with StepCounter() as on_cpu:  # the CPU's mm takes float8
        a @ b
    assert dict(on_cpu.by_dtype) == {"float8_e4m3fn": 2 * 16 * 32 * 16}
    one = torch.ones((), device="meta")
    with StepCounter(cuda=True) as scaled:  # torch._scaled_mm is CUDA's float8 GEMM: counted at the fp8 peak
        torch._scaled_mm(a, b.t().contiguous().t(), one, one, out_dtype=torch.bfloat16)
    assert dict(scaled.by_dtype) == {"float8_e4m3fn": 2 * 16 * 32 * 16}


def test_a_model_set_to_float8_is_not_plannable_on_a_gpu(registry):
    params = {**registry["checkpointing"].grid("smoke", "cuda:0")[0], "dtype": "float8_e4m3fn"}
    p = plan_case(registry["checkpointing"], "none", params, "cuda", "h100")
    assert (p.status, p.fits, p.roofline_ms) == ("not_plannable", None, None)
    assert "float8_e4m3fn tensors, which CUDA has no kernel for" in p.reason
