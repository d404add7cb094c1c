"""What `bench compare --fail-on-regression` fails on, and what its summary says: a ratio to the reference judged
without the runs where its reference ran under load, a ratio column that is the quotient of the base and new shown,
the gate's timings held to a correction across all the timings judged, the contended count by timings, sides with
no case in common, and a NEW run under load."""

import json

import numpy as np
import pytest

from bench.compare import compare
from tests.bench.test_compare import one, timing_case
from tests.bench.test_compare_contended import LOAD, QUIET
from tests.runs import checkpointing_records, write_run

FULL = "checkpointing/full/batch=4,d_model=256,dtype=bfloat16,layers=8,seq=256"
NONE = "checkpointing/none/batch=4,d_model=256,dtype=bfloat16,layers=8,seq=256"


def checkpointing_run(root, name, seed, overhead=None, loaded=(), slow=1.0):
    """One checkpointing run: every ok case quiet but those in `loaded` (case_ids, flagged contended), full's
    time_overhead_x set to `overhead` where given, every step time times `slow`."""
    records = [r for r in checkpointing_records(seed=seed) if r.get("metrics")]
    for r in records:
        case = f"checkpointing/{r['variant']}/" + ",".join(f"{k}={r['params'][k]}" for k in sorted(r["params"]))
        r["metrics"] = {**r["metrics"], **(LOAD if case in loaded else QUIET)}
        if slow != 1.0:
            r["samples"] = {"step_time_ms": [x * slow for x in r["samples"]["step_time_ms"]]}
            r["metrics"]["step_time_ms"] *= slow
            r["metrics"]["tokens_per_s"] /= slow
        if case == FULL and overhead is not None:
            r["metrics"]["time_overhead_x"] = overhead
    return write_run(root, name, records)


def test_a_ratio_is_not_judged_on_a_run_whose_reference_ran_under_load(tmp_path):
    # full's own case was contended in base runs b0 and b2, its reference (none) in b1,
    # whose ratio the load on none made look 10% better (1.18 against 1.30); new n2's full was contended. The runs
    # with full undisturbed were b1 against n0 and n1, and b1's ratio is the load's: judged on those, it read slower
    # and failed the gate on unchanged code. Left out with its reference's load, no base run is left: contended,
    # with the test over every run (the same) masked
    base = [checkpointing_run(tmp_path / "base", "b0", 0, 1.30, {FULL}),
            checkpointing_run(tmp_path / "base", "b1", 1, 1.18, {NONE}),
            checkpointing_run(tmp_path / "base", "b2", 2, 1.31, {FULL})]
    new = [checkpointing_run(tmp_path / "new", "n0", 3, 1.300),
           checkpointing_run(tmp_path / "new", "n1", 4, 1.301),
           checkpointing_run(tmp_path / "new", "n2", 5, 1.32, {FULL})]
    c = compare(base, new)
    row = c.rows[(c.rows["case_id"] == FULL) & (c.rows["metric"] == "time_overhead_x")].iloc[0]
    assert row.verdict == "contended" and row.masked in ("same", "noisy"), row
    assert "base run b1: in its reference case none, other processes used 1.7 of 2 CPUs" in row.contended
    assert c.unjudged_slower.empty and not c.failed
    # a ratio whose own case was quiet throughout is judged on the runs where its reference was quiet too
    other = c.rows[(c.rows["case_id"] == FULL.replace("/full/", "/sqrt/")) & (c.rows["metric"] == "time_overhead_x")]
    assert other.iloc[0].runs_per_side == "2v3" and other.iloc[0].contended.startswith("judged on the undisturbed")


def test_the_ratio_shown_is_new_over_base_with_an_even_number_of_runs(tmp_path, capsys):
    # base runs at 4 and 16 ms, three new runs at 10: the arithmetic median of the base runs is 10, yet the test
    # compares the medians of the logs (8 against 10, x1.25); the row showed 10 -> 10 x1.25
    from bench.cli import main

    def run(side, name, ms):
        return write_run(tmp_path / side, name, [timing_case("a", ms, spread=0.0001, seed=len(name))])

    base = [run("base", "b1", 4.0), run("base", "b2", 16.0)]
    new = [run("new", f"n{i}", 10.0) for i in range(3)]
    row = one(compare(base, new), "a")
    assert row.base == pytest.approx(8.0, rel=1e-3) and row.new == pytest.approx(10.0, rel=1e-3)
    assert row.ratio == pytest.approx(row.new / row.base, rel=1e-12) and row.ratio == pytest.approx(1.25, rel=1e-3)
    assert main(["compare", str(tmp_path / "base"), str(tmp_path / "new"), "-o", str(tmp_path / "c.json")]) == 0
    for r in json.loads((tmp_path / "c.json").read_text())["rows"]:
        if r["base"] and r["ratio"] is not None:
            assert r["ratio"] == pytest.approx(r["new"] / r["base"], rel=1e-9), r


