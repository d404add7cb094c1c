"""A case's peak_mem_bytes means the same on every device. The CUDA allocator's peak (bench.memory.cuda_peak) is the
most allocated during the step less what was allocated before it, so it nets out whatever the step frees of older
tensors; the CPU's live-tensor tracker never sees those frees. A training step that set the previous step's gradients to
None inside the window measured its peak without them on an H100 and with them on the CPU and in the plan (moe
dispatch's grouped_mm at quick size: 1.1 MiB on the H100, 2.6 MiB in the plan). Each suite that measures a step's peak
is run here on the CPU with every window it measures counted both ways, by the tracker and by one that saw the case
built: the two must agree."""

import sys

import pytest
import torch

from bench.memory import TensorMemoryTracker, peak_bytes
from bench.suite import discover
from tests.optional import needs

# (suite, variants, the grid point's params that pick one smoke point): the suites whose measure calls peak_bytes
# (checkpointing and fsdp_checkpointing measure theirs in step_memory, after setting the gradients to None; moe_ep's
# ranks pass the same `clear` and run only under torchrun)
CASES = [
    ("moe", ("loop", "grouped_torch"), {"part": "dispatch"}),
    ("rmpad", ("padded", "segments"), {"mode": "train", "dist": "uniform"}),
    pytest.param("rmpad", ("hf_flat_sdpa",), {"model": "hf_llama"}, marks=needs("transformers"), id="rmpad-hf"),
    ("packing", ("ffd",), {"dist": "lognormal"}),
    ("mtp", ("plain",), {}),
    ("mla", ("mha",), {"part": "decode"}),
    ("detection", ("single",), {}),
]


@pytest.mark.parametrize("name,variants,where", CASES,  # ids: each case's suite, or its pytest.param id
                         ids=[getattr(c, "id", None) or c[0] for c in CASES])
def test_a_measured_peak_is_what_the_cuda_allocator_would_count(name, variants, where, monkeypatch):
    suite = discover()[name]
    point = next(p for p in suite.grid("smoke", "cpu") if all(p.get(k) == v for k, v in where.items()))
    windows = []
    with TensorMemoryTracker() as everything:
        def both_ways(fn, device, clear=None):
            if clear is not None:
                clear()
            before = everything.live_bytes(device)
            everything.reset_peak()
            peak = peak_bytes(fn, device)
            windows.append((peak, everything.peak_bytes(device) - before))
            return peak

        monkeypatch.setattr(sys.modules[type(suite).__module__], "peak_bytes", both_ways)
        for variant in variants:
            if suite.has_case(variant, point):
                torch.manual_seed(0)
                suite.measure(variant, dict(point), "cpu")
    assert windows, f"no peak measured in {name}'s {variants} at {point}"
    assert all(tracked == allocator for tracked, allocator in windows), windows
