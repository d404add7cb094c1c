"""A metric measure() returned as NaN or an infinity: null in the record (JSON has no spelling for it) and named
under the record's `nonfinite`, so that a diverged loss is told from a metric that was not measured, in the frames,
the report and compare."""

import json
import math

import pandas as pd
import pytest
import torch

from bench import runner
from bench.rank_metrics import aggregate
from bench.records import RECORDS_JSONL, Record, long_frame, read_records, records_frame
from bench.suite import SUITES, Measurement, Metric, Suite, register
from bench.validation import check_fields, nonfinite
from tests.runs import write_run


@register
class Diverging(Suite):
    """A training whose loss diverged (NaN), a quantizer exact on its input (SQNR +inf), and a case that is fine."""

    name = "_diverging"
    variants = {"fine": "reference", "diverged": "loss NaN, SQNR inf, a gap -inf"}
    metrics = (Metric("step_time_ms", "measured", "lower", "a step"), Metric("loss", "measured", "lower", "loss"),
               Metric("sqnr_db", "measured", "higher", "SQNR"), Metric("gap_x", "measured", "lower", "a gap"))

    def grid(self, size, device):
        return [{"n": 1}]

    def measure(self, variant, params, device):
        if variant == "fine":
            return Measurement({"step_time_ms": 1.0, "loss": 0.5, "sqnr_db": 30.0, "gap_x": 1.0})
        return Measurement({"step_time_ms": 1.0, "loss": torch.tensor(math.nan), "sqnr_db": math.inf,
                            "gap_x": -math.inf})


@pytest.mark.parametrize("inline", [True, False])
def test_a_nan_loss_is_null_and_named_in_the_record(tmp_path, inline):
    cfg = runner.RunConfig(suites=[SUITES["_diverging"]], size="smoke", device="cpu", out=tmp_path / "r",
                           inline=inline)
    code, records = runner.run(cfg)
    by = {r.variant: r for r in records}
    assert code == 0 and by["diverged"].status == "ok"
    assert {k: by["diverged"].metrics[k] for k in ("step_time_ms", "loss", "sqnr_db", "gap_x")} == {
        "step_time_ms": 1.0, "loss": None, "sqnr_db": None, "gap_x": None}
    assert by["diverged"].nonfinite == {"loss": "nan", "sqnr_db": "inf", "gap_x": "-inf"}
    assert by["fine"].nonfinite == {}
    lines = {(d := json.loads(line))["variant"]: d for line in (cfg.out / RECORDS_JSONL).read_text().splitlines()}
    assert lines["diverged"]["nonfinite"] == {"loss": "nan", "sqnr_db": "inf", "gap_x": "-inf"}
    assert "nonfinite" not in lines["fine"]  # a record with nothing to name is the line it always was
    assert read_records(cfg.out / RECORDS_JSONL) == records
    long = long_frame(cfg.out)
    named = long[long["variant"] == "diverged"].set_index("metric")["nonfinite"]
    assert named["loss"] == "nan" and named["sqnr_db"] == "inf" and pd.isna(named["step_time_ms"])
    frame = records_frame(cfg.out).set_index("variant")
    assert frame.loc["diverged", "nonfinite"] == {"loss": "nan", "sqnr_db": "inf", "gap_x": "-inf"}


def test_what_nonfinite_names_and_what_a_reader_refuses():
    assert nonfinite({"a": math.nan, "b": 1.0, "c": torch.tensor(-math.inf), "d": None, "e": True}) == {
        "a": "nan", "c": "-inf"}
    line = {"run_id": "r", "suite": "s", "variant": "v", "params": {}, "case_id": "s/v/", "status": "ok",
            "metrics": {"loss": None}}
    assert check_fields({**line, "nonfinite": {"loss": "nan"}})["nonfinite"] == {"loss": "nan"}
    for bad in ({"loss": "NaN"}, {"loss": 1.0}, ["loss"]):
        with pytest.raises(ValueError, match="nonfinite is not an object of metric names to nan, inf, -inf"):
            check_fields({**line, "nonfinite": bad})
    assert Record(**check_fields(line)).nonfinite == {}  # a record written before the field: nothing named


def test_a_rank_that_measured_nan_makes_the_jobs_metric_nan():
    ok = {"status": "ok", "metrics": {"loss": 0.5, "step_time_ms": 2.0}, "samples": {}, "error": None}
    diverged = {**ok, "metrics": {"loss": None, "step_time_ms": 3.0}, "nonfinite": {"loss": "nan"}}
    result = aggregate([ok, diverged], {"loss": "lower", "step_time_ms": "lower"})
    assert result["metrics"]["loss"] is None and result["nonfinite"] == {"loss": "nan"}
    assert result["metrics"]["step_time_ms"] == 3.0 and "rank_max_loss" not in result["metrics"]
    assert "nonfinite" not in aggregate([ok, ok], {"loss": "lower"})


def test_the_report_says_nan_where_a_metric_was_measured_so(tmp_path):
    from reports.run_report import render

    run = write_run(tmp_path, "r", [
        {"suite": "_diverging", "variant": "fine", "params": {"n": 1}, "metrics": {"loss": 0.5, "sqnr_db": 30.0}},
        {"suite": "_diverging", "variant": "diverged", "params": {"n": 1}, "metrics": {"loss": None, "sqnr_db": None},
         "nonfinite": {"loss": "nan", "sqnr_db": "inf"}}], gpu=None)
    page = render([run])
    assert ">NaN<" in page and ">inf<" in page
    only = write_run(tmp_path, "o", [  # a metric NaN in every case still has its column
        {"suite": "_diverging", "variant": "diverged", "params": {"n": 1}, "metrics": {"gap_x": None},
         "nonfinite": {"gap_x": "-inf"}}], gpu=None)
    assert ">-inf<" in render([only])


