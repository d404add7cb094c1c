"""`bench compare` when one side ran under load: a contended case's timings get the verdict "contended", never
faster or slower, unless --allow-contended; exact metrics are compared exactly all the same."""

import json

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


@pytest.mark.parametrize("runs, loaded", [(1, (True,)), (3, (True, True, True))])
def test_a_loaded_side_gets_no_faster_or_slower_verdict(tmp_path, runs, loaded):
    # one run a side (within-run test), and three a side all loaded: with no undisturbed run of a side left, the
    # case's timings are contended
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


@pytest.mark.parametrize("slowdown, verdict", [(1.0, "same"), (1.5, "slower")])
@pytest.mark.parametrize("where", ["new", "base"])
def test_a_case_with_undisturbed_runs_left_on_both_sides_is_judged_on_those(tmp_path, slowdown, verdict, where):
    # three runs a side, one of them loaded (a disturbed night in the baseline, or in the new runs): the other runs
    # judge the case, so that run neither hides a real regression nor makes one
    loaded = [False, True, False]
    base = [side(tmp_path / "base", f"b{i}", where == "base" and loaded[i], seed=100 * i) for i in range(3)]
    new = [write_run(tmp_path / "new", f"n{i}", [
        timing_case(v, 100 * slowdown * (3.0 if where == "new" and loaded[i] else 1.0), seed=1000 + 100 * i + j,
                    peak_mem_bytes=1000, **(LOAD if where == "new" and loaded[i] else QUIET))
        for j, v in enumerate(VARIANTS)]) for i in range(3)]
    c = compare(base, new)
    for v in VARIANTS:
        row = one(c, v)
        assert row.verdict == verdict and row.runs_per_side == ("3v2" if where == "new" else "2v3"), row
        assert row.contended == f"judged on the undisturbed runs; left out: {where} run {where[0]}1: {REASON}"
        assert abs(row.ratio - slowdown) < 0.05  # the loaded run's 3x is not in it
    assert c.contended.empty and len(c.regressions) == (3 if verdict == "slower" else 0)
    if verdict == "slower":  # the summary says which run a regression was judged without
        lines = c.summary_lines()
        assert sum(line == f"    judged on the undisturbed runs; left out: {where} run {where[0]}1: {REASON}"
                   for line in lines) == 3


def test_undisturbed_runs_down_to_one_a_side_leave_the_case_contended(tmp_path):
    # three base nights, two of them loaded, against one quiet new run: one run a side is left, whose within-run
    # test cannot see the run-to-run spread (it called 1 in 10 A/A rows slower at a 3% offset), so no verdict
    base = [side(tmp_path / "base", f"b{i}", loaded, seed=100 * i) for i, loaded in enumerate((True, True, False))]
    new = [side(tmp_path / "new", "n0", False, seed=1000)]
    c = compare(base, new)
    for v in VARIANTS:
        row = one(c, v)
        assert row.verdict == "contended" and row.runs_per_side == "3v1" and "base run b0" in row.contended
    assert c.regressions.empty and sorted(c.contended["variant"]) == list(VARIANTS)


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
def test_cli_fail_on_regression_lists_contended_cases_and_fails_a_disturbed_new_run(tmp_path, capsys):
    # one run a side, NEW's run under load for 3 of its 4 timings: no timing is judged, and the gate, which from one
    # run a side judges exact metrics only, fails on a NEW run that measured the load (as on an unfinished one)
    from bench.cli import main

    base, new = aa(tmp_path, (True,))
    assert main(["compare", str(base[0]), str(new[0]), "--fail-on-regression", "-o", str(tmp_path / "c.html")]) == 1
    out = capsys.readouterr().out
    assert "contended (3): " in out and out.count(REASON) == 3 and "regressions (" not in out
    assert "3 of NEW's 4 timings were contended in every new run, so not judged: NEW was disturbed" in out
    assert "one run a side: --fail-on-regression judges the exact metrics (bytes, FLOPs, quality) only" in out
    page = (tmp_path / "c.html").read_text()
    assert "Contended (3)" in page and page.count(REASON) >= 3 and "Regressions (" not in page
    # --allow-contended judges them as any other: one-run slowers, shown and not gated
    assert main(["compare", str(base[0]), str(new[0]), "--fail-on-regression", "--allow-contended"]) == 0
    assert "NEW was disturbed" not in capsys.readouterr().out


def test_cli_allow_contended_restores_the_plain_verdict(tmp_path, capsys):
    from bench.cli import main

    base, new = aa(tmp_path, (True, True, True), runs=3)
    assert main(["compare", str(base[0].parent), str(new[0].parent), "--fail-on-regression", "--allow-contended"]) == 1
    out = capsys.readouterr().out
    assert "regressions (3):" in out and "contended (3), judged all the same" in out


@needs("plotly")
def test_an_unfinished_new_run_fails_the_gate_and_says_so(tmp_path, capsys):
    # a run killed or stopped after 1 of its cases: the others are missing, not judged, and the gate cannot pass it
    from bench.cli import main
    from bench.records import read_run_json, write_run_json

    base, new = aa(tmp_path, (False,))
    assert main(["compare", str(base[0]), str(new[0]), "--fail-on-regression"]) == 0
    capsys.readouterr()
    write_run_json(new[0], {**read_run_json(new[0]), "finished_at": None})
    assert main(["compare", str(base[0]), str(new[0]), "--fail-on-regression", "-o", str(tmp_path / "c.html")]) == 1
    assert "unfinished: new run n0 (not every case ran" in capsys.readouterr().out
    assert "Unfinished: new run n0. Not every case ran" in (tmp_path / "c.html").read_text()
    assert main(["compare", str(new[0]), str(base[0]), "--fail-on-regression"]) == 0  # an unfinished base: said only
    assert "unfinished: base run n0" in capsys.readouterr().out


