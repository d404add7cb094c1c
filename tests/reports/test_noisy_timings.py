"""A timing flagged noisy in records.jsonl (IQR over 10% of its median) is marked in the results table, and so is
every value built on it: a rate of its case, and a ratio against a reference whose timing was noisy."""

import re

import pytest

from tests.optional import require

require("plotly")

from reports.run_report import render  # noqa: E402
from tests.reports.quick_run import NOISY_CHECKPOINTING, write_quick_run  # noqa: E402

FLAG = re.compile(r'<span class="flag" title="([^"]*)">~</span>')


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    return render([write_quick_run(tmp_path_factory.mktemp("runs"))])


def results(report: str, suite: str) -> dict[str, dict[str, str]]:
    """case_id -> column -> the cell's HTML, from the suite's results table."""
    part = report[report.index(f"<h2>{suite}</h2>"):]
    part = part[part.index("<h3>Results</h3>"):part.index("<h2>", 1)].split("<details><summary>Other metrics")[0]
    head = re.findall(r"<th>(.*?)</th>", part)
    rows = [re.findall(r"<td[^>]*>(.*?)</td>", r) for r in re.findall(r"<tr>(<td.*?)</tr>", part)]
    return {cells[head.index("case_id")]: dict(zip(head, cells)) for cells in rows}


def flagged(cell: str) -> str | None:
    found = FLAG.search(cell)
    return found.group(1) if found else None


def test_noisy_checkpointing_timings_and_what_is_built_on_them(report):
    table = results(report, "checkpointing")
    assert "beside a timing: its samples' IQR over 10% of the median" in report  # the mark explained
    for case, cells in table.items():
        if not case.startswith("checkpointing/") or "batch=16" in case:
            continue  # not ok: no timing
        variant, batch = case.split("/")[1], int(re.search(r"batch=(\d+)", case).group(1))
        own = (variant, batch) in NOISY_CHECKPOINTING
        reference_noisy = ("none", batch) in NOISY_CHECKPOINTING
        assert (flagged(cells["step_time_ms"]) == "noisy timing: IQR over 10% of the median") == own, case
        assert (flagged(cells["tokens_per_s"]) is not None) == own, case  # a rate of the timing (declared input)
        assert (flagged(cells["time_overhead_x"]) is not None) == (own or reference_noisy), case
        if reference_noisy and not own:
            assert "the reference" in flagged(cells["time_overhead_x"])
        for exact in ("peak_mem_bytes", "mem_saving_x"):  # bytes are counted, never noisy
            assert flagged(cells[exact]) is None, (case, exact)


def test_every_noisy_detection_latency_is_marked(report):
    table = results(report, "detection")
    timed = {c: cells for c, cells in table.items() if cells["status"] == "ok"}
    assert len(timed) == 4
    for case, cells in timed.items():
        assert flagged(cells["latency_ms"]) == "noisy timing: IQR over 10% of the median", case
        assert "latency_ms" in flagged(cells["time_overhead_x"]), case
        assert flagged(cells["ap"]) is None, case  # quality is computed, not timed
