import math
import os
import subprocess
import sys
import time

import pandas as pd
import pytest

from bench import interference, runner, telemetry
from bench.interference import (
    HOST_KEYS,
    KEYS,
    OTHER_CPUS,
    HostSample,
    HostSampler,
    bracket,
    contended,
    gpu_others,
    machine_state,
    rates,
    reason,
    snapshot,
    tree_pids,
)
from bench.records import read_run_json
from bench.suite import SUITES, Measurement, Suite, register
from bench.telemetry import Telemetry
from tests.bench import fake_suites  # noqa: F401 - registers _timed
from tests.bench.test_telemetry import FakeNVML

linux = pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="reads /proc (Linux)")
SPIN = "import sys, time\nend = time.monotonic() + float(sys.argv[1])\nwhile time.monotonic() < end: pass"


CONTEND_SIZE = "quick"
"""The size the tests run _contend at: quick's timers take their whole 0.1 s floor, a window /proc/stat's 10 ms
ticks resolve (bench.interference.MIN_SPAN_S); smoke's quarter of it (25 ms) was judged from the samples around it,
and one case of five under load once read as quiet."""


@register
class Contend(Suite):
    """Times a ~10 ms pure-Python call a few times: a case whose timed window competing load can disturb."""

    name = "_contend"
    variants = {"sum": "reference"}

    def grid(self, size, device):
        return [{"i": i} for i in range(5)]

    def measure(self, variant, params, device):
        from bench.timing import time_fn

        timing = time_fn(lambda: sum(k * k for k in range(100_000)), "cpu", warmup=1, min_reps=5, min_time_s=0.1)
        return Measurement(timing.metrics("call_time"), timing.samples("call_time"), timed=timing)


def sample(t, busy, tree, steal=0, total=None, psi=None, cpus=2, load=None, mhz=None):
    return HostSample(t, t, busy, steal, busy + 1000 if total is None else total, cpus, tree, psi, load, mhz)


def test_rates_count_only_the_time_outside_the_case_tree():
    # 2 s on 2 CPUs at 100 ticks/s: 300 busy ticks of which the case tree took 100 -> others 1.0 CPU, case 0.5
    ticks = interference.TICKS_PER_S
    s0 = sample(10.0, 1000, 50, steal=0, total=0, psi=0, load=0.5, mhz=90.0)
    s1 = sample(12.0, 1000 + 3 * ticks, 50 + ticks, steal=ticks // 10, total=4 * ticks, psi=500_000, load=2.5,
                mhz=80.0)
    r = rates(s0, s1)
    assert set(r) == set(HOST_KEYS)
    assert r["host_other_cpus"] == 1.0 and r["host_case_cpus"] == 0.5 and r["host_cpus"] == 2
    assert r["host_steal_pct"] == 2.5 and r["host_cpu_psi_pct"] == 25.0
    assert r["host_load_avg"] == 2.5 and r["host_cpu_mhz_pct"] == 80.0
    # the tree's exact run time and the sampled ticks round apart: never a negative use by others
    assert rates(s0, sample(12.0, 1000, 50 + ticks))["host_other_cpus"] == 0.0
    assert rates(s1, s0) == dict.fromkeys(HOST_KEYS)
    assert r["host_case_wait_cpus"] is None  # no run-queue delay read (off Linux): none recorded


def test_the_case_trees_wait_for_a_cpu_is_recorded_in_cpus_worth():
    # 0.3 s of its threads' run-queue delay over 2 s: 0.15 CPUs' worth waited (bench.runqueue)
    from dataclasses import replace

    s0, s1 = replace(sample(10.0, 0, 0), wait_ns=10**9), replace(sample(12.0, 0, 0), wait_ns=13 * 10**8)
    assert rates(s0, s1)["host_case_wait_cpus"] == 0.15


