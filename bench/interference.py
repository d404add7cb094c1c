"""What else ran while a case was timed, and whether that disturbed it: the `contended` flag and its reason.

A case can be consistently slow within itself (a quiet IQR, `_noisy` false) and still 20x slower than the same case
an hour later, when other jobs held the machine. So each timed window records what could have disturbed it:
- host: CPUs' worth of busy time OUTSIDE the case's process tree (busy ticks of the CPUs the case may run on, from
  /proc/stat, minus the tree's utime+stime from /proc/<pid>/stat), the tree's own use, steal, CPU pressure
  (/proc/pressure/cpu), the 1-minute load average, and the clock of the case's core against its max (cpufreq);
- GPU (bench.telemetry, through NVML): other compute processes on the device, SM clock against its max, slowdowns.
The case tree is the process that runs `execute` (the runner's child, or `bench` itself with --inline) and its
descendants; in a job's rank, its launcher and so every local rank. Off Linux every host value is None. bench.case
judges every timed window of a case (the headline timing's and each named one's) and keeps the most disturbed.
The window opens inside `measure` (bench.timing): a daemon thread reads the counters every SAMPLE_INTERVAL_S, and
the summary spans the last sample before the window to the first after it (the case's own set-up at the edges is
subtracted like the rest of its time). A sample takes ~75 us of CPU (~40 of them the run-queue delays of a 4-thread
case); ci/interference_overhead.py measures what it costs a timed pure-Python call: 0.7-1.8% of a 10 ms call on the
2-core test VM (load average 5-6), measured before the run-queue reads.

Thresholds, from 0.3 s windows of a pure-Python call on the 2-core test VM (CLK_TCK 100):
- OTHER_CPUS, SATURATION_SLACK_CPUS: what the accounting leaves over when nothing runs outside the tree (kernel
  threads, interrupts, tick rounding), measured with the tree rooted at PID 1 so that every process is in it: p50
  0.00, p99 0.13, max 0.16 of 150 windows (load average 5.7, where rounding is worst). With other jobs holding the
  load average at 3-6, host_other_cpus was 1.05-1.92 (143 windows) and the call took 8.4-82 ms against 8 ms at
  best; with two spinning processes started beside it, 1.6-2.0. A case is contended when others used at least 0.25
  CPUs (above that floor) AND, with the case's own use, filled its CPUs to within 0.5: on 2 CPUs a quarter CPU taken
  from a case that uses both is a 12% slowdown, as large as the differences `bench compare` reports, while on a
  16-CPU GPU host a build on 2 CPUs beside a one-thread case leaves 13 free and takes nothing from it.
- STEAL_PCT: 0-1.6% in those 143 windows (p50 0). Flagged from 10%: a tenth of the CPU time gone slows a case as
  much as `bench compare` looks for, and it is six times the most this VM showed.
- CPU_MHZ_PCT: this VM exposes no cpufreq. Under all-core load a core runs well below its single-core turbo
  (cpuinfo_max_freq), 70-80% of it being normal, so only a clock under 60% of max is judged (a powersave governor,
  thermal limits).
- Context, not judged: the case tree's run-queue delay (bench.runqueue), the load average (it counts the case and
  lags a minute), system-wide PSI (it counts the case's own threads beyond its CPUs: 64-100% in the windows above).
- GPU: any other compute process, or a slowdown the GPU made on its own (bench.telemetry.SLOWDOWN_BITS).
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass

from bench.runqueue import wait_ns

SAMPLE_INTERVAL_S, OTHER_CPUS, SATURATION_SLACK_CPUS = 0.1, 0.25, 0.5  # the thresholds: the docstring's
STEAL_PCT, CPU_MHZ_PCT = 10.0, 60.0
RECENT_S, STALE_S, MIN_SPAN_S = 1.0, 60.0, 0.1

HOST_KEYS = ("host_cpus", "host_other_cpus", "host_case_cpus", "host_load_avg", "host_steal_pct",
             "host_cpu_psi_pct", "host_cpu_mhz_pct", "host_case_wait_cpus")
GPU_KEYS = ("gpu_other_procs", "gpu_clock_pct", "gpu_slowdown")
KEYS = (*HOST_KEYS, *GPU_KEYS, "contended")


TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100  # USER_HZ of /proc's tick counts


def mem_available_bytes() -> int | None:
    """The host memory available now (MemAvailable of /proc/meminfo); None where there is no such line."""
    for line in (_read("/proc/meminfo") or b"").split(b"\n"):
        if line.startswith(b"MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def _ints(text: bytes | None) -> list[int]:
    return [int(x) for x in (text or b"").split()]


def parse_cpu(text: bytes | None, cpus: frozenset[int] | None = None) -> tuple[int, int, int, int] | None:
    """(busy, steal, total ticks, CPU count) over `cpus` (None: all) from /proc/stat. busy: user, nice, system, irq,
    softirq (guest time is inside user); total: every state, idle, iowait and steal included."""
    if not text:
        return None
    lines = [line.split() for line in text.split(b"\n") if line.startswith(b"cpu")]
    try:
        mine = [f for f in lines[1:] if cpus is None or int(f[0][3:]) in cpus] or lines[1:]
        rows = [lines[0]] if len(mine) == len(lines) - 1 else mine  # all of them: the summed line is the same
        v = [sum(int(f[i]) if i < len(f) else 0 for f in rows) for i in range(1, 9)]
    except (ValueError, IndexError):
        return None
    return v[0] + v[1] + v[2] + v[5] + v[6], v[7], sum(v), len(mine)


def parse_stat(text: bytes | None) -> tuple[int, int] | None:
    """(utime+stime+cutime+cstime ticks, the core it last ran on) from /proc/<pid>/stat: cutime and cstime keep a
    reaped child's time in the tree."""
    f = (text or b"")[(text or b"").rfind(b")") + 2:].split()  # the name may hold spaces and parentheses
    try:
        return int(f[11]) + int(f[12]) + int(f[13]) + int(f[14]), int(f[36])
    except (IndexError, ValueError):
        return None


