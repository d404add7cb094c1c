import gc

import pytest
import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

from bench.memory import SavedTensorBytes, TensorMemoryTracker, cuda_peak, peak_bytes
from bench.memory_ops import _scaled_mm_emulated, scaled_mm_emulation_peak
from bench.plan_alloc import CachingAllocatorModel
from tests.allocator import SCRATCH, unobserved_peak
from tests.optional import needs, needs_cuda

RESIZE = torch.UntypedStorage.resize_


def test_tracker_counts_new_storages_exactly():
    with TensorMemoryTracker() as t:
        a = torch.empty(1000)  # 4000 bytes
        b = torch.zeros(250, dtype=torch.float64)  # 2000 bytes
        assert t.live_bytes("cpu") == 6000
        del a
        gc.collect()
        assert t.live_bytes("cpu") == 2000
        assert t.peak_bytes("cpu") == 6000
        del b
    assert t.live_bytes("cpu") == 0


def test_views_share_one_storage():
    with TensorMemoryTracker() as t:
        x = torch.empty(64, 32)  # 8192 bytes
        views = [x.view(32, 64), x[3:], x.t(), x.unsqueeze(0), x.reshape(-1)]
        assert t.live_bytes("cpu") == 8192
        del x
        assert t.live_bytes("cpu") == 8192  # the views keep the storage alive
        del views
        assert t.live_bytes("cpu") == 0
        assert t.peak_bytes("cpu") == 8192


def test_preexisting_tensors_inplace_and_out_are_not_counted():
    outside = torch.ones(100)
    with TensorMemoryTracker() as t:
        outside.mul_(2)
        v = outside[10:]
        torch.add(outside, 1, out=outside)
        assert t.live_bytes("cpu") == 0
        y = outside + 1  # new: 400 bytes
        assert t.live_bytes("cpu") == 400
        del v, y


def test_reset_peak_and_backward_allocations():
    w = torch.randn(32, 32, requires_grad=True)
    with TensorMemoryTracker() as t:
        h = torch.randn(8, 32) @ w  # randn (1024) + h (1024)
        assert t.live_bytes("cpu") == 2048
        t.reset_peak()
        assert t.peak_bytes("cpu") == 2048
        h.sum().backward()
        # the randn input was held only for backward and is freed; h stays; w.grad (4096) is new
        assert t.live_bytes("cpu") == 1024 + 4096
        assert t.peak_bytes("cpu") >= 2048 + 4096


def test_a_steps_clear_runs_before_the_window():
    w = torch.randn(64, 64, requires_grad=True)  # its gradient: 16 KiB
    x = torch.randn(8, 64)

    def clear():
        w.grad = None

    def step():
        clear()
        (x @ w).sum().backward()

    step()
    seen = []
    peak = peak_bytes(step, "cpu", clear=lambda: seen.append((w.grad, _get_current_dispatch_mode())) or clear())
    old, tracking = seen[0]
    assert old is not None and tracking is None  # the previous gradient went before the window opened
    assert w.grad is not old and peak >= 64 * 64 * 4  # the new one is the step's, as CUDA's allocator counts it


def tracked_peak(fn) -> int:
    with TensorMemoryTracker() as t:
        fn()
    return t.peak_bytes("cpu")


X = torch.randn(256, 256, requires_grad=True)  # 256 KiB
BACKWARDS = {  # each step's peak is where the in-place op (unobserved) or its out-of-place twin (observed) runs
    "sum of two gradients": lambda: ((X * 2).sum() + (X * 3).sum()).backward(),
    "index": lambda: X[torch.arange(256) % 3 == 0].sum().backward(),
    "gather": lambda: X.gather(1, torch.arange(256 * 8).remainder(256).view(256, 8)).sum().backward(),
}


@pytest.mark.parametrize("name", BACKWARDS)
def test_backward_is_counted_as_it_runs_without_the_tracker(name):
    """Under a dispatch mode backward runs the out-of-place twin of an in-place op (IN_PLACE_TWINS), which holds one
    more buffer of the gradient's size; unobserved it runs the in-place op. The tracker counts what runs unobserved."""
    BACKWARDS[name]()
    X.grad = None  # before each window: the profiler would count its free, if it saw it allocated, the tracker not
    tracked = tracked_peak(BACKWARDS[name])
    X.grad = None
    unobserved = unobserved_peak(BACKWARDS[name])
    X.grad = None
    assert 0 <= unobserved - tracked <= SCRATCH, (tracked, unobserved)


