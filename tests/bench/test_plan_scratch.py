"""bench.plan_scratch: what CUDA kernels take from the caching allocator for themselves inside one op. The expected
figures are worked by hand from torch's source (Reduce.cuh's setReduceConfig and global_memory_size, TensorIterator's
reorder_dimensions and coalesce_dimensions); a CUDA test compares the plan with max_memory_allocated over a spread of
reductions, in a fresh process."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.memory import TensorMemoryTracker
from bench.plan_alloc import CONFIG_ENV, CachingAllocatorModel
from bench.plan_scratch import Multiprocessors, _iterate, kernel_scratch, multiprocessors, reduce_staging
from tests.optional import needs_cuda

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
    (got, semaphores) = reduce_staging(meta(1024, n), [0], torch.bfloat16, 8, H100)
    assert got == 4 * n * 16 * 32 * 4 == staging
    assert semaphores == 4 * (n // 4 // 32)  # an int per grid column


def test_reductions_that_stay_in_one_block_take_nothing():
    # mtp's RMSNorm weight gradient at quick size: [528, 64], 66 values a thread after the warps' split
    assert reduce_staging(meta(528, 64), [0], torch.bfloat16, 8, H100) == []
    # a row-wise mean (one output per row, many rows): its grid fills the GPU without splitting
    assert reduce_staging(meta(4096, 256), [-1], torch.bfloat16, 8, H100) == []
    assert reduce_staging(meta(0, 256), [0], torch.bfloat16, 8, H100) == []  # nothing to reduce
    assert reduce_staging(meta(1024, 256, dtype=torch.int64), [0], torch.int64, 8, H100) == []  # not modelled


def test_a_full_reduction_stages_one_float_per_block():
    # 2**20 fp32 to a scalar: block 512 x 1, 2048 values a thread, min(132 x 4 blocks, 2048 / 16) = 128 blocks
    assert reduce_staging(meta(1 << 20, dtype=torch.float32), None, torch.float32, 4, H100) == [128 * 4, 4]
    # the GPU decides: on an L4 (58 SMs of 1536 threads) min(58 x 3, 128) = 128 as well; 2**18 values take
    # min(174, 512 / 16) = 32 blocks; 2**16 leave 128 values a thread, under 256, and stay in one
    l4 = Multiprocessors(58, 1536)
    assert reduce_staging(meta(1 << 20, dtype=torch.float32), [], torch.float32, 4, l4) == [128 * 4, 4]
    assert reduce_staging(meta(1 << 18, dtype=torch.float32), None, torch.float32, 4, l4) == [32 * 4, 4]
    assert reduce_staging(meta(1 << 16, dtype=torch.float32), None, torch.float32, 4, l4) == []


def test_the_scratch_of_sum_mean_and_mse_loss():
    scratch = kernel_scratch("h100 80gb hbm3")
    grad = meta(1024, 1024)
    assert scratch(torch.ops.aten.sum.dim_IntList, (grad, [0], True), {}, meta(1, 1024)) == [8 * MiB, 32]
    assert scratch(torch.ops.aten.mean.dim, (grad, [0]), {}, meta(1024)) == [8 * MiB, 32]
    # bf16 summed into float32 reads the bf16 input (no copy): the same split
    assert scratch(torch.ops.aten.sum.dim_IntList, (grad, [0]), {"dtype": torch.float32},
                   meta(1024, dtype=torch.float32)) == [8 * MiB, 32]
    # into float64 torch converts the input first, a copy this does not model: nothing claimed
    assert scratch(torch.ops.aten.sum.dim_IntList, (grad, [0]), {"dtype": torch.float64},
                   meta(1024, dtype=torch.float64)) == []
    # mse_loss: the unreduced loss of the inputs' size, then its mean's staging
    x = meta(4, 256, 256, dtype=torch.float32)
    loss = scratch(torch.ops.aten.mse_loss.default, (x, x), {}, meta((), dtype=torch.float32))
    assert loss[0] == x.numel() * 4 and loss[1:] == reduce_staging(x, None, torch.float32, 4, H100)
    assert scratch(torch.ops.aten.mse_loss.default, (x, x, 0), {}, x) == []  # no reduction, no second buffer
    assert scratch(torch.ops.aten.add.Tensor, (x, x), {}, x) == []


def test_an_unknown_gpu_models_no_staging_without_a_device_to_ask():
    # the split depends on the multiprocessors: a GPU the table lacks, planned from a machine without it, gets none
    assert multiprocessors("h200") == Multiprocessors(132, 2048)
    if not torch.cuda.is_available():
        assert multiprocessors("some future gpu") is None and kernel_scratch("some future gpu") is None


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


REDUCTIONS = r"""
import sys
sys.path.insert(0, sys.argv[1])
import torch
from bench.memory import TensorMemoryTracker
from bench.plan_alloc import CachingAllocatorModel
from bench.plan_scratch import kernel_scratch

scratch = kernel_scratch(None)  # this machine's GPU
cases = [((1024, 256), 0, torch.bfloat16, "sum"), ((1024, 768), 0, torch.bfloat16, "sum"),
         ((1024, 1024), 0, torch.bfloat16, "sum"), ((4, 256, 256), (0, 1), torch.bfloat16, "sum"),
         ((32768, 2048), 0, torch.bfloat16, "sum"), ((4096, 512), 0, torch.float32, "sum"),
         ((4096, 512), 0, torch.float16, "mean"), ((1 << 22,), None, torch.float32, "mean"),
         ((1 << 20,), None, torch.bfloat16, "sum"), ((512, 64, 33), (0, 2), torch.float32, "sum"),
         ((2048, 96), 0, torch.float32, "sum"), ((96, 2048), 1, torch.bfloat16, "mean")]
for shape, dims, dtype, op in cases:
    for transposed in (False, True):
        if transposed and len(shape) < 2:
            continue
        model = CachingAllocatorModel()
        with TensorMemoryTracker(model, scratch=scratch):
            x = torch.empty(shape[::-1] if transposed else shape, dtype=dtype, device="meta")
            x = x.mT if transposed and len(shape) == 2 else (x.permute(2, 1, 0) if transposed else x)
            model.reset_peak()
            base = model.allocated
            getattr(torch, op)(x, dims) if dims is not None else getattr(torch, op)(x)
            planned = model.peak_allocated - base
        torch.cuda.empty_cache()
        x = torch.empty(shape[::-1] if transposed else shape, dtype=dtype, device="cuda")
        x = x.mT if transposed and len(shape) == 2 else (x.permute(2, 1, 0) if transposed else x)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = getattr(torch, op)(x, dims) if dims is not None else getattr(torch, op)(x)
        torch.cuda.synchronize()
        measured = torch.cuda.max_memory_allocated() - base
        del x, out
        if measured != planned:
            sys.exit(f"{op}{shape} over {dims}, {dtype}, transposed={transposed}: CUDA {measured} B, plan {planned} B")
print("ok", len(cases))
"""


@needs_cuda
def test_the_staging_matches_what_cuda_allocates():
    env = {k: v for k, v in os.environ.items() if k not in CONFIG_ENV}
    root = str(Path(__file__).resolve().parents[2])
    done = subprocess.run([sys.executable, "-c", REDUCTIONS, root], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0 and done.stdout.startswith("ok"), done.stderr[-2000:] or done.stdout
