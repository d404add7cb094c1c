"""bench.plan_flex: FlexAttention planned for a CUDA target. The block mask against torch's own on the CPU, the
stand-in kernels' buffers against inductor's layouts, FLOPs against the block mask's tiles; a CUDA test compares the
plan with compiled FlexAttention's max_memory_allocated, in a fresh process."""


import pytest
import torch
import torch._dynamo.eval_frame as eval_frame
import torch.nn.attention.flex_attention as fa

from bench import plan_flex
from bench.memory import SavedTensorBytes, TensorMemoryTracker
from bench.plan import StepCounter, plan_case
from bench.plan_flex import UNCOUNTED, flex_backward, target_flex
from bench.plan_meta import IndexValues, index_value
from bench.suite import NotPlannable
from impls.rmpad.flex import document_block_mask, varlen_attention
from suites.rmpad import Rmpad
from tests.optional import fresh_cuda_process, needs_cuda

LENGTHS = [300, 129, 1, 470, 100]  # 1000 tokens: not a multiple of the 128-token blocks
T, H, D = sum(LENGTHS), 4, 32
PARTS = ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices", "q_num_blocks", "q_indices",
         "full_q_num_blocks", "full_q_indices")


def cu_seqlens():
    return torch.tensor([0, *LENGTHS]).cumsum(0).to(torch.int32)


def attend(qkv):
    q, k, v = qkv.unbind(1)  # [T, H, D] each, views of the projection's output as the decoder makes them
    return varlen_attention(q, k, v, cu_seqlens().to(qkv.device), max(LENGTHS))


def test_the_block_mask_is_torchs_own_without_the_token_by_token_mask():
    real = document_block_mask(cu_seqlens(), T)  # torch's create_block_mask on the CPU
    taken = set()
    with IndexValues(), target_flex("cuda", taken), TensorMemoryTracker() as tracker:
        planned = document_block_mask(cu_seqlens().to("meta"), T)
        values = {name: index_value(getattr(planned, name)) for name in PARTS}
        peak = tracker.peak_bytes("meta")
    for name in PARTS:
        want, got = getattr(real, name), getattr(planned, name)
        assert got.device.type == "meta" and (got.shape, got.dtype) == (want.shape, want.dtype), name
        assert torch.equal(values[name], want), name
    # the compiled mask is reduced block by block: no [T, T] boolean mask (1 MB here), only block-sized maps
    assert peak < 64 * 1024, peak


def test_a_mask_asked_for_by_itself_is_made_as_on_the_device():
    with IndexValues(), target_flex("cuda", set()), TensorMemoryTracker() as tracker:
        mask = fa.create_mask(lambda b, h, q, kv: q >= kv, 1, 1, 256, 256, "meta")
        assert mask.shape == (1, 1, 256, 256) and tracker.peak_bytes("meta") >= 256 * 256  # and its index ranges


def planned_call(budget_left=True):
    """(the call's saved tensors' bytes, its FLOPs forward and backward, its peak on meta, the kernels taken)."""
    taken = set()
    with IndexValues(), target_flex("cuda", taken), TensorMemoryTracker() as tracker:
        qkv = torch.empty(T, 3, H, D, dtype=torch.bfloat16, device="meta", requires_grad=True)
        with SavedTensorBytes() as saved, StepCounter() as counted:
            out = attend(qkv)
        forward, kept = counted.flops, saved.total("meta")
        grad = torch.empty_like(out)
        with StepCounter() as counted:
            out.backward(grad)
        assert out.is_contiguous()  # inductor lays the output out in the query's order: [T, H, D] here
        return kept, forward, counted.flops, tracker.peak_bytes("meta"), taken


def test_the_forward_saves_what_the_compiled_graph_saves():
    real = document_block_mask(cu_seqlens(), T)
    kept, *_, taken = planned_call()
    mask = sum(getattr(real, name).nbytes for name in PARTS)
    doc = T * 8  # the int64 document ids that the mask_mod captures
    # q, k and v are views of the [T, 3, H, D] projection (its storage whole), the output, the fp32 log-sum-exp
    assert kept == T * 3 * H * D * 2 + T * H * D * 2 + H * T * 4 + mask + doc
    assert taken == {"flex"}


