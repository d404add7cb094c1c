"""What compare takes as its two sides and says about them: optional packages and library versions in the
environment diff, sides it refuses, NEW runs that lost records since they finished, and derived rows listed under
the timing they moved with."""

import contextlib
import json

import pytest

from bench.compare import compare
from bench.records import read_run_json
from tests.runs import checkpointing_records, write_run


def test_optional_packages_and_a_variant_of_two_libraries_are_named_in_the_environment_diff(tmp_path):
    from bench.env import collect, env_id
    from bench.records import write_run_json

    env = collect()
    assert all(isinstance(v, str) for v in env["packages"].values())
    assert env_id({**env, "packages": {"torchvision": "0.26.0"}}) == env_id({**env, "packages": {}})  # not identity
    a, b = (write_run(tmp_path, n, checkpointing_records(seed=i)) for i, n in enumerate("ab"))
    for run, packages, fa in ((a, {}, "2.8.3"), (b, {"torchvision": "0.26.0"}, "2.8.4")):
        meta = read_run_json(run)
        meta["env"]["packages"] = packages
        meta["suites"]["checkpointing"]["libraries"] = {"hf_fa2": f"transformers 5.23.0, flash-attn {fa}"}
        write_run_json(run, meta)
    diff = {f: (old, new) for f, old, new in compare([a], [b]).env_diff}
    assert diff["packages"] == (None, "torchvision 0.26.0")
    meta = read_run_json(a)
    del meta["env"]["packages"]  # a run recorded before the field: it says nothing about packages
    write_run_json(a, meta)
    assert "packages" not in {f for f, _, _ in compare([a], [b]).env_diff}
    assert diff["libraries"] == ("flash-attn 2.8.3, transformers 5.23.0", "flash-attn 2.8.4, transformers 5.23.0")


def test_sides_that_cannot_be_compared_as_given_are_refused(tmp_path, capsys):
    from bench.cli import main

    smoke = write_run(tmp_path, "smoke", checkpointing_records(seed=1), size="smoke")
    quick = write_run(tmp_path, "quick", checkpointing_records(seed=2), size="quick")
    other = write_run(tmp_path, "other", checkpointing_records(seed=3), size="quick")
    with pytest.raises(ValueError, match="is on both sides"):
        compare([quick], [other, quick])
    with pytest.raises(ValueError, match=r"NEW holds runs of several sizes \(quick, smoke\)"):
        compare([other], [quick, smoke])
    assert main(["compare", str(tmp_path), str(other)]) == 2  # the folder holds NEW's run too
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is on both sides" in err


