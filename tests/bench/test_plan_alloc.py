"""bench.plan_alloc: the model of torch's CUDA caching allocator that turns a plan's tensors into the bytes CUDA
reports, and the tracker that feeds it. The rules are checked one by one here; a CUDA test replays a random sequence
on the real allocator, in a fresh process, and compares every figure."""

import os
import subprocess
import sys
from pathlib import Path

import torch

from bench.memory import TensorMemoryTracker, built_on_host
from bench.plan_alloc import CachingAllocatorModel
from bench.suite import build_module
from tests.optional import needs_cuda

MiB = 1 << 20


def test_requests_round_to_512_bytes_in_2_mib_segments():
    a = CachingAllocatorModel()
    blocks = [a.malloc(n) for n in (1, 512, 513, 1000)]
    assert [b.size for b in blocks] == [512, 512, 1024, 1024]
    assert (a.allocated, a.reserved) == (3072, 2 * MiB)  # one small segment serves them all


def test_large_requests_take_20_mib_segments_and_split_them():
    a = CachingAllocatorModel()
    first = a.malloc(3 * MiB)
    second = a.malloc(3 * MiB)
    assert (first.size, second.size, a.reserved) == (3 * MiB, 3 * MiB, 20 * MiB)
    a.malloc(11 * MiB + 1)  # fits the 14 MiB left: split from it
    assert a.reserved == 20 * MiB
    b = CachingAllocatorModel()
    own = b.malloc(11 * MiB + 1)  # a new segment for 10 MiB or more is its own, rounded up to 2 MiB, and with
    assert (own.size, b.reserved) == (12 * MiB, 12 * MiB)  # under 1 MiB over, not split: the tensor counts 12 MiB


