"""The dashboard with exact metrics (bytes counted, FLOPs, a seeded quality): deterministic for a commit and machine,
so held to their latest good value with no noise band, one changed run flagged, contended or not."""

import json
import math

import pandas as pd
import pytest

from bench import history
from reports import dashboard
from reports import regressions as rule
from tests.optional import needs
from tests.reports.test_dashboard import CASE, NIGHTS, case_nights, frame_of, nights
from tests.runs import write_run


def exact_frame(values, direction="lower", metric="peak_mem_bytes", **kw):
    return frame_of(values, metric=metric, direction=direction).assign(kind="exact", **kw)


def kinds_per_night(frame) -> list[str | None]:
    """The flag's kind as each night's dashboard would show it (None: not flagged)."""
    out = []
    for n in range(1, len(frame) + 1):
        found = dashboard.regressions(frame.iloc[:n])
        out.append(found["kind"].iloc[0] if len(found) else None)
    return out


def growing_nights(tmp_path, growth: dict[int, float], declare: bool = True, sha: str | None = None):
    """NIGHTS nightly checkpointing runs in a store, each of its own commit (or all of `sha`); on night i in `growth`
    CASE's peak_mem_bytes is scaled by it."""

    def grow(night, r):
        if night in growth:
            r["metrics"]["peak_mem_bytes"] = int(r["metrics"]["peak_mem_bytes"] * growth[night])

    return case_nights(tmp_path, grow, sha, declare=declare)


@needs("pyarrow")
def test_history_rows_carry_the_metric_kind(tmp_path):
    frame = history.load(growing_nights(tmp_path, {}))
    kinds = dict(zip(frame["metric"], frame["kind"]))
    assert kinds["step_time_ms"] == "measured" and kinds["peak_mem_bytes"] == "exact"
    assert kinds["time_overhead_x"] == "measured"  # a ratio of times: measured, as compare judges it
    assert kinds["mem_saving_x"] == "exact"  # a ratio of byte counts
    assert frame[frame["metric"].isna()]["kind"].isna().all()  # status-only rows


@needs("pyarrow")
def test_a_small_byte_growth_is_flagged_at_once(tmp_path):
    # +4% bytes, under the 5% threshold a timing is held to: deterministic, so the first night it appears
    found = dashboard.regressions(history.load(growing_nights(tmp_path, {NIGHTS - 1: 1.04})))
    assert list(zip(found["case_id"], found["metric"], found["kind"])) == [(CASE, "peak_mem_bytes", "changed")]
    row = found.iloc[0]
    assert (row["bad_runs"], row["band_pct"], row["previous"], row["baseline"]) == (1, 0.0, 2.8e9, 2.8e9)
    assert row["change_pct"] == pytest.approx(4)


@needs("pyarrow")
def test_a_store_written_before_the_kind_column_judges_as_before(tmp_path):
    # no kind stored (an older store): every metric is measured, so +4% is inside the 5% threshold
    frame = history.load(growing_nights(tmp_path, {NIGHTS - 2: 1.04, NIGHTS - 1: 1.04})).drop(columns="kind")
    assert dashboard.regressions(frame).empty
    # a series takes the kind of its newest run: one new run with the column is enough
    assert dashboard.regressions(frame.assign(kind=None)).empty
    frame.loc[(frame["run_id"] == f"night-{NIGHTS - 1}") & (frame["metric"] == "peak_mem_bytes"), "kind"] = "exact"
    found = dashboard.regressions(frame)
    assert set(found["kind"]) == {"changed"} and set(found["metric"]) == {"peak_mem_bytes"}


