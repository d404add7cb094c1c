"""Which cached artifacts (trained weights) a case read: impls.cache names each with a digest, bench.case records them
as artifacts_digest, the history keeps it per case, and compare and the dashboard judge an exact metric of runs that
read other ones as a measured metric rather than exactly."""

import numpy as np
import torch

from bench import history, runner
from bench.artifacts import artifacts_digest, artifacts_read
from bench.compare import RETRAINED, UNKNOWN_WEIGHTS, compare
from bench.records import read_records
from bench.suite import SUITES, Measurement, Suite, register
from impls.cache import digest, fetch, load_or_build
from tests.bench.test_compare import one, timing_case
from tests.optional import needs
from tests.reports.test_dashboard_exact import exact_frame, kinds_per_night
from tests.runs import write_run


@register
class Cached(Suite):
    """Reads a cached 'model' whose weights depend on params["w"], and reports a quality computed from them."""

    name = "_cached"
    variants = {"model": "reference", "plain": "reads nothing cached"}

    def grid(self, size, device):
        return [{"w": 1}]

    def measure(self, variant, params, device):
        if variant == "plain":
            return Measurement({"quality_db": 1.0})
        weights = load_or_build("_cached", {"w": params["w"]}, lambda: {"w": torch.full((4,), float(params["w"]))})
        return Measurement({"quality_db": float(weights["w"].sum())})


def test_fetch_names_each_payload_with_the_digest_of_its_contents(tmp_path, monkeypatch):
    monkeypatch.setenv("TECHBENCH_CACHE", str(tmp_path))
    payload = {"w": torch.arange(6.0).reshape(2, 3), "steps": 3}
    with artifacts_read() as seen:
        built, source = fetch("ns", {"k": 1}, lambda: payload)
        cached, again = fetch("ns", {"k": 1}, lambda: {"w": torch.zeros(1)})
    assert (source, again) == ("built", "cache") and seen == {f"ns:{digest(payload)}"}
    assert digest(payload) != digest({**payload, "w": payload["w"] + 1e-6})  # any number changed
    assert digest({"a": 1, "b": torch.ones(2)}) == digest({"b": torch.ones(2), "a": 1})  # not the key order
    assert digest(torch.ones(2)) != digest(torch.ones(2, dtype=torch.float64))
    assert digest({"w": torch.ones(2), "train_s": 1.5}) == digest({"w": torch.ones(2), "train_s": 9.0})  # a clock
    big = np.zeros(2000)
    assert digest(big) != digest(np.where(np.arange(2000) == 1000, 1.0, big))  # all of an array, not its repr
    assert artifacts_digest({"a:1", "b:2"}) == artifacts_digest({"b:2", "a:1"}) < 2**48


def test_only_the_outermost_fetch_is_named(tmp_path, monkeypatch):
    # reflow builds on its teacher's fetch: built or cached, the case read the same one artifact
    monkeypatch.setenv("TECHBENCH_CACHE", str(tmp_path))

    def outer():
        return {"student": fetch("teacher", {"k": 1}, lambda: {"w": torch.ones(2)})[0]["w"] * 2}

    names = []
    for _ in range(2):
        with artifacts_read() as seen:
            fetch("student", {"k": 1}, outer)
        names.append(seen)
    assert names[0] == names[1] and [n.split(":")[0] for n in names[0]] == ["student"]


def test_a_case_records_the_artifacts_it_read(tmp_path, monkeypatch):
    monkeypatch.setenv("TECHBENCH_CACHE", str(tmp_path / "cache"))
    code, records = runner.run(runner.RunConfig(suites=[SUITES["_cached"]], size="smoke", device="cpu",
                                                out=tmp_path / "run", inline=True))
    by = {r.variant: r for r in records}
    assert code == 0 and "artifacts_digest" not in by["plain"].metrics
    expected = artifacts_digest({f"_cached:{digest({'w': torch.full((4,), 1.0)})}"})
    assert by["model"].metrics["artifacts_digest"] == expected
    [again] = [r for r in read_records(tmp_path / "run" / "records.jsonl") if r.variant == "model"]
    assert again.metrics["artifacts_digest"] == expected  # exact through JSON: 48 bits


