"""Keepers: no process a case starts outlives its case, nor `bench`, however `bench` ends (SIGKILL included).

Each case runs under a keeper, a process that does nothing else (a child of the isolated launcher's forkserver, for
a case and for one node's distributed job; for a job over several nodes, `python -m bench.lifeline FD CMD...`) and
holds the read end of a pipe, the lifeline, whose write end only `bench` holds. `keep` runs the case in a child of
the keeper and waits for whichever comes first:

- the case's process ends (ok, error or crash): the keeper kills what the case left behind and says how it ended;
- EOF on the lifeline: `bench` is gone (the kernel closes the pipe when it dies, however it dies) or is done with the
  case (a timeout closes it on purpose): the keeper kills the case and everything it started.

Either way it SIGKILLs every descendant of its own, again until none is alive, then exits, so nothing depends on
`bench` running cleanup code. What makes "every descendant" hold:

- The keeper is a child subreaper (Linux, PR_SET_CHILD_SUBREAPER): a process whose parent dies is re-parented to the
  keeper, not to PID 1, even after it starts a session of its own (torchrun starts each rank in one, so killing
  process groups misses them); a forked child, a `sleep` and a rank all stay in the keeper's tree.
- The case's process has PR_SET_PDEATHSIG(SIGKILL): a keeper killed outright takes the case with it.
- The keeper leads a session of its own, so a signal meant for `bench`'s terminal group (Ctrl-C) does not reach the
  case behind `bench`'s back; `bench` ends a case by closing its lifeline. SIGTERM, SIGINT or SIGHUP sent to the
  keeper itself ends its case the same way, then the keeper by that signal, so that `bench` records which.
- A keeper killed outright (SIGKILL, the out-of-memory killer) kills nothing: `bench` then kills what is left in its
  session (`kill_session`). The case's own process, whose memory is the OOM killer's target, is made its first choice
  over the keeper (oom_score_adj raised by 500, which needs no privilege).

Elsewhere than Linux the keeper finds descendants with `ps` and is no subreaper, so an orphan may escape it. A case
run with --inline runs in `bench` itself, under no keeper.
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import gc
import os
import select
import signal
import subprocess
import sys
import time
import traceback
from typing import Callable, NoReturn

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
POLL_S = 0.05
"""How often a keeper checks on its case: a crash is reported within this, and no sooner is needed."""
KILL_WAIT_S = 20.0
"""How long a keeper waits for what it killed to be gone: a GPU process may take seconds to release its device."""
KEEPER_WAIT_S = KILL_WAIT_S + 10
"""How long `bench` waits for a keeper to end its case: longer than the keeper waits for what it killed."""
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _prctl(option: int, arg: int) -> bool:
    """prctl(2) through libc; False where there is none (not Linux) or it refused."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return False
    zero = ctypes.c_ulong(0)
    return prctl(ctypes.c_int(option), ctypes.c_ulong(arg), zero, zero, zero) == 0


class _Stop(Exception):
    """A stop signal reached the keeper: end the case as if `bench` were gone."""


def _stop(signum, frame):
    raise _Stop(signum)


def keep(target: Callable[[], int | None], lifeline: int) -> int | None:
    """Run `target()` in a child of this process (which becomes its keeper) and wait for it or for EOF on the
    `lifeline` fd; then kill every descendant left. Returns the child's exit code (-N: killed by signal N), or None
    when the lifeline ended first. `target` returns the child's exit code; an exception in it exits 1. A stop
    signal sent to this process ends the child as EOF does, then this process by that signal, so that what waits on
    it reads which (-N; 128+N from a shell), not a lifeline that ended."""
    try:
        os.setsid()
    except OSError:  # already a session leader (`python -m bench.lifeline` is started as one)
        pass
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    keeper = os.getpid()
    pid = os.fork()
    if pid == 0:
        _oom_first()
        child_main(target, keeper)
    previous = {s: signal.signal(s, _stop) for s in STOP_SIGNALS}  # after the fork: the case keeps its own
    stopped = None
    try:
        code = _wait(pid, lifeline)
    except _Stop as e:
        code, stopped = None, e.args[0]
    finally:
        for s in STOP_SIGNALS:  # what follows is what a stop signal asks for: let none cut it short
            signal.signal(s, signal.SIG_IGN)
        kill_descendants()
        for s, handler in previous.items():
            signal.signal(s, handler)
    if stopped is not None:
        _end_by(stopped)
    return code