def test_the_ratio_shown_is_new_over_base_where_judged_on_undisturbed_runs(tmp_path):
    # the same on the path that leaves a disturbed run out: the centres of the runs it kept
    base = [write_run(tmp_path / "base", f"b{i}", [timing_case("a", ms, spread=0.0001, seed=i, **extra)])
            for i, (ms, extra) in enumerate(((4.0, QUIET), (16.0, QUIET), (90.0, LOAD)))]
    new = [write_run(tmp_path / "new", f"n{i}", [timing_case("a", 10.0, spread=0.0001, seed=9 + i, **QUIET)])
           for i in range(3)]
    row = one(compare(base, new), "a")
    assert row.runs_per_side == "2v3" and row.base == pytest.approx(8.0, rel=1e-3)
    assert row.ratio == pytest.approx(row.new / row.base, rel=1e-12)


def nights(root, cases: int, sd: float, lucky: float, seed: int) -> tuple[list, list]:
    """3 base runs and 1 new run of `cases` toy timings, each run of each case offset by a log-normal factor (sd);
    case "lucky" has three base runs within 0.6% of each other and its new run `lucky` times them."""
    rng = np.random.default_rng(seed)
    offsets = rng.lognormal(0, sd, (cases, 4))
    runs = []
    for i in range(4):
        records = [timing_case(f"c{j:02d}", 100 * offsets[j, i], spread=0.002, seed=int(rng.integers(2**31)))
                   for j in range(cases)]
        records.append(timing_case("lucky", (100, 100.6, 100.3, 100 * lucky)[i], spread=0.002, seed=i))
        runs.append(write_run(root / ("base" if i < 3 else "new"), f"r{i}", records))
    return runs[:3], runs[3:]


def test_the_gate_holds_timings_to_a_correction_across_the_timings_judged(tmp_path):
    # 3 nights against 1: a ratio whose 3 base runs happened to agree to 1.2% read x1.31 slower
    # while the other timings moved by 10-15% a run; its own 2 degrees of freedom were all the test saw. Over the 24
    # timings judged, with their spreads weighed together, that is no evidence: shown slower, not gated
    base, new = nights(tmp_path, 24, 0.12, 1.31, seed=7)
    c = compare(base, new)
    row = one(c, "lucky")
    assert row.verdict == "slower" and row.runs_per_side == "3v1" and row.run_spread < 0.01
    assert c.gating.empty and not c.failed
    assert row.gate_p >= c.alpha and c.family == 25 and "lucky" in set(c.not_significant["variant"])
    lines, n = c.summary_lines(), len(c.not_significant)  # c19 read slower too, by chance: not gated either
    assert sum(line.startswith("    not gated: p=") and "over the 25 timings judged" in line for line in lines) == n
    assert any(line.startswith(f"slower, but not significant over the timings judged: {n} timings;") for line in lines)


def test_the_gate_still_fails_on_a_regression_beyond_the_spread_of_every_timing(tmp_path):
    # the same nights with "lucky" three times slower: significant over the family, so it gates
    base, new = nights(tmp_path, 24, 0.12, 3.0, seed=7)
    c = compare(base, new)
    assert one(c, "lucky").gate_p < c.alpha and list(c.gating["variant"]) == ["lucky"] and c.failed


def test_derived_rows_are_no_tests_of_their_own_and_follow_their_timing(tmp_path):
    # 3 runs a side of checkpointing, NEW 1.5x slower: tokens_per_s is its step time's consequence (same test, not
    # a second hypothesis), takes its gate_p, and the family counts the step time once
    base = [checkpointing_run(tmp_path / "base", f"b{i}", i) for i in range(3)]
    new = [checkpointing_run(tmp_path / "new", f"n{i}", 10 + i, slow=1.5) for i in range(3)]
    c = compare(base, new)
    step, rate = (c.rows[(c.rows["case_id"] == FULL) & (c.rows["metric"] == m)].iloc[0]
                  for m in ("step_time_ms", "tokens_per_s"))
    assert step.verdict == "slower" and rate.verdict == "slower" and rate.follows == "step_time_ms"
    assert rate.gate_p == step.gate_p < c.alpha
    timed = c.tested[c.tested["runs_per_side"] != "1v1"]
    assert c.family == len(timed) - (timed["metric"] == "tokens_per_s").sum()


def test_the_contended_block_counts_timings_not_their_rates(tmp_path):
    # three quiet runs against three under load (3x): each case's step time looked slower, and its rate with it;
    # "N of them looked slower" counted both
    base = [checkpointing_run(tmp_path / "base", f"b{i}", i) for i in range(3)]
    cases = {f"checkpointing/{v}/batch={b},d_model=256,dtype=bfloat16,layers=8,seq=256"
             for v in ("none", "full", "sqrt", "selective", "offload") for b in (4, 8)}
    new = [checkpointing_run(tmp_path / "new", f"n{i}", 10 + i, loaded=cases, slow=3.0) for i in range(3)]
    c = compare(base, new)
    slower = c.unjudged_slower
    roots = slower[slower["follows"].isna()]
    assert set(roots["metric"]) == {"step_time_ms"} and len(roots) == 10
    assert set(slower.loc[slower["follows"].notna(), "metric"]) == {"tokens_per_s"}
    lines = c.summary_lines()
    assert f"of them, 10 timings ({len(slower)} rows with their rates) looked slower from several runs a side" in \
        "\n".join(lines)


