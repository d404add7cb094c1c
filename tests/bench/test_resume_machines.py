"""A run resumed on another machine, or on another GPU of its machine: run.json lists each, and every case stays
under the machine and GPU that measured it."""

import json
import warnings

import pytest

from bench import runner
from bench.machines import record_gpu
from bench.records import RECORDS_JSONL, read_records, read_run_json
from bench.suite import SUITES
from tests.bench.test_resume import Flaky


def test_a_run_resumed_on_another_machine_lists_both_and_each_case_stays_under_its_own(tmp_path, monkeypatch):
    from bench.history_rows import rows

    monkeypatch.setattr(Flaky, "failing", False)
    cfg = runner.RunConfig(suites=[SUITES["_flaky"]], size="smoke", device="cpu", out=tmp_path / "run", inline=True,
                           variants=["a"])
    runner.run(cfg)
    runner.run(runner.RunConfig(**{**vars(cfg), "resume": True}))
    assert "envs" not in read_run_json(cfg.out)  # resumed where it started: one machine
    meta = read_run_json(cfg.out)  # as if started on another machine: its CPU, env_id and records
    (cfg.out / "run.json").write_text(json.dumps({**meta, "env_id": "first", "env": {**meta["env"], "cpu_model": "X"}}))
    lines = [json.loads(x) for x in (cfg.out / RECORDS_JSONL).read_text().splitlines()]
    (cfg.out / RECORDS_JSONL).write_text("".join(json.dumps({**r, "env_id": "first"}) + "\n" for r in lines))
    runner.run(runner.RunConfig(**{**vars(cfg), "variants": ["b"], "resume": True}))
    meta, records = read_run_json(cfg.out), read_records(cfg.out / RECORDS_JSONL)
    here = {r.env_id for r in records if r.variant == "b"}.pop()
    # run.json keeps the first machine's env, and lists both as a merge of two machines' shards does
    assert meta["env_id"] == "first" and meta["envs"].keys() == {"first", here} and here != "first"
    assert meta["env"]["cpu_model"] == meta["envs"]["first"]["cpu_model"] == "X" != meta["envs"][here]["cpu_model"]
    # each case in the history under the machine that measured it, not all under run.json's
    assert {(row["variant"], row["env_id"]) for row in rows(records, meta, meta["run_id"])} == {("a", "first"),
                                                                                               ("b", here)}