def test_a_sum_into_a_gradient_still_held_is_counted_out_of_place():
    """A hook that keeps one of two gradients of x stops the engine from summing into it in place: the program
    holds both and the sum at once, and the tracker counts that too."""
    x = torch.randn(256, 256, requires_grad=True)
    kept = []

    def step():
        doubled, tripled = (x * 2).sum(), (x * 3).sum()  # x * 3's gradient comes first (created last): the sum's base
        tripled.grad_fn.next_functions[0][0].register_hook(lambda grad_inputs, grad_outputs: kept.append(grad_inputs))
        (doubled + tripled).backward()
        kept.clear()

    def step_keeping_nothing():
        ((x * 2).sum() + (x * 3).sum()).backward()

    peaks = []
    for fn in (tracked_peak, unobserved_peak):
        for each in (step, step_keeping_nothing):
            x.grad = None
            peaks.append(fn(each))
    tracked, tracked_nothing_kept, unobserved, unobserved_nothing_kept = peaks
    assert 0 <= unobserved - tracked <= SCRATCH, (tracked, unobserved)
    assert abs(tracked - tracked_nothing_kept - 256 * 256 * 4) <= SCRATCH  # the sum it could not write in place
    assert unobserved_nothing_kept - tracked_nothing_kept <= SCRATCH


def test_a_moe_dispatch_step_is_counted_as_it_runs_without_the_tracker():
    """The loop dispatch sums each expert's slice of w1's gradient into one buffer: 64 engine accumulations of
    w1's size. Counted as out-of-place sums, its peak read 9-15% over the unobserved one at smoke size."""
    from suites.moe import dispatch_workload

    params = {"part": "dispatch", "tokens": 256, "experts": 16, "top_k": 2, "dim": 32, "hidden": 32,
              "dtype": "float32"}
    for variant in ("loop", "grouped_torch"):
        w = dispatch_workload(variant, params, "cpu")
        w.step()
        tracked = peak_bytes(w.step, "cpu", w.clear)
        w.clear()  # before the window, as peak_bytes does: the step's own clear then frees nothing
        assert 0 <= unobserved_peak(w.step) - tracked <= SCRATCH, variant


def test_a_composite_op_under_inference_mode_is_counted_with_its_temporaries():
    # SDPA's math path (the value's width differs from the query's: no fused CPU kernel) reaches the mode whole under
    # inference_mode; its [2, 4, 64, 64] scores (128 KiB) are what the step holds at its peak
    q, v = torch.randn(2, 4, 64, 24), torch.randn(2, 4, 64, 16)

    def attend():
        with torch.inference_mode():
            torch.nn.functional.scaled_dot_product_attention(q, q, v)

    tracked, unobserved = tracked_peak(attend), unobserved_peak(attend)
    assert tracked >= 2 * 4 * 64 * 64 * 4  # 32 KiB, the output alone, when the op was counted whole
    assert 0 <= unobserved - tracked <= unobserved // 8  # 33 KB of 345 KB: allocated inside the CPU kernels


E4M3 = torch.float8_e4m3fn


def emulated_here(mixed=False, tensorwise=True):
    if not _scaled_mm_emulated(mixed, tensorwise):
        pytest.skip("this CPU runs torch._scaled_mm through oneDNN (AMX), whose scratch is not modelled")


def test_scaled_mms_emulation_peak_worked_by_hand():
    a = torch.empty(64, 32, dtype=E4M3, device="meta")
    b = torch.empty(48, 32, dtype=E4M3, device="meta").t()  # [32, 48] column-major: made contiguous, 1,536 B
    out = torch.empty(64, 48, dtype=torch.bfloat16, device="meta")
    copies, fa, fb, fo = 32 * 48, 4 * 64 * 32, 4 * 32 * 48, 4 * 64 * 48  # a is contiguous already: no copy
    # a in fp32 and scaled (2 x 8,192), then b (2 x 6,144), the fp32 product (12,288) and it in bf16 (6,144)
    assert scaled_mm_emulation_peak(a, b, out, False) == copies + fa + fb + fo + 64 * 48 * 2 == 34_304
    assert scaled_mm_emulation_peak(a, b, out.float(), False) == copies + fa + fb + fo  # the product not converted
    # an fp8 out_dtype: the product divided by the output scale into a second fp32 tensor is the peak; without
    # out_dtype (an fp8 output by a's dtype) torch 2.13 skips that division
    assert scaled_mm_emulation_peak(a, b.contiguous(), out.to(E4M3), True) == fa + fb + 2 * fo
    assert scaled_mm_emulation_peak(a, b.contiguous(), out.to(E4M3), False) == fa + fb + fo + 64 * 48


