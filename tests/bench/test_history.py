import json

import pandas as pd
import pytest

from bench import history
from tests.optional import needs
from tests.runs import A100, H200, checkpointing_records, on_device, write_run

pytestmark = needs("pyarrow")  # the store is Parquet; the GPU machine has no pyarrow


@pytest.fixture
def run(tmp_path):
    return write_run(tmp_path / "runs", "night-1", checkpointing_records(), started_at="2026-11-28T01:00:00Z",
                     sha="feedface" * 5)


def test_add_is_idempotent(tmp_path, run):
    store = tmp_path / "store"
    n = history.add(run, store)
    # 10 ok cases x 8 metrics, and one status-only row for each of the oom, error and skipped cases
    assert n == 10 * 8 + 3
    assert history.add(run, store) == 0
    assert len(history.load(store)) == n
    assert [p.name for p in (store / "runs").iterdir()] == ["night-1.parquet"]


def test_files_read_back_with_plain_pandas(tmp_path, run):
    store = tmp_path / "store"
    history.add(run, store)
    history.add(write_run(tmp_path / "runs", "night-2", checkpointing_records(seed=1), gpu=None,
                          started_at="2026-11-29T01:00:00+02:00"), store)
    frame = pd.read_parquet(store / "runs")  # nothing of techbench: a directory of Parquet files
    assert list(frame.columns) == list(history.COLUMNS)
    assert set(frame["run_id"]) == {"night-1", "night-2"}
    assert str(frame["timestamp"].dtype) == "datetime64[us, UTC]"
    assert frame["value"].dtype == "float64" and frame["n_samples"].dtype == "int64"
    first = frame[frame["run_id"] == "night-1"].iloc[0]
    assert first["timestamp"] == pd.Timestamp("2026-11-28T01:00:00Z")
    assert first["git_sha"] == "feedface" * 5 and not first["git_dirty"]
    assert first["gpu"] == "NVIDIA H200" and first["size"] == "quick"
    assert set(frame.loc[frame["run_id"] == "night-2", "gpu"]) == {"cpu"}
    assert frame.loc[frame["run_id"] == "night-2", "timestamp"].iloc[0] == pd.Timestamp("2026-11-28T23:00:00Z")
    step = frame[(frame["metric"] == "step_time_ms") & (frame["run_id"] == "night-1")]
    assert (step["direction"] == "lower").all() and (step["n_samples"] == 30).all()
    assert step["iqr"].between(0.005, 0.1).all()  # 2% gaussian spread: IQR ~ 1.35 * 2%
    params = json.loads(step.iloc[0]["params"])
    assert params["d_model"] == 256 and params["dtype"] == "bfloat16"
    peak = frame[frame["metric"] == "peak_mem_bytes"]
    assert peak["iqr"].isna().all() and (peak["n_samples"] == 0).all()


def test_non_ok_cases_are_kept(tmp_path, run):
    store = tmp_path / "store"
    history.add(run, store)
    frame = history.load(store)
    failed = frame[frame["status"] != "ok"]
    assert sorted(failed["status"]) == ["error", "oom", "skipped"]
    assert failed["metric"].isna().all() and failed["value"].isna().all()
    assert failed.set_index("status").loc["skipped", "error"] == "needs a CUDA device"


def test_a_directory_without_run_json_is_refused(tmp_path):
    (tmp_path / "not-a-run").mkdir()
    for path in (tmp_path / "not-a-run", tmp_path / "missing"):
        with pytest.raises(ValueError, match="no run.json"):
            history.add(path, tmp_path / "store")
    assert not (tmp_path / "store").exists()


def test_load_of_an_empty_store_has_the_columns(tmp_path):
    frame = history.load(tmp_path / "empty")
    assert frame.empty and list(frame.columns) == list(history.COLUMNS)


