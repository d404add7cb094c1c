"""TRL's packing (impls/packing/trl_bfd.py): its rows hold every token once and never overfill, it is our ffd's
best-fit decreasing (row for row in count when packed as one batch), what its per-batch packing costs, that it
truncates where we reject or split, and its version contract. Tests that run trl skip where it is not installed."""

import importlib
from types import SimpleNamespace

import numpy as np
import pytest

from impls.libraries import ECOSYSTEM
from impls.packing import PACKERS, trl_bfd
from impls.packing.check import assert_valid
from impls.rmpad.lengths import make_lengths
from tests.optional import needs

NEEDS = needs("trl")
DISTS = ("uniform", "lognormal", "zipf", "bimodal")
# Dataset.map's default batch is 1,000 sequences, each packed alone: at the smoke grid's 2,000 sequences per
# distribution, rows of 512, TRL's efficiency was 0.0059 under ffd's on uniform (0.9847 against 0.9906), 0.0023 on
# bimodal, equal on lognormal and zipf; at 100k, 0.014 on uniform. 0.01 holds at 2,000 with room.
BATCHED_MARGIN = 0.01


@pytest.fixture(autouse=True)
def fresh_api():
    trl_bfd.api.cache_clear()  # api() is cached: a faked module must not outlive its test
    yield
    trl_bfd.api.cache_clear()


def lengths(dist: str, packing_length: int, n: int = 2000) -> np.ndarray:
    return np.asarray(make_lengths(dist, n, packing_length, seed=0), dtype=np.int64)


@NEEDS
@pytest.mark.parametrize("packing_length", [512, 431])  # 431: an odd capacity
@pytest.mark.parametrize("dist", DISTS)
def test_every_token_lands_once_and_no_row_overfills(dist, packing_length):
    lens = lengths(dist, packing_length)
    p = trl_bfd.trl_bfd(lens, packing_length=packing_length, batch_size=8)
    assert_valid(p, lens, packing_length)
    assert p.real_tokens == lens.sum()


@NEEDS
@pytest.mark.parametrize("dist", DISTS)
def test_as_one_batch_it_is_our_best_fit_decreasing(dist):
    # the same algorithm: the rows' count, so the efficiency, is ffd's exactly (which row a sample joins among rows
    # with equal free space differs: TRL takes the oldest, ffd the newest)
    lens = lengths(dist, 512)
    ours = PACKERS["ffd"](lens, packing_length=512, batch_size=8)
    theirs = trl_bfd.trl_bfd(lens, packing_length=512, batch_size=8, map_kwargs={"batch_size": None})
    assert theirs.n_rows == ours.n_rows and theirs.efficiency == ours.efficiency
    assert sorted(theirs.row_len) == sorted(ours.row_len)


@NEEDS
@pytest.mark.parametrize("dist", DISTS)
def test_per_batch_packing_is_within_the_margin_of_ours(dist):
    lens = lengths(dist, 512)
    ours = PACKERS["ffd"](lens, packing_length=512, batch_size=8)
    theirs = trl_bfd.trl_bfd(lens, packing_length=512, batch_size=8)  # map's default batch, as SFTTrainer packs
    assert ours.efficiency - BATCHED_MARGIN <= theirs.efficiency <= ours.efficiency
    # each batch packed alone: as many rows as ffd makes of each 1,000-sequence slice, rows in slice order
    per_slice = sum(PACKERS["ffd"](lens[i : i + 1000], packing_length=512, batch_size=8).n_rows
                    for i in range(0, lens.size, 1000))
    assert theirs.n_rows == per_slice


@NEEDS
def test_trl_truncates_an_overlong_sample_where_we_reject_or_split():
    data = trl_bfd.dataset(np.array([10, 2]))  # sample 0: ten 0s; sample 1: two 1s
    packed = trl_bfd.pack(data, 4)
    assert sorted(map(list, packed.data.table.column("input_ids").to_pylist())) == [[0, 0, 0, 0], [1, 1]]  # 6 lost
    with pytest.raises(ValueError, match="only overlong='reject'"):
        trl_bfd.trl_bfd([10, 2], packing_length=4, batch_size=1, overlong="split")
    with pytest.raises(ValueError, match="overlong='split'"):
        trl_bfd.trl_bfd([10, 2], packing_length=4, batch_size=1)  # our reject, before TRL sees it
    assert_valid(PACKERS["ffd"]([10, 2], packing_length=4, batch_size=1, overlong="split"), [10, 2], 4)


@NEEDS
def test_a_truncated_segment_is_not_read_as_a_sample():
    packed = trl_bfd.pack(trl_bfd.dataset(np.array([10, 2])), 4)
    with pytest.raises(ValueError, match="not whole samples"):
        trl_bfd.to_packing(packed, np.array([10, 2]), 4, 1)


def fake_trl(monkeypatch, module):
    real = importlib.import_module

    def import_module(name, package=None):
        return module if name == trl_bfd.MODULE else real(name, package)

    monkeypatch.setattr(trl_bfd.importlib, "import_module", import_module)


def test_a_moved_pack_dataset_raises_api_moved(monkeypatch):
    fake_trl(monkeypatch, SimpleNamespace())
    with pytest.raises(trl_bfd.ApiMoved, match="no longer has pack_dataset"):
        trl_bfd.api()
    trl_bfd.api.cache_clear()

    def pack_dataset(dataset, seq_length):
        return dataset

    fake_trl(monkeypatch, SimpleNamespace(pack_dataset=pack_dataset))
    with pytest.raises(trl_bfd.ApiMoved, match="not dataset, seq_length, strategy, map_kwargs"):
        trl_bfd.api()


@NEEDS
def test_the_suite_declares_trl_and_plans_it_as_its_packers():
    # planned as ffd is: the plan packs for real on the host (_packing) and plans the step on TRL's rows
    from suites.packing import TRL, Packing, _packing

    suite = Packing()
    assert suite.libraries[TRL] == trl_bfd.label() and suite.requires[TRL] == ("trl", ECOSYSTEM)
    p = _packing(TRL, "lognormal", 2000, 512, 8)
    assert p == trl_bfd.trl_bfd(lengths("lognormal", 512), packing_length=512, batch_size=8)


@NEEDS
def test_packing_leaves_no_semaphore_and_says_nothing():
    # map's progress bar, even off, made tqdm's default lock, a multiprocessing semaphore that every case's process
    # left behind (a "leaked semaphore" warning as bench exited); and trl's import pulled in torchao's CUDA-library
    # and enum warnings. A fresh process, as a case's, counts what it registers and what it logs
    import subprocess
    import sys

    code = """
import logging, multiprocessing.resource_tracker as rt, numpy as np
made = []
rt.register = lambda name, rtype: made.append(rtype)
logging.basicConfig(level=logging.WARNING)
from impls.packing import trl_bfd
trl_bfd.pack(trl_bfd.dataset(np.array([5, 7, 9] * 100)), 64)
print("semaphores", made.count("semaphore"))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "semaphores 0", out.stdout + out.stderr[-2000:]
    assert "Failed to load" not in out.stderr and "register_constant" not in out.stderr, out.stderr[-2000:]
