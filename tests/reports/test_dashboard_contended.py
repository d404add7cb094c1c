"""The dashboard with contended runs (bench.interference): judged against nothing, kept out of every baseline, and
drawn hollow with the reason on hover; the history store keeps the flag per row."""

import json
import re

from bench import history
from reports import dashboard
from reports import regressions as rule
from tests.optional import needs
from tests.reports.test_dashboard import CASE, NIGHTS, case_nights, frame_of, nights

LOAD = {"contended": True, "host_other_cpus": 1.7, "host_case_cpus": 0.3, "host_cpus": 2, "host_load_avg": 5.2}
REASON = "other processes used 1.7 of 2 CPUs during the timed window"


def loaded_nights(tmp_path, loaded: dict[int, float]):
    """NIGHTS nightly checkpointing runs; on night i in `loaded` CASE ran under load: its clock read loaded[i] times
    its usual and its record is flagged contended, as a build beside it on the same CPUs would leave it."""

    def load(night, r):
        if night in loaded:
            r["metrics"]["step_time_ms"] *= loaded[night]
            r["samples"]["step_time_ms"] = [x * loaded[night] for x in r["samples"]["step_time_ms"]]
            r["metrics"].update(LOAD)

    return case_nights(tmp_path, load)


def contended_frame(values, contended, **kw):
    return frame_of(values, **kw).assign(contended=contended,
                                         contended_reason=[REASON if c else None for c in contended])


@needs("pyarrow")
def test_history_rows_carry_the_flag_and_its_reason(tmp_path):
    store = loaded_nights(tmp_path, {NIGHTS - 1: 3.0})
    frame = history.load(store)
    last = frame[frame["run_id"] == f"night-{NIGHTS - 1}"]
    case = last[last["case_id"] == CASE]
    assert len(case) > 1 and case["contended"].eq(True).all() and case["contended_reason"].eq(REASON).all()
    others = last[(last["case_id"] != CASE)]
    assert others["contended"].isna().all() and others["contended_reason"].isna().all()  # their records had no flag
    assert frame[frame["run_id"] != f"night-{NIGHTS - 1}"]["contended"].isna().all()


def test_contended_spikes_raise_no_regression():
    values = nights(12, lambda i: 1.0) + [300.0, 300.0]
    assert len(dashboard.regressions(frame_of(values))) == 1  # the same spikes, not flagged contended: a step
    assert dashboard.regressions(contended_frame(values, [False] * 12 + [True, True])).empty


def test_contended_points_do_not_move_the_baseline():
    # contended points early (where the first 3 points always count), inside the band (where a point counts) and
    # far out: the baseline and band of every other point are those of the series without them
    values = nights(24, lambda i: 1.0, noise=0.01)
    away = [i in (1, 9, 15) for i in range(24)]
    values[1], values[9], values[15] = 60.0, 103.0, 300.0
    (s, judged), = rule.judged(contended_frame(values, away), 0.05, 7)
    kept = [v for v, a in zip(values, away) if not a]
    (_, alone), = rule.judged(frame_of(kept), 0.05, 7)
    mine = [p for p, a in zip(judged, away) if not a]
    assert [p and (p["baseline"], p["half"], p["kind"]) for p in mine] == [
        p and (p["baseline"], p["half"], p["kind"]) for p in alone]
    assert all(p["kind"] is None for p, a in zip(judged, away) if a and p)
    assert list(s["contended"]) == away


def test_a_bad_run_passes_over_a_contended_night():
    values = [100.0] * 8 + [130.0, 300.0, 131.0]
    found = dashboard.regressions(contended_frame(values, [False] * 9 + [True, False]))
    row = found.iloc[0]
    assert (row["kind"], row["bad_runs"], row["previous"], row["latest"], row["run_id"]) == ("step", 2, 130, 131, "r10")


@needs("pyarrow")
def test_a_store_written_before_the_flag_reads_as_not_contended(tmp_path):
    import pyarrow.parquet as pq

    store = loaded_nights(tmp_path, {NIGHTS - 2: 1.3, NIGHTS - 1: 1.3})
    for f in (store / "runs").glob("*.parquet"):  # as an older techbench wrote them: no contended columns
        pq.write_table(pq.read_table(f).drop_columns(["contended", "contended_reason"]), f)
    frame = history.load(store)
    assert list(frame.columns) == list(history.COLUMNS) and frame["contended"].isna().all()
    assert list(dashboard.regressions(frame)["case_id"]) == [CASE]  # judged as any night


def plotly_figures(text: str) -> list[dict]:
    """The data and layout of each figure of a page, from its Plotly.newPlot(id, data, layout, config) call."""
    decoder, out = json.JSONDecoder(), []
    for m in re.finditer(r"Plotly\.newPlot\(\s*", text):
        _, i = decoder.raw_decode(text, m.end())
        data, i = decoder.raw_decode(text, re.compile(r",\s*").match(text, i).end())
        layout, _ = decoder.raw_decode(text, re.compile(r",\s*").match(text, i).end())
        out.append({"data": data, "layout": layout})
    return out


@needs("plotly", "pyarrow")
def test_site_draws_contended_points_hollow_with_the_reason(tmp_path):
    store = loaded_nights(tmp_path, {NIGHTS - 2: 3.0, NIGHTS - 1: 3.0})
    index = dashboard.build(store, tmp_path / "site")
    # the index does not call a contended night clean: it names what it could not judge, and why
    text = index.read_text()
    assert "No regressions among the " in text and " contended, not judged (below)" in text
    assert "Contended in the latest night: not judged" in text and REASON in text and "night-7" in text
    assert "every series that ran in the latest night is inside its noise band" not in text
    suite = (index.parent / "suite-checkpointing.html").read_text()
    step = next(f for f in plotly_figures(suite) if f["layout"]["title"]["text"].startswith("step_time_ms per case"))
    name = CASE.removeprefix("checkpointing/")
    trace = next(t for t in step["data"] if t.get("name") == name and t.get("mode") == "lines+markers")
    symbols = trace["marker"]["symbol"]
    assert symbols == ["circle"] * (NIGHTS - 2) + ["circle-open"] * 2
    assert [REASON in text for text in trace["text"]] == [False] * (NIGHTS - 2) + [True] * 2
    assert f"latest contended, not judged: {REASON}" in suite
    others = [t for t in step["data"] if t.get("mode") == "lines+markers" and t.get("name") != name]
    assert others and not any(s.endswith("-open") for t in others for s in t["marker"]["symbol"])

