"""Numbers at the edges of what a comparison meets: run values ~1e10 apart, and a bootstrap interval with no upper
end (base samples at 0, as a coarse timer reads a tiny call). The comparison reports them; it does not crash, and
its JSON for scripts stays valid JSON."""

import json
import math

from bench.compare import compare
from bench.stats import compare_runs, compare_samples
from tests.runs import write_run


def test_run_values_far_apart_give_an_unbounded_interval_not_an_overflow():
    t = compare_runs([1.0, 1.00001], [1.0, 1e10])
    assert t.change == "noisy" and math.isinf(t.ci_high) and t.ci_low >= 0


def _run(root, name, samples):
    record = {"suite": "toy", "variant": "a", "params": {"n": 1},
              "metrics": {"step_time_ms": sorted(samples)[len(samples) // 2]}, "samples": {"step_time_ms": samples}}
    return write_run(root, name, [record])


def test_an_infinite_interval_end_is_null_in_the_json(tmp_path):
    base, new = [0.0] * 10 + [0.001] * 24, [0.001] * 34
    assert math.isinf(compare_samples(base, new).ci_high)  # a tenth of the base medians drawn are 0
    c = compare(_run(tmp_path, "base", base), _run(tmp_path, "new", new))
    row = json.loads(json.dumps(c.to_json(), allow_nan=False))["rows"][0]
    assert row["metric"] == "step_time_ms" and row["ci_high"] is None and row["ratio"] == 1.0
