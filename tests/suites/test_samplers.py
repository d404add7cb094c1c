"""The samplers suite at smoke size on CPU: quality metrics are deterministic given the seeds, so they are asserted;
times are not."""

import pytest

from impls.samplers import SAMPLERS
from reports.figures import figures_for, load_frame
from tests.optional import needs


@pytest.fixture(scope="module")
def cases(smoke_records):
    _, by_suite = smoke_records
    return {(r.variant, r.params["model"], r.params["nfe_budget"]): r for rs in by_suite["samplers"].values()
            for r in rs}


def test_every_sampler_reports_quality_and_the_calls_it_made(cases):
    for (variant, model, budget), r in cases.items():
        if r.status == "skipped":
            continue
        assert r.status == "ok", (variant, model, budget, r.error)
        m = r.metrics
        assert 1 <= m["nfe"] <= budget and m["sample_time_ms"] > 0
        if variant in SAMPLERS:
            assert m["nfe"] == SAMPLERS[variant].nfe(m["steps"])
        assert m["sliced_w2"] >= 0 and m["mmd"] >= 0 and 0 <= m["mode_weight_err"] <= 1


def test_with_the_exact_model_more_calls_buy_quality(cases):
    # gmm2d, 500 samples: one step lands far from the ring (sliced W2 > 0.5), 16 calls close to it (< 0.2; two exact
    # draws of this size sit ~0.08 apart).
    for variant in ("ddim", "ode_euler", "ode_heun", "dpm_solver_2m", "flow_euler", "flow_heun"):
        one, sixteen = cases[(variant, "exact", 1)], cases[(variant, "exact", 16)]
        assert one.metrics["sliced_w2"] > 0.5 and sixteen.metrics["sliced_w2"] < 0.2, variant
        assert sixteen.metrics["mode_weight_err"] < one.metrics["mode_weight_err"], variant


def test_only_the_runs_a_sampler_takes_are_cases(cases):
    heun = {budget: r.metrics["nfe"] for (v, model, budget), r in cases.items() if v == "ode_heun" and model == "exact"}
    assert heun == {1: 1, 4: 3, 16: 15, 64: 63}  # 2 calls a step, the last 1
    assert not any(v == "reflow_euler" and model == "exact" for v, model, _ in cases)
    assert [(model, budget) for v, model, budget in cases if v == "nflow"] == [("learned", 1)]
    assert all(r.status == "ok" for r in cases.values())


@needs("plotly")
def test_report_has_the_steps_for_quality_table(smoke_run):
    out, _, _ = smoke_run
    frame = load_frame([out])
    frame = frame[frame["suite"] == "samplers"]
    assert len(figures_for("samplers", frame)) == 3
    from reports.figures.samplers import nfe_to_match

    match = nfe_to_match(frame)
    exact = match[match["panel"] == "gmm2d · exact model"].set_index("variant")
    assert exact.loc["ddpm", "nfe_to_match"] == exact.loc["ddpm", "reference_nfe"] == 64  # the reference matches itself
    assert exact.loc["dpm_solver_2m", "nfe_to_match"] <= 16