def test_a_block_within_1_mib_of_the_request_is_handed_out_whole():
    # the large pool splits only when more than 1 MiB would remain: a 1.5 MiB tensor in a freed 2 MiB block counts
    # 2 MiB, which is what max_memory_allocated reports and what the tensors' bytes alone miss
    a = CachingAllocatorModel()
    freed, kept = a.malloc(2 * MiB), a.malloc(2 * MiB)
    a.free(freed)
    reused = a.malloc(3 * MiB // 2)
    assert reused.address == freed.address and reused.size == 2 * MiB
    assert a.allocated == 4 * MiB and a.reserved == 20 * MiB
    a.free(kept)
    a.free(reused)
    assert a.allocated == 0 and a.peak_allocated == 4 * MiB


def test_freed_neighbours_merge_and_the_smallest_fitting_block_is_taken():
    a = CachingAllocatorModel()
    x, y, z = (a.malloc(4 * MiB) for _ in range(3))
    a.free(x)
    a.free(y)  # merges with x: one free 8 MiB block, beside the 8 MiB left at the segment's end once z is freed
    big = a.malloc(7 * MiB)
    assert big.address == x.address  # 8 MiB free there, and 8 MiB after z: the lowest address breaks the tie
    a.free(z)
    a.free(big)
    whole = a.malloc(20 * MiB - 512)  # everything merged back into the one segment
    assert a.reserved == 20 * MiB and whole.size == 20 * MiB  # 512 B would remain: not split
    a.reset_peak()
    assert a.peak_allocated == a.allocated == 20 * MiB


def test_the_tracker_feeds_the_model_and_an_in_place_twin_takes_its_temporarys_block():
    # backward sums two gradients of one tensor; on meta (subclass-like) out of place, on a GPU in place: the twin
    # must take its temporary's block, or the model's bytes fall 128 KiB under the tracker's while it lives. Blocks
    # are the tensors here but for the scalars (the loss and its gradient, 4 B in a 512 B block)
    gaps, twins = [], []

    class Checked(TensorMemoryTracker):
        def track(self, storage, replaces=None):
            super().track(storage, replaces)
            twins.append(self._pending is not None)

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self._settle()
            gaps.append(self.live_bytes("meta") - self.allocator.allocated)
            return super().__torch_dispatch__(func, types, args, kwargs)

    x = torch.empty(128, 256, device="meta", requires_grad=True)  # 128 KiB
    model = CachingAllocatorModel()
    with Checked(model) as tracker:
        y = x * 2
        (y * 3 + y.exp()).sum().backward()
        live, peak = tracker.live_bytes("meta"), tracker.peak_bytes("meta")
    assert any(twins) and all(-1024 <= gap <= 0 for gap in gaps), sorted(set(gaps))
    assert model.allocated == live == 2 * 128 * 256 * 4  # y and x.grad
    assert model.peak_allocated == peak


def test_a_module_built_on_the_host_counts_only_its_copy_to_a_gpu():
    layer = lambda: torch.nn.Sequential(torch.nn.Linear(512, 512), torch.nn.LayerNorm(512))  # noqa: E731
    params = (512 * 512 + 512 + 2 * 512) * 2  # bf16
    with TensorMemoryTracker(host_builds=False) as gpu, TensorMemoryTracker() as cpu:
        module = build_module(layer, "meta", torch.bfloat16)
    assert gpu.live_bytes("meta") == gpu.peak_bytes("meta") == params  # no float32 weights, each tensor once
    assert cpu.live_bytes("meta") == params and cpu.peak_bytes("meta") > 2 * params  # built in float32, then cast
    assert {p.dtype for p in module.parameters()} == {torch.bfloat16}


def test_built_on_host_copies_children_before_their_parent():
    order = []

    class Log(TensorMemoryTracker):
        def track(self, storage, replaces=None):
            order.append(storage.nbytes())
            super().track(storage, replaces)

    def build():
        parent = torch.nn.Module()
        parent.register_buffer("own", torch.empty(3, device="meta"))
        parent.child = torch.nn.Linear(2, 5, device="meta")
        return parent

    with Log(host_builds=False):
        built_on_host(build)
    assert order == [40, 20, 12]  # child's weight and bias (Module._apply's order), then the parent's buffer


REPLAY = r"""
import random, sys, torch
sys.path.insert(0, sys.argv[1])
from bench.plan_alloc import CachingAllocatorModel
model, rng, live = CachingAllocatorModel(), random.Random(0), []
torch.cuda.init()
base_a, base_r = torch.cuda.memory_allocated(), torch.cuda.memory_reserved()
for i in range(400):
    if live and rng.random() < 0.45:
        t, b = live.pop(rng.randrange(len(live)))
        del t
        model.free(b)
    else:
        n = rng.choice([rng.randint(1, 4096), rng.randint(4096, 1 << 20), rng.randint(1 << 20, 12 << 20),
                        rng.randint(12 << 20, 40 << 20)])
        live.append((torch.empty(n, dtype=torch.uint8, device="cuda"), model.malloc(n)))
    got = (torch.cuda.memory_allocated() - base_a, torch.cuda.memory_reserved() - base_r)
    if got != (model.allocated, model.reserved):
        sys.exit(f"step {i}: CUDA allocated, reserved {got} != the model's {(model.allocated, model.reserved)}")
print("ok", model.peak_allocated, model.peak_reserved)
"""


@needs_cuda
def test_the_model_matches_the_cuda_caching_allocator():
    # a fresh process: a clean allocator with the default configuration (no PYTORCH_CUDA_ALLOC_CONF)
    env = {k: v for k, v in os.environ.items() if k != "PYTORCH_CUDA_ALLOC_CONF"}
    root = str(Path(__file__).resolve().parents[2])
    done = subprocess.run([sys.executable, "-c", REPLAY, root], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0 and done.stdout.startswith("ok"), done.stderr[-2000:] or done.stdout


def test_an_empty_tensor_takes_no_block():
    model = CachingAllocatorModel()
    with TensorMemoryTracker(model):
        torch.empty(0, device="meta")
    assert model.allocated == model.reserved == 0
