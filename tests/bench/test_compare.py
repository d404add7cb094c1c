import json
import math
import re

import numpy as np
import pytest

from bench.compare import ONE_RUN_CAVEAT, ONE_RUN_UNGATED, Comparison, compare
from bench.compare_text import NOT_JUDGED
from bench.records import read_run_json
from bench.stats import compare_runs, compare_samples
from reports.compare_page import CASE_LABEL_CHARS, heatmap, timing_bars, write_compare_html
from tests.optional import needs
from tests.runs import A100, H200, checkpointing_records, long_case_records, samples, write_run


def timing_case(variant, median, spread=0.01, n=30, seed=0, **metrics):
    s = samples(median, spread, n, seed)
    return {"suite": "toy", "variant": variant, "params": {"n": 1},
            "metrics": {"step_time_ms": sorted(s)[n // 2], **metrics}, "samples": {"step_time_ms": s}}


def one(comparison: Comparison, variant: str, metric: str = "step_time_ms"):
    rows = comparison.rows
    row = rows[(rows["variant"] == variant) & (rows["metric"] == metric)]
    assert len(row) == 1, rows
    return row.iloc[0]


def repeated_runs(root, side: str, n_runs: int, median: float, run_sd: float, seed: int,
                  cases: list[tuple[float, int]] = ((0.01, 30),), rate: bool = False) -> list:
    """n_runs run directories under root/side. Each run of each case is offset by its own log-normal factor
    (run_sd) around `median`; its samples then jitter around that by the case's (within-run spread, n). `rate` adds
    tokens_per_s, a rate without samples derived from the run's timing as the suites derive it."""
    rng = np.random.default_rng(seed)
    dirs = []
    for i in range(n_runs):
        records = [timing_case(f"c{j}", median * rng.lognormal(0, run_sd), spread, n, seed=int(rng.integers(2**31)))
                   for j, (spread, n) in enumerate(cases)]
        for r in records if rate else ():
            r["metrics"]["tokens_per_s"] = 1e5 / r["metrics"]["step_time_ms"]
        dirs.append(write_run(root / side, f"r{i}", records, run_id=f"{side}-r{i}"))
    return dirs


@pytest.fixture
def pair(tmp_path):
    """Base and new runs of one toy suite, one variant per expected verdict."""
    base = [timing_case("faster", 100, seed=1), timing_case("slower", 100, seed=3),
            timing_case("same", 100, seed=5), timing_case("noise", 100, spread=0.3, n=20, seed=7),
            timing_case("small", 100, seed=9),
            timing_case("bytes_equal", 100, seed=11, peak_mem_bytes=1000, flag_noisy=True),
            timing_case("bytes_grown", 100, seed=13, peak_mem_bytes=1000, tokens_per_s=50.0)]
    new = [timing_case("faster", 80, seed=2), timing_case("slower", 125, seed=4),
           timing_case("same", 100, seed=6), timing_case("noise", 100, spread=0.3, n=20, seed=8),
           timing_case("small", 102, seed=10),
           timing_case("bytes_equal", 100, seed=12, peak_mem_bytes=1000, flag_noisy=False),
           timing_case("bytes_grown", 100, seed=14, peak_mem_bytes=1200, tokens_per_s=51.0)]
    return write_run(tmp_path, "base", base), write_run(tmp_path, "new", new)


def test_timing_verdicts(pair):
    c = compare([pair[0]], [pair[1]])
    assert one(c, "faster").verdict == "faster" and one(c, "faster").ratio == pytest.approx(0.8, abs=0.02)
    assert one(c, "slower").verdict == "slower" and one(c, "slower").p_value < 0.01
    assert one(c, "slower").ci_low > 1.05
    assert one(c, "same").verdict == "same"
    assert one(c, "noise").verdict in ("same", "noisy")
    assert one(c, "small").verdict == "same"  # a real 2% change, below the 5% threshold
    assert sorted(c.regressions["variant"]) == ["bytes_grown", "slower"]
    assert list(c.improvements["variant"]) == ["faster"]


def test_deterministic_metrics_compare_exactly(pair):
    c = compare(pair[0], pair[1])
    assert one(c, "bytes_equal", "peak_mem_bytes").verdict == "same"
    grown = one(c, "bytes_grown", "peak_mem_bytes")
    assert grown.verdict == "worse" and grown.ratio == pytest.approx(1.2) and grown.direction == "lower"
    assert math.isnan(grown.p_value)
    # a rate measured without samples gets its ratio but no verdict: one number cannot tell a change from noise
    assert one(c, "bytes_grown", "tokens_per_s").verdict == "n/a"
    assert not (c.rows["metric"] == "flag_noisy").any()


def test_summary_lines(pair):
    c = compare(pair[0], pair[1])
    lines = c.summary_lines()
    assert lines[1] == "environment: same environment (A/B of code or settings)"
    assert any(line.startswith("timings: ") and "1 faster" in line and "1 slower" in line for line in lines)
    assert any("slower" in line and "toy/slower/n=1" in line and "p=" in line for line in lines)
    assert any(line.startswith("regressions (2)") for line in lines)
    # an exact metric in whole numbers, with its difference: 4 significant digits would hide a change of 1 byte
    assert any("toy/bytes_grown/n=1  peak_mem_bytes  1000 -> 1200 (+200)" in line for line in lines)
    assert lines.count(ONE_RUN_CAVEAT) == 1 and c.one_run_per_side
    # a rate without samples is counted n/a, and the line says what that means
    other = next(line for line in lines if line.startswith("other metrics: "))
    assert "n/a" in other and other.endswith(NOT_JUDGED)


def test_status_rows_list_missing_and_failed_cases(tmp_path):
    oom = {"status": "oom", "error": "CUDA out of memory"}
    base = [timing_case("kept", 100), timing_case("gone", 100), timing_case("grew", 100)]
    new = [timing_case("kept", 100, seed=1), {**timing_case("grew", 100), **oom, "metrics": {}, "samples": {}},
           timing_case("fresh", 100)]
    c = compare([write_run(tmp_path, "a", base)], [write_run(tmp_path, "b", new)])
    st = c.status_rows.set_index("variant")
    assert st.loc["gone", "change"] == "removed" and st.loc["gone", "new_status"] == "absent"
    assert st.loc["fresh", "change"] == "added"
    assert st.loc["grew", "change"] == "ok -> oom" and st.loc["grew", "reason"] == "CUDA out of memory"
    assert "kept" not in st.index
    assert set(c.rows["variant"]) == {"kept"}
    assert any(line.startswith("cases: ") and "1 added" in line for line in c.summary_lines())


def test_shards_join_by_case_id(tmp_path):
    shard1 = write_run(tmp_path, "s1", [timing_case("a", 100, seed=1)])
    shard2 = write_run(tmp_path, "s2", [timing_case("b", 100, seed=2)])
    new = write_run(tmp_path, "n", [timing_case("a", 130, seed=3), timing_case("b", 100, seed=4)])
    c = compare([shard1, shard2], [new])
    assert one(c, "a").verdict == "slower" and one(c, "b").verdict == "same"
    assert set(c.rows["runs_per_side"]) == {"1v1"}  # two shards are one run of each case, not two
    assert c.base_runs == ["s1", "s2"] and c.status_rows.empty


def test_runs_are_not_pooled(tmp_path):
    # Three calm runs a side (0.5% jitter, 30 samples) whose medians differ by run-level offsets. Pooling the 90
    # samples a side called this x0.93 "faster" at p=2e-18; the run medians spread ~3.5%, too much to call 7%.
    base = [write_run(tmp_path, f"b{i}", [timing_case("x", m, 0.005, seed=i)]) for i, m in enumerate((100, 104, 97))]
    new = [write_run(tmp_path, f"n{i}", [timing_case("x", m, 0.005, seed=9 + i)]) for i, m in enumerate((93, 99, 92))]
    row = one(compare(base, new), "x")
    assert row.runs_per_side == "3v3" and row.verdict == "noisy"
    assert row.ratio == pytest.approx(0.93, abs=0.01) and row.run_spread == pytest.approx(0.035, abs=0.01)
    assert row.p_value > 0.01 and row.ci_low < 1 < row.ci_high


def test_clear_slowdown_across_runs(tmp_path):
    base = repeated_runs(tmp_path, "base", 3, 100, 0.02, seed=1, rate=True)
    new = repeated_runs(tmp_path, "new", 3, 120, 0.02, seed=2, rate=True)
    c = compare(base, new)
    row = one(c, "c0")
    assert row.verdict == "slower" and row.runs_per_side == "3v3"
    assert row.ratio == pytest.approx(1.2, abs=0.05) and row.p_value < 0.01 and row.ci_low > 1.05
    assert one(c, "c0", "tokens_per_s").verdict == "slower"  # a rate without samples, judged across runs
    assert ONE_RUN_CAVEAT not in c.summary_lines()


@pytest.mark.parametrize("new_median, verdicts", [(125, {"slower"}), (100, {"same", "noisy"})])
def test_nightly_several_base_runs_vs_one(tmp_path, new_median, verdicts):
    base = repeated_runs(tmp_path, "base", 5, 100, 0.02, seed=3)
    new = repeated_runs(tmp_path, "new", 1, new_median, 0.02, seed=4)
    row = one(compare(base, new), "c0")
    assert row.verdict in verdicts and row.runs_per_side == "5v1"
    assert math.isnan(row.p_value) and row.run_spread > 0  # no t-test with one new run: a prediction band


def test_compare_runs_edges():
    same = compare_runs([100.0] * 3, [100.0] * 3)
    assert same.change == "same" and same.p_value == 1.0 and same.spread == 0.0
    assert compare_runs([100.0, 100.0], [110.0, 110.0]).change == "up"  # no spread: the threshold alone decides
    assert compare_runs([100.0, 101.0, 99.0], [80.0, 81.0, 79.0]).change == "down"
    assert compare_runs([100.0, 0.0], [100.0]).change == "noisy"  # a zero run has no log: no verdict
    # two runs a side 30% apart: that spread hides a 20% shift
    assert compare_runs([100.0, 130.0], [140.0, 150.0]).change == "noisy"


def test_env_diff(tmp_path):
    records = checkpointing_records()
    h200 = write_run(tmp_path, "h200", records, gpu=H200, torch="2.11.0")
    a100 = write_run(tmp_path, "a100", checkpointing_records(scale=1.6, seed=1), gpu=A100, torch="2.12.0")
    c = compare([h200], [a100])
    diff = {f: (b, n) for f, b, n in c.env_diff}
    assert diff["gpu"] == ("NVIDIA H200", "NVIDIA A100-SXM4-80GB")
    assert diff["torch"] == ("2.11.0", "2.12.0") and "driver" in diff
    assert c.same_env is False and "hardware or software comparison" in c.summary_lines()[1]
    assert (c.regressions["metric"] == "step_time_ms").sum() == 10  # 1.6x slower everywhere


def test_same_env_is_an_ab_of_code(tmp_path):
    a = write_run(tmp_path, "a", checkpointing_records(seed=0))
    b = write_run(tmp_path, "b", checkpointing_records(seed=1), sha="f" * 40)
    c = compare([a], [b])
    assert c.same_env is True
    assert [f for f, _, _ in c.env_diff] == ["git_sha"]
    assert c.regressions.empty  # an A/A run of the same code on the same machine
    assert set(c.status_rows["change"]) == {"still oom", "still error", "still skipped"}


def test_threads_and_pinning_are_settings_the_summary_names(tmp_path):
    # a run with --threads 2 or --cpus 0 against one without: the same machine, but not an A/B of code alone
    from bench.records import write_run_json

    a = write_run(tmp_path, "a", checkpointing_records(seed=0))
    b = write_run(tmp_path, "b", checkpointing_records(seed=1))
    meta = read_run_json(b)
    meta["suites"]["checkpointing"]["threads"] = 2
    write_run_json(b, {**meta, "cpus": [0]})
    c = compare([a], [b])
    diff = {f: (old, new) for f, old, new in c.env_diff}
    assert c.same_env and diff == {"cpus": (None, "0"), "threads": (None, "checkpointing=2")}
    assert "  threads: None -> checkpointing=2" in c.summary_lines() and "  cpus: None -> 0" in c.summary_lines()


def test_a_library_upgrade_is_named_in_the_environment_diff(tmp_path):
    from bench.records import write_run_json

    a, b = (write_run(tmp_path, n, checkpointing_records(seed=i)) for i, n in enumerate("ab"))
    for run, version in ((a, "4.57.1"), (b, "4.58.0")):
        meta = read_run_json(run)
        meta["suites"]["checkpointing"]["libraries"] = {"hf_full": f"transformers {version}"}
        write_run_json(run, meta)
    c = compare([a], [b])
    assert c.same_env and ("libraries", "transformers 4.57.1", "transformers 4.58.0") in c.env_diff
    # a library that only one side's suites measure is another selection of suites, not an upgrade
    meta = read_run_json(b)
    meta["suites"]["checkpointing"]["libraries"] = {"hf_full": "transformers 4.57.1", "x": "diffusers 0.42.1"}
    write_run_json(b, meta)
    assert "libraries" not in {f for f, _, _ in compare([a], [b]).env_diff}


def aa_draws(rng: np.random.Generator, kind: str, n: int) -> np.ndarray:
    """Timings as a benchmark sees them: Gaussian jitter, or a log-normal body with rare slow outliers."""
    if kind == "lognormal+outliers":
        x = 100 * rng.lognormal(0, 0.04, n)
        return np.where(rng.random(n) < 0.05, x * rng.uniform(1.2, 2.0, n), x)
    return 100 * (1 + rng.normal(0, float(kind), n))


# A/A across runs: both sides drawn from one distribution, each run of each case offset by its own log-normal factor
# (run_sd) over 1-3% within-run jitter and 10-30 samples. The 200 cases are 200 independent draws. Measured over 3
# seeds before the run became the unit (samples pooled across runs; one run: CI not required to clear the band):
# 1 run at 2%: 7.5-10.5%, 1 run at 3%: 21-30%, 3 runs at 3%: 3.5-5.5%, 5 runs at 3%: 1.5-3%. Now:
# 1 run at 2%: 1-2.5%, 1 run at 3%: 8.5-14%, 2 runs at 3%: 0.5-2%, 3 and 5 runs at 2-3%: 0 of 200.
@pytest.mark.parametrize("n_runs, run_sd, bound", [
    (1, 0.02, 0.04),
    (1, 0.03, 0.15),  # one run a side cannot see a 3% offset: 8.5-14% of pairs still alarm
    (3, 0.03, 0.01),
    (5, 0.03, 0.01),
])
def test_aa_false_alarm_rate_with_run_offsets(tmp_path, n_runs, run_sd, bound):
    rng = np.random.default_rng(20261129)
    cases = [(float(rng.uniform(0.01, 0.03)), int(rng.integers(10, 31))) for _ in range(200)]
    base = repeated_runs(tmp_path, "base", n_runs, 100, run_sd, 10 + n_runs, cases)
    new = repeated_runs(tmp_path, "new", n_runs, 100, run_sd, 15 + n_runs, cases)
    c = compare(base, new)
    verdicts = c.rows.loc[c.rows["metric"] == "step_time_ms", "verdict"]
    rate = verdicts.isin(["faster", "slower"]).mean()
    print(f"A/A {n_runs} run(s) a side, run offset {run_sd:.0%}: false alarms {rate:.1%}")
    assert len(verdicts) == len(cases) and rate <= bound
    assert (ONE_RUN_CAVEAT in c.summary_lines()) == (n_runs == 1)


def test_aa_false_alarm_rate():
    # 300 A/A pairs of independent samples (one run a side, no run offset). Mann-Whitney alone would alarm at
    # ~alpha=1%; requiring the bootstrap CI to clear the 5% threshold band as well keeps the rate below that.
    rng = np.random.default_rng(20261128)
    configs = [(kind, n) for kind in ("0.01", "0.03", "0.1", "lognormal+outliers") for n in (5, 10, 25, 50)]
    alarms, noisy, trials = 0, 0, 300
    for i in range(trials):
        kind, n = configs[i % len(configs)]
        t = compare_samples(aa_draws(rng, kind, n), aa_draws(rng, kind, n))
        alarms += t.change in ("up", "down")
        noisy += t.change == "noisy"
    assert alarms / trials <= 0.01, f"A/A false-alarm rate {alarms}/{trials}"
    assert noisy < trials  # the quiet configurations resolve to "same"


def test_compare_samples_is_reproducible():
    a, b = samples(100, 0.05, 20, 1), samples(103, 0.05, 20, 2)
    assert compare_samples(a, b) == compare_samples(a, b)


def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        compare([tmp_path / "nope"], [tmp_path / "nope"])
    with pytest.raises(ValueError, match="threshold"):
        compare([tmp_path], [tmp_path], threshold=5)


@needs("plotly")
def test_compare_page(tmp_path):
    a = write_run(tmp_path, "a", checkpointing_records(seed=0), gpu=H200)
    b = write_run(tmp_path, "b", checkpointing_records(scale=1.3, seed=1), gpu=A100)
    out = write_compare_html(compare([a], [b]), tmp_path / "out" / "compare.html")
    text = out.read_text()
    assert '"type":"heatmap"' in text and '"type":"bar"' in text
    assert "Regressions (10)" in text and "NVIDIA A100-SXM4-80GB" in text and "still oom" in text
    assert "run-to-run variation is not measured" in text  # one run a side
    assert not re.search(r"<script[^>]*src=[\"']?https?:", text)


@needs("plotly")
def test_compare_page_lists_newly_failing_as_regressions(tmp_path):
    a = write_run(tmp_path, "a", [timing_case("kept", 100), timing_case("broke", 100)])
    broke = {**timing_case("broke", 100), "status": "timeout", "error": "timed out after 600 s", "metrics": {},
             "samples": {}}
    b = write_run(tmp_path, "b", [timing_case("kept", 100, seed=1), broke])
    text = write_compare_html(compare([a], [b]), tmp_path / "compare.html").read_text()
    assert "Regressions (1)" in text and "Newly failing (1)" in text and "ok -&gt; timeout" in text
    assert "None: no timing slower" not in text


@needs("plotly")
def test_heatmap_colours_only_judged_cells(tmp_path):
    # a timing's spread has no direction and a rate without samples no verdict: both grey, however large the ratio
    a = write_run(tmp_path, "a", [timing_case("x", 100, step_time_iqr_ms=0.01, tokens_per_s=100.0)])
    b = write_run(tmp_path, "b", [timing_case("x", 100, seed=1, step_time_iqr_ms=13.51, tokens_per_s=10.0)])
    rows = compare([a], [b]).rows
    grey, coloured = heatmap(rows).data
    metrics = list(coloured.x)
    for metric, judged in (("step_time_ms", True), ("step_time_iqr_ms", False), ("tokens_per_s", False)):
        j = metrics.index(metric)
        assert math.isfinite(coloured.z[0][j]) == judged and math.isfinite(grey.z[0][j]) != judged, metric


@needs("plotly")
def test_long_case_ids_are_shortened_on_the_axes_and_named_whole_on_hover(tmp_path):
    # mtp's 170-character case_ids took all but ~110 px of the heatmap's width, its 51 metric names piled on each other
    rows = compare([write_run(tmp_path, "a", long_case_records())],
                   [write_run(tmp_path, "b", long_case_records(scale=1.3, seed=1))]).rows
    cases = list(dict.fromkeys(rows["case_id"]))
    fig = heatmap(rows)
    labels = list(fig.layout.yaxis.ticktext)
    assert list(fig.layout.yaxis.tickvals) == cases and len(set(labels)) == len(cases) == 5
    assert max(map(len, labels)) <= CASE_LABEL_CHARS < min(map(len, cases))
    # the params every case of the suite shares are left out: the two points of `two` differ in one mid-id, which a
    # cut in the middle alone would drop
    assert labels == [f"long/{v}/prompt_len={n},…" for v, n in (("a", 8), ("b", 8), ("c", 8), ("two", 16), ("two", 8))]
    assert all(any(c in h for h in fig.data[0].hovertext[i]) for i, c in enumerate(cases))  # the whole id
    bars = timing_bars(rows, "long", "step_time_ms")
    assert list(bars.layout.yaxis.ticktext) == [x.removeprefix("long/") for x in labels]
    assert fig.layout.xaxis.tickangle == 0  # three metrics: names across, broken at underscores
    many = compare([write_run(tmp_path, "c", long_case_records(metrics=30))],
                   [write_run(tmp_path, "d", long_case_records(metrics=30, seed=1))]).rows
    assert heatmap(many).layout.xaxis.tickangle == -90  # thirty: each name whole, upright


@needs("plotly")
def test_cli_fails_on_regression_and_on_newly_failing_cases(tmp_path, capsys):
    from bench.cli import main

    base = write_run(tmp_path, "base", checkpointing_records(scale=1.0, seed=1))
    slower = write_run(tmp_path, "slower", checkpointing_records(scale=1.3, seed=2))
    records = checkpointing_records(scale=1.0, seed=3)
    records[1] = {**records[1], "status": "oom", "error": "CUDA out of memory", "metrics": {}, "samples": {}}
    broken = write_run(tmp_path, "broken", records)
    again = write_run(tmp_path, "again", checkpointing_records(scale=1.0, seed=4))
    # timings slower from one run a side are shown, not gated: an A/A pair calls them slower by the dozen
    assert main(["compare", str(base), str(slower), "--fail-on-regression"]) == 0
    out = capsys.readouterr().out
    assert "regressions (10):" in out and ONE_RUN_UNGATED.format(10) in out
    assert main(["compare", str(base), str(slower), "-o", str(tmp_path / "one.html")]) == 0
    assert "slower timings from one run a side (10): --fail-on-regression" in (tmp_path / "one.html").read_text()
    capsys.readouterr()
    # with two runs a side the run-to-run spread is measured: the same slowdown gates
    two = [write_run(tmp_path / side, f"r{i}", checkpointing_records(scale=scale, seed=10 * i + k), run_id=f"{side}{i}")
           for k, (side, scale) in enumerate((("b", 1.0), ("n", 1.3))) for i in range(2)]
    assert main(["compare", str(two[0].parent), str(two[-1].parent), "--fail-on-regression"]) == 1
    out = capsys.readouterr().out
    assert "regressions (20; 10 derived from another listed):" in out and "runs 2v2" in out  # + tokens_per_s
    assert "from one run a side" not in out
    assert main(["compare", str(base), str(broken), "--fail-on-regression"]) == 1
    assert "ok -> oom" in capsys.readouterr().out
    assert main(["compare", str(base), str(again), "--fail-on-regression", "-o", str(tmp_path / "c.html")]) == 0
    assert (tmp_path / "c.html").exists()
    assert main(["compare", str(base), str(tmp_path / "nope")]) == 2


def test_cli_writes_the_comparison_as_json_for_scripts(tmp_path, capsys):
    from bench.cli import main

    base = write_run(tmp_path, "base", checkpointing_records(scale=1.0, seed=1))
    slower = write_run(tmp_path, "slower", checkpointing_records(scale=1.3, seed=2))
    out = tmp_path / "c.json"
    assert main(["compare", str(base), str(slower), "-o", str(out), "--fail-on-regression"]) == 0
    d = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
    assert d["gate"] == {"failed": False, "regressions": 10, "gating": 0, "one_run": 10, "newly_failing": 0,
                         "contended": 0, "unjudged_slower": 0, "varying": 0, "family": 0, "not_significant": 0,
                         "new_contended": 0, "timings": 10, "new_disturbed": False, "nothing_shared": False}
    assert main(["compare", str(base), str(slower), "-o", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    rows = compare(base, slower).rows
    assert len(d["rows"]) == len(rows) and set(d["rows"][0]) == set(rows.columns)
    slow = next(r for r in d["rows"] if r["verdict"] == "slower")
    assert slow["runs_per_side"] == "1v1" and slow["p_value"] > 0 and slow["varies"] is None
    assert main(["compare", str(base), str(slower), "-o", str(tmp_path / "c.txt")]) == 2
    assert "should end in .html (a page) or .json (for scripts)" in capsys.readouterr().err
