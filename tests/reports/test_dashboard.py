import pandas as pd
import pytest

from bench import history
from reports import dashboard
from tests.browser import load, needs_chromium
from tests.runs import A100, H200, checkpointing_records, write_run

NIGHTS = 8
CASE = "checkpointing/selective/batch=4,d_model=256,dtype=bfloat16,layers=8,seq=256"


def nightly(tmp_path, slow: dict[int, float] | None = None, a100_from: int | None = None):
    """NIGHTS nightly checkpointing runs on H200 (2% sample noise); night i's CASE step time scaled by slow[i];
    from night a100_from on, the runs are on an A100, 30% slower on every case."""
    store, slow = tmp_path / "store", slow or {}
    for night in range(NIGHTS):
        on_a100 = a100_from is not None and night >= a100_from
        records = checkpointing_records(scale=1.3 if on_a100 else 1.0, seed=night)
        for r in records:
            if night in slow and r.get("status", "ok") == "ok" and (r["variant"], r["params"]["batch"]) == (
                    "selective", 4):
                r["metrics"]["step_time_ms"] *= slow[night]
                r["samples"]["step_time_ms"] = [x * slow[night] for x in r["samples"]["step_time_ms"]]
        run = write_run(tmp_path / "runs", f"night-{night}", records, gpu=A100 if on_a100 else H200,
                        started_at=f"2026-11-{night + 1:02d}T01:00:00Z", sha=f"{night}" * 40)
        history.add(run, store)
    return store


def flags(store, **kw):
    found = dashboard.regressions(history.load(store), **kw)
    return sorted(zip(found["case_id"], found["metric"]))


def test_two_consecutive_slow_nights_are_flagged(tmp_path):
    store = nightly(tmp_path, slow={NIGHTS - 2: 1.3, NIGHTS - 1: 1.3})
    found = dashboard.regressions(history.load(store), threshold=0.05, window=7)
    assert list(zip(found["case_id"], found["metric"])) == [(CASE, "step_time_ms")]
    row = found.iloc[0]
    assert row["env_id"] == "NVIDIA_H200-2.11.0" and row["gpu"] == "NVIDIA H200" and row["run_id"] == "night-7"
    assert row["change_pct"] == pytest.approx(30, abs=3)
    assert row["baseline"] == pytest.approx(105, rel=0.02)  # selective: 1.05 x 100 ms


def test_a_single_slow_night_is_not_flagged(tmp_path):
    assert flags(nightly(tmp_path, slow={NIGHTS - 1: 1.3})) == []
    assert flags(nightly(tmp_path / "middle", slow={3: 1.3})) == []


def test_a_hardware_change_is_not_a_regression(tmp_path):
    store = nightly(tmp_path, a100_from=NIGHTS - 3)
    assert flags(store) == []
    frame = history.load(store)
    assert set(frame["gpu"]) == {"NVIDIA H200", "NVIDIA A100-SXM4-80GB"}


def test_stable_nights_are_not_flagged(tmp_path):
    store = nightly(tmp_path)
    assert flags(store) == []
    assert flags(store, threshold=0.01, window=3) == []


def test_speedups_are_not_flagged(tmp_path):
    assert flags(nightly(tmp_path, slow={NIGHTS - 2: 0.7, NIGHTS - 1: 0.7})) == []


def frame_of(values, metric="step_time_ms", direction="lower", env_id="e1"):
    return pd.DataFrame({"suite": "s", "case_id": "s/v/n=1", "variant": "v", "metric": metric, "env_id": env_id,
                         "run_id": [f"r{i}" for i in range(len(values))], "status": "ok", "value": values,
                         "direction": direction,
                         "timestamp": pd.date_range("2026-11-01", periods=len(values), freq="D", tz="UTC")})