def test_the_run_queue_delay_of_a_live_tree_is_read():
    import sys

    from bench.runqueue import wait_ns

    if not sys.platform.startswith("linux"):
        pytest.skip("/proc/<pid>/task/<tid>/schedstat is Linux's")
    mine = wait_ns([os.getpid()])
    assert isinstance(mine, int) and mine >= 0
    assert wait_ns([os.getpid(), 2**22 + 7]) is not None and wait_ns([2**22 + 7]) is None  # a pid that is no more


def test_the_span_brackets_the_window():
    samples = [sample(t, 0, 0) for t in (0.0, 0.1, 0.2, 0.3, 0.4)]
    assert [s.t_s for s in bracket(samples, (0.15, 0.25))] == [0.1, 0.3]
    assert [s.t_s for s in bracket(samples, (0.1, 0.3))] == [0.1, 0.3]
    assert [s.t_s for s in bracket(samples, (-1.0, 9.0))] == [0.0, 0.4]  # past the samples: the nearest
    # a sample whose reads straddle an edge (its thread waited for the GIL) is not on the outside of it
    slow = [sample(0.0, 0, 0), HostSample(0.1, 0.25, 0, 0, 0, 2, 0, None, None, None), sample(0.3, 0, 0)]
    assert [s.t_s for s in bracket(slow, (0.2, 0.28))] == [0.0, 0.3]


@pytest.mark.parametrize("metrics, cpus, expected", [
    ({"host_cpus": 2, "host_other_cpus": 1.7, "host_case_cpus": 0.3},
     None, "other processes used 1.7 of 2 CPUs during the timed window"),
    ({"host_other_cpus": 1.7, "host_case_cpus": 0.3}, 2, "other processes used 1.7 of 2 CPUs during the timed window"),
    ({"host_other_cpus": 1.7, "host_case_cpus": 0.3}, None, "other processes used 1.7 CPUs during the timed window"),
    # 13 of 16 CPUs free beside a one-thread case: nothing competed with it
    ({"host_cpus": 16, "host_other_cpus": 2.0, "host_case_cpus": 1.0}, None, None),
    ({"host_cpus": 2, "host_other_cpus": OTHER_CPUS / 2, "host_case_cpus": 2.0}, None, None),  # daemons, rounding
    ({"host_cpus": 2, "host_other_cpus": 0.1, "host_steal_pct": 12.0},
     None, "the hypervisor took 12% of the CPU time (steal) during the timed window"),
    ({"host_cpu_mhz_pct": 45.0}, None, "the CPU core ran at 45% of its max clock during the timed window"),
    ({"gpu_other_procs": 2}, None, "2 other processes ran on the GPU during the timed window"),
    ({"gpu_other_procs": 1, "gpu_slowdown": True, "gpu_clock_pct": 71.2, "max_temp_c": 87},
     None, "1 other process ran on the GPU; the GPU slowed itself down (thermal or hardware slowdown; SM clock at 71% "
           "of max, 87 °C) during the timed window"),
    ({"gpu_other_procs": 0, "gpu_slowdown": False, "gpu_clock_pct": 40.0}, None, None),  # low clock: idle or capped
    ({"gpu_other_procs": math.nan, "host_other_cpus": math.nan}, 2, None),  # a report's missing cells
])
def test_reason_says_what_disturbed_the_window(metrics, cpus, expected):
    assert reason(metrics, cpus) == expected
    assert bool(contended(metrics)) is (expected is not None)


def test_contended_is_null_without_a_timed_window_or_anything_measured():
    busy = {"host_cpus": 2, "host_other_cpus": 1.7, "host_case_cpus": 0.3}
    assert contended(busy, window=False) is None
    assert contended(dict.fromkeys(KEYS)) is None
    assert reason({**busy, "contended": False}) is None  # the flag as recorded wins


def test_gpu_processes_outside_the_tree_and_across_pid_namespaces():
    assert gpu_others([10, 11, 99], {10, 11}, own_context=True) == 1
    assert gpu_others([], {10}, own_context=True) == 0
    # a container: NVML's PIDs are the host's, none is the case's, and one of them is the case's own context
    assert gpu_others([5001, 5002], {10}, own_context=True) == 1
    assert gpu_others([5001, 5002], {10}, own_context=False) == 2


