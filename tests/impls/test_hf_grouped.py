"""transformers' length grouping (impls/packing/hf_grouped.py): its order is get_length_grouped_indices', megabatches
sorted longest first with the longest sample swapped to the front, each batch padded to its longest, and on
long-tailed lengths it pads between dataset order and a global sort. Tests that run transformers skip where it is not
installed."""

import importlib
from types import SimpleNamespace

import numpy as np
import pytest

from impls.libraries import ECOSYSTEM
from impls.packing import PACKERS, hf_grouped
from impls.packing.bucketing import bucketing
from impls.packing.check import assert_valid
from impls.rmpad.lengths import make_lengths
from tests.optional import needs

NEEDS = needs("transformers")
BATCH = 8
LENGTHS = np.asarray(make_lengths("lognormal", 2000, 512, seed=0), dtype=np.int64)


@pytest.fixture(autouse=True)
def fresh_api():
    hf_grouped.api.cache_clear()  # api() is cached: a faked module must not outlive its test
    yield
    hf_grouped.api.cache_clear()


def grouped(lengths=LENGTHS, seed=0, batch=BATCH):
    return hf_grouped.hf_group_by_length(lengths, packing_length=512, batch_size=batch, seed=seed)


@NEEDS
def test_the_order_is_transformers_own_for_the_seed():
    import torch
    from transformers.trainer_pt_utils import get_length_grouped_indices

    order = hf_grouped.order(LENGTHS.tolist(), BATCH, seed=0)
    assert order.dtype == np.int64 and sorted(order) == list(range(LENGTHS.size))
    theirs = get_length_grouped_indices(LENGTHS.tolist(), BATCH, generator=torch.Generator().manual_seed(0))
    assert order.tolist() == theirs
    assert np.array_equal(order, hf_grouped.order(LENGTHS.tolist(), BATCH, seed=0))
    assert not np.array_equal(order, hf_grouped.order(LENGTHS.tolist(), BATCH, seed=1))


def megabatches(lengths: np.ndarray, batch: int, seed: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """HF's order on `lengths`, as (its lengths, the lengths of each megabatch: min(n // 4 batch, 50) batches)."""
    n = lengths.size
    order = hf_grouped.order(lengths.tolist(), batch, seed)
    size = max(1, min(n // (4 * batch), 50)) * batch
    return lengths[order], [lengths[order[k : k + size]] for k in range(0, n, size)]


def swapped_heads(lengths: np.ndarray, batch: int, seed: int) -> int:
    """How many megabatches of HF's order on `lengths` start shorter than their second sample."""
    return sum(int(mb.size > 1 and mb[0] < mb[1]) for mb in megabatches(lengths, batch, seed)[1])


@NEEDS
@pytest.mark.parametrize("n", [2000, 100, 13])  # 2000: megabatches of 50 batches; 100: of 3; 13: of 1 (100 // 32 = 3)
def test_megabatches_sorted_longest_first(n):
    ordered, parts = megabatches(LENGTHS[:n], BATCH, seed=0)
    assert ordered[0] == LENGTHS[:n].max()  # the longest sample leads the first batch
    assert all((np.diff(mb[1:]) <= 0).all() for mb in parts)  # each sorted longest first after its head
    # only the megabatch that gave its head to the first one may start with a shorter sample
    assert swapped_heads(LENGTHS[:n], BATCH, seed=0) <= 1


@NEEDS
def test_the_longest_sample_is_swapped_to_the_front():
    # lognormal lengths hold many ties at 512, so the swap leaves every megabatch sorted; 64 distinct lengths in
    # batches of 2 make 4 megabatches of 16, and where the longest is not in the first, the swap shows
    distinct = np.random.default_rng(0).permutation(np.arange(1, 65))
    swaps = [swapped_heads(distinct, 2, seed) for seed in range(20)]
    assert max(swaps) <= 1 and sum(swaps) > 0
    for seed in range(20):
        ordered, parts = megabatches(distinct, 2, seed)
        assert ordered[0] == 64 and all((np.diff(mb[1:]) <= 0).all() for mb in parts), seed


@NEEDS
@pytest.mark.parametrize("batch", [8, 7])  # 7: 2000 rows leave a short last batch
def test_one_sample_per_row_in_hf_order_each_batch_padded_to_its_longest(batch):
    p = grouped(batch=batch)
    assert_valid(p, LENGTHS, 512)
    order = hf_grouped.order(LENGTHS.tolist(), batch, seed=0)
    assert [r[0] for r in p.rows] == order.tolist() and all(len(r) == 1 for r in p.rows)
    # by hand: each batch of `batch` consecutive indices costs its longest times its size
    padded = sum(int(LENGTHS[order[k : k + batch]].max()) * len(order[k : k + batch])
                 for k in range(0, order.size, batch))
    assert p.capacity_tokens == padded and p.real_tokens == LENGTHS.sum()
    for b in range(p.n_batches):
        rows = range(b * batch, min((b + 1) * batch, p.n_rows))
        assert {p.row_len[r] for r in rows} == {max(p.lengths[r][0] for r in rows)}


@NEEDS
def test_it_pads_between_dataset_order_and_a_global_sort():
    # 2,000 lognormal lengths, batches of 8: 0.333 in dataset order, 0.910 here, 0.983 sorted globally
    lens = make_lengths("lognormal", 2000, 512, seed=0)
    dyn = PACKERS["pad_to_batch_max"](lens, packing_length=512, batch_size=BATCH).efficiency
    hf = grouped(lens).efficiency
    buck = bucketing(lens, packing_length=512, batch_size=BATCH).efficiency
    assert dyn <= hf <= buck and (dyn < hf or hf < buck)
    assert hf < buck  # the documented claim: sorting only within megabatches pads more than sorting everything


@NEEDS
def test_overlong_samples_rejected_as_bucketing_rejects_them():
    with pytest.raises(ValueError, match="overlong='split'") as ours:
        bucketing([10, 2], packing_length=4, batch_size=1)
    with pytest.raises(type(ours.value)) as theirs:
        hf_grouped.hf_group_by_length([10, 2], packing_length=4, batch_size=1)  # before transformers sees it
    assert str(theirs.value) == str(ours.value)
    with pytest.raises(ValueError, match="only shuffle=True"):
        hf_grouped.hf_group_by_length([3, 2], packing_length=4, batch_size=1, shuffle=False)


def fake_transformers(monkeypatch, module):
    real = importlib.import_module

    def import_module(name, package=None):
        return module if name == hf_grouped.MODULE else real(name, package)

    monkeypatch.setattr(importlib, "import_module", import_module)


def test_a_moved_get_length_grouped_indices_raises_api_moved(monkeypatch):
    fake_transformers(monkeypatch, SimpleNamespace())
    with pytest.raises(hf_grouped.ApiMoved, match="no longer has get_length_grouped_indices"):
        hf_grouped.api()
    hf_grouped.api.cache_clear()

    def get_length_grouped_indices(lengths, batch_size):
        return list(range(len(lengths)))

    fake_transformers(monkeypatch, SimpleNamespace(get_length_grouped_indices=get_length_grouped_indices))
    with pytest.raises(hf_grouped.ApiMoved, match="not lengths, batch_size, generator"):
        hf_grouped.api()


@NEEDS
def test_the_suite_declares_transformers_and_plans_it_as_its_packers():
    from suites.packing import HF, Packing, _packing

    suite = Packing()
    assert suite.libraries[HF] == hf_grouped.label() and suite.requires[HF] == ("transformers", ECOSYSTEM)
    assert _packing(HF, "lognormal", 2000, 512, BATCH) == grouped()