@pytest.mark.parametrize("values, metric, direction, flagged", [
    ([100, 101, 99, 100, 80, 79], "tokens_per_s", "higher", True),  # throughput drop: worse for higher-is-better
    ([100, 101, 99, 100, 120, 121], "tokens_per_s", "higher", False),
    ([100, 130, 80, 120, 90, 110, 140, 140], "step_time_ms", "lower", False),  # +33% but within a ±60% noise band
    ([100, 100, 100, 100, 104, 104], "step_time_ms", "lower", False),  # below the 5% threshold
    ([100, 100, 106, 106], "step_time_ms", "lower", True),  # a short history is enough: the band is the threshold
    ([106, 106], "step_time_ms", "lower", False),  # nothing to compare against
    ([100, 100, 100, 100, 100, 150], "step_time_ms", "lower", False),  # the latest point alone is not two
    ([100, 100, 100, 150, 100, 150], "step_time_ms", "lower", False),  # two bad points, not consecutive
])
def test_rule_on_series(values, metric, direction, flagged):
    found = dashboard.regressions(frame_of([float(v) for v in values], metric, direction), threshold=0.05, window=7)
    assert len(found) == int(flagged)


def test_failed_and_informational_rows_are_ignored():
    frame = frame_of([100.0, 100.0, 100.0, 150.0, 150.0])
    other = frame_of([1000.0] * 4 + [2000.0], metric="sm_clock_mhz", direction=None)
    status_only = frame_of([None] * 2).assign(status="oom", metric=None, direction=None, run_id=["r5", "r6"])
    both = pd.concat([frame, other, status_only], ignore_index=True)
    assert len(dashboard.regressions(both, 0.05, 7)) == 1


def test_site(tmp_path):
    store = nightly(tmp_path, slow={NIGHTS - 2: 1.3, NIGHTS - 1: 1.3})
    index = dashboard.build(store, tmp_path / "site")
    assert index == tmp_path / "site" / "index.html"
    assert sorted(p.name for p in index.parent.iterdir()) == ["index.html", "suite-checkpointing.html"]
    text = index.read_text()
    assert CASE.removeprefix("checkpointing/") in text and "step_time_ms" in text
    assert 'href="suite-checkpointing.html"' in text
    assert "NVIDIA_H200-2.11.0" in text and "night-7" in text and "7777777777" in text and "(1 regression)" in text
    suite = (index.parent / "suite-checkpointing.html").read_text()
    assert suite.count("plotly-graph-div") == 8  # one figure per directional metric
    assert suite.count("REGRESSION") == 1 and "needs a CUDA device" in suite
    assert text.count("<script type=\"text/javascript\">/**") == suite.count("<script type=\"text/javascript\">/**")


def test_site_marks_the_env_change(tmp_path):
    index = dashboard.build(nightly(tmp_path, a100_from=NIGHTS - 3), tmp_path / "site")
    assert "No regressions" in index.read_text()
    suite = (index.parent / "suite-checkpointing.html").read_text()
    assert "env: NVIDIA A100-SXM4-80GB" in suite and '"diamond"' in suite


def test_empty_store_builds_an_index(tmp_path):
    index = dashboard.build(tmp_path / "store", tmp_path / "site")
    assert "No runs yet" in index.read_text()


@needs_chromium
def test_pages_load_without_javascript_errors(tmp_path):
    store = nightly(tmp_path, slow={NIGHTS - 2: 1.3, NIGHTS - 1: 1.3}, a100_from=NIGHTS - 4)
    index = dashboard.build(store, tmp_path / "site")
    for path in (index, index.parent / "suite-checkpointing.html"):
        errors, dom = load(path)
        assert errors == [], path.name
        assert "techbench dashboard" in dom
    assert dom.count('class="main-svg"') >= 8  # plotly drew every figure


def test_interleaved_environments_are_separate_series():
    # two CI machines adding to one store, night after night: A100 always 30% slower, H200 regresses at the end
    h200 = [100.0, 101.0, 99.0, 100.0, 130.0, 131.0]
    values = [v for h in h200 for v in (h, 130.0)]
    frame = frame_of(values).assign(env_id=["h200", "a100"] * len(h200))
    found = dashboard.regressions(frame, 0.05, 7)
    assert list(found["env_id"]) == ["h200"] and found["baseline"].iloc[0] == pytest.approx(100.0)
