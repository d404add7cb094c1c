"""Whole numbers (bytes, counts) print in full, so that a few bytes more read as a change: to 4 significant digits
2,158,084 and 2,158,088 both read 2.158e+06, and the dashboard's flag row said "no change" beside its own flag."""

import re

import pytest

from reports.html import number, table
from tests.optional import needs, require
from tests.reports.test_dashboard import CASE, NIGHTS, case_nights
from tests.runs import write_run


@pytest.mark.parametrize("value, text", [
    (2158084.0, "2,158,084"), (2158088, "2,158,088"), (65536.0, "65,536"), (-4.0, "-4"), (0.0, "0"),
    (999_999_999_999_999.0, "999,999,999,999,999"), (10 ** 18, "1,000,000,000,000,000,000"),  # an int is exact
    (1e16, "1.0000e+16"),  # past 1e15 a float's last digits are its rounding
    (0.0001853, "0.0001853"), (1234.5678, "1235"), (2158084.5, "2.1581e+06"), (float("inf"), "inf"),
])
def test_number(value, text):
    assert number(value) == text


def test_table_cells():
    import numpy as np

    cells = re.findall(r"<td[^>]*>([^<]*)</td>", table([{"a": np.int64(65536), "b": np.float64(2.5), "c": None,
                                                         "d": float("nan"), "e": True}]))
    assert cells == ["65,536", "2.5", "", "", "yes"]


@needs("plotly", "pyarrow")
def test_a_four_byte_change_reads_as_one_in_the_flag_row(tmp_path):
    from reports import dashboard

    def grow(night, r):
        r["metrics"]["peak_mem_bytes"] = 2158088 if night == NIGHTS - 1 else 2158084

    index = dashboard.build(case_nights(tmp_path, grow), tmp_path / "site").read_text()
    (row,) = [r for r in re.findall(r"<tr>.*?</tr>", index) if "peak_mem_bytes" in r]
    assert CASE.removeprefix("checkpointing/") in row and "changed" in row
    assert ">2,158,084<" in row and ">2,158,088<" in row and "e+06" not in row
    page = (tmp_path / "site" / "suite-checkpointing.html").read_text()
    assert r"peak_mem_bytes = 2,158,088\u003cbr\u003ebaseline 2,158,084" in page  # the flagged point's hover


def test_the_run_report_shows_bytes_per_token_exactly(tmp_path):
    require("plotly")
    from reports.run_report import render

    cache = {"part": "cache", "shape": "deepseek_v3", "dtype": "bfloat16"}
    records = [{"suite": "mla", "variant": v, "params": cache,
                "metrics": {"kv_cache_bytes_per_token": b, "kv_cache_elements_per_token": b // 2}}
               for v, b in (("mha", 65536), ("mla_absorbed", 1152))]
    text = render([write_run(tmp_path, "run", records, gpu=None)])
    assert ">65,536<" in text and ">1,152<" in text and "6.554e+04" not in text