def side(root, name, quality, artifacts):
    """One run directory per (quality, artifacts_digest) pair."""
    return [write_run(root / name, f"{name}{i}", [timing_case("v", 100, seed=i, quality_db=q, artifacts_digest=a)])
            for i, (q, a) in enumerate(zip(quality, artifacts, strict=True))]


def test_compare_holds_an_exact_metric_from_other_weights_to_the_threshold(tmp_path):
    # one run a side from other weights: 0.3% less is a retrain's noise, a third less is not
    c = compare(side(tmp_path, "b", [30.0], [1]), side(tmp_path, "n", [29.9], [2]))
    row = one(c, "v", "quality_db")
    assert (row.verdict, row.varies) == ("same", RETRAINED) and c.regressions.empty
    c = compare(side(tmp_path / "x", "b", [30.0], [1]), side(tmp_path / "x", "n", [20.0], [2]))
    assert one(c, "v", "quality_db").verdict == "worse" and len(c.gating) == 1
    # the same weights: exact, and 0.1 dB less is worse
    c = compare(side(tmp_path / "s", "b", [30.0], [1]), side(tmp_path / "s", "n", [29.9], [1]))
    assert (one(c, "v", "quality_db").verdict, one(c, "v", "quality_db").varies) == ("worse", None)
    # a value the other weights did not move stays exact: the same, with no note
    c = compare(side(tmp_path / "y", "b", [30.0], [1]), side(tmp_path / "y", "n", [30.0], [2]))
    assert (one(c, "v", "quality_db").verdict, one(c, "v", "quality_db").varies) == ("same", None)
    # a count of bytes comes from shapes, not the weights' values: held exactly whatever the weights
    def peak(name, values, artifacts):
        return [write_run(tmp_path / "p" / name, f"{name}{i}", [timing_case("v", 100, seed=i, peak_mem_bytes=b,
                                                                           artifacts_digest=a)])
                for i, (b, a) in enumerate(zip(values, artifacts, strict=True))]
    c = compare(peak("b", [1000], [1]), peak("n", [1040], [2]))
    assert (one(c, "v", "peak_mem_bytes").verdict, one(c, "v", "peak_mem_bytes").varies) == ("worse", None)
    # zeros on both sides from other weights: the same, not an infinite change
    c = compare(side(tmp_path / "z", "b", [0.0, 0.0], [1, 1]), side(tmp_path / "z", "n", [0.0, 1.0, 0.0], [2, 2, 2]))
    assert one(c, "v", "quality_db").verdict == "same"
    # a side that read the other's weights in some run: not another training, held exactly
    c = compare(side(tmp_path / "o", "b", [30.0, 30.0], [1, 2]), side(tmp_path / "o", "n", [29.9], [1]))
    assert one(c, "v", "quality_db").varies != RETRAINED
    # three runs a side from other trainings: the threshold and their spread
    base = side(tmp_path / "3", "b", [30.0, 30.1, 29.9], [1, 2, 3])
    c = compare(base, side(tmp_path / "3", "n", [30.05, 29.95, 30.0], [4, 5, 6]))
    assert one(c, "v", "quality_db").verdict == "same"
    c = compare(base, side(tmp_path / "4", "n", [20.0, 20.1, 19.9], [4, 5, 6]))
    assert one(c, "v", "quality_db").verdict == "worse" and len(c.gating) == 1


