import json
import os
import subprocess
import sys
import textwrap
import time
import warnings
from collections import Counter
from pathlib import Path

import pytest

from bench import runner
from bench.records import read_records, read_run_json
from bench.rundir import holder
from bench.suite import SUITES
from tests.bench import fake_suites  # noqa: F401 - registers the fake suites

ROOT = Path(__file__).resolve().parents[2]


def lines_per_case(path: Path) -> Counter:
    """case_id -> lines of records.jsonl that hold it, read raw: read_records keeps one record per case_id."""
    return Counter(json.loads(line)["case_id"] for line in path.read_text().splitlines())


def config(tmp_path, suite="_endings", **kw):
    kw = {"size": "smoke", "device": "cpu", "out": tmp_path / "run", **kw}
    return runner.RunConfig(suites=[SUITES[suite]], **kw)


def test_plan_puts_the_reference_first_and_shards_cover_every_case_once():
    suite = SUITES["_endings"]
    cases = runner.plan([suite], "smoke", "cpu")
    assert [c.variant for c in cases[:6]] == ["ok", "raise", "oom", "skip", "crash", "sleep"]
    assert len({c.id for c in cases}) == len(cases) == 12
    halves = [runner.plan([suite], "smoke", "cpu", shard=(i, 2)) for i in (1, 2)]
    assert sorted(c.id for h in halves for c in h) == sorted(c.id for c in cases)
    assert {c.group for c in halves[0]}.isdisjoint({c.group for c in halves[1]})
    thirds = [runner.plan([SUITES["_slow"]], "smoke", "cpu", shard=(i, 3)) for i in (1, 2, 3)]
    assert [len(t) for t in thirds] == [2, 2, 2]
    assert [c.variant for c in runner.plan([suite], "smoke", "cpu", variants=["sleep"])] == ["sleep", "sleep"]
    assert {c.params["n"] for c in runner.plan([suite], "smoke", "cpu", where={"n": "2"})} == {2}


def test_a_suite_named_twice_is_planned_once():
    suite = SUITES["_endings"]
    assert [c.id for c in runner.plan([suite, suite], "smoke", "cpu")] == [c.id for c in runner.plan([suite], "smoke",
                                                                                                      "cpu")]


def test_a_variant_without_a_case_at_some_params_is_not_planned():
    class Partial(type(SUITES["_slow"])):
        def applies(self, variant, params):
            return variant == "a" or params["i"] == 1

    cases = runner.plan([Partial()], "smoke", "cpu")
    assert [(c.variant, c.params["i"]) for c in cases] == [("a", 0), ("a", 1), ("b", 1), ("a", 2)]


def test_parts_have_their_own_variants_references_and_ratios(tmp_path):
    suite = SUITES["_parts"]
    cases = runner.plan([suite], "smoke", "cpu")
    assert [(c.params["part"], c.variant) for c in cases] == [("x", "a"), ("x", "c"), ("y", "b"), ("y", "c")]
    code, records = runner.run(config(tmp_path, suite="_parts", inline=True))
    by = {(r.params["part"], r.variant): r.metrics for r in records}
    assert code == 0 and len(records) == 4  # no record, not even a skip, for a variant outside its part
    assert by[("x", "c")]["speed_x"] == 2.0 and "size_x" not in by[("x", "c")]  # against a, part x's reference
    assert by[("y", "c")]["size_x"] == 10 / 30 and "speed_x" not in by[("y", "c")]  # against b, part y's
    described = read_run_json(tmp_path / "run")["suites"]["_parts"]
    assert described["parts"]["y"]["reference"] == "b" and described["parts"]["x"]["variants"] == ["a", "c"]
    assert {"speed_x", "size_x"} <= set(suite.metric_specs())