def test_the_flops_are_the_tiles_the_kernel_computes():
    real = document_block_mask(cu_seqlens(), T)
    tiles = int(real.kv_num_blocks.sum() + real.full_kv_num_blocks.sum())
    pairs = tiles * 128 * 128 * H  # the mask's one head broadcast to the query's four
    _, forward, backward, _, _ = planned_call()
    assert forward == 2 * pairs * (D + D)
    assert backward == 2.5 * forward


def test_past_the_budget_the_flops_are_left_out_and_the_plan_says_so(monkeypatch):
    kept, _, _, peak, _ = planned_call()
    monkeypatch.setattr(plan_flex, "MASK_BUDGET", 0)
    uncounted = planned_call()
    assert uncounted[1:3] == (0, 0) and uncounted[4] == {UNCOUNTED}
    assert (uncounted[0], uncounted[3]) == (kept, peak)  # the same bytes: the block mask's shapes need no values


def test_the_backward_makes_no_gradients_for_the_unused_statistics():
    # autograd would fill the log-sum-exp's and max scores' missing gradients with zeros, two fp32 [1, H, T] that
    # the compiled backward never makes
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.made = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            self.made += [func] if isinstance(out, torch.Tensor) and out.dtype == torch.float32 else []
            return out

    with IndexValues(), target_flex("cuda", set()):
        out = attend(torch.empty(T, 3, H, D, dtype=torch.bfloat16, device="meta", requires_grad=True))
        with Ops() as ops:
            out.backward(torch.empty_like(out))
    assert not [f for f in ops.made if "zero" in str(f)], ops.made


def test_a_loss_of_the_log_sum_exp_alone_still_runs_the_backward():
    # AOTAutograd fills the output's missing gradient with zeros and runs the compiled backward: q gets its gradient
    with IndexValues(), target_flex("cuda", set()), TensorMemoryTracker() as tracker:
        q = torch.empty(1, H, 256, D, device="meta", requires_grad=True)
        out, lse = fa.flex_attention(q, q, q, return_aux=fa.AuxRequest(lse=True)) if hasattr(fa, "AuxRequest") else \
            fa.flex_attention(q, q, q, return_lse=True)
        del out
        aux = lse.lse if hasattr(lse, "lse") else lse
        aux.sum().backward()
        assert q.grad is not None and q.grad.shape == q.shape
        assert tracker.peak_bytes("meta") > 0


def test_the_output_is_laid_out_as_torchs_fake_kernel_lays_it_out():
    # the strides AOTAutograd expects of the output's gradient are the traced output's, size-1 dimensions included:
    # torch's fake kernel's (_permute_strides: inductor's fill order, equal strides the later dimension inner)
    from torch._higher_order_ops.flex_attention import _permute_strides

    queries = [torch.empty(shape, device="meta").permute(perm) for shape, perm in (
        ((T, 1, H, D), (1, 2, 0, 3)), ((1, H, T, D), (0, 1, 2, 3)), ((T, H, 1, D), (2, 1, 0, 3)),
        ((H, T, 2, D), (2, 0, 1, 3)))]
    queries.append(torch.empty(T, 3, 1, D, device="meta").permute(1, 2, 0, 3)[:1])  # a slice: strides not dense
    for q in queries:
        out = plan_flex._like(q.shape, q)
        assert out.stride() == _permute_strides(torch.empty(q.shape, device="meta"), q.stride()).stride(), q.stride()


def test_a_step_copies_the_outputs_gradient_where_torch_2_13_would(monkeypatch):
    # rmpad's output gradient arrives contiguous ([1, H, T, D], from select's backward) where the output is laid out
    # [T, H, D]: under torch 2.13's rule the compiled backward copies it first, one output's bytes more at its peak
    import torch._functorch.config as functorch

    peaks = {}
    for guess in (False, True):
        monkeypatch.setattr(functorch, "guess_tangent_strides_as_outputs", guess, raising=False)
        with IndexValues(), target_flex("cuda", set()), TensorMemoryTracker() as tracker:
            leaves = [torch.empty(T, 1, H, D, device="meta", requires_grad=True) for _ in range(3)]
            out = fa.flex_attention(*(x.permute(1, 2, 0, 3) for x in leaves))  # [1, H, T, D], laid out [T, H, D]
            grad = torch.empty(out.shape, device="meta")  # contiguous
            tracker.reset_peak()
            base = tracker.live_bytes("meta")
            out.backward(grad)
            peaks[guess] = tracker.peak_bytes("meta") - base  # delta, dq, dk and dv (and the copy)
    assert peaks[False] == 3 * T * H * D * 4 + H * T * 4
    assert peaks[True] - peaks[False] == T * H * D * 4