def _side(root, name, loss, sqnr, nonfinite=None):
    """A run of one _diverging case, its run.json declaring the suite as `bench run` does (loss lower is better)."""
    run = write_run(root, name, [{"suite": "_diverging", "variant": "diverged", "params": {"n": 1},
                                  "metrics": {"loss": loss, "sqnr_db": sqnr}, "nonfinite": nonfinite or {}}], gpu=None)
    meta = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**meta, "suites": {"_diverging": SUITES["_diverging"].describe()}}))
    return run


def test_compare_fails_on_a_loss_gone_nan_and_says_so_everywhere(tmp_path):
    from bench.compare import compare
    from reports.compare_page import write_compare_html

    base = _side(tmp_path, "base", 0.5, 30.0)
    new = _side(tmp_path, "new", None, None, {"loss": "nan", "sqnr_db": "inf"})
    c = compare([base], [new])
    assert [(x["metric"], x["side"], x["value"], x["other"], x["worse"]) for x in c.nonfinite] == [
        ("loss", "new", "nan", 0.5, True), ("sqnr_db", "new", "inf", 30.0, False)]  # an exact SQNR is no failure
    assert c.failed and not c.one_side  # neither is "on one side only": each is said for what it is
    text = "\n".join(c.summary_lines())
    assert "NaN or infinite on one side (2)" in text and "fails on those NEW went NaN" in text
    assert "worse       _diverging/diverged/n=1  loss  0.5 -> nan" in text
    assert "changed     _diverging/diverged/n=1  sqnr_db  30 -> inf" in text
    assert c.to_json()["nonfinite"] == c.nonfinite and c.to_json()["gate"]["failed"]
    page = write_compare_html(c, tmp_path / "c.html").read_text()
    assert "NaN or infinite on one side (2)" in page and ">nan<" in page
    # an exact SQNR alone fails nothing; NaN on both sides is no change; a recovery is said, and fails nothing
    assert not compare([base], [_side(tmp_path, "exact", 0.5, None, {"sqnr_db": "inf"})]).failed
    both = _side(tmp_path, "nan2", None, 30.0, {"loss": "nan"})
    assert compare([_side(tmp_path, "nan1", None, 30.0, {"loss": "nan"})], [both]).nonfinite == []
    back = compare([both], [base])
    assert [(x["side"], x["worse"]) for x in back.nonfinite] == [("base", False)] and not back.failed


def test_the_history_keeps_what_was_nan_and_the_dashboard_lists_a_loss_gone_nan(tmp_path):
    pytest.importorskip("pyarrow")
    pytest.importorskip("plotly")
    from bench import history
    from reports import dashboard

    store = tmp_path / "store"
    case = {"suite": "fp8", "variant": "tensorwise", "params": {"part": "training", "steps": 20}}
    for night, (loss, named) in enumerate([(2.0, {}), (2.1, {}), (None, {"final_loss": "nan"})]):
        history.add(write_run(tmp_path / "runs", f"n{night}", [{**case, "metrics": {"final_loss": loss},
                                                                "nonfinite": named}],
                              started_at=f"2026-11-0{night + 1}T01:00:00Z"), store)
    rows = history.load(store)
    assert rows[rows["run_id"] == "n2"]["nonfinite"].tolist() == ["nan"]
    assert rows[rows["run_id"] == "n1"]["nonfinite"].isna().all()
    said = []
    text = dashboard.build(store, tmp_path / "site", said=said.append).read_text()
    newly = text[text.index("Newly failing in the latest run"):]
    assert "final_loss measured nan (2.1 the run before)" in newly and "n2" in newly
    assert said and "newly failing" in said[0]


def test_the_dashboard_counts_a_case_once_whatever_metrics_went_nan_and_names_the_run_a_value_came_from(tmp_path):
    pytest.importorskip("pyarrow")
    pytest.importorskip("plotly")
    from bench import history
    from reports import dashboard

    store = tmp_path / "store"
    diverged = {"suite": "fp8", "variant": "tensorwise", "params": {"part": "training", "steps": 20}}
    back = {**diverged, "variant": "rowwise"}  # failed the night before, back tonight with its loss NaN
    gaps = {"loss_gap_final": 0.01, "loss_gap_mean": 0.01}
    nights = [[{**diverged, "metrics": {"final_loss": 2.0, **gaps}}, {**back, "metrics": {"final_loss": 2.5}}],
              [{**diverged, "metrics": {"final_loss": 2.1, **gaps}},
               {**back, "status": "error", "error": "RuntimeError: boom"}],
              [{**diverged, "metrics": dict.fromkeys(("final_loss", *gaps)),
                "nonfinite": dict.fromkeys(("final_loss", *gaps), "nan")},
               {**back, "metrics": {"final_loss": None}, "nonfinite": {"final_loss": "nan"}}]]
    for night, records in enumerate(nights):
        history.add(write_run(tmp_path / "runs", f"n{night}", records, started_at=f"2026-11-0{night + 1}T01:00:00Z"),
                    store)
    said = []
    text = dashboard.build(store, tmp_path / "site", said=said.append).read_text()
    assert said == ["0 current regressions; 2 cases newly failing"], said
    assert "fp8 (0 regressions, 2 newly failing)" in text.replace("</a> ", " ")
    newly = text[text.index("Newly failing in the latest run"):]
    assert ("final_loss measured nan (2.1 the run before); loss_gap_final measured nan (0.01 the run before); "
            "loss_gap_mean measured nan (0.01 the run before)") in newly
    assert "final_loss measured nan (2.5 in run n0)" in newly  # not "the run before": that run failed it
