"""Resume and interrupt as a newcomer meets them: --resume without --out finds the run to continue (or says the
command), Ctrl-C names the --out to pass, and --retry-failed runs failed cases again, one record a case."""

import json
import re
import warnings
from pathlib import Path

import pytest

from bench import cli, progress, rundir, runner
from bench.history import repeated_case
from bench.metrics import Metric
from bench.records import RECORDS_JSONL, read_records, read_run_json
from bench.suite import SUITES, Measurement, Suite, register
from tests.bench import fake_suites  # noqa: F401 - registers _slow


@register
class Flaky(Suite):
    """`b` fails while `failing` is set: a case to retry once the cause is gone."""

    name = "_flaky"
    variants = {"a": "reference", "b": "raises while Flaky.failing"}
    metrics = (Metric("n_ms", "measured", "lower", "the case's n"),)
    failing = True

    def grid(self, size, device):
        return [{"n": 1}, {"n": 2}]

    def measure(self, variant, params, device):
        if variant == "b" and type(self).failing:
            raise RuntimeError("flaky")
        return Measurement({"n_ms": float(params["n"])})


class StopAfter(progress.PlainProgress):
    """Ctrl-C after `n` cases, as a person would press it."""

    def __init__(self, n):
        super().__init__()
        self.n = n

    def end(self, record):
        super().end(record)
        if self.done >= self.n:
            raise KeyboardInterrupt


