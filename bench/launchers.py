"""Launchers: where a case's `execute` runs. One interface, `launch(case, device, timeout_s, threads) -> result`
({status, metrics, samples, error}, or None when another node records the case), chosen per case by `for_case`:

- Inline: in the `bench` process (--inline; no timeout, for a debugger);
- Isolated: in a child forked from a server that has already imported torch and the suites (the default): a crash,
  a hang past the timeout or a kill by the OS becomes a record, and the run goes on. The server's child is the
  case's keeper (bench.lifeline), and the case runs in the keeper's child: whatever the case starts ends with it;
- Ranks: a job of every rank (bench.distributed), for a distributed suite at more than one rank.

With `cpus` (`bench run --cpus`) each pins the case's process to them: Inline every thread of `bench` while the case
runs, Isolated the keeper and so the case it forks, Ranks the keeper and so the launcher and every rank. Before a
case, bench.pinning's `wait_idle` (`--wait-idle`) waits for other processes to leave those CPUs.
"""

from __future__ import annotations

import functools
import importlib
import multiprocessing as mp
import os
import pickle
import signal
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing import forkserver
from multiprocessing.connection import wait
from typing import Any, Protocol

from bench import ranks
from bench.case import SEED, Case, execute, traceback_tail
from bench.distributed import Launch, aggregate, run_distributed
from bench.lifeline import KEEPER_WAIT_S, STOP_SIGNALS, exit_code, freeze_alive, keep, kill_session
from bench.pinning import pinned
from bench.progress import duration, read_note
from bench.suite import SUITES, directions, unmet


class Launcher(Protocol):
    def launch(self, case: Case, device: str, timeout_s: float, threads: int | None,
               progress: str | None = None) -> dict[str, Any] | None:
        """`progress`: the file the case's progress messages go to (bench.progress), where a launcher supports it."""


def _child(lifeline, conn, case: Case, device: str, seed: int, threads: int | None, progress: str | None,
           cpus: frozenset[int] | None = None) -> None:
    """The forkserver's child: the keeper of the case, which runs in its child. A forkserver child's parent is the
    server, not `bench`; the lifeline's write end lives only in `bench`, so EOF on it means `bench` is gone (or
    gave up on the case), and the keeper ends the case and all it started."""

    def run():
        freeze_alive(collect=False)  # what the server imported; a collection here would walk it all once more
        try:
            result = execute(case, device, seed, threads, progress)
        except KeyboardInterrupt as e:  # the case's own (no Ctrl-C reaches it here: its keeper has a session of its
            # own, and `bench` ends a case by its lifeline): an error of the case, with its traceback, as --inline
            # would stop on it
            result = {"status": "error", "error": traceback_tail(e)}
        conn.send(result)
        conn.close()

    with pinned(cpus):  # the keeper: the case it forks, and all the case starts, inherit the CPUs
        code = keep(run, lifeline.fileno())
    if code:  # the case's process died; if it sent a result first, that is the message `bench` reads first
        try:
            conn.send({"status": "error", "error": _ended(code) + _doing(progress)})
        except OSError:
            pass


SERVER_GONE = 255
"""The exit code multiprocessing gives a process forked by a forkserver that died before saying how its child ended
(popen_forkserver: the server's socket at EOF)."""


class ServerDied(Exception):
    """The case server died before it forked a case's keeper (EOFError at its socket): killed, or it failed at start.
    The runner records the case as an error, and the run goes on, as for a server killed mid-case."""


SERVER_START_TRIES = 2
"""Deaths of the case server as it starts, one after another, after which a run starts it no more: a cause that
stays (a preloaded module that raises, a host out of memory) would have every remaining case pay a server start (a
torch import, seconds) to record the same error. The remaining cases are recorded with that reason at once."""
_died_starting: list[int] = [0]  # of the run now (reset by `preload`, which each run calls before its first case)


