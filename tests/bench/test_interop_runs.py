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
    # a side of both counts each case once, from the run itself: the import holds its timings only
    with pytest.warns(UserWarning, match=r"is an import of run a, given with it: .*1 other run\(s\) are left out"):
        assert counted(run_dirs([back, a])) == [a]
    single = import_pytest_benchmark(export_pytest_benchmark([b], tmp_path / "b.json"), tmp_path / "b-back")
    with pytest.warns(UserWarning, match="is an import of run b, given with it"):
        assert counted(run_dirs([single, b])) == [b]  # the same run_id: the original, whichever comes first


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


def test_a_foreign_file_without_a_time_is_named_by_its_content(tmp_path):
    doc = {"benchmarks": [{"name": "test_mm", "stats": {"median": 0.002}}]}
    (tmp_path / "pb.json").write_text(json.dumps(doc))
    ids = {read_run_json(import_pytest_benchmark(tmp_path / "pb.json", tmp_path / n))["run_id"] for n in ("a", "b")}
    assert len(ids) == 1 and ids.pop().startswith("imported-")


def test_declarations_that_would_make_a_bad_run_json_are_refused(tmp_path):
    run = write_run(tmp_path, "r", [r for r in checkpointing_records() if r.get("status", "ok") == "ok"])
    doc = json.loads(export_pytest_benchmark([run], tmp_path / "x.json").read_text())
    doc["machine_info"]["techbench"]["runs"][0]["suites"]["checkpointing"]["metrics"] = "oops"
    (tmp_path / "x.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="would make a bad run.json: suites.checkpointing.metrics is str"):
        import_pytest_benchmark(tmp_path / "x.json", tmp_path / "back")
    assert not (tmp_path / "back").exists()


def test_a_history_holding_runs_and_an_import_of_them_reads_the_runs(tmp_path):
    pytest.importorskip("pyarrow")
    from bench import history

    a = write_run(tmp_path, "a", checkpointing_records(), started_at="2026-11-01T01:00:00Z")
    other = [{**r, "params": {**r["params"], "batch": 10 * r["params"]["batch"]}} for r in checkpointing_records()]
    b = write_run(tmp_path, "b", other, started_at="2026-11-02T01:00:00Z")  # a shard of the same sweep, say
    with pytest.warns(UserWarning):
        back = import_pytest_benchmark(export_pytest_benchmark([a, b], tmp_path / "x.json"), tmp_path / "back")
    store = tmp_path / "store"
    history.add(back, store)  # the import first: it holds the most runs, and is still not what is read
    with pytest.warns(UserWarning, match="already"):
        history.add(a, store)
        history.add(b, store)
    frame = history.load(store)
    timed = frame[frame["metric"] == "step_time_ms"]
    assert set(timed["run_id"]) == {"a", "b"} and not timed["imported"].any()
    assert set(frame.loc[frame["run_id"] == read_run_json(back)["run_id"], "imported"]) <= {True}


def test_a_run_added_after_its_import_is_what_the_history_reads(tmp_path):
    pytest.importorskip("pyarrow")
    from bench import history

    a = write_run(tmp_path, "a", checkpointing_records())
    with pytest.warns(UserWarning):
        back = import_pytest_benchmark(export_pytest_benchmark([a], tmp_path / "a.json"), tmp_path / "back")
    store = tmp_path / "store"
    history.add(back, store)
    with pytest.warns(UserWarning, match="a run and an import of it, added apart"):
        assert history.add(a, store) > 0  # not "already added": the import is a file of its own
    frame = history.load(store)
    assert not frame["imported"].any() and {"oom", "error", "skipped"} <= set(frame["status"])