def test_a_call_without_a_block_mask_computes_every_pair():
    # torch's default block mask is one block of 2^30: the pairs are the sequences', not the block's
    with IndexValues(), target_flex("cuda", set()), StepCounter() as counted:
        q = torch.empty(2, H, 256, D, device="meta")
        fa.flex_attention(q, q, q)
    assert counted.flops == 2 * (2 * H * 256 * 256) * (D + D)


def test_the_backward_flops_are_torchs_five_matmuls():
    q, v = torch.empty(1, H, 256, 64, device="meta"), torch.empty(1, H, 256, 32, device="meta")
    # the scores recomputed (E), dO V^T (Ev), dV (Ev), dQ (E), dK (E): torch's sdpa_backward_flop_count
    assert plan_flex._backward_flops(q, q, v, None, None, None, 1000) == 2 * 1000 * (3 * 64 + 2 * 32)
    assert plan_flex._forward_flops(q, q, v, [], 1000) == 2 * 1000 * (64 + 32)


@pytest.mark.parametrize("guess", [True, False])
def test_the_outputs_gradient_takes_the_layout_the_compiled_backward_traced(monkeypatch, guess):
    # torch 2.13's AOTAutograd traces the output's gradient in the output's strides, 2.11's contiguous; rmpad's
    # arrives contiguous ([1, H, T, D], from select's backward) where the output is [T, H, D] inside: 2.13 copies it
    import torch._functorch.config as functorch

    monkeypatch.setattr(functorch, "guess_tangent_strides_as_outputs", guess, raising=False)
    out = torch.empty(T, 1, H, D, device="meta").permute(1, 2, 0, 3)  # [1, H, T, D] in [T, H, D] order
    grad = torch.empty(1, H, T, D, device="meta")
    traced = plan_flex._as_traced(grad, out)
    assert (traced is grad) != guess
    assert traced.stride() == (out.stride() if guess else grad.stride())
    if guess:  # a gradient in the output's own layout is taken as it is
        assert plan_flex._as_traced(out, out) is out


def test_closures_of_every_shape_give_the_mask_its_values():
    # a namedtuple, a closure that refers to itself, a keyword-only default, tensors nested in containers: the mask
    # evaluated, FLOPs counted
    from collections import namedtuple

    Pair = namedtuple("Pair", "ids limit")
    ids = torch.arange(T) // 100

    def made(ids):
        pair, nested = Pair(ids, T), {"deep": ((ids,),)}

        def mask(b, h, q, kv, *, same=ids):
            return (pair.ids[q] == same[kv]) & (nested["deep"][0][0][q] >= 0) & (q >= kv) & (q < pair.limit) & \
                (mask is not None)
        return mask

    taken = set()
    with IndexValues(), target_flex("cuda", taken):
        block = fa.create_block_mask(made(ids.to("meta")), None, None, T, T, device="meta")
        got = index_value(block.kv_num_blocks)
    assert taken == set() and got is not None
    assert torch.equal(got, fa.create_block_mask(made(ids), None, None, T, T, device="cpu").kv_num_blocks)


def test_the_backward_lays_each_gradient_out_as_its_input():
    qkv = torch.empty(T, 3, H, D, dtype=torch.bfloat16, device="meta")
    q, k, v = (t.transpose(0, 1).unsqueeze(0) for t in qkv.unbind(1))  # [1, H, T, D], strides of [T, 3, H, D]
    lse = torch.empty(1, H, T, device="meta")
    dq, dk, dv, delta = flex_backward(q, k, v, torch.empty_like(q), lse, torch.empty_like(q), -1)
    for grad, x in ((dq, q), (dk, k), (dv, v)):
        assert grad.shape == x.shape and grad.dtype == x.dtype
        # dense, in the input's order ([T, H, D]), as inductor's infer_dense_strides lays it out
        assert grad[0].transpose(0, 1).is_contiguous() and grad.untyped_storage().nbytes() == T * H * D * 2
    assert (delta.shape, delta.dtype, delta.is_contiguous()) == ((1, H, T), torch.float32, True)


