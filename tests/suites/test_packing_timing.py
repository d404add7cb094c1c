"""What the packing suite's pack_time holds, for our packers and the libraries' alike: no first call (a library's
first call in a process can cost more than its later ones), and the same work (for transformers' length grouping:
the lengths checked, the order and the padded rows, as our padding packers build them)."""

import time

import pytest

import bench.timing
import suites.packing as mod
from impls.packing import PACKERS, hf_grouped, trl_bfd
from tests.optional import missing

SLOW_FIRST_S = 1000.0
"""What a packer's first call adds to the timer's clock: far more than any call takes on a loaded machine (a real
sleep of 0.4 s was within reach of one: a call of 504 ms on a busy 2-core VM)."""


@pytest.fixture
def clock(monkeypatch) -> list[float]:
    """bench.timing's perf_counter, ahead of the real one by the seconds added to the list's one item."""
    skew = [0.0]
    real = time.perf_counter
    monkeypatch.setattr(bench.timing.time, "perf_counter", lambda: real() + skew[0])
    return skew


def _params():
    return next(p for p in mod.Packing().grid("smoke", "cpu") if p["dist"] == "lognormal")


def _slow_first(fn, clock):
    calls = []

    def wrapped(*args, **kwargs):
        if not calls:
            clock[0] += SLOW_FIRST_S
        calls.append(1)
        return fn(*args, **kwargs)

    return wrapped, calls


@pytest.mark.parametrize("variant", ["ffd", mod.TRL, mod.HF])
def test_a_packers_first_call_in_the_process_is_not_timed(variant, monkeypatch, clock):
    if variant == mod.TRL and missing("trl"):
        pytest.skip("needs trl")
    if variant == mod.HF and missing("transformers"):
        pytest.skip("needs transformers")
    if variant == mod.TRL:
        wrapped, calls = _slow_first(trl_bfd.pack, clock)
        monkeypatch.setattr(trl_bfd, "pack", wrapped)
    elif variant == mod.HF:
        wrapped, calls = _slow_first(hf_grouped.api(), clock)
        monkeypatch.setattr(hf_grouped, "api", lambda: wrapped)
    else:
        wrapped, calls = _slow_first(PACKERS["ffd"], clock)
        monkeypatch.setitem(PACKERS, "ffd", wrapped)
    m = mod.Packing().measure(variant, _params(), "cpu")
    samples = m.timings["pack_time"].samples_ms
    assert len(calls) == len(samples) + 1  # the first call is the untimed one
    assert max(samples) < 1e3 * SLOW_FIRST_S


@pytest.mark.skipif(missing("transformers"), reason="needs transformers")
def test_hf_length_grouping_times_the_lengths_check_and_its_rows_as_ours_do(monkeypatch):
    # bucketing and pad_to_batch_max check the lengths (to_items) and build the padded rows inside their timed call;
    # transformers' order alone would be timed on less work than they are
    delay = 0.02

    def slow(fn):
        def wrapped(*args, **kwargs):
            time.sleep(delay)
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(hf_grouped, "to_items", slow(hf_grouped.to_items))
    monkeypatch.setattr(hf_grouped, "rows", slow(hf_grouped.rows))
    m = mod.Packing().measure(mod.HF, _params(), "cpu")
    assert min(m.timings["pack_time"].samples_ms) >= 2e3 * delay