@pytest.mark.parametrize("inline", [True, False])
def test_the_runner_sets_each_cases_threads_and_records_them(tmp_path, inline):
    import torch

    before = torch.get_num_threads()
    _, records = runner.run(config(tmp_path / "own", suite="_threads", inline=inline))
    assert records[0].metrics["threads_seen"] == 1 and torch.get_num_threads() == before  # restored after
    assert read_run_json(tmp_path / "own" / "run")["suites"]["_threads"]["threads"] == 1
    _, records = runner.run(config(tmp_path / "given", suite="_threads", inline=inline, threads=2))
    assert records[0].metrics["threads_seen"] == 2  # --threads wins over the suite's choice
    assert read_run_json(tmp_path / "given" / "run")["suites"]["_threads"]["threads"] == 2
    assert records[0].metrics["timer_calls"] == 5  # smoke size: a quarter of the timer's floor
    _, records = runner.run(config(tmp_path / "quick", suite="_threads", inline=inline, size="quick"))
    assert records[0].metrics["timer_calls"] == 20


def test_no_suite_sets_the_thread_count_itself():
    for path in sorted((ROOT / "suites").glob("*.py")):
        assert "set_num_threads" not in path.read_text(), f"{path.name}: declare cpu_threads instead"


def test_isolated_run_records_every_ending_and_goes_on(tmp_path):
    code, records = runner.run(config(tmp_path))
    by_id = {r.case_id: r for r in records}
    assert code == 1  # a case errored
    status = {r.variant: r.status for r in records if r.params["n"] == 1}
    assert status == {"ok": "ok", "raise": "error", "oom": "oom", "skip": "skipped", "crash": "error", "sleep": "ok"}
    assert "ValueError: boom 1" in by_id["_endings/raise/n=1,sleep_s=0.0"].error
    assert "Traceback" in by_id["_endings/raise/n=1,sleep_s=0.0"].error
    assert "OutOfMemoryError" in by_id["_endings/oom/n=1,sleep_s=0.0"].error
    assert by_id["_endings/oom/n=2,sleep_s=0.0"].status == "oom"  # cuBLAS's way of running out
    assert by_id["_endings/skip/n=1,sleep_s=0.0"].error == "needs a CUDA device"
    assert "SIGKILL" in by_id["_endings/crash/n=1,sleep_s=0.0"].error
    sleep = by_id["_endings/sleep/n=2,sleep_s=0.0"]
    assert sleep.metrics["value_ms"] == 4.0 and sleep.metrics["double_x"] == 2.0
    assert sleep.metrics["energy_j"] is None and sleep.samples == {"value_ms": [1.0, 2.0]}
    assert read_records(tmp_path / "run" / "records.jsonl") == records
    meta = read_run_json(tmp_path / "run")
    assert meta["finished_at"] and meta["size"] == "smoke" and meta["env_id"] == records[0].env_id


def test_timeout_kills_the_case_and_the_run_goes_on(tmp_path):
    code, records = runner.run(config(tmp_path, size="quick", variants=["ok", "sleep"], timeout_s=1.0))
    assert code == 1
    assert [(r.variant, r.status) for r in records] == [("ok", "ok"), ("sleep", "timeout")] * 2
    assert "--timeout" in records[1].error
    # each sleep (5 s) is cut at its 1 s timeout; the first case's elapsed_s also holds the case server's start, seconds
    # of importing torch on a loaded machine, which says nothing of the timeout
    assert all(r.elapsed_s < 4 for r in records if r.status == "timeout")


def test_inline_run_and_resume_skip_finished_cases(tmp_path):
    code, first = runner.run(config(tmp_path, variants=["ok", "skip"], inline=True))
    assert code == 0 and [r.status for r in first] == ["ok", "skipped"] * 2
    with pytest.raises(runner.RunDirError, match="--resume"):
        runner.run(config(tmp_path, variants=["ok", "sleep"], inline=True))
    with pytest.raises(runner.RunDirError, match="--size smoke"):
        runner.run(config(tmp_path, size="quick", resume=True, inline=True))
    code, second = runner.run(config(tmp_path, variants=["ok", "sleep", "skip"], inline=True, resume=True))
    assert code == 0 and len(second) == 6
    assert lines_per_case(tmp_path / "run" / "records.jsonl") == Counter(r.case_id for r in second)
    lines = read_records(tmp_path / "run" / "records.jsonl")
    assert {r.run_id for r in lines} == {read_run_json(tmp_path / "run")["run_id"]}


