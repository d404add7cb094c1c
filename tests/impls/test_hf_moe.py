"""transformers' experts implementations against our per-expert loop on the same routed tokens and expert weights:
the same output and gradients (ours in our layout), which GEMM path grouped_mm took, and a moved API as an error;
and its DeepSeek-V3 router against our AuxFreeRouter."""

import copy
import importlib

import pytest
import torch

from impls.libraries import ApiMoved
from impls.moe import hf
from impls.moe.reference import loop_dispatch
from impls.moe.router import AuxFreeRouter
from suites.moe import Moe
from tests.impls.test_moe import _dispatch_case, _run
from tests.optional import needs

pytestmark = needs("transformers")

ODD = (37, 7, 3, 16, 12)  # T, E, K, D, H: odd tokens and experts; rows of 16 and 24 fp32 (16-byte aligned)
UNALIGNED = (9, 5, 2, 6, 5)  # 24- and 20-byte rows: torch's grouped_mm takes none of them
CASES = [
    # fp32: the same products summed in another order (per expert, per slot or by torch's grouped kernel; the weight
    # gradients as [out, in] GEMMs). Measured at seed 0: outputs within 1.2e-6 of the loop, gradients within 3.8e-6
    # on values up to 24 (over 60 seeds: 1.9e-6 and 1.1e-5 on values up to 60, ~2e-7 relative). 1e-5 / 1e-5 is
    # what our own grouped dispatches meet against the loop (tests/impls/test_moe.py).
    *((impl, torch.float32, shape, 1e-5, 1e-5, 1e-5) for impl in hf.IMPLEMENTATIONS for shape in (ODD, UNALIGNED)
      if (impl, shape) != ("grouped_mm", UNALIGNED)),
    # bf16: each GEMM rounds its output to 8 mantissa bits in both paths, at different points: ~2^-8 relative
    *((impl, torch.bfloat16, (37, 7, 3, 16, 16), 3e-2, 3e-2, 3e-2) for impl in ("eager", "grouped_mm")),
    # batched_mm's weight gradients are its gathered weights' ([T*K, 2H, D]) summed back into each expert's by
    # index_put's accumulate in bf16, one rounding per slot: over 60 seeds they needed an atol of up to 0.08 beside
    # rtol 3e-2 (values up to ~32), so 0.15 there; its other outputs and gradients are held to 3e-2
    ("batched_mm", torch.bfloat16, (37, 7, 3, 16, 16), 3e-2, 3e-2, 0.15),
]


@pytest.fixture(autouse=True)
def fresh_api():
    hf.api.cache_clear()
    yield
    hf.api.cache_clear()


def _run_library(module, x, idx, w, grad):
    """_run's output and gradients (x, routing weights, w1, w2: ours in our layout) of the library's module."""
    module.zero_grad(set_to_none=True)
    x, w = x.clone().requires_grad_(), w.clone().requires_grad_()
    out = module(x, idx, w)
    out.backward(grad)
    return out, [x.grad, w.grad, *hf.ours_grads(module)]


@pytest.mark.parametrize("impl, dtype, shape, atol, rtol, weight_atol", CASES)
def test_library_experts_equal_the_loop(impl, dtype, shape, atol, rtol, weight_atol):
    torch.manual_seed(0)  # the expert weights (the tolerances were measured on seeded draws)
    experts, x, idx, w, grad = _dispatch_case(*shape, dtype)
    ref, ref_grads = _run(loop_dispatch, experts, x, idx, w, grad)
    module = hf.experts(experts, impl)
    out, grads = _run_library(module, x, idx, w, grad)
    torch.testing.assert_close(out, ref, atol=atol, rtol=rtol, msg=lambda m: (
        f"transformers {hf.version()} {impl}: output left the loop's; did its weight layout, gate/up order or "
        f"activation change? {m}"))
    for name, a, b in zip(("x", "weights", "w1", "w2"), grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, atol=weight_atol if name in ("w1", "w2") else atol,
                                   rtol=rtol, msg=lambda m, n=name: f"{impl}: grad of {n}: {m}")
    assert grads[2][-1].abs().max() == 0  # the empty expert


def test_aux_free_router_is_the_library_router_with_route_scale_1():
    # DeepseekV3TopkRouter: sigmoid scores, top-k of scores + e_score_correction_bias within the topk_group nodes
    # ranked by their top-2 biased scores, weights = the unbiased scores normalized (norm_topk_prob). Ours ranks
    # nodes by their top_k // topk_groups = 2 here. Both in fp32, so the same experts and weights to rounding.
    torch.manual_seed(0)
    E, K, nodes, reach, D = 16, 4, 4, 2, 32
    ours = AuxFreeRouter(D, E, K, n_groups=nodes, topk_groups=reach)
    ours.bias.copy_(0.3 * torch.randn(E))  # large enough to change selections, so the bias's role is tested
    cfg = hf.api().Config(hidden_size=D, n_routed_experts=E, num_experts_per_tok=K, n_group=nodes, topk_group=reach,
                          norm_topk_prob=True, routed_scaling_factor=1.0, num_hidden_layers=1)
    lib = importlib.import_module(hf.MODULES["experts"]).DeepseekV3TopkRouter(cfg)
    with torch.no_grad():
        lib.weight.copy_(ours.gate.weight)
        lib.e_score_correction_bias.copy_(ours.bias)
    x = torch.randn(256, D)
    routing = ours(x)
    _, weights, indices = lib(x)
    mine, order = routing.indices.sort(-1)
    theirs, their_order = indices.sort(-1)
    assert torch.equal(mine, theirs)
    unbiased = copy.deepcopy(ours)
    unbiased.bias.zero_()
    assert not torch.equal(mine, unbiased.select(routing.scores).sort(-1).values)  # the bias did move selections
    torch.testing.assert_close(routing.weights.gather(1, order), weights.gather(1, their_order), atol=1e-6, rtol=1e-6)


