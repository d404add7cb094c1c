"""`bench import` reads pytest-benchmark JSON from anywhere: every field it reads is checked, a bad one is one line
naming it and exit 2, and nothing is written; what it accepts, every reader of run directories can read."""

import contextlib
import copy
import io
import json
import math
import tempfile
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.cli import main
from bench.records import read_records, read_run_json
from tests.optional import needs

# A file as pytest-benchmark writes it (a test of its own), and one as `bench export` writes it (techbench's env and
# tags in machine_info and extra_info): the two shapes import reads.
FOREIGN = {
    "machine_info": {"node": "ci", "python_version": "3.12.3", "python_implementation": "CPython", "system": "Linux",
                     "release": "6.8", "cpu": {"brand_raw": "Xeon", "count": 8}},
    "commit_info": {"id": "abc", "dirty": True},
    "benchmarks": [{"group": "mm", "name": "test_mm[64]", "fullname": "t.py::test_mm[64]", "params": {"n": 64},
                    "extra_info": {}, "stats": {"median": 0.002, "mean": 0.002, "stddev": 1e-4, "total": 0.006,
                                                "data": [0.002, 0.0021, 0.0019]}}],
    "datetime": "2026-11-28T01:02:03.456+00:00", "version": "5.1.0"}
TAGS = {"suite": "checkpointing", "variant": "none", "series": "step_time_ms", "run_id": "night", "device": "cuda:0",
        "size": "quick", "started_at": "2026-11-28T01:00:00Z", "elapsed_s": 1.5, "env_id": "abc123"}
OURS = {
    "machine_info": {"techbench": {"env": {
        "python_version": "3.12.3", "torch": "2.11.0", "cpu_model": "EPYC", "cpu_logical_cores": 16,
        "nvml": {"driver_version": "580.65"},
        "gpus": [{"name": "NVIDIA H200", "memory_total_bytes": 150_000_000_000, "driver_version": "580.65"}]}}},
    "commit_info": {"id": "abc", "dirty": False},
    "benchmarks": [{"group": "checkpointing", "name": "checkpointing/none/batch=4", "params": {"batch": 4},
                    "extra_info": {"peak_mem_bytes": 1e9, "techbench": TAGS},
                    "stats": {"median": 0.1, "mean": 0.1, "stddev": 0.001, "data": [0.1, 0.1, 0.1]}}],
    "datetime": "2026-11-28T01:00:00+00:00", "version": "5.1.0"}


def run_import(doc, tmp: Path, raw: bytes | None = None) -> tuple[int, str, Path]:
    """(exit code, stderr, --out) of `bench import` on `doc` (or on the bytes `raw`)."""
    file, out = tmp / "pb.json", tmp / "imported"
    file.write_bytes(raw if raw is not None else json.dumps(doc).encode())
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["import", str(file), "--out", str(out)])
    return code, err.getvalue(), out


def with_field(doc: dict, path: tuple, value) -> dict:
    """`doc` with the field at `path` (keys and list indexes) set to `value`, or deleted for the DELETE marker."""
    doc = copy.deepcopy(doc)
    *parents, last = path
    holder = doc
    for key in parents:
        holder = holder[key]
    if value is DELETE:
        del holder[last]
    else:
        holder[last] = value
    return doc


DELETE = object()
BENCH = ("benchmarks", 0)
TB = (*BENCH, "extra_info", "techbench")
ENV = ("machine_info", "techbench", "env")


def test_the_valid_files_import(tmp_path):
    (tmp_path / "foreign").mkdir()
    (tmp_path / "ours").mkdir()
    code, err, out = run_import(FOREIGN, tmp_path / "foreign")
    assert code == 0 and err == ""
    (record,) = read_records(out / "records.jsonl")
    assert record.case_id == "mm/test_mm[64]/n=64" and record.samples["time_ms"] == pytest.approx([2.0, 2.1, 1.9])
    assert read_run_json(out)["finished_at"] == "2026-11-28T01:02:03Z"
    code, err, out = run_import(OURS, tmp_path / "ours")
    assert code == 0 and err == ""
    (record,) = read_records(out / "records.jsonl")
    assert record.case_id == "checkpointing/none/batch=4" and record.device == "cuda:0"
    assert record.samples["step_time_ms"] == pytest.approx([100.0] * 3) and record.metrics["peak_mem_bytes"] == 1e9
    assert read_run_json(out)["env"]["gpus"][0]["name"] == "NVIDIA H200"