def test_a_run_resumed_on_another_gpu_of_its_machine_says_so_and_each_case_stays_under_its_own(tmp_path, monkeypatch):
    # CUDA_VISIBLE_DEVICES=0, then 1 for the resume: NVML lists both GPUs, so one env_id, and each record names cuda:0:
    # the resumed cases were taken as measured on GPU 0 (history, plan_error, report), and nothing said so
    from bench import env as envmod
    from bench.history_rows import rows
    from bench.machines import gpus_used, sources
    from tests.runs import H100, H200

    collect = envmod.collect
    gpus = [{**H200, "index": 0, "uuid": "GPU-0"}, {**H100, "index": 1, "uuid": "GPU-1"}]

    def resume_on(visible: str, **how):
        monkeypatch.setattr(envmod, "collect", lambda root=None: {**collect(root), "gpus": gpus,
                                                                  "env_vars": {"CUDA_VISIBLE_DEVICES": visible}})
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            runner.run(runner.RunConfig(**{**vars(cfg), "resume": True, **how}))
        return [str(w.message) for w in caught if "GPU" in str(w.message)]

    cfg = runner.RunConfig(suites=[SUITES["_flaky"]], size="smoke", device="cuda:0", out=tmp_path / "run",
                           inline=True, variants=["a"])
    assert resume_on("0") == []  # a new run
    told = resume_on("1", variants=["b"])  # b's cases fail (Flaky.failing)
    assert len(told) == 1 and told[0].startswith(f"{cfg.out}: its finished cases were measured on NVIDIA H200 (GPU 0) "
                                                 "and this resume runs the rest on NVIDIA H100 80GB HBM3 (GPU 1) of "
                                                 "the same machine (CUDA_VISIBLE_DEVICES=1): the run now mixes 2 GPUs")
    meta, records = read_run_json(cfg.out), read_records(cfg.out / RECORDS_JSONL)
    assert {r.run_id for r in records} == {meta["run_id"]} and len({r.env_id for r in records}) == 1
    assert "envs" not in meta and meta["env"]["env_vars"] == {"CUDA_VISIBLE_DEVICES": "0"}  # as it was
    assert {r.variant: record_gpu(meta, r)["uuid"] for r in records} == {"a": "GPU-0", "b": "GPU-1"}
    assert {(row["variant"], row["gpu"]) for row in rows(records, meta, meta["run_id"])} == {
        ("a", "NVIDIA H200"), ("b", "NVIDIA H100 80GB HBM3")}
    assert [e["env_vars"] for _, e in sources(meta)] == [{"CUDA_VISIBLE_DEVICES": "0"}, {"CUDA_VISIBLE_DEVICES": "1"}]
    # b retried back on GPU 0: its failures from GPU 1 are replaced, so nothing mixes, and b is GPU 0's again
    monkeypatch.setattr(Flaky, "failing", False)
    assert resume_on("0", variants=["b"], retry_failed=True) == []
    meta, records = read_run_json(cfg.out), read_records(cfg.out / RECORDS_JSONL)
    assert {(r.variant, r.status, record_gpu(meta, r)["uuid"]) for r in records} == {("a", "ok", "GPU-0"),
                                                                                     ("b", "ok", "GPU-0")}
    # and GPU 1, whose every case was run again, is no longer named as one that measured the run
    assert [g["uuid"] for g in gpus_used(meta)] == ["GPU-0"]


def test_a_resume_on_another_gpu_stopped_before_its_first_case_names_no_gpu_of_the_run(tmp_path, monkeypatch):
    # Ctrl-C at the warning, then the resume it advises, on the GPU the run measured on: every case was measured on
    # GPU 0, yet run.json kept the stopped resume's GPU 1, and the report's "GPU used", compare's gpu_used and bench
    # merge's count ("1 machine, 2 GPUs") named an H100 that measured nothing
    from bench import env as envmod
    from bench.machines import gpus_used, sources
    from tests.runs import H100, H200

    collect = envmod.collect
    gpus = [{**H200, "index": 0, "uuid": "GPU-0"}, {**H100, "index": 1, "uuid": "GPU-1"}]
    monkeypatch.setattr(Flaky, "failing", False)
    cfg = runner.RunConfig(suites=[SUITES["_flaky"]], size="smoke", device="cuda:0", out=tmp_path / "run",
                           inline=True, variants=["a"])

    def on(visible: str, **how):
        monkeypatch.setattr(envmod, "collect", lambda root=None: {**collect(root), "gpus": gpus,
                                                                  "env_vars": {"CUDA_VISIBLE_DEVICES": visible}})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            runner.run(runner.RunConfig(**{**vars(cfg), "resume": True, **how}))

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    on("0")
    with monkeypatch.context() as m:
        m.setattr(runner, "_execute", stopped)
        with pytest.raises(KeyboardInterrupt):
            on("1", variants=["b"])
    assert [e["env_vars"] for _, e in sources(read_run_json(cfg.out))][-1] == {"CUDA_VISIBLE_DEVICES": "1"}
    on("0", variants=["b"])
    meta, records = read_run_json(cfg.out), read_records(cfg.out / RECORDS_JSONL)
    assert len(records) == 4 and {record_gpu(meta, r)["uuid"] for r in records} == {"GPU-0"}
    assert [g["uuid"] for g in gpus_used(meta)] == ["GPU-0"] and "resumed_envs" not in meta
