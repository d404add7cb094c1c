"""`bench merge`: shards of one sweep become one run directory holding every case once, with each machine named."""

import json

import pytest

from bench import runner
from bench.cli import main
from bench.merge import missing_shards
from bench.records import read_records, read_run_json
from bench.suite import SUITES
from reports.figures import load_frame
from tests.bench import fake_suites  # noqa: F401 - registers the fake suites
from tests.runs import A100, H200, write_run

VARIANTS = ["ok", "raise", "skip", "oom"]


def sweep(tmp_path, name, shard=(1, 1)):
    out = tmp_path / name
    runner.run(runner.RunConfig(suites=[SUITES["_endings"]], size="smoke", device="cpu", out=out, inline=True,
                                variants=VARIANTS, shard=shard))
    return out


def cases(run_dir):
    return sorted((r.case_id, r.status, r.metrics.get("value_ms"), r.metrics.get("double_x"))
                  for r in read_records(run_dir / "records.jsonl"))


def test_merged_shards_hold_the_unsharded_runs_cases_once_each(tmp_path, capsys):
    whole = sweep(tmp_path, "whole")
    shards = [sweep(tmp_path, f"shard{i}", (i, 2)) for i in (1, 2)]
    assert all(cases(s) for s in shards)  # both shards ran something
    assert main(["merge", *map(str, shards), "--out", str(tmp_path / "merged")]) == 0
    merged = tmp_path / "merged"
    assert cases(merged) == cases(whole)  # statuses, metrics and ratios to the reference too
    meta = read_run_json(merged)
    assert [m["shard"] for m in meta["merged_from"]] == ["1/2", "2/2"]
    assert meta["size"] == "smoke" and meta["device"] == "cpu" and meta["finished_at"]
    # the suites' declarations travel, so compare judges the merged run as it judges the shards
    assert meta["suites"]["_endings"] == read_run_json(shards[0])["suites"]["_endings"]
    printed = capsys.readouterr()
    assert "8 records of 2 runs (1 machine)" in printed.out and "partial" not in printed.err
    assert meta["missing_shards"] == [] and meta["cases"] == 8 and meta["recorded"] == 8  # compare checks against it
    # one shard alone merges too, says which are missing, and is no finished sweep: compare and history say so
    assert main(["merge", str(shards[1]), "--out", str(tmp_path / "half")]) == 0
    assert "no run of shard 1/2 was given: the merged sweep is partial, and unfinished" in capsys.readouterr().err
    assert read_run_json(tmp_path / "half")["finished_at"] is None
    assert main(["compare", str(whole), str(tmp_path / "half"), "--fail-on-regression"]) == 1
    assert "unfinished: new run" in capsys.readouterr().out
    from bench.history import check

    with pytest.raises(ValueError, match="has not finished .*; `bench merge` of every shard, each finished"):
        check(tmp_path / "half")
    # a folder of shard directories is read as its shards
    (tmp_path / "folder").mkdir()
    for s in shards:
        s.rename(tmp_path / "folder" / s.name)
    assert main(["merge", str(tmp_path / "folder"), "--out", str(tmp_path / "merged2")]) == 0
    assert cases(tmp_path / "merged2") == cases(whole)


def test_each_record_keeps_the_machine_that_ran_it(tmp_path):
    a = write_run(tmp_path, "a", [{"suite": "checkpointing", "variant": "none", "params": {"b": 1},
                                   "metrics": {"step_time_ms": 1.0}}], gpu=H200)
    b = write_run(tmp_path, "b", [{"suite": "checkpointing", "variant": "none", "params": {"b": 2},
                                   "metrics": {"step_time_ms": 2.0}}], gpu=A100)
    assert main(["merge", str(a), str(b), "--out", str(tmp_path / "m")]) == 0
    records = read_records(tmp_path / "m" / "records.jsonl")
    meta = read_run_json(tmp_path / "m")
    assert {r.env_id for r in records} == set(meta["envs"]) == {"NVIDIA_H200-2.11.0", "NVIDIA_A100-SXM4-80GB-2.11.0"}
    frame = load_frame([tmp_path / "m"])
    assert dict(zip(frame["params"].map(lambda p: p["b"]), frame["run"])) == {1: "NVIDIA H200",
                                                                             2: "NVIDIA A100-SXM4-80GB"}