def test_a_new_side_all_under_load_that_looks_slower_fails_the_gate(tmp_path, capsys):
    # three quiet runs against three loaded ones (3x): no undisturbed NEW run is left to judge the timings, and the
    # test said slower, so the gate fails rather than going green on a night it could not judge; one run a side
    # (the within-run test) is shown only, as a clean one-run slower is, and the gate fails on NEW's run all the
    # same: most of its timings were disturbed (new_disturbed)
    from bench.cli import main

    base, new = aa(tmp_path, (True, True, True), runs=3)
    c = compare(base, new)
    assert set(c.contended["masked"]) == {"slower"} and len(c.unjudged_slower) == 3 and c.failed
    assert c.regressions.empty
    assert any(line.startswith("of them, 3 timings looked slower from several runs a side") for line in
               c.summary_lines())
    assert main(["compare", str(base[0].parent), str(new[0].parent), "--fail-on-regression"]) == 1
    assert main(["compare", str(base[0].parent), str(new[0].parent), "--fail-on-regression", "-o",
                 str(tmp_path / "c.json")]) == 1
    assert json.loads((tmp_path / "c.json").read_text())["gate"]["unjudged_slower"] == 3
    one_run = compare(*aa(tmp_path / "one", (True,), runs=1))
    assert one_run.unjudged_slower.empty and one_run.new_disturbed and one_run.failed
    allowed = compare(base, new, allow_contended=True)  # judged as any other: plain regressions, which gate
    assert allowed.unjudged_slower.empty and len(allowed.gating) == 3


def test_a_ratio_to_a_reference_that_ran_under_load_is_contended(tmp_path):
    # three BASE runs whose reference case (checkpointing none) alone was disturbed and 3x slower, three quiet NEW
    # runs: full's own time is the same, and its time_overhead_x (full / none) must not read as a regression
    from tests.runs import checkpointing_records

    def runs(side, loaded):
        out = []
        for i in range(3):
            records = [r for r in checkpointing_records(seed=10 * i + loaded) if r.get("metrics")]
            for r in records:
                quiet = not (loaded and r["variant"] == "none")
                r["metrics"] = {**r["metrics"], **(QUIET if quiet else LOAD)}
                if not quiet:
                    r["metrics"]["step_time_ms"] *= 3
                    r["samples"] = {"step_time_ms": [x * 3 for x in r["samples"]["step_time_ms"]]}
            for r in records:  # the ratio as the runner computes it, from the reference of the same run
                ref = next((x for x in records if x["variant"] == "none" and x["params"] == r["params"]), None)
                if ref:
                    r["metrics"]["time_overhead_x"] = r["metrics"]["step_time_ms"] / ref["metrics"]["step_time_ms"]
            out.append(write_run(tmp_path / side, f"{side}{i}", records))
        return out

    c = compare(runs("b", True), runs("n", False))
    full = c.rows[(c.rows["variant"] == "full") & (c.rows["metric"] == "time_overhead_x")]
    assert set(full["verdict"]) == {"contended"} and set(full["masked"]) == {"slower"}
    assert full["contended"].str.startswith("base run b0: in its reference case none, other processes").all()
    assert c.gating.empty  # the ratio does not gate as a regression


@needs("plotly")
def test_the_summary_counts_the_timings_as_the_gate_does(tmp_path):
    # an A/A of three runs a side, every NEW case disturbed: 10 cases with 3 timings each (step_time_ms, energy_j,
    # time_overhead_x) and a rate of one (tokens_per_s). The summary said "timings: 40 contended" and "contended (40)"
    # beside "30 of NEW's 30 timings were contended": the rates were counted as timings in the first two
    from reports.compare_page import write_compare_html
    from tests.runs import checkpointing_records

    def runs(side, extra):
        return [write_run(tmp_path / side, f"{side}{i}", [{**r, "metrics": {**r["metrics"], **extra}}
                                                           for r in checkpointing_records(seed=10 * i + len(side))
                                                           if r.get("status", "ok") == "ok"]) for i in range(3)]

    c = compare(runs("b", QUIET), runs("nn", LOAD))
    lines = c.summary_lines()
    assert c.timings == c.new_contended == c.family == 30 and len(c.contended) == 40
    assert "timings: 30 contended" in lines and "rates of those timings: 10 contended" in lines
    assert "timings by runs per side (base v new): 3v3 (30)" in lines
    assert any(line.startswith("30 of NEW's 30 timings were contended") for line in lines)
    assert any("the gate: significant over the 30 timings judged" in line for line in lines)
    assert any(line.startswith("contended (30 timings, 40 rows with their rates): ") for line in lines)
    page = write_compare_html(c, tmp_path / "c.html").read_text()
    assert "Contended (30 timings, 40 rows with their rates)" in page and "30 of NEW&#x27;s 30 timings" in page
