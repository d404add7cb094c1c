"""Malformed record lines, generated: whatever a records.jsonl holds, the readers return only records of the right
types, and report, compare, history and export end with exit 0, 1 or 2 and one-line messages, never a traceback."""

import json
import tempfile
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.cli import main
from bench.records import RECORDS_JSONL, Record, RunMeta, long_frame, read_records, records_frame, write_run_json
from bench.validation import RECORD_FIELDS, check_fields
from tests.optional import needs

GOOD = json.loads(Record(run_id="r1", suite="s", variant="v", params={"n": 0, "dtype": "float32"}, case_id="s/v/n=0",
                         status="ok", metrics={"value_ms": 1.5, "peak_bytes": 10, "flag": True, "gone_ms": None},
                         samples={"value_ms": [1.0, 2.0]}, device="cpu", started_at="2026-01-01T00:00:00Z",
                         elapsed_s=0.5, env_id="e").to_json())

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=2**63, max_value=10**400),
                    st.floats(), st.text(max_size=6))
junk = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                      st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                    max_leaves=6)


@st.composite
def a_line(draw) -> str:
    """One line of records.jsonl: a good record, one of its fields (or a metric or sample) made wrong or dropped,
    another schema, a cut-off line, a JSON value that is not an object, or text."""
    d = {**GOOD, "case_id": f"s/v/n={draw(st.integers(0, 3))}"}
    how = draw(st.sampled_from(["good", "field", "drop", "metric", "sample", "schema", "cut", "value", "text",
                                "huge"]))
    if how == "field":
        d[draw(st.sampled_from(RECORD_FIELDS))] = draw(junk)
    elif how == "drop":
        d.pop(draw(st.sampled_from(RECORD_FIELDS)), None)  # nonfinite: not in a line with nothing to name
    elif how == "metric":
        d["metrics"] = {**d["metrics"], draw(st.one_of(st.text(max_size=8), st.sampled_from(RECORD_FIELDS))):
                        draw(junk)}
    elif how == "sample":
        d["samples"] = {draw(st.text(max_size=8)): draw(junk)}
    elif how == "schema":
        d["schema"] = draw(st.integers(-3, 5))
    elif how == "cut":
        text = json.dumps(d)
        return text[: draw(st.integers(0, len(text) - 1))]
    elif how == "value":
        return json.dumps(draw(junk))
    elif how == "text":
        return draw(st.text(max_size=40)).replace("\n", " ").replace("\r", " ")
    elif how == "huge":  # numbers a JSON parser reads as infinities or as ints past int64
        return json.dumps(d).replace("1.5", draw(st.sampled_from(["1e999", "-1e400", "9" * 40, "NaN", "Infinity"])))
    return json.dumps(d)


def write_run(run_dir: Path, lines: list[str]) -> Path:
    run_dir.mkdir()
    write_run_json(run_dir, RunMeta(run_id="r1", size="smoke", device="cpu", started_at="2026-01-01T00:00:00Z",
                                    finished_at="2026-01-01T00:00:01Z"))
    (run_dir / RECORDS_JSONL).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return run_dir


def one_line_messages(err: str, code: int) -> None:
    assert all(line.startswith("bench: ") for line in err.splitlines()), err  # no traceback, no stray output
    assert err.count("bench: error: ") == (code == 2), err


@given(st.lists(a_line(), min_size=1, max_size=8))
@settings(max_examples=60, deadline=None)
def test_readers_return_only_well_typed_records(lines):
    with tempfile.TemporaryDirectory() as tmp:
        run = write_run(Path(tmp) / "r", lines)
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            records = read_records(run / RECORDS_JSONL)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            frame, long = records_frame(run, samples=True), long_frame(run)
    assert len(said) <= 1 and len(records) <= len(lines)  # one warning a file, whatever it left out
    assert len({r.case_id for r in records}) == len(records) == len(frame)
    assert len(long) == sum(len(r.metrics) for r in records)
    for r in records:  # each survives its own round trip: what a reader returns, a writer can write and read back
        assert Record.from_dict(json.loads(r.to_json())) == r
        assert check_fields({k: getattr(r, k) for k in RECORD_FIELDS}) is not None


@needs("plotly", "pyarrow")
@given(st.lists(a_line(), min_size=1, max_size=8), st.lists(a_line(), max_size=4))
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_commands_on_malformed_lines_end_in_one_line(capsys, base_lines, new_lines):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base, new = write_run(tmp / "base", base_lines), write_run(tmp / "new", new_lines)
        for argv in (["compare", base, new, "--fail-on-regression"], ["report", base, new, "-o", tmp / "r.html"],
                     ["history", "add", base, "--store", tmp / "store"],
                     ["export", base, "--format", "pytest-benchmark", "-o", tmp / "pb.json"]):
            code = main([str(a) for a in argv])
            out, err = capsys.readouterr()
            assert code in (0, 1, 2), (argv, code)
            one_line_messages(err, code)
            if argv[0] == "report" and code == 0:
                assert (tmp / "r.html").stat().st_size > 0


@pytest.mark.parametrize("line", ["[" * 100_000, '{"schema": 1, "metrics": ' + "[" * 100_000])
def test_json_nested_deeper_than_python_recurses_is_a_corrupt_line(tmp_path, line):
    run = write_run(tmp_path / "r", [json.dumps(GOOD), line])
    with pytest.warns(UserWarning, match="skipped 1 corrupt line"):
        assert [r.case_id for r in read_records(run / RECORDS_JSONL)] == ["s/v/n=0"]
