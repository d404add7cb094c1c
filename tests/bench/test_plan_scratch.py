"""bench.plan_scratch: what CUDA kernels take from the caching allocator for themselves inside one op. The expected
figures are worked by hand from torch's source (Reduce.cuh's setReduceConfig and global_memory_size, TensorIterator's
reorder_dimensions and coalesce_dimensions); a CUDA test compares the plan with max_memory_allocated over a spread of
reductions, in a fresh process."""


import pytest
import torch

from bench.memory import TensorMemoryTracker
from bench.plan_alloc import CachingAllocatorModel
from bench.plan_scratch import (
    Multiprocessors,
    _iterate,
    _num_splits,
    grouped_mm_scratch,
    kernel_scratch,
    multiprocessors,
    reduce_staging,
)
from bench.suite import discover
from tests.optional import fresh_cuda_process, needs_cuda

MiB = 1 << 20
H100 = Multiprocessors(132, 2048)


def meta(*shape, dtype=torch.bfloat16):
    return torch.empty(*shape, dtype=dtype, device="meta")


def test_the_iterator_puts_reduced_dimensions_first_and_coalesces_them():
    # a bias gradient: [tokens, N] summed over the tokens, strides in bytes; the tokens' dimension is reduced (output
    # stride 0) and moves to the front, the output's dimension follows
    assert _iterate([1024, 256], [512, 2], [0, 2]) == ([1024, 256], [512, 2], [0, 2])
    # the last dimension of a contiguous [A, B]: fastest first, as TensorIterator orders them
    assert _iterate([8, 64], [256, 4], [4, 0]) == ([64, 8], [4, 256], [0, 4])
    # [A, B, C] over A and B: the two reduced dimensions, contiguous with each other, become one of A * B
    assert _iterate([4, 256, 64], [32768, 128, 2], [0, 0, 2]) == ([1024, 64], [128, 2], [0, 2])
    # a transposed input over its first dimension reduces along its fastest one
    assert _iterate([64, 32], [2, 128], [0, 2]) == ([64, 32], [2, 128], [0, 2])


