"""The target's RMSNorm kernel for a step on the meta device (`target_rms_norm`, for bench.plan).

F.rms_norm (nn.RMSNorm's forward) calls aten::_fused_rms_norm, which has a CUDA kernel since torch 2.9
(pytorch#153666; checked in the 2.11 CUDA build) and no CPU or meta one: on the CPU and on meta it decomposes into
the composite (an fp32 copy of the input, pow, mean, rsqrt, mul, the cast back, the weight's mul), whose autograd
keeps the fp32 input and the normalized bf16 tensor for backward. The CUDA kernel keeps the input it was given and a
[..., 1] fp32 rstd. At quick size that is 0.75 MiB a norm in packing's decoder (3.75 MiB over five norms) and 21 MiB
a norm in rmpad's padded one (104 MiB over five), which is what the plan stood over the H100's measured peaks of
those steps. For a CUDA target the call is routed to a stand-in with the kernel's memory: the forward reads the input
and writes an output of its layout and the rstd, autograd saves (input, rstd, weight) as the kernel's derivative does
(tools/autograd/derivatives.yaml), and backward runs aten::_fused_rms_norm_backward, whose meta kernel torch has.
Where torch itself falls back to the composite on CUDA (complex input, channels-last, a weight of another dtype than
the input) the composite runs here too.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch._prims_common import suggest_memory_format

from bench.plan_autocast import cast_for_autocast
from bench.plan_meta import _meta

FUSED_SINCE = (2, 9)  # the torch release whose CUDA build first has aten::_fused_rms_norm's CUDA kernel


def cuda_has_fused_rms_norm() -> bool:
    """Whether torch's CUDA build runs F.rms_norm as one kernel: asked of the dispatcher where this torch has CUDA,
    else from the version (a CPU-only build has no CUDA kernels to ask about)."""
    if torch.cuda.is_available():
        return torch._C._dispatch_has_kernel_for_dispatch_key("aten::_fused_rms_norm", "CUDA")
    return tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) >= FUSED_SINCE


@contextmanager
def target_rms_norm(target: str):
    """F.rms_norm on meta tensors as `target` ("cpu" or "cuda") runs it: the composite on the CPU, the fused kernel
    on CUDA where its torch has one (see the module). A swap of the function, as bench.plan_attention's."""
    if torch.device(target).type != "cuda" or not cuda_has_fused_rms_norm():
        yield
        return
    original = F.rms_norm

    def routed(input, normalized_shape, weight=None, eps=None):
        if isinstance(input, torch.Tensor) and _meta(input):
            input, weight = cast_for_autocast("rms_norm", (input, weight))  # under autocast: fp32 (its list)
            if _fused_on_cuda(input, weight):
                return _FusedRMSNorm.apply(input, weight, tuple(normalized_shape))
        return original(input, normalized_shape, weight, eps)

    F.rms_norm = routed
    try:
        yield
    finally:
        F.rms_norm = original


def _fused_on_cuda(x: torch.Tensor, weight) -> bool:
    """torch's own test in rms_norm_symint (aten/src/ATen/native/layer_norm.cpp) for calling the fused kernel."""
    if x.is_complex() or x.is_nested:
        return False
    if suggest_memory_format(x) in (torch.channels_last, torch.channels_last_3d):
        return False
    return weight is None or weight.dtype == x.dtype


class _FusedRMSNorm(torch.autograd.Function):
    """aten::_fused_rms_norm's memory on meta: y of the input's shape and dtype, rstd [..., 1] in fp32; saves what its
    derivative uses. `clone` stands for the kernel's read of x and write of y, so the step's bytes moved count them."""

    @staticmethod
    def forward(ctx, x, weight, normalized_shape):
        lead = x.shape[:x.dim() - len(normalized_shape)]
        y = x.clone(memory_format=torch.contiguous_format)
        rstd = x.new_empty((*lead, *(1,) * len(normalized_shape)), dtype=torch.float32)
        ctx.save_for_backward(x, rstd, weight)
        ctx.normalized_shape = list(normalized_shape)
        return y

    @staticmethod
    def backward(ctx, grad):
        x, rstd, weight = ctx.saved_tensors
        mask = [ctx.needs_input_grad[0], weight is not None and ctx.needs_input_grad[1]]
        grad_input, grad_weight = torch.ops.aten._fused_rms_norm_backward(grad, x, ctx.normalized_shape, rstd, weight,
                                                                           mask)
        return (grad_input if mask[0] else None), (grad_weight if mask[1] else None), None
