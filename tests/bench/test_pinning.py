"""Pinning and waiting: `bench run --cpus` pins each case and sizes its thread pool to match, `--wait-idle` holds a
case back until other processes leave its CPUs, and a distributed case is contended when any rank was."""

import io
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from bench import interference, launchers, runner
from bench.case import cpu_threads
from bench.cli import main
from bench.cli_run import parse_cpus
from bench.distributed import Launch, _keep, _threads_per_rank, aggregate, scratch
from bench.interference import HostSample
from bench.pinning import IDLE_SAMPLE_S, pinned, wait_idle
from bench.progress import PlainProgress
from bench.records import RECORDS_JSONL, read_records, read_run_json
from bench.suite import SUITES, Measurement, Suite, register

linux = pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or not os.path.exists("/proc/stat"),
                           reason="CPU affinity and /proc (Linux)")
ALLOWED = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
SPIN = ("import os, sys, time\nos.sched_setaffinity(0, {int(sys.argv[1])})\n"
        "end = time.monotonic() + float(sys.argv[2])\nwhile time.monotonic() < end: pass")


@register
class Pinned(Suite):
    """Records the CPUs and torch threads its case runs with, around a ~0.3 s timed window of pure Python."""

    name = "_pinned"
    variants = {"spin": "reference"}

    def grid(self, size, device):
        return [{"n": 20_000}]

    def measure(self, variant, params, device):
        from bench.timing import time_fn

        seen, threads = sorted(os.sched_getaffinity(0)), torch.get_num_threads()
        timing = time_fn(lambda: sum(k * k for k in range(params["n"])), "cpu", warmup=1, min_reps=5,
                         min_time_s=0.3)
        return Measurement({**timing.metrics("call_time"), "torch_threads": threads},
                           {**timing.samples("call_time"), "affinity": seen}, timed=timing)


def outsider(cpu: int, seconds: float = 20.0) -> int:
    """The pid of a process spinning on `cpu` for at most `seconds` that is no descendant of this one: an inline case
    and `bench` itself count their own tree's CPU time as theirs, so a child's spinning would not compete."""
    start = ("import subprocess, sys\n"
             "p = subprocess.Popen([sys.executable, '-c', *sys.argv[1:]], start_new_session=True,\n"
             "                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
             "print(p.pid)")
    out = subprocess.run([sys.executable, "-c", start, SPIN, str(cpu), str(seconds)], capture_output=True, text=True,
                         check=True, timeout=30)
    return int(out.stdout)


