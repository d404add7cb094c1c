"""How bench.case classifies the ways a case ends."""

import pytest
import torch

from bench.case import _is_oom


def test_cpu_allocation_failure_is_oom():
    # torch's CPU allocator raises a plain RuntimeError; the case ran out of memory, it did not fail
    with pytest.raises(RuntimeError) as info:
        torch.empty(1 << 52, dtype=torch.uint8)  # 4 PiB: more than any machine has
    assert _is_oom(info.value)


@pytest.mark.parametrize("exc, oom", [
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 TiB"), True),
    (RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate(handle)"), True),
    (MemoryError(), True),
    (RuntimeError("shape mismatch"), False),
    (ValueError("out of memory"), False),
])
def test_is_oom(exc, oom):
    assert _is_oom(exc) is oom
