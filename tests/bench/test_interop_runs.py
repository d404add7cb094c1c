"""What an export and its import say about the runs they hold: only finished, intact runs go out; an import gives back
what each metric is, is known for the runs it came from, and says what the export left out."""

import json

import pytest

from bench import cli
from bench.interop import export_pytest_benchmark, import_pytest_benchmark
from bench.records import read_records, read_run_json
from tests.runs import checkpointing_records, write_run


def test_an_unfinished_or_damaged_run_is_not_exported(tmp_path):
    # its import would read as a finished, whole run: compare and history would take what they refuse in the original
    run = write_run(tmp_path, "r", checkpointing_records())
    meta = read_run_json(run)
    (run / "run.json").write_text(json.dumps({**meta, "finished_at": None}))
    with pytest.raises(ValueError, match="has not finished"):
        export_pytest_benchmark([run], tmp_path / "x.json")
    (run / "run.json").write_text(json.dumps({**meta, "recorded": 20}))  # finished with more records than it holds
    with pytest.raises(ValueError, match="damaged since it finished: .*an export is imported as a finished run"):
        export_pytest_benchmark([run], tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()


def test_an_import_declares_each_metric_as_its_run_did(tmp_path):
    run = write_run(tmp_path, "r", checkpointing_records())
    with pytest.warns(UserWarning, match=r"left out of the export .*: 1 error, 1 oom, 1 skipped$"):
        out = export_pytest_benchmark([run], tmp_path / "x.json")
    back = import_pytest_benchmark(out, tmp_path / "back")
    declared = read_run_json(run)["suites"]
    assert declared["checkpointing"]["metrics"] and read_run_json(back)["suites"] == declared


def test_an_import_of_several_runs_is_counted_once_beside_any_of_them(tmp_path, capsys):
    from bench.commands import counted, run_dirs

    a = write_run(tmp_path, "a", checkpointing_records())
    b = write_run(tmp_path, "b", [{"suite": "checkpointing", "variant": "none", "params": {"batch": 32},
                                   "metrics": {"step_time_ms": 1.0}, "samples": {"step_time_ms": [1.0, 1.1]}}])
    with pytest.warns(UserWarning):
        out = export_pytest_benchmark([a, b], tmp_path / "x.json")
    back = import_pytest_benchmark(out, tmp_path / "back")
    meta = read_run_json(back)
    assert meta["merged_from"] == [{"run_id": "a"}, {"run_id": "b"}] and meta["run_id"] not in ("a", "b")
    assert {r.run_id for r in read_records(back / "records.jsonl")} == {"a", "b"}  # each record's own run
    code = cli.main(["compare", str(a), str(back)])  # a against its own measurements
    assert code == 2 and "must be different runs" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="merged into"):
        assert len(counted(run_dirs([a, back]))) == 1  # a side of both counts each case once


def test_the_same_foreign_file_imported_twice_is_the_same_run(tmp_path):
    doc = {"machine_info": {"node": "ci"}, "commit_info": {"id": "abc", "dirty": False},
           "datetime": "2026-11-28T01:02:03+00:00", "version": "5.1.0",
           "benchmarks": [{"group": None, "name": "test_mm", "params": None, "extra_info": {},
                           "stats": {"median": 0.002, "mean": 0.002, "stddev": 0.0}}]}
    file = tmp_path / "pb.json"
    file.write_text(json.dumps(doc))
    first, second = (read_run_json(import_pytest_benchmark(file, tmp_path / n)) for n in ("one", "two"))
    assert first["run_id"] == second["run_id"] and first["run_id"].startswith("20261128-010203-")
    file.write_text(json.dumps({**doc, "commit_info": {"id": "abd", "dirty": False}}))  # another file, same time
    assert read_run_json(import_pytest_benchmark(file, tmp_path / "three"))["run_id"] != first["run_id"]
