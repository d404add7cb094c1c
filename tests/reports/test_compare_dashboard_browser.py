"""The compare page and the dashboard as headless Chromium draws them for a newcomer's first runs: numbers that stay
on one line, labels that are not rotated where they fit and never overlap, and runs made minutes apart that keep their
own x."""

import re

import pytest

from tests.browser import needs_chromium, probe
from tests.optional import require

require("plotly")

from bench.compare import compare  # noqa: E402
from reports.compare_page import write_compare_html  # noqa: E402
from tests.runs import checkpointing_records, long_case_records, write_run  # noqa: E402

pytestmark = needs_chromium

WIDTH = 1280  # px: a laptop screen
# Per table cell of a p_value column: its text and how many line boxes it takes; per tick label of every figure: its
# text, transform, box and axis; per figure its left edge.
COMPARE = """
const lines = node => { const r = document.createRange(); r.selectNodeContents(node);
  return r.getClientRects().length; };
const box = e => { const r = e.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; };
const pvalues = [];
for (const t of document.querySelectorAll('table')) {
  const col = [...t.querySelectorAll('thead th')].findIndex(th => th.textContent === 'p_value');
  if (col < 0) continue;
  for (const tr of t.querySelectorAll('tbody tr')) {
    const td = tr.children[col];
    if (td.textContent) pvalues.push({text: td.textContent, lines: lines(td)});
  }
}
const figures = [...document.querySelectorAll('.plotly-graph-div')].map(gd => ({
  left: gd.getBoundingClientRect().left,
  ticks: [...gd.querySelectorAll('.xtick text, .ytick text')].map(t => ({
    text: t.textContent, transform: t.getAttribute('transform') || '', box: box(t),
    axis: t.closest('.xtick') ? 'x' : 'y'})),
}));
return {pvalues, figures};
"""
# Per figure: the x of each lines+markers trace (a case's series) and the x tick labels as drawn.
DASHBOARD = """
return [...document.querySelectorAll('.plotly-graph-div')].map(gd => ({
  series: gd._fullData.filter(t => t.mode === 'lines+markers').map(t => Array.from(t.x)),
  ticks: [...gd.querySelectorAll('.xtick text')].map(t => t.textContent),
}));
"""


@pytest.fixture(scope="module")
def compare_page(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    # one run a side: every timing gets a p-value in scientific notation (3e-11), the form that broke at its "-"
    a = write_run(root, "a", checkpointing_records(seed=0))
    b = write_run(root, "b", checkpointing_records(scale=1.3, seed=1))
    return probe(write_compare_html(compare([a], [b]), root / "compare.html"), COMPARE, width=WIDTH)


def test_p_values_stay_on_one_line(compare_page):
    pvalues = compare_page["pvalues"]
    assert len(pvalues) >= 10 and any("e-" in p["text"] for p in pvalues)
    assert [p for p in pvalues if p["lines"] != 1] == []


def test_no_tick_label_is_rotated(compare_page):
    ticks = [t for f in compare_page["figures"] for t in f["ticks"]]
    assert any(t["text"].startswith("checkpointing/") for t in ticks)  # the heatmap's case_ids are drawn
    assert [t["text"] for t in ticks if "rotate" in t["transform"]] == []


def test_case_labels_fit_and_metric_labels_do_not_overlap(compare_page):
    assert _labels_misdrawn(compare_page) == []


def _labels_misdrawn(page) -> list[str]:
    """What is wrong with the tick labels of each figure of `page`: cut off on the left, or x labels overlapping."""
    wrong = []
    for i, f in enumerate(page["figures"]):
        if not all(t["box"][0] >= f["left"] - 1 for t in f["ticks"]):
            wrong.append(f"figure {i}: a tick label is cut off on the left")
        top = sorted((t["box"] for t in f["ticks"] if t["axis"] == "x" and not re.fullmatch(r"[\d.,]+", t["text"])),
                     key=lambda b: b[0])
        if not all(a[2] <= b[0] + 1 for a, b in zip(top, top[1:])):
            wrong.append(f"figure {i}: x tick labels overlap")
    return wrong


def test_long_case_ids_and_many_metrics_fit(tmp_path):
    # a compare of mtp and moe: 170-character case_ids left the heatmap ~110 px of the page for 51 metric columns,
    # whose names piled on each other
    a = write_run(tmp_path, "a", long_case_records(metrics=30))
    b = write_run(tmp_path, "b", long_case_records(metrics=30, scale=1.3, seed=1))
    page = probe(write_compare_html(compare([a], [b]), tmp_path / "compare.html"), COMPARE, width=WIDTH)
    assert _labels_misdrawn(page) == []
    names = [t["text"] for t in page["figures"][0]["ticks"] if t["axis"] == "x"]
    assert len(names) == 30 and "count_00_bytes" in names  # each drawn, whole


@pytest.fixture(scope="module")
def dashboards(tmp_path_factory):
    """Suite pages of stores holding one run, and two runs 45 s apart (in the same minute)."""
    require("pyarrow")
    from bench import history
    from reports import dashboard

    root, out = tmp_path_factory.mktemp("dash"), {}
    for n in (1, 2):
        store = root / f"store{n}"
        for i in range(n):
            run = write_run(root / f"runs{n}", f"r{i}", checkpointing_records(seed=i)[:2],
                            started_at=f"2026-11-28T00:10:{5 + 45 * i:02d}Z")
            history.add(run, store)
        index = dashboard.build(store, root / f"site{n}")
        out[n] = probe(index.parent / "suite-checkpointing.html", DASHBOARD, width=WIDTH)
    return out


def test_runs_a_minute_apart_have_their_own_x(dashboards):
    series = [s for f in dashboards[2] for s in f["series"]]
    assert series and all(len(s) == 2 and len(set(s)) == 2 for s in series), series


@pytest.mark.parametrize("n", [1, 2])
def test_time_ticks_are_whole_seconds_and_distinct(dashboards, n):
    for f in dashboards[n]:
        assert len(f["ticks"]) >= 2
        assert [t for t in f["ticks"] if re.search(r"\d:\d\d\.\d", t)] == []  # no "00:10:59.9995"
        assert len(set(f["ticks"])) == len(f["ticks"]), f["ticks"]
