import json
import warnings

import pytest

import suites.checkpointing  # noqa: F401 - registers the suite
from bench.profile import profile_case
from bench.records import read_records, read_run_json
from tests.optional import needs_cuda

CASE = "checkpointing/none/batch=2,d_model=64,dtype=float32,heads=4,layers=8,seq=64"


@pytest.fixture(scope="module")
def profiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("profile") / "out"
    # one recorded call only, to keep the test short: the record's metrics then come from the profiled call
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*warmup.*")  # torch's note that warmup=0 may skew results
        ours = {"layers": "8", "model": "None"}  # our model's point, not the library's (model=hf_llama)
        return out, profile_case("checkpointing", "none", "smoke", "cpu", ours, out, wait=0, warmup=0, active=1)


def test_trace_holds_the_case_and_its_operators(profiled):
    out, result = profiled
    assert result["case_id"] == CASE and result["status"] == "ok" and result["memory_snapshot"] is None
    trace = json.loads(open(result["trace"]).read())
    names = {e.get("name") for e in trace["traceEvents"]}
    assert f"case:{CASE}" in names
    assert names & {"aten::addmm", "aten::mm"}
    assert any(e.get("args", {}).get("Input Dims") for e in trace["traceEvents"])  # record_shapes
    assert "top 25 operators by self_cpu_time_total" in (out / "top_ops.txt").read_text()
    rows = json.loads((out / "top_ops.json").read_text())
    assert rows and rows[0]["rank"] == 1 and {"name", "calls", "self_cpu_us"} <= rows[0].keys()


def test_record_and_profile_json_link_the_trace(profiled):
    out, result = profiled
    (record,) = read_records(out / "records.jsonl")
    assert record.case_id == CASE and record.status == "ok" and record.samples["step_time_ms"]
    assert record.metrics["peak_mem_bytes"] > 0
    meta = read_run_json(out)
    assert meta["size"] == "smoke" and meta["device"] == "cpu" and meta["env_id"] == record.env_id
    assert meta["profile"]["case_id"] == CASE and (out / meta["profile"]["trace"]).is_file()
    link = json.loads((out / "profile.json").read_text())
    assert link["case_id"] == CASE and (out / link["trace"]).resolve() == (out / result["trace"]).resolve()
    assert link["metrics_profiled"] is True and link["memory_snapshot"] is None
    # its timings carry the profiler's overhead: contended, so that compare, history and the dashboard never judge them
    assert record.metrics["contended"] is True


@pytest.mark.parametrize("variant, size, params, message", [
    ("full", "full", {"layers": "24"}, "2 full cases of checkpointing match params layers=24; pick one of: "),
    ("full", "smoke", {"layers": "9"}, "no smoke cases of checkpointing match params layers=9; pick one of: batch=2"),
    ("fastest", "smoke", None, "unknown variant 'fastest' for checkpointing (valid: none, full"),
    ("full", "smoke", {"layer": "8"}, "layer is no param of checkpointing --variant full at size smoke (params: batch, "
     "d_model, dtype, heads, layers, seq)"),
])
def test_bad_selection_names_the_choices_and_writes_nothing(tmp_path, variant, size, params, message):
    with pytest.raises(ValueError) as e:
        profile_case("checkpointing", variant, size, "cpu", params, tmp_path / "out")
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


def test_all_of_a_cases_params_pick_it_beside_cases_with_more():
    from bench.profile import select_case

    # smoke checkpointing has this case and one with model=hf_llama too: every param of the first names it
    params = {"batch": "2", "d_model": "64", "dtype": "float32", "heads": "4", "layers": "8", "seq": "64"}
    assert select_case("checkpointing", "none", "smoke", "cpu", params).params == {k: int(v) if v.isdigit() else v
                                                                                   for k, v in params.items()}
    with pytest.raises(ValueError) as e:  # the choices are the variant's cases, a key some lack read as k=None
        select_case("checkpointing", "full", "smoke", "cpu", {"layers": "9"})
    choices = str(e.value).split("pick one of: ")[1].split("; ")
    assert choices == ["batch=2,d_model=64,dtype=float32,heads=4,layers=8,seq=64"], choices  # full: no hf_llama case


