"""A distributed suite's parts per rank (bench.plan on fsdp_checkpointing, as rank 0 of a fake process group): FSDP2's
parameters and gradients are DTensors, whose wrappers report the global tensor's storage; the plan counts each
rank's local shards, and leaves the unsharded parameters FSDP2 all-gathers (and frees after each unit's forward) out
of the activations saved for backward."""

import math

import pytest

from bench.plan import plan_case
from bench.suite import discover

WORLD_SIZES = (1, 2)


@pytest.fixture(scope="module")
def planned():
    registry = discover()
    fsdp, plain = registry["fsdp_checkpointing"], registry["checkpointing"]
    params = fsdp.grid("smoke", "cuda:0")[0]  # bf16; for a GPU, where offload moves its saved tensors to the host
    plans = {(ws, v): plan_case(fsdp, v, {**params, "world_size": ws}, "cuda", "h200") for ws in WORLD_SIZES
             for v in fsdp.variants}
    shapes = [tuple(p.shape) for p in plain.workload("none", dict(params), "meta").modules[0].parameters()]
    return params, plans, plan_case(plain, "none", params, "cuda", "h200"), shapes


def test_parameters_and_gradients_are_each_ranks_shards(planned):
    params, plans, _, shapes = planned
    assert all(p.status == "ok" for p in plans.values()), {k: p.reason for k, p in plans.items()}
    for (ws, variant), p in plans.items():
        # FSDP2 shards each parameter on dim 0, rank 0 holding the first ceil(rows / ws) rows (bf16)
        shard = 2 * sum(math.ceil(s[0] / ws) * math.prod(s[1:]) for s in shapes)
        assert p.parts["parameters"] == p.parts["gradients"] == shard, (ws, variant)
        assert p.parts["inputs"] == 2 * 2 * params["batch"] * params["seq"] * params["d_model"]  # x and its target
    one, two = plans[1, "none"].parts, plans[2, "none"].parts
    assert two["parameters"] == pytest.approx(one["parameters"] / 2, rel=0.01)  # 1/ws, but for uneven shards
    assert two["gradients"] == pytest.approx(one["gradients"] / 2, rel=0.01)


def test_the_parts_add_up_to_at_most_the_peak(planned):
    _, plans, plain, _ = planned
    for (ws, variant), p in plans.items():
        parts = sum(v for k, v in p.parts.items() if k != "transient")
        if variant == "none":
            # the unsharded parameters are no activation: none saves what the unsharded model's none saves; its
            # gradients and saved activations are never live at once (as in the checkpointing suite)
            assert p.parts["activations"] == plain.parts["activations"], ws
            assert parts - p.parts["gradients"] <= p.peak_bytes, ws
        else:
            assert parts + p.parts["transient"] == p.peak_bytes, (ws, variant)
            assert parts <= p.peak_bytes, (ws, variant)
