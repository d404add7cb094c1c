"""The work a case declares and what the harness derives from it (bench.work)."""

import pytest

from bench.metrics import is_clocked
from bench.work import Work, rates


def test_rates_from_tokens_items_flops_and_bytes():
    w = Work("step_time", "x_", tokens=1000, items=4, item="image", flops=2e12, bytes=3e9, dtype="bfloat16")
    got = w.derive(median_ms=500.0, peak_tflops=1000.0, peak_gbps=4000.0, power_w=600.0)
    assert got["x_tokens_per_s"] == pytest.approx(2000.0)
    assert got["x_images_per_s"] == pytest.approx(8.0)
    assert got["x_tflops"] == pytest.approx(4.0)
    assert got["x_pct_of_peak"] == pytest.approx(0.4)
    assert got["x_gbps"] == pytest.approx(6.0)
    assert got["x_pct_of_bandwidth"] == pytest.approx(0.15)
    # compute 2e12 / 1e15 = 2 ms, memory 3e9 / 4e12 = 0.75 ms: the bound is the compute side
    assert got["x_roofline_ms"] == pytest.approx(2.0)
    assert got["x_pct_of_roofline"] == pytest.approx(0.4)
    # 600 W x 0.5 s = 300 J a call
    assert got["x_energy_per_token_j"] == pytest.approx(0.3)
    assert got["x_energy_per_image_j"] == pytest.approx(75.0)


def test_memory_bound_roofline():
    got = Work("t", bytes=8e9, flops=1e9, dtype="bfloat16").derive(10.0, peak_tflops=1000.0, peak_gbps=4000.0,
                                                                    power_w=None)
    assert got["roofline_ms"] == pytest.approx(2.0)  # 8e9 / 4e12 s
    assert got["pct_of_roofline"] == pytest.approx(20.0)


def test_unknown_peaks_and_power_give_nulls_not_guesses():
    got = Work("t", tokens=10, flops=1e9, bytes=1e6, dtype="float32").derive(1.0, None, None, None)
    assert got["tokens_per_s"] == pytest.approx(10_000.0) and got["tflops"] == pytest.approx(1.0)
    for name in ("pct_of_peak", "pct_of_bandwidth", "roofline_ms", "pct_of_roofline", "energy_per_token_j"):
        assert got[name] is None, name


def test_declared_specs_match_the_derived_names():
    cases = [dict(tokens=True), dict(item="seq"), dict(flops=True), dict(bytes=True),
             dict(tokens=True, item="image", flops=True, bytes=True)]
    for flags in cases:
        work = Work("t", "p_", tokens=1 if flags.get("tokens") else None, items=1 if flags.get("item") else None,
                    item=flags.get("item") or "item", flops=1 if flags.get("flops") else None,
                    bytes=1 if flags.get("bytes") else None, dtype="bfloat16")
        specs = {m.name: m for m in rates("t", "p_", **flags)}
        assert set(specs) == set(work.derive(1.0, 1.0, 1.0, 1.0)), flags
        # every rate comes from the clock, so compare judges it statistically
        rated = [n for n in specs if n.endswith(("_per_s", "tflops", "gbps"))]
        assert rated and all(is_clocked(n, {**specs, "t_ms": _measured("t_ms")}) for n in rated)


def _measured(name):
    from bench.metrics import Metric

    return Metric(name, "measured", "lower")


@pytest.mark.parametrize("prefix", ["", "gemm_"])
def test_rates_carry_their_units_with_or_without_a_prefix(prefix):
    # a bare "tflops" or "gbps" has no unit suffix to fall back on: the report's column would show no unit
    units = {m.name: m.unit for m in rates("step_time", prefix, tokens=True, flops=True, bytes=True)}
    assert units[f"{prefix}tflops"] == "TFLOP/s" and units[f"{prefix}gbps"] == "GB/s"
    assert units[f"{prefix}tokens_per_s"] == "tokens/s" and units[f"{prefix}pct_of_peak"] == "%"
