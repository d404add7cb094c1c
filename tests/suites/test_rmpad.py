"""The rmpad suite at smoke size on CPU: exact memory savings grow with padding; what cannot run says why."""

import pytest

from impls.rmpad.nested import NO_DRIVER
from reports.figures import figures_for, load_frame
from tests.optional import needs


@pytest.fixture(scope="module")
def rmpad(smoke_records):
    _, by_suite = smoke_records
    # the suite's own points; the library's (model=hf_llama) are tested in tests/impls/test_hf_rmpad.py
    return {(r.params["mode"], r.params["dist"], r.variant): r for rs in by_suite["rmpad"].values() for r in rs
            if "model" not in r.params}


def test_unpadding_saves_memory_and_more_as_padding_grows(rmpad):
    for mode in ("train", "forward"):
        uniform, lognormal = rmpad[(mode, "uniform", "segments")], rmpad[(mode, "lognormal", "segments")]
        assert lognormal.metrics["pad_fraction"] > uniform.metrics["pad_fraction"] > 0
        assert lognormal.metrics["mem_saving_x"] > uniform.metrics["mem_saving_x"] > 1
        assert rmpad[(mode, "uniform", "padded")].metrics["mem_saving_x"] == 1.0


def test_backends_that_cannot_run_on_cpu_are_skipped_with_the_reason(rmpad):
    assert rmpad[("train", "uniform", "flex")].status == "skipped"
    assert "FlexAttention does not support backward on CPU" in rmpad[("train", "uniform", "flex")].error
    assert rmpad[("forward", "uniform", "flex")].status == "ok"  # its forward runs, and is measured
    assert rmpad[("forward", "uniform", "flex")].metrics["peak_mem_bytes"] is None  # compiled: no exact CPU peak
    nested_error = rmpad[("train", "lognormal", "nested")].error
    assert "is_causal" in nested_error or NO_DRIVER in nested_error, nested_error  # the latter: torch 2.11 CUDA build
    assert rmpad[("train", "lognormal", "flash")].error == ("flash-attn's varlen kernel runs on CUDA only: skipped "
                                                            "on cpu")


def test_throughputs_count_real_and_padded_tokens(rmpad):
    m = rmpad[("train", "lognormal", "padded")].metrics
    assert m["padded_tokens_per_s"] * (1 - m["pad_fraction"]) == pytest.approx(m["real_tokens_per_s"])


@needs("plotly")
def test_report_has_the_rmpad_figures(smoke_run):
    out, _, _ = smoke_run
    frame = load_frame([out])
    assert len(figures_for("rmpad", frame[frame["suite"] == "rmpad"])) == 2


def test_a_plan_for_another_gpu_takes_its_step_rather_than_probing_this_machines(monkeypatch):
    import torch

    from bench import hardware
    from suites.rmpad import _unprobed

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a machine whose GPU is an A100
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-80GB")
    with hardware.planning("h200"):
        assert _unprobed("nested", "meta", "cuda")
    assert not _unprobed("nested", "meta", "cuda")  # this machine's GPU: probed here
