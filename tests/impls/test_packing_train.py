"""A training step on packed rows equals training on the samples one at a time; the naive mask does not."""

import pytest
import torch
import torch.nn.functional as F

from impls.packing import PACKERS, masks
from impls.packing.train import packed_logits, packed_loss, packed_rows, sample_tokens, token_ids, unpacked_loss
from impls.rmpad.reference import Decoder, DecoderConfig

CFG = DecoderConfig(vocab=97, d_model=48, n_heads=3, n_layers=2)
LENGTHS = [5, 9, 3, 12, 7, 1, 8, 16, 4]  # one sample fills a row; one has a single token (no target)


@pytest.fixture
def setup():
    torch.manual_seed(0)
    model = Decoder(CFG)
    packing = PACKERS["ffd"](LENGTHS, packing_length=16, batch_size=2)
    rows = range(packing.n_rows)
    return model, packing, rows, packed_rows(packing, rows, CFG.vocab)


def grads(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("overlong", ["reject", "split"])
def test_packed_rows_hold_each_samples_tokens_positions_and_documents(overlong):
    """Row by row: the ids are each entry's slice of its sample's tokens (a split piece continues its sample), the
    positions and document ids are masks.position_ids' and masks.document_ids', the tail is padding."""
    lengths = [*LENGTHS, 37] if overlong == "split" else LENGTHS  # 37 tokens: pieces of 16, 16 and 5
    packing = PACKERS["ffd"](lengths, packing_length=16, batch_size=2, overlong=overlong)
    ids, pos, doc, real = packed_rows(packing, range(packing.n_rows), CFG.vocab)
    assert ids.shape == (packing.n_rows, 16)
    for r in range(packing.n_rows):
        expected = [sample_tokens(s, start + n, CFG.vocab)[start:] for s, start, n in
                    zip(packing.rows[r], packing.starts[r], packing.lengths[r])]
        used = sum(packing.lengths[r])
        assert ids[r, :used].tolist() == torch.cat(expected).tolist() and not ids[r, used:].any()
        assert pos[r].tolist() == masks.position_ids(packing.lengths[r], 16, packing.starts[r]).tolist()
        assert doc[r].tolist() == masks.document_ids(packing.lengths[r], 16).tolist()
        assert real[r].tolist() == [True] * used + [False] * (16 - used)
    if overlong == "split":
        assert sorted(n for r in range(packing.n_rows) for s, n in zip(packing.rows[r], packing.lengths[r])
                      if s == len(LENGTHS)) == [5, 16, 16]


def test_token_ids_are_seeded_per_sample_and_cover_the_vocabulary():
    a = token_ids(torch.arange(200).repeat_interleave(50).numpy(), torch.arange(50).repeat(200).numpy(), CFG.vocab)
    assert a.min() == 1 and a.max() == CFG.vocab - 1 and len(set(a.tolist())) == CFG.vocab - 1  # 10k draws, 96 ids
    assert sample_tokens(3, 40, CFG.vocab).tolist() == a[150:190].tolist()  # sample 3's first 40 positions
    assert sample_tokens(3, 40, CFG.vocab).tolist() != sample_tokens(4, 40, CFG.vocab).tolist()
    assert sample_tokens(3, 40, CFG.vocab, seed=1).tolist() != sample_tokens(3, 40, CFG.vocab).tolist()


def test_packing_puts_several_samples_in_a_row(setup):
    _, packing, _, _ = setup
    assert packing.n_rows < len(LENGTHS)


def test_document_mask_loss_and_gradients_equal_one_sample_at_a_time(setup):
    model, packing, rows, tensors = setup
    ref = unpacked_loss(model, packing, rows, CFG.vocab)
    loss = packed_loss(model, *tensors, mask="document")
    # fp32 on CPU: the same per-token terms summed in another order (rows vs samples) and SDPA over other shapes.
    torch.testing.assert_close(loss, ref, atol=1e-6, rtol=1e-6)
    for g, r in zip(grads(model, loss), grads(model, unpacked_loss(model, packing, rows, CFG.vocab)), strict=True):
        torch.testing.assert_close(g, r, atol=1e-6, rtol=1e-5)


def test_naive_mask_contaminates(setup):
    model, packing, rows, tensors = setup
    ref = unpacked_loss(model, packing, rows, CFG.vocab)
    assert abs(packed_loss(model, *tensors, mask="naive") - ref).item() > 1e-5


@pytest.mark.parametrize("mask, isolated", [("document", True), ("naive", False)])
def test_perturbing_one_sample_leaves_the_others_alone_only_with_the_document_mask(setup, mask, isolated):
    model, packing, _, (ids, pos, doc, real) = setup
    row = next(r for r in range(packing.n_rows) if len(packing.rows[r]) >= 2)
    first = packing.lengths[row][0]
    changed = ids.clone()
    changed[row, :first] = (changed[row, :first] + 1) % (CFG.vocab - 1) + 1  # every token of the row's first sample
    with torch.no_grad():
        before = packed_logits(model, ids, pos, doc, mask)[row, first:int(real[row].sum())]
        after = packed_logits(model, changed, pos, doc, mask)[row, first:int(real[row].sum())]
    assert torch.equal(before, after) is isolated  # exactly, for the document mask


def test_unknown_mask_is_refused(setup):
    model, _, _, tensors = setup
    with pytest.raises(ValueError, match="unknown mask 'diagonal'"):
        packed_loss(model, *tensors, mask="diagonal")


def test_the_reference_batched_by_length_equals_one_batch_padded_to_the_longest(setup):
    """unpacked_loss pads each length bucket to its power of two; padding every sample to the longest (its former,
    plainer form) gives the same loss and gradients: masked keys add exact zeros."""
    model, packing, rows, _ = setup
    samples = [(s, start, n) for r in rows for s, start, n in
               zip(packing.rows[r], packing.starts[r], packing.lengths[r])]
    L = max(n for _, _, n in samples)
    ids = torch.stack([F.pad(sample_tokens(s, start + n, CFG.vocab)[start:], (0, L - n)) for s, start, n in samples])
    mask = (torch.arange(L)[None, :] < torch.tensor([n for _, _, n in samples])[:, None]).long()
    one_batch, bucketed = model(ids, mask), unpacked_loss(model, packing, rows, CFG.vocab)
    torch.testing.assert_close(bucketed, one_batch, atol=1e-7, rtol=1e-7)
    for g, r in zip(grads(model, bucketed), grads(model, model(ids, mask)), strict=True):
        torch.testing.assert_close(g, r, atol=1e-6, rtol=1e-5)
