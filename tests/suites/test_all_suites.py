"""Every registered suite runs at smoke size on CPU and writes records that honour the schema; one test per suite,
so that xdist workers share the suites' smoke runs (tests/suites/conftest.py)."""

from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from bench.compare import compare
from bench.metrics import is_clocked, specs_of
from bench.records import RecordWriter, read_run_json, write_run_json
from bench.suite import discover

SUITE_NAMES = sorted(discover())


@pytest.mark.parametrize("name", SUITE_NAMES)
def test_every_suite_and_variant_finishes_at_smoke_size(smoke, name):
    run = smoke(name)
    failed = [(r.case_id, r.error) for r in run.records if r.status not in ("ok", "skipped")]
    assert not failed and run.code == 0
    assert {r.variant for r in run.records} == set(discover()[name].variants), f"{name}: a variant left no record"


@pytest.mark.parametrize("name", SUITE_NAMES)
def test_every_metric_is_declared_by_its_suite(smoke, name):
    """What a metric is (unit, direction, measured or exact) is declared where it is made (bench.metrics)."""
    specs = discover()[name].metric_specs()
    undeclared = set()
    for r in smoke(name).records:
        for metric, value in r.metrics.items():
            assert metric == metric.lower() and " " not in metric
            assert value is None or isinstance(value, (int, float, bool))
            if metric not in specs:
                undeclared.add(metric)
        for metric, samples in r.samples.items():
            assert (metric in r.metrics or metric.endswith("_curve")) and len(samples) >= 1
    assert not undeclared, sorted(undeclared)


@pytest.mark.parametrize("runs_per_side", [1, 3])
@pytest.mark.parametrize("name", SUITE_NAMES)
def test_identical_code_with_noisy_clocks_raises_no_exact_metric_alarm(smoke, tmp_path, name, runs_per_side):
    """An A/A compare of each suite where every clocked metric (and its samples) moved by x1.7 or x0.6, and nothing
    else: the exact metrics are the same on both sides, so none may be called better, worse or changed."""
    out, _, records = smoke(name)
    meta = read_run_json(out)
    specs = specs_of([meta])
    perturbed = Counter()

    def side(label: str, factor: float) -> list[Path]:
        dirs = []
        for k in range(runs_per_side):
            d = tmp_path / label / f"r{k}"
            d.mkdir(parents=True)
            write_run_json(d, {**meta, "run_id": f"{label}{k}"})
            with RecordWriter(d / "records.jsonl") as w:
                for r in records:
                    clocked = {m for m in r.metrics if is_clocked(m, specs.get(r.suite, {}))}
                    f = factor * (1 + 0.01 * k)  # runs of a side differ a little, as real runs do
                    metrics = {m: v * f if m in clocked and isinstance(v, float) else v for m, v in r.metrics.items()}
                    samples = {m: [x * f for x in s] if m in clocked else s for m, s in r.samples.items()}
                    if factor != 1 and r.status == "ok":  # skipped cases (no optional package here) have no clocks
                        perturbed.update({r.suite: sum(metrics[m] != r.metrics[m] for m in clocked)})
                    w.write(replace(r, metrics=metrics, samples=samples))
            dirs.append(d)
        return dirs

    result = compare(side("base", 1.0), side("new", 1.7 if runs_per_side == 1 else 0.6))
    rows = result.rows
    exact = rows[[not is_clocked(m, specs.get(s, {})) for s, m in zip(rows["suite"], rows["metric"], strict=True)]]
    alarms = exact[exact["verdict"].isin(["better", "worse", "changed"])]
    assert alarms.empty, alarms[["case_id", "metric", "base", "new", "verdict"]].to_string()
    ok_suites = {r.suite for r in records if r.status == "ok"}
    assert set(perturbed) == ok_suites and all(perturbed.values()), perturbed  # every suite had clocks to move
