"""The moe_ep suite: at world size 1 in the smoke run of every suite, and on 2 gloo ranks here, where EP stores
1/W of the experts per rank, all-reduces only the replicated parameters, and moves slots by all-to-all."""

import pytest

from bench import runner
from bench.distributed import Launch
from bench.suite import discover
from reports.figures import load_frame
from reports.figures.moe_ep import figures
from tests.optional import needs


def expert_bytes(p) -> int:
    return p["experts"] * p["dim"] * 3 * p["hidden"] * 4  # w1 [D, 2H] and w2 [H, D] per expert, fp32


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ep") / "run"
    code, records = runner.run(runner.RunConfig(suites=[discover()["moe_ep"]], size="smoke", device="cpu", out=out,
                                                launch=Launch(2)))
    assert code == 0, [r.error for r in records]
    return out, {r.variant: r for r in records}


def test_one_rank_moves_nothing(smoke_records):
    _, by_suite = smoke_records
    (rep,), (ep,) = by_suite["moe_ep"]["replicated"], by_suite["moe_ep"]["ep"]
    assert rep.status == ep.status == "ok" and ep.params["world_size"] == 1
    assert ep.metrics["alltoall_bytes"] == 0 and ep.metrics["param_bytes"] == rep.metrics["param_bytes"]


def test_two_ranks_shard_the_experts_and_move_slots(two_ranks):
    _, r = two_ranks
    rep, ep = r["replicated"].metrics, r["ep"].metrics
    p = r["ep"].params
    assert p["world_size"] == 2
    assert rep["param_bytes"] - ep["param_bytes"] == expert_bytes(p) // 2
    assert rep["allreduce_bytes"] - ep["allreduce_bytes"] == expert_bytes(p)  # EP all-reduces no expert
    row = p["dim"] * 4
    # forward and backward each move the dispatch and combine: a whole number of rows, at most all the slots
    assert ep["alltoall_bytes"] > 0 and ep["alltoall_bytes"] % (2 * row) == 0
    assert ep["alltoall_bytes"] <= 2 * 2 * p["tokens"] * p["top_k"] * row
    assert rep["alltoall_bytes"] == 0 and rep["alltoall_time_ms"] is None
    assert 0 < ep["alltoall_share"] and ep["alltoall_time_ms"] > 0


@needs("plotly")
def test_figures_draw_world_sizes_together(two_ranks, smoke_run):
    frame = load_frame([two_ranks[0], smoke_run[0]])
    figs = figures(frame[frame["suite"] == "moe_ep"].reset_index(drop=True))
    assert len(figs) == 1 and {tuple(t.x) for t in figs[0].data if t.name == "ep"} == {(1, 2)}