def _server_gone(wait_s: float = 2.0) -> bool:
    """Whether the case server (multiprocessing's forkserver, a child of `bench`) has died: gone, or a zombie not yet
    reaped (reaping it here would take its exit from ensure_running, which starts a new one for the next case).
    Waited for up to `wait_s`: a killed server holding torch takes a while to exit, longer than the keeper it took
    with it."""
    pid = getattr(forkserver._forkserver, "_forkserver_pid", None)
    deadline = time.monotonic() + wait_s
    while pid:
        try:
            state = open(f"/proc/{pid}/stat", encoding="ascii").read().rsplit(")", 1)[1].split()[0]
        except OSError:
            return os.path.isdir("/proc/self")  # gone and reaped; without /proc, not known, so not said
        except IndexError:
            return False
        if state in ("Z", "X"):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return False


def _ended(code: int | None) -> str:
    """Why a case's process that reported no result ended, from its exit code (-N: killed by signal N)."""
    if code is not None and code < 0:
        name = signal.Signals(-code).name
        hint = " (the OS may have run out of memory)" if name == "SIGKILL" else ""
        return f"the case's process was killed by {name}{hint}"
    return f"the case's process exited with code {code} before reporting a result"


_PRELOAD: list[str] = []


def preload(modules) -> None:
    """Modules the forkserver imports once, when the run's first isolated case starts it: every suite module of the
    run and the slow-to-import libraries they declare (Suite.preload). The server lives as long as bench, so what it
    did not import, each case's process imports again (a suite module ~0.1-0.3 s, diffusers ~2 s). One that cannot
    be imported is left out by the server."""
    _PRELOAD[:] = list(dict.fromkeys(modules))
    _died_starting[0] = 0


def _context(modules: list[str]):
    # forkserver: each case gets a fresh process forked from a server that has already imported torch and the
    # suites, so isolation costs milliseconds a case instead of a torch import (~1.5 s) a case. The server never
    # touches CUDA, so children initialise it cleanly. bench.server_guard first: the server dies with `bench`, even
    # while it imports the rest.
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(list(dict.fromkeys(["bench.server_guard", *SERVER_MODULES, *modules, *_PRELOAD])))
    return ctx


def start_server() -> None:
    """Start the server now, where it is not running, with what it preloads (the first isolated case starts it
    otherwise)."""
    _context([])
    forkserver.ensure_running()


# What every case's process would otherwise import for itself (each import compiles its source where no bytecode is
# cached). torch._dynamo: the first TorchDispatchMode a process enters (the live-tensor tracker) imports it, ~3 s a
# case. bench.telemetry, bench.interference, bench.env: imported by `execute`, ~25 ms a case. bench.cli: a case's
# process runs the `bench` console script again as its __main__ (multiprocessing does, to find what the parent's
# __main__ defined), and the script imports bench.cli, ~40 ms a case.
SERVER_MODULES = ("torch", "torch._dynamo", "bench.case", "bench.telemetry", "bench.interference", "bench.env",
                  "bench.cli")


def _doing(progress: str | None, silent: str = "") -> str:
    """What a case that ended without a result was doing: the last progress message it logged, or `silent`."""
    note = read_note(progress)
    if note is None:
        return silent if progress else ""
    return f"; its last progress, logged {duration(time.time() - note.at)} before: {note.message}"


