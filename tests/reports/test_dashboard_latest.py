"""What the dashboard's index calls the latest night: per environment and case, its latest run, and only where that
run is within STALE_DAYS of the store's newest; never the night before it, however close in time."""

import pytest

from bench import history
from reports import dashboard
from reports import regressions as rule
from tests.optional import needs
from tests.runs import A100, H200, checkpointing_records, write_run

CASE = "checkpointing/selective/batch=4,d_model=256,dtype=bfloat16,layers=8,seq=256"
LOAD = {"contended": True, "host_other_cpus": 1.6, "host_case_cpus": 0.3, "host_cpus": 2, "host_load_avg": 4.0}
REASON = "other processes used 1.6 of 2 CPUs during the timed window"
pytestmark = needs("pyarrow", "plotly")


def contend(r):
    r["metrics"].update(LOAD)


def fail(r):
    r.update(status="error", metrics={}, samples={}, error="Traceback ...\nRuntimeError: boom")


def add_nights(tmp_path, nights: range, gpu: dict = H200, hour: int = 1, edits: dict | None = None):
    """Nightly checkpointing runs on `gpu` at `hour` UTC into tmp_path/store, CASE's record of night i passed to
    edits[i] first."""
    store, edits = tmp_path / "store", edits or {}
    for night in nights:
        records = checkpointing_records(seed=night)
        for r in records:
            if night in edits and r.get("status", "ok") == "ok" and (r["variant"], r["params"]["batch"]) == (
                    "selective", 4):
                edits[night](r)
        name = f"{'h200' if gpu is H200 else 'a100'}-night-{night}"
        history.add(write_run(tmp_path / "runs", name, records, gpu=gpu, sha=f"{night}" * 40,
                              started_at=f"2026-11-{night + 1:02d}T{hour:02d}:00:00Z"), store)
    return store


def judged_in(store, run_ids: set[str]) -> int:
    """How many series have a baseline at their last point, that point of one of `run_ids` and not contended."""
    return sum(j[-1] is not None and s["run_id"].iloc[-1] in run_ids and not rule.not_judged(s)[-1]
               for s, j in rule.judged(history.load(store), 0.05, 7))


@pytest.mark.parametrize("before", [contend, None])
def test_a_case_failing_in_the_latest_night_did_not_run_in_it(tmp_path, before):
    # errored in the latest night, contended (or not) the night before: its series' last point is the earlier
    # night's, neither contended nor judged in the latest
    store = add_nights(tmp_path, range(14), edits={12: before or (lambda r: None), 13: fail})
    said = []
    text = dashboard.build(store, tmp_path / "site", said=said.append).read_text()
    assert said == ["0 current regressions; 1 case newly failing"]
    assert "Contended in the latest night" not in text and "contended" not in text
    n = judged_in(store, {"h200-night-13"})
    assert n and f"No regressions among the {n} series judged in the latest night." in text
    newly = text[text.index("Newly failing in the latest run"):text.index("Latest run per env")]
    assert CASE in newly and "h200-night-13" in newly


def test_each_environment_has_its_own_latest_run(tmp_path):
    # the A100 runs twelve hours after the H200: the H200's 01:00 run is its latest night, contended; the A100's
    # latest night is clean, and so is the H200's night before
    add_nights(tmp_path, range(8), edits={6: contend, 7: contend})
    store = add_nights(tmp_path, range(8), gpu=A100, hour=13)
    said = []
    text = dashboard.build(store, tmp_path / "site", said=said.append).read_text()
    contended = text[text.index("Contended in the latest night"):text.index("Latest run per env")]
    assert "h200-night-7" in contended and "h200-night-6" not in contended and REASON in contended
    assert "a100-night" not in contended
    n = judged_in(store, {"h200-night-7", "a100-night-7"})
    assert f"No regressions among the {n} series judged in the latest night; " in text
    assert said[0].startswith("0 current regressions; ") and said[0].endswith(" contended in the latest night, "
                                                                              "not judged")


def test_an_environment_that_stopped_running_has_no_latest_night(tmp_path):
    # the A100 ran four nights and stopped, its last failing a case that was ok the night before: the H200 ran on
    add_nights(tmp_path, range(4), gpu=A100, edits={3: fail})
    store = add_nights(tmp_path, range(8))
    said = []
    text = dashboard.build(store, tmp_path / "site", said=said.append).read_text()
    assert said == ["0 current regressions"] and "Newly failing" not in text
    assert f"No regressions among the {judged_in(store, {'h200-night-7'})} series judged in the latest night." in text


def suite_rows(text: str, metric: str) -> dict[str, str]:
    """case -> its flag cell, in the suite page's table of `metric`."""
    import html
    import re

    part = text[text.index(f"<h2>{metric}</h2>"):]
    part = part[part.index("<table"):part.index("</table>")]
    head = re.findall(r"<th>(.*?)</th>", part)
    rows = [re.findall(r"<td[^>]*>(.*?)</td>", r, flags=re.S) for r in re.findall(r"<tr>(<td.*?)</tr>", part, re.S)]
    return {html.unescape(r[head.index("case")]): html.unescape(r[head.index("flag")]) for r in rows}


def test_a_suite_page_says_which_series_did_not_run_in_the_latest_night(tmp_path):
    # CASE errored in the latest night: its table row's latest value is night 12's, and says so; the others ran
    store = add_nights(tmp_path, range(14), edits={13: fail})
    dashboard.build(store, tmp_path / "site")
    rows = suite_rows((tmp_path / "site" / "suite-checkpointing.html").read_text(), "step_time_ms")
    assert rows[CASE] == "not in the latest night (latest: run h200-night-12)"
    assert len(rows) == 10 and [c for c, flag in rows.items() if flag] == [CASE]
