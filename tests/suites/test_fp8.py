"""The fp8 suite at smoke size on CPU: accuracy is deterministic, so asserted; speed is not."""

import time

import pytest

from impls.fp8.gemm import reference_kernel, scaled_mm_support
from reports.figures import figures_for, load_frame
from tests.optional import missing, needs


@pytest.fixture(scope="module")
def fp8(smoke_records):
    _, by_suite = smoke_records
    def key(p):
        return p.get("input") or p.get("impl", "") + p.get("operand", "")

    return {(r.params["part"], key(r.params), r.variant): r for rs in by_suite["fp8"].values() for r in rs}


def test_fp8_gemms_clear_an_sqnr_floor_and_fine_scaling_wins_on_outliers(fp8):
    for recipe in ("tensorwise", "rowwise", "deepseek_v3"):
        assert fp8[("accuracy", "normal", recipe)].metrics["sqnr_db"] >= 25  # E4M3 has 3 mantissa bits: ~28.5 dB
    outliers = {r: fp8[("accuracy", "outliers", r)].metrics["sqnr_db"] for r in ("tensorwise", "deepseek_v3")}
    assert outliers["deepseek_v3"] >= outliers["tensorwise"] + 1.0  # measured +1.9 dB at 128x256x384
    assert fp8[("accuracy", "normal", "bf16")].metrics["sqnr_db"] > 100  # the reference is fp32 on CPU


def test_scaled_mm_runs_on_cpu_and_the_triton_gemm_says_why_not(fp8):
    slow = reference_kernel("cpu")
    if slow:  # oneDNN's reference kernel on this CPU: both recipes' GEMMs skipped with that reason
        for recipe in ("tensorwise", "rowwise"):
            record = fp8[("gemm", "", recipe)]
            assert record.status == "skipped" and record.error.startswith("torch._scaled_mm on this CPU is oneDNN's")
        return
    assert fp8[("gemm", "", "tensorwise")].status == "ok"
    assert fp8[("gemm", "", "tensorwise")].metrics["sqnr_db"] >= 25
    rowwise, why = fp8[("gemm", "", "rowwise")], scaled_mm_support("cpu", "rowwise")
    if why is None:  # torch 2.13's CPU _scaled_mm takes row scales
        assert rowwise.status == "ok" and rowwise.metrics["sqnr_db"] >= 25
    else:  # torch 2.11's does not: skipped with torch's own reason, not an error
        assert rowwise.status == "skipped" and rowwise.error == why
    skipped = fp8[("gemm", "", "deepseek_v3")]
    assert skipped.status == "skipped" and "CUDA device" in skipped.error


def test_quantizers_report_bandwidth_and_the_triton_ones_say_why_not(fp8):
    for recipe in ("tensorwise", "rowwise", "deepseek_v3"):
        for operand in ("activation", "weight"):
            assert fp8[("quantize", "torch" + operand, recipe)].metrics["quantize_gbps"] > 0
            skipped = fp8[("quantize", "triton" + operand, recipe)]
            assert skipped.status == "skipped" and "TRITON_INTERPRET=1" in skipped.error


def test_training_in_fp8_stays_close_to_high_precision(fp8):
    for recipe in ("tensorwise", "rowwise", "deepseek_v3"):
        record = fp8[("training", "", recipe)]
        assert record.metrics["loss_gap_final"] < 0.01
        loss, reference = record.samples["loss_curve"], record.samples["reference_loss_curve"]
        assert len(loss) == len(reference) == record.params["steps"] and loss[-1] == record.metrics["final_loss"]
        assert abs(loss[-1] - reference[-1]) / reference[-1] == pytest.approx(record.metrics["loss_gap_final"])
    assert fp8[("training", "", "bf16")].metrics["loss_gap_final"] == 0.0


