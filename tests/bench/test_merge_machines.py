"""A sweep whose shards ran on different machines, or on the GPUs of one, merged (bench merge): compare and the
history name the machine and GPU that measured each case, not the first (or last) shard's for all."""

import json

from bench import history
from bench.cli import main
from bench.compare import compare
from bench.machines import record_gpu
from bench.records import read_records
from tests.optional import needs
from tests.runs import A100, H100, H200, on_device, shards_on_one_machine, write_run


def merged_over_two_gpus(tmp_path):
    """A merge of a shard measured on an H200 (b=1) and one on an A100 (b=2); and a run of both cases on an H200."""
    def records(*bs):
        return [{"suite": "checkpointing", "variant": "none", "params": {"b": b},
                 "metrics": {"step_time_ms": 1.0, "peak_mem_bytes": 100}} for b in bs]

    a = write_run(tmp_path, "a", records(1), gpu=H200)
    b = write_run(tmp_path, "b", records(2), gpu=A100)
    assert main(["merge", str(a), str(b), "--out", str(tmp_path / "m")]) == 0
    return tmp_path / "m", write_run(tmp_path, "h200", records(1, 2), gpu=H200)


def test_compare_of_a_merge_over_two_gpus_is_no_comparison_of_one_machine(tmp_path):
    # half of NEW's cases ran on an A100: the environment verdict said "same environment (A/B of code or settings)"
    # against an H200 run, from the first shard's run.json alone
    merged, h200 = merged_over_two_gpus(tmp_path)
    c = compare([h200], [merged])
    assert not c.same_env and c.env_verdict == "hardware or software comparison"
    assert ("gpu", "NVIDIA H200", "NVIDIA H200 | NVIDIA A100-SXM4-80GB") in c.env_diff


@needs("pyarrow")
def test_history_rows_of_a_merge_name_the_machine_that_measured_each_case(tmp_path):
    # every row took the first shard's env_id and GPU: the A100's case joined the H200's series on the dashboard
    merged, _ = merged_over_two_gpus(tmp_path)
    history.add(merged, tmp_path / "store")
    frame = history.load(tmp_path / "store").drop_duplicates("case_id")
    assert dict(zip(frame["case_id"], zip(frame["env_id"], frame["gpu"]))) == {
        "checkpointing/none/b=1": ("NVIDIA_H200-2.11.0", "NVIDIA H200"),
        "checkpointing/none/b=2": ("NVIDIA_A100-SXM4-80GB-2.11.0", "NVIDIA A100-SXM4-80GB")}


def test_a_merge_keeps_every_machine_of_an_input_that_ran_on_several(tmp_path):
    # a merged input (a sweep merged in stages, or a run resumed on another machine) lists its machines under envs:
    # the new merge kept only its run.json env, and the A100's case fell under the H200
    merged, _ = merged_over_two_gpus(tmp_path)
    l4 = write_run(tmp_path, "l4", [{"suite": "checkpointing", "variant": "none", "params": {"b": 3},
                                     "metrics": {"step_time_ms": 1.0}}], gpu={**A100, "name": "NVIDIA L4"})
    assert main(["merge", str(merged), str(l4), "--out", str(tmp_path / "all")]) == 0
    envs = json.loads((tmp_path / "all" / "run.json").read_text())["envs"]
    assert sorted(e["gpus"][0]["name"] for e in envs.values()) == ["NVIDIA A100-SXM4-80GB", "NVIDIA H200", "NVIDIA L4"]


def shards_of_one_machine(tmp_path):
    """Shards 1/2 and 2/2 run on one machine with an H200 (NVML index 0) and an H100 (index 1), each on the GPU
    CUDA_VISIBLE_DEVICES gave it, merged: one env_id, two GPUs."""
    shards = shards_on_one_machine(tmp_path, [{**H200, "uuid": "GPU-0"}, {**H100, "uuid": "GPU-1"}])
    assert len({json.loads((s / "run.json").read_text())["env_id"] for s in shards}) == 1
    assert main(["merge", *map(str, shards), "--out", str(tmp_path / "m")]) == 0
    return tmp_path / "m"


