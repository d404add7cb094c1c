"""What a record may hold (bench.validation): a measurement a record cannot hold becomes an error record of its case
and the run goes on; a line a reader cannot trust is counted, not a traceback; a case_id recorded twice is said."""

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import runner
from bench.cli import main
from bench.compare import compare
from bench.records import RECORDS_JSONL, Record, RunMeta, read_records, write_run_json
from bench.suite import SUITES, Measurement, Suite, register
from bench.validation import RECORD_FIELDS, RESERVED, check_measurement
from tests.optional import needs


@register
class BadMetrics(Suite):
    """One case per way `measure` can return what a record cannot hold, between cases that can."""

    name = "_bad_metrics"
    variants = {"ok": "reference", "object": "a metric JSON cannot encode", "key": "a metric named by an int",
                "text_samples": "samples that are a string", "field": "a metric named like a record field",
                "plain": "NaN, numpy scalars, a huge int: all a record can hold"}

    def grid(self, size, device):
        return [{"n": 1}]

    def measure(self, variant, params, device):
        metrics, samples = {"value_ms": 1.0}, {"value_ms": [1.0, 2.0]}
        if variant == "object":
            metrics["m"] = object()
        if variant == "key":
            metrics[3] = 1.0
        if variant == "text_samples":
            samples["value_ms"] = "1.0, 2.0"
        if variant == "field":
            metrics["status"] = 1.0
        if variant == "plain":
            metrics |= {"nan_ms": math.nan, "n_bytes": np.int64(7), "t_ms": np.float32(2.5), "big_flops": 10**20,
                        "loss": torch.tensor(0.5)}  # a 0-dim tensor: made a number before it leaves the child
        return Measurement(metrics, samples)


WHY = {"object": "metric 'm' is object, not a number", "key": "metric name 3 is not a non-empty string",
       "text_samples": "samples 'value_ms' is str, not a list of numbers",
       "field": "metric 'status' has the name of a record field"}


def test_record_fields_are_the_records():
    assert set(RECORD_FIELDS) == set(Record.__dataclass_fields__) and set(RECORD_FIELDS) <= RESERVED


