"""`bench doctor`: what on this machine would make timings unstable, each finding with the command that fixes it.

It reads /sys, /proc and NVML and changes nothing (it advises, as `pyperf system show` does). What this machine does
not expose is "unknown", never an error. Statuses: ok; warn (timings noisier, or not comparable with another
machine's); critical; unknown. What confines bench itself (a cgroup CPU quota, taskset, OMP_NUM_THREADS) is checked in
bench.doctor_limits, the GPU in bench.doctor_gpu.

Critical means the machine is disturbed now, so a timing taken now measures the disturbance too; `bench run` warns
in one line when one holds (critical_warning):
- cpu.load: the 1-minute load average is above the CPU count and the CPUs were busy over the sample (the average
  lags a minute behind, so a burst that just ended is only a warn);
- cpu.busy: over the sample, another process used >= 0.5 CPU, or others together kept half of the CPUs busy
  (several processes at 0.4 CPU each disturb as much as one at 2): they compete with the case's threads for cores;
- gpuN.processes: another process holds a compute context on the GPU: it shares the SMs, memory and power budget;
- gpuN.throttle: the GPU lowers its clocks on its own now (power cap, thermal or HW slowdown, power brake).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.env import cpu_list as format_cpus
from bench.env import guarded, parse_cpus

STATUSES = ("ok", "warn", "critical", "unknown")
ROOT = Path("/")  # where /sys and /proc are read; tests point it at a fake tree
SAMPLE_S = 0.5  # doctor's CPU sample: 50 ticks a CPU at USER_HZ 100
WARNING_SAMPLE_S = 0.2  # bench run's: 20 ticks a CPU tell a process at 0.5 CPU (10 ticks) from an idle one
BUSY_PROCESS_CPU = 0.5
BUSY_SHARE = 0.5  # of all CPUs, kept busy by others together
LISTED_CPU = 0.1  # processes named in cpu.busy's finding: those using at least this much
CPU_SYS = "sys/devices/system/cpu"

# Why each CPU check matters for timings (by the last part of the check's name; the GPU's: bench.doctor_gpu).
WHY = {
    "governor": "governors other than performance lower the clock while idle and ramp it under load: the first "
                "repetitions run slower",
    "turbo": "turbo clocks follow temperature and how many cores are busy: the same work runs at other clocks "
             "from run to run",
    "smt": "two hardware threads of a core share its units and caches: a CPU timing depends on the sibling's work",
    "isolation": "on CPUs that are not isolated, other tasks and interrupts preempt a case's threads: each "
                 "preemption is a slow repetition",
    "memory": "with little memory available the kernel drops the page cache and swaps, stalling cases at random",
    "load": "runnable tasks beyond the CPU count wait for a core: a case's threads are preempted, timings stretch",
    "busy": "a busy process competes with a case's threads for cores, caches and memory bandwidth",
    "vm": "in a VM the hypervisor may give this guest's CPU time to others (steal): a repetition then takes longer",
}


@dataclass(frozen=True)
class Finding:
    check: str  # "cpu.governor", "gpu0.clocks"
    status: str  # ok, warn, critical or unknown
    found: str  # what this machine has
    why: str  # why it matters for timings
    fix: str | None = None  # the command that fixes it (advice: doctor runs nothing)

    def __post_init__(self):
        assert self.status in STATUSES, self.status


def finding(check: str, status: str, found: str, fix: str | None = None) -> Finding:
    return Finding(check, status, found, WHY[check.rpartition(".")[2]], fix)


class Host:
    """Files under `root` (a fake tree in tests), this process's pid, CPUs and environment, and the sampler's
    sleep."""

    def __init__(self, root=None, pid: int | None = None, affinity=None, sleep=time.sleep, environ=None):
        self.root = Path(ROOT if root is None else root)
        self.pid = os.getpid() if pid is None else pid
        self.affinity = set(affinity) if affinity is not None else guarded(os.sched_getaffinity, 0)
        self.sleep = sleep
        self.environ = dict(os.environ if environ is None else environ)

    def read(self, path) -> str | None:
        """The text of a file, `path` absolute or relative to root; None where it is missing or unreadable."""
        try:
            return (path if isinstance(path, Path) else self.root / path).read_text()
        except (OSError, UnicodeDecodeError):
            return None

    def cpus(self) -> int:
        online = guarded(parse_cpus, self.read(f"{CPU_SYS}/online"))
        return len(online) if online else os.cpu_count() or 1


def check_governor(host: Host) -> Finding:
    govs = {int(p.parent.parent.name[3:]): (host.read(p) or "").strip()
            for p in (host.root / CPU_SYS).glob("cpu[0-9]*/cpufreq/scaling_governor")}
    govs = {c: g for c, g in govs.items() if g}
    if not govs:
        return finding("cpu.governor", "unknown", "no cpufreq here (a VM or container: the host sets the clock)")
    by = {g: format_cpus(c for c, x in govs.items() if x == g) for g in sorted(set(govs.values()))}
    found = "; ".join(f"{g} on cpu {cpus}" for g, cpus in by.items())
    if set(govs.values()) == {"performance"}:
        return finding("cpu.governor", "ok", found)
    return finding("cpu.governor", "warn", found, "sudo cpupower frequency-set -g performance")


def check_turbo(host: Host) -> Finding:
    no_turbo, boost = host.read(f"{CPU_SYS}/intel_pstate/no_turbo"), host.read(f"{CPU_SYS}/cpufreq/boost")
    if no_turbo is not None:
        on, fix = no_turbo.strip() == "0", f"echo 1 | sudo tee /{CPU_SYS}/intel_pstate/no_turbo"
    elif boost is not None:
        on, fix = boost.strip() == "1", f"echo 0 | sudo tee /{CPU_SYS}/cpufreq/boost"
    else:
        return finding("cpu.turbo", "unknown", "no intel_pstate/no_turbo or cpufreq/boost here")
    return finding("cpu.turbo", "warn", "on", fix) if on else finding("cpu.turbo", "ok", "off")


def check_smt(host: Host) -> Finding:
    fix = f"echo off | sudo tee /{CPU_SYS}/smt/control"
    active = host.read(f"{CPU_SYS}/smt/active")
    if active is not None:
        on = active.strip() == "1"
        return finding("cpu.smt", "warn", "on", fix) if on else finding("cpu.smt", "ok", "off")
    siblings = [guarded(parse_cpus, host.read(p) or "")
                for p in (host.root / CPU_SYS).glob("cpu[0-9]*/topology/thread_siblings_list")]
    most = max((len(s) for s in siblings if s), default=0)
    if not most:
        return finding("cpu.smt", "unknown", "no smt/active or topology/thread_siblings_list here")
    return finding("cpu.smt", "warn", f"on ({most} threads a core)", fix) if most > 1 else finding(
        "cpu.smt", "ok", "off (one thread a core)")


def _cmdline_cpus(host: Host, key: str) -> set[int]:
    for token in (host.read("proc/cmdline") or "").split():
        if token.startswith(f"{key}="):
            return guarded(parse_cpus, token.split("=", 1)[1]) or set()
    return set()


def _cores_to_isolate(host: Host) -> str:
    """The CPU list of the upper half of the online cores, every hardware thread of each (an isolated thread whose
    sibling runs the rest of the system shares its core's units); "" where there is one core."""
    online = guarded(parse_cpus, host.read(f"{CPU_SYS}/online") or "") or set(range(host.cpus()))
    cores: dict[tuple, set[int]] = {}
    for c in sorted(online):
        siblings = guarded(parse_cpus, host.read(f"{CPU_SYS}/cpu{c}/topology/thread_siblings_list") or "") or {c}
        cores.setdefault(tuple(sorted(siblings & online or {c})), set()).update(siblings & online or {c})
    keys = sorted(cores)
    return format_cpus(set().union(*(cores[k] for k in keys[len(keys) // 2:]))) if len(keys) > 1 else ""


def isolated_cpus(host: Host) -> set[int] | None:
    """The CPUs isolcpus takes out of the scheduler's reach (cpu/isolated and the kernel command line); None where
    neither can be read."""
    text = host.read(f"{CPU_SYS}/isolated")
    if text is None and host.read("proc/cmdline") is None:
        return None
    return (guarded(parse_cpus, text or "") or set()) | _cmdline_cpus(host, "isolcpus")


def check_isolation(host: Host) -> Finding:
    isolated = isolated_cpus(host)
    if isolated is None:
        return finding("cpu.isolation", "unknown", "no cpu/isolated or /proc/cmdline here")
    if not isolated:
        half = _cores_to_isolate(host)
        if not half:  # one core: the kernel needs a housekeeping CPU, and a sibling of it shares its units
            return finding("cpu.isolation", "warn", "no CPU isolated (one core here: none to spare for isolation)")
        return finding("cpu.isolation", "warn", "no CPU isolated", f"add isolcpus={half} nohz_full={half} "
                       f"rcu_nocbs={half} to the kernel command line, reboot, then `bench run --cpus {half} ...`")
    nohz = _cmdline_cpus(host, "nohz_full")
    found = f"cpu {format_cpus(isolated)} isolated" + (f" (nohz_full {format_cpus(nohz)})" if nohz else "")
    # isolcpus also takes them out of load balancing: threads pinned to several are not spread over them
    fix = (f"bench run --cpus {format_cpus(isolated)} ... without taskset (each case on them, bench itself off them; "
           "the scheduler does not spread threads over isolated CPUs: a case on one of them, one thread, does not "
           "depend on it)")
    if host.affinity and not host.affinity & isolated:  # as isolcpus leaves every process: --cpus reaches them
        return finding("cpu.isolation", "ok", f"{found}; `bench run --cpus {format_cpus(isolated)}` puts each case "
                       "on them")
    where = f"cpu {format_cpus(host.affinity)}" if host.affinity else "any CPU"
    if host.affinity and host.affinity <= isolated:  # under taskset: the harness shares the cases' CPUs
        return finding("cpu.isolation", "warn", f"{found}; bench itself runs on {where} (taskset), beside each case",
                       fix)
    return finding("cpu.isolation", "warn", f"{found}, but bench runs on {where}, isolated or not", fix)


def check_memory(host: Host) -> Finding:
    kib = {}
    for line in (host.read("proc/meminfo") or "").splitlines():
        key, _, value = line.partition(":")
        if value.split()[:1] and value.split()[0].isdigit():
            kib[key] = int(value.split()[0])
    total, avail = kib.get("MemTotal"), kib.get("MemAvailable")
    if not total or avail is None:
        return finding("memory", "unknown", "no MemTotal/MemAvailable in /proc/meminfo")
    found = f"{avail / 2**20:.1f} GiB of {total / 2**20:.1f} GiB available ({avail / total:.0%})"
    if avail < 0.1 * total:  # below 10 % the kernel is already reclaiming
        return finding("memory", "warn", found, "ps -eo pid,rss,comm --sort=-rss | head  # then stop the largest")
    return finding("memory", "ok", found)


@dataclass(frozen=True)
class Snapshot:
    t_s: float  # time.monotonic()
    cpu: tuple | None  # /proc/stat "cpu": user nice system idle iowait irq softirq steal ..., ticks of all CPUs
    ncpu: int
    procs: dict  # pid -> (command name, user + system ticks of all its threads)


def snapshot(host: Host | None = None) -> Snapshot:
    """CPU time so far, of all CPUs and of each process: two of them make a sample."""
    host = host or Host()
    stat = (host.read("proc/stat") or "").splitlines()
    cpu = next((tuple(int(x) for x in line.split()[1:]) for line in stat if line.startswith("cpu ")), None)
    ncpu = sum(1 for line in stat if line.startswith("cpu") and line[3:4].isdigit()) or host.cpus()
    procs = {}
    for entry in guarded(lambda: list(os.scandir(host.root / "proc"))) or []:
        text = host.read(f"proc/{entry.name}/stat") if entry.name.isdigit() else None
        fields = text.rpartition(")")[2].split() if text else []  # "pid (comm) state ...": comm may hold ") "
        if len(fields) > 12 and fields[11].isdigit() and fields[12].isdigit():
            procs[int(entry.name)] = (text.partition("(")[2].rpartition(")")[0], int(fields[11]) + int(fields[12]))
    return Snapshot(time.monotonic(), cpu, ncpu, procs)


@dataclass(frozen=True)
class Busy:
    seconds: float
    busy: float | None  # share of all CPUs' time that others (not this process) kept busy
    steal: float | None  # share of all CPUs' time the hypervisor gave to other guests
    others: list  # (pid, name, CPUs used) of other processes at or above LISTED_CPU, busiest first


def measure_busy(a: Snapshot, b: Snapshot, own_pid: int) -> Busy:
    if a.cpu is None or b.cpu is None or sum(b.cpu[:8]) <= sum(a.cpu[:8]):
        return Busy(b.t_s - a.t_s, None, None, [])
    d = [y - x for x, y in zip(a.cpu, b.cpu)] + [0] * 8
    total = sum(d[:8])  # guest time is already inside user
    one_cpu = total / b.ncpu  # the sample's length in ticks of one CPU, by the kernel's own clock
    used = {pid: (name, t - a.procs[pid][1]) for pid, (name, t) in b.procs.items() if pid in a.procs}
    others = sorted(((pid, name, t / one_cpu) for pid, (name, t) in used.items()
                     if pid != own_pid and t / one_cpu >= LISTED_CPU), key=lambda x: -x[2])
    busy = max(total - d[3] - d[4] - d[7] - used.get(own_pid, ("", 0))[1], 0) / total
    return Busy(one_cpu / (guarded(os.sysconf, "SC_CLK_TCK") or 100), busy, d[7] / total, others)


def check_load(host: Host, busy: Busy) -> Finding:
    fields = (host.read("proc/loadavg") or "").split()
    load, n = guarded(float, fields[0]) if fields else None, host.cpus()
    if load is None:
        return finding("cpu.load", "unknown", "no /proc/loadavg here")
    found, fix = f"load average {load:.2f} (1 min) on {n} CPUs", "top -o %CPU  # wait for or stop what is busy"
    if load > n and (busy.busy is None or busy.busy >= BUSY_SHARE):
        return finding("cpu.load", "critical", found, fix)
    if load > n / 2:
        return finding("cpu.load", "warn", found + (" (the CPUs were idle over the sample: a burst that ended)"
                                                    if load > n else ""), fix)
    return finding("cpu.load", "ok", found)


def check_busy(busy: Busy) -> Finding:
    if busy.busy is None:
        return finding("cpu.busy", "unknown", "no /proc/stat here")
    found = f"{busy.busy:.0%} of the CPUs busy over {busy.seconds:.1f} s, this process aside"
    top = busy.others[:3]
    if top:
        found += ": " + ", ".join(f"{name} (pid {pid}) {cpu:.1f} CPU" for pid, name, cpu in top)
    fix = f"ps -o pid,pcpu,etime,args -p {','.join(str(p) for p, _, _ in top)}" if top else "top -o %CPU"
    if busy.busy >= BUSY_SHARE or (top and top[0][2] >= BUSY_PROCESS_CPU):
        return finding("cpu.busy", "critical", found, f"{fix}  # wait for them or stop them")
    if busy.busy >= 0.25:  # small processes that add up to a core's worth on a 4-core machine
        return finding("cpu.busy", "warn", found, fix)
    return finding("cpu.busy", "ok", found)


def check_vm(host: Host, busy: Busy) -> Finding:
    flags = next((line for line in (host.read("proc/cpuinfo") or "").splitlines() if line.startswith("flags")), "")
    if busy.steal is None and not flags:
        return finding("cpu.vm", "unknown", "no /proc/cpuinfo or /proc/stat here")
    what = "a VM" if "hypervisor" in flags.split() else "bare metal (no hypervisor flag)"
    if busy.steal is not None and busy.steal >= 0.01:
        return finding("cpu.vm", "warn", f"{what}; {busy.steal:.1%} stolen over the sample", "use a VM with "
                       "dedicated vCPUs, or bare metal")
    return finding("cpu.vm", "ok", what + ("" if busy.steal is None else "; nothing stolen over the sample"))


def _sampled(host: Host, seconds: float, since: Snapshot | None, during) -> tuple[list[Finding], Busy]:
    """`during()`'s findings (NVML queries overlap the CPU sample), and the CPU use from `since` or now on."""
    first = since or snapshot(host)
    found = during()
    left = seconds - (time.monotonic() - first.t_s)
    host.sleep(max(left, 0))
    return found, measure_busy(first, snapshot(host), host.pid)


def diagnose(host: Host | None = None, sample_s: float | None = None) -> list[Finding]:
    """Every check, CPU first, then each GPU, over a CPU sample of `sample_s` (default SAMPLE_S)."""
    from bench.doctor_gpu import gpu_findings  # they build on Finding and Host, defined here
    from bench.doctor_limits import limit_findings

    host = host or Host()
    found, busy = _sampled(host, SAMPLE_S if sample_s is None else sample_s, None, lambda: gpu_findings(host))
    cpu = [check_governor(host), check_turbo(host), check_smt(host), check_isolation(host), *limit_findings(host),
           check_load(host, busy), check_busy(busy), check_vm(host, busy), check_memory(host)]
    return cpu + found


def critical_warning(device: str, since: Snapshot | None = None, host: Host | None = None) -> str | None:
    """One line naming what disturbs the machine now, or None: the critical checks only, for `bench run` (a CPU
    sample from `since`, at least WARNING_SAMPLE_S long, and the run's GPU; well under 0.5 s)."""
    from bench.doctor_gpu import gpu_findings

    host = host or Host()
    index = int(device.partition(":")[2] or 0) if device.startswith("cuda") else None
    during = (lambda: gpu_findings(host, index, critical_only=True)) if index is not None else list
    found, busy = _sampled(host, WARNING_SAMPLE_S, since, during)
    critical = [f for f in (check_load(host, busy), check_busy(busy), *found) if f.status == "critical"]
    if not critical:
        return None
    return ("the machine is disturbed, timings taken now will show it: " + "; ".join(
        f"{f.check}: {f.found}" for f in critical) + " (`bench doctor` says what to do)")


def to_json(findings: list[Finding]) -> str:
    counts = {s: sum(f.status == s for f in findings) for s in STATUSES}
    return json.dumps({"schema": 1, "counts": counts, "findings": [asdict(f) for f in findings]}, indent=2)


def render(findings: list[Finding], console) -> None:
    """A table on a terminal; plain lines (status, check, found, then why and fix indented) elsewhere."""
    counts = ", ".join(f"{sum(f.status == s for f in findings)} {s}" for s in STATUSES)
    if console.is_terminal:
        from rich.markup import escape
        from rich.table import Table

        style = {"ok": "green", "warn": "yellow", "critical": "bold red", "unknown": "dim"}
        table = Table("status", "check", "found", "why it matters", "fix", title="bench doctor", show_lines=True)
        for f in findings:
            table.add_row(f"[{style[f.status]}]{f.status}[/]", f.check, escape(f.found), escape(f.why),
                          escape(f.fix or ""))
        console.print(table)
        console.print(counts)
        return
    for f in findings:
        console.out(f"{f.status:<8} {f.check:<18} {f.found}\n{'':9}why: {f.why}" + (
            f"\n{'':9}fix: {f.fix}" if f.fix else ""), highlight=False)
    console.out(counts, highlight=False)