def end(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def quietest(choices: list[frozenset], seconds: float = 0.5) -> tuple[frozenset, float | None]:
    """Of `choices`, the CPUs other processes used least over the next `seconds`, and how much they used (None where
    that cannot be read)."""
    readers = [interference.Reader(os.getpid(), cpus) for cpus in choices]
    try:
        before = [r.sample() for r in readers]
        time.sleep(seconds)
        if None in before:
            return choices[0], None
        used = [interference.rates(s0, r.sample())["host_other_cpus"] for s0, r in zip(before, readers)]
        return min(zip(choices, used), key=lambda c: c[1])
    finally:
        for r in readers:
            r.close()


@linux
def test_cpus_parse_as_kernel_lists():
    assert parse_cpus(None) is None
    assert parse_cpus(str(ALLOWED[0])) == {ALLOWED[0]}
    assert parse_cpus(f" {ALLOWED[0]}-{ALLOWED[0]},{ALLOWED[-1]}") == {ALLOWED[0], ALLOWED[-1]}
    if ALLOWED[:2] == [0, 1]:
        assert parse_cpus("0-1,0") == {0, 1}


@linux
@pytest.mark.parametrize("argv, says", [
    (["--cpus", "0-"], "--cpus must be a list of CPUs and low-high ranges such as 0-3,8, got '0-'"),
    (["--cpus", "1-0"], "--cpus must be a list"),
    (["--cpus", "0,,1"], "--cpus must be a list"),
    (["--cpus", "x"], "--cpus must be a list"),
    (["--cpus", "-1"], "--cpus must be a list"),
    (["--cpus", "0-99999999"], "that bench may run on here (it runs on "),
    (["--cpus", "4096"], "there is no CPU 4096 that bench may run on here"),
    (["--wait-idle", "0"], "--wait-idle must be a positive number of seconds, got 0"),
    (["--wait-idle", "1e9"], "--wait-idle must be at most 1e+06 seconds"),
])
def test_a_bad_cpu_list_or_wait_is_refused_in_one_line_before_anything_is_made(argv, says, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["run", "_pinned", "--size", "smoke", "--device", "cpu", "--out", str(out), *argv])
    err = capsys.readouterr().err
    assert code == 2 and says in err and err.count("\n") == 1, err
    assert not out.exists()


def test_threads_follow_the_pinned_cpus_unless_told_otherwise():
    class Default(Suite):
        cpu_threads = None

    class One(Suite):
        cpu_threads = 1

    two = frozenset({0, 1})
    assert cpu_threads(Default(), "cpu", None, two) == 2
    assert cpu_threads(One(), "cpu", None, two) == 1  # a suite whose ops are too small for a pool keeps its one
    assert cpu_threads(Default(), "cpu", 3, two) == 3  # --threads wins
    assert cpu_threads(Default(), "cuda:0", None, two) == 2  # torch's default counts the CPUs before the pinning
    assert cpu_threads(Default(), "cuda:0", None, None) is None and cpu_threads(Default(), "cpu", None, None) is None
    assert _threads_per_rank(Launch(2), two) == 1 and _threads_per_rank(Launch(4), two) == 1


def affinities() -> dict[int, set[int]]:
    return {int(t): os.sched_getaffinity(int(t)) for t in os.listdir("/proc/self/task")}


@linux
def test_an_inline_case_runs_pinned_and_bench_gets_its_cpus_back(tmp_path):
    threads, before = torch.get_num_threads(), os.sched_getaffinity(0)
    code, [record] = runner.run(runner.RunConfig(suites=[SUITES["_pinned"]], size="smoke", device="cpu",
                                                 out=tmp_path / "run", inline=True, cpus=frozenset({ALLOWED[0]})))
    assert code == 0 and record.status == "ok", record.error
    assert record.samples["affinity"] == [ALLOWED[0]] and record.metrics["torch_threads"] == 1
    assert record.metrics["host_cpus"] == 1  # the interference sampler counts the pinned CPU only
    assert "idle_wait_s" not in record.metrics  # no --wait-idle: no wait to record
    meta = read_run_json(tmp_path / "run")
    assert meta["cpus"] == [ALLOWED[0]] and meta["suites"]["_pinned"]["threads"] == 1
    assert torch.get_num_threads() == threads and all(cpus == before for cpus in affinities().values())


@linux
def test_an_isolated_case_runs_pinned_from_the_command_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("bench.cli.discover", lambda: dict(SUITES))
    monkeypatch.setattr("bench.cli._write_report", lambda out: None)  # the report is not what this test is about
    cpu = ALLOWED[-1]
    code = main(["run", "_pinned", "--size", "smoke", "--device", "cpu", "--cpus", str(cpu), "--out",
                 str(tmp_path / "run")])
    [record] = read_records(tmp_path / "run" / RECORDS_JSONL)
    assert code == 0 and record.status == "ok", (capsys.readouterr(), record.error)
    assert record.samples["affinity"] == [cpu] and record.metrics["torch_threads"] == 1
    assert record.metrics["host_cpus"] == 1
    assert read_run_json(tmp_path / "run")["cpus"] == [cpu]


@linux
@pytest.mark.skipif(len(ALLOWED) < 2, reason="needs two CPUs")
def test_cpus_outside_benchs_own_affinity_are_taken_where_the_kernel_allows(tmp_path, capsys, monkeypatch):
    # isolcpus leaves every process, bench included, off the isolated CPUs: --cpus must still reach them, so that
    # the case runs there and bench itself stays on the others (taskset would put both on them)
    monkeypatch.setattr("bench.cli.discover", lambda: dict(SUITES))
    monkeypatch.setattr("bench.cli._write_report", lambda out: None)
    with pinned(frozenset({ALLOWED[0]})):
        assert parse_cpus(str(ALLOWED[-1])) == {ALLOWED[-1]} and os.sched_getaffinity(0) == {ALLOWED[0]}
        code = main(["run", "_pinned", "--size", "smoke", "--device", "cpu", "--cpus", str(ALLOWED[-1]), "--out",
                     str(tmp_path / "run")])
        assert os.sched_getaffinity(0) == {ALLOWED[0]}
    [record] = read_records(tmp_path / "run" / RECORDS_JSONL)
    assert code == 0 and record.status == "ok", (capsys.readouterr(), record.error)
    assert record.samples["affinity"] == [ALLOWED[-1]]


@linux
@pytest.mark.skipif(len(ALLOWED) < 2, reason="needs two CPUs")
def test_load_on_another_cpu_is_not_counted_against_a_pinned_case(tmp_path):
    spinner = outsider(ALLOWED[1])
    try:
        _, [record] = runner.run(runner.RunConfig(suites=[SUITES["_pinned"]], size="smoke", device="cpu",
                                                  out=tmp_path / "run", inline=True, cpus=frozenset({ALLOWED[0]})))
    finally:
        end(spinner)
    m = record.metrics
    # one CPU holds at most one CPU's worth of busy time: counting the spinner's CPU too would make it about two
    assert m["host_cpus"] == 1 and m["host_other_cpus"] + m["host_case_cpus"] <= 1.3, m


class FakeReader:
    """Samples of `cpus` CPUs at a fake clock, others using `others[i]` CPUs over the i-th interval after the first."""

    def __init__(self, clock, others, cpus=1):
        self.clock, self.others, self.cpus = clock, list(others), cpus
        self.busy, self.t, self.closed = 0, None, False

    def sample(self):
        now = self.clock()
        if self.t is not None:
            other = self.others.pop(0) if self.others else 0.0
            self.busy += round(other * (now - self.t) * interference.TICKS_PER_S)
        self.t = now
        return HostSample(now, now, self.busy, 0, 0, self.cpus, 0, None, None, None)

    def close(self):
        self.closed = True


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


@pytest.mark.parametrize("others, cpus, threads, bound, waited, told", [
    ([0.0], 1, None, 10.0, 0.0, None),  # quiet at once: no wait at all
    ([1.0, 1.0, 0.0], 1, None, 10.0, 2.0, "other processes used 1.0 of 1 CPUs"),
    ([1.0] * 10, 1, None, 3.5, 3.5, "other processes used 1.0 of 1 CPUs"),  # ran out: the case runs anyway
    ([0.3], 2, 1, 10.0, 0.0, None),  # 0.3 of 2 CPUs beside a one-thread case: it does not fill them
    ([0.6, 0.0], 2, 1, 10.0, 1.0, "other processes used 0.6 of 2 CPUs"),
])
def test_the_wait_lasts_until_a_quiet_sample_or_its_bound(others, cpus, threads, bound, waited, told):
    clock, heard = Clock(), []
    reader = FakeReader(clock, others, cpus)
    got = wait_idle(bound, None, threads, heard.append, reader=reader, clock=clock, sleep=clock.sleep)
    assert got == waited and heard == ([told] if told else []) and reader.closed


def test_without_proc_the_wait_is_unknown():
    class Blind(FakeReader):
        def sample(self):
            return None

    clock = Clock()
    assert wait_idle(5.0, reader=Blind(clock, []), clock=clock, sleep=clock.sleep) is None and clock.now == 100.0


@linux
def test_a_busy_cpu_holds_the_case_back_and_the_wait_is_recorded(tmp_path):
    cpu, shown = ALLOWED[0], io.StringIO()
    spinner = outsider(cpu)
    try:
        _, [record] = runner.run(runner.RunConfig(suites=[SUITES["_pinned"]], size="smoke", device="cpu",
                                                  out=tmp_path / "run", inline=True, cpus=frozenset({cpu}),
                                                  wait_idle_s=1.5), PlainProgress(stream=shown))
    finally:
        end(spinner)
    assert record.status == "ok" and record.metrics["idle_wait_s"] > 0, record.metrics
    assert "_pinned/spin/n=20000: waiting for the machine to go idle: other processes used" in shown.getvalue()
    spec = read_run_json(tmp_path / "run")["suites"]["_pinned"]["metrics"]["idle_wait_s"]
    assert spec["kind"] == "info" and spec["direction"] is None


@linux
def test_an_idle_cpu_starts_the_case_at_once(tmp_path):
    """Tries until one run starts at once, or two did not on a CPU that stayed quiet. Each run takes the CPU other
    processes used least just before, and the other test workers may still take it for seconds between that check and
    the run (CI runs saw a 4 s wait after a quiet check; a crowded run saw it busy through both 5 s waits). So their
    use of the CPU is read over each run as well: a run that waited while they used as much as one busy sample of the
    wait needs (OTHER_CPUS over IDLE_SAMPLE_S) is disturbed, not evidence. Two waits on a CPU they used less fail; a
    machine too busy to give two undisturbed runs within 20 s of tries is a skip saying so. The session hands this
    test out last (tests/conftest.py, QUIET), as the other workers finish."""
    waits, disturbed, busy = [], [], None
    deadline = time.monotonic() + 20  # the other workers' cases take seconds: a quiet moment may take a while
    for attempt in range(8):
        while (pick := quietest([frozenset({c}) for c in ALLOWED]))[1] is not None \
                and pick[1] >= interference.OTHER_CPUS / 2 and time.monotonic() < deadline:
            pass  # every CPU busy now: a run would say nothing
        cpu, busy = pick
        if busy is None:
            pytest.skip("the CPUs' use cannot be read here")
        if busy >= interference.OTHER_CPUS / 2 or time.monotonic() >= deadline:
            break
        reader = interference.Reader(os.getpid(), cpu)
        try:
            before = reader.sample()
            _, [record] = runner.run(runner.RunConfig(suites=[SUITES["_pinned"]], size="smoke", device="cpu",
                                                      out=tmp_path / f"run{attempt}", inline=True, cpus=cpu,
                                                      wait_idle_s=5.0))
            after = reader.sample()
        finally:
            reader.close()
        used = interference.rates(before, after)["host_other_cpus"] * (after.t_s - before.t_s)  # CPU-seconds
        wait = record.metrics["idle_wait_s"]
        if wait > 0 and used >= interference.OTHER_CPUS * IDLE_SAMPLE_S:
            disturbed.append((sorted(cpu), wait, round(used, 2)))
            continue
        waits.append((sorted(cpu), wait))
        if wait == 0.0 or len(waits) == 2:
            break
    started = [w for _, w in waits]
    if 0.0 not in started and len(waits) < 2:
        pytest.skip(f"the machine stayed busy: {len(waits)} tries ran undisturbed (CPU, wait: {waits}; disturbed "
                    f"(CPU, wait, CPU-seconds other processes used): {disturbed}; {busy} used before the last)")
    assert 0.0 in started, (waits, disturbed)


def test_a_distributed_case_is_contended_when_any_rank_was():
    def rank(contended, other, clock, slowdown=None):
        return {"status": "ok", "samples": {}, "metrics": {
            "step_ms": 1.0, "contended": contended, "host_other_cpus": other, "host_cpu_mhz_pct": clock,
            "gpu_slowdown": slowdown}}

    calm, busy = rank(False, 0.0, 95.0), rank(True, 1.5, 55.0, slowdown=False)
    m = aggregate([calm, busy], {"step_ms": "lower"})["metrics"]
    assert m["contended"] is True and m["gpu_slowdown"] is False
    assert m["host_other_cpus"] == 1.5 and m["host_cpu_mhz_pct"] == 55.0  # the most disturbed rank's figures
    assert m["rank_min_host_other_cpus"] == 0.0
    m = aggregate([calm, rank(None, None, None)], {})["metrics"]
    assert m["contended"] is False and m["host_other_cpus"] == 0.0 and m["gpu_slowdown"] is None
    assert aggregate([rank(None, None, None)] * 2, {})["metrics"]["contended"] is None


@linux
def test_a_torchrun_keeper_is_pinned_and_what_it_starts_inherits_it():
    cpu = ALLOWED[-1]
    cmd = [sys.executable, "-c", "import os, subprocess, sys; print(sorted(os.sched_getaffinity(0)), flush=True); "
           "subprocess.run([sys.executable, '-c', 'import os; print(sorted(os.sched_getaffinity(0)))'])"]
    with scratch("techbench-test-") as job:
        code = _keep(cmd, dict(os.environ), job, 30.0, frozenset({cpu}))
        log = (job / "job.log").read_text()
    assert code == 0 and log.split() == [f"[{cpu}]", f"[{cpu}]"], log


def test_an_inline_case_starts_with_what_an_isolated_one_finds_imported():
    # torch._dynamo imported lazily by the tracker's first op, inside its window, leaves frames in a reference cycle
    # that the peak counts or not as the collector runs; the fork server preloads it, and so must --inline
    script = ("import sys\nimport bench.launchers as L\nassert 'torch._dynamo' not in sys.modules\n"
              "L.execute = lambda *a, **k: {'found': sorted(m for m in L.SERVER_MODULES if m in sys.modules)}\n"
              "print(L.Inline().launch(None, 'cpu', 1.0, None)['found'])")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(sorted(launchers.SERVER_MODULES))