def test_the_high_precision_run_trains_once(fp8, monkeypatch, tmp_path):
    bf16 = fp8[("training", "", "bf16")].samples["loss_curve"]
    for recipe in ("tensorwise", "rowwise", "deepseek_v3"):  # every recipe against the bf16 case's own run
        assert fp8[("training", "", recipe)].samples["reference_loss_curve"] == bf16
    import suites.fp8 as mod

    monkeypatch.setenv("TECHBENCH_CACHE", str(tmp_path))
    calls, train = [], mod.train
    monkeypatch.setattr(mod, "train", lambda recipe, *a, **k: calls.append(recipe) or train(recipe, *a, **k))
    params = {"part": "training", "steps": 3}
    first = mod._training("bf16", params, "cpu")
    second = mod._training("tensorwise", params, "cpu")
    assert [recipe is None for recipe in calls] == [True, False]  # bf16 once, then the recipe alone
    assert second.samples["reference_loss_curve"] == first.samples["loss_curve"]
    assert first.timings["train_time"].n == 1 and first.work[0].tokens == 3 * mod.BATCH
    assert not second.timings and not second.work  # an emulated recipe's wall time is no FP8 speed: not recorded
    # nor its memory (fp32 copies of the emulation); bf16's step is what the plan predicts (to 0.1% on CPU:
    # tests/bench/test_plan.py)
    assert first.metrics["peak_mem_bytes"] > 0 and "peak_mem_bytes" not in second.metrics
    # a later bf16 case whose curve differs (a GPU's differs run to run) replaces the cached one for the recipes
    before = mod.train
    monkeypatch.setattr(mod, "train", lambda recipe, *a, **k: [x + (recipe is None) for x in before(recipe, *a, **k)])
    again, third = mod._training("bf16", params, "cpu"), mod._training("tensorwise", params, "cpu")
    assert third.samples["reference_loss_curve"] == again.samples["loss_curve"] != first.samples["loss_curve"]


@pytest.mark.parametrize("variant", ["bf16", "torchao_tensorwise"])
def test_train_time_leaves_a_first_use_cost_out_for_bf16_and_torchao_alike(variant, monkeypatch, tmp_path):
    # torchao's case probes its kernels (a converted Linear's forward and backward) before its clock starts; bf16's
    # must start as warm, or its train_time holds what the process's first step costs (cuBLAS's handle on CUDA)
    if variant.startswith("torchao") and missing("torchao"):
        pytest.skip("needs torchao")
    import suites.fp8 as mod
    from impls.fp8.train import MLPLM

    monkeypatch.setenv("TECHBENCH_CACHE", str(tmp_path))
    forward, first = MLPLM.forward, []

    def slow_first_use(self, tokens):  # a cost paid once per process, by its first forward
        if not first:
            first.append(time.sleep(0.5))
        return forward(self, tokens)

    monkeypatch.setattr(MLPLM, "forward", slow_first_use)
    m = mod._training(variant, {"part": "training", "steps": 3}, "cpu")
    assert first and m.timings["train_time"].median_ms < 400


@needs("plotly")
def test_report_has_the_fp8_figures(smoke_run):
    out, _, _ = smoke_run
    frame = load_frame([out])
    figures = figures_for("fp8", frame[frame["suite"] == "fp8"])
    titles = [f.layout.title.text for f in figures]
    assert len(figures) == 5 and any("loss per step" in t for t in titles), titles


def test_torchaos_training_is_planned_for_the_named_gpu_not_this_machine():
    import torch

    from bench.plan import plan_case
    from bench.suite import discover

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is here: the plan of its own GPU probes torchao on it")
    if missing("torchao"):
        pytest.skip("needs torchao")
    fp8 = discover()["fp8"]
    params = next(p for p in fp8.grid("full", "cuda:0") if p["part"] == "training")
    for variant in ("torchao_tensorwise", "torchao_rowwise"):
        p = plan_case(fp8, variant, params, "cuda", "h200")  # sm90: torch._scaled_mm's FP8 kernels run there
        assert p.status == "ok" and p.flops_by_dtype.get("float8_e4m3fn"), p.reason
        p = plan_case(fp8, variant, params, "cuda", "a100-sxm4-80gb")  # sm80 has none
        assert p.status == "skipped" and "need sm89 or newer; a100-sxm4-80gb is sm80" in p.reason, p.reason
        p = plan_case(fp8, variant, params, "cuda")  # a GPU the plan knows nothing of: said, not assumed
        assert p.status == "not_plannable" and "knows no compute capability" in p.reason, p.reason