def test_the_library_module_holds_our_weights_in_its_layout():
    experts, *_ = _dispatch_case(*ODD, torch.float32)
    module = hf.experts(experts, "grouped_mm")
    assert torch.equal(module.gate_up_proj, experts.w1.transpose(1, 2))  # [E, 2H, D]: gate rows, then up rows
    assert torch.equal(module.down_proj, experts.w2.transpose(1, 2))  # [E, D, H]
    assert sum(p.numel() for p in module.parameters()) == sum(p.numel() for p in experts.parameters())
    assert module.config._experts_implementation == "grouped_mm"


def test_grouped_mm_says_whether_torch_or_its_own_fallback_ran(monkeypatch):
    from transformers.integrations import moe

    experts, x, idx, w, grad = _dispatch_case(*ODD, torch.float32)
    module = hf.experts(experts, "grouped_mm")
    paths, _ = hf.grouped_gemms(lambda: module(x, idx, w))
    assert paths == {"torch": 2, "fallback": 0}  # torch >= 2.11 on CPU: torch's grouped_mm, any pointer alignment
    for impl in ("eager", "batched_mm"):
        other = hf.experts(experts, impl)
        assert hf.grouped_gemms(lambda m=other: m(x, idx, w))[0] == {"torch": 0, "fallback": 0}
    # where transformers judges torch's kernel unusable (CPU torch <= 2.10 on unaligned pointers, CUDA before sm80)
    # it takes its own per-expert loop without a word: counted, and still the loop's numbers
    monkeypatch.setattr(moe, "_can_use_grouped_mm", lambda *args: False)
    paths, _ = hf.grouped_gemms(lambda: module(x, idx, w))
    assert paths == {"torch": 0, "fallback": 2}
    ref, ref_grads = _run(loop_dispatch, experts, x, idx, w, grad)
    out, grads = _run_library(module, x, idx, w, grad)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_the_suite_records_the_fallback_and_never_as_fused(monkeypatch):
    from transformers.integrations import moe

    suite = Moe()
    params = next(p for p in suite.grid("smoke", "cpu") if p["part"] == "dispatch")
    m = suite.measure("hf_grouped_mm", params, "cpu").metrics
    assert (m["grouped_mm_fallback"], m["fused_grouped_gemm"]) == (False, False)  # CPU: torch loops inside
    assert suite.measure("hf_batched_mm", params, "cpu").metrics["fused_grouped_gemm"] is None  # no grouped GEMM
    monkeypatch.setattr(moe, "_can_use_grouped_mm", lambda *args: False)
    m = suite.measure("hf_grouped_mm", params, "cpu").metrics
    assert (m["grouped_mm_fallback"], m["fused_grouped_gemm"]) == (True, False)
    assert m["peak_mem_bytes"] > 0


def test_grouped_mm_on_unaligned_rows_is_torch_refusing_not_a_fallback():
    # transformers checks the pointers' alignment, not the rows': torch's grouped_mm raises (the suite's grids align)
    experts, x, idx, w, _ = _dispatch_case(*UNALIGNED, torch.float32)
    with pytest.raises(RuntimeError, match="16 bytes"):
        hf.experts(experts, "grouped_mm")(x, idx, w)


def test_a_moved_name_is_an_error_naming_it_never_a_skip(monkeypatch):
    from transformers.integrations import moe
    from transformers.models.deepseek_v3 import modeling_deepseek_v3

    suite = Moe()
    params = next(p for p in suite.grid("smoke", "cpu") if p["part"] == "dispatch")
    monkeypatch.delattr(modeling_deepseek_v3, "DeepseekV3Experts")
    with pytest.raises(ApiMoved, match=r"transformers .*: no transformers\.models\.deepseek_v3\.modeling_deepseek_v3"
                                       r"\.DeepseekV3Experts"):
        suite.workload("hf_eager", params, "cpu")
    monkeypatch.undo()
    hf.api.cache_clear()
    monkeypatch.setattr(moe, "ALL_EXPERTS_FUNCTIONS", {"grouped_mm": moe.grouped_mm_experts_forward})
    with pytest.raises(ApiMoved, match="no experts_implementation batched_mm"):
        hf.api()
