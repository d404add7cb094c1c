"""What `bench` says on a narrow or unhelpful machine: `bench list` at 80 columns keeps every name whole, a run says
once that the cache cannot be written, a report.html that cannot be written or built fails the run, a run stopped
while it is drawn names the command that draws it and one stopped before it began says that nothing was written, and
`bench plan` names an unknown suite before it looks for a GPU."""

import json
import os
import re
import signal
import sys
import types

import pytest

from bench.cli import main
from bench.cli_run import CACHE_UNWRITABLE, contended_line, summary
from bench.records import Record
from tests.optional import needs

ODD = os.fsdecode(b"odd\xff dir")
ONE_CASE = ["run", "checkpointing", "--size", "smoke", "--device", "cpu", "--inline", "--variant", "none",
            "--params", "model=None"]


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("columns", [80, 120])
def test_list_keeps_every_name_whole_on_a_narrow_terminal(capsys, monkeypatch, columns):
    monkeypatch.setenv("COLUMNS", str(columns))
    code, table, _ = run_cli(capsys, "list")
    _, listing, _ = run_cli(capsys, "list", "--json")
    words = set(re.findall(r"[\w.-]+", table))
    names = [n for s in json.loads(listing)["suites"] for n in (s["name"], *s["variants"])]
    assert code == 0 and names and [n for n in names if n not in words] == []  # none cut ("torchao_tensorw…")
    assert max(len(line) for line in table.splitlines()) <= columns


