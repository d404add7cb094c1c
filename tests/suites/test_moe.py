"""The moe suite at smoke size on CPU: balance metrics are deterministic (seeded data, weights and training), so
asserted; dispatch speed is not."""

import json
import math

import pytest

from impls.libraries import ECOSYSTEM
from reports.figures import figures_for, load_frame
from suites.moe import Moe
from tests.optional import missing, needs

ROUTERS = ("aux_loss", "sigmoid_aux_loss", "aux_free", "aux_free_seqaux", "node_limited")
BIASED = ROUTERS[2:]  # the routers with the balancing bias
HF = ("hf_eager", "hf_grouped_mm", "hf_batched_mm")  # transformers' experts implementations


@pytest.fixture(scope="module")
def moe(smoke_records):
    _, by_suite = smoke_records
    return by_suite["moe"]


def test_balance_metrics_are_what_their_curves_say(moe):
    for variant in ROUTERS:
        (r,) = moe[variant]
        assert r.status == "ok", r.error
        p, m, s = r.params, r.metrics, r.samples
        assert len(s["max_vio_curve"]) == len(s["loss_curve"]) == p["steps"]
        tail = p["steps"] // 4
        assert m["max_vio_batch"] == pytest.approx(sum(s["max_vio_curve"][-tail:]) / tail)
        assert m["final_loss"] == pytest.approx(sum(s["loss_curve"][-tail:]) / tail)
        assert m["perplexity"] == pytest.approx(math.exp(m["eval_loss"]))
        shares = s["load_curve"]  # layer-major shares of each layer's routed slots
        assert len(shares) == p["layers"] * p["experts"]
        for layer in range(p["layers"]):
            assert sum(shares[layer * p["experts"]:(layer + 1) * p["experts"]]) == pytest.approx(1.0)
        # MaxVio of the held-out pass, recomputed from the histogram: (max - mean) / mean per layer
        per_layer = [max(shares[i:i + p["experts"]]) * p["experts"] - 1 for i in range(0, len(shares), p["experts"])]
        assert m["max_vio_global"] == pytest.approx(sum(per_layer) / len(per_layer))


def test_the_balancing_bias_beats_the_auxiliary_loss_at_similar_loss(moe):
    # against both gates with the auxiliary loss: sigmoid_aux_loss shares aux_free's gate, so the gap is the bias's
    for reference in ROUTERS[:2]:
        aux = moe[reference][0].metrics
        for variant in BIASED:
            m = moe[variant][0].metrics
            assert m["max_vio_train"] < 0.5 * aux["max_vio_train"]  # measured 0.02-0.03 against 0.23-0.24
            assert abs(m["final_loss"] - aux["final_loss"]) < 0.05 * aux["final_loss"]


def test_dispatch_runs_loop_and_grouped_on_cpu_and_the_triton_kernel_says_why_not(moe):
    for variant in ("loop", "grouped_mm", "grouped_torch"):
        for r in moe[variant]:
            assert r.status == "ok", r.error
            assert r.metrics["tokens_per_s"] > 0 and r.metrics["peak_mem_bytes"] > 0
            assert r.metrics["fused_grouped_gemm"] is False  # CPU: torch loops over the experts inside _grouped_mm
    assert all(r.metrics["speedup_x"] == 1.0 for r in moe["loop"])
    for r in moe["grouped_triton"]:
        assert r.status == "skipped" and "CUDA device" in r.error


def test_dispatch_runs_transformers_experts_on_the_same_cases_and_says_which_path(moe):
    ours = {tuple(sorted(r.params.items())) for r in moe["loop"]}
    for variant in HF:
        assert {tuple(sorted(r.params.items())) for r in moe[variant]} == ours
        for r in moe[variant]:
            if missing("transformers"):
                assert r.status == "skipped" and f'pip install {ECOSYSTEM}' in r.error
                continue
            assert r.status == "ok", r.error
            assert r.metrics["tokens_per_s"] > 0 and r.metrics["peak_mem_bytes"] > 0
            assert r.metrics["fused_grouped_gemm"] is (None if variant == "hf_batched_mm" else False)
    for r in (r for r in moe["hf_grouped_mm"] if r.status == "ok"):
        assert r.metrics["grouped_mm_fallback"] is False  # torch >= 2.11 on CPU: torch's grouped_mm ran
    for r in (r for r in moe["hf_batched_mm"] if r.status == "ok"):
        # every slot's expert weights gathered: T x K x 3 x D x H of them, more than all E experts hold at smoke size
        p = r.params
        assert r.metrics["peak_mem_bytes"] > 4 * p["tokens"] * p["top_k"] * 3 * p["dim"] * p["hidden"]


def test_the_library_variants_are_declared_as_transformers(smoke_run):
    out, _, _ = smoke_run
    described = json.loads((out / "run.json").read_text())["suites"]["moe"]
    assert set(described["libraries"]) == set(HF)
    assert all(label.startswith("transformers") for label in described["libraries"].values())


def test_balance_results_are_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("TECHBENCH_CACHE", str(tmp_path))
    monkeypatch.setenv("TECHBENCH_SHIPPED", "0")  # train here, as at full size, rather than load the shipped run
    suite = Moe()
    params = next(p for p in suite.grid("smoke", "cpu") if p["part"] == "balance")
    first = suite.measure("aux_free", params, "cpu")
    assert len(list(tmp_path.rglob("*.pt"))) == 1
    assert suite.measure("aux_free", params, "cpu").metrics == first.metrics


@needs("plotly")
def test_report_has_the_moe_figures(smoke_run):
    out, _, _ = smoke_run
    frame = load_frame([out])
    figures = figures_for("moe", frame[frame["suite"] == "moe"])
    titles = [f.layout.title.text for f in figures]
    assert len(figures) == 5, titles
    assert any("MaxVio per training batch" in t for t in titles) and any("expert load" in t for t in titles)
    legend = [t.name for t in figures[0].data if t.showlegend is not False]
    assert all("loss" in name for name in legend) and len(legend) == len(ROUTERS)