SCALED_MMS = {  # (a, b [K, N], scales, out dtype); b column-major, as torch._scaled_mm wants it and torchao gives it,
    # unless named. Each of the peak's candidates is the largest in one case: a's conversion, b's, the product, the
    # product divided by an fp8 output's scale, and the product converted
    "bf16 out": ((96, 64), (64, 80), "tensorwise", torch.bfloat16),
    "fp32 out, b row-major": ((96, 64), (64, 80), "tensorwise", torch.float32),
    "a transposed": ((64, 96), (64, 80), "tensorwise", torch.bfloat16),
    "a's conversion": ((256, 128), (128, 16), "tensorwise", torch.bfloat16),
    "b's conversion": ((32, 512), (512, 256), "tensorwise", torch.bfloat16),
    "fp8 out": ((256, 16), (16, 256), "tensorwise", E4M3),
    "rowwise": ((96, 64), (64, 80), "rowwise", torch.bfloat16),
}


@pytest.mark.parametrize("name", SCALED_MMS)
def test_scaled_mms_cpu_emulation_is_counted_as_the_allocator_sees_it(name):
    (m, k), (k2, n), scales, out_dtype = SCALED_MMS[name]
    emulated_here(tensorwise=scales == "tensorwise")
    g = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=g).to(E4M3)
    a = a.t() if name == "a transposed" else a  # [96, 64], not contiguous: copied first
    b = torch.randn(n, k2, generator=g).to(E4M3).t() if "row-major" not in name else \
        torch.randn(k2, n, generator=g).to(E4M3)  # [K, N] either way
    sa, sb = (torch.ones(()), torch.ones(())) if scales == "tensorwise" else (torch.ones(a.shape[0], 1),
                                                                            torch.ones(1, b.shape[1]))
    try:
        torch._scaled_mm(a, b, scale_a=sa, scale_b=sb, out_dtype=out_dtype)
    except RuntimeError as e:  # torch 2.11's CPU kernel takes tensorwise scales only
        pytest.skip(f"torch {torch.__version__} cannot run this _scaled_mm on the CPU: {str(e).splitlines()[0]}")

    def gemm():
        torch._scaled_mm(a, b, scale_a=sa, scale_b=sb, out_dtype=out_dtype)

    out = a.shape[0] * b.shape[1] * torch.empty((), dtype=out_dtype).element_size()
    scratch = scaled_mm_emulation_peak(a, b, torch.empty(0, dtype=out_dtype), out_dtype == E4M3)
    tracked = peak_bytes(gemm, "cpu")
    assert tracked == out + scratch
    assert 0 <= unobserved_peak(gemm) - tracked <= SCRATCH  # less only by the scalars it wraps as tensors (0-12 B)
    assert tracked_peak(gemm) == out  # a tracker given no scratch model counts the output alone


@needs("torchao")
@pytest.mark.parametrize("recipe", ["tensorwise", "rowwise"])
def test_torchaos_float8_linear_is_counted_through_its_subclass(recipe):
    """torchao's float8 Linear runs torch._scaled_mm (and its scale products) inside its tensor subclass's dispatch,
    which a mode called first would not see: the tracker hands those ops to the subclass and counts what it runs."""
    from impls.fp8 import torchao_training as tao

    emulated_here(mixed=False)  # its forward GEMMs: e4m3 both; its backward's: e5m2 gradients by e4m3
    emulated_here(mixed=True)
    if tao.unsupported(recipe):
        pytest.skip(tao.unsupported(recipe))
    torch.manual_seed(0)
    model = tao.converter(recipe)(torch.nn.Sequential(torch.nn.Linear(128, 96)))
    x = torch.randn(64, 128, requires_grad=True)

    def step():
        model(x).sum().backward()

    step()
    model.zero_grad(set_to_none=True)
    x.grad = None
    tracked = peak_bytes(step, "cpu")
    model.zero_grad(set_to_none=True)
    x.grad = None
    unobserved = unobserved_peak(step)
    assert 0 <= unobserved - tracked <= SCRATCH, (tracked, unobserved)
    assert unobserved - tracked_peak(step) > 4 * 64 * 128  # without the model: a's fp32 copy at least, missed