@pytest.fixture
def unwritable_cache(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("TECHBENCH_CACHE", str(blocker / "cache"))  # under a file: no one can create it, root included
    monkeypatch.setenv(CACHE_UNWRITABLE, "")  # restored when the test ends, whatever the run leaves
    return blocker / "cache"


def test_an_unwritable_cache_is_said_once_and_the_cases_stay_quiet(capsys, tmp_path, monkeypatch, unwritable_cache):
    import bench.cli
    import bench.runner

    seen, run = [], bench.runner._run

    def case_side(*args):  # what the cases' environment holds while they run
        seen.append(os.environ.get(CACHE_UNWRITABLE))
        return run(*args)

    monkeypatch.setattr(bench.runner, "_run", case_side)
    monkeypatch.setattr(bench.cli, "_write_report", lambda out: None)  # the report is not what this test is about
    code, _, err = run_cli(capsys, *ONE_CASE, "--out", tmp_path / "r")
    assert code == 0 and err.count("\n") == 1, err
    assert err.startswith("bench: warning: the cache folder cannot be written (") and str(unwritable_cache) in err
    assert "trains it again" in err and "point TECHBENCH_CACHE at a writable folder" in err
    assert seen == ["1"] and os.environ[CACHE_UNWRITABLE] == ""  # for the run's cases only


def test_a_writable_cache_says_nothing(capsys, tmp_path, monkeypatch):
    import bench.cli

    monkeypatch.setenv("TECHBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(bench.cli, "_write_report", lambda out: None)
    code, _, err = run_cli(capsys, *ONE_CASE, "--out", tmp_path / "r")
    assert code == 0 and err == "" and not list((tmp_path / "cache").iterdir())  # the probe is gone


@needs("plotly")
def test_a_report_that_cannot_be_written_fails_the_run(capsys, tmp_path, monkeypatch):
    # `bench run && upload report.html` must stop: the run exits 1, as every failed write does (README, exit codes)
    import reports.run_report
    from bench.atomic import cannot_write

    def full_disk(path, text):
        raise cannot_write(path, OSError(28, "No space left on device"))

    monkeypatch.setattr(reports.run_report, "atomic_write_text", full_disk)
    out = tmp_path / ODD  # the hint pastes back into a shell as this very folder
    code, stdout, err = run_cli(capsys, *ONE_CASE, "--out", out)
    assert code == 1 and err.count("\n") == 1, err
    assert err.startswith("bench: error: no report.html (cannot write ") and "No space left on device" in err
    assert "`bench report $'" + str(tmp_path) + "/odd\\xff dir' -o FILE` retries" in err
    # contended or not: the machine may be busy
    assert re.search(r"^1 case: 1 ok( \(1 of the 1 timed case contended\))? -> ", stdout, re.M)
    assert (out / "records.jsonl").read_text().count("\n") == 1  # records kept


@pytest.mark.parametrize("error, code, line", [
    (ModuleNotFoundError("No module named 'plotly'", name="plotly"), 0,
     "bench: warning: no report.html (plotly is not installed (pip install plotly); it is needed for reports"),
    (ValueError("a figure broke"), 1, "bench: error: no report.html (ValueError: a figure broke); the records are "
                                      "kept, `bench report "),
])
def test_a_report_that_cannot_be_built(capsys, tmp_path, monkeypatch, error, code, line):
    # an install without plotly draws no reports at all: said, and the run's code stands; any other failure fails it
    def write_report(runs, path):
        raise error

    monkeypatch.setitem(sys.modules, "reports.run_report", types.SimpleNamespace(write_report=write_report))
    got, _, err = run_cli(capsys, *ONE_CASE, "--out", tmp_path / "r")
    assert got == code and err.startswith(line) and err.count("\n") == 1, err


def test_a_run_stopped_while_its_report_is_drawn_names_the_command_that_writes_it(capsys, tmp_path, monkeypatch):
    # SIGTERM (a CI job's timeout) after the last case, while report.html is drawn: the run is finished, so a bare
    # `--resume` finds no unfinished run under runs/ (exit 2); the line names this run's own resume, which runs no
    # case again and writes the page
    import bench.cli
    from bench.cli_run import Stopped

    def stopped(out):
        raise Stopped(signal.SIGTERM)

    monkeypatch.setattr(bench.cli, "_write_report", stopped)
    out = tmp_path / "r"
    code, stdout, err = run_cli(capsys, *ONE_CASE, "--out", out)
    resume = f"bench {' '.join(ONE_CASE)} --resume --out {out}"
    assert code == 128 + signal.SIGTERM and re.search(r"^1 case: 1 ok( \(.* contended\))? -> ", stdout, re.M)
    assert err.strip().endswith(f"bench: stopped by SIGTERM; finished records are kept in {out}, `{resume}` continues")
    drawn = []
    monkeypatch.setattr(bench.cli, "_write_report", drawn.append)
    code, stdout, _ = run_cli(capsys, *resume.split()[1:])
    assert code == 0 and "no case to run" in stdout and drawn == [out]
    assert (out / "records.jsonl").read_text().count("\n") == 1


def test_a_run_stopped_before_it_began_says_nothing_was_written(capsys, tmp_path, monkeypatch):
    # SIGTERM while bench imports the suites: no run directory exists yet, so "rerun with --resume" (said before)
    # would continue another unfinished run under runs/, or exit 2 finding none
    import bench.cli
    from bench.cli_run import Stopped

    def stopped():
        raise Stopped(signal.SIGTERM)

    monkeypatch.setattr(bench.cli, "discover", stopped)
    code, _, err = run_cli(capsys, *ONE_CASE, "--out", tmp_path / "r")
    assert code == 128 + signal.SIGTERM and not (tmp_path / "r").exists()
    assert err == "bench: stopped by SIGTERM before the run began; nothing was written\n"


def _record(variant: str, status: str = "ok", **metrics) -> Record:
    return Record(run_id="r", suite="s", variant=variant, params={}, case_id=f"s/{variant}/", status=status,
                  metrics=metrics, error=None if status == "ok" else "why")


def test_the_last_line_of_a_run_says_how_many_timed_cases_were_contended(tmp_path):
    quiet = [_record("a", contended=False), _record("b"), _record("c", "skipped")]
    assert summary(quiet, tmp_path) == f"3 cases: 2 ok, 1 skipped -> {tmp_path}"
    busy = [_record("a", contended=True), _record("b", contended=True), _record("c", contended=False), _record("d"),
            _record("e", "error")]
    assert summary(busy, tmp_path) == f"5 cases: 1 error, 4 ok (2 of the 3 timed cases contended) -> {tmp_path}"


def test_a_run_that_ran_contended_says_so_beside_its_tally():
    # a load that began after the run's start (no warning before it) left "3 ok" and exit 0 as the console's last word
    quiet = _record("a", contended=False, host_other_cpus=0.02, host_cpus=2)
    busy = _record("b", contended=True, host_other_cpus=1.1, host_case_cpus=0.9, host_cpus=2)
    busier = _record("c", contended=True, host_other_cpus=1.6, host_case_cpus=0.4, host_cpus=2)
    line = contended_line([quiet, busy, busier, _record("d", "error")])
    assert line.startswith("other load disturbed the timings of 2 cases (the most: other processes used 1.6 of 2 "
                           "CPUs during the timed window); ")
    assert contended_line([quiet, _record("e", contended=None), _record("f", "error")]) is None


def test_plan_names_an_unknown_suite_before_it_looks_for_a_gpu(capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # --gpu auto would refuse this machine
    code, _, err = run_cli(capsys, "plan", "nosuch")
    assert code == 2 and err.startswith("bench: error: unknown suite 'nosuch' (valid: ") and err.count("\n") == 1