def test_a_merge_of_shards_on_two_gpus_of_one_machine_keeps_each_shards_environment(tmp_path):
    # envs is by env_id: it kept the second shard's environment (CUDA_VISIBLE_DEVICES=1) alone, and the first shard's
    # cases read as measured on GPU 1
    meta = json.loads((shards_of_one_machine(tmp_path) / "run.json").read_text())
    assert [(e["shard"], e["device"], e["env"]["env_vars"]) for e in meta["merged_from"]] == [
        ("1/2", "cuda:0", {"CUDA_VISIBLE_DEVICES": "0"}), ("2/2", "cuda:0", {"CUDA_VISIBLE_DEVICES": "1"})]
    assert len(meta["envs"]) == 1 and meta["envs"][meta["env_id"]] == meta["env"]  # one machine, its first shard's
    records = {r.case_id: r for r in read_records(tmp_path / "m" / "records.jsonl")}
    assert {c: record_gpu(meta, r)["uuid"] for c, r in records.items()} == {
        "checkpointing/none/b=1": "GPU-0", "checkpointing/none/b=2": "GPU-1"}
    # merged again with another shard (a sweep merged in stages), each shard keeps its own
    later = write_run(tmp_path, "s3", [{"suite": "checkpointing", "variant": "none", "params": {"b": 3},
                                        "metrics": {"step_time_ms": 1.0}}], gpu=A100)
    assert main(["merge", str(tmp_path / "m"), str(later), "--out", str(tmp_path / "all")]) == 0
    meta = json.loads((tmp_path / "all" / "run.json").read_text())
    assert {c: record_gpu(meta, r)["name"] for c, r in
            ((r.case_id, r) for r in read_records(tmp_path / "all" / "records.jsonl"))} == {
        "checkpointing/none/b=1": "NVIDIA H200", "checkpointing/none/b=2": "NVIDIA H100 80GB HBM3",
        "checkpointing/none/b=3": "NVIDIA A100-SXM4-80GB"}


def test_compare_names_each_gpu_of_one_machine_that_measured(tmp_path):
    # the diff listed a merge by env_id: one env, its first shard's (CUDA_VISIBLE_DEVICES=0), so NEW read as measured
    # on GPU 0 alone, like BASE, and no field said that an H100 measured half of it
    gpus = [{**H200, "uuid": "GPU-0"}, {**H100, "uuid": "GPU-1"}]
    base = on_device(write_run(tmp_path, "base", [{"suite": "checkpointing", "variant": "none", "params": {"b": b},
                                                   "metrics": {"step_time_ms": 1.0}} for b in (1, 2)]),
                     "cuda:0", gpus, "0")
    c = compare([base], [shards_of_one_machine(tmp_path)])
    diff = {f: (b, n) for f, b, n in c.env_diff}
    assert diff["gpu_used"] == ("NVIDIA H200 (GPU 0)", "NVIDIA H200 (GPU 0) | NVIDIA H100 80GB HBM3 (GPU 1)")
    assert diff["env_vars"] == ("CUDA_VISIBLE_DEVICES=0", "CUDA_VISIBLE_DEVICES=0 | CUDA_VISIBLE_DEVICES=1")
    # a run resumed on GPU 1 (run.json resumed_envs, as bench run writes it) names both too
    meta = json.loads((base / "run.json").read_text())
    entry = {"started_at": meta["started_at"], "env_id": meta["env_id"], "device": "cuda:0", "cases": [],
             "env": {**meta["env"], "env_vars": {"CUDA_VISIBLE_DEVICES": "1"}}}
    (base / "run.json").write_text(json.dumps({**meta, "resumed_envs": [entry]}))
    again = on_device(write_run(tmp_path, "again", [{"suite": "checkpointing", "variant": "none", "params": {"b": 1},
                                                     "metrics": {"step_time_ms": 1.0}}]), "cuda:0", gpus, "0")
    assert ("gpu_used", "NVIDIA H200 (GPU 0)", "NVIDIA H200 (GPU 0) | NVIDIA H100 80GB HBM3 (GPU 1)") in compare(
        [again], [base]).env_diff
    # a GPU of a machine that has one: the gpu field names it, gpu_used says nothing more
    assert "gpu_used" not in {f for f, _, _ in compare(*merged_over_two_gpus(tmp_path / "other")[::-1]).env_diff}


