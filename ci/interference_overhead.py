"""What watching a timed window for interference costs the timed call: prints the figures.

Three measurements, in one process that has torch imported (its threads are part of the case tree the sampler walks),
of a ~10 ms pure-Python call, the worst case: it holds the GIL, so the sampler thread's work and every GIL hand-off
to it land on the call in full.
1. the sampler's own CPU time per sample (bench.interference.Reader.sample), spread over the sampling interval;
2. the stall one sample causes the timed thread, GIL hand-offs included: the same calls with and without a sampler
   taking samples 50x as often as the real one, so that its cost stands out of a shared machine's noise;
3. end to end: the call's median with and without HostSampler at its real interval, in alternating rounds so that a
   load change falls on both alike. Only a quiet machine resolves a fraction of a percent here; on a busy one (2) is
   the figure to trust.

Usage: python ci/interference_overhead.py [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not

from bench.interference import SAMPLE_INTERVAL_S, HostSampler, Reader, affinity  # noqa: E402
from bench.timing import time_fn  # noqa: E402

CALL_MS = 10.0


def calibrated_call():
    """A pure-Python function that takes about CALL_MS on this machine (sized from its fastest calls, which a busy
    machine slows least)."""
    n = 100_000
    fastest_ms = min(time_fn(lambda: sum(i * i for i in range(n)), "cpu", warmup=1, min_reps=10).samples_ms)
    n = int(n * CALL_MS / fastest_ms)
    return lambda: sum(i * i for i in range(n))


def sample_cost_us(n: int = 500) -> float:
    reader = Reader(os.getpid(), affinity(os.getpid()))
    t0 = time.thread_time()
    for _ in range(n):
        reader.sample()
    reader.close()
    return (time.thread_time() - t0) / n * 1e6


def stall_us(call, pairs: int, interval_s: float = 0.002) -> float:
    """What one sample costs the timed thread, GIL hand-offs included: the same calls with and without a sampler
    that samples 50x as often as the real one (so its cost stands out of a busy machine's noise), in alternating
    pairs; the median over pairs of the extra time per sample taken."""
    extra = []
    for _ in range(pairs):
        t0 = time.perf_counter()
        for _ in range(10):
            call()
        plain = time.perf_counter() - t0
        with HostSampler(interval_s=interval_s) as host:
            t0 = time.perf_counter()
            for _ in range(10):
                call()
            watched = time.perf_counter() - t0
            taken = sum(t0 <= s.t_s <= t0 + watched for s in host.samples)
        extra.append((watched - plain) / max(taken, 1) * 1e6)
    return statistics.median(extra)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(min(4, os.cpu_count() or 1))
    torch.ones(64, 64) @ torch.ones(64, 64)  # start torch's intra-op pool: threads the sampler must walk
    cost = sample_cost_us()
    share = cost / (SAMPLE_INTERVAL_S * 1e6) * 100
    print(f"sampler: {cost:.0f} us of CPU per sample, one every {SAMPLE_INTERVAL_S * 1e3:.0f} ms: "
          f"{share:.2f}% of a {CALL_MS:.0f} ms call ({cost * CALL_MS / (SAMPLE_INTERVAL_S * 1e3):.1f} us a call)")

    call = calibrated_call()
    stall = stall_us(call, args.rounds * 3)
    print(f"sampler, as the timed thread sees it: {stall:.0f} us a sample (at 50x the rate), one every "
          f"{SAMPLE_INTERVAL_S * 1e3:.0f} ms: {stall / (SAMPLE_INTERVAL_S * 1e6) * 100:.2f}% of a {CALL_MS:.0f} ms "
          f"call")
    plain, watched = [], []
    for _ in range(args.rounds):
        plain.append(time_fn(call, "cpu", warmup=1, min_reps=20, min_time_s=0.3).median_ms)
        with HostSampler():
            watched.append(time_fn(call, "cpu", warmup=1, min_reps=20, min_time_s=0.3).median_ms)
    a, b = statistics.median(plain), statistics.median(watched)
    spread = (max(plain) - min(plain)) / a * 100
    print(f"end to end: median call {a:.3f} ms without the sampler, {b:.3f} ms with it: {(b - a) / a * 100:+.2f}% "
          f"({args.rounds} alternating rounds; the rounds without it spread {spread:.1f}%)")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"conditions: {os.cpu_count()} CPUs, load average {load:.2f}, torch {torch.__version__}, "
          f"python {sys.version.split()[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
