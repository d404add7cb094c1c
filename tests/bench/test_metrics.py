"""Metric specs: declared by suites, defaulted by unit suffix only, and what compare makes of each kind."""

import json

import pytest

from bench.compare import compare
from bench.metrics import Metric, default, is_clocked, ranks, ratio, timing
from bench.suite import Relative, Suite
from tests.runs import write_run


@pytest.mark.parametrize("name, kind, direction, unit", [
    ("step_time_ms", "measured", "lower", "ms"), ("peak_mem_bytes", "exact", "lower", "bytes"),
    ("tokens_per_s", "measured", "higher", "1/s"), ("wall_s", "measured", "lower", "s"),
    ("gemm_tflops", "measured", "higher", "TFLOP/s"), ("sqnr_db", "exact", "higher", "dB"),
    ("step_time_p20_ms", "info", None, "ms"), ("step_time_noisy", "info", None, ""),
    ("sm_clock_mhz", "info", None, "MHz"), ("speedup_x", "info", None, "x"), ("alltoall_share", "info", None, ""),
])
def test_defaults_come_from_the_unit_suffix_alone(name, kind, direction, unit):
    spec = default(name)
    assert (spec.kind, spec.direction, spec.unit) == (kind, direction, unit)


def test_specs_check_themselves():
    with pytest.raises(ValueError, match="kind 'timed'"):
        Metric("a_ms", "timed")
    with pytest.raises(ValueError, match="direction 'up'"):
        Metric("a_ms", "measured", "up")
    with pytest.raises(ValueError, match="names no inputs"):
        Metric("share", "derived", "lower")
    assert Metric.from_json(Metric("r", "derived", "higher", "x", inputs=("a_ms",)).to_json()).inputs == ("a_ms",)


def test_derived_metrics_inherit_measuredness():
    specs = {s.name: s for s in (*timing("step_time", "a step"), Metric("peak_mem_bytes", "exact", "lower"),
                                 Metric("share", "derived", "lower", inputs=("comm_ms", "step_time_ms")),
                                 Metric("comm_ms", "measured", "lower"),
                                 Metric("bytes_x", "derived", "lower", inputs=("peak_mem_bytes",)),
                                 Metric("loop_a", "derived", None, inputs=("loop_b",)),
                                 Metric("loop_b", "derived", None, inputs=("loop_a",)))}
    assert is_clocked("share", specs) and is_clocked("step_time_ms", specs)
    assert not is_clocked("bytes_x", specs) and not is_clocked("step_time_p20_ms", specs)
    assert not is_clocked("loop_a", specs)  # a cycle ends, as not clocked


def test_ratios_and_ranks_follow_their_input():
    time, mem = Metric("t_ms", "measured", "lower"), Metric("m_bytes", "exact", "lower")
    assert ratio("speedup_x", time, invert=True).direction == "higher"
    assert ratio("overhead_x", time, invert=False).direction == "lower"
    assert ratio("saving_x", mem, invert=True).inputs == ("m_bytes",)
    assert [r.name for r in ranks(time)] == ["rank_min_t_ms", "rank_mean_t_ms", "rank_max_t_ms"]
    assert all(r.kind == "info" for r in ranks(time))


def test_a_suite_gets_the_harness_specs_too():
    class Tiny(Suite):
        name = "_tiny"
        variants = {"a": "reference"}
        metrics = (*timing("step_time", "a step"), Metric("peak_mem_bytes", "exact", "lower", "peak"))
        relative = (Relative("speedup_x", "step_time_ms", invert=True),)
        world_sizes = (1, 2)

    specs = Tiny().metric_specs()
    assert specs["speedup_x"].direction == "higher" and is_clocked("speedup_x", specs)
    assert {"energy_j", "throttled", "rank_max_peak_mem_bytes", "rank_min_step_time_ms"} <= set(specs)
    described = Tiny().describe()
    assert described["reference"] == "a" and described["metrics"]["peak_mem_bytes"]["kind"] == "exact"


def _runs(tmp_path, name, share, loss, declare=True):
    metrics = {"alltoall_share": share, "final_loss": loss}
    suites = {"_decl": {"metrics": {"alltoall_share": Metric("alltoall_share", "derived", "lower",
                                                             inputs=("comm_ms",)).to_json(),
                                    "comm_ms": Metric("comm_ms", "measured", "lower").to_json(),
                                    "final_loss": Metric("final_loss", "exact", "lower").to_json()}}}
    d = write_run(tmp_path, name, [{"suite": "_decl", "variant": "a", "metrics": metrics}], declare=False)
    if declare:
        meta = json.loads((d / "run.json").read_text())
        (d / "run.json").write_text(json.dumps({**meta, "suites": suites}))
    return d


def test_compare_reads_what_each_run_declared(tmp_path):
    base, new = _runs(tmp_path, "b", 0.056, 2.0), _runs(tmp_path, "n", 0.090, 2.5)
    rows = compare(base, new).rows.set_index("metric")
    assert rows.loc["alltoall_share", "verdict"] == "n/a"  # a share of two times: clocked, one run a side
    assert rows.loc["final_loss", "verdict"] == "worse"  # exact, with a direction
    # an older run that declared nothing: no suffix, so shown but never judged
    old = compare(_runs(tmp_path, "ob", 0.056, 2.0, False), _runs(tmp_path, "on", 0.09, 2.5, False)).rows
    assert set(old["verdict"]) == {"n/a"}