@needs("pyarrow")
def test_the_dashboard_holds_a_point_from_other_weights_to_the_threshold(tmp_path):
    run = write_run(tmp_path / "runs", "r0", [timing_case("v", 100, quality_db=30.0, artifacts_digest=0xABC)])
    history.add(run, tmp_path / "store")
    assert set(history.load(tmp_path / "store")["artifacts"]) == {"000000000abc"}

    def nights(values, artifacts):
        return kinds_per_night(exact_frame([float(v) for v in values], direction="higher", metric="quality_db",
                                           artifacts=artifacts))

    assert nights([30.0] * 4 + [29.9], ["a"] * 5)[-1] == "changed"  # one training's weights: held exactly
    assert nights([30.0] * 4 + [29.9, 29.9], ["a"] * 4 + ["b"] * 2) == [None] * 6  # retrained: 0.3% < 5%
    assert nights([30.0] * 4 + [20.0], ["a"] * 4 + ["b"])[-1] == "changed"  # a third less is not a retrain's noise
    # the retrained point is the new baseline, held exactly while the weights stay
    assert nights([30.0] * 4 + [29.9, 29.8], ["a"] * 4 + ["b"] * 2) == [None] * 5 + ["changed"]
    # a count the weights do not move, then one byte more with the same weights: seen
    peak = exact_frame([100.0, 100.0, 100.0, 101.0], artifacts=["a", "b", "b", "b"])
    assert kinds_per_night(peak) == [None, None, None, "changed"]
    # a retrain a night, each 4% worse than the last (inside the threshold): caught against the older points
    walk = [30.0 * 0.96 ** max(0, i - 3) for i in range(12)]
    kinds = nights(walk, [f"w{i}" for i in range(12)])
    assert kinds[:6] == [None] * 6 and "drift" in kinds
    # history: a count of bytes carries no artifacts (it comes from shapes), a quality does
    run = write_run(tmp_path / "runs", "r1", [timing_case("v", 100, quality_db=30.0, peak_mem_bytes=10,
                                                         artifacts_digest=0xABC)])
    history.add(run, tmp_path / "store2")
    frame = history.load(tmp_path / "store2")
    artifacts = dict(zip(frame["metric"], frame["artifacts"].fillna("-")))
    assert (artifacts["quality_db"], artifacts["peak_mem_bytes"]) == ("000000000abc", "-")


def test_ranks_report_the_artifacts_they_read_once():
    from bench.distributed import aggregate

    def rank(d):
        return {"status": "ok", "metrics": {"artifacts_digest": d, "x_ms": 1.0}, "samples": {}, "error": None}

    same = aggregate([rank(5), rank(5)], {"x_ms": "lower"})["metrics"]
    assert same["artifacts_digest"] == 5 and not any(k.startswith("rank_") and "artifacts" in k for k in same)
    assert aggregate([rank(5), rank(6)], {})["metrics"]["artifacts_digest"] == artifacts_digest({"5", "6"})
    assert aggregate([rank(None), rank(None)], {})["metrics"]["artifacts_digest"] is None


def test_runs_from_before_the_digest_hold_new_ones_to_the_threshold(tmp_path):
    # a base recorded by a techbench before artifacts_digest may have read any weights: held to the threshold, and
    # a third less is still worse; a case that reads nothing cached on either side stays exact
    def old_and_new(where, base, new):
        b = write_run(tmp_path / where / "b", "b0", [timing_case("v", 100, quality_db=base)])
        n = write_run(tmp_path / where / "n", "n0", [timing_case("v", 100, quality_db=new, artifacts_digest=2)])
        return one(compare([b], [n]), "v", "quality_db")

    row = old_and_new("near", 30.0, 29.9)
    assert (row.verdict, row.varies) == ("same", UNKNOWN_WEIGHTS)
    assert old_and_new("far", 30.0, 20.0).verdict == "worse"
    b = write_run(tmp_path / "plain" / "b", "b0", [timing_case("v", 100, quality_db=30.0)])
    n = write_run(tmp_path / "plain" / "n", "n0", [timing_case("v", 100, quality_db=29.9)])
    assert one(compare([b], [n]), "v", "quality_db").verdict == "worse"


@needs("pyarrow")
def test_the_dashboard_holds_the_first_point_with_a_digest_to_the_threshold():
    def nights(values, artifacts):
        return kinds_per_night(exact_frame([float(v) for v in values], direction="higher", metric="quality_db",
                                           artifacts=artifacts))

    old = [None] * 4
    assert nights([30.0] * 4 + [29.9, 29.9], old + ["a", "a"]) == [None] * 6  # the switch-over: 0.3% < 5%
    assert nights([30.0] * 4 + [29.9, 29.8], old + ["a", "a"])[-1] == "changed"  # then exact again
    assert nights([30.0] * 4 + [20.0], old + ["a"])[-1] == "changed"
    assert nights([30.0] * 4 + [29.9], old + [None])[-1] == "changed"  # no digest anywhere: exact