@linux
def test_the_case_tree_holds_children_and_grandchildren():
    child = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time\n"
                              "p = subprocess.Popen(['sleep', '30']); print(p.pid, flush=True); time.sleep(30)"],
                             stdout=subprocess.PIPE, text=True)
    try:
        grandchild = int(child.stdout.readline())
        pids = tree_pids(os.getpid())
        assert pids[0] == os.getpid() and child.pid in pids and grandchild in pids
        assert os.getppid() not in pids
    finally:
        child.kill()
        child.wait()
        subprocess.run(["kill", str(grandchild)], check=False)


def test_off_linux_everything_is_null_and_no_thread_starts(monkeypatch):
    monkeypatch.setattr(interference, "_read", lambda path: None)
    monkeypatch.setattr(interference.Reader, "pread", lambda self, path: None)
    with HostSampler() as host:
        assert host._thread is None
    assert host.summary((0.0, time.monotonic())) == dict.fromkeys(HOST_KEYS)
    state = machine_state([snapshot()])
    assert state["other_cpus"] is None and state["load_avg"] is None and state["mem_available_bytes"] is None


def test_every_suite_declares_the_interference_metrics():
    for suite in SUITES.values():
        specs = suite.metric_specs()
        assert all(specs[k].kind == "info" and specs[k].direction is None for k in KEYS), suite.name


class ProcNVML(FakeNVML):
    """FakeNVML with the calls bench.interference's GPU side makes: compute processes, the max SM clock, a count."""

    def __init__(self, pids, reasons=0x1 | 0x4):
        super().__init__()
        self.pids, self.reasons = pids, reasons

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        return [type("Proc", (), {"pid": p, "usedGpuMemory": 1 << 30})() for p in self.pids]

    def nvmlDeviceGetMaxClockInfo(self, h, domain):
        return 1980

    def nvmlDeviceGetCount(self):
        return 1

    def nvmlDeviceGetCurrentClocksEventReasons(self, h):
        return self.reasons


@pytest.mark.parametrize("reasons, slowdown", [(0x1 | 0x4, False), (0x40, True), (0x8, True)])
def test_gpu_interference_over_the_window(monkeypatch, reasons, slowdown):
    # the case's own process and the shell that started the tests, which is no part of the case's tree
    monkeypatch.setattr(telemetry, "load_nvml", lambda: ProcNVML([os.getpid(), os.getppid()], reasons))
    with Telemetry("cuda:0", interval_s=0.005) as tel:
        time.sleep(0.02)
        t0 = time.monotonic()
        time.sleep(0.04)
        t1 = time.monotonic()
    got = tel.interference((t0, t1))
    assert got == {"gpu_other_procs": 1, "gpu_clock_pct": round(100 * 1410 / 1980, 1), "gpu_slowdown": slowdown}
    assert tel.interference(None) == dict.fromkeys(("gpu_other_procs", "gpu_clock_pct", "gpu_slowdown"))


def test_a_run_on_a_shared_gpu_is_flagged_and_run_json_holds_the_machine(tmp_path, monkeypatch):
    monkeypatch.setattr(telemetry, "load_nvml", lambda: ProcNVML([os.getpid(), os.getppid()]))
    _, [record] = runner.run(runner.RunConfig(suites=[SUITES["_timed"]], size="smoke", device="cuda:0",
                                              out=tmp_path / "run", inline=True))
    m = record.metrics
    assert m["gpu_other_procs"] == 1 and m["contended"] is True
    assert "1 other process ran on the GPU" in reason(m)
    meta = read_run_json(tmp_path / "run")
    for state in (meta["machine_start"], meta["machine_end"]):
        assert state["gpus"] == [{"index": 0, "compute_procs": 2, "sm_clock_mhz": 1410, "sm_clock_max_mhz": 1980,
                                  "temp_c": state["gpus"][0]["temp_c"], "clock_event_reasons":
                                  ["gpu_idle", "sw_power_cap"]}]
        if os.path.exists("/proc/stat"):
            assert state["mem_available_bytes"] > 0 and len(state["load_avg"]) == 3 and state["cpus"] >= 1


