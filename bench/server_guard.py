"""Imported first by the case server (the forkserver of bench.launchers), before torch and the suites: the server
dies with the process that started it (PR_SET_PDEATHSIG, SIGKILL; Linux).

The server notices that `bench` is gone only in its loop, which starts after its imports: a `bench` killed as its
first case starts (the server importing torch, torch._dynamo and the suites' preloads) left the server, and its
resource tracker beside it, running to the end of those imports, up to 8 s after the kill on the shared 2-core VM
under load, a CPU busy under whatever ran next. No keeper is the server's parent, so nothing else ends it. The signal
comes when the thread that started the server ends: `bench`'s main thread, which runs its cases; a server that ended
with a thread is started again by the next case (multiprocessing's forkserver.ensure_running). Should `bench` die
before this import, the server lives to the end of its imports, as it did before.

Imported by nothing else: in any other process it would tie that process's life to its parent's.
"""

from bench.lifeline import die_with_parent

die_with_parent()
