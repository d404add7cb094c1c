"""How long a process tree's threads waited for a CPU: the second field of /proc/<pid>/task/<tid>/schedstat (run-queue
delay in ns, kept by every Linux kernel built with CONFIG_SCHED_INFO, on in every distro), summed over the threads.

It measures what contention costs a case directly, where bench.interference's CPU accounting measures what others
used: beside a 2-thread matmul loop on the 2-core test VM (no other work), a busy loop taking 10, 20, 30, 50 and 100%
of one CPU slowed it 11, 16, 23, 39 and 63% and made its threads wait 0.10, 0.17, 0.23, 0.39 and 0.63 CPUs' worth;
with nothing beside it, 0.005-0.015 (8 windows of 1 s); a 1-thread loop beside a full busy loop waited 0.005 and was
not slowed, as the other CPU was free. The accounting of others' time reads up to 0.15 CPUs at rest, which is why its
threshold (0.25) lets a 12-20% slowdown through. Recorded as `host_case_wait_cpus`, not judged yet: the threshold
wants runs on more machines than one VM.
"""

from __future__ import annotations

import os


def wait_ns(pids: list[int]) -> int | None:
    """The run-queue delay summed over every thread of `pids`, in ns; None where /proc has no schedstat (off Linux,
    or a kernel without it). A thread or process that ended is skipped: its delay leaves the sum."""
    total, seen = 0, False
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
                    total += int(f.read().split()[1])
                    seen = True
            except (OSError, IndexError, ValueError):
                continue
    return total if seen else None