@pytest.mark.parametrize("values, direction, per_night", [
    ([100, 100, 100, 101], "lower", [None, None, None, "changed"]),  # one byte more
    ([100, 100, 99, 99, 100], "lower", [None] * 4 + ["changed"]),  # an improvement is the new baseline at once
    ([100, 100, 100, 104, 100], "lower", [None, None, None, "changed", None]),  # a fixed change clears
    ([100, 104, 104, 104, 104], "lower", [None] + ["changed"] * 4),  # held to the first point: no noise to absorb
    ([100, 100, 100, 104, 104, 104, 104, 104, 104, 104, 104], "lower", [None] * 3 + ["changed"] * 8),  # it stays
    ([30.0, 30.0, 30.0, 29.99], "higher", [None, None, None, "changed"]),  # SQNR in dB: higher is better
    ([30.0, 30.0, 30.0, 31.0], "higher", [None] * 4),
    ([0, 0, 0, 1], "lower", [None, None, None, "changed"]),  # from 0: no relative change to threshold
])
def test_the_exact_rule(values, direction, per_night):
    assert kinds_per_night(exact_frame([float(v) for v in values], direction)) == per_night


def test_a_change_from_zero_has_an_infinite_change():
    row = dashboard.regressions(exact_frame([0.0, 0.0, 0.0, 1024.0])).iloc[0]
    assert (row["baseline"], row["latest"], row["band_pct"]) == (0.0, 1024.0, 0.0) and row["change_pct"] == math.inf


def test_contention_does_not_excuse_an_exact_change():
    values, away = [100.0] * 5 + [104.0], [False] * 5 + [True]
    found = dashboard.regressions(exact_frame(values, contended=away))
    assert list(found["kind"]) == ["changed"] and found["latest"].iloc[0] == 104.0
    measured = frame_of(nights(12, lambda i: 1.0) + [300.0, 300.0]).assign(contended=[False] * 12 + [True] * 2)
    assert dashboard.regressions(measured).empty  # a timing under the same load is judged against nothing
    (s, _), = rule.judged(exact_frame(values, contended=away), 0.05, 7)
    assert rule.not_judged(s) == [False] * 6


def test_an_exact_metric_that_changes_kind_is_judged_by_its_newest():
    frame = exact_frame([100.0, 100.0, 100.0, 104.0])
    assert list(dashboard.regressions(frame)["kind"]) == ["changed"]
    frame.loc[frame.index[-1], "kind"] = "measured"  # its suite now declares it measured: the band rule, 4% < 5%
    assert dashboard.regressions(frame).empty
    frame.loc[frame.index[-1], "kind"] = "info"  # or context: never judged
    assert dashboard.regressions(frame).empty


@needs("plotly", "pyarrow")
def test_site_lists_the_exact_change(tmp_path):
    store = growing_nights(tmp_path, {NIGHTS - 1: 1.04})
    index = dashboard.build(store, tmp_path / "site")
    text = index.read_text()
    assert "changed" in text and "peak_mem_bytes" in text and "No regressions" not in text
    page = (tmp_path / "site" / "suite-checkpointing.html").read_text()
    assert "REGRESSION (changed, 1 runs)" in page


def test_old_and_new_kinds_mix_per_series():
    old = exact_frame([100.0] * 4).assign(kind=None)
    new = exact_frame([104.0]).assign(run_id="r9", timestamp=pd.Timestamp("2026-12-01", tz="UTC"))
    found = dashboard.regressions(pd.concat([old, new], ignore_index=True))
    assert list(found["kind"]) == ["changed"] and found["baseline"].iloc[0] == 100.0


def test_an_exact_metric_that_varies_within_a_commit_is_judged_as_measured():
    # a loss from a model retrained each night on a GPU that adds in any order: two runs of one commit differ, so
    # the series is not deterministic there and gets the noise band, not a flag every night it ticks up
    values = [1.2e-3, 1.2000001e-3] * 3
    frame = exact_frame(values, git_sha=["a" * 40] * 2 + ["b" * 40] * 2 + ["c" * 40] * 2, git_dirty=False)
    assert kinds_per_night(frame) == [None] * 6
    (s, _), = rule.judged(frame, 0.05, 7)
    assert rule.varied_at(s) == "a" * 40 and not s["exactly"].iloc[-1]
    # one commit a night: nothing says it is not deterministic, so each uptick is a change
    frame = exact_frame(values, git_sha=[f"{i}" * 40 for i in range(6)], git_dirty=False)
    assert kinds_per_night(frame) == [None, "changed", None, "changed", None, "changed"]
    # a dirty checkout's runs of one sha are not one commit
    frame = exact_frame(values, git_sha=["a" * 40] * 6, git_dirty=True)
    assert kinds_per_night(frame)[1] == "changed"


