"""The result commands from the command line: each bad input is one line and exit 2, and nothing is overwritten."""
import json

import pytest

from bench.cli import main
from tests.optional import needs
from tests.runs import checkpointing_records, write_run


@pytest.fixture
def run(tmp_path):
    return write_run(tmp_path, "r1", checkpointing_records())


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@needs("plotly", "pyarrow")
def test_report_history_dashboard_export_import_round(capsys, tmp_path, run):
    assert cli(capsys, "report", run, "-o", tmp_path / "r.html")[0] == 0
    assert cli(capsys, "history", "add", run, "--store", tmp_path / "store")[0] == 0
    code, out, _ = cli(capsys, "history", "add", run, "--store", tmp_path / "store")
    assert code == 0 and out.startswith("0 rows added")
    # said as a run added before, with what the store holds of it: not as a run that added nothing
    assert f"run r1 ({run}) is in the store already, with 83 rows: not added again" in out
    assert cli(capsys, "dashboard", tmp_path / "store", "-o", tmp_path / "site")[0] == 0
    assert (tmp_path / "site" / "index.html").exists()
    assert cli(capsys, "export", run, "--format", "pytest-benchmark", "-o", tmp_path / "pb.json")[0] == 0
    assert cli(capsys, "import", tmp_path / "pb.json", "--out", tmp_path / "back")[0] == 0
    assert (tmp_path / "back" / "records.jsonl").exists()


@pytest.mark.parametrize("argv, message", [
    (["report", "{run}", "-o", "{run}/records.jsonl"], "should end in .html"),
    (["export", "{run}", "--format", "pytest-benchmark", "-o", "{run}/run.json"], "a file of the run it reads"),
    (["report", "{tmp}/nothing", "-o", "{tmp}/r.html"], "RUN {tmp}/nothing does not exist"),
    (["report", "{run}/records.jsonl", "-o", "{tmp}/r.html"], "is not a run directory"),  # a file of one
    (["compare", "{run}", "{tmp}/nothing"], "NEW {tmp}/nothing does not exist"),
    (["history", "add", "{tmp}/nothing", "--store", "{tmp}/store"], "RUN {tmp}/nothing does not exist"),
    (["merge", "{run}", "{tmp}/nothing", "--out", "{tmp}/m"], "RUN {tmp}/nothing does not exist"),
    (["export", "{tmp}/nothing", "--format", "pytest-benchmark", "-o", "{tmp}/x.json"], "{tmp}/nothing does not exist"),
    (["compare", "{run}", "{run}", "--threshold", "-5"], "--threshold is a percentage"),
    (["dashboard", "{run}", "-o", "{tmp}/site"], "not a history store"),
    (["dashboard", "{tmp}/nostore", "-o", "{tmp}/site"], "does not exist"),
    (["history", "add", "{run}", "--store", "{run}/run.json"], "is a file"),
    (["import", "{tmp}/missing.json", "--out", "{tmp}/imp"], "{tmp}/missing.json does not exist"),
    (["import", "{tmp}", "--out", "{tmp}/imp"], "is not a file"),
    (["profile", "checkpointing", "--variant", "nope", "--out", "{tmp}/p"], "unknown variant 'nope'"),
    (["export", "{tmp}/other", "--format", "pytest-benchmark", "-o", "{run}/run.json"],
     "is a file of the run directory"),  # another run's run.json
    (["plan", "checkpointing", "--size", "smoke", "--gpu", "h200", "-o", "{run}"], "is a directory"),  # said at once
])
def test_bad_inputs_are_one_line_and_exit_2(capsys, tmp_path, run, argv, message):
    write_run(tmp_path, "other", checkpointing_records(seed=1))
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    code, _, err = cli(capsys, *(a.format(run=run, tmp=tmp_path) for a in argv))
    assert code == 2 and message.format(tmp=tmp_path) in err and err.count("\n") == 1, err
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


@pytest.mark.parametrize("argv", [["report", "{run}", "-o", "{tmp}/r.html"], ["compare", "{run}", "{run}"],
                                  ["history", "add", "{run}", "--store", "{tmp}/store"]])
def test_a_run_that_lost_its_run_json_is_told_how_to_rebuild_it(capsys, tmp_path, run, argv):
    # its records are there: not "no run directory", but the resume that writes run.json again from them
    (run / "run.json").unlink()
    code, _, err = cli(capsys, *(a.format(run=run, tmp=tmp_path) for a in argv))
    assert code == 2 and err.count("\n") == 1, err
    assert f"{run} has lost its run.json (records.jsonl is there): `bench run checkpointing --size SIZE --resume " \
           f"--out {run}`, with the size (and --device, --shard) it was run with, rebuilds it from the records" in err
    assert [p.name for p in run.iterdir()] == ["records.jsonl"]


@pytest.mark.parametrize("argv", [["report", "{run}", "-o", "{tmp}/r.html"], ["compare", "{run}", "{run}"],
                                  ["history", "add", "{run}", "--store", "{tmp}/store"],
                                  ["merge", "{run}", "--out", "{tmp}/m"],
                                  ["export", "{tmp}", "--format", "pytest-benchmark", "-o", "{tmp}/x.json"]])