def _end_by(signum: int) -> NoReturn:
    """End this process by signal `signum`, its default action (128+N where there is none to take)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    os._exit(128 + signum)


OOM_FIRST = 500
"""What a case's process adds to its oom_score_adj (-1000..1000): under memory pressure the kernel kills it, which
holds the case's memory, rather than its keeper, which holds only what it shares with the server."""


def _oom_first() -> None:
    try:
        with open("/proc/self/oom_score_adj", "r+") as f:
            adj = min(1000, int(f.read()) + OOM_FIRST)
            f.seek(0)
            f.write(str(adj))
    except (OSError, ValueError):  # not Linux, or a /proc that refuses: the keeper may be chosen, as before
        pass


def freeze_alive(collect: bool = True) -> None:
    """Move every object alive now out of the cyclic garbage collector's sight (gc.freeze), after a collection unless
    `collect` is false (a forked child whose parent has just collected, or need not). For what a process imported
    before its work: torch, the suites and their libraries are hundreds of thousands of objects that every full
    collection would walk again (a packing smoke run spent 3.7 of its 15 s in 19 of them; 1.6 s after this). A child
    forked after it inherits the frozen set. Reference counting still frees a frozen object, but one that becomes
    cyclic garbage later is never freed: this is for what lives long or holds no cycles (imports, the plan's grid
    points), never for a case's model or tensors. At exit the collector sees everything again, so that extensions'
    leak checks (triton's nanobind) see what the frozen objects hold."""
    if collect:
        gc.collect()
    gc.freeze()
    _unfreeze_at_exit()


@functools.cache
def _unfreeze_at_exit() -> None:
    atexit.register(gc.unfreeze)


def die_with_parent() -> None:
    """This process gets SIGKILL when the thread that started it ends (PR_SET_PDEATHSIG; nothing off Linux)."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def child_main(target: Callable[[], int | None], parent: int) -> NoReturn:
    """A forked child's whole life: it dies with `parent` (PR_SET_PDEATHSIG), runs `target`, whose return value (or
    SystemExit's code) is its exit code, 1 after any other exception (printed), and exits without returning into the
    parent's code."""
    code = 1
    try:
        die_with_parent()
        if os.getppid() != parent:  # the parent died before the line above took effect
            os._exit(1)
        code = target() or 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
    except BaseException:  # noqa: BLE001 - the child must not return into the parent's code
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):  # os._exit skips the flush an interpreter's exit does
            try:
                stream.flush()
            except (AttributeError, OSError, ValueError):
                pass
        os._exit(code)


def _wait(pid: int, lifeline: int) -> int | None:
    poller = select.poll()
    poller.register(lifeline, select.POLLIN | select.POLLHUP)
    while True:
        if poller.poll(POLL_S * 1000):  # `bench` never writes: readable means EOF
            return None
        code = _reap(pid)
        if code is not None:
            return code


def _reap(pid: int | None = None) -> int | None:
    """Reap every child that has ended, orphans the keeper adopted included; `pid`'s exit code if it was one."""
    found = None
    while True:
        try:
            child, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return found
        if child == 0:
            return found
        if child == pid:
            found = os.waitstatus_to_exitcode(status)


def kill_descendants(wait_s: float = KILL_WAIT_S) -> None:
    """SIGKILL every live descendant of this process, again until none is alive (a process may fork while the
    others die) or `wait_s` has passed."""
    deadline = time.monotonic() + wait_s
    pause = 0.001  # doubling to 10 ms: a case's process is mostly gone within a few ms, and `bench` waits for this
    while True:
        pids = descendants(os.getpid())
        if not pids or time.monotonic() > deadline:
            return
        _kill(pids)
        time.sleep(pause)
        pause = min(2 * pause, 0.01)
        _reap()