def parse_psi(text: bytes | None) -> int | None:
    """Microseconds in which some runnable task waited for a CPU (/proc/pressure/cpu "some", Linux 4.20+)."""
    try:
        return int(text.split(b"\n")[0].rsplit(b"total=", 1)[1]) if text else None
    except (IndexError, ValueError):
        return None


def load_avg() -> list[float] | None:
    try:
        return [float(x) for x in (_read("/proc/loadavg") or b"").split()[:3]] or None
    except ValueError:
        return None


def tree_pids(root: int) -> list[int]:
    """`root` and its live descendants (the children of every thread: CONFIG_PROC_CHILDREN, on in every distro)."""
    pids, i = [root], 0
    while i < len(pids):
        pid = pids[i]
        i += 1
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        pids += [c for tid in tids for c in _ints(_read(f"/proc/{pid}/task/{tid}/children"))]
    return pids


CASE_ROOT = "TECHBENCH_CASE_ROOT"  # a job's rank sets it to its launcher's pid (torchrun's agent or bench.ranks)


def case_root() -> int:
    """The root of the case's process tree: this process, or in a job's rank the launcher that started every rank
    (only a child of the pid CASE_ROOT names: a shell's other children are no part of the case)."""
    root = os.environ.get(CASE_ROOT, "")
    return int(root) if root.isdigit() and int(root) == os.getppid() else os.getpid()


def affinity(pid: int) -> frozenset[int] | None:
    """The CPUs `pid` may run on: the ones whose busy time can compete with it. None where that is unknown."""
    try:
        return frozenset(os.sched_getaffinity(pid))
    except (AttributeError, OSError):
        return None


@dataclass(frozen=True)
class HostSample:
    t_s: float
    """time.monotonic() as the reads began."""
    t_end_s: float
    """... and as they ended: a thread that waits for the GIL between reads may take milliseconds over them."""
    busy: int
    steal: int
    total: int
    cpus: int
    tree: int | None
    """CPU ticks of the case tree."""
    psi_us: int | None
    load1: float | None
    mhz_pct: float | None
    wait_ns: int | None = None  # run-queue delay of the case tree's threads (bench.runqueue)


