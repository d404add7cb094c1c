"""Imported first by the case server (the forkserver of bench.launchers), before torch and the suites: the server
dies with the process that started it (PR_SET_PDEATHSIG, SIGKILL; Linux), and a Ctrl-C while it imports ends it
without a traceback.

The server notices that `bench` is gone only in its loop, which starts after its imports: a `bench` killed as its
first case starts (the server importing torch, torch._dynamo and the suites' preloads) left the server, and its
resource tracker beside it, running to the end of those imports, up to 8 s after the kill on the shared 2-core VM
under load, a CPU busy under whatever ran next. No keeper is the server's parent, so nothing else ends it. The signal
comes when the thread that started the server ends: `bench`'s main thread, which runs its cases; a server that ended
with a thread is started again by the next case (multiprocessing's forkserver.ensure_running). Should `bench` die
before this import, the server lives to the end of its imports, as it did before.

The server is in `bench`'s process group, so Ctrl-C reaches it too; multiprocessing ignores SIGINT in the server only
once its imports are done, and one during them printed a KeyboardInterrupt traceback of torch's import (40 lines)
under `bench`'s own line that says how to resume. The processes it forks (keepers, and the cases and ranks they
fork) report an exception themselves (multiprocessing's Process bootstrap, bench.lifeline.child_main) and exit with
os._exit, so this hook is the server's alone.

Imported by nothing else: in any other process it would tie that process's life to its parent's.
"""

import sys

from bench.lifeline import die_with_parent


def _quiet_interrupt(kind, value, tb) -> None:
    if not issubclass(kind, KeyboardInterrupt):  # Ctrl-C: `bench` says what was stopped and how to resume
        sys.__excepthook__(kind, value, tb)


die_with_parent()
sys.excepthook = _quiet_interrupt