def test_killed_run_resumes_with_every_case_recorded_once(tmp_path):
    out = tmp_path / "run"
    script = textwrap.dedent(f"""
        from pathlib import Path
        from bench import runner
        from bench.suite import SUITES
        import tests.bench.fake_suites
        runner.run(runner.RunConfig(suites=[SUITES["_slow"]], size="smoke", device="cpu", out=Path({str(out)!r})))
    """)
    pids = tmp_path / "pids"
    env = {**os.environ, "TECHBENCH_TEST_PIDS": str(pids), "TECHBENCH_TEST_HANG": "1"}
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(read_records(out / "records.jsonl")) < 2:
        time.sleep(0.05)
    proc.kill()  # bench alone: its case's process belongs to the forkserver and must end by itself
    proc.wait()
    assert holder(out) is None  # the kernel dropped the killed run's lock with its process
    done = len(read_records(out / "records.jsonl"))
    assert 2 <= done < 6, "the run should have been killed midway"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(int(p)) for p in pids.read_text().split()):
        time.sleep(0.05)
    assert not any(_alive(int(p)) for p in pids.read_text().split()), "a case outlived the killed run"
    code, records = runner.run(config(tmp_path, suite="_slow", resume=True))
    assert code == 0
    counts = lines_per_case(out / "records.jsonl")
    assert len(counts) == 6 and set(counts.values()) == {1}


def test_a_budget_stops_starting_cases_and_resume_runs_the_rest(tmp_path):
    # six 0.4 s cases, a 1 s budget: some run, the rest are listed (timing only decides how many of each)
    code, records = runner.run(config(tmp_path, suite="_slow", inline=True, budget_s=1.0))
    meta = read_run_json(tmp_path / "run")
    every = [c.id for c in runner.plan([SUITES["_slow"]], "smoke", "cpu")]
    assert code == 1 and records and meta["not_run"] and meta["finished_at"] is None
    assert [r.case_id for r in records] + meta["not_run"] == every
    code, records = runner.run(config(tmp_path, suite="_slow", inline=True, resume=True))
    assert code == 0 and [r.case_id for r in records] == every
    meta = read_run_json(tmp_path / "run")
    assert "not_run" not in meta and meta["finished_at"]
    assert lines_per_case(tmp_path / "run" / "records.jsonl") == Counter(every)


