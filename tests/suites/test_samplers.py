"""The samplers suite at smoke size on CPU: quality metrics are deterministic given the seeds, so they are asserted;
times are not. diffusers', torchdiffeq's and torchsde's variants run where the library is installed and are recorded
as skipped where it is not."""

import json

import pytest

from impls.libraries import ECOSYSTEM
from impls.samplers import diffusers_schedulers, torchdiffeq_solvers, torchsde_solvers
from reports.figures import figures_for, load_frame
from suites.samplers import ADAPTIVE, CONTINUOUS_MAX_NFE, DIFFUSERS, GRIDS, SPECS, Samplers
from tests.optional import missing, needs

HAS_DIFFUSERS = not missing("diffusers")
NO_DIFFUSERS = f'needs diffusers, which is not installed (pip install {ECOSYSTEM})'
HAS_TORCHDIFFEQ = not missing("torchdiffeq")
NO_TORCHDIFFEQ = f'needs torchdiffeq, which is not installed (pip install {ECOSYSTEM})'
TORCHDIFFEQ = set(torchdiffeq_solvers.PAIRED_WITH)
DOPRI5 = "torchdiffeq_dopri5"
HAS_TORCHSDE = not missing("torchsde")
NO_TORCHSDE = f'needs torchsde, which is not installed (pip install {ECOSYSTEM})'
TORCHSDE = set(torchsde_solvers.PAIRED_WITH)


@pytest.fixture(scope="module")
def cases(smoke_records):
    """(variant, model, nfe_budget) -> record, of the cases run on an NFE budget."""
    _, by_suite = smoke_records
    return {(r.variant, r.params["model"], r.params["nfe_budget"]): r for rs in by_suite["samplers"].values()
            for r in rs if "nfe_budget" in r.params}


@pytest.fixture(scope="module")
def adaptive(smoke_records):
    """(variant, model, tol) -> record, of the adaptive solvers' cases, named by tolerance."""
    _, by_suite = smoke_records
    return {(r.variant, r.params["model"], r.params["tol"]): r for rs in by_suite["samplers"].values()
            for r in rs if "tol" in r.params}


def test_every_sampler_reports_quality_and_the_calls_it_made(cases):
    for (variant, model, budget), r in cases.items():
        if r.status == "skipped":
            continue
        assert r.status == "ok", (variant, model, budget, r.error)
        m = r.metrics
        assert 1 <= m["nfe"] <= budget and m["sample_time_ms"] > 0
        if variant in SPECS:
            assert m["nfe"] == SPECS[variant].nfe(m["steps"])
        assert m["sliced_w2"] >= 0 and m["mmd"] >= 0 and 0 <= m["mode_weight_err"] <= 1


def test_with_the_exact_model_more_calls_buy_quality(cases):
    # gmm2d, 500 samples: one step lands far from the ring (sliced W2 > 0.5), 16 calls close to it (< 0.2; two exact
    # draws of this size sit ~0.08 apart).
    for variant in ("ddim", "ode_euler", "ode_heun", "dpm_solver_2m", "flow_euler", "flow_heun"):
        one, sixteen = cases[(variant, "exact", 1)], cases[(variant, "exact", 16)]
        assert one.metrics["sliced_w2"] > 0.5 and sixteen.metrics["sliced_w2"] < 0.2, variant
        assert sixteen.metrics["mode_weight_err"] < one.metrics["mode_weight_err"], variant


def test_only_the_runs_a_sampler_takes_are_cases(cases, adaptive):
    heun = {budget: r.metrics["nfe"] for (v, model, budget), r in cases.items() if v == "ode_heun" and model == "exact"}
    assert heun == {1: 1, 4: 3, 16: 15, 64: 63}  # 2 calls a step, the last 1
    assert not any(v == "reflow_euler" and model == "exact" for v, model, _ in cases)
    assert [(model, budget) for v, model, budget in cases if v == "nflow"] == [("learned", 1)]
    rk4 = {budget for v, model, budget in cases if v == "torchdiffeq_rk4" and model == "exact"}
    assert rk4 == {4, 16, 64}  # 4 calls a step: no case at 1
    # sdeint's shape check costs a call: no case at 1, euler's budget b buys b - 1 steps, srk's (b - 1) // 3
    sde = {(v, budget): r.metrics.get("steps") for (v, model, budget), r in cases.items()
           if v in TORCHSDE and model == "exact"}
    assert set(sde) == {(v, b) for v in TORCHSDE for b in (4, 16, 64)}
    if HAS_TORCHSDE:
        assert sde == {("torchsde_euler", 4): 3, ("torchsde_euler", 16): 15, ("torchsde_euler", 64): 63,
                       ("torchsde_srk", 4): 1, ("torchsde_srk", 16): 5, ("torchsde_srk", 64): 21}
    for (variant, _, _), r in {**cases, **adaptive}.items():
        if variant in DIFFUSERS and not HAS_DIFFUSERS:
            assert r.status == "skipped" and r.error == NO_DIFFUSERS
        elif variant in TORCHDIFFEQ and not HAS_TORCHDIFFEQ:
            assert r.status == "skipped" and r.error == NO_TORCHDIFFEQ
        elif variant in TORCHSDE and not HAS_TORCHSDE:
            assert r.status == "skipped" and r.error == NO_TORCHSDE
        else:
            assert r.status == "ok", (variant, r.error)
    # the adaptive solvers run on tolerances alone, and nothing else does
    assert {(v, model, tol) for v, model, tol in adaptive} == {
        (v, model, tol) for v in ADAPTIVE for model in ("exact", "learned") for tol in GRIDS["smoke"]["tol"]}
    assert not any(v in ADAPTIVE for v, _, _ in cases)


