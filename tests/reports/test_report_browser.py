"""The run report as a browser draws it, for a quick run as a newcomer's first run leaves it
(tests/reports/quick_run.py): where each figure put its markers, what its axes span, where its labels landed, and
whether every table can be read on a laptop screen. TECHBENCH_REPORT_RUNS (run directories, os.pathsep between)
puts real runs through the same checks: `bench run --size quick --out runs/q`, then TECHBENCH_REPORT_RUNS=runs/q.
"""

import math
import os

import pytest

from tests.browser import needs_chromium, probe
from tests.optional import require

require("plotly")

from reports.run_report import write_report  # noqa: E402
from tests.reports.quick_run import write_quick_run  # noqa: E402
from tests.runs import long_case_records, write_run  # noqa: E402

pytestmark = needs_chromium

WIDTH = 1280  # px: a laptop screen
GIVEN = [r for r in os.environ.get("TECHBENCH_REPORT_RUNS", "").split(os.pathsep) if r]
# Runs after plotly has drawn: per figure its traces' x, its axes, and the boxes of its labels and bars; per table
# whether it can scroll sideways; the boxes of the reasons of cases not ok.
DRAWN = """
const box = e => { const r = e.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; };
const figures = [...document.querySelectorAll('.plotly-graph-div')].map(gd => {
  const fl = gd._fullLayout, axes = {};
  for (const k of Object.keys(fl)) if (/^xaxis\\d*$/.test(k)) axes[fl[k]._id] = {type: fl[k].type, range: fl[k].range};
  return {
    title: (fl.title && fl.title.text) || '',
    traces: gd._fullData.filter(t => t.type === 'scatter').map(t => ({
      name: t.name, group: t.legendgroup || '', mode: t.mode || '', xaxis: t.xaxis || 'x',
      x: Array.from(t.x || [], v => (typeof v === 'number' && isFinite(v) ? v : null))})),
    axes,
    labels: [...gd.querySelectorAll('.annotation-text-g')].map(a => ({text: a.textContent, box: box(a)})),
    bars: [...gd.querySelectorAll('.trace.bars .point path')].map(box),
  };
});
const tables = [...document.querySelectorAll('table')].map(t => getComputedStyle(t.parentElement).overflowX);
const heading = [...document.querySelectorAll('h2')].find(h => h.textContent === 'Cases not ok');
const notOk = heading.nextElementSibling.querySelector('table');
const column = [...notOk.querySelectorAll('th')].findIndex(th => th.textContent === 'reason');
const reasons = [...notOk.querySelectorAll('tbody tr')].map(tr => box(tr.children[column]));
return {figures, tables, reasons, width: window.innerWidth};
"""


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    root = tmp_path_factory.mktemp("quick")
    return probe(write_report([write_quick_run(root)], root / "report.html"), DRAWN, width=WIDTH)


@pytest.fixture(scope="module")
def given(tmp_path_factory):
    return probe(write_report(GIVEN, tmp_path_factory.mktemp("given") / "report.html"), DRAWN, width=WIDTH)


@pytest.fixture(params=["quick", "given"] if GIVEN else ["quick"])
def drawn(request):
    return request.getfixturevalue(request.param)


def _status(trace) -> bool:
    return trace["group"].startswith("status:")


def _data_x(fig, axis) -> list[float]:
    """The x of the measured points on an axis (lines such as an ideal curve or a Pareto front are not points)."""
    return [x for t in fig["traces"] if t["xaxis"] == axis and not _status(t) and "markers" in t["mode"]
            for x in t["x"] if x is not None]


def _overlap(a, b, slack=1.0) -> bool:
    return a[0] + slack < b[2] and b[0] + slack < a[2] and a[1] + slack < b[3] and b[1] + slack < a[3]


def test_not_ok_markers_sit_at_an_x_the_data_has_or_beside_it(drawn):
    """A case that did not finish is drawn at its own x (an expert count, a pad fraction: the x its other variants
    ran at), or, having none, in a strip left of the data: never at an x within the data that no case had."""
    checked = 0
    for fig in drawn["figures"]:
        for t in filter(_status, fig["traces"]):
            data = _data_x(fig, t["xaxis"])
            if not data:
                continue  # a panel of failures only: no scale to misread
            for x in t["x"]:
                checked += 1
                at_data = any(math.isclose(x, d, rel_tol=1e-9) for d in data)
                assert at_data or x < min(data), (fig["title"], t["name"], x, sorted(set(data)))
    assert checked


def test_log_axes_span_the_data_not_decades_beyond(drawn):
    """A figure of world size 1 alone spans about 1, not 1/8 to 8."""
    checked = 0
    for fig in drawn["figures"]:
        for axis, spec in fig["axes"].items():
            xs = [x for t in fig["traces"] if t["xaxis"] == axis and "markers" in t["mode"] for x in t["x"] if x]
            if spec["type"] != "log" or not xs:
                continue
            lo, hi = math.log10(min(xs)), math.log10(max(xs))
            assert spec["range"][0] <= lo and spec["range"][1] >= hi, (fig["title"], spec, min(xs), max(xs))
            assert spec["range"][0] >= lo - 0.5 and spec["range"][1] <= hi + 0.5, (fig["title"], spec, xs)
            checked += 1
    assert checked


def test_no_label_overlaps_another_or_a_bar(drawn):
    """Subplot titles and reference-line labels (e.g. moe's paper MaxVio lines) each stand clear."""
    for fig in drawn["figures"]:
        labels = fig["labels"]
        for i, a in enumerate(labels):
            for b in labels[i + 1:]:
                assert not _overlap(a["box"], b["box"]), (fig["title"], a["text"], b["text"])
            for bar in fig["bars"]:
                assert not _overlap(a["box"], bar), (fig["title"], a["text"], bar)


def test_the_reasons_of_cases_not_ok_are_on_screen(quick):
    assert len(quick["reasons"]) == 12  # 3 checkpointing, 1 detection, 2 moe and 6 rmpad cases
    for left, _, right, _ in quick["reasons"]:
        assert right <= quick["width"] and right - left >= 200, (left, right, quick["width"])  # readable, wrapped


def test_every_table_scrolls_sideways(quick):
    assert quick["tables"] and set(quick["tables"]) == {"auto"}  # overflow-x of each table's box


def test_a_contended_case_with_a_long_id_stays_on_the_page(tmp_path):
    # mtp's case_ids (170 characters, no space to break at) ran past the page's right edge in the list of contended
    # cases under the summary, and the whole page scrolled sideways
    records = [{**r, "metrics": {**r["metrics"], "contended": True}} for r in long_case_records()]
    page = probe(write_report([write_run(tmp_path, "run", records)], tmp_path / "report.html"),
                 "return {listed: [...document.querySelectorAll('li code')].map(c => c.textContent), "
                 "scroll: document.documentElement.scrollWidth, width: window.innerWidth};", width=WIDTH)
    assert len(page["listed"]) == 5 and page["scroll"] <= page["width"], page
