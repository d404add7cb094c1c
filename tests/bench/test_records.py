import json
import math

import pytest

from bench.records import (
    Record,
    RecordWriter,
    SchemaError,
    long_frame,
    read_records,
    read_run_json,
    records_frame,
    scan_records,
    write_run_json,
)


def make(i=0, status="ok", **kw):
    return Record(run_id="r1", suite="s", variant="v", params={"n": i}, case_id=f"s/v/n={i}", status=status,
                  metrics=kw.pop("metrics", {"step_time_ms": 1.5 + i, "peak_mem_bytes": 100 * i}),
                  samples={"step_time_ms": [1.0, 2.0]}, error=None if status == "ok" else "why", **kw)


def test_round_trip(tmp_path):
    records = [make(0), make(1), make(2, status="skipped")]
    with RecordWriter(tmp_path / "records.jsonl") as w:
        for r in records:
            w.write(r)
    assert read_records(tmp_path / "records.jsonl") == records
    first = json.loads((tmp_path / "records.jsonl").read_text().splitlines()[0])
    assert list(first)[0] == "schema" and first["schema"] == 1


def test_corrupt_lines_are_skipped_and_counted(tmp_path):
    path = tmp_path / "records.jsonl"
    with RecordWriter(path) as w:
        w.write(make(0))
    with path.open("a") as f:
        f.write('{"truncated": \n')
        f.write('[1, 2]\n')
        f.write('{}\n')
        f.write(json.dumps({**json.loads(make(5).to_json()), "status": "weird"}) + "\n")
    with RecordWriter(path) as w:
        w.write(make(1))
    with pytest.warns(UserWarning, match="skipped 4 corrupt lines"):
        assert [r.case_id for r in read_records(path)] == ["s/v/n=0", "s/v/n=1"]


def test_writer_never_glues_onto_a_partial_line(tmp_path):
    path = tmp_path / "records.jsonl"
    path.write_text(make(0).to_json() + "\n" + make(1).to_json()[:40])  # killed mid-write
    with pytest.warns(UserWarning, match="moved to records.jsonl.cut-"), RecordWriter(path) as w:
        w.write(make(2))
    # the partial line is moved aside (tests/bench/test_records_writer.py): no reader warns of it ever after
    assert scan_records(path).corrupt == 0
    assert [r.case_id for r in read_records(path)] == ["s/v/n=0", "s/v/n=2"]


def test_a_line_of_another_schema_is_skipped_not_fatal(tmp_path):
    path = tmp_path / "records.jsonl"
    with RecordWriter(path) as w:
        w.write(make(0))
    with path.open("a") as f:
        f.write(json.dumps({**json.loads(make(1).to_json()), "schema": 2}) + "\n")
    with pytest.warns(UserWarning, match=r"skipped 1 line of schema 2 \(this techbench reads 1\)"):
        assert [r.case_id for r in read_records(path)] == ["s/v/n=0"]
    write_run_json(tmp_path, {"schema": 99})
    with pytest.raises(SchemaError):
        read_run_json(tmp_path)


def test_failed_records_need_a_reason_and_status_is_checked():
    with pytest.raises(ValueError, match="reason"):
        Record(run_id="r", suite="s", variant="v", params={}, case_id="s/v/", status="error")
    with pytest.raises(ValueError, match="status"):
        Record(run_id="r", suite="s", variant="v", params={}, case_id="s/v/", status="finished")


def test_non_finite_metrics_become_null(tmp_path):
    import numpy as np
    import torch

    r = make(0, metrics={"x_ms": math.nan, "y_ms": math.inf, "z_ms": 1.0, "n_ms": np.float32("nan"),
                         "t_ms": torch.tensor(float("inf")), "k_bytes": np.int64(7)})
    assert json.loads(r.to_json())["metrics"] == {"x_ms": None, "y_ms": None, "z_ms": 1.0, "n_ms": None,
                                                  "t_ms": None, "k_bytes": 7}


def test_frames(tmp_path):
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        with RecordWriter(tmp_path / run / "records.jsonl") as w:
            w.write(make(0))
            w.write(make(1))
    df = records_frame(tmp_path / "a", tmp_path / "b")
    assert len(df) == 4 and list(df["step_time_ms"]) == [1.5, 2.5, 1.5, 2.5]
    long = long_frame(tmp_path / "a")
    assert len(long) == 4
    assert set(long["metric"]) == {"step_time_ms", "peak_mem_bytes"}
    assert set(long["direction"]) == {"lower"}


def test_frames_of_a_folder_of_runs_or_of_no_run(tmp_path):
    for run in ("a", "b"):
        (tmp_path / "runs" / run).mkdir(parents=True)
        (tmp_path / "runs" / run / "run.json").write_text(f'{{"schema": 1, "run_id": "r-{run}"}}')
        with RecordWriter(tmp_path / "runs" / run / "records.jsonl") as w:
            w.write(make(0))
    assert len(records_frame(tmp_path / "runs")) == len(long_frame(tmp_path / "runs")) // 2 == 2  # as the commands
    import shutil

    shutil.copytree(tmp_path / "runs" / "a", tmp_path / "runs" / "a-copy")  # the same run twice: counted once
    with pytest.warns(UserWarning, match="is run r-a again"):
        assert len(records_frame(tmp_path / "runs")) == 2
    shutil.rmtree(tmp_path / "runs" / "a-copy")
    (tmp_path / "runs" / "b" / "run.json").write_text("{")  # a corrupt run.json: its records are read all the same
    assert len(records_frame(tmp_path / "runs")) == 2
    for nothing in (tmp_path / "missing", tmp_path / "runs" / "a" / "records.jsonl", tmp_path):
        with pytest.raises(FileNotFoundError, match="is not a run directory"):  # not an empty frame
            records_frame(nothing)
        with pytest.raises(FileNotFoundError, match="nor a folder of them"):
            long_frame(nothing)


