"""The target's attention kernel for a step on the meta device (`target_attention`, for bench.plan).

F.scaled_dot_product_attention on meta takes the math path, which materialises the S x S scores the fused kernels
never hold (+1 MB at smoke checkpointing). It is routed to the kernel the target would pick: on a CPU target,
torch's own choice (torch._fused_sdp_choice on CPU tensors of the same shapes and strides, a few elements each) and
the CPU flash kernel's meta registration; on a CUDA target, torch's choice on the local GPU where it is the GPU planned
for, else the rule torch applies on sm80+ (flash for 16-bit inputs without a mask and with equal head dims up to 256,
not for a backward of head dims in (192, 224], or over 224 with dropout, on sm86, sm89 and sm120, the target's compute
capability from bench.hardware;
memory-efficient attention for a mask, unequal value width or fp32, where key and value have the query's heads and
the head dims are a multiple of 8, of 4 in fp32; math otherwise, as for grouped-query keys and values with a mask or in
fp32, which memory-efficient attention refuses; of the kernels enabled, in the order
torch._C._get_sdp_priority_order() gives, flash > efficient > math > cudnn by default on 2.11-2.13), and that
kernel's meta registration. torch's choices are cached by the shapes, strides, dtypes and grad of the inputs and by
the settings they read (kernels enabled, priority, grad mode). The boolean mask is
converted to an additive one first, as the composite does. cuDNN's attention, which torch 2.11 can put first on
Hopper (TORCH_CUDNN_SDPA_DEPRIORITIZED undoes that), is routed to its own meta registration, whose bytes match
flash's. Any other kernel makes the case not plannable: never the math path in its place. On the first H100 check
(torch 2.11), torch's choice there was not flash and the plan took the math path for it, 5-7.6x the measured peak of
full-size checkpointing; the flash routing that a CPU-only machine uses came within 0.3% of those same measured
peaks (README, "Planning a GPU run").
"""

from __future__ import annotations

import functools
import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import _disable_current_modes

from bench import hardware
from bench.plan_autocast import cast_for_autocast
from bench.plan_meta import _meta
from bench.suite import NotPlannable

aten = torch.ops.aten


