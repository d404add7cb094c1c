"""`bench doctor`'s checks of what confines bench itself: a cgroup CPU quota (a container's CPU limit), CPUs taken
away by taskset, and thread-count variables (OMP_NUM_THREADS and the like). Each is a run setting that compare's
environment diff names afterwards (`cpu_quota`, `cpu_affinity`, `env_vars`); doctor says so before the run, with
the `bench run` option that makes it the run's own setting instead.
"""

from __future__ import annotations

import math

from bench.cgroup import Quota, cpu_quota, cpuset
from bench.doctor import CPU_SYS, Finding, Host, format_cpus, isolated_cpus, parse_cpus
from bench.env import guarded

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")  # thread counts torch and its BLAS read

# Why each check matters for timings (by the last part of the check's name).
WHY = {
    "quota": "a CPU quota gives the process's threads that many CPUs' worth of time a CFS period, then stops them "
             "until the next: with more threads running than the quota, each step waits in bursts of up to a period",
    "affinity": "a case runs on the CPUs bench may use and torch starts a thread on each: a run confined to fewer "
                "CPUs runs fewer threads, beside bench itself, and is not comparable with one that is not",
    "threads": "these variables set how many threads torch and its BLAS run where neither --threads nor the suite "
               "does: timings are not comparable with a run without them",
}


def finding(check: str, status: str, found: str, fix: str | None = None) -> Finding:
    return Finding(check, status, found, WHY[check.rpartition(".")[2]], fix)


def _n(count: int, what: str) -> str:
    return f"{count} {what}{'s' * (count != 1)}"


def _usable(host: Host) -> int:
    """How many CPUs this process may run on (taskset and the cpuset narrow it)."""
    return len(host.affinity) if host.affinity else host.cpus()


def quota_threads(quota: Quota | None, usable: int) -> int:
    """The threads that a quota's CPUs' worth keeps busy without throttling: its whole CPUs, at least one, at most
    the CPUs the process may use."""
    if quota is None or quota.cpus is None:
        return usable
    return max(1, min(usable, math.floor(quota.cpus)))


def check_quota(host: Host, quota: Quota | None) -> Finding:
    if quota is None:
        return finding("cpu.quota", "unknown", "no cgroup here (/proc/self/cgroup or its cgroup mount missing)")
    usable = _usable(host)
    if quota.cpus is None:
        return finding("cpu.quota", "ok", "no CPU quota on this process's cgroup or its ancestors")
    found = (f"a CPU quota of {quota.cpus:.3g} CPUs a {quota.period_us / 1000:g} ms period ({quota.where}) for the "
             f"{_n(usable, 'CPU')} bench may use")
    if quota.cpus >= usable:
        return finding("cpu.quota", "ok", found)
    n = quota_threads(quota, usable)
    raise_limit = f"raise the container's CPU limit to {usable} (docker run --cpus {usable}, a pod's limits.cpu)"
    fix = f"bench run --threads {n} ...  # the quota's whole CPUs; or {raise_limit}" if n < usable else raise_limit
    return finding("cpu.quota", "warn", f"{found}: torch's default of {_n(usable, 'thread')} is throttled every "
                   "period" + (", and so is one thread" if quota.cpus < 1 else ""), fix)


def check_affinity(host: Host) -> Finding:
    online = guarded(parse_cpus, host.read(f"{CPU_SYS}/online") or "")
    if not host.affinity or not online:
        return finding("cpu.affinity", "unknown", "no cpu/online here, or this process's CPUs are not reported")
    isolated = isolated_cpus(host) or set()
    default = online - isolated or online  # isolcpus leaves every process off the isolated CPUs (cpu.isolation)
    mine = format_cpus(host.affinity)
    if host.affinity >= default:
        return finding("cpu.affinity", "ok", f"bench may use cpu {mine}: every online CPU" + (
            " not isolated" if isolated and default != online else ""))
    allowed = guarded(cpuset, host.root)
    found = f"bench may use cpu {mine}; a process started plainly, cpu {format_cpus(default)}"
    if allowed and host.affinity >= allowed:  # the container's CPUs: no option of bench's widens them
        return finding("cpu.affinity", "ok", f"{found}: its cgroup's cpuset (a container's CPUs)")
    how = "taskset" if allowed else "taskset, or a cpuset"
    return finding("cpu.affinity", "warn", f"{found} ({how}): torch runs {_n(len(host.affinity), 'thread')} there, and "
                   "bench itself shares them with each case", f"start bench without taskset and pin the cases "
                   f"instead: bench run --cpus {mine} ...  # each case on them, as many torch threads, in run.json")


def check_threads(host: Host, quota: Quota | None) -> Finding:
    set_ = {k: host.environ[k] for k in THREAD_VARS if k in host.environ}
    usable = _usable(host)
    n = quota_threads(quota, usable)
    where = f"the {_n(usable, 'CPU')} bench may use" + (
        f" (under its {quota.cpus:.3g}-CPU quota)" if n != usable and quota is not None and quota.cpus else "")
    if not set_:
        return finding("cpu.threads", "ok", f"none of {', '.join(THREAD_VARS)} set: torch picks its threads for "
                       f"{where}")
    found = ", ".join(f"{k}={v}" for k, v in set_.items())
    if all(v.strip() == str(n) for v in set_.values()):
        return finding("cpu.threads", "ok", f"{found}: {_n(n, 'thread')} for {where}")
    return finding("cpu.threads", "warn", f"{found}: torch and its BLAS follow it, not {where}",
                   f"unset {' '.join(set_)}; bench run --threads N ...  # the run records the count, and compare "
                   "names it")


def limit_findings(host: Host) -> list[Finding]:
    quota = guarded(cpu_quota, host.root)
    return [check_quota(host, quota), check_affinity(host), check_threads(host, quota)]
