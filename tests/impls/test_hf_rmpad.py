"""transformers' padding-free path against its padded reference: the same loss and gradients, as our unpadded
backends give against ours (tests/impls/test_rmpad.py, same tolerances); what cannot run on CPU says why."""

import importlib.util

import pytest
import torch

from impls.rmpad import hf
from impls.rmpad.reference import Decoder, DecoderConfig, make_batch
from tests.optional import needs

pytestmark = needs("transformers")

TINY = DecoderConfig(vocab=64, d_model=32, n_heads=2, n_layers=2)  # head_dim 16
MAX_LEN = 129
LENGTHS = [
    pytest.param([1, 7, 129], id="odd-1-7-129"),
    pytest.param([129], id="one-at-max-no-pad"),
    pytest.param([5, 129, 1, 42], id="one-at-max-padded"),
]
# fp32 on CPU, as for our segments backend: one [B, H, L, L] masked SDPA call against one [1, H, T, T] call with the
# library's block-diagonal mask, and the cross-entropy summed in another order. Measured: loss gap <= 9.5e-7 on a loss
# of ~4.2 (2e-7 relative), gradients <= 1.5e-8 on values ~5e-2. 1e-6 / 1e-5 is the suite's own tolerance.
ATOL, RTOL = 1e-6, 1e-5


def setup(lengths, attn="sdpa"):
    model = hf.build(TINY, attn, MAX_LEN, seed=0)
    ids, mask = make_batch(TINY, lengths, seed=1)
    return model, ids, mask


def train_step(model, fn):
    model.zero_grad(set_to_none=True)
    loss = fn()
    loss.backward()
    return loss.detach(), [p.grad for p in model.parameters() if p.requires_grad]


def test_collator_restarts_positions_and_separates_labels():
    ids = [torch.tensor([5, 6, 7]), torch.tensor([9]), torch.tensor([3, 4])]
    batch = hf.flatten(ids)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 9, 3, 4]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 0, 1]]
    # a sample's first token is no target: the previous sample's last token must not learn to predict it
    assert batch["labels"].tolist() == [[hf.IGNORE, 6, 7, hf.IGNORE, hf.IGNORE, 4]]


@pytest.mark.parametrize("lengths", LENGTHS)
def test_flattened_sdpa_loss_and_grads_match_padded(lengths):
    model, ids, mask = setup(lengths)
    ref_loss, ref_grads = train_step(model, lambda: hf.padded_loss(model, ids, mask))
    loss, grads = train_step(model, lambda: hf.flat_loss(model, hf.flatten_padded(ids, mask)))
    torch.testing.assert_close(loss, ref_loss, atol=ATOL, rtol=RTOL, msg=lambda m: (
        f"transformers {hf.version()}: the flattened row's loss left the padded one; does sdpa still read packed "
        f"position_ids as separate samples? {m}"))
    assert len(grads) == len(ref_grads) == len(list(model.parameters()))
    for g, ref in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, ref, atol=ATOL, rtol=RTOL)


def test_without_position_ids_the_flattened_row_contaminates():
    # the control: the equality above is the library's packed-sequence masking, not luck of the data
    model, ids, mask = setup([5, 129, 1, 42])
    batch = hf.flatten_padded(ids, mask)
    with torch.no_grad():
        ref = hf.padded_loss(model, ids, mask)
        plain = hf.flat_loss(model, {k: v for k, v in batch.items() if k != "position_ids"})
    assert abs(plain - ref).item() > 1e-4


@pytest.mark.parametrize("attn", list(hf.ATTENTION))
def test_forward_matches_padded_where_supported(attn):
    ok, why = hf.supports(attn, "cpu", backward=False)
    if not ok:
        pytest.skip(why)
    model, ids, mask = setup([5, 129, 1, 42], attn)
    reference = hf.build(TINY, "sdpa", MAX_LEN, seed=0)
    with torch.no_grad():  # forward only: flex_attention has no CPU backward
        loss = hf.flat_loss(model, hf.flatten_padded(ids, mask, flash_kwargs=attn == "fa2"))
        torch.testing.assert_close(loss, hf.padded_loss(reference, ids, mask), atol=ATOL, rtol=RTOL)


def test_flex_refuses_backward_on_cpu_with_the_reason_the_suite_records():
    # the suite skips without building the model; the reason it records must be the one the library run would hit
    ok, why = hf.supports("flex", "cpu")
    assert not ok and why
    # the lengths of the forward test above: transformers compiles flex_attention, and a shape it has compiled is
    # not compiled again (a new one cost 14 CPU s of g++ on a 2-core machine)
    model, ids, mask = setup([5, 129, 1, 42], "flex")
    with pytest.raises((NotImplementedError, RuntimeError), match=why):
        hf.flat_loss(model, hf.flatten_padded(ids, mask)).backward()


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is not None, reason="flash_attn is installed here")
def test_flash_attention_2_without_flash_attn_is_refused_by_the_library():
    assert not hf.supports("fa2", "cpu")[0]
    with pytest.raises(ImportError, match="FlashAttention2"):
        hf.build(TINY, "fa2", MAX_LEN)


def test_llama_is_sized_like_the_suite_decoder():
    model = hf.build(TINY, "sdpa", MAX_LEN)
    ours = sum(p.numel() for p in Decoder(TINY).parameters())
    theirs = sum(p.numel() for p in model.parameters())
    layer = model.model.layers[0]
    assert layer.self_attn.q_proj.weight.shape == (TINY.d_model, TINY.d_model)
    assert layer.self_attn.k_proj.weight.shape == (TINY.d_model, TINY.d_model)  # no GQA: as many K/V heads as Q
    assert len(model.model.layers) == TINY.n_layers and model.lm_head.weight.shape == (TINY.vocab, TINY.d_model)
    assert abs(theirs - ours) / ours < 0.05  # SwiGLU at 2/3 of the width: the same parameters up to rounding