@needs("plotly", "pyarrow")
def test_what_import_accepts_reports_and_history_read(tmp_path):
    from bench import history
    from reports.run_report import write_report

    for name, doc, case in (("foreign", FOREIGN, "mm/test_mm[64]/n=64"), ("ours", OURS, "checkpointing/none/batch=4")):
        (tmp_path / name).mkdir()
        code, err, out = run_import(doc, tmp_path / name)
        assert code == 0, err
        assert history.add(out, tmp_path / "store") > 0
        assert case in write_report([out], tmp_path / f"{name}.html").read_text()
    assert set(history.load(tmp_path / "store")["suite"]) == {"mm", "checkpointing"}


@pytest.mark.parametrize("doc, path, value, message", [
    (FOREIGN, (*BENCH, "stats", "median"), None, "benchmarks[0].stats.median is missing (it must be a finite number)"),
    (FOREIGN, (*BENCH, "stats", "median"), "fast", "benchmarks[0].stats.median must be a finite number, got a string"),
    (FOREIGN, (*BENCH, "stats", "median"), math.nan, "benchmarks[0].stats.median must be a finite number, got nan"),
    (FOREIGN, (*BENCH, "stats", "median"), 10**400, "got a number beyond the range of a float"),
    (FOREIGN, (*BENCH, "stats", "mean"), True, "benchmarks[0].stats.mean must be a finite number, got a boolean"),
    (FOREIGN, (*BENCH, "stats", "data"), "0.1 0.2", "benchmarks[0].stats.data must be a list, got a string"),
    (FOREIGN, (*BENCH, "stats", "data", 1), "0.2", "benchmarks[0].stats.data[1] must be a finite number"),
    (FOREIGN, (*BENCH, "stats"), DELETE, "benchmarks[0].stats is missing (it must be an object)"),
    (FOREIGN, BENCH, 3, "benchmarks[0] must be an object, got a number"),
    (FOREIGN, (*BENCH, "group"), 7, "benchmarks[0].group must be a string, got a number"),
    (FOREIGN, (*BENCH, "name"), ["t"], "benchmarks[0].name must be a string, got a list"),
    (OURS, (*BENCH, "params", "batch"), [4], "benchmarks[0].params.batch must be a string, number or boolean"),
    (FOREIGN, ("datetime",), 1732755723, "datetime must be a string, got a number"),
    (FOREIGN, ("datetime",), "yesterday", "datetime must be an ISO 8601 time between 1970 and 2261, got 'yesterday'"),
    (FOREIGN, ("commit_info", "dirty"), "yes", "commit_info.dirty must be true or false, got a string"),
    (FOREIGN, ("machine_info", "cpu"), "Xeon", "machine_info.cpu must be an object, got a string"),
    (FOREIGN, ("machine_info", "cpu", "count"), "8", "machine_info.cpu.count must be a finite number"),
    (FOREIGN, ("machine_info",), [], "machine_info must be an object, got a list"),
    (OURS, (*TB, "suite"), 7, "benchmarks[0].extra_info.techbench.suite must be a string, got a number"),
    (OURS, (*TB, "suite"), "", "benchmarks[0].extra_info.techbench.suite must not be empty"),
    (OURS, (*TB, "elapsed_s"), "1.5", "benchmarks[0].extra_info.techbench.elapsed_s must be a finite number"),
    (OURS, (*TB, "device"), 0, "benchmarks[0].extra_info.techbench.device must be a string"),
    (OURS, (*BENCH, "extra_info", "peak_mem_bytes"), "1 GB",
     "benchmarks[0].extra_info.peak_mem_bytes must be a number or boolean, got a string"),
    (OURS, (*ENV, "gpus"), "NVIDIA H200", "machine_info.techbench.env.gpus must be a list, got a string"),
    (OURS, (*ENV, "gpus", 0), "NVIDIA H200", "machine_info.techbench.env.gpus[0] must be an object"),
    (OURS, (*ENV, "gpus", 0, "name"), 5, "machine_info.techbench.env.gpus[0].name must be a string"),
    (OURS, (*ENV, "gpus", 0, "memory_total_bytes"), "141 GB", "gpus[0].memory_total_bytes must be a finite number"),
    (OURS, (*ENV, "nvml"), "580.65", "machine_info.techbench.env.nvml must be an object"),
    (OURS, (*ENV, "cpu_model"), {"brand": "EPYC"}, "machine_info.techbench.env.cpu_model must be a string"),
])
def test_a_field_of_the_wrong_type_is_one_line_naming_it_and_exit_2(tmp_path, doc, path, value, message):
    code, err, out = run_import(with_field(doc, path, value), tmp_path)
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert err.startswith(f"bench: error: {tmp_path / 'pb.json'}: ")
    assert not out.exists()