def test_diffusers_runs_and_budgets_are_ours():
    suite, params = Samplers(), {"target": "gmm2d", "model": "exact", "n": 8}
    # past CONTINUOUS_MAX_NFE only the training-grid samplers run, diffusers' DDPM and DDIM as ours
    big = {v for v in suite.variants if v in SPECS and suite.applies(v, {**params, "nfe_budget": 1000})}
    assert big == {"ddpm", "ddim", "ddim_eta0.5", "diffusers_ddpm", "diffusers_ddim"} and CONTINUOUS_MAX_NFE < 1000
    heun = {b: SPECS["diffusers_heun"].nfe(SPECS["diffusers_heun"].steps_for(b)) for b in (1, 4, 16, 64)
            if suite.applies("diffusers_heun", {**params, "nfe_budget": b})}
    assert heun == {1: 1, 4: 3, 16: 15, 64: 63}


def test_quick_runs_1000_nfe_only_where_its_figures_read_it():
    suite = Samplers()

    def cases_at(size):  # the cases on an NFE budget
        return {(v, p["model"], p["nfe_budget"]) for p in suite.grid(size, "cpu") for v in suite.variants
                if "nfe_budget" in p and suite.has_case(v, p)}

    quick = cases_at("quick")
    assert sorted({b for _, _, b in quick}) == [1, 4, 8, 16, 32, 64, 1000]  # no 2: no figure reads it
    # DDPM's 1000 steps are the reference on both models; the learned model's DDIM first matches it there
    assert sorted((v, m) for v, m, b in quick if b == 1000) == [("ddim", "learned"), ("ddpm", "exact"),
                                                                ("ddpm", "learned")]
    # below 1000 every variant keeps its curve, and its cases keep their ids (no `only` param)
    for p in suite.grid("quick", "cpu"):
        assert ("only" in p) == (p.get("nfe_budget") == 1000)
    assert {(v, m) for v, m, _ in quick} == {(v, m) for v, m, _ in cases_at("smoke")}
    # smoke and full are as they were: full runs every training-grid sampler at 1000
    assert not any("only" in p for size in ("smoke", "full") for p in suite.grid(size, "cpu"))
    assert {v for v, _, b in cases_at("full") if b == 1000} == {"ddpm", "ddim", "ddim_eta0.5", "diffusers_ddpm",
                                                                "diffusers_ddim"}


@pytest.mark.skipif(not HAS_DIFFUSERS, reason=NO_DIFFUSERS)
def test_diffusers_reproductions_read_the_same_numbers(cases):
    # diffusers_ddpm is our ddpm, diffusers_flow_euler our flow_euler (tests/impls/test_samplers_diffusers.py), and
    # each starts from the noise of its pair: the same samples to float32 rounding, so the same quality
    for theirs, ours in (("diffusers_ddpm", "ddpm"), ("diffusers_flow_euler", "flow_euler")):
        pairs = [(r, cases[(ours, model, budget)]) for (v, model, budget), r in cases.items() if v == theirs]
        assert len(pairs) == 8  # 2 models x 4 budgets
        for r, ref in pairs:
            assert r.metrics["nfe"] == ref.metrics["nfe"]
            assert r.metrics["sliced_w2"] == pytest.approx(ref.metrics["sliced_w2"], abs=1e-4), r.case_id


def test_run_declares_the_libraries(smoke_run):
    out, _, _ = smoke_run
    libraries = json.loads((out / "run.json").read_text())["suites"]["samplers"]["libraries"]
    assert libraries == {**{v: diffusers_schedulers.label() for v in DIFFUSERS},
                         **{v: torchdiffeq_solvers.label() for v in TORCHDIFFEQ},
                         **{v: torchsde_solvers.label() for v in TORCHSDE}}