def test_the_run_report_summary_names_the_contended_cases():
    from reports.run_report import _summary

    frame = pd.DataFrame([
        {"suite": "s", "run": "r", "status": "ok", "case_id": "s/a/n=1", "contended": True, "host_cpus": 2,
         "host_other_cpus": 1.7, "host_case_cpus": 0.3, "gpu_other_procs": math.nan},
        {"suite": "s", "run": "r", "status": "ok", "case_id": "s/b/n=1", "contended": False, "host_cpus": 2,
         "host_other_cpus": 0.0, "host_case_cpus": 1.0, "gpu_other_procs": math.nan},
        {"suite": "s", "run": "r", "status": "error", "case_id": "s/c/n=1", "contended": None},
    ])
    page = _summary(frame)
    assert "s/a/n=1" in page and "other processes used 1.7 of 2 CPUs during the timed window" in page
    assert "s/b/n=1" not in page and "s/c/n=1" not in page
    assert "<th>contended</th>" in page


def spinners(n: int, seconds: float = 30.0) -> list[subprocess.Popen]:
    """n busy processes, children of this one, that stop by themselves after `seconds` at the latest."""
    return [subprocess.Popen([sys.executable, "-c", SPIN, str(seconds)]) for _ in range(n)]


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


def others_now(seconds: float) -> float | None:
    """CPUs' worth other processes (outside this one's tree) used over the next `seconds`."""
    before = snapshot()
    time.sleep(seconds)
    return machine_state([before])["other_cpus"]


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    """One isolated case first: the forkserver imports torch once, before any load starts."""
    runner.run(runner.RunConfig(suites=[SUITES["_contend"]], size=CONTEND_SIZE, device="cpu",
                                out=tmp_path_factory.mktemp("warm") / "run", cases_like=["*i=0*"]))


@linux
def test_under_competing_load_the_timed_cases_are_flagged(tmp_path, warm):
    cpus = len(interference.affinity(os.getpid()) or range(os.cpu_count()))
    load = spinners(cpus)  # one busy process a CPU, beside the case's own
    try:
        time.sleep(0.2)
        code, records = runner.run(runner.RunConfig(suites=[SUITES["_contend"]], size=CONTEND_SIZE, device="cpu",
                                                    out=tmp_path / "run"))
    finally:
        stop(load)
    assert code == 0 and len(records) == 5
    flagged = [r for r in records if r.metrics["contended"] is True]
    assert len(flagged) >= math.ceil(0.95 * len(records)), [r.metrics for r in records]
    assert all(reason(r.metrics).startswith("other processes used") for r in flagged)


@linux
def test_machine_state_counts_what_runs_outside_the_tree(tmp_path):
    sleeper = subprocess.Popen(["sleep", "30"])  # a tree of its own, which the spinner is no part of
    load = spinners(1)
    try:
        time.sleep(0.1)
        before = snapshot(sleeper.pid)
        time.sleep(0.5)
        state = machine_state([before], root=sleeper.pid)
    finally:
        stop([*load, sleeper])
    assert state["over_s"] >= 0.5 and state["other_cpus"] >= 0.5


@linux
def test_an_idle_run_flags_no_case(tmp_path, warm):
    busy = others_now(0.5)
    if busy is None or busy >= OTHER_CPUS / 2:
        pytest.skip(f"the machine is busy: other processes used {busy} CPUs just before the test")
    before = snapshot()
    code, records = runner.run(runner.RunConfig(suites=[SUITES["_contend"]], size=CONTEND_SIZE, device="cpu",
                                                out=tmp_path / "run"))
    during = machine_state([before])["other_cpus"]
    if during >= OTHER_CPUS / 2:
        pytest.skip(f"the machine got busy: other processes used {during} CPUs during the run")
    assert code == 0 and [r.metrics["contended"] for r in records] == [False] * 5, [r.metrics for r in records]


