"""Activation offload planned on meta (bench.plan_offload): a GPU's saved tensors go to host memory and come back at
their backward; on a CPU they are the tensors themselves; tensors with data keep save_on_cpu's own hooks. The end-to-end
check is against the H100 run: full-size checkpointing with offload to the byte (tests/bench/test_plan_error.py)."""

import pytest
import torch

from bench.memory import TensorMemoryTracker
from bench.plan_offload import target_offload

B, D = 64, 256  # x [B, D] fp32: 64 KiB; w [D, D]: 256 KiB


def forward_held(target: str, offload: bool = True) -> tuple[int, torch.Tensor, torch.Tensor]:
    """(bytes the graph holds on the device after the forward, x, w), the forward's own tensors dropped."""
    x = torch.empty(B, D, device="meta", requires_grad=True)
    w = torch.empty(D, D, device="meta", requires_grad=True)
    with target_offload(target), TensorMemoryTracker() as t:
        with torch.autograd.graph.save_on_cpu() if offload else torch.autograd.graph.saved_tensors_hooks(
                lambda v: v, lambda v: v):
            h = (x @ w).relu()  # relu saves h
            y = (h @ w).sum()  # the matmul saves h and w
        del h
        held = t.live_bytes("meta")
        y.backward()
    return held, x, w


@pytest.mark.parametrize("target", ["cpu", "cuda"])
def test_a_gpus_saved_tensors_leave_its_memory_and_a_cpus_stay(target):
    plain, _, _ = forward_held(target, offload=False)
    held, x, w = forward_held(target)
    h_bytes = B * D * 4
    # on a GPU, h lives on only as its host copy; on a CPU, save_on_cpu hands h itself on, as the plain graph holds it
    assert plain - held == (h_bytes if target == "cuda" else 0), (plain, held)
    assert x.grad.shape == x.shape and w.grad.shape == w.shape  # and backward gets every saved tensor back


def test_tensors_with_data_keep_save_on_cpus_own_hooks():
    torch.manual_seed(0)
    x, w = torch.randn(B, D, requires_grad=True), torch.randn(D, D, requires_grad=True)
    (x @ w).relu().matmul(w).sum().backward()
    expected = x.grad.clone(), w.grad.clone()
    x.grad = w.grad = None
    with target_offload("cuda"), torch.autograd.graph.save_on_cpu():
        y = (x @ w).relu().matmul(w).sum()
    y.backward()
    assert torch.equal(x.grad, expected[0]) and torch.equal(w.grad, expected[1])
    assert torch.autograd.graph.save_on_cpu.__name__ == "save_on_cpu"  # put back on exit