def test_quick_adds_few_torchdiffeq_cases():
    # the whole quick run stays within 5 min on 2 CPUs: 12 euler, 10 rk4 and 8 dopri5 cases (tolerances 1e-1 to 1e-4)
    suite = Samplers()
    count = {v: sum(suite.has_case(v, p) for p in suite.grid("quick", "cpu")) for v in TORCHDIFFEQ}
    assert count == {"torchdiffeq_euler": 12, "torchdiffeq_rk4": 10, DOPRI5: 8}
    assert GRIDS["full"]["tol"][-1] == 1e-5  # score_sde's rtol = atol for the probability-flow ODE


def test_quick_adds_few_torchsde_cases():
    # 5 budgets (4 to 64; 1 buys no run, 1000 is past CONTINUOUS_MAX_NFE) x 2 models each
    suite = Samplers()
    count = {v: sum(suite.has_case(v, p) for p in suite.grid("quick", "cpu")) for v in TORCHSDE}
    assert count == {"torchsde_euler": 10, "torchsde_srk": 10}


@pytest.mark.skipif(not HAS_TORCHSDE, reason=NO_TORCHSDE)
def test_torchsde_euler_case_reads_sde_ems_numbers():
    # from sde_em's x_T and the case's generator, torchsde_euler at budget b + 1 is sde_em at b (tests/impls/
    # test_samplers_torchsde.py: the same samples): the suite hands both the same noise
    suite, params = Samplers(), {"target": "gmm2d", "model": "exact", "n": 200}
    ours = suite.measure("sde_em", {**params, "nfe_budget": 4}, "cpu").metrics
    theirs = suite.measure("torchsde_euler", {**params, "nfe_budget": 5}, "cpu").metrics
    assert (theirs["nfe"], theirs["steps"], ours["nfe"], ours["steps"]) == (5, 4, 4, 4)
    for metric in ("sliced_w2", "mmd", "mode_weight_err", "mean_loglik"):
        assert theirs[metric] == ours[metric], metric


@pytest.mark.skipif(not HAS_TORCHDIFFEQ, reason=NO_TORCHDIFFEQ)
def test_torchdiffeq_runs_count_their_calls(cases, adaptive):
    # torchdiffeq_euler is our flow_euler from flow_euler's noise (tests/impls/test_samplers_torchdiffeq.py): the same
    # samples to float32 rounding, so the same quality
    pairs = [(r, cases[("flow_euler", model, budget)]) for (v, model, budget), r in cases.items()
             if v == "torchdiffeq_euler"]
    assert len(pairs) == 8  # 2 models x 4 budgets
    for r, ref in pairs:
        assert r.metrics["nfe"] == ref.metrics["nfe"] == r.metrics["steps"]
        assert r.metrics["sliced_w2"] == pytest.approx(ref.metrics["sliced_w2"], abs=1e-4), r.case_id
    rk4 = {model: r.metrics["sliced_w2"] for (v, model, budget), r in cases.items() if v == "torchdiffeq_rk4"
           and budget == 16}
    assert rk4["exact"] < 0.2  # 4 steps of a fourth-order method: two exact draws of 500 sit ~0.08 apart
    # dopri5: NFE is what its tolerance cost, 2 + 6 per step attempt, whatever the grid's budgets are
    for (_, model, tol), r in adaptive.items():
        m = r.metrics
        assert m["nfe"] == 2 + 6 * (m["steps"] + m["rejected_steps"]) and m["steps"] >= 1, r.case_id
    for model in ("exact", "learned"):
        loose, tight = adaptive[(DOPRI5, model, 1e-1)].metrics, adaptive[(DOPRI5, model, 1e-3)].metrics
        assert tight["nfe"] > loose["nfe"] and tight["sliced_w2"] < loose["sliced_w2"], model


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
    if HAS_DIFFUSERS:  # drawn beside ours, marked as the library's
        names = {trace.name for trace in figures_for("samplers", frame)[0].data}
        assert f"diffusers_dpmpp_2m · {diffusers_schedulers.label()}" in names and "dpm_solver_2m" in names
    if HAS_TORCHDIFFEQ:  # dopri5 drawn at the NFE it counted, in the table like any sampler
        names = {trace.name for trace in figures_for("samplers", frame)[0].data}
        assert f"torchdiffeq_dopri5 · {torchdiffeq_solvers.label()}" in names
        assert "torchdiffeq_dopri5" in set(match["variant"])
