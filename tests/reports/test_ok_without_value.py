"""An ok case without a panel's metric (rmpad's FlexAttention on a CPU records no peak) is drawn in that panel with
the reason its run gives, not left out unsaid."""

import pytest

from tests.optional import require

require("plotly")

from reports.figures import NO_VALUE, figures_for, lacking, load_frame  # noqa: E402
from tests.runs import write_run  # noqa: E402

PADS = {"uniform": 0.41, "lognormal": 0.82}


def forward_records() -> list[dict]:
    """A smoke run's forward cases on a CPU: padded and segments with a peak, flex timed but without one."""
    out = []
    for dist, pad in PADS.items():
        params = {"d_model": 32, "heads": 2, "layers": 2, "vocab": 128, "dist": dist, "max_len": 64,
                  "real_tokens": 512, "mode": "forward", "dtype": "float32"}
        for variant, time_x, peak in (("padded", 1.0, 4e6), ("segments", 0.7, 2e6), ("flex", 0.9, None)):
            out.append({"suite": "rmpad", "variant": variant, "params": params,
                        "metrics": {"step_time_ms": 10 * time_x, "pad_fraction": pad, "speedup_x": 1 / time_x,
                                    "peak_mem_bytes": peak, "mem_saving_x": None if peak is None else 4e6 / peak}})
    return out


def forward_figure(tmp_path, declare: bool):
    frame = load_frame([write_run(tmp_path, "smoke", forward_records(), gpu=None, size="smoke", declare=declare)])
    return next(f for f in figures_for("rmpad", frame) if f.layout.title.text.startswith("forward:"))


@pytest.mark.parametrize("declare, reason", [
    # the meaning rmpad declares for peak_mem_bytes, which mem_saving_x is computed from
    (True, "no peak_mem_bytes recorded (peak bytes over one step; null for flex on CPU (not trackable))"),
    (False, "no mem_saving_x recorded"),  # a run that declared nothing: the bare fact, no reason made up
])
def test_flex_without_a_peak_is_marked_in_the_memory_panel_with_the_reason(tmp_path, declare, reason):
    fig = forward_figure(tmp_path, declare)
    (marked,) = [t for t in fig.data if t.legendgroup == f"status:{NO_VALUE}"]
    assert marked.xaxis == "x" and marked.name == NO_VALUE and marked.showlegend  # the memory panel, in the legend
    assert sorted(marked.x) == sorted(PADS.values())  # at flex's own pad fractions
    assert {row[0].split("/")[1] for row in marked.customdata} == {"flex"}
    assert {row[3] for row in marked.customdata} == {reason}
    lines = {(t.name, t.xaxis) for t in fig.data if t.mode == "lines+markers"}
    assert ("flex", "x2") in lines and ("flex", "x") not in lines  # timed: a line in the speed-up panel alone


def test_lacking_leaves_failed_and_measured_rows_as_they_are(tmp_path):
    frame = load_frame([write_run(tmp_path, "smoke", [*forward_records(), {
        "suite": "rmpad", "variant": "nested", "params": forward_records()[0]["params"], "status": "skipped",
        "error": "no nested tensors here"}], gpu=None, size="smoke")])
    out = lacking(frame, "mem_saving_x")
    assert list(out["status"]) == [NO_VALUE if v == "flex" else s for v, s in zip(frame["variant"], frame["status"])]
    assert out.loc[frame["variant"] == "nested", "error"].tolist() == ["no nested tensors here"]
    assert lacking(frame, "speedup_x") is frame  # every ok case has it: nothing to mark


def test_a_metric_measured_nan_is_marked_as_measured_so_not_as_unrecorded(tmp_path):
    records = forward_records()
    for r in records:
        if r["variant"] == "padded":
            r["metrics"]["speedup_x"], r["nonfinite"] = None, {"speedup_x": "inf"}
    out = lacking(load_frame([write_run(tmp_path, "smoke", records, gpu=None, size="smoke")]), "speedup_x")
    assert set(out.loc[out["variant"] == "padded", "error"]) == {"speedup_x measured inf"}
    assert set(out.loc[out["variant"] == "padded", "status"]) == {NO_VALUE}


def test_a_ratio_whose_input_was_measured_nan_says_so_not_that_the_input_was_not_recorded(tmp_path):
    records = forward_records()
    for r in records:
        if r["variant"] == "segments":  # its peak measured NaN: mem_saving_x, computed from it, has no value
            r["metrics"]["peak_mem_bytes"] = r["metrics"]["mem_saving_x"] = None
            r["nonfinite"] = {"peak_mem_bytes": "nan"}
    out = lacking(load_frame([write_run(tmp_path, "smoke", records, gpu=None, size="smoke")]), "mem_saving_x")
    assert set(out.loc[out["variant"] == "segments", "error"]) == {"mem_saving_x: peak_mem_bytes measured NaN"}
    assert set(out.loc[out["variant"] == "flex", "error"]) == {
        "no peak_mem_bytes recorded (peak bytes over one step; null for flex on CPU (not trackable))"}