class Reader:
    """Reads the counters of the machine and of one process tree. The files read every time stay open and are
    re-read with pread: one system call each, so that a sampler thread takes the GIL from a busy Python case as few
    times as possible (each time costs the case a thread switch): 5 reads a sample for a case that started no
    process. Children of other threads than the root's main thread are looked for every FULL_SCAN_EVERY samples."""

    FULL_SCAN_EVERY = 10

    def __init__(self, root: int, cpus: frozenset[int] | None = None):
        self.root, self.cpus = root, cpus
        self._fds: dict[str, int] = {}
        self._scanned: list[int] = []
        self._n = 0

    def pread(self, path: str) -> bytes | None:
        fd = self._fds.get(path)
        if fd is None:
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                fd = -1  # absent here (no PSI, no cpufreq): not looked for again
            self._fds[path] = fd
        try:
            return os.pread(fd, 1 << 20, 0) if fd >= 0 else None
        except OSError:
            return None

    def close(self) -> None:
        for fd in self._fds.values():
            if fd >= 0:
                os.close(fd)
        self._fds.clear()

    def sample(self) -> HostSample | None:
        t_s = time.monotonic()
        cpu = parse_cpu(self.pread("/proc/stat"), self.cpus)
        if cpu is None:
            return None
        tree, core = self._tree()
        load = (self.pread("/proc/loadavg") or b"").split()[:1]
        return HostSample(t_s, time.monotonic(), *cpu, tree=tree, psi_us=parse_psi(self.pread("/proc/pressure/cpu")),
                          load1=float(load[0]) if load else None, mhz_pct=self._mhz_pct(core),
                          wait_ns=wait_ns([self.root, *self._scanned]))

    def _tree(self) -> tuple[int | None, int | None]:
        own = parse_stat(self.pread(f"/proc/{self.root}/stat"))
        if own is None:
            return None, None
        if self._n % self.FULL_SCAN_EVERY == 0:
            self._scanned = tree_pids(self.root)[1:]
        self._n += 1
        children = _ints(self.pread(f"/proc/{self.root}/task/{self.root}/children"))
        ticks = own[0]
        for pid in dict.fromkeys([*children, *self._scanned]):
            got = parse_stat(_read(f"/proc/{pid}/stat"))
            ticks += got[0] if got else 0  # one that ended: its time is in its parent's cutime once reaped
        return ticks, own[1]

    def _mhz_pct(self, core: int | None) -> float | None:
        """The core's clock as % of its max, where cpufreq exposes it (not in most VMs)."""
        top = None if core is None else _ints(self.pread(f"/sys/devices/system/cpu/cpu{core}/cpufreq/cpuinfo_max_freq"))
        cur = _ints(self.pread(f"/sys/devices/system/cpu/cpu{core}/cpufreq/scaling_cur_freq")) if top else None
        return 100.0 * cur[0] / top[0] if cur and top[0] > 0 else None


def bracket(samples: list[HostSample], window: tuple[float, float]) -> tuple[HostSample, HostSample]:
    """The last sample read wholly before the window's start and the first read wholly after its end (the nearest
    ones where none lies beyond an edge): counters read around the window cover all of it."""
    start, end = window
    before = [s for s in samples if s.t_end_s <= start]
    after = [s for s in samples if s.t_s >= end]
    return (before[-1] if before else samples[0]), (after[0] if after else samples[-1])


def rates(s0: HostSample, s1: HostSample) -> dict:
    """host_* metrics over the span between two samples; all None when the span is empty."""
    dt = (s1.t_s + s1.t_end_s - s0.t_s - s0.t_end_s) / 2
    if dt <= 0:
        return dict.fromkeys(HOST_KEYS)
    cpu_s = (s1.busy - s0.busy) / TICKS_PER_S
    case_s = None if s0.tree is None or s1.tree is None else (s1.tree - s0.tree) / TICKS_PER_S
    total = s1.total - s0.total
    clocks = [s.mhz_pct for s in (s0, s1) if s.mhz_pct is not None]
    loads = [s.load1 for s in (s0, s1) if s.load1 is not None]
    return {
        "host_cpus": s1.cpus,
        # tick accounting (sampled) and the tree's times (scaled from exact run time) round apart by a tick or two
        "host_other_cpus": None if case_s is None else round(max(0.0, cpu_s - case_s) / dt, 3),
        "host_case_cpus": None if case_s is None else round(case_s / dt, 3),
        "host_load_avg": max(loads) if loads else None,
        "host_steal_pct": round(100.0 * (s1.steal - s0.steal) / total, 2) if total > 0 else None,
        "host_cpu_psi_pct": (None if s0.psi_us is None or s1.psi_us is None
                             else round(min(100.0, (s1.psi_us - s0.psi_us) / 1e4 / dt), 2)),
        "host_cpu_mhz_pct": round(min(clocks), 1) if clocks else None,
        "host_case_wait_cpus": (None if s0.wait_ns is None or s1.wait_ns is None
                                else round(max(0, s1.wait_ns - s0.wait_ns) / 1e9 / dt, 3)),
    }