def test_a_run_resumed_for_fewer_cases_than_it_was_started_for_stays_unfinished(tmp_path, monkeypatch):
    # killed after two cases, then resumed for variant b alone: b's cases run, a's stay listed and the run unfinished
    # (history would refuse it), until a resume of the whole selection
    every = [c.id for c in runner.plan([SUITES["_slow"]], "smoke", "cpu")]
    real, calls = runner._execute, []

    def killed_at_the_third(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(runner, "_execute", killed_at_the_third)
    with pytest.raises(KeyboardInterrupt):
        runner.run(config(tmp_path, suite="_slow", inline=True))
    monkeypatch.setattr(runner, "_execute", real)
    assert read_run_json(tmp_path / "run")["not_run"] == every  # listed as the run started
    code, records = runner.run(config(tmp_path, suite="_slow", inline=True, resume=True, variants=["b"]))
    meta, done = read_run_json(tmp_path / "run"), set(lines_per_case(tmp_path / "run" / "records.jsonl"))
    assert code == 0 and {r.variant for r in records} == {"b"} and meta["finished_at"] is None
    assert meta["not_run"] == [c for c in every if c not in done] and meta["not_run"]
    assert all("/a/" in c for c in meta["not_run"])
    code, records = runner.run(config(tmp_path, suite="_slow", inline=True, resume=True))
    meta = read_run_json(tmp_path / "run")
    assert code == 0 and "not_run" not in meta and meta["finished_at"]
    assert lines_per_case(tmp_path / "run" / "records.jsonl") == Counter(every)


def test_a_case_no_longer_planned_leaves_not_run_with_a_warning(tmp_path):
    # listed as not run by an older grid (or a plug-in that no longer loads): no resume could ever record it, so the
    # run would never finish; it is dropped, said once
    assert runner.run(config(tmp_path, suite="_slow", inline=True))[0] == 0
    from bench.records import write_run_json

    meta = read_run_json(tmp_path / "run")
    write_run_json(tmp_path / "run", {**meta, "finished_at": None, "not_run": ["_slow/a/delay=9,i=0"]})
    with pytest.warns(UserWarning, match=r"1 of the cases .* lists as not run are no smoke cases here now \(such as "
                                         r"_slow/a/delay=9,i=0"):
        code, _ = runner.run(config(tmp_path, suite="_slow", inline=True, resume=True))
    meta = read_run_json(tmp_path / "run")
    assert code == 0 and "not_run" not in meta and meta["finished_at"]
    # one of a suite not loaded here (a plug-in not installed) stays listed: installing it lets a resume run it
    write_run_json(tmp_path / "run", {**meta, "finished_at": None, "not_run": ["_gone/x/"]})
    assert runner.run(config(tmp_path, suite="_slow", inline=True, resume=True))[0] == 0
    meta = read_run_json(tmp_path / "run")
    assert meta["not_run"] == ["_gone/x/"] and meta["finished_at"] is None


def test_a_sharded_resume_for_fewer_cases_keeps_the_rest_listed(tmp_path, monkeypatch):
    # a shard is cut after --case selects: a case of this shard's selection is no case of the same shard unselected,
    # and must not be dropped as "no longer planned"
    chosen = ["_slow/*i=1*", "_slow/*i=2*"]
    first = config(tmp_path, suite="_slow", inline=True, shard=(1, 2), cases_like=chosen)
    pending = [c.id for c in runner.plan([SUITES["_slow"]], "smoke", "cpu", shard=(1, 2), cases_like=chosen)]

    def killed_at_once(*args):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(runner, "_execute", killed_at_once)
        with pytest.raises(KeyboardInterrupt):
            runner.run(first)
    assert read_run_json(tmp_path / "run")["not_run"] == pending
    narrower = config(tmp_path, suite="_slow", inline=True, shard=(1, 2), cases_like=[pending[0]], resume=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing dropped
        assert runner.run(narrower)[0] == 0
    meta = read_run_json(tmp_path / "run")
    assert meta["not_run"] == pending[1:] and meta["finished_at"] is None


def test_a_case_cut_off_by_the_budget_is_not_recorded(tmp_path):
    # two 5 s sleeps and a 2 s budget: the first is killed when the budget ends, unrecorded, so --resume reruns it
    code, records = runner.run(config(tmp_path, size="quick", variants=["sleep"], budget_s=2.0))
    every = [c.id for c in runner.plan([SUITES["_endings"]], "quick", "cpu", variants=["sleep"])]
    assert code == 1 and records == [] and read_run_json(tmp_path / "run")["not_run"] == every
    assert read_records(tmp_path / "run" / "records.jsonl") == []


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"  # zombies are dead
    except (OSError, IndexError):  # reaped: no such file, or ESRCH when it went between the open and the read
        return False


def test_gpu_telemetry_covers_the_timed_window(tmp_path, monkeypatch):
    from bench import telemetry
    from tests.bench.test_telemetry import FakeNVML

    monkeypatch.setattr(telemetry, "load_nvml", lambda: FakeNVML())
    monkeypatch.setattr(telemetry.Telemetry, "__init__", _fast_sampler(telemetry.Telemetry.__init__))
    _, [record] = runner.run(config(tmp_path, suite="_timed", device="cuda:0", inline=True))
    m = record.metrics
    assert m["avg_power_w"] == 300.0 and m["throttled"] is True and m["sm_clock_mhz"] == 1410.0
    assert m["energy_per_call_j"] == pytest.approx(300.0 * m["call_time_ms"] / 1e3)
    assert 0 < m["energy_j"] and "throttle_reasons" not in m


def _fast_sampler(init):
    def fast(self, device="cpu", interval_s=0.05):
        init(self, device, interval_s=0.005)

    return fast