@pytest.mark.parametrize("n, staging", [(256, 2 * MiB), (768, 6 * MiB), (1024, 8 * MiB)])
def test_a_bias_gradient_over_1024_rows_splits_across_blocks_on_an_h100(n, staging):
    # [1024, n] bf16 over dim 0 (the column reduction): 4 outputs a thread (output_vec_size), block 32 x 4 (512
    # threads / 4), 1024 / 4 = 256 values a thread, which is MAX_VALUES_PER_THREAD: split across
    # min(ceil(132 SMs x 16 blocks / grid), 256 / 16) = 16 blocks, each staging 32 x 4 float partials per output
    (got, semaphores) = reduce_staging(meta(1024, n), [0], torch.bfloat16, H100)
    assert got == 4 * n * 16 * 32 * 4 == staging
    assert semaphores == 4 * (n // 4 // 32)  # an int per grid column


def test_reductions_that_stay_in_one_block_take_nothing():
    # mtp's RMSNorm weight gradient at quick size: [528, 64], 66 values a thread after the warps' split
    assert reduce_staging(meta(528, 64), [0], torch.bfloat16, H100) == []
    # a row-wise mean (one output per row, many rows): its grid fills the GPU without splitting
    assert reduce_staging(meta(4096, 256), [-1], torch.bfloat16, H100) == []
    assert reduce_staging(meta(0, 256), [0], torch.bfloat16, H100) == []  # nothing to reduce
    # over 2**31 elements, or 2**31 bytes of offsets: sub-iterators, not modelled
    assert reduce_staging(meta(1 << 31), None, torch.bfloat16, H100) == []
    assert reduce_staging(meta(1 << 29, 2, dtype=torch.float32), [0], torch.float32, H100) == []


def test_the_output_vector_follows_the_inputs_alignment():
    # [4096, 256] bf16 over its rows, 8 MiB of staging: 4 outputs a thread. A view whose rows are 258 apart and start
    # 1 element in reads 1 output a thread (a 128-wide block of them: 4 x 256 x 16 x 128 B), 2 elements in 2 a thread
    assert reduce_staging(meta(4096, 256), [0], torch.bfloat16, H100) == [8 * MiB, 8]
    padded = meta(4096 * 258 + 2)
    for offset, got in ((1, [512 * 1024, 32]), (2, [2 * MiB, 16])):
        view = padded.as_strided((4096, 256), (258, 1), offset)
        assert reduce_staging(view, [0], torch.bfloat16, H100) == got, offset


def test_an_integer_reduction_accumulates_in_its_own_type():
    # [1024, 256] int64 over dim 0: the bias gradients' split, 8-byte partials
    assert reduce_staging(meta(1024, 256, dtype=torch.int64), [0], torch.int64, H100) == [8 * 256 * 16 * 32 * 4, 8]


def test_a_full_reduction_stages_one_float_per_block():
    # 2**20 fp32 to a scalar: block 512 x 1, 2048 values a thread, min(132 x 4 blocks, 2048 / 16) = 128 blocks
    assert reduce_staging(meta(1 << 20, dtype=torch.float32), None, torch.float32, H100) == [128 * 4, 4]
    # the GPU decides: on an L4 (58 SMs of 1536 threads) min(58 x 3, 128) = 128 as well; 2**18 values take
    # min(174, 512 / 16) = 32 blocks; 2**16 leave 128 values a thread, under 256, and stay in one
    l4 = Multiprocessors(58, 1536)
    assert reduce_staging(meta(1 << 20, dtype=torch.float32), [], torch.float32, l4) == [128 * 4, 4]
    assert reduce_staging(meta(1 << 18, dtype=torch.float32), None, torch.float32, l4) == [32 * 4, 4]
    assert reduce_staging(meta(1 << 16, dtype=torch.float32), None, torch.float32, l4) == []


def test_the_scratch_of_sum_and_mean():
    scratch = kernel_scratch("h100 80gb hbm3")
    grad = meta(1024, 1024)
    assert scratch(torch.ops.aten.sum.dim_IntList, (grad, [0], True), {}, meta(1, 1024)) == [8 * MiB, 32]
    assert scratch(torch.ops.aten.mean.dim, (grad, [0]), {}, meta(1024)) == [8 * MiB, 32]
    # bf16 summed into float32 reads the bf16 input (no copy): the same split
    assert scratch(torch.ops.aten.sum.dim_IntList, (grad, [0]), {"dtype": torch.float32},
                   meta(1024, dtype=torch.float32)) == [8 * MiB, 32]
    # into float64 torch copies the input first (8 MiB), then reduces the copy with double partials (16 MiB)
    assert scratch(torch.ops.aten.sum.dim_IntList, (grad, [0]), {"dtype": torch.float64},
                   meta(1024, dtype=torch.float64)) == [8 * MiB, 16 * MiB, 32]
    # a bool mask's count: copied to int64 (2 MiB), 32 blocks of one int64 partial each
    mask = meta(64, 4096, dtype=torch.bool)
    assert scratch(torch.ops.aten.sum.default, (mask,), {}, meta((), dtype=torch.int64)) == [2 * MiB, 32 * 8, 4]
    assert scratch(torch.ops.aten.add.Tensor, (grad, grad), {}, grad) == []
    # a nested tensor's reduction runs kernels of its own: nothing claimed (and no error)
    nested = torch.nested.nested_tensor([torch.zeros(3, 8), torch.zeros(5, 8)], layout=torch.jagged)
    assert scratch(torch.ops.aten.sum.dim_IntList, (nested, [-1]), {}, nested) == []


@pytest.mark.parametrize("loss, held", [(torch.ops.aten.mse_loss.default, True),
                                        (torch.ops.aten.smooth_l1_loss.default, True),
                                        (torch.ops.aten.huber_loss.default, False)])
def test_the_scratch_of_losses(loss, held):
    # the unreduced loss of the inputs' size (1 MiB), then its mean's staging: 2**18 fp32 values, 32 blocks
    scratch = kernel_scratch("h100 80gb hbm3")
    x = meta(4, 256, 256, dtype=torch.float32)
    assert scratch(loss, (x, x), {}, meta((), dtype=torch.float32)) == [MiB, 32 * 4, 4]
    assert scratch(loss, (x, x, 0), {}, x) == []  # no reduction: the output is the unreduced loss
    if loss is torch.ops.aten.smooth_l1_loss.default:
        assert scratch(loss, (x, x, 1, 0.0), {}, meta((), dtype=torch.float32)) == []  # beta 0 is l1_loss's ops


def test_the_grouped_gemm_takes_its_arguments_and_a_tma_descriptor_workspace_on_hopper():
    # GroupMM.cu on sm90: A, B and output pointers for 64 groups (64 x 24 B), 64 problem shapes (12 B) and 3 x 64
    # strides (8 B): 3,840 B; CUTLASS's workspace: 4 TMA descriptors of 128 B (A, B, and D for each of the epilogue's
    # two warp groups) for each of 132 SMs
    grouped = torch.ops.aten._grouped_mm.default
    x, w, out = meta(2048, 64), meta(64, 64, 128), meta(2048, 128)
    offs = meta(64, dtype=torch.int32)
    assert kernel_scratch("h100 80gb hbm3")(grouped, (x, w, offs), {}, out) == [3840, 67584]
    assert kernel_scratch("h100 pcie")(grouped, (x, w), {"offs": offs}, out) == [3840, 4 * 128 * 114]
    # the weights' gradient, both operands 2-D (K split by offs): a group per offset; an odd count rounds up to 2
    dy, g = meta(128, 2048), meta(2048, 64)
    assert kernel_scratch("h200")(grouped, (dy, g, meta(7, dtype=torch.int32)), {}, meta(7, 128, 64)) == \
        [8 * 24 + 7 * 12 + 3 * 7 * 8, 67584]
    # 3-D activations over 2-D weights: a group per batch entry
    assert kernel_scratch("h200")(grouped, (meta(5, 64, 64), meta(64, 128 * 5), offs), {}, meta(5, 64, 128)) == \
        [6 * 24 + 5 * 12 + 3 * 5 * 8, 67584]
    # not on Ampere, Ada or Blackwell (Ampere's and Ada's fallback loops over matmuls; sm100's schedules differ), nor in
    # float32, nor with an input of another dtype
    blackwell = Multiprocessors(148, 2048, (10, 0))
    assert grouped_mm_scratch(x, w, offs, out, blackwell) == []
    assert grouped_mm_scratch(x.float(), w, offs, out, H100) == []
    assert kernel_scratch("a100-sxm4-80gb")(grouped, (x, w, offs), {}, out) == []
    assert kernel_scratch("l40s")(grouped, (x, w, offs), {}, out) == []
    x32, w32 = meta(2048, 64, dtype=torch.float32), meta(64, 64, 128, dtype=torch.float32)
    assert kernel_scratch("h200")(grouped, (x32, w32, offs), {}, meta(2048, 128, dtype=torch.float32)) == []


def test_flash_attention_splits_a_decoding_querys_keys_across_blocks():
    # flash_api.cpp's own example: 48 (batch x heads) blocks on 108 SMs take 2 splits (efficiency 0.89, against 1.0 at
    # 9); enough blocks to fill 80% of the SMs take none
    assert _num_splits(48, 108, 64, 128) == 2
    assert _num_splits(300, 264, 9, 128) == 1
    flash = torch.ops.aten._scaled_dot_product_flash_attention.default
    h100 = kernel_scratch("h100 80gb hbm3")
    # mla's quick decode: one query of 8 heads of 32 over 2,049 keys: 8 blocks of the 264 an H100 runs (128 threads
    # a block), 9 key blocks of 256: 9 splits, each an fp32 log-sum-exp and output per head
    q, k = meta(1, 8, 1, 32), meta(1, 8, 2049, 32)
    assert h100(flash, (q, k, k), {}, None) == [9 * 8 * 4, 9 * 8 * 32 * 4]
    # GQA's one query of 8 heads over 2 key heads runs as 4 queries of the 2: the same buffers
    k2 = meta(1, 2, 2049, 32)
    assert h100(flash, (q, k2, k2), {}, None) == [9 * 2 * 4 * 4, 9 * 2 * 4 * 32 * 4]
    # a head of 80 rounds to 96 and takes key blocks of 128: 17 of them, 17 splits
    q80, k80 = meta(1, 8, 1, 80), meta(1, 8, 2049, 80)
    assert h100(flash, (q80, k80, k80), {}, None) == [17 * 8 * 4, 17 * 8 * 96 * 4]
    # float32 arithmetic as flash_api.cpp's: 6 blocks over 199 key blocks take 40 splits (double arithmetic: 34)
    assert _num_splits(6, 264, 199, 128) == 40
    # 212 blocks (>= 80% of 264) fill the GPU: no split; 211 do not
    assert h100(flash, (meta(1, 212, 1, 64), meta(1, 212, 4096, 64), meta(1, 212, 4096, 64)), {}, None) == []
    assert h100(flash, (meta(1, 211, 1, 64), meta(1, 211, 4096, 64), meta(1, 211, 4096, 64)), {}, None) != []
    # a head of 160 rounds to 192 (64 past 128) and takes key blocks of 64
    q160, k160 = meta(1, 8, 1, 160), meta(1, 8, 2049, 160)
    splits = _num_splits(8, 264, 33, 128)
    assert h100(flash, (q160, k160, k160), {}, None) == [splits * 8 * 4, splits * 8 * 192 * 4]
    # keys in one block of 256 take one split; dropout has no split kernel; an empty batch runs nothing
    assert h100(flash, (meta(4, 4, 256, 64),) * 3, {}, None) == []
    assert h100(flash, (q, k, k, 0.1), {}, None) == []
    assert h100(flash, (meta(0, 8, 1, 32), meta(0, 8, 2049, 32), meta(0, 8, 2049, 32)), {}, None) == []
    # the varlen kernel (nested tensors' flash) splits only a GQA query of one token
    varlen = torch.ops.aten._flash_attention_forward.default
    cu = meta(2, dtype=torch.int32)
    assert h100(varlen, (meta(1, 8, 32), meta(2049, 8, 32), meta(2049, 8, 32), cu, cu, 1, 2049, 0.0, False, False),
                {}, None) == []
    gqa = (meta(1, 8, 32), meta(2049, 2, 32), meta(2049, 2, 32), cu, cu, 1, 2049, 0.0, False, False)
    assert h100(varlen, gqa, {}, None) == [9 * 2 * 4 * 4, 9 * 2 * 4 * 32 * 4]
    # a sliding window or ALiBi keeps the one query per head: 8 blocks, not 2 swapped ones
    dense = (meta(1, 1, 8, 32), meta(1, 2049, 2, 32), meta(1, 2049, 2, 32), None, None, 1, 2049, 0.0, False, False)
    assert h100(varlen, dense, {}, None) == [9 * 2 * 4 * 4, 9 * 2 * 4 * 32 * 4]
    for extra in ({"window_size_left": 256}, {"alibi_slopes": meta(8, dtype=torch.float32)}):
        assert h100(varlen, dense, extra, None) == [9 * 8 * 4, 9 * 8 * 32 * 4], extra


def test_an_unknown_gpu_models_no_staging():
    # the split depends on the multiprocessors: a GPU the table lacks gets none, even planned on a machine with a GPU
    # (whose figures are its own); None asks this machine's GPU, where there is one
    assert multiprocessors("h200") == Multiprocessors(132, 2048, (9, 0))
    assert multiprocessors("some future gpu") is None and kernel_scratch("some future gpu") is None
    assert (multiprocessors(None) is None) == (not torch.cuda.is_available() or bool(torch.version.hip))
    if multiprocessors(None) is not None:  # `bench plan --gpu auto` names this machine's GPU: asked as for None
        assert multiprocessors(torch.cuda.get_device_name(torch.cuda.current_device())) == multiprocessors(None)


def test_a_cpu_target_counts_no_kernel_scratch(monkeypatch):
    # the CPU's peak is the tracker's, which no kernel's own allocation reaches: its plan asks for none
    from bench import plan

    def refuse(gpu):
        raise AssertionError("a CPU plan asked for kernels' scratch")

    monkeypatch.setattr(plan, "kernel_scratch", refuse)
    checkpointing = discover()["checkpointing"]
    assert plan.run_step(checkpointing, "none", checkpointing.grid("smoke", "cpu")[0], "cpu")["step_peak_bytes"] > 0


def test_the_tracker_counts_scratch_at_its_op_and_gives_it_back():
    allocator = CachingAllocatorModel()
    grad = meta(1024, 1024)
    with TensorMemoryTracker(allocator, scratch=kernel_scratch("h200")) as tracker:
        out = grad.sum(0)
    # the output (2 KiB, a 512 B block of the small pool), then 8 MiB of staging and 32 B of semaphores on top
    assert tracker.peak_bytes("meta") == 2048 + 8 * MiB + 32
    assert allocator.peak_allocated == 2048 + 8 * MiB + 512
    assert tracker.live_bytes("meta") == allocator.allocated == 2048
    del out


COMPARE = """
import sys
sys.path.insert(0, sys.argv[1])
import torch
from bench.memory import TensorMemoryTracker
from bench.plan_alloc import CachingAllocatorModel
from bench.plan_meta import IndexValues
from bench.plan_scratch import kernel_scratch

scratch = kernel_scratch(None)  # this machine's GPU


def compare(build, warm_up=False):
    # (planned, measured): the bytes the step build(device) returns takes at its peak above what build made, the
    # plan's on meta with kernels' scratch, and CUDA's max_memory_allocated
    model = CachingAllocatorModel()
    with IndexValues(), TensorMemoryTracker(model, scratch=scratch):
        step = build("meta")
        model.reset_peak()
        base = model.allocated
        step()
        planned = model.peak_allocated - base
    torch.cuda.empty_cache()
    step = build("cuda")
    if warm_up:
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = step()
    torch.cuda.synchronize()
    del out
    return planned, torch.cuda.max_memory_allocated() - base
"""


REDUCTIONS = COMPARE + r"""
import torch.nn.functional as F

def made(shape, dtype, device, layout):
    # contiguous; "t": its transpose (the last two dimensions swapped, or all reversed for 3-D); an int: a view of rows
    # 2 elements longer than they are, starting that many elements in
    if isinstance(layout, int):
        base = torch.empty(shape[0] * (shape[1] + 2) + layout, dtype=dtype, device=device)
        return base.as_strided(shape, (shape[1] + 2, 1), layout)
    x = torch.empty(shape[::-1] if layout == "t" else shape, dtype=dtype, device=device)
    return x if layout != "t" else (x.mT if x.dim() == 2 else x.permute(2, 1, 0))


bf16, f16, f32 = torch.bfloat16, torch.float16, torch.float32
cases = [((1024, 256), bf16, "sum", 0), ((1024, 768), bf16, "sum", 0), ((1024, 1024), bf16, "sum", 0),
         ((4, 256, 256), bf16, "sum", (0, 1)), ((32768, 2048), bf16, "sum", 0), ((4096, 512), f32, "sum", 0),
         ((4096, 512), f16, "mean", 0), ((1 << 22,), f32, "mean", None), ((1 << 20,), bf16, "sum", None),
         ((512, 64, 33), f32, "sum", (0, 2)), ((2048, 96), f32, "sum", 0), ((96, 2048), bf16, "mean", 1),
         ((4096, 1024), bf16, "sum32", 0), ((64, 4096), torch.bool, "sum", None), ((2048, 512), f32, "sum64", 0),
         ((4, 256, 256), f32, "mse", None), ((4, 256, 256), bf16, "smooth_l1", None), ((1 << 20,), f32, "huber", None)]
ops = {"sum": lambda x, d: x.sum(d) if d is not None else x.sum(), "mean": lambda x, d: x.mean(d) if d is not None
       else x.mean(), "sum32": lambda x, d: x.sum(d, dtype=torch.float32), "sum64": lambda x, d: x.sum(d,
       dtype=torch.float64), "mse": lambda x, d: F.mse_loss(x, x), "smooth_l1": lambda x, d: F.smooth_l1_loss(x, x),
       "huber": lambda x, d: F.huber_loss(x, x)}
checked = 0
for shape, dtype, op, dims in cases:
    for layout in ("c", "t", 1, 2) if len(shape) == 2 else ("c", "t") if len(shape) == 3 else ("c",):
        def build(device, shape=shape, dtype=dtype, op=op, dims=dims, layout=layout):
            x = made(shape, dtype, device, layout)
            return lambda: ops[op](x, dims)

        planned, measured = compare(build)
        checked += 1
        if measured != planned:
            sys.exit(f"{op}{shape} over {dims}, {dtype}, layout {layout}: CUDA {measured} B, plan {planned} B")
print("ok", checked)
"""


@needs_cuda
def test_the_staging_matches_what_cuda_allocates():
    done = fresh_cuda_process(REDUCTIONS)
    assert done.returncode == 0 and done.stdout.startswith("ok"), done.stderr[-2000:] or done.stdout


GROUPED = COMPARE + """
if torch.cuda.get_device_capability()[0] != 9 or not hasattr(torch, "_grouped_mm"):
    print("ok 0 (the CUTLASS path is Hopper's)")
    sys.exit()
checked = 0
for tokens, experts, dim, hidden in ((2048, 64, 64, 128), (8192, 8, 1024, 2048), (512, 7, 256, 64)):
    def build(device, tokens=tokens, experts=experts, dim=dim, hidden=hidden):
        offs = torch.arange(1, experts + 1, dtype=torch.int32) * (tokens // experts)
        x = torch.empty(tokens, dim, dtype=torch.bfloat16, device=device)
        w = torch.empty(experts, dim, hidden, dtype=torch.bfloat16, device=device)
        return lambda: torch._grouped_mm(x, w, offs.to(device))

    planned, measured = compare(build, warm_up=True)
    checked += 1
    if measured != planned:
        sys.exit(f"grouped_mm of {tokens} tokens over {experts} experts: CUDA {measured} B, plan {planned} B")
print("ok", checked)
"""


FLASH = COMPARE + """
if torch.cuda.get_device_capability()[0] < 8:
    print("ok 0 (FlashAttention needs sm80)")
    sys.exit()
flash = torch.ops.aten._scaled_dot_product_flash_attention
checked = 0
shapes = ((1, 8, 8, 1, 2049, 32), (1, 8, 2, 1, 2049, 32), (2, 16, 16, 1, 4096, 128), (1, 8, 8, 64, 1024, 64),
          (4, 4, 4, 256, 256, 64))
for batch, heads, k_heads, q_len, k_len, dim in shapes:
    def build(device, batch=batch, heads=heads, k_heads=k_heads, q_len=q_len, k_len=k_len, dim=dim):
        q = torch.empty(batch, heads, q_len, dim, dtype=torch.bfloat16, device=device)
        k = torch.empty(batch, k_heads, k_len, dim, dtype=torch.bfloat16, device=device)
        return lambda: flash(q, k, k, 0.0, False, False, scale=dim ** -0.5)

    planned, measured = compare(build, warm_up=True)
    checked += 1
    if measured != planned:
        sys.exit(f"flash of {batch}x{heads} queries of {q_len} over {k_heads} key heads of {k_len}: CUDA {measured} B, "
                 f"plan {planned} B")
print("ok", checked)
"""


@needs_cuda
def test_flash_attentions_split_kv_buffers_match_what_cuda_allocates():
    done = fresh_cuda_process(FLASH)
    assert done.returncode == 0 and done.stdout.startswith("ok"), done.stderr[-2000:] or done.stdout


@needs_cuda
def test_the_grouped_gemm_scratch_matches_what_cuda_allocates():
    done = fresh_cuda_process(GROUPED)
    assert done.returncode == 0 and done.stdout.startswith("ok"), done.stderr[-2000:] or done.stdout