def test_torchs_functions_are_put_back_even_after_a_failure():
    names = ("create_mask", "_convert_mask_to_block_mask", "_validate_device", "flex_attention_hop",
             "_FLEX_ATTENTION_DISABLE_COMPILE_DEBUG")
    before = {name: getattr(fa, name) for name in names}
    with pytest.raises(NotPlannable, match="decoding"), IndexValues(), target_flex("cuda", set()):
        q = torch.empty(1, H, 64, D, device="meta")  # 64 queries: the decoding kernel
        fa.flex_attention(q, q, q)
    assert {name: getattr(fa, name) for name in names} == before
    assert eval_frame._stance.stance == "default"  # torch.compile compiles again
    with target_flex("cpu", set()):  # a CPU target changes nothing
        assert {name: getattr(fa, name) for name in names} == before
        assert eval_frame._stance.stance == "default"


def test_rmpad_flex_is_planned_for_a_gpu_and_says_why_not_for_a_cpu():
    suite = Rmpad()
    (params,) = [p for p in suite.grid("smoke", "cuda:0") if p["dist"] == "lognormal" and p["mode"] == "train"
                and "model" not in p]
    cuda = plan_case(suite, "flex", params, "cuda", "h100")
    assert cuda.status == "ok" and cuda.attention == ["flex"] and cuda.flops > 0 and cuda.parts["activations"] > 0
    cpu = plan_case(suite, "flex", {**params, "dtype": "float32"}, "cpu")
    assert cpu.status == "not_plannable" and "planned for a CUDA target" in cpu.reason


COMPILED = """
import sys
sys.path.insert(0, sys.argv[1])
import torch
from bench.memory import TensorMemoryTracker
from bench.plan_alloc import CachingAllocatorModel
from bench.plan_flex import target_flex
from bench.plan_meta import IndexValues
from impls.rmpad.flex import varlen_attention

def step(lengths, heads, dim, train, device):
    cu = torch.tensor([0, *lengths]).cumsum(0).to(torch.int32).to(device)
    qkv = torch.randn(sum(lengths), 3, heads, dim, dtype=torch.bfloat16, device="cpu").to(device)
    qkv.requires_grad_(train)
    q, k, v = qkv.unbind(1)
    def run():
        with torch.set_grad_enabled(train):
            out = varlen_attention(q, k, v, cu, max(lengths))
            if train:
                out.backward(torch.ones_like(out))
    def clear():  # before each window, as a Workload's clear: freed inside it, the allocator would net it out
        qkv.grad = None
    return run, clear

worst = 0
# ~30 s to compile on an H100
for lengths, heads, dim, train in (([300, 129, 1, 470, 100], 4, 32, True), ([4000, 96, 3000, 900], 8, 128, True),
                                   ([4000, 96, 3000, 900], 8, 128, False)):
    model = CachingAllocatorModel()
    with IndexValues(), target_flex("cuda", set()), TensorMemoryTracker(model):
        run, clear = step(lengths, heads, dim, train, "meta")
        model.reset_peak()
        base = model.allocated
        run()  # each step makes its gradient, as the plan's one step does
        planned = model.peak_allocated - base
    run, clear = step(lengths, heads, dim, train, "cuda")
    run()  # compiles
    clear()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    run()
    torch.cuda.synchronize()
    measured = torch.cuda.max_memory_allocated() - base
    error = (planned - measured) / measured
    worst = max(worst, abs(error))
    print(f"{sum(lengths)} tokens, {heads} heads of {dim}, {'training' if train else 'forward'}: CUDA {measured} B, "
          f"plan {planned} B ({error:+.2%})")
print("ok" if worst <= 0.10 else "over 10%", f"worst {worst:.2%}")
"""


@needs_cuda
def test_the_plan_matches_compiled_flex_attention_on_cuda():
    done = fresh_cuda_process(COMPILED, timeout=600)
    print(done.stdout)
    assert done.returncode == 0 and done.stdout.splitlines()[-1].startswith("ok"), done.stderr[-2000:] or done.stdout