def execute_isolated(case: Case, device: str, timeout_s: float, seed: int = SEED, threads: int | None = None,
                     progress: str | None = None, cpus: frozenset[int] | None = None) -> dict[str, Any]:
    """execute() in a child process: a crash, a hang past timeout_s or a kill by the OS is recorded, not fatal; the
    record says how long it ran and what it was doing (its last progress message)."""
    ctx = _context([case.module])
    recv, send = ctx.Pipe(duplex=False)
    try:
        with _kept(ctx, _child, send, case, device, seed, threads, progress, cpus) as proc:
            t0 = time.monotonic()
            send.close()
            # the keeper's sentinel too: should the keeper itself die, nothing else may ever close `recv`
            if not wait([recv, proc.sentinel], timeout_s):
                doing, took = _doing(progress, "; it logged no progress"), time.monotonic() - t0
                took = f"{took:.1f} s" if took < 60 else duration(took)  # "1s" for 0.8 s read as a wrong timeout
                return {"status": "timeout", "error": f"no result after {took} (--timeout {timeout_s:g} s): the case "
                                                      f"was killed{doing}"}
            if recv.poll():
                try:
                    return recv.recv()
                except (EOFError, OSError, pickle.UnpicklingError):
                    pass
            proc.join(KEEPER_WAIT_S)
            if proc.exitcode == SERVER_GONE and _server_gone():
                return {"status": "error", "error": "the process cases fork from (the case server) died while this "
                                                    "case ran (killed from outside, or out of memory), and its result "
                                                    f"with it{_doing(progress)}; `--resume --retry-failed` runs it "
                                                    "again"}
            if proc.exitcode is not None and -proc.exitcode in STOP_SIGNALS:  # the keeper's own, which ended the case
                return {"status": "error", "error": f"the case's keeper was stopped by "
                                                    f"{signal.Signals(-proc.exitcode).name} (sent to it, not to "
                                                    f"`bench`), and ended the case{_doing(progress)}; "
                                                    "`--resume --retry-failed` runs it again"}
            if proc.exitcode is not None and proc.exitcode < 0:  # the keeper killed outright: the case died with it
                name = signal.Signals(-proc.exitcode).name
                how = "the out-of-memory killer" if name == "SIGKILL" else "a crash of the keeper itself"
                return {"status": "error", "error": f"the case's keeper was killed by {name} (sent from outside, or "
                                                    f"{how}), and the case with it{_doing(progress)}; "
                                                    "`--resume --retry-failed` runs it again"}
            return {"status": "error", "error": _ended(proc.exitcode) + _doing(progress)}
    finally:
        recv.close()
        send.close()  # closed already, unless the server died before the case started (ServerDied)


def fork_ranks(nproc: int, spec: str, preload: list[str], env: dict[str, str], log: str, timeout_s: float,
               cpus: frozenset[int] | None = None) -> int | None:
    """One node's job (bench.distributed) with its launcher, bench.ranks, forked from the server instead of started
    as `python -m bench.ranks`: the ranks inherit torch and the suites imported once for the whole run, not once a
    job (~2.7 CPU s on the 2-core VM). The job's exit code (128+N: killed by signal N), None after `timeout_s`;
    whatever way this returns, the job and all it started are gone after."""
    ctx = _context(preload)
    with _kept(ctx, _node, nproc, spec, preload, env, log, cpus) as proc:
        if not wait([proc.sentinel], timeout_s):
            return None
        proc.join()
        return exit_code(proc.exitcode)


@contextmanager
def _kept(ctx, target, *args):
    """A keeper forked from the server, running `target(lifeline, *args)`: the lifeline's write end stays here, and
    closing it when the block ends, however it ends, has the keeper end what it keeps and exit."""
    if (n := _died_starting[0]) >= SERVER_START_TRIES:
        raise ServerDied(f"not started: the process cases fork from (the case server) died as it started for {n} cases "
                         "in a row (killed, out of memory, or an import failed: see above), so this run starts it "
                         "no more; once the cause is gone, `--resume --retry-failed` runs the cases again")
    lifeline_r, lifeline_w = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=target, args=(lifeline_r, *args), daemon=True)
    try:
        proc.start()
    except (EOFError, ConnectionError):
        lifeline_w.close()
        _died_starting[0] += 1
        then = ("the next case starts a new one" if _died_starting[0] < SERVER_START_TRIES else
                f"after {_died_starting[0]} such starts in a row, this run starts it no more")
        # out of memory as it imports torch, or a module it preloads raised other than the ImportError it passes over
        raise ServerDied("the process cases fork from (the case server) died before it started this case (killed, out "
                         f"of memory, or an import failed: see above); {then}") from None
    finally:
        lifeline_r.close()
    _died_starting[0] = 0
    try:
        yield proc
    finally:
        lifeline_w.close()  # the keeper kills whatever is left of its charge, and exits
        proc.join(KEEPER_WAIT_S)
        if proc.is_alive():
            proc.kill()
            proc.join(10)
        if proc.exitcode is not None and proc.exitcode < 0:  # a keeper killed by a signal killed nothing itself
            kill_session(proc.pid)


