"""Activation offload planned on meta (bench.plan_offload): a GPU's saved tensors go to host memory and come back at
their backward; on a CPU they are the tensors themselves; tensors with data keep save_on_cpu's own hooks. The end-to-end
check is against the H100 run: full-size checkpointing with offload to the byte (tests/bench/test_plan_error.py)."""

from contextlib import nullcontext

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from bench.memory import TensorMemoryTracker
from bench.plan_offload import target_offload

B, D = 64, 256  # x [B, D] fp32: 64 KiB; w [D, D]: 256 KiB


class Copies(TorchDispatchMode):
    """Bytes of the clones made while active: the copies back to the device."""

    def __init__(self):
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.aten.clone.default:
            self.bytes += out.numel() * out.element_size()
        return out


def step(target: str, offload: bool = True) -> tuple[int, int, int | None, torch.Tensor, torch.Tensor]:
    """(bytes the graph holds on the device after the forward, bytes copied back during backward, the host copies'
    peak, x, w), the forward's own tensors dropped."""
    x = torch.empty(B, D, device="meta", requires_grad=True)
    w = torch.empty(D, D, device="meta", requires_grad=True)
    with target_offload(target) as host, TensorMemoryTracker() as t:
        with torch.autograd.graph.save_on_cpu() if offload else nullcontext():
            h = (x @ w).relu()  # the matmul saves x and w, relu saves h
            y = (h @ w).sum()  # the matmul saves h and w
        del h
        held = t.live_bytes("meta")
        with Copies() as copies:
            y.backward()
    return held, copies.bytes, host.peak_host_bytes, x, w


@pytest.mark.parametrize("target", ["cpu", "cuda"])
def test_a_gpus_saved_tensors_leave_its_memory_and_a_cpus_stay(target):
    plain, _, _, _, _ = step(target, offload=False)
    held, copied, host, x, w = step(target)
    h, w_bytes = B * D * 4, D * D * 4
    # on a GPU, h lives on only as its host copy; on a CPU, save_on_cpu hands h itself on, as the plain graph holds it
    assert plain - held == (h if target == "cuda" else 0), (plain, held)
    # each of the five saves (x, w, h, h, w) is a host copy, and each comes back as a device copy at its backward
    saved = 3 * h + 2 * w_bytes
    assert (copied, host) == ((saved, saved) if target == "cuda" else (0, 0)), (copied, host)
    assert x.grad.shape == x.shape and w.grad.shape == w.shape  # and backward gets every saved tensor back


def test_tensors_with_data_keep_save_on_cpus_own_hooks(monkeypatch):
    real = torch.autograd.graph.save_on_cpu
    packed = []

    class Spy(real):  # save_on_cpu as it stands, its packs counted
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            pack = self.pack_hook
            self.pack_hook = lambda t: packed.append(t.shape) or pack(t)

    monkeypatch.setattr(torch.autograd.graph, "save_on_cpu", Spy)
    torch.manual_seed(0)
    x, w = torch.randn(B, D, requires_grad=True), torch.randn(D, D, requires_grad=True)
    (x @ w).relu().matmul(w).sum().backward()
    expected = x.grad.clone(), w.grad.clone()
    x.grad = w.grad = None
    with target_offload("cuda"), torch.autograd.graph.save_on_cpu():
        y = (x @ w).relu().matmul(w).sum()
    y.backward()
    assert len(packed) == 5  # x, w, h, h, w: through save_on_cpu's own hooks
    assert torch.equal(x.grad, expected[0]) and torch.equal(w.grad, expected[1])
    assert torch.autograd.graph.save_on_cpu is Spy  # put back on exit
