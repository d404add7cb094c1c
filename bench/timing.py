"""Device-aware timer that keeps every raw sample.

CPU: adaptive wall clock, one `time.perf_counter` pair per call. CUDA: `triton.testing.do_bench` (L2 flushed between
calls, CUDA events), `do_bench_cudagraph` for launch-bound work, or a small CUDA-events loop when Triton is absent or
a warm L2 is wanted. torch and triton are imported only when a timer runs, so `Timing` itself is torch-free.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

# A sample set is "noisy" when its interquartile range exceeds 10% of its median. Quiet runs sit well below this:
# do_bench on an idle GPU gives an IQR of ~1-3% of the median, wall clock on an idle CPU ~2-5%. Past 10% the spread
# is as large as the differences `bench compare` is asked to detect (a few percent), which points at interference
# (other processes, frequency scaling, thermal throttling) rather than the technique.
NOISE_IQR_FRACTION = 0.10

# Triton's do_bench clears a 256 MiB buffer between calls; the events loop uses the same size so that both paths
# evict L2 (50 MiB on H100/H200, 40 MiB on A100) alike.
L2_FLUSH_BYTES = 256 * 1024 * 1024

METHODS = ("wall", "cuda_events", "do_bench", "do_bench_cudagraph", "interleaved")

# The share of a timer's min_time_s that a case of each size gets (bench.case.execute sets it while `measure` runs).
# Smoke size says that every case runs, in seconds a suite on a 2-core CPU: its timers stop after min_reps calls and a
# quarter of their time floor, and its figures are not ones to quote. Quick and full take the floor whole.
TIME_FLOOR_SCALE = {"smoke": 0.25}
_floor_scale: ContextVar[float] = ContextVar("time_floor_scale", default=1.0)


@contextmanager
def time_floor(size: str) -> Iterator[None]:
    """Every time_fn inside takes TIME_FLOOR_SCALE[size] of its min_time_s (all of it for a size not listed)."""
    token = _floor_scale.set(TIME_FLOOR_SCALE.get(size, 1.0))
    try:
        yield
    finally:
        _floor_scale.reset(token)


def _percentile(sorted_samples: tuple[float, ...], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), q in [0, 1]."""
    pos = q * (len(sorted_samples) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_samples[lo] + (sorted_samples[hi] - sorted_samples[lo]) * (pos - lo)


@dataclass(frozen=True)
class Timing:
    """Raw per-call times of one timed function and how they were taken."""

    samples_ms: tuple[float, ...]
    """One entry per timed call, in milliseconds, in the order they ran (do_bench_cudagraph: per-call mean of one
    graph replay)."""
    warmup: int
    """Untimed calls made before the first sample. On CUDA at least 2 (a first call that may compile, then the
    per-call estimate); the Triton timers add a few estimate and warm-up calls of their own on top."""
    method: str
    """Which timer produced the samples: one of METHODS."""
    window_s: tuple[float, float] | None = None
    """time.monotonic() when timing began and ended: the span telemetry is summarised over."""

    def __post_init__(self):
        object.__setattr__(self, "samples_ms", tuple(float(s) for s in self.samples_ms))
        assert self.samples_ms, "a Timing needs at least one sample"
        assert self.warmup >= 0, f"warmup must be >= 0, got {self.warmup}"
        assert self.method in METHODS, f"method {self.method!r} is not one of {METHODS}"

    @property
    def _sorted(self) -> tuple[float, ...]:
        return tuple(sorted(self.samples_ms))

    @property
    def n(self) -> int:
        return len(self.samples_ms)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def mean_ms(self) -> float:
        return statistics.fmean(self.samples_ms)

    @property
    def p20_ms(self) -> float:
        return _percentile(self._sorted, 0.20)

    @property
    def p80_ms(self) -> float:
        return _percentile(self._sorted, 0.80)

    @property
    def iqr_ms(self) -> float:
        s = self._sorted
        return _percentile(s, 0.75) - _percentile(s, 0.25)

    @property
    def noisy(self) -> bool:
        median, iqr = self.median_ms, self.iqr_ms
        if median <= 0:
            return iqr > 0
        return iqr / median > NOISE_IQR_FRACTION

    def metrics(self, name: str) -> dict:
        """Summary metrics for a record, e.g. name="step_time" -> step_time_ms, step_time_p20_ms, ..."""
        return {
            f"{name}_ms": self.median_ms,
            f"{name}_p20_ms": self.p20_ms,
            f"{name}_p80_ms": self.p80_ms,
            f"{name}_iqr_ms": self.iqr_ms,
            f"{name}_noisy": self.noisy,
        }

    def samples(self, name: str) -> dict:
        """Raw samples for a record's `samples` field, keyed like the median metric."""
        return {f"{name}_ms": list(self.samples_ms)}


def plan_reps(estimate_ms: float, *, min_reps: int, max_reps: int, min_time_s: float) -> int:
    """Timed calls needed to cover min_time_s at estimate_ms per call, at least min_reps, at most max_reps."""
    want = math.ceil(min_time_s * 1e3 / estimate_ms) if estimate_ms > 0 else max_reps
    return max(min_reps, min(max_reps, want))


def time_fn(
    fn: Callable[[], object],
    device,
    *,
    warmup: int = 3,
    min_reps: int = 5,
    max_reps: int = 1000,
    min_time_s: float = 0.2,
    flush_l2: bool = True,
    cuda_graph: bool = False,
) -> Timing:
    """Time `fn()` on `device` ("cpu", "cuda", "cuda:1" or a torch.device); every timed call is one sample.

    Repeats until both min_reps calls and min_time_s of measured time are reached, capped at max_reps; min_time_s is
    scaled by the enclosing `time_floor` (a quarter at smoke size). On CUDA the call count is planned from a short
    estimate and the Triton timers get the matching time budget.
    """
    assert 1 <= min_reps <= max_reps, f"need 1 <= min_reps <= max_reps, got {min_reps}, {max_reps}"
    assert warmup >= 0 and min_time_s >= 0
    min_time_s *= _floor_scale.get()
    kind = device.type if hasattr(device, "type") else str(device).split(":")[0]
    start = time.monotonic()
    if kind != "cuda":
        timing = _time_wall(fn, warmup, min_reps, max_reps, min_time_s)
    else:
        import torch

        dev = torch.device(device)
        with torch.cuda.device(dev if dev.index is not None else torch.cuda.current_device()):
            timing = _time_cuda(fn, warmup, min_reps, max_reps, min_time_s, flush_l2, cuda_graph)
    return dataclasses.replace(timing, window_s=(start, time.monotonic()))


def time_fixed(fn: Callable[[], object], device, reps: int = 10, warmup: int = 2) -> Timing:
    """time_fn with exactly warmup + reps calls, decided before the first: for a `fn` that holds collectives, whose
    ranks must all call it the same number of times (time_fn's count adapts to each rank's own timings, and one rank
    stopping early leaves the others waiting in a collective). On CUDA its own events loop, no L2 flush."""
    return time_fn(fn, device, warmup=warmup, min_reps=reps, max_reps=reps, min_time_s=0.0, flush_l2=False)


def time_interleaved(fns: dict[str, Callable[[], object]], device, rounds: int, warmup: int = 1) -> dict[str, Timing]:
    """name -> Timing of each fn, for an A/B inside one process: `rounds` rounds that each time every fn once, in
    turn, so that a load change on a shared machine falls on all of them alike (back-to-back blocks would give one
    of them the quiet minute and the other the busy one). Each call is wall-clock, synchronised before and after on
    CUDA: for calls long enough (milliseconds and up, e.g. a whole decode) that the host's time is the cost."""
    import torch

    cuda = torch.device(device).type == "cuda"

    def call_ms(fn) -> float:
        if cuda:
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize(device)
        return (time.perf_counter() - t0) * 1e3

    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    start = time.monotonic()
    for _ in range(rounds):
        for name, fn in fns.items():
            samples[name].append(call_ms(fn))
    window = (start, time.monotonic())
    return {name: Timing(tuple(ms), warmup, "interleaved", window) for name, ms in samples.items()}


def _time_wall(fn, warmup: int, min_reps: int, max_reps: int, min_time_s: float) -> Timing:
    for _ in range(warmup):
        fn()
    # One sample per call rather than torch.utils.benchmark's block means: a block mean hides the spread inside the
    # block, and `bench compare` tests the two runs' raw per-call distributions against each other.
    samples: list[float] = []
    total_s = 0.0
    while len(samples) < max_reps and (len(samples) < min_reps or total_s < min_time_s):
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        samples.append(dt * 1e3)
        total_s += dt
    return Timing(tuple(samples), warmup, "wall")


def _time_cuda(fn, warmup, min_reps, max_reps, min_time_s, flush_l2, cuda_graph) -> Timing:
    import torch

    # The first call compiles/autotunes and may take seconds; keep it out of the per-call estimate.
    fn()
    torch.cuda.synchronize()
    n_est = max(1, warmup - 1)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(n_est):
        fn()
    end.record()
    torch.cuda.synchronize()
    estimate_ms = start.elapsed_time(end) / n_est
    n_warm = 1 + n_est
    n_reps = plan_reps(estimate_ms, min_reps=min_reps, max_reps=max_reps, min_time_s=min_time_s)
    # The Triton timers take budgets in ms and derive their own call count from them; give them the planned count's
    # worth (at least 1 ms) and keep the last max_reps samples afterwards.
    rep_ms = max(1.0, n_reps * estimate_ms)

    triton_testing = _triton_testing()
    if triton_testing is not None and cuda_graph:
        # do_bench_cudagraph unrolls rep ms of calls into one graph and replays it 10 times, one sample per replay.
        graph_ms = max(1.0, rep_ms / 10)
        samples = _triton_all(
            lambda: _on_side_stream(lambda: triton_testing.do_bench_cudagraph(fn, rep=graph_ms, return_mode="all"))
        )
        if samples is not None:
            return Timing(tuple(samples[-max_reps:]), n_warm, "do_bench_cudagraph")
    elif triton_testing is not None and flush_l2:
        warmup_ms = max(1.0, rep_ms / 4)
        samples = _triton_all(lambda: triton_testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="all"))
        if samples is not None:
            return Timing(tuple(samples[-max_reps:]), n_warm, "do_bench")
    # Own events loop: do_bench always flushes L2, which misstates work that really runs with a warm cache (a small
    # GEMM repeated across layers), and Triton may be missing or predate return_mode="all". Events are recorded
    # back to back and read after one synchronize, so the host never stalls the queue between calls.
    return _events_loop(fn, n_reps, n_warm, flush_l2)


def _events_loop(fn, n_reps: int, n_warm: int, flush_l2: bool) -> Timing:
    import torch

    cache = torch.empty(L2_FLUSH_BYTES, dtype=torch.int8, device="cuda") if flush_l2 else None
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n_reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n_reps)]
    for i in range(n_reps):
        if cache is not None:
            cache.zero_()
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize()
    return Timing(tuple(s.elapsed_time(e) for s, e in zip(starts, ends)), n_warm, "cuda_events")


def _triton_testing():
    try:
        import triton.testing
    except Exception:  # absent, or present but broken (no driver): fall back to own events
        return None
    return triton.testing


def _triton_all(call) -> list[float] | None:
    """Run a Triton timer with return_mode="all"; None when this Triton predates that mode (it asserts on the mode
    before calling fn) or rejects the arguments."""
    try:
        out = call()
    except (AssertionError, TypeError, ValueError):
        return None
    if not isinstance(out, (list, tuple)) or not out:
        return None
    return [float(x) for x in out]


def _on_side_stream(call):
    # Older do_bench_cudagraph refuses to capture on the default stream; newer ones switch streams themselves.
    import torch

    with torch.cuda.stream(torch.cuda.Stream()):
        return call()
