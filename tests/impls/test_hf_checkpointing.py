"""transformers' activation checkpointing against the same model without it: the same gradients, as our variants
give against ours (tests/impls/test_checkpointing.py), and less kept for backward, so the switch is really on."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from impls.checkpointing import TransformerConfig, hf
from impls.checkpointing.check import saved_bytes
from impls.checkpointing.reference import loss_fn, make_batch
from tests.optional import needs

pytestmark = needs("transformers")

ODD = TransformerConfig(d_model=48, n_heads=3, n_layers=5)  # head_dim 16, seq 42 below: no power of two anywhere
SEQ = 42


def step(model, x, target):
    """Loss and the gradients of the input and every parameter that trains, after one forward+backward."""
    model.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    loss = loss_fn(hf.forward(model, x), target)
    loss.backward()
    return loss.detach(), [x.grad, *(p.grad for p in model.parameters() if p.grad is not None)]


@pytest.fixture(scope="module")
def batch():
    return make_batch(ODD, 2, SEQ, "cpu", torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("variant", ["full", "selective"])
def test_matches_no_checkpointing(variant, dtype, batch):
    # On CPU recompute reruns the same deterministic kernels on identical inputs and the selective policy replays
    # saved outputs unchanged, so, as for our variants, any difference at all means the recompute diverged.
    x, target = (t.to(dtype) for t in batch)
    ref_loss, ref_grads = step(hf.build(ODD, SEQ, "none").to(dtype), x, target)
    loss, grads = step(hf.build(ODD, SEQ, variant).to(dtype), x, target)
    torch.testing.assert_close(loss, ref_loss, atol=0.0, rtol=0.0)
    assert len(grads) == len(ref_grads) == 1 + 9 * ODD.n_layers + 1  # input, 9 tensors a layer, the final norm
    for g, ref in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, ref, atol=0.0, rtol=0.0)


def test_checkpointing_keeps_less_for_backward(batch):
    # equal gradients alone would also pass with the switch silently off; what the forward keeps cannot
    x, _ = batch
    kept = {v: saved_bytes(hf.forward, hf.build(ODD, SEQ, v), x)["cpu"] for v in hf.VARIANTS}
    assert kept["full"] * 4 <= kept["none"]  # a [B, S, D] input per layer against every activation
    assert kept["full"] < kept["selective"] < kept["none"]


def test_selective_recomputes_no_matmul_and_full_does(batch):
    x, target = batch
    flops = {}
    for variant in hf.VARIANTS:
        with FlopCounterMode(display=False) as counter:
            step(hf.build(ODD, SEQ, variant), x, target)
        flops[variant] = counter.get_total_flops()
    assert flops["selective"] == flops["none"]
    # forward + backward is ~3 forwards; full reruns each layer's forward but its last matmul (down_proj)
    assert 1.2 <= flops["full"] / flops["none"] <= 4 / 3


def test_unknown_variant_names_the_valid_ones():
    with pytest.raises(ValueError, match="none, full, selective"):
        hf.enable(None, "sqrt")
