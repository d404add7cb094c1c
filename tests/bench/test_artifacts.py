"""Which cached artifacts (trained weights) a case read: impls.cache names each with a digest, bench.case records them
as artifacts_digest, the history keeps it per case, and compare and the dashboard judge an exact metric of runs that
read other ones as a measured metric rather than exactly."""

import torch

from bench import history, runner
from bench.artifacts import artifacts_digest, artifacts_read
from bench.compare import RETRAINED, compare
from bench.records import read_records
from bench.suite import SUITES, Measurement, Suite, register
from impls.cache import digest, fetch, load_or_build
from reports import dashboard
from reports import regressions as rule
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
    assert artifacts_digest({"a:1", "b:2"}) == artifacts_digest({"b:2", "a:1"}) < 2**48


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


def test_compare_judges_an_exact_metric_from_other_weights_as_measured(tmp_path):
    # one run a side from other weights: no exact verdict (a GPU retrain moves the last digits, or more)
    c = compare(side(tmp_path, "b", [30.0], [1]), side(tmp_path, "n", [29.9], [2]))
    row = one(c, "v", "quality_db")
    assert (row.verdict, row.varies) == ("n/a", RETRAINED) and c.regressions.empty
    # the same weights: exact, and 0.1 dB less is worse
    c = compare(side(tmp_path / "s", "b", [30.0], [1]), side(tmp_path / "s", "n", [29.9], [1]))
    assert one(c, "v", "quality_db").verdict == "worse"
    # three runs a side from other trainings: judged with the threshold and their spread
    base = side(tmp_path / "3", "b", [30.0, 30.1, 29.9], [1, 2, 3])
    c = compare(base, side(tmp_path / "3", "n", [30.05, 29.95, 30.0], [4, 5, 6]))
    assert one(c, "v", "quality_db").verdict == "same"
    c = compare(base, side(tmp_path / "4", "n", [20.0, 20.1, 19.9], [4, 5, 6]))
    assert one(c, "v", "quality_db").verdict == "worse" and len(c.gating) == 1


@needs("pyarrow")
def test_the_dashboard_judges_a_retrained_exact_series_against_a_band(tmp_path):
    run = write_run(tmp_path / "runs", "r0", [timing_case("v", 100, quality_db=30.0, artifacts_digest=0xABC)])
    history.add(run, tmp_path / "store")
    assert set(history.load(tmp_path / "store")["artifacts"]) == {"000000000abc"}
    values = [30.0] * 4 + [29.9, 29.9]
    same = exact_frame(values, direction="higher", metric="quality_db", artifacts=["a"] * 6)
    assert kinds_per_night(same)[-2:] == ["changed", "changed"]  # one training's weights: held exactly
    other = exact_frame(values, direction="higher", metric="quality_db", artifacts=["a"] * 4 + ["b"] * 2)
    assert kinds_per_night(other) == [None] * 6  # retrained: 0.3% is inside the 5% band
    (s, _), = rule.judged(other, 0.05, 7)
    assert rule.retrained(s) and not s["exactly"].iloc[-1]
    assert dashboard.regressions(exact_frame([30.0] * 4 + [20.0] * 2, direction="higher", metric="quality_db",
                                             artifacts=["a"] * 4 + ["b"] * 2))["kind"].tolist() == ["step"]
