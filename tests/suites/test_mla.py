"""The mla suite at smoke size on CPU: cache bytes counted from the tensors match the formula, the absorbed form and
transformers' DeepseekV3Attention match the naive one, and peak bytes (exact on CPU) order as the forms promise;
timings are not asserted."""

import pytest
import torch

from impls.libraries import ECOSYSTEM
from impls.mla import SHAPES, cache_bytes_per_token, config
from reports.figures import figures_for, load_frame
from suites.mla import GRIDS, HF
from tests.optional import missing, needs, reason

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
LIBRARY = not missing("transformers")  # without it, the library's cases are recorded as skipped


def formula(variant: str):
    """The config whose formula the variant's cache follows: the library's caches what our MLA does."""
    return "mla_naive" if variant == HF else variant


@pytest.fixture(scope="module")
def mla(smoke_records):
    _, by_suite = smoke_records
    records = [r for rs in by_suite["mla"].values() for r in rs]
    skipped = [r for r in records if r.variant == HF and not LIBRARY]
    assert all(r.status == "skipped" and f'pip install {ECOSYSTEM}' in r.error for r in skipped)
    records = [r for r in records if r not in skipped]
    assert records and all(r.status == "ok" for r in records), [(r.case_id, r.error) for r in records]
    return {(r.params["part"], r.params.get("context"), r.variant): r for r in records}


def variants(mla, part, context=None) -> dict:
    return {v: r.metrics for (p, c, v), r in mla.items() if p == part and c == context}


def test_deepseek_v3_cache_counts(mla):
    # 576 cached elements per token per layer against 32,768 for MHA, 2 bytes each in bf16
    # transformers' DynamicCache holds the latent and the rotary key too, counted from its own tensors
    elements = {"mha": 32_768, "gqa": 2_048, "mqa": 256, "mla_naive": 576, "mla_absorbed": 576, HF: 576}
    assert set(variants(mla, "cache")) == set(elements) - ({HF} if not LIBRARY else set())
    for variant, m in variants(mla, "cache").items():
        n = elements[variant]
        assert m["kv_cache_elements_per_token"] == n
        assert m["kv_cache_bytes_per_token"] == 2 * n == cache_bytes_per_token(
            config(formula(variant), SHAPES["deepseek_v3"]), torch.bfloat16)
        assert m["kv_cache_saving_x"] == pytest.approx(32_768 / n)


def test_decode_cases_count_the_cache_the_formula_predicts(mla):
    contexts = GRIDS["smoke"]["contexts"]
    for (part, context, variant), r in mla.items():
        if part != "decode":
            continue
        assert context in contexts
        expected = cache_bytes_per_token(config(formula(variant), SHAPES[r.params["shape"]]),
                                         DTYPES[r.params["dtype"]])
        assert r.metrics["kv_cache_bytes_per_token"] == expected
        ref = mla[(part, context, "mha")].metrics["kv_cache_bytes_per_token"]
        assert r.metrics["kv_cache_saving_x"] == pytest.approx(ref / expected)


def test_absorbed_decode_matches_naive_on_the_same_cache(mla):
    for context in GRIDS["smoke"]["contexts"]:
        m = mla[("decode", context, "mla_absorbed")].metrics
        assert 0 <= m["max_rel_err"] < 1e-5 and m["max_abs_err"] < 1e-5  # fp32: ~1e-7 relative measured
        assert "max_abs_err" not in mla[("decode", context, "mla_naive")].metrics


@pytest.mark.skipif(not LIBRARY, reason=reason("transformers"))
def test_the_librarys_decode_matches_naive_on_the_same_weights(mla):
    for context in GRIDS["smoke"]["contexts"]:
        m = mla[("decode", context, HF)].metrics
        # fp32: the same ops in the same order (0.0 measured; tests/impls/test_hf_mla.py holds 1e-6)
        assert 0 <= m["max_rel_err"] < 1e-5 and m["max_abs_err"] < 1e-5


def test_peak_decode_bytes_hold_the_cache_and_order_by_form(mla):
    for context in GRIDS["smoke"]["contexts"]:
        m = {v: r.metrics for (part, c, v), r in mla.items() if part == "decode" and c == context}
        for variant, metrics in m.items():
            batch = mla[("decode", context, variant)].params["batch"]
            assert metrics["peak_mem_bytes"] > batch * (context + 1) * metrics["kv_cache_bytes_per_token"]
        # the naive form builds every head's keys and values from the latents at each step; the absorbed form does not
        assert m["mla_naive"]["peak_mem_bytes"] > 2 * m["mla_absorbed"]["peak_mem_bytes"]
        assert m["mha"]["peak_mem_bytes"] > m["gqa"]["peak_mem_bytes"] > m["mqa"]["peak_mem_bytes"]
        if LIBRARY:  # the naive form's step, plus DynamicCache's copy of the cache into a longer tensor at each step
            assert m[HF]["peak_mem_bytes"] > m["mla_naive"]["peak_mem_bytes"]  # context 32: 92.5 KB against 86.2


def test_rates_follow_from_the_timings(mla):
    for (part, context, variant), r in mla.items():
        if part != "decode":
            continue
        m = r.metrics
        assert m["decode_time_ms"] > 0 and m["prefill_time_ms"] > 0
        assert m["decode_tokens_per_s"] == pytest.approx(r.params["batch"] / (m["decode_time_ms"] / 1e3))
        assert m["cache_read_gbps"] == pytest.approx(
            r.params["batch"] * context * m["kv_cache_bytes_per_token"] / (m["decode_time_ms"] / 1e3) / 1e9)
        assert len(r.samples["decode_time_ms"]) >= 5 and len(r.samples["prefill_time_ms"]) >= 3


@needs("plotly")
def test_report_has_the_mla_figures(smoke_run, mla):
    out, _, _ = smoke_run
    frame = load_frame([out])
    figures = figures_for("mla", frame[frame["suite"] == "mla"])
    titles = [f.layout.title.text for f in figures]
    assert len(figures) == 4 and titles[0].startswith("KV-cache bytes per token"), titles
    bars = figures[0]
    assert bars.layout.yaxis.type == "log"
    dsv3 = next(t for t in bars.data if t.name.startswith("deepseek_v3"))
    counted = {v: mla[("cache", None, v)].metrics["kv_cache_bytes_per_token"] for v in dsv3.x}
    assert list(dsv3.y) == [counted[v] for v in dsv3.x] and counted["mha"] == 65_536
    decode = figures[1]
    assert {t.name for t in decode.data} >= {"mha", "gqa", "mqa", "mla_naive", "mla_absorbed"}


@pytest.mark.skipif(not LIBRARY, reason=reason("transformers"))
def test_the_library_plans_on_meta_and_does_the_naive_forms_flops():
    from bench.flops import flop_counter_mode
    from bench.plan import plan_case
    from bench.suite import discover

    suite = discover()["mla"]
    params = next(p for p in suite.grid("smoke", "cpu") if p["part"] == "decode")
    planned = {v: plan_case(suite, v, params, "cpu") for v in ("mla_naive", HF)}
    assert all(p.status == "ok" for p in planned.values()), {v: p.reason for v, p in planned.items()}
    step = suite.workload(HF, dict(params), "cpu").step
    step()
    with flop_counter_mode() as real:
        step()
    # the same up-projection of every cached latent and the same attention: 373,248 FLOPs at context 32
    assert planned[HF].flops == real.get_total_flops() == planned["mla_naive"].flops > 0