def test_refuses_a_used_out_dir(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        profile_case("checkpointing", "full", "smoke", "cpu", None, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


@needs_cuda
def test_cuda_profile_writes_a_memory_snapshot(tmp_path):
    result = profile_case("checkpointing", "full", "smoke", "cuda", None, tmp_path / "out", wait=0, warmup=1,
                          active=1)
    assert result["status"] == "ok" and result["memory_snapshot"]
    trace = json.loads(open(result["trace"]).read())
    assert any(e.get("cat") == "kernel" for e in trace["traceEvents"])
    assert "self_device_time_total" in (tmp_path / "out" / "top_ops.txt").read_text()


@pytest.mark.parametrize("variant, status, reason", [("raise", "error", "ValueError: boom "),
                                                     ("skip", "skipped", "needs a CUDA device")])
def test_a_case_that_does_not_run_through_says_why(tmp_path, capsys, monkeypatch, variant, status, reason):
    from bench import cli
    from bench.suite import SUITES
    from tests.bench import fake_suites  # noqa: F401 - registers _endings

    monkeypatch.setattr("bench.cli.discover", lambda: dict(SUITES))
    code = cli.main(["profile", "_endings", "--variant", variant, "--size", "smoke", "--device", "cpu",
                     "--params", "n=2", "--out", str(tmp_path / "p"), "--wait", "0", "--warmup", "0"])
    out = capsys.readouterr().out
    assert code == (1 if status == "error" else 0) and f"status: {status}\n" in out
    assert f"reason: {reason}" in out, out


@pytest.mark.filterwarnings("ignore:.*warmup.*")  # torch's note that warmup=0 may skew results
def test_a_cpu_case_runs_at_its_suites_thread_count_as_bench_run_runs_it(tmp_path, monkeypatch):
    # the runner sets each CPU case's intra-op threads from the suite's cpu_threads (1 for moe, mla, mtp, samplers):
    # a profile at torch's default count would show a thread pool the measured run never had
    import torch

    from bench.suite import SUITES
    from tests.bench import fake_suites  # noqa: F401 - registers _threads (cpu_threads = 1)

    monkeypatch.setattr("bench.profile.discover", lambda: dict(SUITES))
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        profile_case("_threads", "a", "smoke", "cpu", None, tmp_path / "p", wait=0, warmup=0, active=1)
        assert torch.get_num_threads() == 3  # restored after
    finally:
        torch.set_num_threads(before)
    (record,) = read_records(tmp_path / "p" / "records.jsonl")
    assert record.metrics["threads_seen"] == 1
    assert read_run_json(tmp_path / "p")["suites"]["_threads"]["threads"] == 1


def test_a_case_skipped_before_its_profiled_calls_says_why_in_place_of_its_tables(tmp_path, monkeypatch):
    # a CUDA-only variant on CPU ends in the first, unprofiled call: top_ops.txt says so, not only that none finished
    from bench import cli
    from bench.suite import SUITES
    from tests.bench import fake_suites  # noqa: F401 - registers _endings

    monkeypatch.setattr("bench.cli.discover", lambda: dict(SUITES))
    assert cli.main(["profile", "_endings", "--variant", "skip", "--size", "smoke", "--device", "cpu", "--params",
                     "n=2", "--out", str(tmp_path / "p")]) == 0
    top = (tmp_path / "p" / "top_ops.txt").read_text()
    assert top.startswith("no profiled step finished: the case ended skipped in measure() call 1 of 3 (") and (
        "needs a CUDA device" in top), top


@pytest.mark.filterwarnings("ignore:.*warmup.*")  # torch's note that warmup=0 may skew results
@pytest.mark.parametrize("wait, contended", [(0, True), (1, None)])
def test_a_record_measured_under_the_profiler_is_contended_whatever_the_load(tmp_path, monkeypatch, wait, contended):
    # _threads times no window, so no load makes it contended: only its profiled call (--wait 0) does
    from bench.suite import SUITES
    from tests.bench import fake_suites  # noqa: F401 - registers _threads

    monkeypatch.setattr("bench.profile.discover", lambda: dict(SUITES))
    profile_case("_threads", "a", "smoke", "cpu", None, tmp_path / "p", wait=wait, warmup=0, active=1)
    (record,) = read_records(tmp_path / "p" / "records.jsonl")
    assert record.status == "ok" and record.metrics.get("contended") is contended