@contextmanager
def target_attention(target: str, gpu: str | None = None):
    """F.scaled_dot_product_attention on meta tensors routed to the kernel `target` ("cpu" or "cuda") would run, on
    `gpu` (a bench.hardware name; None: this machine's GPU) for a CUDA target.
    Yields the set of the kernels taken ("flash", "efficient", "cudnn", "math"), filled as the step runs: a case
    whose attention takes "math" holds each call's S x S scores on the target.

    A swap of the function, not a TorchFunctionMode: torch runs backward (and so a checkpoint's recompute) with the
    function-mode stack empty, where a mode would let the recompute take the math path the forward did not."""
    original = F.scaled_dot_product_attention
    kind, taken = torch.device(target).type, set()

    def routed(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        if isinstance(query, torch.Tensor) and _meta(query):
            # under a plan's autocast, cast as autocast casts SDPA (lower precision), which no mode sees here
            query, key, value, attn_mask = cast_for_autocast("scaled_dot_product_attention",
                                                             (query, key, value, attn_mask))
            if not query.is_nested:
                return _attention(kind, gpu, taken, query, key, value, attn_mask, dropout_p, is_causal, scale,
                                  enable_gqa)
            if kind == "cuda":
                with _nested_flash(taken, query, key, value, attn_mask, dropout_p):
                    return original(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                                    scale=scale, enable_gqa=enable_gqa)
        return original(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                        scale=scale, enable_gqa=enable_gqa)

    F.scaled_dot_product_attention = routed
    try:
        yield taken
    finally:
        F.scaled_dot_product_attention = original


@contextmanager
def _nested_flash(taken, q, k, v, mask, dropout_p):
    """Nested-jagged SDPA on meta as CUDA runs it: torch's jagged path (torch.nested._internal.sdpa) picks flash
    first on CUDA (then efficient, math, cuDNN, 2.11-2.13), and runs aten._flash_attention_forward over the values
    with the offsets as cumulative lengths, whose meta kernel it takes here. On meta torch's choice cannot be asked
    (it reads the device), so the plan applies flash's own conditions; where they fail the case is not plannable.
    The same route torch takes for meta tensors under its FLOP counter."""
    import torch.nested._internal.sdpa as jagged

    dims, heads = {t.shape[-1] for t in (q, k, v)}, {t.shape[1] for t in (q, k, v)}
    dim = max(dims)
    if q.dtype not in (torch.float16, torch.bfloat16) or mask is not None or dropout_p or len(dims) > 1 or \
            dim > 256 or dim % 8 or len(heads) > 1 or not torch.backends.cuda.flash_sdp_enabled() or \
            any(t._get_min_seqlen() == 0 for t in (q, k, v)):
        raise NotPlannable("nested-tensor attention on CUDA would not take the flash kernel here (16-bit, no mask "
                           "or dropout, one head dim up to 256 and a multiple of 8, equal heads, no empty sequence), "
                           "and the plan models no other kernel for nested tensors")
    taken.add("flash")
    choice, meta_flops = jagged._select_sdp_backend, jagged._is_computing_meta_flops
    jagged._select_sdp_backend = lambda *args, **kwargs: torch.nn.attention.SDPBackend.FLASH_ATTENTION
    jagged._is_computing_meta_flops = lambda x: x.device.type == "meta"  # also skips its autocast, done above
    try:
        yield
    finally:
        jagged._select_sdp_backend, jagged._is_computing_meta_flops = choice, meta_flops


def _attention(target, gpu, taken, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
               enable_gqa=False):
    if attn_mask is not None and attn_mask.dtype == torch.bool:  # what the composite does first, on every device
        attn_mask = torch.where(attn_mask, torch.scalar_tensor(0.0, dtype=q.dtype, device=q.device),
                                torch.scalar_tensor(-math.inf, dtype=q.dtype, device=q.device))
    backend = kernel_choice(target, q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa, gpu)
    taken.add(backend)
    lse = any(t.requires_grad for t in (q, k, v))  # the fused kernels keep their logsumexp for a backward
    if backend == "flash" and target == "cpu":
        return aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, dropout_p, is_causal, attn_mask=attn_mask,
                                                                 scale=scale)[0]
    if backend == "flash":
        d = q.shape[-1]
        pad = (-d) % 8  # the composite pads the head dim to a multiple of 8 for the CUDA flash kernel
        scale = 1 / math.sqrt(d) if scale is None else scale
        q, k, v = (F.pad(t, (0, pad)) if pad else t for t in (q, k, v))
        out = aten._scaled_dot_product_flash_attention(q, k, v, dropout_p, is_causal, False, scale=scale)[0]
        return out[..., :d] if pad else out
    if backend == "efficient":
        if attn_mask is not None and attn_mask.shape[-1] % 16:  # pad_bias: the kernel reads 16-aligned rows
            n = attn_mask.shape[-1]
            attn_mask = F.pad(attn_mask, (0, 16 - n % 16))[..., :n]
        if attn_mask is not None:
            attn_mask = attn_mask.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
        return aten._scaled_dot_product_efficient_attention(q, k, v, attn_mask, lse, dropout_p, is_causal,
                                                            scale=scale)[0]
    if backend == "cudnn":  # torch 2.11 on an H100 picks it first: memory as flash's, with a [B, H, S, 1] logsumexp
        return aten._scaled_dot_product_cudnn_attention(q, k, v, attn_mask, lse, dropout_p, is_causal, False,
                                                        scale=scale)[0]
    if backend != "math":  # a kernel the plan cannot stand for: say so, never take the math path in its place
        raise NotPlannable(f"attention on {target} would run the {backend} SDPA kernel, which the plan cannot model")
    return torch._C._nn.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p,
                                                     is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)


BACKENDS = {0: "math", 1: "flash", 2: "efficient", 3: "cudnn", 4: "overrideable"}


