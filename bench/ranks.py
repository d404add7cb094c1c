"""One node's ranks forked from one process: `python -m bench.ranks N [--preload MOD,...] -m MODULE [ARG...]`,
torchrun --standalone --nproc-per-node N without an interpreter a rank.

Written here because torchrun starts its agent and every rank as a fresh interpreter, each importing torch: on the
2-core VM a two-rank job that does nothing but make its process group costs ~6 CPU seconds, more than most smoke
cases measure (this: ~2.6). This process imports torch, torch.distributed and the --preload modules once, then forks
the N ranks; each runs MODULE as __main__ with the environment torchrun gives a rank (RANK, LOCAL_RANK, WORLD_SIZE,
LOCAL_WORLD_SIZE, GROUP_RANK, MASTER_ADDR, MASTER_PORT, TORCHELASTIC_RUN_ID, ...), so `init_process_group()` finds
its peers as under torchrun. As torchrun's agent does, it stops the other ranks (SIGTERM, then SIGKILL after
STOP_WAIT_S) when one fails, and exits with the first failed rank's code (128+N: killed by signal N), 0 when every
rank exited 0. A rank dies with this process (PR_SET_PDEATHSIG). Jobs over several nodes go through torchrun's
rendezvous (bench.distributed).

Forking is safe because nothing runs before it that starts a CUDA context or a thread pool: importing torch and a
module does neither. MASTER_PORT is a port free when this process looked, as torchrun --standalone picks it.
"""

from __future__ import annotations

import faulthandler
import functools
import importlib
import os
import runpy
import signal
import socket
import sys
import time
import uuid
import warnings

from bench.lifeline import child_main, freeze_alive

STOP_WAIT_S = 5.0
"""How long the other ranks have to end after a rank failed and they were sent SIGTERM."""


def rank_env(rank: int, nproc: int, port: int, run_id: str) -> dict[str, str]:
    """The variables torchrun sets for local rank `rank` of a one-node job of `nproc` ranks."""
    return {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(nproc), "LOCAL_WORLD_SIZE": str(nproc),
            "GROUP_RANK": "0", "GROUP_WORLD_SIZE": "1", "ROLE_RANK": str(rank), "ROLE_WORLD_SIZE": str(nproc),
            "ROLE_NAME": "default", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
            "TORCHELASTIC_RUN_ID": run_id, "TORCHELASTIC_RESTART_COUNT": "0", "TORCHELASTIC_MAX_RESTARTS": "0"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(nproc: int, module: str, args: list[str], preload: list[str] = ()) -> int:
    """Fork `nproc` ranks of `module` (torch and `preload` imported here first, once for every rank) and wait for
    them; the job's exit code. `module` itself is left for each rank to run as __main__ (imported here, runpy would
    warn that it was)."""
    import torch.distributed  # noqa: F401 - before the fork, once

    for name in preload:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - each rank imports it again and reports what is wrong with it
            pass
    freeze_alive()  # what the ranks inherit, out of their collections' sight
    env = {"port": free_port(), "run_id": uuid.uuid4().hex}
    for stream in (sys.stdout, sys.stderr):
        stream.flush()  # or a rank's exit flushes this process's buffered output once more
    ranks, launcher = {}, os.getpid()
    for rank in range(nproc):
        pid = os.fork()
        if pid == 0:
            child_main(functools.partial(_rank, rank, nproc, env, module, args), launcher)  # never returns
        ranks[pid] = rank
    return _wait(ranks)


def _rank(rank: int, nproc: int, env: dict, module: str, args: list[str]) -> None:
    faulthandler.enable()  # a rank that crashes in native code (exit code 139) prints its Python stack to the log
    # forked from the case server, the launcher has `module` imported already (bench.launchers imports
    # bench.distributed): runpy's warning that it was filled every job's log, and so the tail that a failed or timed
    # out job's record quotes
    warnings.filterwarnings("ignore", r"'.*' found in sys\.modules after import of package", RuntimeWarning)
    os.environ.update(rank_env(rank, nproc, env["port"], env["run_id"]))
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


def _wait(ranks: dict[int, int]) -> int:
    code, deadline = 0, None
    while ranks:
        if deadline is None:
            pid, status = os.waitpid(-1, 0)
        else:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                if time.monotonic() > deadline:
                    _signal(ranks, signal.SIGKILL)
                time.sleep(0.01)
                continue
        rank = ranks.pop(pid, None)
        exit_code = os.waitstatus_to_exitcode(status)
        if rank is None or exit_code == 0 or code:
            continue
        code = exit_code if exit_code > 0 else 128 - exit_code
        print(f"bench.ranks: rank {rank} exited with code {code}; stopping the others", file=sys.stderr, flush=True)
        _signal(ranks, signal.SIGTERM)
        deadline = time.monotonic() + STOP_WAIT_S
    return code


def _signal(ranks: dict[int, int], sig: int) -> None:
    for pid in ranks:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def main(argv: list[str]) -> int:
    preload = []
    if len(argv) > 2 and argv[1] == "--preload":
        preload, argv = [m for m in argv[2].split(",") if m], argv[:1] + argv[3:]
    if len(argv) < 3 or argv[1] != "-m" or not argv[0].isdigit() or int(argv[0]) < 1:
        print("usage: python -m bench.ranks N [--preload MOD,...] -m MODULE [ARG...]", file=sys.stderr)
        return 2
    return run(int(argv[0]), argv[2], argv[3:], preload)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