@pytest.mark.parametrize("raw, message", [
    (b"{", "cannot read"), (b"[" * 100_000, "cannot read"), (b"[]", "not a pytest-benchmark JSON file"),
    (b'{"benchmarks": {}}', "not a pytest-benchmark JSON file"), (b"\xff\xfe{}", "cannot read"),
    (b'{"benchmarks": [], "datetime": "2026-11-28T01:02:03+00:00"}', "holds no benchmarks"),
])
def test_a_file_that_is_not_pytest_benchmark_json_is_one_line_and_exit_2(tmp_path, raw, message):
    code, err, out = run_import(None, tmp_path, raw=raw)
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not out.exists()


@pytest.mark.parametrize("name", ["suite", "run_dir", "peak_mem_bytes"])
def test_import_never_writes_a_record_the_readers_would_skip(tmp_path, name):
    """A metric named like a record field would overwrite that column of the loaded frame, and bench.records may
    refuse such a record: then import refuses the file, naming the case, rather than write a run that reads empty."""
    doc = with_field(OURS, (*BENCH, "extra_info", name), 2.0)
    code, err, out = run_import(doc, tmp_path)
    assert_outcome(doc, code, err, out)
    if code == 2:
        assert "case checkpointing/none/batch=4" in err


# JSON values of every type, with the awkward numbers JSON parsers hand back (NaN, Infinity, past a float's range)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.sampled_from([10**400, -(10**400)])
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10)


def paths(value, prefix=()):
    """Every field path in a document, the document itself included."""
    yield prefix
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, inner in items:
        yield from paths(inner, (*prefix, key))


FIELDS = [(doc, p) for doc in (FOREIGN, OURS) for p in paths(doc) if p]


def assert_outcome(doc, code: int, err: str, out: Path) -> None:
    """Exit 0 with a run every reader reads whole, or exit 2 with one line and nothing written."""
    assert code in (0, 2), err
    if code == 2:
        assert err.count("\n") == 1 and err.startswith("bench: error: "), err
        assert not out.exists()
    else:  # what was accepted, every reader reads in full
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a record the readers would skip as corrupt raises here
            records = read_records(out / "records.jsonl")
        assert read_run_json(out)["finished_at"]
        assert len(records) <= len(doc["benchmarks"]) and (records or not doc["benchmarks"])
        assert all(isinstance(r.suite, str) and r.suite and isinstance(r.params, dict) for r in records)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(field=st.sampled_from(FIELDS), value=JSON | st.just(DELETE))
def test_fuzz_one_field_replaced_by_any_json_value(field, value):
    doc = with_field(*field, value)
    with tempfile.TemporaryDirectory() as tmp:
        assert_outcome(doc, *run_import(doc, Path(tmp)))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=JSON | st.fixed_dictionaries({"benchmarks": st.lists(JSON, max_size=3)},
                                        optional={"machine_info": JSON, "commit_info": JSON, "datetime": JSON}))
def test_fuzz_any_json_document(doc):
    with tempfile.TemporaryDirectory() as tmp:
        assert_outcome(doc, *run_import(doc, Path(tmp)))