def test_fractions_are_held_to_1e9_and_whole_numbers_to_the_unit():
    sliced_w2 = [0.280080241031198, 0.28008024103119805, 0.280080241031198, 0.28008024103119805]  # 1 vs 2 threads
    assert kinds_per_night(exact_frame(sliced_w2)) == [None] * 4
    assert kinds_per_night(exact_frame([2.8e9, 2.8e9, 2.8e9 + 1])) == [None, None, "changed"]


def test_a_run_of_an_older_techbench_does_not_turn_exact_judging_off():
    # two machines share a store; one still runs a techbench that writes no kind: its newer rows say nothing
    frame = exact_frame([100.0, 100.0, 100.0, 104.0])
    old = exact_frame([5.0]).assign(env_id="e2", kind=None, run_id="r9", timestamp=pd.Timestamp("2026-12-01", tz="UTC"))
    found = dashboard.regressions(pd.concat([frame, old], ignore_index=True))
    assert list(zip(found["env_id"], found["kind"])) == [("e1", "changed")]


@needs("plotly", "pyarrow")
def test_site_with_a_zero_baseline_and_a_varying_exact_metric(tmp_path, recwarn):
    store = growing_nights(tmp_path, {NIGHTS - 1: 1.04}, sha="f" * 40)  # every night one commit: the +4% varies it
    dashboard.build(store, tmp_path / "site")
    page = (tmp_path / "site" / "suite-checkpointing.html").read_text()
    assert f"exact, but runs of commit {'f' * 10} differ: judged against the noise band" in page
    assert "REGRESSION" not in page  # +4% is inside the 5% band
    zero = tmp_path / "zero"
    for night, peak in enumerate([0, 0, 1024]):  # an exact series from 0: its change is +inf, said without warnings
        record = {"suite": "checkpointing", "variant": "none", "params": {"n": 1}, "metrics": {"peak_mem_bytes": peak}}
        history.add(write_run(zero / "runs", f"z{night}", [record], sha=f"{night}" * 40,
                              started_at=f"2026-11-{night + 1:02d}T01:00:00Z"), zero / "store")
    dashboard.build(zero / "store", zero / "site")
    assert "REGRESSION (changed, 1 runs)" in (zero / "site" / "suite-checkpointing.html").read_text()
    assert dashboard.regressions(history.load(zero / "store"))["change_pct"].iloc[0] == math.inf
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_a_library_upgrade_starts_a_series_of_its_own():
    # an HF variant's peak grows 4% when transformers is upgraded: another version measured, not a regression of the
    # code under test (as a torch upgrade starts another env_id); the new version's own change is still caught
    library = ["transformers 4.57.1"] * 4 + ["transformers 4.58.0"] * 4
    values = [100.0] * 4 + [104.0, 104.0, 104.0, 105.0]
    frame = exact_frame(values, library=library, git_sha=[f"{i}" * 40 for i in range(8)])
    found = dashboard.regressions(frame)
    assert list(zip(found["library"], found["kind"], found["latest"])) == [("transformers 4.58.0", "changed", 105.0)]
    assert len(rule.judged(frame, 0.05, 7)) == 2


@needs("pyarrow")
def test_history_rows_name_the_library_a_variant_measures(tmp_path):
    records = [{"suite": "checkpointing", "variant": v, "params": {"n": 1}, "metrics": {"peak_mem_bytes": 1}}
               for v in ("hf_full", "full")]
    run = write_run(tmp_path / "runs", "r0", records)
    meta = json.loads((run / "run.json").read_text())
    meta["suites"]["checkpointing"]["libraries"]["hf_full"] = "transformers 9.9.9"
    (run / "run.json").write_text(json.dumps(meta))
    history.add(run, tmp_path / "store")
    frame = history.load(tmp_path / "store")
    assert dict(zip(frame["variant"], frame["library"].fillna("-"))) == {"hf_full": "transformers 9.9.9", "full": "-"}


