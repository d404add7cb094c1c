"""A panel per params group is titled by the params that vary, a group that lacks one included: checkpointing's own
model has no `model` param, beside the `model=hf_llama` points."""

import pytest

from tests.optional import require

require("plotly")

from reports.figures import figures_for, load_frame, params_groups  # noqa: E402
from tests.runs import write_run  # noqa: E402


def records() -> list[dict]:
    """A smoke run's checkpointing cases: our model (no `model` param) and transformers' Llama at the same shape."""
    shape = {"batch": 2, "d_model": 64, "dtype": "float32", "heads": 4, "layers": 2, "seq": 32}
    return [{"suite": "checkpointing", "variant": variant, "params": {**shape, **model},
             "metrics": {"step_time_ms": 10.0 * time_x, "peak_mem_bytes": int(1e6 * mem_x)}}
            for model, variants in (({}, ("none", "full")), ({"model": "hf_llama"}, ("none", "hf_full")))
            for variant, time_x, mem_x in zip(variants, (1.0, 1.3), (1.0, 0.4))]


@pytest.mark.parametrize("declare, own", [
    (True, "model=techbench"),  # what the suite declares its points without `model` run
    (False, "model=(default)"),  # a run that declared nothing: the key is still named
])
def test_the_group_without_a_model_param_is_titled(tmp_path, declare, own):
    frame = load_frame([write_run(tmp_path, "smoke", records(), gpu=None, size="smoke", declare=declare)])
    pareto = figures_for("checkpointing", frame)[0]
    assert [a.text for a in pareto.layout.annotations] == [own, "model=hf_llama"]


def test_params_groups_labels_only_what_varies(tmp_path):
    frame = load_frame([write_run(tmp_path, "smoke", records(), gpu=None, size="smoke")])
    assert [label for label, _ in params_groups(frame)] == ["model=(default)", "model=hf_llama"]
    assert [label for label, _ in params_groups(frame, {"model": "ours"})] == ["model=ours", "model=hf_llama"]
    (one,) = params_groups(frame[frame["params"].map(lambda p: "model" not in p)])  # nothing varies: every param
    assert one[0] == "batch=2, d_model=64, dtype=float32, heads=4, layers=2, seq=32"