def test_runs_on_two_gpu_models_of_one_machine_are_no_comparison_of_code(tmp_path):
    # one env_id (the machine), so compare called a run on GPU 0 (an H200) against one on GPU 1 (an H100) "same
    # environment (A/B of code or settings)", and the H100's slower timings read as the code's
    gpus = [{**H200, "uuid": "GPU-0"}, {**H100, "uuid": "GPU-1"}]

    def run(name, visible):
        return on_device(write_run(tmp_path, name, [{"suite": "checkpointing", "variant": "none", "params": {"b": 1},
                                                     "metrics": {"step_time_ms": 1.0}}]), "cuda:0", gpus, visible)

    h200, h100 = run("h200", "0"), run("h100", "1")
    c = compare([h200], [h100])
    assert not c.same_env and c.env_verdict == "hardware or software comparison"
    assert ("gpu_used", "NVIDIA H200 (GPU 0)", "NVIDIA H100 80GB HBM3 (GPU 1)") in c.env_diff
    # a GPU of the same model is the same environment, whichever index of the machine it has
    twins = [{**H200, "uuid": "GPU-0"}, {**H200, "uuid": "GPU-1"}]
    on_device(h100, "cuda:0", twins, "1")
    assert compare([on_device(h200, "cuda:0", twins, "0")], [h100]).same_env
    # without env_ids (a run of an older techbench), the models measured on decide it too
    for r, visible in ((h200, "0"), (h100, "1")):
        meta = json.loads((on_device(r, "cuda:0", gpus, visible) / "run.json").read_text())
        (r / "run.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "env_id"}))
    assert not compare([h200], [h100]).same_env


@needs("pyarrow")
def test_history_rows_of_shards_on_two_gpus_of_one_machine_name_each_cases_gpu(tmp_path):
    # every row took the GPU that CUDA_VISIBLE_DEVICES of the last shard names: the H200's case stored as the H100's
    history.add(shards_of_one_machine(tmp_path), tmp_path / "store")
    frame = history.load(tmp_path / "store").drop_duplicates("case_id")
    assert dict(zip(frame["case_id"], frame["gpu"])) == {"checkpointing/none/b=1": "NVIDIA H200",
                                                         "checkpointing/none/b=2": "NVIDIA H100 80GB HBM3"}
    assert frame["env_id"].nunique() == 1  # one machine: one series per case, whichever of its GPUs measured it


def test_a_merge_keeps_a_shards_resume_on_another_gpu_of_its_machine(tmp_path):
    # shard 1 resumed with CUDA_VISIBLE_DEVICES=1 for its case (run.json resumed_envs, as bench run writes it): the
    # merged run takes that case as GPU 1's, not as its shard's env (GPU 0) names
    shards = shards_on_one_machine(tmp_path, [{**H200, "uuid": "GPU-0"}, {**H100, "uuid": "GPU-1"}])
    first, second = (json.loads((s / "run.json").read_text()) for s in shards)
    entry = {"started_at": first["started_at"], "env_id": first["env_id"], "device": "cuda:0", "env": second["env"],
             "cases": ["checkpointing/none/b=1"]}
    (shards[0] / "run.json").write_text(json.dumps({**first, "resumed_envs": [entry]}))
    assert main(["merge", *map(str, shards), "--out", str(tmp_path / "m")]) == 0
    meta = json.loads((tmp_path / "m" / "run.json").read_text())
    assert {r.case_id: record_gpu(meta, r)["uuid"] for r in read_records(tmp_path / "m" / "records.jsonl")} == {
        "checkpointing/none/b=1": "GPU-1", "checkpointing/none/b=2": "GPU-1"}


def test_bench_merge_says_how_many_gpus_of_one_machine_measured(tmp_path, capsys):
    # it said "(1 machine)" for shards that ran on two GPUs of one, as for two shards on one GPU
    shards_of_one_machine(tmp_path)
    assert "2 records of 2 runs (1 machine, 2 GPUs) -> " in capsys.readouterr().out
    merged_over_two_gpus(tmp_path / "two")  # a GPU each: the machines say it
    assert "2 records of 2 runs (2 machines) -> " in capsys.readouterr().out
    same = shards_on_one_machine(tmp_path / "same", [{**H200, "uuid": "GPU-0"}, {**H100, "uuid": "GPU-1"}])
    meta = json.loads((same[1] / "run.json").read_text())
    meta["env"]["env_vars"] = {"CUDA_VISIBLE_DEVICES": "0"}  # both shards on GPU 0, one after the other
    (same[1] / "run.json").write_text(json.dumps(meta))
    assert main(["merge", *map(str, same), "--out", str(tmp_path / "same" / "m")]) == 0
    assert "2 records of 2 runs (1 machine) -> " in capsys.readouterr().out