def test_a_store_carried_across_the_library_column_keeps_its_series_whole():
    # runs added before the column have no library; the same, unchanged version is named from then on: one series,
    # and a slowdown that began before keeps its flag (no fresh baseline at the level it regressed to)
    values = [100.0] * 6 + [130.0] * 6
    frame = frame_of(values).assign(library=[None] * 8 + ["transformers 4.57.1"] * 4)
    found = dashboard.regressions(frame)
    assert list(zip(found["kind"], found["library"], found["stale"], found["bad_runs"])) == [
        ("step", "transformers 4.57.1", False, 6)]
    assert len(rule.judged(frame, 0.05, 7)) == 1


def slower_with_its_rates(tmp_path, rates=("tokens_per_s",), declare=True):
    """A store whose last two nights run CASE's step 30% slower, with `rates` moved as a slower step moves them."""
    def slow(night, r):
        if night >= NIGHTS - 2:
            r["metrics"]["step_time_ms"] *= 1.3
            r["samples"]["step_time_ms"] = [x * 1.3 for x in r["samples"]["step_time_ms"]]
            for name in rates:
                r["metrics"][name] /= 1.3

    return case_nights(tmp_path, slow, declare=declare)


@needs("pyarrow")
def test_a_rate_that_moved_with_its_timing_follows_it(tmp_path):
    # one slower step is one regression, its tokens/s listed under it, as compare lists them (bench.verdicts.follows)
    frame = history.load(slower_with_its_rates(tmp_path))
    assert json.loads(frame[frame["metric"] == "tokens_per_s"]["inputs"].iloc[0]) == ["step_time_ms"]
    assert frame[frame["metric"] == "step_time_ms"]["inputs"].isna().all()
    found = dashboard.regressions(frame)
    assert sorted(zip(found["metric"], found["follows"].fillna(""))) == [("step_time_ms", ""),
                                                                          ("tokens_per_s", "step_time_ms")]


@needs("pyarrow")
def test_a_rate_that_moved_alone_is_a_regression_of_its_own(tmp_path):
    # the timing held and the rate fell (its work was counted differently, say): nothing for it to follow
    def rate_only(night, r):
        if night >= NIGHTS - 2:
            r["metrics"]["tokens_per_s"] /= 1.3

    found = dashboard.regressions(history.load(case_nights(tmp_path, rate_only)))
    assert list(zip(found["metric"], found["follows"])) == [("tokens_per_s", None)]


@needs("pyarrow")
def test_a_store_without_inputs_flags_each_metric_as_before(tmp_path):
    # runs of a techbench that declared nothing: no inputs to follow, each flag stands alone
    found = dashboard.regressions(history.load(slower_with_its_rates(tmp_path, declare=False)))
    assert sorted(found["metric"]) == ["step_time_ms", "tokens_per_s"] and found["follows"].isna().all()


@needs("plotly", "pyarrow")
def test_the_index_counts_a_slower_step_once(tmp_path):
    index = dashboard.build(slower_with_its_rates(tmp_path), tmp_path / "site")
    text = index.read_text()
    assert "(1 regression, 1 following)" in text and "<th>follows</th>" in text
    assert text.index("<td>step_time_ms</td>") < text.index("<td>tokens_per_s</td>")
    suite = (index.parent / "suite-checkpointing.html").read_text()
    assert "follows step_time_ms (step, 2 runs)" in suite and suite.count("REGRESSION (step, 2 runs)") == 1


@needs("plotly", "pyarrow")
def test_the_command_says_what_the_index_says(tmp_path, capsys):
    # a nightly log shows the dashboard's verdict beside compare's
    from bench.cli import main

    store = slower_with_its_rates(tmp_path)
    assert main(["dashboard", str(store), "-o", str(tmp_path / "site")]) == 0
    assert "index.html (1 current regression and 1 following)" in capsys.readouterr().out