def _node(lifeline, nproc: int, spec: str, preload: list[str], env: dict[str, str], log: str,
          cpus: frozenset[int] | None) -> None:
    """The forkserver's child that keeps one node's job: bench.ranks' launcher runs in its child and forks the ranks,
    with `bench`'s environment of now (the server's is that of when it started), their output in the job's log."""
    os.environ.update(env)
    out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    for fd in (1, 2):
        os.dup2(out, fd)
    os.close(out)
    with pinned(cpus):
        code = keep(functools.partial(ranks.run, nproc, "bench.distributed", [spec], preload), lifeline.fileno())
    sys.exit(exit_code(code))


@dataclass(frozen=True)
class Inline:
    cpus: frozenset[int] | None = None

    def launch(self, case: Case, device: str, timeout_s: float, threads: int | None,
               progress: str | None = None) -> dict[str, Any]:
        for module in SERVER_MODULES:  # as an isolated case finds them: torch._dynamo's first import, inside the
            importlib.import_module(module)  # tracker's window, leaves frames in a cycle that the peak may count
        with pinned(self.cpus):
            return execute(case, device, SEED, threads, progress)


@dataclass(frozen=True)
class Isolated:
    cpus: frozenset[int] | None = None

    def launch(self, case: Case, device: str, timeout_s: float, threads: int | None,
               progress: str | None = None) -> dict[str, Any]:
        return execute_isolated(case, device, timeout_s, SEED, threads, progress, self.cpus)


@dataclass(frozen=True)
class OneRank:
    """A distributed suite's case at world size 1: `inner` runs it in a one-rank group, and its record gets the
    same columns (rank spreads) as a many-rank case's."""

    inner: Launcher

    def launch(self, case: Case, device: str, timeout_s: float, threads: int | None,
               progress: str | None = None) -> dict[str, Any]:
        result = self.inner.launch(case, device, timeout_s, threads, progress)
        if result["status"] == "ok":
            result = aggregate([result], directions(case.suite, result["metrics"]))
        return result


@dataclass(frozen=True)
class Ranks:
    how: Launch
    cpus: frozenset[int] | None = None

    def launch(self, case: Case, device: str, timeout_s: float, threads: int | None,
               progress: str | None = None) -> dict[str, Any] | None:
        # ranks log no progress to `bench`, and take their threads from OMP_NUM_THREADS (bench.distributed); they
        # inherit what an isolated case's process does (SERVER_MODULES, from the server): a rank that imported
        # torch._dynamo itself paid ~2 CPU s
        return run_distributed(case, device, self.how, timeout_s, SEED, fork_ranks, self.cpus,
                               preload=SUITES[case.suite].preload)


@dataclass(frozen=True)
class Refuse:
    """A case that cannot run here (a world size the suite does not support, a library not installed): recorded as
    skipped with the reason, nothing started."""

    why: str

    def launch(self, case: Case, device: str, timeout_s: float, threads: int | None,
               progress: str | None = None) -> dict[str, Any]:
        return {"status": "skipped", "error": self.why}


def for_case(case: Case, how: Launch, inline: bool, cpus: frozenset[int] | None = None,
             device: str | None = None) -> Launcher:
    suite = SUITES[case.suite]
    missing = unmet(suite, case.variant, device)
    if missing:  # a library that is not installed, a CUDA kernel off CUDA: no process to start to learn that
        return Refuse(missing)
    local = Inline(cpus) if inline else Isolated(cpus)
    if not suite.world_sizes:
        return local
    why = suite.unsupported_world_size(case.params["world_size"])
    if why:
        return Refuse(f"{why} (--nproc-per-node x --nnodes)")
    return OneRank(local) if how.world_size == 1 else Ranks(how, cpus)