def kill_session(sid: int, wait_s: float = 5.0) -> None:
    """SIGKILL every live process of session `sid` (a keeper's: it leads one), again until none is left or `wait_s`
    has passed: what a keeper killed outright (the OS's out-of-memory killer, say) left behind. Its case dies with it
    (PR_SET_PDEATHSIG), but what the case started was handed to the nearest subreaper or PID 1, out of any tree; it is
    still in the keeper's session unless it started one of its own. Linux only (/proc)."""
    deadline = time.monotonic() + wait_s
    while os.path.isdir("/proc/self"):
        left = [pid for pid in _sessions().get(sid, ()) if pid != os.getpid()]
        if sid in left:  # the keeper is dead and reaped: a live process of its pid is a new one that took the pid
            return       # (and made a session of its own), never what the keeper left
        if not left or time.monotonic() > deadline:
            return
        _kill(left)
        time.sleep(0.01)


def _kill(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):  # gone meanwhile, or not ours
            pass


def _sessions() -> dict[int, list[int]]:
    """session id -> the live (not zombie) processes in it."""
    found: dict[int, list[int]] = {}
    for pid, fields in _stats():
        if fields[0] not in "ZX":
            found.setdefault(int(fields[3]), []).append(pid)
    return found


def _stats():
    """(pid, the fields of /proc/PID/stat after the command name, which may hold spaces: state, ppid, pgrp, session,
    ...) of every process /proc lists."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:  # ended meanwhile
            continue
        yield int(name), stat[stat.rindex(")") + 2:].split()


def descendants(root: int) -> list[int]:
    """The live (not zombie) descendants of `root`. The walk goes through zombies: /proc is read one process at a
    time, so a child read before its parent ended still names that parent, which by the time it is read may be a
    zombie (its children already handed to the keeper). Pids wrap (at 32768 by default), so a child may be read
    first; walking only live processes would miss it, and it would outlive its case."""
    children: dict[int, list[int]] = {}
    live = set()
    for pid, (ppid, alive) in _parents().items():
        children.setdefault(ppid, []).append(pid)
        if alive:
            live.add(pid)
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child in live:
                out.append(child)
            todo.append(child)
    return out


def _parents() -> dict[int, tuple[int, bool]]:
    """pid -> (parent pid, alive: not a zombie) of every process."""
    parents = {}
    if os.path.isdir("/proc/self"):
        return {pid: (int(fields[1]), fields[0] not in "ZX") for pid, fields in _stats()}
    ps = subprocess.run(["ps", "-A", "-o", "pid=", "-o", "ppid=", "-o", "stat="], capture_output=True, text=True)
    for line in ps.stdout.splitlines():
        pid, ppid, state = line.split()[:3]
        parents[int(pid)] = int(ppid), not state.startswith("Z")
    return parents


def main(argv: list[str]) -> int:
    """`python -m bench.lifeline [--cpus=0,1,...] FD CMD...`: keep CMD on the lifeline FD, the keeper pinned to the
    CPUs (CMD and all it starts inherit them). Exits with CMD's code (128+N: killed by signal N), or 1 when the
    lifeline ended first; a stop signal sent to the keeper ends CMD, then the keeper by that signal (128+N)."""
    if argv[0].startswith("--cpus="):
        os.sched_setaffinity(0, {int(c) for c in argv[0].removeprefix("--cpus=").split(",")})
        argv = argv[1:]
    lifeline, cmd = int(argv[0]), argv[1:]
    os.set_inheritable(lifeline, False)  # CMD and its processes need not hold it

    def run():
        os.execvp(cmd[0], cmd)

    return exit_code(keep(run, lifeline))


def exit_code(kept: int | None) -> int:
    """A keeper's exit code from what `keep` returned: the kept process's (128+N: killed by signal N), or 1 when the
    lifeline ended first."""
    return 1 if kept is None else kept if kept >= 0 else 128 - kept


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
