import pytest
import torch

from tests.optional import CUDA, needs_cuda
from tests.triton_interpret import run_interpreted

# The Triton grouped GEMM against the segment-loop GEMM (forward, da and db) and the dispatch built on it against the
# per-expert loop (output and every gradient), in fp32: the interpreter runs tl.dot in numpy fp32, so only the
# summation order differs (atol 1e-4 at K <= 40). Odd sizes (37 rows, K 20, N 12) leave partial row, column and K
# tiles; one expert is empty and one holds more rows than a 64-row tile. Run under TRITON_INTERPRET=1 in a child,
# because triton reads it when a kernel is defined.
INTERPRETED = """
import torch
from impls.moe.grouped import dispatcher, gemm_torch
from impls.moe.grouped_triton import grouped_gemm_triton
from impls.moe.reference import RoutedExperts, loop_dispatch

def close(a, b, what):
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4), (what, (a - b).abs().max().item())

g = torch.Generator().manual_seed(0)
for counts in ([3, 0, 17, 10, 7], [70, 0, 2]):
    offs = torch.tensor(counts).cumsum(0).to(torch.int32)
    a = torch.randn(sum(counts), 20, generator=g).requires_grad_()
    b = torch.randn(len(counts), 20, 12, generator=g).requires_grad_()
    grad = torch.randn(sum(counts), 12, generator=g)
    out = grouped_gemm_triton(a, b, offs)
    out.backward(grad)
    da, db = a.grad, b.grad
    a.grad = b.grad = None
    ref = gemm_torch(a, b, offs)
    ref.backward(grad)
    close(out, ref, "out"); close(da, a.grad, "da"); close(db, b.grad, "db")
    assert db[1].abs().max() == 0

experts = RoutedExperts(6, 16, 12)
x = torch.randn(37, 16, generator=g)
idx = torch.rand(37, 6, generator=g).topk(3, dim=-1).indices
idx[idx == 5] = 0
w = torch.rand(37, 3, generator=g)
grad = torch.randn(37, 16, generator=g)
results = []
for dispatch in (loop_dispatch, dispatcher("triton")):
    experts.zero_grad(set_to_none=True)
    xi, wi = x.clone().requires_grad_(), w.clone().requires_grad_()
    out = dispatch(xi, idx, wi, experts)
    out.backward(grad)
    w1 = experts.w1.grad if experts.w1.grad is not None else torch.zeros_like(experts.w1)
    results.append((out, xi.grad, wi.grad, w1, experts.w2.grad))
for what, a, b in zip(("out", "dx", "dweights", "dw1", "dw2"), *results):
    close(a, b, what)

try:
    grouped_gemm_triton(torch.randn(4, 8), torch.randn(2, 9, 4), torch.tensor([2, 4], dtype=torch.int32))
except ValueError as e:
    assert "need a [M, K], b [E, K, N]" in str(e)
else:
    raise AssertionError("mismatched K accepted")
print("ok")
"""


# An expert past 2^31 elements: w[e] starts at e * stride_be, which wraps in int32 from expert 74 at DeepSeek-V3's
# 256 x 7168 x 4096 w1. Here 3 experts 2^30 + 64 elements apart put expert 2 at 2^31 + 128: a 4 GiB fp16 view of which
# only the 3 experts' pages are ever written or read, so it costs ~300 MB of memory. In int32 the offset wraps to
# -2^31 + 128 and the read lands outside the tensor (a crash or another expert's weights). fp16 operands, fp32
# accumulation in both paths: only the fp16 rounding of the output differs (atol 1e-2 on values of order 4).
FAR_EXPERT = """
import sys
import torch
from impls.moe.grouped import gemm_torch
from impls.moe.grouped_triton import grouped_gemm_triton

device = sys.argv[1]
E, K, N = 3, 16, 8
stride = 2**30 + 64
store = torch.empty(2 * stride + K * N, dtype=torch.float16, device=device)
b = store.as_strided((E, K, N), (stride, N, 1))
g = torch.Generator().manual_seed(0)
b.copy_(torch.randn(E, K, N, generator=g))
offs = torch.tensor([5, 8, 14], dtype=torch.int32, device=device)
a = torch.randn(14, K, generator=g).to(device, torch.float16)
out = grouped_gemm_triton(a, b, offs)
ref = gemm_torch(a.float(), b.float(), offs)
assert torch.allclose(out.float(), ref, atol=1e-2, rtol=1e-2), (out.float() - ref).abs().max().item()
print("ok")
"""


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_triton_grouped_gemm_reads_an_expert_past_2_31_elements(device):
    done = run_interpreted(FAR_EXPERT, device, interpret=device == "cpu")
    assert done.returncode == 0 and done.stdout.strip() == "ok", (done.returncode, done.stderr[-2000:])


def test_triton_grouped_gemm_equals_reference_interpreted():
    done = run_interpreted(INTERPRETED)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


