"""A run directory written before runs declared their suites (tests/fixtures/schema1-run: checkpointing and mla at
smoke size, by the commit before metric specs) still reports, compares, joins the history, merges and exports."""

import json
import shutil
from pathlib import Path

import pytest

from bench.cli import main
from bench.compare import compare
from tests.optional import needs

OLD = Path(__file__).resolve().parents[1] / "fixtures" / "schema1-run"


@pytest.fixture
def old(tmp_path):
    run = tmp_path / "old"
    shutil.copytree(OLD, run)  # commands must not write into the committed fixture
    return run


def cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_fixture_declares_nothing():
    assert "suites" not in json.loads((OLD / "run.json").read_text())


def test_an_old_run_compares_with_unit_suffix_defaults(old):
    again = shutil.copytree(old, old.parent / "again")
    run_json = again / "run.json"  # another run of the same records: one run on both sides is refused
    run_json.write_text(run_json.read_text().replace(json.loads(run_json.read_text())["run_id"], "again"))
    rows = compare(old, again).rows
    assert not rows["verdict"].isin(["better", "worse", "faster", "slower"]).any()
    assert (rows[rows["metric"] == "peak_mem_bytes"]["verdict"] == "same").all()  # bytes: exact by their suffix
    assert (rows[rows["metric"] == "tokens_per_s"]["verdict"] == "n/a").all()  # a rate: clocked, by its suffix


@needs("plotly")
def test_an_old_run_reports_and_compares_against_a_new_one(capsys, tmp_path, old):
    code, _, err = cli(capsys, "report", old, "-o", tmp_path / "r.html")
    assert code == 0 and (tmp_path / "r.html").stat().st_size > 100_000, err
    new = tmp_path / "new"
    code, _, err = cli(capsys, "run", "checkpointing", "--size", "smoke", "--device", "cpu", "--variant", "none",
                       "--inline", "--out", new)
    assert code == 0, err
    code, out, err = cli(capsys, "compare", old, new, "-o", tmp_path / "c.html")
    assert code == 0 and (tmp_path / "c.html").exists() and "checkpointing/none/" in (tmp_path / "c.html").read_text()


@needs("pyarrow", "plotly")
def test_an_old_run_joins_the_history_and_the_dashboard(capsys, tmp_path, old):
    assert cli(capsys, "history", "add", old, "--store", tmp_path / "store")[0] == 0
    assert cli(capsys, "dashboard", tmp_path / "store", "-o", tmp_path / "site")[0] == 0
    assert (tmp_path / "site" / "index.html").exists()


def test_an_old_run_merges_and_exports(capsys, tmp_path, old):
    code, _, err = cli(capsys, "merge", old, "--out", tmp_path / "merged")
    assert code == 0, err
    assert len((tmp_path / "merged" / "records.jsonl").read_text().splitlines()) == 8
    code, _, err = cli(capsys, "export", old, "--format", "pytest-benchmark", "-o", tmp_path / "pb.json")
    assert code == 0 and json.loads((tmp_path / "pb.json").read_text())["benchmarks"], err
