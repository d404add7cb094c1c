"""`bench compare` when one side ran under load: a contended case's timings get the verdict "contended", never
faster or slower, unless --allow-contended; exact metrics are compared exactly all the same."""

import pandas as pd
import pytest

from bench.compare import compare
from tests.bench.test_compare import one, timing_case
from tests.optional import needs
from tests.runs import write_run

# What bench.interference records for a case that shared 2 CPUs with a build: others used 1.7 of them.
LOAD = {"contended": True, "host_other_cpus": 1.7, "host_case_cpus": 0.3, "host_cpus": 2, "host_load_avg": 5.2}
QUIET = {"contended": False, "host_other_cpus": 0.0, "host_case_cpus": 1.0, "host_cpus": 2, "host_load_avg": 1.0}
REASON = "other processes used 1.7 of 2 CPUs during the timed window"
VARIANTS = ("a", "b", "c")


def side(root, name: str, loaded: bool, seed: int, bytes_: int = 1000) -> list:
    """One run of three cases (a, b, c) drawn from one distribution; under load the clocks read 3x and every case is
    flagged contended (as under a build on the same CPUs). Case "calm" is never loaded."""
    scale, extra = (3.0, LOAD) if loaded else (1.0, QUIET)
    records = [timing_case(v, 100 * scale, seed=seed + i, peak_mem_bytes=bytes_, **extra)
               for i, v in enumerate(VARIANTS)]
    records.append(timing_case("calm", 100, seed=seed + 10, peak_mem_bytes=1000, **QUIET))
    return write_run(root, name, records)


def aa(root, loaded_runs: tuple[bool, ...], runs: int = 1, bytes_: int = 1000) -> tuple[list, list]:
    """A/A: `runs` base runs, quiet, and one new run per entry of loaded_runs."""
    base = [side(root / "base", f"b{i}", False, seed=100 * i) for i in range(runs)]
    new = [side(root / "new", f"n{i}", loaded, seed=1000 + 100 * i, bytes_=bytes_)
           for i, loaded in enumerate(loaded_runs)]
    return base, new


@pytest.mark.parametrize("runs, loaded", [(1, (True,)), (3, (True, True, True)), (3, (False, True, False))])
def test_a_loaded_side_gets_no_faster_or_slower_verdict(tmp_path, runs, loaded):
    # one run a side (within-run test), three a side, and three a side with only one run loaded: any contended run
    # of a case makes its timings contended
    c = compare(*aa(tmp_path, loaded, runs))
    for v in VARIANTS:
        row = one(c, v)
        assert row.verdict == "contended", row
        assert REASON in row.contended and "new run n" in row.contended
        assert one(c, v, "peak_mem_bytes").verdict == "same"  # exact: compared exactly, contended or not
    assert one(c, "calm").verdict == "same" and pd.isna(one(c, "calm").contended)
    assert c.regressions.empty and not (c.rows["verdict"].isin(["faster", "slower"])).any()
    assert sorted(c.contended["variant"]) == list(VARIANTS)
    lines = c.summary_lines()
    assert any(line.startswith("contended (3): ") for line in lines)
    assert sum(REASON in line for line in lines) == 3


def test_allow_contended_restores_the_plain_verdict(tmp_path):
    c = compare(*aa(tmp_path, (True,)), allow_contended=True)
    assert [one(c, v).verdict for v in VARIANTS] == ["slower"] * 3
    assert all(REASON in one(c, v).contended for v in VARIANTS)  # still says why, for whoever reads the verdict
    assert sorted(c.regressions["variant"]) == list(VARIANTS)
    assert any(line.startswith("contended (3), judged all the same") for line in c.summary_lines())


def test_exact_metrics_still_regress_in_a_contended_case(tmp_path):
    c = compare(*aa(tmp_path, (True,), bytes_=1200))
    assert one(c, "a").verdict == "contended"
    assert one(c, "a", "peak_mem_bytes").verdict == "worse"
    assert sorted(c.regressions["variant"]) == list(VARIANTS)  # the bytes, not the timings


def test_a_flag_without_measurements_still_counts(tmp_path):
    # a record that says contended but carries none of the metrics that say why (a foreign importer, say)
    base = write_run(tmp_path, "base", [timing_case("a", 100)])
    new = write_run(tmp_path, "new", [timing_case("a", 300, seed=1, contended=True)])
    row = one(compare([base], [new]), "a")
    assert row.verdict == "contended" and row.contended == "new run new: flagged contended in its timed window"


@needs("plotly")
def test_cli_fail_on_regression_ignores_and_lists_contended_cases(tmp_path, capsys):
    from bench.cli import main

    base, new = aa(tmp_path, (True,))
    assert main(["compare", str(base[0]), str(new[0]), "--fail-on-regression", "-o", str(tmp_path / "c.html")]) == 0
    out = capsys.readouterr().out
    assert "contended (3): " in out and out.count(REASON) == 3 and "regressions (" not in out
    page = (tmp_path / "c.html").read_text()
    assert "Contended (3)" in page and page.count(REASON) >= 3 and "Regressions (" not in page


def test_cli_allow_contended_restores_the_plain_verdict(tmp_path, capsys):
    from bench.cli import main

    base, new = aa(tmp_path, (True,))
    assert main(["compare", str(base[0]), str(new[0]), "--fail-on-regression", "--allow-contended"]) == 1
    out = capsys.readouterr().out
    assert "regressions (3):" in out and "contended (3), judged all the same" in out