@pytest.mark.parametrize("metrics, samples, message", [
    ([1.0], {}, "metrics is list, not an object"),
    ({"m": object()}, {}, "metric 'm' is object"),
    ({"m": "fast"}, {}, "metric 'm' is str"),
    ({"m": [1.0]}, {}, "metric 'm' is list"),
    ({"m": 10**400}, {}, "metric 'm' is a number beyond a float's range"),
    ({("a",): 1.0}, {}, "metric name ('a',) is not a non-empty string"),
    ({"": 1.0}, {}, "metric name '' is not"),
    ({"run_dir": 1.0}, {}, "metric 'run_dir' has the name of a record field"),
    ({}, "abc", "samples is str, not an object"),
    ({}, {"s": [1.0, "2"]}, "samples 's' hold str, not only numbers"),
    ({}, {"s": [True]}, "samples 's' hold bool"),
    ({}, {"s": {"a": 1}}, "samples 's' is dict"),
])
def test_what_a_record_cannot_hold_is_named(metrics, samples, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_measurement(metrics, samples)


def test_what_a_record_can_hold_becomes_plain_values():
    metrics, samples = check_measurement(
        {"a_ms": math.inf, "b": np.float32(1.5), "c": torch.tensor(3), "d": True, "e": None, "f": 2**70},
        {"s": (1, np.float64(2.0), math.nan, None)})
    assert metrics == {"a_ms": None, "b": 1.5, "c": 3, "d": True, "e": None, "f": float(2**70)}
    assert type(metrics["c"]) is int and samples == {"s": [1, 2.0, None, None]}


@pytest.mark.parametrize("inline", [True, False])
def test_a_measurement_a_record_cannot_hold_is_an_error_and_the_run_goes_on(tmp_path, inline):
    cfg = runner.RunConfig(suites=[SUITES["_bad_metrics"]], size="smoke", device="cpu", out=tmp_path / "r",
                           inline=inline)
    code, records = runner.run(cfg)
    by = {r.variant: r for r in records}
    assert code == 1 and list(by) == list(BadMetrics.variants)  # every case after a bad one ran
    for variant, why in WHY.items():
        assert by[variant].status == "error" and why in by[variant].error and not by[variant].metrics
    assert by["ok"].status == by["plain"].status == "ok"
    plain = {k: by["plain"].metrics[k] for k in ("value_ms", "nan_ms", "n_bytes", "t_ms", "big_flops", "loss")}
    assert plain == {"value_ms": 1.0, "nan_ms": None, "n_bytes": 7, "t_ms": 2.5, "big_flops": 1e20, "loss": 0.5}
    assert read_records(cfg.out / RECORDS_JSONL) == records
    again = runner.RunConfig(**{**cfg.__dict__, "resume": True})
    assert runner.run(again) == (1, records)  # --resume no longer trips on the same case
    assert len((cfg.out / RECORDS_JSONL).read_text().splitlines()) == len(records)


def test_a_bad_metric_through_the_command_line_is_one_error_record(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr("bench.cli.discover", lambda: dict(SUITES))
    argv = ["run", "_bad_metrics", "--size", "smoke", "--device", "cpu", "--inline", "--out", str(tmp_path / "r")]
    for extra in ([], ["--resume"]):
        assert main(argv + extra) == 1
        out, err = capsys.readouterr()
        assert "Traceback" not in out + err and f"{len(BadMetrics.variants)} cases: 4 error, 2 ok" in out


def good(case: int = 0, value: float = 1.0, run_id: str = "r1") -> dict:
    return json.loads(Record(run_id=run_id, suite="s", variant="v", params={"n": case}, case_id=f"s/v/n={case}",
                             status="ok", metrics={"value_ms": value}, samples={"value_ms": [value, value]}).to_json())


BAD_LINES = {
    "metrics null": {**good(1), "metrics": None},
    "metrics a list": {**good(1), "metrics": [1, 2]},
    "samples a string": {**good(1), "samples": "1,2"},
    "a sample a string": {**good(1), "samples": {"value_ms": [1.0, "x"]}},
    "a metric an object": {**good(1), "metrics": {"value_ms": {"p50": 1}}},
    "a metric named suite": {**good(1), "metrics": {"suite": 1.0}},
    "params a list": {**good(1), "params": [1]},
    "a param a list": {**good(1), "params": {"n": [1]}},
    "status a number": {**good(1), "status": 3},
    "error a number": {**good(1), "status": "error", "error": 5},
    "run_id null": {**good(1), "run_id": None},
    "elapsed a string": {**good(1), "elapsed_s": "3 s"},
    "elapsed an int beyond a float": {**good(1), "elapsed_s": 10**400},  # math.isfinite raises on it
    "no case_id": {k: v for k, v in good(1).items() if k != "case_id"},
    "schema true": {**good(1), "schema": True},
    "schema a string": {**good(1), "schema": "1"},
}


def write_run(run_dir: Path, lines: list[str]) -> Path:
    run_dir.mkdir(parents=True)
    write_run_json(run_dir, RunMeta(run_id=run_dir.name, size="smoke", device="cpu", started_at="2026-01-01T00:00:00Z",
                                    finished_at="2026-01-01T00:00:01Z"))
    (run_dir / RECORDS_JSONL).write_text("".join(line + "\n" for line in lines))
    return run_dir


@pytest.mark.parametrize("bad", list(BAD_LINES))
def test_a_line_of_wrong_types_is_a_corrupt_line(tmp_path, bad):
    run = write_run(tmp_path / "r", [json.dumps(good(0)), json.dumps(BAD_LINES[bad])])
    with pytest.warns(UserWarning, match="skipped 1 corrupt line$"):
        assert [r.case_id for r in read_records(run / RECORDS_JSONL)] == ["s/v/n=0"]


def cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@needs("plotly", "pyarrow")
def test_report_compare_history_and_export_count_bad_lines_in_one_warning(capsys, tmp_path):
    lines = [json.dumps(good(0)), *map(json.dumps, BAD_LINES.values()), json.dumps({**good(2), "schema": 2}),
             '{"schema": 1, "run_id": "r1", "su', json.dumps(good(3))]
    run = write_run(tmp_path / "r", lines)
    warning = (f"bench: warning: {run / RECORDS_JSONL}: skipped {len(BAD_LINES) + 1} corrupt lines; skipped 1 line "
               "of schema 2 (this techbench reads 1)\n")
    clean = write_run(tmp_path / "clean", [json.dumps(good(0))])
    for argv in (["report", run, "-o", tmp_path / "r.html"], ["compare", run, clean]):
        code, out, err = cli(capsys, *argv)
        assert code == 0 and set(err.splitlines(keepends=True)) == {warning}, (argv, err)
    # a finished run with corrupt lines is damaged (compare says so): the history, keeping a run for good, refuses
    # it, and so does export, whose import would read as a whole run
    for argv in (["history", "add", run, "--store", tmp_path / "store"],
                 ["export", run, "--format", "pytest-benchmark", "-o", tmp_path / "pb.json"]):
        code, out, err = cli(capsys, *argv)
        said = err.replace(warning, "")
        assert code == 2 and said.count("\n") == 1 and f"{len(BAD_LINES) + 1} corrupt lines" in said, err
    assert not (tmp_path / "store").exists() and not (tmp_path / "pb.json").exists()
    assert "s/v/n=3" in (tmp_path / "r.html").read_text()


@needs("plotly")
def test_a_case_id_recorded_twice_is_said_and_its_last_record_counts(capsys, tmp_path):
    base = write_run(tmp_path / "base", [json.dumps(good(0, 1.0)), json.dumps(good(1)), json.dumps(good(0, 2.0))])
    new = write_run(tmp_path / "new", [json.dumps(good(0, 2.0)), json.dumps(good(1))])
    with pytest.warns(UserWarning, match="1 case_id recorded more than once: kept the last record of each"):
        records = read_records(base / RECORDS_JSONL)
    assert [(r.case_id, r.metrics["value_ms"]) for r in records] == [("s/v/n=0", 2.0), ("s/v/n=1", 1.0)]
    code, out, err = cli(capsys, "compare", base, new)
    assert code == 0 and err.count("recorded more than once") == 1 and err.count("\n") == 1
    with pytest.warns(UserWarning, match="recorded more than once"):
        rows = compare(base, new).rows
    assert rows.set_index("case_id").loc["s/v/n=0", "base"] == 2.0  # the last record's, not the first's 1.0
    code, _, err = cli(capsys, "report", base, "-o", tmp_path / "r.html")
    assert code == 0 and err.count("recorded more than once") == 1 and err.count("\n") == 1
    lines = Counter(json.loads(line)["case_id"] for line in (base / RECORDS_JSONL).read_text().splitlines())
    assert lines["s/v/n=0"] == 2  # readers never rewrite what a run wrote


@pytest.mark.parametrize("field, value, message", [
    ("env", [], "env is list, not an object"),
    ("suites", "x", "suites is str, not an object"),
    ("run_id", None, "run_id is null, not a string"),
    ("argv", {"a": 1}, "argv is dict, not a list"),
    # a suite's declaration, which compare, history and the report's figures index into
    ("suites", {"s": 5}, "suites.s is int, not an object"),
    ("suites", {"s": {"metrics": "x"}}, "suites.s.metrics is str, not an object"),
    ("suites", {"s": {"metrics": {"x_ms": "x"}}}, "suites.s.metrics.x_ms is str, not an object"),
    ("suites", {"s": {"parts": {"a": []}}}, "suites.s.parts.a is list, not an object"),
])
def test_a_run_json_field_of_the_wrong_type_is_one_line_exit_2(capsys, tmp_path, field, value, message):
    run = write_run(tmp_path / "r", [json.dumps(good(0))])
    meta = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**meta, field: value}))
    for argv in (["compare", run, run], ["export", run, "--format", "pytest-benchmark", "-o", tmp_path / "pb.json"],
                 ["report", run, "-o", tmp_path / "r.html"], ["history", "add", run, "--store", tmp_path / "h"]):
        code, _, err = cli(capsys, *argv)
        assert code == 2 and err.count("\n") == 1 and f"{run / 'run.json'}: {message}" in err
