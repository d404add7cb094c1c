import contextlib
import time

import pytest
import torch

from bench.timing import NOISE_IQR_FRACTION, Timing, plan_reps, time_floor, time_fn, time_interleaved
from tests.bench.fake_suites import timer_calls
from tests.optional import needs_cuda


def _noop():
    pass


def test_min_reps_honoured():
    t = time_fn(_noop, "cpu", warmup=2, min_reps=7, max_reps=100, min_time_s=0.0)
    assert t.n == 7
    assert t.warmup == 2
    assert t.method == "wall"


def test_max_reps_caps_a_long_time_budget():
    t = time_fn(_noop, "cpu", warmup=0, min_reps=5, max_reps=12, min_time_s=60.0)
    assert t.n == 12


def test_min_time_honoured_with_sleeping_fn():
    sleep_s = 0.01
    t = time_fn(lambda: time.sleep(sleep_s), "cpu", warmup=1, min_reps=1, max_reps=1000, min_time_s=0.05)
    assert all(s >= sleep_s * 1e3 for s in t.samples_ms)
    # Stops at the first call that brings the measured total to min_time_s.
    assert sum(t.samples_ms) >= 50.0
    assert sum(t.samples_ms[:-1]) < 50.0
    assert 1 <= t.n <= 5


def test_a_smoke_case_takes_a_quarter_of_the_time_floor():
    def calls(size=None):
        with time_floor(size) if size else contextlib.nullcontext():
            return timer_calls(min_reps=2)

    assert (calls(), calls("quick"), calls("full"), calls("smoke")) == (20, 20, 20, 5)
    assert calls() == 20  # restored on leaving
    with time_floor("smoke"):
        assert timer_calls(min_reps=8) == 8  # min_reps still holds


def test_warmup_calls_are_not_sampled():
    calls = []
    t = time_fn(lambda: calls.append(1), torch.device("cpu"), warmup=4, min_reps=3, max_reps=3, min_time_s=0.0)
    assert len(calls) == 4 + 3
    assert t.n == 3


@pytest.mark.parametrize(
    "estimate_ms, expected",
    [
        (1.0, 200),  # 200 ms budget / 1 ms per call
        (100.0, 5),  # budget covered in 2 calls, min_reps wins
        (0.001, 1000),  # would need 200k calls, max_reps wins
        (0.0, 1000),  # unmeasurably fast: as many as allowed
    ],
)
def test_plan_reps(estimate_ms, expected):
    assert plan_reps(estimate_ms, min_reps=5, max_reps=1000, min_time_s=0.2) == expected


def test_summary_statistics_on_known_samples():
    # 1..11 shuffled: linear-interpolated percentiles at rank q * (n - 1) = q * 10.
    t = Timing(samples_ms=(5, 1, 9, 3, 11, 7, 2, 10, 4, 8, 6), warmup=0, method="wall")
    assert t.n == 11
    assert t.median_ms == 6.0
    assert t.mean_ms == 6.0
    assert t.p20_ms == pytest.approx(3.0)
    assert t.p80_ms == pytest.approx(9.0)
    assert t.iqr_ms == pytest.approx(8.5 - 3.5)
    assert t.noisy  # iqr 5 / median 6


def test_percentiles_interpolate_between_samples():
    t = Timing(samples_ms=(10.0, 20.0, 30.0, 40.0), warmup=0, method="wall")
    assert t.median_ms == 25.0
    assert t.p20_ms == pytest.approx(16.0)  # rank 0.6
    assert t.p80_ms == pytest.approx(34.0)  # rank 2.4
    assert t.iqr_ms == pytest.approx(32.5 - 17.5)


def test_noisy_flag_both_ways():
    quiet = Timing(samples_ms=(100.0, 101.0, 99.0, 100.5, 99.5), warmup=0, method="wall")
    assert quiet.iqr_ms / quiet.median_ms < NOISE_IQR_FRACTION
    assert not quiet.noisy
    noisy = Timing(samples_ms=(100.0, 150.0, 60.0, 130.0, 80.0), warmup=0, method="wall")
    assert noisy.iqr_ms / noisy.median_ms > NOISE_IQR_FRACTION
    assert noisy.noisy


def test_timing_checks_itself():
    with pytest.raises(AssertionError):
        Timing(samples_ms=(), warmup=0, method="wall")
    with pytest.raises(AssertionError):
        Timing(samples_ms=(1.0,), warmup=0, method="stopwatch")


def test_metrics_and_samples_keys():
    t = Timing(samples_ms=(1.0, 2.0, 3.0), warmup=1, method="wall")
    m = t.metrics("step_time")
    assert set(m) == {"step_time_ms", "step_time_p20_ms", "step_time_p80_ms", "step_time_iqr_ms", "step_time_noisy"}
    assert m["step_time_ms"] == 2.0
    assert isinstance(m["step_time_noisy"], bool)
    assert t.samples("step_time") == {"step_time_ms": [1.0, 2.0, 3.0]}


@needs_cuda
@pytest.mark.parametrize("flush_l2, cuda_graph", [(True, False), (False, False), (True, True)])
def test_cuda_timer(flush_l2, cuda_graph):
    a = torch.randn(256, 256, device="cuda")
    t = time_fn(
        lambda: a @ a, "cuda", min_reps=5, max_reps=200, min_time_s=0.02, flush_l2=flush_l2, cuda_graph=cuda_graph
    )
    assert t.method in ("cuda_events", "do_bench", "do_bench_cudagraph")
    assert 1 <= t.n <= 200
    assert all(s > 0 for s in t.samples_ms)
    if not flush_l2:
        assert t.method == "cuda_events"
        assert t.n >= 5


def test_interleaved_timing_alternates_the_functions():
    calls = []
    fns = {"a": lambda: calls.append("a") or time.sleep(0.002), "b": lambda: calls.append("b")}
    timings = time_interleaved(fns, "cpu", rounds=3)
    assert calls == ["a", "b"] * 4  # one warm-up round, then three timed ones, in turn
    a, b = timings["a"], timings["b"]
    assert a.n == b.n == 3 and a.method == b.method == "interleaved" and a.window_s == b.window_s
    assert a.median_ms >= 2.0 > b.median_ms
