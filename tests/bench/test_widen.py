"""A resume that selects more than its run was started for: run.json's argv and variants widen to the union, so the
command that continues the run (bench.rundir.command_of) runs the cases the resume added."""

import shlex

import pytest

from bench import cli, progress, widen
from bench.records import read_run_json
from bench.rundir import command_of
from bench.suite import SUITES
from tests.bench import fake_suites
from tests.bench.test_resume import StopAfter, bench

SLOW = ("run", "_slow", "--size", "smoke", "--device", "cpu", "--inline", "--out", "r")


@pytest.fixture
def here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "discover", lambda: {"_slow": SUITES["_slow"]})
    monkeypatch.setattr(cli, "_write_report", lambda out: None)
    monkeypatch.setattr(fake_suites.Slow, "grid", lambda self, size, device: [{"i": i, "delay": 0.0} for i in range(3)])
    return tmp_path


def test_a_resume_that_adds_a_variant_is_continued_by_the_command_the_run_prints(here, capsys, monkeypatch):
    assert bench(capsys, *SLOW, "--variant", "a")[0] == 0
    monkeypatch.setattr(progress, "make_progress", lambda console: StopAfter(1))
    assert bench(capsys, *SLOW, "--variant", "b", "--retry-failed")[0] == 130  # one of b's three cases ran
    meta = read_run_json(here / "r")
    assert meta["variants"] == ["a", "b"]
    command = command_of(meta, here / "r")
    assert "--variant a b" in command and "--retry-failed" not in command, command
    monkeypatch.setattr(progress, "make_progress", lambda console: progress.PlainProgress())
    code, out, _ = bench(capsys, *shlex.split(command)[1:])
    assert code == 0 and "6 cases: 6 ok" in out and read_run_json(here / "r")["finished_at"]


def test_a_narrower_or_equal_resume_keeps_what_the_run_was_started_for(here, capsys, monkeypatch):
    monkeypatch.setattr(progress, "make_progress", lambda console: StopAfter(1))
    assert bench(capsys, *SLOW, "--variant", "a", "b", "--case", "*i=0", "--case", "*i=1")[0] == 130
    argv = read_run_json(here / "r")["argv"]
    monkeypatch.setattr(progress, "make_progress", lambda console: progress.PlainProgress())
    assert bench(capsys, *SLOW, "--variant", "a", "--case", "*i=0", "--resume")[0] == 0
    assert read_run_json(here / "r")["argv"] == argv


@pytest.mark.parametrize("old, new, union", [
    (["--variant", "a"], ["--variant=b", "--threads", "1"], ["--threads", "1", "--variant", "a", "b"]),
    (["--case", "x*"], ["--ca", "y*", "--case=z"], ["--case", "x*", "--case", "y*", "--case", "z"]),
    (["--case", "x*"], [], []),  # this resume selects every case: so does the run now
    (["--params", "n=1,m=2"], ["--params", "n=1,m=3"], ["--params", "n=1"]),
    (["--params", "n=1"], ["--params", "m=3"], []),
])
def test_the_selections_of_two_commands_join_option_by_option(old, new, union):
    kept, chosen = widen.split(["bench", "run", "s", *new])
    assert widen.joined(kept, widen.union(widen.split(["bench", "run", "s", *old])[1], chosen)) == \
        ["bench", "run", "s", *union]