def kernel_choice(target, q, k, v, mask, dropout_p, is_causal, scale, enable_gqa, gpu=None) -> str:
    """The SDPA kernel `target` would run for these meta tensors: "flash", "efficient", "cudnn" or "math"; torch's
    own choice where it can be asked (the CPU, or a CUDA target whose `gpu` is this machine's: bench.hardware.here),
    else the sm80+ rule for `gpu`'s compute capability over the kernels enabled, in torch's priority order (what
    torch.nn.attention.sdpa_kernel sets). cuDNN is outside that rule: a CPU-only build cannot tell whether the GPU's
    cuDNN would put it first, and for the unmasked calls it takes there its bytes are flash's."""
    if target == "cpu" or hardware.here(gpu):
        if target != "cpu":
            settle_cuda_priority()
        return _torch_choice("cpu" if target == "cpu" else "cuda", *map(_signature, (q, k, v, mask)), dropout_p,
                             is_causal, scale, enable_gqa, _settings())
    cuda, d = torch.backends.cuda, q.shape[-1]
    half = q.dtype in (torch.float16, torch.bfloat16)
    align = 8 if half else 4  # sdp_utils.cpp's minimum_gemm_alignment on sm80+: 128 bits, and at least 4
    # memory-efficient attention admits no grouped query heads (check_batch_size_and_num_heads_dense<false>): keys
    # and values with fewer heads than the query take math, which expands them to the query's heads
    same_heads = q.dim() == 4 and q.shape[:2] == k.shape[:2] == v.shape[:2]
    # flash's backward on sm86, sm89 and sm120 refuses head dims in (192, 224], and over 224 with dropout
    # (sdp_utils.cpp, check_requires_grad_and_head_dim_gt192_constraints_on_sm86_89_or_120)
    backward = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    backward_limited = backward and hardware.capability(gpu) in ((8, 6), (8, 9), (12, 0), (12, 1)) and \
        (192 < d <= 224 or d > 224 and dropout_p > 0)
    runs = {"flash": cuda.flash_sdp_enabled() and q.dim() == 4 and half
            and mask is None and d == k.shape[-1] == v.shape[-1] and d <= 256 and not backward_limited,
            "efficient": cuda.mem_efficient_sdp_enabled() and same_heads and d == k.shape[-1] and d % align == 0
            and v.shape[-1] % align == 0,
            "math": cuda.math_sdp_enabled()}
    for backend in map(BACKENDS.get, torch._C._get_sdp_priority_order()):
        if runs.get(backend):
            return backend
    raise NotPlannable("no SDPA kernel enabled would run this attention on CUDA (of those the plan models: flash, "
                       "memory-efficient, math)")


def _signature(t):
    """What torch's choice reads of a tensor: its shape, last-dim stride, dtype and whether it requires grad (flash
    refuses head dims over 192 for a backward on sm86, sm89 and sm120); None for no tensor."""
    return None if t is None else (tuple(t.shape), t.stride(-1), t.dtype, t.requires_grad)


@functools.cache
def settle_cuda_priority() -> None:
    """torch sets its default SDPA priority on CUDA at its first choice in a process (cuDNN first on sm90 and sm100
    with cuDNN above 9.15), over whatever order was set before it, and torch._C._get_sdp_priority_order() does not
    trigger that: one choice on tiny CUDA tensors first, so that the settings read (and an order pinned after this)
    are those torch then uses. Once a process; nothing without CUDA."""
    if torch.cuda.is_available():
        with _disable_current_modes():
            t = torch.empty(1, 1, 8, 8, device="cuda", dtype=torch.float16)
            torch._fused_sdp_choice(t, t, t)


def _settings():
    """What else torch's choice reads, so that a cached choice is never one made under other settings: the kernels
    enabled and their priority (torch.nn.attention.sdpa_kernel sets both; on CUDA torch puts cuDNN first at its first
    choice on sm90 and sm100 with cuDNN above 9.15, unless TORCH_CUDNN_SDPA_DEPRIORITIZED is set), and grad mode
    (with it off, no input counts as requiring grad)."""
    cuda = torch.backends.cuda
    return (tuple(torch._C._get_sdp_priority_order()), cuda.flash_sdp_enabled(), cuda.mem_efficient_sdp_enabled(),
            cuda.math_sdp_enabled(), cuda.cudnn_sdp_enabled(), torch.is_grad_enabled())


@functools.lru_cache(maxsize=4096)
def _torch_choice(device, q, k, v, mask, dropout_p, is_causal, scale, enable_gqa, settings) -> str:
    """torch._fused_sdp_choice on `device` for tensors of these signatures, each a few elements of storage, under
    `settings` (those in force: the cache's key)."""
    def proxy(sig):
        if sig is None:
            return None
        shape, stride, dtype, grad = sig
        base = torch.empty(shape[-1] * max(1, stride), dtype=dtype, device=device)
        return base.as_strided(shape, (0,) * (len(shape) - 1) + (stride,)).requires_grad_(grad)

    with _disable_current_modes():  # the proxies are not the step's memory
        choice = torch._fused_sdp_choice(proxy(q), proxy(k), proxy(v), attn_mask=proxy(mask), dropout_p=dropout_p,
                                         is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)
    return BACKENDS.get(choice, "math")
