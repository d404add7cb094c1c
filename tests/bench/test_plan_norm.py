"""The plan's RMSNorm: F.rms_norm on meta as a CUDA target runs it, one fused kernel (bench.plan_norm), where the CPU
and meta run the composite."""

import pytest
import torch
import torch.nn.functional as F

from bench.memory import SavedTensorBytes, TensorMemoryTracker, cuda_peak
from bench.plan_norm import cuda_has_fused_rms_norm, target_rms_norm
from tests.optional import needs_cuda

N, D = 4096, 256  # tokens, width: the input is 2 MiB in bf16


def norm_step(target: str, weight_dtype=torch.bfloat16) -> tuple[int, int, torch.Tensor, torch.Tensor]:
    """(peak bytes of a forward + backward, bytes autograd saved, x, w) of F.rms_norm on meta planned for `target`."""
    x = torch.empty(N, D, device="meta", dtype=torch.bfloat16, requires_grad=True)
    w = torch.empty(D, device="meta", dtype=weight_dtype, requires_grad=True)
    grad = torch.empty(N, D, device="meta", dtype=torch.bfloat16)
    with target_rms_norm(target), TensorMemoryTracker() as t:
        with SavedTensorBytes(ignore=[x, w]) as saved:
            y = F.rms_norm(x, [D], w, 1e-6)
        y.backward(grad)
    return t.peak_bytes("meta"), saved.total("meta"), x, w


def test_the_cpu_keeps_the_composite_and_cuda_takes_the_fused_kernels_memory():
    if not cuda_has_fused_rms_norm():
        pytest.skip(f"torch {torch.__version__}'s CUDA build has no fused RMSNorm kernel")
    composite_peak, composite_saved, _, _ = norm_step("cpu")
    peak, saved, x, w = norm_step("cuda")
    assert x.grad.shape == x.shape and x.grad.dtype == x.dtype and w.grad.shape == w.shape
    # the kernel saves the input (autograd's already) and a [N, 1] fp32 rstd; the composite an fp32 copy of the
    # input and the normalized bf16 tensor as well
    assert saved == N * 4
    assert composite_saved - saved >= N * D * (4 + 2)
    # y, rstd, then backward's grad_input and grad_weight
    assert peak == N * D * 2 + N * 4 + N * D * 2 + D * 2
    assert composite_peak > peak + N * D * 4


@pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight")
def test_a_weight_of_another_dtype_takes_the_composite_on_cuda_too():
    # torch's rms_norm warns and runs the composite when the weight's dtype is not the input's
    assert norm_step("cuda", torch.float32)[1] == norm_step("cpu", torch.float32)[1]


def test_the_routing_ends_with_the_plan():
    original = F.rms_norm
    with target_rms_norm("cuda"):
        pass
    assert F.rms_norm is original


@needs_cuda
def test_the_planned_rms_norm_is_what_cuda_allocates():
    """The plan's forward + backward peak of an RMSNorm against the CUDA allocator's, and the kernel CUDA runs."""
    norm = torch.nn.RMSNorm(D, eps=1e-6, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(N, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    grad = torch.randn_like(x)
    norm(x).backward(grad)  # warm-up
    x.grad = norm.weight.grad = None
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], acc_events=True) as prof:
        with cuda_peak("cuda") as mem:
            norm(x).backward(grad)
    ops = {e.name for e in prof.events()}
    assert ("aten::_fused_rms_norm" in ops) == cuda_has_fused_rms_norm(), sorted(o for o in ops if "norm" in o)
    planned = norm_step("cuda")[0]
    assert abs(planned - mem.peak_bytes) <= 0.02 * mem.peak_bytes, (planned, mem.peak_bytes)
