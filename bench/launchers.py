"""Launchers: where a case's `execute` runs. One interface, `launch(case, device, timeout_s, threads) -> result`
({status, metrics, samples, error}, or None when another node records the case), chosen per case by `for_case`:

- Inline: in the `bench` process (--inline; no timeout, for a debugger);
- Isolated: in a child forked from a server that has already imported torch and the suites (the default): a crash,
  a hang past the timeout or a kill by the OS becomes a record, and the run goes on. The server's child is the
  case's keeper (bench.lifeline), and the case runs in the keeper's child: whatever the case starts ends with it;
- Torchrun: a torchrun job of every rank (bench.distributed), for a distributed suite at more than one rank.
"""

from __future__ import annotations

import multiprocessing as mp
import pickle
import signal
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any, Protocol

from bench.case import SEED, Case, execute
from bench.distributed import Launch, aggregate, run_distributed
from bench.lifeline import KEEPER_WAIT_S, keep
from bench.suite import SUITES, directions


class Launcher(Protocol):
    def launch(self, case: Case, device: str, timeout_s: float, threads: int | None) -> dict[str, Any] | None: ...


def _child(conn, lifeline, case: Case, device: str, seed: int, threads: int | None) -> None:
    """The forkserver's child: the keeper of the case, which runs in its child. A forkserver child's parent is the
    server, not `bench`; the lifeline's write end lives only in `bench`, so EOF on it means `bench` is gone (or
    gave up on the case), and the keeper ends the case and all it started."""

    def run():
        conn.send(execute(case, device, seed, threads))
        conn.close()

    code = keep(run, lifeline.fileno())
    if code:  # the case's process died; if it sent a result first, that is the message `bench` reads first
        try:
            conn.send({"status": "error", "error": _ended(code)})
        except OSError:
            pass


def _ended(code: int | None) -> str:
    """Why a case's process that reported no result ended, from its exit code (-N: killed by signal N)."""
    if code is not None and code < 0:
        name = signal.Signals(-code).name
        hint = " (the OS may have run out of memory)" if name == "SIGKILL" else ""
        return f"the case's process was killed by {name}{hint}"
    return f"the case's process exited with code {code} before reporting a result"


def _context(modules: list[str]):
    # forkserver: each case gets a fresh process forked from a server that has already imported torch and the
    # suites, so isolation costs milliseconds a case instead of a torch import (~1.5 s) a case. The server never
    # touches CUDA, so children initialise it cleanly.
    ctx = mp.get_context("forkserver")
    # torch._dynamo too: the first TorchDispatchMode a process enters (the live-tensor tracker) imports it, ~3 s a
    # case otherwise
    ctx.set_forkserver_preload(["torch", "torch._dynamo", *modules])
    return ctx


def execute_isolated(case: Case, device: str, timeout_s: float, seed: int = SEED,
                     threads: int | None = None) -> dict[str, Any]:
    """execute() in a child process: a crash, a hang past timeout_s or a kill by the OS is recorded, not fatal."""
    ctx = _context([case.module])
    recv, send = ctx.Pipe(duplex=False)
    lifeline_r, lifeline_w = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, lifeline_r, case, device, seed, threads), daemon=True)
    proc.start()
    send.close()
    lifeline_r.close()
    try:
        # the keeper's sentinel too: should the keeper itself die, nothing else may ever close `recv`
        if not wait([recv, proc.sentinel], timeout_s):
            return {"status": "timeout", "error": f"no result after {timeout_s:g} s (--timeout); the case was killed"}
        if recv.poll():
            try:
                return recv.recv()
            except (EOFError, OSError, pickle.UnpicklingError):
                pass
        proc.join(KEEPER_WAIT_S)
        return {"status": "error", "error": _ended(proc.exitcode)}
    finally:
        lifeline_w.close()  # the keeper kills whatever is left of the case, and exits
        proc.join(KEEPER_WAIT_S)
        if proc.is_alive():
            proc.kill()
            proc.join(10)
        recv.close()


class Inline:
    def launch(self, case: Case, device: str, timeout_s: float, threads: int | None) -> dict[str, Any]:
        return execute(case, device, SEED, threads)


class Isolated:
    def launch(self, case: Case, device: str, timeout_s: float, threads: int | None) -> dict[str, Any]:
        return execute_isolated(case, device, timeout_s, SEED, threads)


@dataclass(frozen=True)
class OneRank:
    """A distributed suite's case at world size 1: `inner` runs it in a one-rank group, and its record gets the
    same columns (rank spreads) as a many-rank case's."""

    inner: Launcher

    def launch(self, case: Case, device: str, timeout_s: float, threads: int | None) -> dict[str, Any]:
        result = self.inner.launch(case, device, timeout_s, threads)
        if result["status"] == "ok":
            result = aggregate([result], directions(case.suite, result["metrics"]))
        return result


@dataclass(frozen=True)
class Torchrun:
    how: Launch

    def launch(self, case: Case, device: str, timeout_s: float, threads: int | None) -> dict[str, Any] | None:
        return run_distributed(case, device, self.how, timeout_s, SEED)


@dataclass(frozen=True)
class Refuse:
    """A world size the suite does not support: recorded as skipped with the reason, nothing started."""

    why: str

    def launch(self, case: Case, device: str, timeout_s: float, threads: int | None) -> dict[str, Any]:
        return {"status": "skipped", "error": self.why}


def for_case(case: Case, how: Launch, inline: bool) -> Launcher:
    suite = SUITES[case.suite]
    local = Inline() if inline else Isolated()
    if not suite.world_sizes:
        return local
    if case.params["world_size"] not in suite.world_sizes:
        return Refuse(f"{case.suite} runs at world sizes {', '.join(map(str, suite.world_sizes))}, not "
                      f"{case.params['world_size']} (--nproc-per-node x --nnodes)")
    return OneRank(local) if how.world_size == 1 else Torchrun(how)