def test_a_run_json_that_is_no_json_is_told_how_to_rebuild_it(capsys, tmp_path, run, argv):
    (run / "run.json").write_text('{"schema": 1, "run_id"')  # cut short by a full disk
    code, _, err = cli(capsys, *(a.format(run=run, tmp=tmp_path) for a in argv))
    assert code == 2 and err.count("\n") == 1, err
    assert f"{run}/run.json is not valid JSON" in err and err.strip().endswith(
        f"`bench run checkpointing --size SIZE --resume --out {run}`, with the size (and --device, --shard) it was run "
        "with, rebuilds it from the records"), err


def test_a_corrupt_run_json_is_bad_input(capsys, tmp_path, run):
    (run / "run.json").write_text(json.dumps({"schema": 7}))
    code, _, err = cli(capsys, "report", run, "-o", tmp_path / "r.html")
    assert code == 2 and "schema" in err and err.count("\n") == 1


@pytest.mark.parametrize("package, argv", [
    ("plotly", ["report", "{run}", "-o", "{tmp}/r.html"]),
    ("plotly", ["compare", "{run}", "{tmp}/r2", "-o", "{tmp}/c.html"]),
    ("pyarrow", ["history", "add", "{run}", "--store", "{tmp}/store"]),
])
def test_a_missing_optional_package_is_one_line_and_exit_2(capsys, monkeypatch, tmp_path, run, package, argv):
    """As on a checkout run with PYTHONPATH=. where the package did not travel (the GPU machine lacks pyarrow)."""
    import sys

    from reports.html import plotly_js

    write_run(tmp_path, "r2", checkpointing_records(seed=1))  # a second run, for compare
    plotly_js.cache_clear()  # this process may have embedded plotly.js already
    for name in [m for m in sys.modules if m == package or m.startswith(package + ".")] + [package]:
        monkeypatch.setitem(sys.modules, name, None)  # import now raises ModuleNotFoundError
    code, _, err = cli(capsys, *(a.format(run=run, tmp=tmp_path) for a in argv))
    assert code == 2 and err.count("\n") == 1 and f"{package} is not installed (pip install {package})" in err, err
    assert not [p for p in tmp_path.iterdir() if p.name not in ("r1", "r2")]  # nothing written


@pytest.mark.parametrize("argv", [
    ["report", "{tmp}/other", "-o", "{run}/report.html"],  # another run's report in its place
    ["report", "{run}", "{tmp}/other", "-o", "{run}/report.html"],  # a report of two runs
    ["compare", "{tmp}/other", "{run}", "-o", "{run}/report.html"],
    ["plan", "checkpointing", "--size", "smoke", "--gpu", "h200", "-o", "{run}/report.html"],
    ["dashboard", "{tmp}/store", "-o", "{run}/report.html"],  # a folder where the run's report goes
    ["dashboard", "{tmp}/store", "-o", "{tmp}/store/runs"],  # pages among the store's Parquet files
    ["report", "{run}", "-o", "{tmp}/store/runs/r.html"],
    ["export", "{run}", "--format", "pytest-benchmark", "-o", "{tmp}/store/damaged/r.json"],
])
@pytest.mark.parametrize("page", [True, False])
@needs("pyarrow")
def test_no_output_takes_the_place_of_a_runs_files_or_goes_into_a_history_store(capsys, tmp_path, run, argv, page):
    # each wrote its page over the run's report.html (or made a folder of it where there was none), or wrote into the
    # folder that pandas.read_parquet("STORE/runs") reads whole
    write_run(tmp_path, "other", checkpointing_records(seed=1))
    assert cli(capsys, "history", "add", run, "--store", tmp_path / "store")[0] == 0
    if page:
        (run / "report.html").write_text("r1's page")
    before = {p: p.read_bytes() for p in [*run.iterdir(), *(tmp_path / "store").rglob("*")] if p.is_file()}
    code, _, err = cli(capsys, *(a.format(run=run, tmp=tmp_path) for a in argv))
    assert code == 2 and err.count("\n") == 1, err
    assert ("is a file" if "{run}/report.html" in argv else "of the history store") in err, err
    assert {p: p.read_bytes() for p in [*run.iterdir(), *(tmp_path / "store").rglob("*")] if p.is_file()} == before
    assert {p for p in [*run.iterdir(), *(tmp_path / "store").rglob("*")] if not p.is_file()} == {
        tmp_path / "store" / "runs"}


@needs("plotly")
def test_a_report_of_one_run_writes_that_runs_own_report_again(capsys, tmp_path, run):
    (run / "report.html").write_text("r1's page, from before a report change")
    assert cli(capsys, "report", run, "-o", run / "report.html")[0] == 0
    assert "r1" in (run / "report.html").read_text() and "from before" not in (run / "report.html").read_text()
