"""Memory a CUDA kernel takes from the caching allocator for itself, inside one op (`kernel_scratch`, for bench.plan).

torch.cuda.max_memory_allocated counts it and no tensor shows it, so a plan that counts tensors alone comes out under
where a step peaks inside such a kernel. Modelled here, each from torch's source, for the kernels whose scratch is
large enough to matter:

- The reduce kernel's global staging (ATen/native/cuda/Reduce.cuh, gpu_reduce_kernel): a reduction it splits across
  thread blocks (ctas_per_output > 1) stages partial results in a buffer of
  `acc bytes x outputs x ctas_per_output [x block.x x output_vec_size]` and counts finished blocks in semaphores of
  4 B per grid column, both allocated after the output and freed as the op returns. A bias gradient (a sum over the
  tokens' rows of [tokens, N]) gets 2 MiB for N = 256 over 1024 rows and 8 MiB for N = 1024: on an H100, checkpointing's
  quick step peaks inside fc1's, 8 MiB above the tensors (the measured 76,296,704 B, to the byte). How the kernel
  splits depends on the input's layout after TensorIterator reorders and coalesces its dimensions (`_iterate`), and
  on the GPU's multiprocessor count and threads per multiprocessor. Modelled for sum and mean, whose accumulator is
  float for floating inputs (double for float64) and the integer type for integer ones; where the output's dtype
  asks for a cast (an integer or bool sum into int64, float32 summed as float64), torch copies the input into that
  dtype first, which is counted too. Not modelled: other reductions (amax, var, norm), ones over more than 2**31
  bytes (split into sub-iterators, with an accumulation buffer), nested and other subclass tensors, and ROCm's rules.
  Checked once, as it was written, against torch 2.13's own setReduceConfig (compiled from its source against the
  CPU build's TensorIterator) over 21,000 random reductions, and against the H100 runs (torch 2.11); a CUDA test
  (tests/bench/test_plan_scratch.py) compares it with max_memory_allocated on the GPU it runs on.
- mse_loss and smooth_l1_loss (beta > 0) with a reduction compute the unreduced loss into a second buffer of the
  inputs' size, reduced into their output, which torch allocates at that size too and the loss keeps
  (bench.plan_meta); huber_loss computes it into one it frees, and returns a fresh scalar. The buffer is freed as the
  op returns, its reduction's staging on top. The CPU's allocator shows the same (torch 2.11, 2.13), but a CPU
  target's peak is the tracker's, which no kernel's own allocation reaches, so only a CUDA target counts it; on an
  H100 it is the 256 MiB of checkpointing's full-size step without checkpointing, which peaks there (the measured
  52,810,771,456 B).

- FlashAttention-2's split-KV accumulators (`flash_split_kv`): a forward with too few query blocks to fill the GPU
  (a decode step's one query) splits the keys and holds each split's fp32 output and log-sum-exp: 9.5 KiB in mla's
  quick decode on an H100 (7.5 KiB of that decode's peak is still not accounted for), up to 8 MiB in its full-size
  GQA and MQA decode over 128 heads.
- torch._grouped_mm's CUTLASS kernel on Hopper (`grouped_mm_scratch`): its arguments' buffer and CUTLASS's
  workspace of TMA descriptors, about 70 KiB on an H100, inside every grouped GEMM of moe's grouped_mm dispatch.

Written by hand: no library says what a CUDA kernel allocates. FlashAttention's backward accumulators and cuBLAS's
workspaces are not here (the first are at most a query's fp32 bytes, the second made once, in a warm-up).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import _disable_current_modes, is_traceable_wrapper_subclass

from bench import hardware

aten = torch.ops.aten
WARP = 32
MAX_THREADS = 512  # mnt_wrapper<T>::MAX_NUM_THREADS (256 for complex double, which this does not model)
MIN_VALUES_PER_THREAD, MAX_VALUES_PER_THREAD = 16, 256
OUTPUT_VEC = 4  # get_output_vec_size's largest
INPUT_VEC = 4  # ReduceConfig::input_vec_size
INDEX_LIMIT = 2**31 - 1  # can_use_32bit_indexing, in elements and in bytes of offset


@dataclass(frozen=True)
class Multiprocessors:
    """What setReduceConfig asks the device (cudaDeviceProp)."""

    count: int
    threads: int
    """maxThreadsPerMultiProcessor."""
    capability: tuple[int, int] | None = None
    """(major, minor): which kernels torch picks (torch._grouped_mm's CUTLASS path on Hopper)."""


def multiprocessors(gpu: str | None) -> Multiprocessors | None:
    """The target GPU's: bench.hardware's table for a GPU it names; this machine's current CUDA device for None (a
    plan of this machine's GPU) or for its own name (`bench plan --gpu auto` on a GPU the table lacks); else None (the
    reduce kernel's staging is then not modelled: its size depends on them), as for ROCm, whose reductions follow
    rules of their own."""
    known = hardware.multiprocessors(gpu) if gpu is not None else None
    if known is not None:
        return Multiprocessors(*known)
    if not torch.cuda.is_available() or torch.version.hip:
        return None
    device = torch.cuda.current_device()
    if gpu is not None and gpu.lower() != torch.cuda.get_device_name(device).lower():
        return None
    p = torch.cuda.get_device_properties(device)
    threads = getattr(p, "max_threads_per_multi_processor", None) or (1536 if (p.major, p.minor) in
                                                                      ((8, 6), (8, 7), (8, 9)) else 2048)
    return Multiprocessors(p.multi_processor_count, threads, (p.major, p.minor))


def _iterate(shape, in_strides, out_strides) -> tuple[list[int], list[int], list[int]]:
    """TensorIterator's view of a reduction (reorder_dimensions, then coalesce_dimensions): (shape, input strides,
    output strides), fastest dimension first, reduced dimensions (output stride 0) in front; strides in bytes."""
    n = len(shape)
    perm = list(reversed(range(n)))
    ops = (out_strides, in_strides)  # the output is operand 0

    def should_swap(d0: int, d1: int) -> int:
        for k, strides in enumerate(ops):
            s0, s1 = strides[d0], strides[d1]
            if k == 0 and (s0 == 0) != (s1 == 0):  # reduced dimensions to the front
                return 1 if s1 == 0 else -1
            if s0 == 0 or s1 == 0:
                continue
            if s0 != s1:
                return -1 if s0 < s1 else 1
            if shape[d0] > shape[d1]:
                return 1
        return 0

    for i in range(1, n):  # insertion sort with ambiguous comparisons, as TensorIterator's
        j = i
        for k in range(i - 1, -1, -1):
            c = should_swap(perm[k], perm[j])
            if c > 0:
                perm[k], perm[j] = perm[j], perm[k]
                j = k
            elif c < 0:
                break
    shape = [shape[d] for d in perm]
    strides = [[s[d] for d in perm] for s in ops]
    if n > 1:  # coalesce: neighbours where either has size 1 or every operand steps across both as one
        prev = 0
        for d in range(1, n):
            if shape[prev] == 1 or shape[d] == 1 or all(shape[prev] * s[prev] == s[d] for s in strides):
                if shape[prev] == 1:
                    for s in strides:
                        s[prev] = s[d]
                shape[prev] *= shape[d]
            else:
                prev += 1
                if prev != d:
                    for s in strides:
                        s[prev] = s[d]
                    shape[prev] = shape[d]
        shape = shape[:prev + 1]
        strides = [s[:prev + 1] for s in strides]
    return shape, strides[1], strides[0]


def reduce_staging(x: torch.Tensor, dims, out_dtype: torch.dtype, sms: Multiprocessors) -> list[int]:
    """The bytes gpu_reduce_kernel allocates reducing `x` (in its own dtype) over `dims` (all for None or empty) into
    `out_dtype`, in order: [staging, semaphores], or [] where it does not split across thread blocks (or where it is
    not modelled)."""
    if x.numel() == 0 or x.dim() == 0 or x.dtype.is_complex or x.dtype == torch.bool:
        return []
    item = x.element_size()
    reduced = {d % x.dim() for d in dims} if dims else set(range(x.dim()))
    shape = list(x.shape)
    in_strides = [s * item for s in x.stride()]
    # the output as review_reduce_result views it (a contiguous tensor of the kept shape), and TensorIterator's
    # compute_strides: stride 0 over the reduced dimensions the input has more than one of
    out_strides, step = [0] * len(shape), out_dtype.itemsize
    for d in reversed(range(len(shape))):
        out_strides[d] = 0 if d in reduced and shape[d] != 1 else step
        step *= 1 if d in reduced else shape[d]
    span = 1 + sum((n - 1) * abs(s) for n, s in zip(shape, in_strides))
    if x.numel() > INDEX_LIMIT or span > INDEX_LIMIT:
        return []  # sub-iterators, each its own staging, and an accumulation buffer: not modelled
    shape, ins, outs = _iterate(shape, in_strides, out_strides)
    n_reduce = sum(1 for s in outs if s == 0)
    outputs = math.prod(n for n, s in zip(shape, outs) if s != 0)
    inputs = x.numel() // outputs
    # float accumulates 16-bit and 32-bit floats on CUDA, double float64, an integer type itself
    acc = (8 if x.dtype == torch.float64 else 4) if x.dtype.is_floating_point else item

    fastest = n_reduce == len(shape) or ins[0] < ins[n_reduce]
    dim0, dim1 = (inputs, outputs) if fastest else (outputs, inputs)
    stride0 = ins[0] if fastest else ins[n_reduce]
    output_vec = 1
    if stride0 == item:
        if fastest and dim0 >= 128 and n_reduce == 1:
            # vectorised along the input, 4 at a time (8 for 16-bit sum and mean since torch 2.4: the staging is the
            # same, since a split needs inputs enough to fill 512-wide blocks either way)
            dim0 //= INPUT_VEC
        elif not fastest:
            output_vec = _output_vec(x.storage_offset(), shape, ins, n_reduce, item)
            dim0 //= output_vec
    # set_block_dimension
    limit = MAX_THREADS // output_vec
    pow0 = _last_pow2(dim0) if dim0 < limit else limit
    pow1 = _last_pow2(dim1) if dim1 < limit else limit
    width = min(pow0, WARP)
    height = min(pow1, limit // width)
    width = min(pow0, limit // height)
    step_input, step_output = (width, 1) if fastest else (1, width)
    split_warps = -(-inputs // step_input) >= min(height * 16, MAX_VALUES_PER_THREAD)
    if split_warps:
        step_input *= height
    else:
        step_output *= height
    grid = -(-(outputs // output_vec) // step_output)
    target = sms.count * (sms.threads // (width * height))
    per_thread = -(-inputs // step_input)
    if not (split_warps and per_thread >= MAX_VALUES_PER_THREAD and grid <= target):
        return []
    ctas = max(min(-(-target // grid), -(-per_thread // MIN_VALUES_PER_THREAD)),
               -(-per_thread // MAX_VALUES_PER_THREAD))
    if ctas <= 1:
        return []
    staging = acc * outputs * ctas * (1 if fastest else width * output_vec)
    return [staging, 4 * grid]


def _last_pow2(n: int) -> int:
    return max(1, 1 << (int(n).bit_length() - 1))


def _output_vec(offset: int, shape, ins, n_reduce: int, item: int) -> int:
    """get_output_vec_size: 4, halved until it divides the input's offset, the first output dimension's size and the
    input's other strides (in elements); an allocation's base is 512 B aligned."""
    vec = OUTPUT_VEC
    for n in [offset, shape[n_reduce], *(s // item for j, s in enumerate(ins) if j != n_reduce)]:
        while n % vec:
            vec //= 2
    return vec


_REDUCTIONS = {aten.sum.dim_IntList, aten.sum.default, aten.mean.dim, aten.mean.default}
_GROUPED_MM = getattr(getattr(aten, "_grouped_mm", None), "default", None)
_FLASH_FORWARD = {aten._scaled_dot_product_flash_attention.default, aten._flash_attention_forward.default}
TMA_DESCRIPTOR = 128  # bytes: sizeof(cute::TmaDescriptor), a CUtensorMap
_LOSSES = {aten.mse_loss.default, aten.smooth_l1_loss.default, aten.huber_loss.default}


def kernel_scratch(gpu: str | None):
    """A bench.memory.TensorMemoryTracker `scratch` for a CUDA target: (func, args, kwargs, out) -> the bytes the op's
    kernel allocates after its outputs, in order, each freed as it returns (in reverse); None where nothing is
    modelled for the target (an unknown GPU: the staging depends on its multiprocessors)."""
    sms = multiprocessors(gpu)
    if sms is None:
        return None

    def scratch(func, args, kwargs, out) -> list[int]:
        if func in _REDUCTIONS:
            x = args[0]
            if not _plain(x) or not isinstance(out, torch.Tensor):
                return []
            dims = args[1] if len(args) > 1 else kwargs.get("dim")
            into = _input_dtype(x.dtype, out.dtype)
            if into == x.dtype:
                return reduce_staging(x, dims, out.dtype, sms)
            copy = _converted(x, into)  # make_reduction: self.to(in_dtype), then the reduction of the copy
            return [copy.numel() * copy.element_size(), *reduce_staging(copy, dims, out.dtype, sms)]
        if func in _FLASH_FORWARD:
            return flash_split_kv(func, args, kwargs, sms)
        if func is _GROUPED_MM:
            return grouped_mm_scratch(*args[:3], out, sms) if len(args) > 2 else \
                grouped_mm_scratch(args[0], args[1], kwargs.get("offs"), out, sms)
        if func in _LOSSES:
            reduction = args[2] if len(args) > 2 else kwargs.get("reduction", 1)
            beta = args[3] if len(args) > 3 else kwargs.get("beta", 1.0)
            if not reduction or not all(_plain(t) for t in args[:2]) or \
                    (func is aten.smooth_l1_loss.default and beta == 0):  # beta 0: l1_loss, whose ops are seen
                return []
            with _disable_current_modes():
                unreduced = torch.empty(torch.broadcast_shapes(args[0].shape, args[1].shape), dtype=out.dtype,
                                        device="meta")
            return [unreduced.numel() * unreduced.element_size(), *reduce_staging(unreduced, None, out.dtype, sms)]
        return []

    return scratch


def flash_split_kv(func, args, kwargs, sms: Multiprocessors) -> list[int]:
    """FlashAttention-2's split-KV accumulators (flash_api.cpp, mha_fwd's set_params_splitkv): where a forward's
    (batch x heads x 64-query blocks) fills too few of the GPU's blocks, the kernel splits the keys into
    `num_splits_heuristic` parts and holds each part's fp32 output [splits, B, H, Lq, head dim rounded to 32 (64 past
    128)] and log-sum-exp [splits, B, H, Lq] until it combines them: a decode step's attention (one query) on an H100,
    9 splits of 2,049 keys, 9,728 B. A one-query call of fewer key heads, without a window or ALiBi, is first laid
    out as ngroups queries of the key heads (seqlenq_ngroups_swapped). mha_varlen_fwd (torch's nested-tensor flash)
    splits only such a call, which the plan's own routes never make. None with dropout, an empty batch, a split
    count asked for (torch 2.13's num_splits of 1) or a paged cache (block_table: not modelled)."""
    def arg(name):
        return _argument(func, args, kwargs, name)

    q, k = arg("query"), arg("key")
    if arg("dropout_p") or not all(_plain(t) for t in (q, k)) or arg("block_table") is not None or \
            arg("num_splits") not in (None, 0):
        return []
    if func is aten._scaled_dot_product_flash_attention.default:  # [B, H, L, D]
        (batch, heads, q_len, dim), k_heads, k_len, varlen = q.shape, k.shape[1], k.shape[2], False
    elif arg("cum_seq_q") is None:  # _flash_attention_forward, dense: [B, L, H, D]
        (batch, q_len, heads, dim), k_heads, k_len, varlen = q.shape, k.shape[2], k.shape[1], False
    else:  # varlen: [total, H, D] with cumulative lengths and the longest sequences
        batch, heads, dim, k_heads, q_len, k_len, varlen = arg("cum_seq_q").shape[0] - 1, q.shape[1], q.shape[2], \
            k.shape[1], arg("max_q"), arg("max_k"), True
    if not all(isinstance(n, int) for n in (q_len, k_len)) or not batch * heads * q_len * k_len:
        return []
    alibi = arg("alibi_slopes") is not None
    left, right = (-1 if w is None or w >= k_len else w for w in (arg("window_size_left"), arg("window_size_right")))
    if arg("is_causal") and (q_len > 1 or alibi):  # one query (without ALiBi) is not causal
        right = 0
    swapped = q_len == 1 and heads > k_heads and left < 0 and right < 0 and dim % 8 == 0 and not alibi
    if varlen and not swapped:
        return []
    if swapped:
        q_len, heads = heads // k_heads, k_heads
    head = -(-dim // 8) * 8
    rounded = -(-head // (32 if head <= 128 else 64)) * (32 if head <= 128 else 64)
    block_n = 256 if head <= 64 else 128 if head <= 128 else 64
    splits = _num_splits(batch * heads * -(-q_len // 64), sms.count * 2, -(-k_len // block_n), 128)
    if splits <= 1:
        return []
    return [4 * splits * batch * heads * q_len, 4 * splits * batch * heads * q_len * rounded]


def _argument(func, args, kwargs, name: str):
    """An op's argument by its schema's name: positional, keyword, or the schema's default; None for a name the
    schema lacks (an argument of another torch version's)."""
    for i, a in enumerate(func._schema.arguments):
        if a.name == name:
            return args[i] if i < len(args) else kwargs.get(name, a.default_value)
    return None


def _f32(x: float) -> float:
    return struct.unpack("f", struct.pack("f", x))[0]


def _num_splits(blocks: int, sms: int, n_blocks: int, max_splits: int) -> int:
    """flash_api.cpp's num_splits_heuristic, its float arithmetic in float32 as there: the fewest splits of the keys
    whose waves of blocks reach 85% of the best efficiency."""
    if blocks >= _f32(_f32(0.8) * sms):
        return 1
    max_splits = min(max_splits, sms, n_blocks)

    def eligible(s):
        return s == 1 or -(-n_blocks // s) != -(-n_blocks // (s - 1))

    efficiency = {}
    for s in range(1, max_splits + 1):
        if eligible(s):
            waves = _f32(_f32(float(blocks * s)) / sms)
            efficiency[s] = _f32(waves / math.ceil(waves))
    best = max(efficiency.values(), default=0.0)
    return next((s for s in sorted(efficiency) if efficiency[s] >= 0.85 * best), 1)


def grouped_mm_scratch(a, b, offs, out, sms: Multiprocessors) -> list[int]:
    """torch._grouped_mm's CUTLASS kernel on Hopper (GroupMM.cu, bf16bf16_grouped_gemm_impl_sm90_sm100, the path torch
    takes for bf16 on sm90 and sm100; elsewhere its fallback loops over matmuls into the output): after the output,
    the kernel's arguments in one buffer, a pointer each to A, B and the output for every group (their count rounded
    up to 2) and 12 B of problem shape and three 8 B strides a group; then CUTLASS's workspace, a TMA descriptor per
    SM for each of A and B (the ptr-array mainloop) and for the output D of each of its epilogue's two warp groups
    (its C is void: the eight bf16 grouped kernels in torch 2.11's CUDA build). 4,096 B and 67,584 B at 64 groups on
    an H100's 132 SMs: moe's grouped_mm dispatch at quick size peaks inside it (the H100 run, to the byte).
    Blackwell's (sm100) schedules are not modelled."""
    if sms.capability is None or sms.capability[0] != 9 or not all(_plain(t) and t.dtype == torch.bfloat16
                                                                     for t in (a, b, out)):
        return []
    if a.dim() == 2 and b.dim() == 2:
        if offs is None:
            return []
        groups = offs.shape[0]
    else:
        groups = b.shape[0] if a.dim() == 2 else a.shape[0]
    arguments = -(-groups // 2) * 2 * 3 * 8 + groups * 12 + 3 * groups * 8
    return [arguments, 4 * TMA_DESCRIPTOR * sms.count]


def _plain(t) -> bool:
    """A strided tensor of torch's own: not a nested or other subclass tensor, whose ops run their own kernels."""
    return isinstance(t, torch.Tensor) and t.layout == torch.strided and not t.is_nested and \
        not is_traceable_wrapper_subclass(t)


def _input_dtype(dtype: torch.dtype, out: torch.dtype) -> torch.dtype:
    """make_reduction_from_out_ty: the dtype the input is reduced in, the output's but for 16-bit floats into
    float32, which the kernel reads as they are."""
    return dtype if dtype == out or (dtype in (torch.float16, torch.bfloat16) and out == torch.float32) else out


def _converted(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """x.to(dtype)'s layout as a meta tensor: empty_like's (preserve_format: x's strides where they are dense, else
    those of the memory format they suggest), which _to_copy takes."""
    with _disable_current_modes():
        return torch.empty_like(x, dtype=dtype, device="meta")
