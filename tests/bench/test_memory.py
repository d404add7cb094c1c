import gc

import torch

from bench.memory import SavedTensorBytes, TensorMemoryTracker, cuda_peak
from tests.optional import needs_cuda


def test_tracker_counts_new_storages_exactly():
    with TensorMemoryTracker() as t:
        a = torch.empty(1000)  # 4000 bytes
        b = torch.zeros(250, dtype=torch.float64)  # 2000 bytes
        assert t.live_bytes("cpu") == 6000
        del a
        gc.collect()
        assert t.live_bytes("cpu") == 2000
        assert t.peak_bytes("cpu") == 6000
        del b
    assert t.live_bytes("cpu") == 0


def test_views_share_one_storage():
    with TensorMemoryTracker() as t:
        x = torch.empty(64, 32)  # 8192 bytes
        views = [x.view(32, 64), x[3:], x.t(), x.unsqueeze(0), x.reshape(-1)]
        assert t.live_bytes("cpu") == 8192
        del x
        assert t.live_bytes("cpu") == 8192  # the views keep the storage alive
        del views
        assert t.live_bytes("cpu") == 0
        assert t.peak_bytes("cpu") == 8192


def test_preexisting_tensors_inplace_and_out_are_not_counted():
    outside = torch.ones(100)
    with TensorMemoryTracker() as t:
        outside.mul_(2)
        v = outside[10:]
        torch.add(outside, 1, out=outside)
        assert t.live_bytes("cpu") == 0
        y = outside + 1  # new: 400 bytes
        assert t.live_bytes("cpu") == 400
        del v, y


def test_reset_peak_and_backward_allocations():
    w = torch.randn(32, 32, requires_grad=True)
    with TensorMemoryTracker() as t:
        h = torch.randn(8, 32) @ w  # randn (1024) + h (1024)
        assert t.live_bytes("cpu") == 2048
        t.reset_peak()
        assert t.peak_bytes("cpu") == 2048
        h.sum().backward()
        # the randn input was held only for backward and is freed; h stays; w.grad (4096) is new
        assert t.live_bytes("cpu") == 1024 + 4096
        assert t.peak_bytes("cpu") >= 2048 + 4096


def test_saved_tensor_bytes_once_per_storage_and_ignores_params():
    w = torch.randn(16, 16, requires_grad=True)
    x = torch.randn(4, 16)  # 256 bytes, saved by both matmuls but counted once
    with SavedTensorBytes(ignore=[w]) as saved:
        y = (x @ w) @ w  # saves x, w, (x @ w), w
    assert saved.total("cpu") == 256 + 256
    y.sum().backward()


@needs_cuda
def test_cuda_peak_over_baseline():
    keep = torch.empty(1 << 20, device="cuda")
    with cuda_peak("cuda") as mem:
        tmp = torch.empty(1 << 22, device="cuda", dtype=torch.uint8)
        del tmp
    assert mem.peak_bytes >= 1 << 22
    assert mem.end_bytes == 0
    del keep