def test_odd_run_ids_get_safe_distinct_file_names(tmp_path):
    store = tmp_path / "store"
    records = checkpointing_records()[:1]
    a = write_run(tmp_path / "runs", "a", records)
    meta = json.loads((a / "run.json").read_text())
    meta["run_id"] = "../nightly 1"
    (a / "run.json").write_text(json.dumps(meta))
    assert history.add(a, store) == 8
    (path,) = (store / "runs").glob("*.parquet")
    assert path.parent == store / "runs" and path.name.startswith("nightly_1-")
    assert set(pd.read_parquet(store / "runs")["run_id"]) == {"../nightly 1"}


def test_an_unfinished_run_is_refused(tmp_path):
    run = write_run(tmp_path, "half", checkpointing_records())
    meta = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**meta, "finished_at": None}))
    with pytest.raises(ValueError, match="has not finished"):
        history.add(run, tmp_path / "store")
    assert not (tmp_path / "store" / "runs").exists() or not any((tmp_path / "store" / "runs").iterdir())


def test_a_run_with_a_case_recorded_twice_is_refused_naming_it(tmp_path, capsys):
    from bench.cli import main

    run = write_run(tmp_path / "runs", "joined", checkpointing_records()[:2])
    lines = (run / "records.jsonl").read_text().splitlines()
    (run / "records.jsonl").write_text("\n".join([*lines, lines[1]]) + "\n")  # records files joined by hand
    code = main(["history", "add", str(run), "--store", str(tmp_path / "store")])
    err = capsys.readouterr().err
    case = json.loads(lines[1])["case_id"]
    assert code == 2 and err.count("\n") == 1 and f"{run} holds case {case} more than once" in err, err
    assert not (tmp_path / "store").exists()  # neither one row per record nor one per case: nothing


def test_a_folder_adds_each_run_once_and_a_sweeps_merged_run_not_its_shards(tmp_path, capsys):
    from bench.cli import main
    from tests.bench.sweeps import sweep

    folder = sweep(tmp_path, "sweep")
    merged_id = json.loads((folder / "merged" / "run.json").read_text())["run_id"]
    store = tmp_path / "store"
    assert main(["history", "add", str(folder), str(folder / "merged"), "--store", str(store)]) == 0
    err = capsys.readouterr().err
    assert err.count("counted once, as the merged run") == 2 and err.count("is run merged-") == 1, err
    assert [p.name for p in (store / "runs").iterdir()] == [f"{merged_id}.parquet"]
    frame = history.load(store)
    assert not frame.duplicated(["case_id", "metric"]).any()  # one point a case and metric for the night


@pytest.mark.parametrize("order", ["shard first", "merged first"])
def test_a_shard_and_its_merged_run_added_by_separate_commands_count_once(tmp_path, order):
    from tests.bench.sweeps import sweep

    folder = sweep(tmp_path, "sweep")
    merged_id = json.loads((folder / "merged" / "run.json").read_text())["run_id"]
    store = tmp_path / "store"
    runs = [folder / "shard-1", folder / "merged"]
    history.add(runs[order == "merged first"], store)
    with pytest.warns(UserWarning, match="holds cases the store has already, run sweep-shard-1's"):
        history.add(runs[order == "shard first"], store)
    assert len(list((store / "runs").iterdir())) == 2  # both kept: a file is never rewritten or removed
    frame = history.load(store)
    assert not frame.duplicated(["case_id", "metric"]).any()
    assert set(frame["run_id"]) == {merged_id}  # the sweep's night is its merged run, every case of both shards
    assert len(frame) == 10 * 8 + 3
    assert set(frame["source_run"]) == {"sweep-shard-1", "sweep-shard-2"}


def test_two_merges_sharing_a_shard_count_its_cases_once(tmp_path):
    from bench.merge import merge

    records = checkpointing_records()
    shards = [write_run(tmp_path / "runs", f"shard-{i}", records[i::3], run_id=f"s{i}",
                        started_at=f"2026-11-28T0{i}:00:00Z") for i in range(3)]  # a merge starts with its first
    merge(shards[:2], tmp_path / "ab")
    merge(shards[1:], tmp_path / "bc")
    store = tmp_path / "store"
    history.add(tmp_path / "ab", store)
    with pytest.warns(UserWarning, match=r"the store has already, run s1's \(in merged-[^;]*\): a shard"):
        history.add(tmp_path / "bc", store)
    frame = history.load(store)
    assert not frame.duplicated(["case_id", "metric"]).any() and len(frame) == 10 * 8 + 3
    ab = json.loads((tmp_path / "ab" / "run.json").read_text())["run_id"]
    assert set(frame.loc[frame["source_run"] == "s1", "run_id"]) == {ab}  # the earlier of two of equal size
    bc = json.loads((tmp_path / "bc" / "run.json").read_text())["run_id"]
    assert set(frame.loc[frame["source_run"] == "s2", "run_id"]) == {bc}


