"""Every registered suite runs at smoke size on CPU and writes records that honour the schema."""

from bench.records import DIRECTIONS, direction
from bench.suite import discover

UNITS = ("_ms", "_s", "_bytes", "_flops", "_tflops", "_gbps", "_per_s", "_j", "_w", "_mhz", "_db", "_x", "_c",
         "_noisy")


def test_every_suite_and_variant_finishes_at_smoke_size(smoke_records):
    code, by_suite = smoke_records
    failed = [(r.case_id, r.error) for variants in by_suite.values() for rs in variants.values() for r in rs
              if r.status not in ("ok", "skipped")]
    assert not failed and code == 0
    for name, suite in discover().items():
        assert set(by_suite[name]) == set(suite.variants), f"{name}: a variant left no record"


def test_metric_names_carry_a_unit_or_a_direction(smoke_records):
    _, by_suite = smoke_records
    for variants in by_suite.values():
        for records in variants.values():
            for r in records:
                for metric, value in r.metrics.items():
                    assert metric == metric.lower() and " " not in metric
                    known = metric.endswith(UNITS) or direction(metric) is not None or metric in DIRECTIONS
                    assert known, f"{r.case_id}: metric {metric!r} has no unit suffix or direction"
                    assert value is None or isinstance(value, (int, float, bool))
                for metric, samples in r.samples.items():
                    assert (metric in r.metrics or metric.endswith("_curve")) and len(samples) >= 1
