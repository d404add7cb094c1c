"""The packing suite at smoke size: packing efficiency is deterministic, so it is asserted; packer speed is not."""

import pytest

from reports.figures import figures_for, load_frame
from suites.packing import HF, LIGER, TRL
from tests.impls.test_trl_packing import BATCHED_MARGIN
from tests.optional import missing, needs


@pytest.fixture(scope="module")
def packing(smoke_records):
    _, by_suite = smoke_records
    records = [r for rs in by_suite["packing"].values() for r in rs]
    optional = {LIGER} | ({TRL} if missing("trl") else set())  # Liger-Kernel's: CUDA only; trl: the ecosystem extra
    optional |= {HF} if missing("transformers") else set()  # also the ecosystem extra
    assert records and all(r.status == "ok" for r in records if r.variant not in optional)
    return {(r.params["dist"], r.variant): r.metrics for r in records if r.status == "ok"}


def test_bin_packers_fill_rows_on_lognormal_lengths(packing):
    assert packing[("lognormal", "ffd")]["packing_efficiency"] >= 0.95
    assert packing[("lognormal", "spfhp")]["packing_efficiency"] >= 0.95


def test_pad_to_max_efficiency_is_mean_over_max(packing):
    for (dist, variant), m in packing.items():
        if variant == "pad_to_max":
            assert m["packing_efficiency"] == pytest.approx(1 - m["dataset_pad_fraction"], abs=1e-12), dist


def test_every_packer_beats_or_ties_the_reference(packing):
    for (dist, variant), m in packing.items():
        assert m["efficiency_gain_x"] >= 1 - 1e-12, (dist, variant)
        assert 0 < m["packing_efficiency"] <= 1 and m["packer_seqs_per_s"] > 0
    assert packing[("lognormal", "ffd")]["rows_saving_x"] > 5  # ~10x fewer rows than one sample per row


def test_contamination_free_packing_trains_like_one_sample_at_a_time(packing):
    for (dist, variant), m in packing.items():
        if variant != "ffd_naive":
            assert m["loss_diff"] <= 1e-6, (dist, variant)
    assert packing[("lognormal", "ffd_naive")]["loss_diff"] > 1e-6  # attending across samples changes the loss
    assert packing[("lognormal", "ffd")]["effective_tokens_per_s"] > 0


def test_every_training_step_reports_its_peak_memory(packing):
    for (dist, variant), m in packing.items():
        assert m["peak_mem_bytes"] > 0, (dist, variant)


def test_liger_fused_head_is_skipped_on_cpu_with_its_reason(smoke_records):
    _, by_suite = smoke_records
    records = by_suite["packing"][LIGER]
    assert records and all(r.status == "skipped" and "needs a CUDA device" in r.error for r in records)


@needs("trl")
def test_trl_packs_as_our_bfd_per_batch_of_a_thousand(packing):
    # 2,000 sequences: two map batches, each packed alone
    for dist in ("uniform", "lognormal", "zipf", "bimodal"):
        ours, theirs = packing[(dist, "ffd")], packing[(dist, TRL)]
        gap = ours["packing_efficiency"] - theirs["packing_efficiency"]
        assert 0 <= gap <= BATCHED_MARGIN, dist
        assert theirs["loss_diff"] <= 1e-6 and theirs["packer_seqs_per_s"] > 0, dist


@needs("transformers")
def test_hf_length_grouping_pads_between_dataset_order_and_a_global_sort(smoke_records, packing):
    _, by_suite = smoke_records
    assert by_suite["packing"][HF] and all(r.status == "ok" for r in by_suite["packing"][HF])
    for dist in ("uniform", "lognormal", "zipf", "bimodal"):
        dyn, hf, buck = (packing[(dist, v)]["packing_efficiency"] for v in ("pad_to_batch_max", HF, "bucketing"))
        assert dyn <= hf <= buck, dist
        assert packing[(dist, HF)]["loss_diff"] <= 1e-6 and packing[(dist, HF)]["packer_seqs_per_s"] > 0, dist


@needs("plotly")
def test_report_has_the_packing_figures(smoke_run):
    out, _, _ = smoke_run
    frame = load_frame([out])
    assert len(figures_for("packing", frame[frame["suite"] == "packing"])) == 3


def test_the_plan_says_what_installing_liger_would_not_change():
    # for a GPU the fused head is not plannable (a Triton kernel has no meta kernel), whether or not liger-kernel is
    # installed; for a CPU it cannot run at all, so it is skipped
    from bench.plan import plan_case
    from bench.suite import SUITES

    params = next(p for p in SUITES["packing"].grid("smoke", "cpu") if p["dist"] == "uniform")
    on_gpu = plan_case(SUITES["packing"], LIGER, params, "cuda", gpu="h200")
    assert on_gpu.status == "not_plannable" and "Triton kernel with no meta kernel" in on_gpu.reason
    on_cpu = plan_case(SUITES["packing"], LIGER, params, "cpu")
    assert on_cpu.status == "skipped" and "needs a CUDA device" in on_cpu.reason


def test_trls_packing_is_planned_only_where_its_token_dataset_is_small():
    # TRL's packer builds a token-level dataset to choose the rows: 16 bytes a token; at full size 4.7-10.7 GiB
    from bench.plan import plan_case
    from bench.suite import SUITES
    from suites.packing import PLAN_HOST_BYTES, TRL_TOKEN_BYTES, _lengths

    full = [p for p in SUITES["packing"].grid("full", "cuda")]
    assert all(TRL_TOKEN_BYTES * int(_lengths(p["dist"], p["sequences"], p["packing_length"]).sum()) > PLAN_HOST_BYTES
               for p in full if p["packing_length"] == 512 and p["dist"] == "uniform")
    p = plan_case(SUITES["packing"], TRL, next(p for p in full if p["packing_length"] == 512), "cuda", gpu="h200")
    assert p.status == "not_plannable" and "token-level datasets.Dataset" in p.reason and "GiB of host" in p.reason