def test_one_run_on_both_sides_by_another_path_is_refused(tmp_path, capsys):
    import shutil

    from bench.cli import main
    from tests.bench.sweeps import sweep

    run = write_run(tmp_path, "night", checkpointing_records(seed=1))
    shutil.copytree(run, tmp_path / "copy")  # or an import of its export: the same run_id
    assert main(["compare", str(run), str(tmp_path / "copy")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "run night is on both sides (a copy of it" in err, err
    folder = sweep(tmp_path, "sweep")  # a shard against the merged run that holds it
    with pytest.raises(ValueError, match="run sweep-shard-1 is on both sides"):
        compare([folder / "shard-1"], [folder / "merged"])


def test_a_new_run_whose_records_were_lost_fails_the_gate(tmp_path, capsys):
    # finished runs that recorded 15 records: NEW's records.jsonl emptied, cut short or garbled since
    from bench.cli import main
    from bench.records import write_run_json

    def finished(name, seed):
        run = write_run(tmp_path, name, checkpointing_records(seed=seed))
        meta = read_run_json(run)
        write_run_json(run, {**meta, "finished_at": "2026-11-28T02:00:00Z",
                             "recorded": len((run / "records.jsonl").read_text().splitlines())})
        return run

    base = finished("base", 1)
    assert not compare(base, finished("good", 2)).damaged
    for i, (damage, why) in enumerate(((lambda lines: [], "holds 0 of"), (lambda lines: lines[:2], "holds 2 of"),
                                       (lambda lines: lines[:-1] + ["{garbage"], "1 corrupt line"))):
        new = finished(f"new{i}", 2)
        lines = (new / "records.jsonl").read_text().splitlines()
        (new / "records.jsonl").write_text("".join(f"{x}\n" for x in damage(lines)))
        with pytest.warns(UserWarning) if "corrupt" in why else contextlib.nullcontext():
            c, reverse = compare(base, new), compare(new, base)
        assert c.failed and c.damaged[0][0] == "new" and why in c.damaged[0][2], c.damaged
        assert any(line.startswith("damaged: new run") for line in c.summary_lines())
        assert reverse.damaged[0][0] == "base"  # a damaged BASE is said, but NEW passes, where something was compared
        assert reverse.failed == reverse.nothing_shared == (why == "holds 0 of")
    assert main(["compare", str(base), str(new), "--fail-on-regression"]) == 1
    assert "damaged: new run" in capsys.readouterr().out
    # a run that finished with no record (an empty shard, a node that never held rank 0) is not damaged
    empty = finished("empty", 3)
    (empty / "records.jsonl").write_text("")
    write_run_json(empty, {**read_run_json(empty), "recorded": 0})
    assert not compare(base, empty).damaged


def test_a_rate_that_moved_with_its_timing_is_listed_under_it(tmp_path):
    # three runs a side, the new 30% slower: each case's step time is one regression, its tokens/s beside it
    base = [write_run(tmp_path / "b", f"b{i}", checkpointing_records(seed=i)) for i in range(3)]
    new = [write_run(tmp_path / "n", f"n{i}", checkpointing_records(scale=1.3, seed=10 + i)) for i in range(3)]
    c = compare(base, new)
    slower = c.regressions
    rates = slower[slower["metric"] == "tokens_per_s"]
    assert len(rates) == 10 and (rates["follows"] == "step_time_ms").all()
    assert slower[slower["metric"] == "step_time_ms"]["follows"].isna().all()
    lines = c.summary_lines()
    assert f"regressions ({len(slower)}; 10 derived from another listed):" in lines
    assert sum(line.startswith("    with it: tokens_per_s x0.7") for line in lines) == 10
    assert not any("tokens_per_s" in line and line.startswith("  slower") for line in lines)
    assert c.rows[c.rows["metric"] == "peak_mem_bytes"]["follows"].isna().all()


def test_a_ratio_of_two_timings_that_both_moved_follows_neither():
    # mtp's speedup = greedy / speculative: both slower, the speedup lower: neither input alone explains it
    from bench.metrics import Metric
    from bench.verdicts import follows

    specs = {"s": {"speedup_x": Metric("speedup_x", "derived", "higher", inputs=("greedy_ms", "spec_ms")),
                   "tokens_per_s": Metric("tokens_per_s", "derived", "higher", inputs=("spec_ms",))}}
    rows = [{"case_id": "c", "suite": "s", "metric": m, "verdict": v} for m, v in
            (("greedy_ms", "slower"), ("spec_ms", "slower"), ("speedup_x", "slower"), ("tokens_per_s", "slower"))]
    follows(rows, specs)
    assert {r["metric"]: r["follows"] for r in rows} == {"greedy_ms": None, "spec_ms": None, "speedup_x": None,
                                                         "tokens_per_s": "spec_ms"}
    rows[0]["verdict"] = "same"  # now the speculative decoder alone slowed: the speedup follows it
    follows(rows, specs)
    assert rows[2]["follows"] == "spec_ms"


def test_a_run_is_counted_once_on_a_side(tmp_path, capsys):
    # a sweep folder with its shards and their merged run: each case was on each side twice, two runs of no spread,
    # so identical code was called slower and failed the gate
    from bench.cli import main
    from bench.commands import run_dirs
    from tests.bench.sweeps import sweep

    a, b = sweep(tmp_path, "a", seed=1), sweep(tmp_path, "b", seed=2)
    with pytest.warns(UserWarning) as said:
        c = compare(run_dirs([a]), run_dirs([b]))
    assert [str(w.message).split(" (run ")[0] for w in said] == [str(a / "shard-1"), str(a / "shard-2"),
                                                                 str(b / "shard-1"), str(b / "shard-2")]
    assert all("counted once, as the merged run" in str(w.message) for w in said)
    assert c.base_runs == [read_run_json(a / "merged")["run_id"]]
    assert c.new_runs == [read_run_json(b / "merged")["run_id"]]
    assert set(c.tested["runs_per_side"]) == {"1v1"} and not c.failed
    assert main(["compare", str(a), str(b), "--fail-on-regression"]) == 0
    err = capsys.readouterr().err
    assert err.count("counted once, as the merged run") == 4 and err.count("\n") == 4, err
    # the same run reached twice (a copy, a symlink): once
    import shutil

    r1 = write_run(tmp_path / "base", "r1", checkpointing_records(seed=1))
    shutil.copytree(r1, tmp_path / "base" / "r1-copy")
    (tmp_path / "base" / "r1-link").symlink_to(r1)
    new = write_run(tmp_path / "new", "r2", checkpointing_records(seed=2))
    with pytest.warns(UserWarning, match="is run r1 again") as said:
        c = compare(run_dirs([tmp_path / "base"]), [new])
    assert len(said) == 2 and c.base_runs == ["r1"] and set(c.tested["runs_per_side"]) == {"1v1"}


def test_a_merged_run_whose_shards_another_merged_run_holds_counts_once(tmp_path):
    from bench.commands import run_dirs
    from bench.merge import merge
    from tests.bench.sweeps import sweep

    a = sweep(tmp_path, "a", seed=1)
    merge([a / "shard-1", a / "shard-2"], a / "merged-again")  # merged twice: the same shards, another run_id
    new = write_run(tmp_path / "new", "n", checkpointing_records(seed=2))
    with pytest.warns(UserWarning, match="counted once"):
        c = compare(run_dirs([a]), [new])
    assert c.base_runs == [read_run_json(a / "merged")["run_id"]]


def test_sides_of_different_sizes_or_devices_are_refused(tmp_path, capsys):
    from bench.cli import main

    smoke = write_run(tmp_path, "smoke", checkpointing_records(seed=1), size="smoke")
    quick = write_run(tmp_path, "quick", checkpointing_records(seed=2), size="quick")
    cpu = write_run(tmp_path, "cpu", checkpointing_records(seed=3), size="quick", gpu=None)
    with pytest.raises(ValueError, match="BASE is smoke and NEW is quick: compare runs of one size"):
        compare([smoke], [quick])
    with pytest.raises(ValueError, match="BASE is cuda and NEW is cpu: compare runs of one device type"):
        compare([quick], [cpu])
    assert main(["compare", str(quick), str(smoke), "--fail-on-regression"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "BASE is quick and NEW is smoke" in err


def test_a_run_json_without_finished_at_is_an_unfinished_run(tmp_path):
    import json

    base = write_run(tmp_path, "base", checkpointing_records(seed=1))
    new = write_run(tmp_path, "new", checkpointing_records(seed=2))
    meta = json.loads((new / "run.json").read_text())
    for key in ("run_id", "started_at", "finished_at"):
        del meta[key]
    (new / "run.json").write_text(json.dumps(meta))  # by hand: write_run_json would write finished_at null
    c = compare(base, new)
    assert c.unfinished == [("new", "new")] and c.failed
    assert any(line.startswith("unfinished: new run new") for line in c.summary_lines())


def test_reference_case_of_a_suite_and_of_a_part():
    from bench.sides import reference_case

    suites = {"s": {"reference": "ref", "relative": [{"name": "speedup_x"}],
                    "parts": {"decode": {"reference": "mha", "relative": [{"name": "decode_speedup_x"}]}}},
              "plain": {"variants": ["a"]}}
    assert reference_case("s/fast/n=1,part=gemm", suites) == ("s/ref/n=1,part=gemm", frozenset({"speedup_x"}))
    assert reference_case("s/mla/n=1,part=decode", suites) == ("s/mha/n=1,part=decode",
                                                               frozenset({"decode_speedup_x"}))
    assert reference_case("plain/a/n=1", suites) is None and reference_case("other/a/n=1", suites) is None


def test_a_report_and_an_export_of_a_sweep_folder_hold_each_case_once(tmp_path, capsys):
    # the folder holds the shards and their merged run: each case would be listed (and exported) twice
    from bench.cli import main
    from tests.bench.sweeps import sweep

    folder = sweep(tmp_path, "sweep")
    assert main(["export", str(folder), "--format", "pytest-benchmark", "-o", str(tmp_path / "b.json")]) == 0
    assert capsys.readouterr().err.count("counted once, as the merged run") == 2
    names = [b["fullname"] for b in json.loads((tmp_path / "b.json").read_text())["benchmarks"]]
    assert names and len(names) == len(set(names))
    pytest.importorskip("plotly")
    assert main(["report", str(folder), "-o", str(tmp_path / "r.html")]) == 0
    assert capsys.readouterr().err.count("counted once, as the merged run") == 2


def test_metrics_one_side_lacks_are_said_not_dropped(tmp_path):
    # NEW ran without the reference variant: its cases have no ratios, which BASE's have
    base = write_run(tmp_path, "base", checkpointing_records())
    picked = [r for r in checkpointing_records(seed=1) if r["variant"] == "full"]
    for r in picked:
        r["metrics"].pop("mem_saving_x", None)
    c = compare([base], [write_run(tmp_path, "new", picked)])
    assert sorted({m for _, m, side in c.one_side if side == "base"}) == ["mem_saving_x"]
    lines = [ln for ln in c.summary_lines() if ln.startswith("metrics on one side only")]
    assert len(lines) == 1 and lines[0].startswith("metrics on one side only, not compared (2): mem_saving_x of "
                                                   "checkpointing/full/batch=4")
    assert {"case_id", "metric", "side"} == set(c.to_json()["one_side"][0])
    assert not compare([base], [base.parent / "new"], only={"x"}).one_side  # nothing shared, nothing said
    pytest.importorskip("plotly")
    from reports.compare_page import write_compare_html

    page = write_compare_html(c, tmp_path / "c.html").read_text()
    assert "Metrics on one side only (2): not compared" in page and "<td>mem_saving_x</td><td>base</td>" in page


def test_runs_started_with_other_threads_or_cpus_name_them_in_the_environment_diff(tmp_path, monkeypatch):
    """OMP_NUM_THREADS and taskset change torch's thread count and the CPUs a case may use, not env_id: compare
    must name them, or an A/B of those reads as one of code."""
    from bench import env
    from bench.records import write_run_json

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    here = env.collect()
    assert here["env_vars"]["OMP_NUM_THREADS"] == "1"
    assert here["torch_threads"] >= 1 and here["cpu_affinity"]
    a, b = (write_run(tmp_path, n, checkpointing_records(seed=i)) for i, n in enumerate("ab"))
    for run, vars_, cpus, threads in ((a, {}, "0-1", 2), (b, {"OMP_NUM_THREADS": "1"}, "0", 1)):
        meta = read_run_json(run)
        meta["env"].update(env_vars=vars_, cpu_affinity=cpus, torch_threads=threads)
        write_run_json(run, meta)
    result = compare([a], [b])
    diff = {f: (old, new) for f, old, new in result.env_diff}
    assert diff["env_vars"] == (None, "OMP_NUM_THREADS=1")
    assert diff["cpu_affinity"] == ("0-1", "0")
    assert diff["torch_threads"] == ("2", "1")
    meta = read_run_json(a)
    for key in ("env_vars", "cpu_affinity", "torch_threads"):  # a run from before these were recorded
        del meta["env"][key]
    write_run_json(a, meta)
    assert not {"env_vars", "cpu_affinity", "torch_threads"} & {f for f, _, _ in compare([a], [b]).env_diff}