def test_a_store_without_source_runs_is_read_as_it_is(tmp_path, run):
    import pyarrow.parquet as pq

    store = tmp_path / "store"
    history.add(run, store)
    path = store / "runs" / "night-1.parquet"
    old = pq.read_table(path).drop_columns(["source_run"])  # as written before the column
    pq.write_table(old, path)
    pq.write_table(old, store / "runs" / "night-1-copy.parquet")
    frame = history.load(store)
    assert frame["source_run"].isna().all() and len(frame) == 2 * (10 * 8 + 3)


@pytest.mark.parametrize("damage", ["cut short", "removed", "corrupt line", "no recorded, no records"])
def test_a_damaged_run_is_refused_and_the_intact_run_added_after(tmp_path, capsys, damage):
    from bench.cli import main
    from bench.records import read_run_json, write_run_json

    run = write_run(tmp_path / "runs", "night-1", checkpointing_records())
    lines = (run / "records.jsonl").read_text().splitlines()
    write_run_json(run, {**read_run_json(run), "recorded": len(lines)})
    intact = {p.name: p.read_bytes() for p in run.iterdir()}
    records = run / "records.jsonl"
    if damage == "cut short":
        records.write_text("".join(f"{x}\n" for x in lines[:4]))
    elif damage == "removed":
        records.unlink()
    elif damage == "corrupt line":
        records.write_text("".join(f"{x}\n" for x in lines[:-1]) + lines[-1][:40] + "\n")
    else:  # a run of a techbench before `recorded`, whose records file is gone
        write_run_json(run, {k: v for k, v in read_run_json(run).items() if k != "recorded"})
        records.unlink()
    store = tmp_path / "store"
    assert main(["history", "add", str(run), "--store", str(store)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{run} is damaged since it finished" in err, err
    if damage == "corrupt line":  # the last of 13 records cut: corrupt, and so one record short, said together
        assert "1 corrupt line in its records, and its records.jsonl holds 12 of the 13 records" in err, err
    assert not store.exists()  # nothing written: the intact run can still be added
    for name, data in intact.items():
        (run / name).write_bytes(data)
    assert history.add(run, store) == 10 * 8 + 3


def test_runs_are_all_checked_before_any_is_written(tmp_path):
    good = write_run(tmp_path / "runs", "good", checkpointing_records())
    half = write_run(tmp_path / "runs", "half", checkpointing_records(seed=1))
    meta = json.loads((half / "run.json").read_text())
    (half / "run.json").write_text(json.dumps({**meta, "finished_at": None}))
    with pytest.raises(ValueError, match="has not finished"):
        history.add_runs([good, half], tmp_path / "store")
    assert not (tmp_path / "store").exists()


def test_a_ratio_to_a_contended_reference_case_is_contended(tmp_path):
    # checkpointing's reference is `none`: its timing in the same run is half of each variant's time_overhead_x
    records = checkpointing_records()
    for r in records:
        r.setdefault("metrics", {})["contended"] = False
    ref = next(r for r in records if r["variant"] == "none" and r["params"]["batch"] == 4)
    ref["metrics"].update(contended=True, host_other_cpus=1.6, host_case_cpus=0.4, host_cpus=2)
    store = tmp_path / "store"
    history.add(write_run(tmp_path / "runs", "night-1", records), store)
    frame = history.load(store)
    full = frame[frame["case_id"].str.startswith("checkpointing/full/batch=4,")].set_index("metric")
    assert full.loc["time_overhead_x", "contended"]  # a ratio of a timing: its reference's clock was disturbed
    why = full.loc["time_overhead_x", "contended_reason"]
    assert why.startswith(f"its reference case {ref_id(ref)}: other processes used 1.6 of 2 CPUs"), why
    assert not full.loc["mem_saving_x", "contended"]  # a ratio of bytes: contention changes no count
    assert not full.loc["step_time_ms", "contended"] and pd.isna(full.loc["step_time_ms", "contended_reason"])
    other = frame[frame["case_id"].str.startswith("checkpointing/full/batch=8,")].set_index("metric")
    assert not other.loc["time_overhead_x", "contended"]  # its reference ran undisturbed
    own = frame[frame["case_id"] == ref_id(ref)].set_index("metric")
    assert own.loc["time_overhead_x", "contended_reason"].startswith("other processes")  # its own reason


def ref_id(record: dict) -> str:
    params = record["params"]
    return f"{record['suite']}/{record['variant']}/" + ",".join(f"{k}={params[k]}" for k in sorted(params))


def test_a_case_on_the_second_gpu_of_a_mixed_machine_is_stored_under_that_gpu(tmp_path):
    run = on_device(write_run(tmp_path / "runs", "night-1", checkpointing_records()), "cuda:1", [A100, H200])
    history.add(run, tmp_path / "store")
    assert set(history.load(tmp_path / "store")["gpu"]) == {"NVIDIA H200"}


def test_a_run_added_again_is_said_apart_from_one_that_recorded_no_case(tmp_path, run):
    empty = write_run(tmp_path / "runs", "shard", [])
    (empty / "run.json").write_text(json.dumps({**json.loads((empty / "run.json").read_text()), "recorded": 0}))
    said = []
    assert history.add_runs([run, empty], tmp_path / "store", said=said.append) == 83
    assert said == [f"run shard ({empty}) recorded no case: added with no rows"]
    said.clear()
    assert history.add_runs([run, empty], tmp_path / "store", said=said.append) == 0
    assert said == [f"run night-1 ({run}) is in the store already, with 83 rows: not added again",
                    f"run shard ({empty}) is in the store already, with 0 rows: not added again"]


def test_a_run_whose_records_changed_since_it_was_added_replaces_its_rows(tmp_path, run):
    store, said = tmp_path / "store", []
    assert history.add_runs([run], store) == 83
    lines = (run / "records.jsonl").read_text().splitlines()
    failed = next(i for i, line in enumerate(lines) if json.loads(line)["status"] == "error")
    fixed = {**json.loads(lines[failed]), "status": "ok", "error": None, "metrics": {"step_time_ms": 2.0}}
    lines[failed] = json.dumps(fixed)  # as a --resume --retry-failed leaves it
    (run / "records.jsonl").write_text("\n".join(lines) + "\n")
    assert history.add_runs([run], store, said=said.append) == 83
    assert said == [f"run night-1 ({run}) changed since it was added: its 83 rows replaced by 83"]
    frame = history.load(store)
    assert "error" not in set(frame["status"]) and fixed["case_id"] in set(frame[frame["status"] == "ok"]["case_id"])
    assert [p.name for p in (store / "runs").iterdir()] == ["night-1.parquet"]
    said.clear()
    assert history.add_runs([run], store, said=said.append) == 0 and "not added again" in said[0]


def test_a_file_of_an_older_store_is_replaced_only_when_its_cases_changed(tmp_path, run):
    import pyarrow.parquet as pq

    store = tmp_path / "store"
    history.add(run, store)
    path = store / "runs" / "night-1.parquet"
    pq.write_table(pq.read_table(path).replace_schema_metadata(None), path)  # written before the digest
    assert history.add(run, store) == 0
    with (run / "records.jsonl").open("a") as f:  # a resume added a case
        f.write(json.dumps({**json.loads((run / "records.jsonl").read_text().splitlines()[0]),
                            "case_id": "checkpointing/none/extra"}) + "\n")
    assert history.add(run, store) == 83 + 8