class HostSampler:
    """Reads the host counters from a daemon thread between __enter__ and __exit__; off Linux, no thread."""

    def __init__(self, root: int | None = None, interval_s: float = SAMPLE_INTERVAL_S):
        root = case_root() if root is None else root
        self.reader = Reader(root, affinity(root))
        self.interval_s = interval_s
        self.samples: list[HostSample] = []
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def __enter__(self) -> HostSampler:
        if self._sample():
            self._thread = threading.Thread(target=self._loop, name="techbench-interference", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self._sample()
        self.reader.close()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def _sample(self) -> bool:
        try:
            s = self.reader.sample()
        except Exception:  # noqa: BLE001 - a /proc oddity must never fail the case it watches
            s = None
        if s is not None:
            self.samples.append(s)
        return s is not None

    def summary(self, window: tuple[float, float] | None) -> dict:
        """HOST_KEYS over the timed window (time.monotonic() start and end); all None without a window or samples."""
        if window is None or len(self.samples) < 2:
            return dict.fromkeys(HOST_KEYS)
        return rates(*bracket(self.samples, window))


def judge(metrics: dict, cpus: int | None = None) -> list[str]:
    """Each disturbance the metrics of one case show, as a phrase; empty when none. `cpus` overrides host_cpus."""
    m = metrics
    cpus = _num(cpus) or _num(m.get("host_cpus"))
    out = []
    other, case = _num(m.get("host_other_cpus")), _num(m.get("host_case_cpus")) or 0.0
    if other is not None and other >= OTHER_CPUS and (not cpus or other + case >= cpus - SATURATION_SLACK_CPUS):
        out.append(f"other processes used {other:.1f}" + (f" of {cpus:g} CPUs" if cpus else " CPUs"))
    steal = _num(m.get("host_steal_pct"))
    if steal is not None and steal >= STEAL_PCT:
        out.append(f"the hypervisor took {steal:.0f}% of the CPU time (steal)")
    mhz = _num(m.get("host_cpu_mhz_pct"))
    if mhz is not None and mhz < CPU_MHZ_PCT:
        out.append(f"the CPU core ran at {mhz:.0f}% of its max clock")
    procs = _num(m.get("gpu_other_procs"))
    if procs:
        out.append(f"{procs:.0f} other process{'es' * (procs != 1)} ran on the GPU")
    if m.get("gpu_slowdown") is True:
        clock, temp = _num(m.get("gpu_clock_pct")), _num(m.get("max_temp_c"))
        detail = ", ".join(([f"SM clock at {clock:.0f}% of max"] if clock is not None else [])
                           + ([f"{temp:.0f} °C"] if temp is not None else []))
        out.append("the GPU slowed itself down (thermal or hardware slowdown" + (f"; {detail})" if detail else ")"))
    return out


def contended(metrics: dict, window: bool = True) -> bool | None:
    """The `contended` flag: None without a timed window or without anything measured to judge it by."""
    known = any(_num(metrics.get(k)) is not None or isinstance(metrics.get(k), bool)
                for k in (*HOST_KEYS, *GPU_KEYS) if k != "host_cpus")
    return bool(judge(metrics)) if window and known else None


def reason(metrics: dict, cpus: int | None = None) -> str | None:
    """Why a case counts as contended, in one line (e.g. "other processes used 1.7 of 2 CPUs during the timed
    window"); None when it does not, or when its record predates these metrics."""
    found = judge(metrics, cpus)
    if not found or metrics.get("contended") is False:
        return None
    return "; ".join(found) + " during the timed window"


def _num(value) -> float | None:
    """A number, or None for a missing one (a null, a NaN cell of a report's frame, a flag)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def gpu_others(pids: list[int], tree: set[int], own_context: bool) -> int:
    """Compute processes on a GPU outside the case tree. NVML names processes by the PIDs of the root PID namespace;
    in a container none of them is then the case's own, and when the case holds a context one of them is taken to
    be it."""
    others = [p for p in pids if p not in tree]
    if own_context and len(others) == len(pids) and others:
        return len(others) - 1
    return len(others)


def snapshot(root: int | None = None) -> HostSample | None:
    """The machine's counters and those of `root`'s tree (default: this process's) now, for `machine_state`."""
    root = os.getpid() if root is None else root
    reader = Reader(root, affinity(root))
    try:
        return reader.sample()
    finally:
        reader.close()


def machine_state(since: list[HostSample | None] = (), root: int | None = None) -> dict:
    """The machine now, for run.json: load average, memory available, GPUs where NVML answers, and the CPU others
    used outside `root`'s tree (default: this process's, `bench`), steal and CPU pressure over a span that ends now.
    It begins at the latest of the `since` snapshots (oldest first) that is at least RECENT_S old, else the oldest;
    of those at most STALE_S old where there are any. None under MIN_SPAN_S, which ticks of 10 ms cannot resolve."""
    now = snapshot(root)
    earlier = [s for s in since if s is not None and now is not None]
    fresh = [s for s in earlier if now.t_s - s.t_s <= STALE_S] or earlier[-1:]
    old = [s for s in fresh if now.t_s - s.t_s >= RECENT_S]
    begin = old[-1] if old else (fresh[0] if fresh else None)
    span = None if now is None or begin is None else now.t_s - begin.t_s
    over = rates(begin, now) if span is not None and span >= MIN_SPAN_S else dict.fromkeys(HOST_KEYS)
    available = mem_available_bytes()
    from bench.telemetry import gpu_state  # telemetry imports this module: imported here, when a run needs it

    return {"load_avg": load_avg(), "mem_available_bytes": available,
            "cpus": now.cpus if now is not None else os.cpu_count(),
            "over_s": None if span is None else round(span, 3), "other_cpus": over["host_other_cpus"],
            "steal_pct": over["host_steal_pct"], "cpu_psi_pct": over["host_cpu_psi_pct"], "gpus": gpu_state()}