@pytest.fixture
def newcomer(tmp_path, monkeypatch):
    """`bench` in a fresh folder (runs/ under it), knowing the fake suites, writing no report."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "discover", lambda: {n: SUITES[n] for n in ("_slow", "_flaky")})
    monkeypatch.setattr(cli, "_write_report", lambda out: None)
    monkeypatch.setattr(fake_suites.Slow, "grid", lambda self, size, device: [{"i": i, "delay": 0.0} for i in range(3)])
    return tmp_path


def bench(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


SLOW = ("run", "_slow", "--size", "smoke", "--device", "cpu", "--inline")


def test_ctrl_c_names_the_out_to_resume_and_resume_without_out_continues_it(newcomer, capsys, monkeypatch):
    monkeypatch.setattr(progress, "make_progress", lambda console: StopAfter(2))
    code, _, err = bench(capsys, *SLOW)
    [run] = [p.relative_to(newcomer) for p in (newcomer / "runs").iterdir()]
    assert code == 130 and err.strip().endswith(
        f"`bench run _slow --size smoke --device cpu --inline --resume --out {run}` continues"), err
    assert read_run_json(run)["finished_at"] is None and len(read_records(run / RECORDS_JSONL)) == 2

    monkeypatch.setattr(progress, "make_progress", lambda console: progress.PlainProgress())
    code, out, err = bench(capsys, *SLOW, "--resume")
    assert code == 0 and f"bench: resuming {run}, the latest unfinished smoke run on cpu under runs/" in err, err
    assert "resuming: 2/6 cases already finished" in out  # the last line: contended or not, the machine may be busy
    assert re.search(rf"^6 cases: 6 ok( \(.* contended\))? -> {re.escape(str(run))}$", out, re.M), out
    assert [p.name for p in (newcomer / "runs").iterdir()] == [run.name]  # no new run was started
    lines = (run / RECORDS_JSONL).read_text().splitlines()
    assert len(lines) == len({json.loads(line)["case_id"] for line in lines}) == 6


def test_resume_without_out_refuses_with_the_command_to_use(newcomer, capsys, monkeypatch):
    code, _, err = bench(capsys, *SLOW, "--resume")
    assert code == 2 and err.count("\n") == 1
    assert "no run under runs/ is unfinished" in err and "drop --resume to start a new run" in err
    assert not (newcomer / "runs").exists()  # nothing created

    monkeypatch.setattr(progress, "make_progress", lambda console: StopAfter(1))
    assert bench(capsys, "run", "_slow", "--size", "quick", "--device", "cpu", "--inline")[0] == 130
    [run] = [p.relative_to(newcomer) for p in (newcomer / "runs").iterdir()]
    code, _, err = bench(capsys, *SLOW, "--resume")  # smoke: the unfinished run is quick
    assert code == 2 and err.count("\n") == 1 and "was made with --size smoke --device cpu --shard 1/1" in err
    assert err.strip().endswith(f"continues with `bench run _slow --size quick --device cpu --inline --resume --out "
                                f"{run}`"), err
    assert len(read_records(run / RECORDS_JSONL)) == 1  # untouched


def test_resume_of_an_out_run_at_another_size_names_the_command_that_continues_it(newcomer, capsys, monkeypatch):
    # `bench run --resume --out DIR` of a smoke run: the default size is quick, so the run is refused, with the
    # command to paste rather than a list of flags to work out
    monkeypatch.setattr(progress, "make_progress", lambda console: StopAfter(1))
    assert bench(capsys, *SLOW)[0] == 130
    [run] = [p.relative_to(newcomer) for p in (newcomer / "runs").iterdir()]
    code, _, err = bench(capsys, "run", "--device", "cpu", "--resume", "--out", str(run))
    assert code == 2 and err.count("\n") == 1 and f"{run} was run with --size smoke --device cpu --shard 1/1" in err
    assert err.strip().endswith(f"resume it with the same: `bench run _slow --size smoke --device cpu --inline "
                                f"--resume --out {run}`"), err
    assert len(read_records(run / RECORDS_JSONL)) == 1  # untouched


def test_a_narrower_resume_names_what_is_left_and_a_used_out_is_refused_before_the_load_sample(
        newcomer, capsys, monkeypatch):
    from bench import doctor

    sampled = []
    monkeypatch.setattr(doctor, "critical_warning", lambda device, since=None: sampled.append(device))
    monkeypatch.setattr(progress, "make_progress", lambda console: StopAfter(1))
    assert bench(capsys, *SLOW)[0] == 130 and sampled == ["cpu"]
    [run] = [p.relative_to(newcomer) for p in (newcomer / "runs").iterdir()]
    code, _, err = bench(capsys, *SLOW, "--out", str(run))  # no --resume: a usage error, said before any sample
    assert code == 2 and "already holds a run" in err and err.count("\n") == 1 and sampled == ["cpu"]

    monkeypatch.setattr(progress, "make_progress", lambda console: progress.PlainProgress())
    code, out, err = bench(capsys, *SLOW, "--variant", "b", "--resume", "--out", str(run))
    left = read_run_json(run)["not_run"]
    assert code == 0 and len(left) == 2 and all("/a/" in c for c in left)  # a's cases after the first
    assert f"bench: {run} stays unfinished: 2 cases of the selection it was started for have no record" in err
    assert err.strip().endswith(f"`bench run _slow --size smoke --device cpu --inline --resume --out {run}` runs "
                                "them"), err


def test_retry_failed_runs_errors_again_and_keeps_one_record_a_case(tmp_path, monkeypatch):
    cfg = runner.RunConfig(suites=[SUITES["_flaky"]], size="smoke", device="cpu", out=tmp_path / "run", inline=True)
    code, records = runner.run(cfg)
    assert code == 1 and [r.status for r in records] == ["ok", "error"] * 2
    monkeypatch.setattr(Flaky, "failing", False)
    code, records = runner.run(runner.RunConfig(**{**vars(cfg), "resume": True}))
    assert code == 1 and [r.status for r in records] == ["ok", "error"] * 2  # --resume alone keeps what it found
    code, records = runner.run(runner.RunConfig(**{**vars(cfg), "resume": True, "retry_failed": True}))
    assert code == 0 and [r.status for r in records] == ["ok"] * 4
    assert records[1].metrics["n_ms"] == 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "recorded more than once" from the readers
        kept = read_records(tmp_path / "run" / RECORDS_JSONL)
    assert {r.case_id: r for r in kept} == {r.case_id: r for r in records} and len(kept) == 4
    assert repeated_case(tmp_path / "run") is None  # so merge and history add take the run


def test_a_plain_resume_tidies_after_a_retry_that_was_cut_short(tmp_path, monkeypatch):
    # a --retry-failed killed after a retried case's new record left the old failure beside it: the next resume,
    # --retry-failed or not, drops it, so history and merge take the run
    cfg = runner.RunConfig(suites=[SUITES["_flaky"]], size="smoke", device="cpu", out=tmp_path / "run", inline=True)
    runner.run(cfg)
    monkeypatch.setattr(Flaky, "failing", False)
    monkeypatch.setattr(runner, "_drop_replaced", lambda path: None)  # as if killed before its tidying
    runner.run(runner.RunConfig(**{**vars(cfg), "resume": True, "retry_failed": True}))
    assert repeated_case(tmp_path / "run") is not None
    monkeypatch.undo()
    monkeypatch.setattr(Flaky, "failing", False)
    with pytest.warns(UserWarning, match="recorded more than once: kept the last record of each"):
        code, records = runner.run(runner.RunConfig(**{**vars(cfg), "resume": True}))
    assert code == 0 and [r.status for r in records] == ["ok"] * 4
    assert repeated_case(tmp_path / "run") is None


def test_a_replaced_failure_is_dropped_and_nothing_else(tmp_path):
    def record(case, status):
        return json.dumps({"schema": 1, "run_id": "r", "suite": "s", "variant": "v", "params": {}, "case_id": case,
                           "status": status, "error": None if status == "ok" else "why"})

    path = tmp_path / RECORDS_JSONL
    lines = [record("a", "timeout"), "not a record", record("b", "ok"), record("c", "error"), record("a", "ok"),
             record("b", "ok"), record("d", "oom"), record("d", "ok")]
    path.write_text("\n".join(lines) + "\n")
    runner._drop_replaced(path)
    # a's timeout was replaced; c's error was not; b's two ok records and d's oom (a result) are not failures
    assert path.read_text().splitlines() == lines[1:]


def test_retry_failed_alone_resumes_and_the_help_gives_each_sizes_timeout(newcomer, capsys, monkeypatch):
    monkeypatch.setattr(progress, "make_progress", lambda console: progress.PlainProgress())
    flaky = ("run", "_flaky", "--size", "smoke", "--device", "cpu", "--inline", "--out", "r")
    assert bench(capsys, *flaky)[0] == 1
    monkeypatch.setattr(Flaky, "failing", False)
    code, out, _ = bench(capsys, *flaky, "--retry-failed")
    assert code == 0 and "resuming: 2/4 cases already finished" in out
    assert re.search(r"^4 cases: 4 ok( \(.* contended\))? -> r", out, re.M), out
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    assert "default by --size: smoke 300, quick 900, full 3600" in " ".join(capsys.readouterr().out.split())


def test_the_command_that_continues_a_run_keeps_its_arguments_but_out_and_resume():
    argv = ["run", "fp8", "--out", "old", "--resume", "--size", "smoke", "--out=x", "--params", "m=1,k=a b"]
    assert rundir.resume_command(argv, Path("runs/r1")) == \
        "bench run fp8 --size smoke --params 'm=1,k=a b' --resume --out runs/r1"


def test_a_resume_does_not_add_another_suite_to_a_run(tmp_path):
    # a run of _flaky resumed with _slow named too: refused, naming the command that continues it; nothing written
    cfg = runner.RunConfig(suites=[SUITES["_flaky"]], size="smoke", device="cpu", out=tmp_path / "run", inline=True)
    runner.run(cfg)
    assert read_run_json(tmp_path / "run")["recorded"] == 4  # what compare checks the records against later
    before = (tmp_path / "run" / RECORDS_JSONL).read_bytes(), (tmp_path / "run" / "run.json").read_bytes()
    wider = runner.RunConfig(**{**vars(cfg), "suites": [SUITES["_flaky"], SUITES["_slow"]], "resume": True})
    with pytest.raises(rundir.RunDirError, match=r"is a run of _flaky, not of _slow: resume it with `bench run"):
        runner.run(wider)
    assert ((tmp_path / "run" / RECORDS_JSONL).read_bytes(), (tmp_path / "run" / "run.json").read_bytes()) == before


def test_what_the_command_names_but_will_not_run_is_said(newcomer, capsys, monkeypatch):
    # a suite named but filtered out by --case, and a launch of ranks for no distributed suite: a warning each
    def stop(cfg, progress=None, opened=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run", stop)
    code, _, err = bench(capsys, "run", "_slow", "_flaky", "--size", "smoke", "--device", "cpu", "--inline",
                         "--case", "_slow/*", "--nproc-per-node", "2")
    assert code == 130
    assert "warning: no smoke case of _flaky passes --variant, --params, --case and --shard here" in err
    assert "warning: --nproc-per-node and --nnodes launch the distributed suites only (" in err
    code, _, err = bench(capsys, "run", "_slow", "--size", "smoke", "--device", "cpu", "--inline")
    assert "will not run" not in err and "distributed suites only" not in err


def test_the_progress_notes_are_a_scratch_folder_the_next_run_sweeps(tmp_path, monkeypatch):
    # a bench killed outright leaves its cases' progress folder: its owner file lets the next run remove it
    import os
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    owned = []
    monkeypatch.setattr(runner, "_execute", lambda case, cfg, timeout_s, said: owned.append(
        (said.parent / "owner.pid").read_text()) or {"status": "skipped", "error": "not run here"})
    cfg = runner.RunConfig(suites=[SUITES["_flaky"]], size="smoke", device="cpu", out=tmp_path / "run", inline=True)
    runner.run(cfg)
    assert owned and {o.partition("@")[0] for o in owned} == {str(os.getpid())}


def test_a_resume_with_nothing_to_run_leaves_the_finished_run_as_it_was(tmp_path):
    # finished_at is when the run finished: a later resume that runs nothing must not make it minutes longer
    cfg = runner.RunConfig(suites=[SUITES["_flaky"]], size="smoke", device="cpu", out=tmp_path / "run", inline=True)
    runner.run(cfg)
    Flaky.failing = False
    try:
        done = read_run_json(tmp_path / "run")
        runner.run(runner.RunConfig(**{**vars(cfg), "resume": True}))
        again = read_run_json(tmp_path / "run")
        assert (again["finished_at"], again["machine_end"]) == (done["finished_at"], done["machine_end"])
        runner.run(runner.RunConfig(**{**vars(cfg), "resume": True, "retry_failed": True}))  # runs the failed ones
        records = read_records(tmp_path / "run" / RECORDS_JSONL)
        assert len(records) == 4 and {r.status for r in records} == {"ok"}  # it ran: the run's end is now later
        assert read_run_json(tmp_path / "run")["machine_end"] != done["machine_end"]
    finally:
        Flaky.failing = True


def test_a_resume_of_a_folder_that_does_not_exist_says_it_starts_a_new_run(newcomer, capsys):
    # a typo'd --out would otherwise rerun every case silently; a start-or-continue script still works
    code, _, err = bench(capsys, *SLOW, "--resume", "--out", "runs/typo")
    assert code == 0 and "runs/typo does not exist: nothing to resume, a new run starts there" in err
    assert len(read_records(newcomer / "runs" / "typo" / RECORDS_JSONL)) == 6  # 3 cases, 2 variants
    code, _, err = bench(capsys, *SLOW, "--resume", "--out", "runs/typo")
    assert code == 0 and "does not exist" not in err


def test_a_line_damaged_mid_file_is_set_aside_so_the_resumed_run_is_whole(tmp_path):
    # a line damaged after it was written (not the last, which a kill cuts): the resume runs its case again and moves
    # the line beside the file, so the finished run is whole, and history add and merge take it
    from bench.history import check

    cfg = runner.RunConfig(suites=[SUITES["_flaky"]], size="smoke", device="cpu", out=tmp_path / "run", inline=True,
                           variants=["a"])
    runner.run(cfg)
    path = tmp_path / "run" / RECORDS_JSONL
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(lines[0][:40] + "\n" + "".join(lines[1:]))
    with pytest.raises(ValueError, match="damaged since it finished: 1 corrupt line in its records, .*: `bench run "
                       "_flaky .*--resume --out .*` runs its lost cases again"):
        check(tmp_path / "run")
    with pytest.warns(UserWarning, match=r"1 line held no whole record .*: moved to records\.jsonl\.cut-.*; its case "
                                         "runs again"):
        code, records = runner.run(runner.RunConfig(**{**vars(cfg), "resume": True}))
    assert code == 0 and len(records) == 2
    assert check(tmp_path / "run")[1] == read_records(path) and len(read_records(path)) == 2
    assert [p.read_text() for p in path.parent.glob(RECORDS_JSONL + ".cut-*")] == [lines[0][:40] + "\n"]


@pytest.mark.parametrize("now, said", [
    ({"sha": "b" * 40, "dirty": False}, f"this checkout is at {'b' * 12}: the cases this resume runs measure other"),
    ({"sha": "a" * 40, "dirty": True}, "this checkout has uncommitted changes to its code since: the cases"),
    ({"sha": "a" * 40, "dirty": False}, None),
    ({"sha": None, "dirty": None}, None),  # no git here (a copied tree): nothing to tell
])
def test_a_resume_on_other_code_says_so(tmp_path, monkeypatch, now, said):
    # run.json names the code a run was started with: cases a resume runs on another commit, or after an edit, join
    # it silently otherwise, and compare and history take them as measured at the first
    from bench import env as envmod

    cfg = runner.RunConfig(suites=[SUITES["_flaky"]], size="smoke", device="cpu", out=tmp_path / "run", inline=True,
                           variants=["a"])
    monkeypatch.setattr(envmod, "git_info", lambda root=None: {"sha": "a" * 40, "dirty": False})
    runner.run(cfg)
    monkeypatch.setattr(envmod, "git_info", lambda root=None: now)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runner.run(runner.RunConfig(**{**vars(cfg), "resume": True}))  # nothing to run: nothing to say
        runner.run(runner.RunConfig(**{**vars(cfg), "resume": True, "variants": ["a", "b"]}))
    told = [str(w.message) for w in caught if "was started at git" in str(w.message)]
    if said is None:
        assert told == []
    else:
        assert len(told) == 1 and f"run was started at git {'a' * 12} and {said}" in told[0], told
        assert told[0].endswith("while its run.json names the first only; a new --out measures one version")
    assert read_run_json(tmp_path / "run")["git"] == {"sha": "a" * 40, "dirty": False}


def test_a_resume_keeps_the_thread_count_its_cases_were_measured_at(tmp_path):
    # records carry no thread count: the history labels each case with its suite's count in run.json, so a resume at
    # another --threads that runs none of them must not relabel them, and one that runs some says the run mixes two
    cfg = runner.RunConfig(suites=[SUITES["_flaky"]], size="smoke", device="cpu", out=tmp_path / "run", inline=True,
                           threads=1)
    runner.run(cfg)  # b's cases fail
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runner.run(runner.RunConfig(**{**vars(cfg), "resume": True, "threads": 2}))  # nothing to run
        assert read_run_json(tmp_path / "run")["suites"]["_flaky"]["threads"] == 1
        assert not [w for w in caught if "CPU threads" in str(w.message)]
        runner.run(runner.RunConfig(**{**vars(cfg), "resume": True, "retry_failed": True, "threads": 2}))
    told = [str(w.message) for w in caught if "CPU threads" in str(w.message)]
    assert len(told) == 1 and "_flaky's finished cases ran at 1 CPU threads and this resume runs the rest at 2" \
        in told[0], told
    assert read_run_json(tmp_path / "run")["suites"]["_flaky"]["threads"] == 2