@needs_cuda
@pytest.mark.parametrize("backend", ["triton", "grouped_mm"])
def test_grouped_dispatch_equals_the_loop_cuda_bf16(backend):
    from impls.moe.grouped import dispatcher
    from impls.moe.reference import RoutedExperts, loop_dispatch

    torch.manual_seed(0)
    experts = RoutedExperts(16, 256, 128).cuda().bfloat16()
    x = torch.randn(1000, 256, device="cuda", dtype=torch.bfloat16)
    idx = torch.rand(1000, 16, device="cuda").topk(4, dim=-1).indices
    w = torch.rand(1000, 4, device="cuda", dtype=torch.bfloat16)
    grad = torch.randn(1000, 256, device="cuda", dtype=torch.bfloat16)
    results = []
    for dispatch in (loop_dispatch, dispatcher(backend)):
        experts.zero_grad(set_to_none=True)
        xi, wi = x.clone().requires_grad_(), w.clone().requires_grad_()
        out = dispatch(xi, idx, wi, experts)
        out.backward(grad)
        results.append((out, xi.grad, wi.grad, experts.w1.grad, experts.w2.grad))
    # bf16 outputs rounded at different points: ~2^-8 relative on values of order 1, sums of up to ~250 rows in db
    for a, b in zip(*results):
        torch.testing.assert_close(a.float(), b.float(), atol=1e-1, rtol=5e-2)


# The plan of the Triton dispatch (bench.plan, on meta for a CUDA target) skips the kernels' launches: the buffers the
# Python around them allocates are all the step's bytes. Here the same step runs for real on CPU tensors under the
# interpreter: both must run the same ops, in the same order, with outputs of the same bytes (the kernels' outputs and
# their row tiles among them), and the live-tensor tracker's peaks of the two must be equal (smoke sizes, fp32). Two
# things of the interpreter's own, which no compiled launch does, are kept out of the real run: its host copies of
# the kernels' arguments (copy_ and set_ of ~1.3 MB a step), run unseen, and the reference cycles it leaves those
# arguments in, which kept 90 KiB alive past their last use until the garbage collector ran. The kernels are put
# back at the end: the interpreter's child runs other scripts after this one.
PLANNED = """
import gc

import torch
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes
from torch.utils._pytree import tree_leaves

import impls.moe.grouped_triton as kernels
from bench.memory import TensorMemoryTracker, peak_bytes
from bench.plan_meta import IndexValues, MetaKernels
from bench.suite import discover

class Unseen:
    def __init__(self, kernel):
        self.kernel = kernel

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            with _disable_current_modes():
                self.kernel[grid](*args, **kwargs)
                gc.collect()
        return launch

class Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        sizes = tuple(t.untyped_storage().nbytes() for t in tree_leaves(out) if isinstance(t, torch.Tensor))
        self.seen.append((str(func), sizes))
        return out

launched = kernels._grouped_kernel, kernels._wgrad_kernel
kernels._grouped_kernel, kernels._wgrad_kernel = map(Unseen, launched)
try:
    suite = discover()["moe"]
    for params in (p for p in suite.grid("smoke", "cpu") if p["part"] == "dispatch"):
        w = suite.workload("grouped_triton", dict(params), "cpu", "cuda")
        w.step()
        w.clear()
        with TensorMemoryTracker() as step, Ops() as real_ops:
            w.step()
        real = step.peak_bytes("cpu")
        with MetaKernels(), IndexValues(), TensorMemoryTracker():
            w = suite.workload("grouped_triton", dict(params), "meta", "cuda")
            w.clear()
            with TensorMemoryTracker() as step, Ops() as planned_ops:
                w.step()
        planned = step.peak_bytes("meta")
        assert planned_ops.seen == real_ops.seen, [(a, b) for a, b in zip(planned_ops.seen, real_ops.seen) if a != b]
        assert any(op == "aten.searchsorted.Tensor" for op, _ in planned_ops.seen)  # the row tiles are planned
        assert planned == real, (params, planned, real)
finally:
    kernels._grouped_kernel, kernels._wgrad_kernel = launched
print("ok")
"""


def test_the_plan_of_the_triton_dispatch_counts_what_the_kernels_run_allocates():
    done = run_interpreted(PLANNED)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


# On a GPU, in a process of its own (a fresh allocator, as `bench run` gives each case): the plan's CUDA peak of the
# Triton dispatch, its blocks by bench.plan_alloc, against what max_memory_allocated reports. The H100 run of the
# quick case (ci/baselines/nvidia-h100-80gb-hbm3) and its plan agree to the byte.
ON_CUDA = """
import sys
from bench.memory import peak_bytes
from bench.plan import plan_case
from bench.suite import discover

suite = discover()["moe"]
params = next(p for p in suite.grid(sys.argv[1], "cuda") if p["part"] == "dispatch")
w = suite.workload("grouped_triton", dict(params), "cuda")
w.step()
measured = peak_bytes(w.step, "cuda", w.clear)
planned = plan_case(suite, "grouped_triton", params, "cuda").step_peak_bytes
assert planned == measured, (params, planned, measured)
print("ok")
"""


@needs_cuda
@pytest.mark.parametrize("size", ["smoke", "quick"])
def test_the_plan_of_the_triton_dispatch_is_what_cuda_allocates(size):
    done = run_interpreted(ON_CUDA, size, interpret=False)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