@linux
def test_an_aa_compare_with_one_side_under_load_calls_nothing_slower_and_lists_it(tmp_path, warm, capsys):
    """A/A on real runs: the same suite twice, the second beside one busy process a CPU. Its timings are contended
    rather than slower, and named; --fail-on-regression fails on a NEW run whose timings were all disturbed (it
    measured the load: rerun it), and --allow-contended judges them as any other (one run a side: shown, not
    gated)."""
    from bench.cli import main
    from bench.compare import compare

    config = dict(suites=[SUITES["_contend"]], size=CONTEND_SIZE, device="cpu")
    code, _ = runner.run(runner.RunConfig(**config, out=tmp_path / "a"))
    load = spinners(len(interference.affinity(os.getpid()) or range(os.cpu_count())))
    try:
        time.sleep(0.2)
        loaded_code, loaded = runner.run(runner.RunConfig(**config, out=tmp_path / "b"))
    finally:
        stop(load)
    assert code == loaded_code == 0 and all(r.metrics["contended"] is True for r in loaded), \
        [r.metrics for r in loaded]
    c = compare([tmp_path / "a"], [tmp_path / "b"])
    timed = c.rows[c.rows["metric"] == "call_time_ms"]
    assert len(timed) == 5 and set(timed["verdict"]) == {"contended"}, timed[["case_id", "verdict"]]
    assert not c.rows["verdict"].isin(["faster", "slower"]).any()
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--fail-on-regression"]) == 1
    out = capsys.readouterr().out
    assert "contended (5): " in out and out.count("other processes used") >= 5 and "regressions (" not in out
    assert "5 of NEW's 5 timings were contended in every new run, so not judged: NEW was disturbed" in out
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--fail-on-regression",
                 "--allow-contended"]) == 0


@register
class TwoTimings(Suite):
    """A case with a headline timing and a second one (a prefill beside the decode), each in a window of its own."""

    name = "_two_timings"
    variants = {"v": "reference"}

    def grid(self, size, device):
        return [{"i": 0}]

    def measure(self, variant, params, device):
        from bench.timing import Timing

        decode, prefill = (Timing((1.0, 1.1, 1.2), warmup=0, method="wall", window_s=w) for w in ((10, 11), (20, 21)))
        return Measurement(timed=decode, timings={"decode_time": decode, "prefill_time": prefill})


def test_a_disturbed_second_timing_makes_the_case_contended(monkeypatch):
    # others took 1.7 CPUs during the prefill's window only: the case is contended, with that window's figures
    from bench.case import execute

    def summary(self, window):
        busy = window == (20, 21)
        return {k: None for k in interference.HOST_KEYS} | {"host_cpus": 2, "host_case_cpus": 0.3 if busy else 1.0,
                                                             "host_other_cpus": 1.7 if busy else 0.0}

    monkeypatch.setattr(interference.HostSampler, "summary", summary)
    [case] = runner.plan([SUITES["_two_timings"]], "smoke", "cpu")
    result = execute(case, "cpu")
    assert result["metrics"]["contended"] is True and result["metrics"]["host_other_cpus"] == 1.7
    monkeypatch.setattr(interference.HostSampler, "summary", lambda self, w: summary(self, None))
    assert execute(case, "cpu")["metrics"]["contended"] is False


def test_the_case_root_is_the_launcher_only_for_its_ranks(monkeypatch):
    # torchrun's variable set in a shell no longer makes the shell the case (its other children were counted as it)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "x")
    monkeypatch.delenv(interference.CASE_ROOT, raising=False)
    assert interference.case_root() == os.getpid()
    monkeypatch.setenv(interference.CASE_ROOT, str(os.getppid()))  # what a job's rank sets: its launcher
    assert interference.case_root() == os.getppid()
    monkeypatch.setenv(interference.CASE_ROOT, "1" if os.getppid() != 1 else "2")  # inherited from elsewhere
    assert interference.case_root() == os.getpid()