@pytest.mark.parametrize("problem, message", [
    ("overlap", "is in both"),
    ("size", "different sizes"),
    ("schema", "schema"),
    ("not_a_run", "not a run directory"),
    ("out_taken", "already exists"),
    ("repeat", "holds case checkpointing/none/b=2 more than once (records.jsonl has several records of it)"),
    ("same_dir", "is named twice"),
    # records lost since it finished: merged, what is left would read as the whole shard in compare and history
    ("corrupt", "is damaged since it finished: 1 corrupt line in its records; a merged run reads as whole"),
    ("lost", "is damaged since it finished: its records.jsonl holds 1 of the 2 records it finished with"),
])
def test_bad_merges_are_refused_before_anything_is_written(tmp_path, capsys, problem, message):
    one = {"suite": "checkpointing", "variant": "none", "params": {"b": 1}, "metrics": {"step_time_ms": 1.0}}
    a = write_run(tmp_path, "a", [one])
    b = write_run(tmp_path, "b", [one] if problem == "overlap" else [{**one, "params": {"b": 2}}],
                  size="full" if problem == "size" else "quick")
    if problem == "schema":
        meta = json.loads((b / "run.json").read_text())
        (b / "run.json").write_text(json.dumps({**meta, "schema": 99}))
    if problem == "not_a_run":
        b = tmp_path / "empty"
        b.mkdir()
    if problem == "repeat":  # records files joined by hand: the case once measured twice
        line = (b / "records.jsonl").read_text()
        (b / "records.jsonl").write_text(line + line)
    if problem == "same_dir":
        b = b / ".." / "a"  # the first run, spelled another way
    if problem == "corrupt":  # a line damaged after the run finished (not its last, which a resume would cut)
        (b / "records.jsonl").write_text('{"schema": 1, "run_id"\n' + (b / "records.jsonl").read_text())
    if problem == "lost":
        meta = json.loads((b / "run.json").read_text())
        (b / "run.json").write_text(json.dumps({**meta, "recorded": 2}))
    out = tmp_path / "out"
    if problem == "out_taken":
        out.mkdir()
        (out / "keep.txt").write_text("finished results")
    assert main(["merge", str(a), str(b), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    if problem == "out_taken":
        assert [p.name for p in out.iterdir()] == ["keep.txt"]
    else:
        assert not out.exists()


def test_missing_shards():
    assert missing_shards(["1/4", "3/4"]) == ["2/4", "4/4"]
    assert missing_shards(["2/2", "1/2"]) == []
    assert missing_shards(["1/2", "1/3"]) == []  # not one sweep's shards: nothing to say


def test_a_killed_shards_not_run_loses_what_it_recorded(tmp_path, capsys):
    # run.json lists a run's cases without a record from its start: a shard killed midway lists some it recorded
    from bench.records import write_run_json

    shards = [sweep(tmp_path, f"shard{i}", (i, 2)) for i in (1, 2)]
    done = [r.case_id for r in read_records(shards[0] / "records.jsonl")]
    write_run_json(shards[0], {**read_run_json(shards[0]), "finished_at": None, "not_run": [done[0], "_endings/x/"]})
    assert main(["merge", *map(str, shards), "--out", str(tmp_path / "merged")]) == 0
    assert read_run_json(tmp_path / "merged")["not_run"] == ["_endings/x/"]
    said = capsys.readouterr().err  # the unfinished shard is named, with what finishes it
    assert f"bench: note: {shards[0]} (shard 1/2) has not finished, so neither has the merged sweep; `" in said
    assert f"--resume --out {shards[0]}` finishes it, then merge again" in said
    # resumed and merged again beside the early merge: the finished merge is the one counted, whichever comes first
    from bench.commands import counted, run_dirs

    write_run_json(shards[0], {**read_run_json(shards[0]), "finished_at": "2026-12-01T00:00:00Z", "not_run": None})
    assert main(["merge", *map(str, shards), "--out", str(tmp_path / "a-final")]) == 0
    early = r"merged \(run merged-.*\) holds the same runs as .*a-final .*a merge finished"
    with pytest.warns(UserWarning, match=early):
        assert counted(run_dirs([tmp_path / "merged", tmp_path / "a-final"])) == [tmp_path / "a-final"]
    with pytest.warns(UserWarning, match="holds the same runs as"):
        assert counted(run_dirs([tmp_path / "a-final", tmp_path / "merged"])) == [tmp_path / "a-final"]


def test_the_merged_device_is_the_shards_kind_where_only_the_index_differs():
    from bench.merge import _device

    assert _device({"cuda:0"}) == "cuda:0"
    assert _device({"cuda:0", "cuda:1"}) == "cuda"  # compare takes it beside a cuda:0 run as one device type
    assert _device({"cuda:0", "cpu"}) == "mixed" and _device({"cuda:0", None}) == "mixed"


def test_a_merged_sweep_is_resumed_through_its_shards_not_into_it(tmp_path, capsys, monkeypatch):
    shard = sweep(tmp_path, "shard2", (2, 2))
    assert main(["merge", str(shard), "--out", str(tmp_path / "runs" / "merged")]) == 0  # unfinished: 1/2 missing
    capsys.readouterr()
    monkeypatch.setattr("bench.cli.discover", lambda: dict(SUITES))
    argv = ["run", "_endings", "--size", "smoke", "--device", "cpu", "--inline", "--resume"]
    assert main([*argv, "--out", str(tmp_path / "runs" / "merged")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot resume" in err and "it is a merge of shards (bench merge); resume" in err
    monkeypatch.chdir(tmp_path)  # --resume alone looks under runs/: the merge is no run to continue
    assert main(argv) == 2
    assert "no run under runs/ is unfinished" in capsys.readouterr().err
    assert len(read_records(tmp_path / "runs" / "merged" / "records.jsonl")) == len(read_records(shard /
                                                                                                "records.jsonl"))


def test_a_sweep_merged_in_stages_finishes(tmp_path, capsys):
    # shards 1 and 2 merged first (unfinished: 3 missing), then that merge with shard 3: the whole sweep, finished
    shards = [sweep(tmp_path, f"shard{i}", (i, 3)) for i in (1, 2, 3)]
    assert main(["merge", str(shards[0]), str(shards[1]), "--out", str(tmp_path / "m12")]) == 0
    assert read_run_json(tmp_path / "m12")["finished_at"] is None
    capsys.readouterr()
    assert main(["merge", str(tmp_path / "m12"), str(shards[2]), "--out", str(tmp_path / "all")]) == 0
    meta = read_run_json(tmp_path / "all")
    assert meta["finished_at"] and meta["missing_shards"] == [] and "note" not in capsys.readouterr().err
    assert [e["shard"] for e in meta["merged_from"]] == ["1/3", "2/3", "3/3"]  # the shards, not the first merge
    assert cases(tmp_path / "all") == cases(sweep(tmp_path, "whole"))


def test_of_two_finished_merges_of_the_same_shards_the_later_counts(tmp_path):
    from bench.commands import counted, run_dirs
    from bench.records import write_run_json

    shards = [sweep(tmp_path, f"shard{i}", (i, 2)) for i in (1, 2)]
    assert main(["merge", *map(str, shards), "--out", str(tmp_path / "merged")]) == 0
    meta = read_run_json(shards[1])  # retried since (--retry-failed): the same records, finished later
    write_run_json(shards[1], {**meta, "finished_at": "2099-01-01T00:00:00Z"})
    assert main(["merge", *map(str, shards), "--out", str(tmp_path / "merged-again")]) == 0
    with pytest.warns(UserWarning, match="holds the same runs as"):
        assert counted(run_dirs([tmp_path / "merged", tmp_path / "merged-again"])) == [tmp_path / "merged-again"]