def resizes():
    # FSDP2's pattern for its unsharded parameters: a tensor made, its storage freed and made again by resize_
    t = torch.empty(256, 1024)
    t.untyped_storage().resize_(0)
    t.untyped_storage().resize_(256 * 1024 * 4)
    t.untyped_storage().resize_(0)
    u = torch.empty(64, 1024)
    t.untyped_storage().resize_(256 * 1024 * 4)  # 1 MiB again, beside u's 256 KiB
    return t, u


def test_storage_resizes_are_counted_as_the_allocator_sees_them():
    # a resize reaches no dispatch mode; the tracker counts it (UntypedStorage.resize_, patched while it is entered),
    # as torch.profiler sees the CPU allocator do it, and feeds the allocator model the new block before the old goes
    with TensorMemoryTracker() as tracker:
        kept = resizes()
    assert tracker.peak_bytes("cpu") == (1024 + 256) * 1024 == unobserved_peak(resizes)
    assert tracker.live_bytes("cpu") == (1024 + 256) * 1024
    model = CachingAllocatorModel()
    with TensorMemoryTracker(model) as tracker:
        t = torch.empty(256, 1024, device="meta")
        t.untyped_storage().resize_(512 * 1024 * 4)  # grown in place: the new block taken before the old is freed
    assert (model.peak_allocated, model.allocated) == (3 * 1024 * 1024, 2 * 1024 * 1024)
    assert tracker.live_bytes("meta") == 2 * 1024 * 1024
    # a storage made before the tracker: its bytes are not counted, nor their return; bytes it is given again are
    before = torch.empty(1024, device="meta")
    with TensorMemoryTracker() as tracker:
        before.untyped_storage().resize_(0)
        assert tracker.live_bytes("meta") == 0
        before.untyped_storage().resize_(8192)
        assert tracker.live_bytes("meta") == 8192
    assert torch.UntypedStorage.resize_ is RESIZE  # the patch is gone once no tracker is entered
    assert "resize_" not in torch.UntypedStorage.__dict__
    del kept


def test_the_resize_patch_is_undone_when_a_tracker_fails_and_counts_a_resize_once():
    tracker = TensorMemoryTracker()
    tracker._settle = lambda: (_ for _ in ()).throw(RuntimeError("failed"))  # a failure as the tracker exits
    with pytest.raises(RuntimeError, match="failed"):
        with tracker:
            pass
    assert torch.UntypedStorage.resize_ is RESIZE and _get_current_dispatch_mode() is None
    # one tracker entered twice is told of a resize once
    tracker = TensorMemoryTracker()
    with tracker, tracker:
        t = torch.empty(0, device="meta")
        t.untyped_storage().resize_(4096)
        assert tracker.peak_bytes("meta") == tracker.live_bytes("meta") == 4096
    assert torch.UntypedStorage.resize_ is RESIZE


def test_saved_tensor_bytes_once_per_storage_and_ignores_params():
    w = torch.randn(16, 16, requires_grad=True)
    x = torch.randn(4, 16)  # 256 bytes, saved by both matmuls but counted once
    with SavedTensorBytes(ignore=[w]) as saved:
        y = (x @ w) @ w  # saves x, w, (x @ w), w
    assert saved.total("cpu") == 256 + 256
    y.sum().backward()


@needs_cuda
def test_cuda_peak_over_baseline():
    keep = torch.empty(1 << 20, device="cuda")
    with cuda_peak("cuda") as mem:
        tmp = torch.empty(1 << 22, device="cuda", dtype=torch.uint8)
        del tmp
    assert mem.peak_bytes >= 1 << 22
    assert mem.end_bytes == 0
    del keep
