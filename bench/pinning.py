"""Pinning a case to CPUs (`bench run --cpus`) and waiting for other processes to leave them (`--wait-idle`), for
bench.launchers: `pinned` moves every thread of this process, `wait_idle` samples the CPUs by bench.interference's
rule for a contended window."""

from __future__ import annotations

import os
import time
from contextlib import contextmanager


@contextmanager
def pinned(cpus: frozenset[int] | None):
    """Every thread of this process on `cpus` while the block runs, then each back on its own CPUs (a thread started
    inside takes the calling thread's). All threads: sched_setaffinity sets one thread's CPUs, and torch's thread
    pool may already run. Nothing without `cpus`."""
    if not cpus:
        yield
        return
    own = os.sched_getaffinity(0)
    before = {tid: _affinity(tid) for tid in _threads()}
    for tid in before:
        _pin(tid, cpus)
    try:
        yield
    finally:
        for tid in _threads():
            _pin(tid, before.get(tid) or own)


def _threads() -> list[int]:
    try:
        return [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:  # no /proc: the calling thread alone
        return [0]


def _affinity(tid: int) -> set[int] | None:
    try:
        return os.sched_getaffinity(tid)
    except OSError:
        return None


def _pin(tid: int, cpus) -> None:
    try:
        os.sched_setaffinity(tid, cpus)
    except ProcessLookupError:  # a thread that ended meanwhile
        pass


# --wait-idle judges the case's CPUs over 1 s samples: 100 ticks a CPU at USER_HZ 100, where the 0.25 CPU that makes
# a window contended (bench.interference.OTHER_CPUS) is 25 ticks, far above the accounting's floor
IDLE_SAMPLE_S = 1.0


def wait_idle(bound_s: float, cpus: frozenset[int] | None = None, threads: int | None = None, on_busy=None,
              sample_s: float = IDLE_SAMPLE_S, reader=None, clock=time.monotonic, sleep=time.sleep) -> float | None:
    """Wait, at most `bound_s`, for a sample in which processes outside `bench`'s tree leave the case's CPUs (`cpus`,
    else `bench`'s) quiet by the rule that judges a timed window `contended`, the case taking `threads` of them (all
    when None). The seconds waited before that sample began: 0.0 when the first was quiet, about `bound_s` when none
    was. `on_busy(why)` is told once, at the first busy sample. None where the CPUs cannot be read (off Linux)."""
    from bench import interference

    if reader is None:
        reader = interference.Reader(os.getpid(), cpus or interference.affinity(os.getpid()))
    t0, told = clock(), False
    try:
        s0 = reader.sample()
        if s0 is None:
            return None
        while (left := bound_s - (clock() - t0)) >= interference.MIN_SPAN_S:
            sleep(min(sample_s, left))
            s1 = reader.sample()
            if s1 is None:
                return None
            use = {k: v for k, v in interference.rates(s0, s1).items() if k in ("host_cpus", "host_other_cpus")}
            busy = interference.judge({**use, "host_case_cpus": threads or use["host_cpus"]})
            if not busy:
                return round(max(0.0, s0.t_s - t0), 3)
            if on_busy is not None and not told:
                on_busy(busy[0])
                told = True
            s0 = s1
        return round(clock() - t0, 3)
    finally:
        reader.close()
