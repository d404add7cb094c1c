"""The checkpointing suite at smoke size: the deterministic memory and FLOP figures the technique promises.

On CPU the live-tensor tracker is exact, so bytes are asserted; timings are not (shared, noisy machines).
"""

import pytest

from suites.checkpointing import GRIDS


@pytest.fixture(scope="module")
def ckpt(smoke_records):
    _, by_suite = smoke_records
    # our model's points; the library's (model=hf_llama) are tested in tests/impls/test_hf_checkpointing.py
    own = {v: [r for r in rs if "model" not in r.params] for v, rs in by_suite["checkpointing"].items()}
    assert all(rs[0].status == "ok" for rs in own.values() if rs)
    return {v: rs[0].metrics for v, rs in own.items() if rs}


def test_smoke_has_at_least_four_layers():
    assert all(dims["layers"] >= 4 for _, dims in GRIDS["smoke"])


def test_peak_memory_is_ordered_none_sqrt_full(ckpt):
    assert ckpt["none"]["peak_mem_bytes"] > ckpt["sqrt"]["peak_mem_bytes"] > ckpt["full"]["peak_mem_bytes"]
    assert ckpt["selective"]["peak_mem_bytes"] < ckpt["none"]["peak_mem_bytes"]


def test_sqrt_keeps_fewer_block_inputs_than_full(ckpt):
    # 3 segment inputs instead of 8 block inputs after forward; the price is a whole segment live in recompute
    assert ckpt["sqrt"]["activation_bytes"] < ckpt["full"]["activation_bytes"]


def test_full_keeps_at_most_a_quarter_of_the_activations(ckpt):
    assert GRIDS["smoke"][0][1]["layers"] == 8
    assert ckpt["full"]["activation_bytes"] * 4 <= ckpt["none"]["activation_bytes"]
    assert ckpt["full"]["activation_saving_x"] >= 4


def test_full_recomputes_one_extra_forward(ckpt):
    # forward + backward is ~3 forwards of FLOPs; full adds one more: ~4/3, minus the un-checkpointed final norm.
    assert 1.2 <= ckpt["full"]["recompute_flops_x"] <= 1.45
    # sqrt recomputes every block too, and skips fewer fc2s (one per segment, not one per block)
    assert ckpt["full"]["recompute_flops_x"] < ckpt["sqrt"]["recompute_flops_x"] <= 1.45
    assert ckpt["selective"]["recompute_flops_x"] == pytest.approx(1.0, abs=1e-9)  # recomputes no matmul
    assert ckpt["none"]["recompute_flops_x"] == 1.0


def test_offload_saves_nothing_on_a_cpu_device(ckpt):
    # save_on_cpu copies to host memory, which on a CPU device is the same memory: an honest non-saving.
    assert ckpt["offload"]["activation_bytes"] == ckpt["none"]["activation_bytes"]


def test_ratios_and_rates_are_recorded(ckpt):
    for variant, m in ckpt.items():
        for name in ("mem_saving_x", "activation_saving_x", "time_overhead_x", "recompute_flops_x", "step_time_ms",
                     "tokens_per_s", "tflops", "step_flops"):
            assert m[name] > 0, (variant, name)
        # the harness derives the rates from the declared work and the median step time
        seconds = m["step_time_ms"] / 1e3
        assert m["tflops"] == pytest.approx(m["step_flops"] / seconds / 1e12)
        assert m["tokens_per_s"] == pytest.approx(2 * 64 / seconds)  # smoke: batch 2 x seq 64
        assert m["pct_of_peak"] is None and m["roofline_ms"] is None  # no datasheet peak for a CPU
    none, full = ckpt["none"], ckpt["full"]
    assert full["mem_saving_x"] == pytest.approx(none["peak_mem_bytes"] / full["peak_mem_bytes"])
