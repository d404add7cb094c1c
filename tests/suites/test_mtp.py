"""The mtp suite at smoke size on CPU: bytes, FLOPs, acceptance and the greedy-equality flag are deterministic given
the seeds, so they are asserted; times and speed-ups are not."""

import pytest
import torch

from impls.mtp.mtp import MTPConfig, MTPModel
from impls.mtp.reference import LMConfig
from impls.mtp.speculative import greedy_decode
from reports.figures import figures_for, load_frame
from suites.mtp import DEPTHS, GRIDS, MTP, _divergence
from tests.optional import needs

MTP_VARIANTS = [v for v, d in DEPTHS.items() if d > 0]


@pytest.fixture(scope="module")
def mtp(smoke_records):
    _, by_suite = smoke_records
    records = {v: rs[0] for v, rs in by_suite["mtp"].items()}
    assert set(records) == set(MTP.variants) and all(len(rs) == 1 for rs in by_suite["mtp"].values())
    assert all(r.status == "ok" for r in records.values()), {v: r.error for v, r in records.items()}
    return {v: r.metrics for v, r in records.items()}, {v: r.samples for v, r in records.items()}


def test_each_module_costs_memory_and_flops(mtp):
    m, _ = mtp
    for metric in ("peak_mem_bytes", "step_flops"):
        assert m["plain"][metric] < m["mtp"][metric] < m["mtp_d2"][metric], metric
    assert m["plain"]["mem_overhead_x"] == m["plain"]["flops_overhead_x"] == 1.0
    assert m["mtp"]["flops_overhead_x"] == pytest.approx(m["mtp"]["step_flops"] / m["plain"]["step_flops"])
    for variant in MTP_VARIANTS:
        assert m[variant]["mem_overhead_x"] > 1 and m[variant]["time_overhead_x"] > 0


def test_acceptance_and_decoding_are_recorded_for_mtp_variants_only(mtp):
    m, samples = mtp
    assert m["plain"]["acceptance_rate"] is None and "speedup_x" not in m["plain"]
    assert m["plain"]["decode_tokens_per_s"] == m["plain"]["greedy_tokens_per_s"] > 0
    steps = GRIDS["smoke"][1]["steps"]
    for variant in MTP_VARIANTS:
        r = m[variant]
        assert 0 <= r["acceptance_rate"] <= 1 and 0 <= r["decode_acceptance_rate"] <= 1
        assert r["matches_greedy"] is True  # speculative decoding emitted greedy decoding's tokens
        # fp32 on CPU: the timed decoders are the ones the flag checks, and they never parted
        assert r["greedy_divergence_token"] == -1 and r["divergence_logit_margin"] is None
        assert 1 <= r["tokens_per_forward"] <= 2 and r["speedup_x"] > 0 and r["mtp_heldout_loss"] > 0
        assert len(samples[variant]["mtp_loss_curve"]) == steps
    for variant in DEPTHS:
        assert len(samples[variant]["main_loss_curve"]) == steps and m[variant]["final_loss"] > 0
        assert m[variant]["heldout_loss_x"] == pytest.approx(m[variant]["heldout_loss"] / m["plain"]["heldout_loss"])


def test_grids_name_their_dtype_and_leave_every_depth_a_position():
    suite = MTP()
    assert suite.grid("full", "cuda:0")[0]["dtype"] == "bfloat16"
    assert suite.grid("quick", "cpu")[0]["dtype"] == "float32"
    for size in GRIDS:
        assert suite.grid(size, "cpu")[0]["seq"] >= max(DEPTHS.values()) + 2


@needs("plotly")
def test_report_has_the_mtp_figures(smoke_run):
    out, _, _ = smoke_run
    frame = load_frame([out])
    frame = frame[frame["suite"] == "mtp"].reset_index(drop=True)
    figs = figures_for("mtp", frame)
    titles = [f.layout.title.text for f in figs]
    assert len(figs) == 4 and "acceptance" in titles[0] and "speed-up" not in titles[0], titles
    band = figs[0].layout.shapes[0]
    assert (band.y0, band.y1) == (0.85, 0.90)  # the paper's figure, drawn as a labelled reference only
    assert any(abs(getattr(s, "y0", 0) - 1.8) < 1e-9 for s in figs[2].layout.shapes)
    # a failed case is drawn, not dropped
    failed = frame.assign(status=["error" if v == "mtp_d2" else s for v, s in zip(frame["variant"], frame["status"])])
    failed.loc[failed["variant"] == "mtp_d2", "error"] = "RuntimeError: boom"
    acceptance = figures_for("mtp", failed)[0]
    assert any(t.name == "not ok" and list(t.text) == ["error"] for t in acceptance.data)


def test_divergence_is_the_first_differing_token_and_the_main_models_margin_there():
    torch.manual_seed(0)
    model = MTPModel(LMConfig(vocab=19, d_model=16, n_heads=2, n_layers=1), MTPConfig(depth=1)).eval()
    prompts = torch.randint(19, (2, 4), generator=torch.Generator().manual_seed(1))
    greedy = [greedy_decode(model.main, p[None], 8) for p in prompts]
    assert _divergence(model, [g.clone() for g in greedy], greedy, 4) == (-1, None)
    speculative = [g.clone() for g in greedy]
    speculative[0][0, 4 + 5] = (speculative[0][0, 4 + 5] + 1) % 19  # prompt 0 parts at generated token 5
    speculative[1][0, 4 + 2:] = (speculative[1][0, 4 + 2:] + 1) % 19  # prompt 1 at token 2, and stays apart
    index, margin = _divergence(model, speculative, greedy, 4)
    with torch.no_grad():
        top = model.main(greedy[1][:, :4 + 2])[0, -1].topk(2).values  # the logits that chose greedy's token 2
    assert index == 2 and margin == pytest.approx((top[0] - top[1]).item()) and margin >= 0
