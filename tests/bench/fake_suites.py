"""Suites that end in every way a case can end, for the runner and CLI tests."""

import gc
import os
import signal
import sys
import time

import torch

from bench import timing
from bench.metrics import Metric
from bench.metrics import timing as timing_specs
from bench.suite import Measurement, Part, Relative, Skip, Suite, register


@register
class Endings(Suite):
    name = "_endings"
    variants = {"ok": "reference", "raise": "raises", "oom": "out of memory", "skip": "skipped", "crash": "SIGKILL",
                "sleep": "sleeps params['sleep_s']"}
    relative = (Relative("double_x", "value_ms"),)
    metrics = (Metric("value_ms", "measured", "lower", "n, or twice n when it sleeps"),)

    def grid(self, size, device):
        return [{"n": n, "sleep_s": 5.0 if size == "quick" else 0.0} for n in (1, 2)]

    def measure(self, variant, params, device):
        if variant == "raise":
            raise ValueError(f"boom {params['n']}")
        if variant == "oom" and params["n"] == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 TiB (simulated)")
        if variant == "oom":
            raise RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate(handle) (simulated)")
        if variant == "skip":
            raise Skip("needs a CUDA device")
        if variant == "crash":
            os.kill(os.getpid(), signal.SIGKILL)
        if variant == "sleep":
            time.sleep(params["sleep_s"])
        factor = 2 if variant == "sleep" else 1
        return Measurement({"value_ms": float(params["n"] * factor)}, {"value_ms": [1.0, 2.0]})


@register
class Slow(Suite):
    """Six cases of `delay` seconds each, to kill a run midway."""

    name = "_slow"
    variants = {"a": "reference", "b": "other"}
    metrics = (Metric("i_ms", "measured", "lower", "the case's index"),)

    def grid(self, size, device):
        return [{"i": i, "delay": 0.4} for i in range(3)]

    def measure(self, variant, params, device):
        if "TECHBENCH_TEST_PIDS" in os.environ:  # let a test find the process that runs each case
            with open(os.environ["TECHBENCH_TEST_PIDS"], "a") as f:
                f.write(f"{os.getpid()}\n")
        hang = os.environ.get("TECHBENCH_TEST_HANG") == str(params["i"])  # a case that outlives any test
        time.sleep(60 if hang else params["delay"])
        return Measurement({"i_ms": float(params["i"])})


@register
class Timed(Suite):
    """Times a 10 ms sleep: the runner summarises GPU telemetry over the timing's window."""

    name = "_timed"
    variants = {"sleep": "reference"}
    metrics = timing_specs("call_time", "one 10 ms sleep")

    def grid(self, size, device):
        return [{"ms": 10}]

    def measure(self, variant, params, device):
        from bench.timing import time_fn

        time.sleep(0.05)  # set-up, outside the window
        timing = time_fn(lambda: time.sleep(params["ms"] / 1e3), "cpu", warmup=0, min_reps=5, min_time_s=0.1)
        return Measurement(timing.metrics("call_time"), timing.samples("call_time"), timed=timing)


@register
class Distributed(Suite):
    """A distributed suite whose rank 1 ends each way a rank can end."""

    name = "_dist"
    variants = {"ok": "reference", "raise": "rank 1 raises", "oom": "rank 1 runs out of memory",
                "hang": "rank 1 never returns", "skip": "skipped on every rank"}
    world_sizes = (1, 2)
    metrics = (Metric("value_ms", "measured", "lower", "n times the rank's number"),
               *(Metric(name, "info", None, "what the rank saw") for name in (
                   "rank_sum", "world", "threads", "cpus", "dynamo_inherited", "frozen_inherited")))

    def grid(self, size, device):
        return [{"n": 3}]

    def measure(self, variant, params, device):
        import torch.distributed as dist

        # what the rank inherited from the process it was forked from (bench.ranks): torch._dynamo imported (the
        # memory tracker's first op would import it), and the imports frozen out of the collector's sight
        inherited = {"dynamo_inherited": "torch._dynamo" in sys.modules, "frozen_inherited": gc.get_freeze_count() > 0,
                     "threads": torch.get_num_threads(), "cpus": len(os.sched_getaffinity(0))}
        rank = dist.get_rank()
        total = torch.tensor([float(rank + 1)])
        dist.all_reduce(total)  # a collective, so the group is proven to work
        if variant == "skip":
            raise Skip("needs a GPU per rank")
        if rank == 1 and variant == "raise":
            raise ValueError("boom on rank 1")
        if rank == 1 and variant == "oom":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 TiB (simulated)")
        if rank == 1 and variant == "hang":
            if os.environ.get("TECHBENCH_TEST_HANG_PIDFILE"):
                with open(os.environ["TECHBENCH_TEST_HANG_PIDFILE"], "w") as f:
                    f.write(str(os.getpid()))
            time.sleep(3600)
        return Measurement({"value_ms": float(params["n"] * (rank + 1)), "rank_sum": total.item(),
                            "world": dist.get_world_size(), **inherited}, {"value_ms": [float(rank)]})


@register
class Parted(Suite):
    """Two parts with their own variants and references: `b` is the reference of part y, not of the suite."""

    name = "_parts"
    variants = {"a": "reference of x", "b": "reference of y", "c": "in both"}
    parts = {"x": Part(("a", "c"), (Relative("speed_x", "t_ms", invert=True),)),
             "y": Part(("b", "c"), (Relative("size_x", "n_bytes"),))}
    metrics = (Metric("t_ms", "measured", "lower", "a time"), Metric("n_bytes", "exact", "lower", "a size"))

    def grid(self, size, device):
        return [{"part": "x", "n": 1}, {"part": "y", "n": 1}]

    def measure(self, variant, params, device):
        t = {"a": 2.0, "b": 3.0, "c": 1.0}[variant]
        return Measurement({"t_ms": t, "n_bytes": int(10 * t)})


@register
class Threads(Suite):
    """Reports the intra-op thread count it ran with (the runner sets it from `cpu_threads` or --threads), and the
    calls a timer of 10 ms calls with a 0.2 s floor makes (a quarter of the floor at smoke size)."""

    name = "_threads"
    variants = {"a": "reference"}
    cpu_threads = 1
    metrics = (Metric("threads_seen", "info", None, "torch.get_num_threads() inside measure"),
               Metric("timer_calls", "info", None, "calls of 10 ms (a fake clock) a 0.2 s timer made"))

    def grid(self, size, device):
        return [{"n": 1}]

    def measure(self, variant, params, device):
        return Measurement({"threads_seen": torch.get_num_threads(), "timer_calls": timer_calls()})


def timer_calls(min_reps: int = 1, min_time_s: float = 0.2) -> int:
    """The calls time_fn makes of a function that takes 10 ms of a fake clock (the real clock is back after)."""
    now = [0.0]

    def ten_ms():
        now[0] += 0.01

    real, timing.time.perf_counter = timing.time.perf_counter, lambda: now[0]
    try:
        return timing.time_fn(ten_ms, "cpu", warmup=0, min_reps=min_reps, min_time_s=min_time_s).n
    finally:
        timing.time.perf_counter = real