def test_sides_with_no_case_in_common_fail_the_gate(tmp_path, capsys):
    # one size (the sides module refuses two), other suites or params: nothing was compared, and the gate passed
    from bench.cli import main

    base = write_run(tmp_path, "base", [timing_case("a", 100)])
    new = write_run(tmp_path, "new", [timing_case("b", 100, seed=1)])
    assert main(["compare", str(base), str(new), "--fail-on-regression"]) == 1
    out = capsys.readouterr().out
    c = compare(base, new)
    assert c.rows.empty and c.nothing_shared and c.failed
    assert out.count("nothing compared: no case of NEW is in BASE (no shared case_id") == 1
    assert main(["compare", str(base), str(new)]) == 0  # said, not failed, without the gate
    shared = write_run(tmp_path, "shared", [timing_case("a", 100, seed=2), timing_case("b", 100, seed=3)])
    assert not compare(base, shared).nothing_shared and not compare(base, shared).failed


def test_one_run_a_side_gates_exact_metrics_only_and_fails_a_new_run_under_load(tmp_path, capsys):
    # one run a side: a clean slower timing is shown, not gated, and the summary says the gate judged the exact
    # metrics only. A NEW run whose timings were (mostly) contended gives no evidence either way: it fails, as an
    # unfinished run does, unless --allow-contended
    from bench.cli import main

    base = write_run(tmp_path, "base", [timing_case(v, 100, seed=i, peak_mem_bytes=1000, **QUIET)
                                        for i, v in enumerate("abcd")])
    slow = write_run(tmp_path, "slow", [timing_case(v, 130, seed=9 + i, peak_mem_bytes=1000, **QUIET)
                                        for i, v in enumerate("abcd")])
    loaded = write_run(tmp_path, "loaded", [timing_case(v, 300, seed=9 + i, peak_mem_bytes=1000,
                                                        **(LOAD if v != "d" else QUIET)) for i, v in enumerate("abcd")])
    assert main(["compare", str(base), str(loaded), "--fail-on-regression"]) == 1
    out = capsys.readouterr().out
    clean = compare(base, slow)
    assert len(clean.one_run_regressions) == 4 and not clean.failed and not clean.new_disturbed
    assert any(line.startswith("one run a side: --fail-on-regression judges the exact metrics") for line in
               clean.summary_lines())
    disturbed = compare(base, loaded)
    assert (disturbed.new_contended, disturbed.timings) == (3, 4) and disturbed.new_disturbed and disturbed.failed
    assert "3 of NEW's 4 timings were contended in every new run, so not judged: NEW was disturbed" in out
    assert main(["compare", str(base), str(loaded), "--fail-on-regression", "--allow-contended"]) == 0
    # under load in one case of four: said, and judged as before
    one_loaded = write_run(tmp_path, "one", [timing_case(v, 100, seed=20 + i, peak_mem_bytes=1000,
                                                         **(LOAD if v == "a" else QUIET))
                                             for i, v in enumerate("abcd")])
    partly = compare(base, one_loaded)
    assert partly.new_contended == 1 and not partly.new_disturbed and not partly.failed
    assert any(line.startswith("1 of NEW's 4 timings were contended") for line in partly.summary_lines())


def test_a_base_side_under_load_does_not_count_as_new_disturbed(tmp_path):
    base = write_run(tmp_path, "base", [timing_case(v, 300, seed=i, **LOAD) for i, v in enumerate("abc")])
    new = write_run(tmp_path, "new", [timing_case(v, 100, seed=9 + i, **QUIET) for i, v in enumerate("abc")])
    c = compare(base, new)
    assert c.new_contended == 0 and not c.new_disturbed and not c.failed


@pytest.mark.parametrize("kind", ["disturbed", "nothing_shared", "not_significant"])
def test_the_page_says_what_the_summary_says_of_the_gate(tmp_path, kind):
    from reports.compare_page import write_compare_html

    pytest.importorskip("plotly")
    if kind == "not_significant":
        base, new = nights(tmp_path, 24, 0.12, 1.31, seed=7)
        said = "Slower, but not significant over the timings judged:"
    else:
        base = write_run(tmp_path, "base", [timing_case(v, 100, seed=i, **QUIET) for i, v in enumerate("abcd")])
        new = write_run(tmp_path, "new", [timing_case(v if kind == "disturbed" else v + "2", 300, seed=9 + i, **LOAD)
                                          for i, v in enumerate("abcd")])
        said = ("4 of NEW&#x27;s 4 timings were contended in every new run, so not judged: NEW was disturbed"
                if kind == "disturbed" else "Nothing compared: no case of NEW is in BASE")
    page = write_compare_html(compare(base, new), tmp_path / "c.html").read_text()
    assert said in page
