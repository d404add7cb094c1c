"""Planning in forked processes when one of them dies (bench.plan.plan with jobs > 1): a case whose step on meta
needs more host memory than there is gets its process killed by the kernel (SIGKILL, from the OOM killer), which
breaks the whole process pool (concurrent.futures' BrokenProcessPool) and used to abort the plan with a traceback.

`one_by_one` plans a grid point's cases again, each in a forked child that sends each case's plan back as it is
done: the case a child dies on is the one that killed it, reported not plannable with `died`'s reason, and the next
child goes on after it."""

from __future__ import annotations

import multiprocessing as mp
import signal
from collections.abc import Callable
from typing import Any

import torch


def one_by_one(plan_one: Callable[[int], Any], count: int, died: Callable[[int, int | None], Any]) -> list:
    """[plan_one(k) for k in range(count)], in forked children, one for as many as it lives through; where a child
    dies (or exits) planning k, died(k, its exit code) stands for plan_one(k), and the next child starts at k + 1."""
    out: list = []
    context = mp.get_context("fork")
    while len(out) < count:
        reader, writer = context.Pipe(duplex=False)
        child = context.Process(target=_child, args=(writer, plan_one, len(out), count), daemon=True)
        child.start()
        writer.close()  # the child's copy is the one left: its death (or end) is the reader's EOF
        try:
            while len(out) < count:
                out.append(reader.recv())
        except EOFError:
            pass
        finally:
            reader.close()
        child.join()
        if len(out) < count:
            out.append(died(len(out), child.exitcode))
    return out


def _child(writer, plan_one, start: int, count: int) -> None:
    torch.set_num_threads(1)  # one CPU a process, as the pool's workers
    for k in range(start, count):
        writer.send(plan_one(k))
    writer.close()


def died(exitcode: int | None) -> str:
    """The one-line reason of a case whose planning process died with `exitcode` (multiprocessing's: -N for signal
    N)."""
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        how = f"killed by {name}" + (" (as the kernel kills a process when host memory runs out)"
                                     if -exitcode == signal.SIGKILL else "")
    else:
        how = f"it exited with status {exitcode}"
    return f"the process planning it died before its plan was done: {how}"


def stop(pool) -> None:
    """End a plan's ProcessPoolExecutor at once (Ctrl-C, SIGTERM): the points no worker has started are cancelled
    and the workers killed. Leaving the pool's `with` otherwise waits until every point submitted is planned, which
    at full size is minutes (packing's 108 cases: 4 on two CPUs) after the command said it stopped."""
    # the workers, before shutdown drops its list of them (kill_workers() is Python 3.14's)
    workers = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for worker in workers:
        worker.kill()
    for worker in workers:
        worker.join()
