"""`bench run --predict` and `--skip-predicted-oom`: bench.plan's prediction recorded beside the measured peak, the
report's error table, and a case predicted not to fit skipped on a GPU."""

import json

import pytest
import torch

from bench import runner
from bench.case import Case, predict_case
from bench.cli import main
from bench.suite import SUITES, discover
from tests.optional import fresh_cuda_process, needs, needs_cuda

discover()


def checkpointing_run(out, **kw):
    return runner.run(runner.RunConfig(suites=[SUITES["checkpointing"]], size="smoke", device="cpu", out=out,
                                       variants=["none", "full", "offload"], where={"model": "None"}, inline=True,
                                       threads=1, **kw))


def test_predict_records_the_plan_beside_the_measured_peak(tmp_path):
    code, records = checkpointing_run(tmp_path / "run", predict=True)
    by = {r.variant: r.metrics for r in records}
    assert code == 0 and set(by) == {"none", "full", "offload"}
    for variant in ("none", "full", "offload"):  # on CPU the tracker is exact, and so is the plan (test_plan.py)
        assert by[variant]["predicted_peak_mem_bytes"] == pytest.approx(by[variant]["peak_mem_bytes"], rel=0.02)
    # the caching allocator's reserved bytes, predicted and measured, are a GPU's alone
    assert all(m["predicted_reserved_mem_bytes"] is None and "reserved_mem_bytes" not in m for m in by.values())
    code, plain = checkpointing_run(tmp_path / "plain")
    assert "predicted_peak_mem_bytes" not in plain[0].metrics  # opt-in
    assert plain[0].metrics["peak_mem_bytes"] == by["none"]["peak_mem_bytes"]  # predicting first changes nothing


@needs("plotly")
def test_the_report_shows_the_error_per_suite(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "checkpointing", "--size", "smoke", "--device", "cpu", "--inline", "--threads", "1",
                 "--variant", "none", "full", "--params", "model=None", "--predict", "--out", str(out)]) == 0
    page = (out / "report.html").read_text()
    assert "Predicted memory" in page and "median |error|" in page and "+0.0%" in page


def test_a_case_predicted_not_to_fit_is_skipped_on_a_gpu(monkeypatch):
    params = next(p for p in SUITES["checkpointing"].grid("smoke", "cuda:0") if "model" not in p)
    case = Case("checkpointing", "none", params, "suites.checkpointing", predict=True, skip_predicted_oom=True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2**20, 2**20))  # a 1 MiB GPU
    predicted, why = predict_case(SUITES["checkpointing"], case, "cuda:0")
    assert predicted["predicted_peak_mem_bytes"] > 0
    assert why.startswith("predicted not to fit: a peak of ") and "GiB headroom > the 0.00 GiB of cuda:0" in why
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2**40, 2**40))  # 1 TiB: it fits
    assert predict_case(SUITES["checkpointing"], case, "cuda:0")[1] is None
    no_skip = Case("checkpointing", "none", params, "suites.checkpointing", predict=True)
    assert predict_case(SUITES["checkpointing"], no_skip, "cuda:0")[1] is None  # --predict alone never skips


def test_offloads_host_copies_past_the_hosts_memory_are_skipped_on_a_gpu(monkeypatch):
    # offload's saved tensors go to pinned host memory (bench.plan_offload): a host without room for them is no place
    # to run it, however much the GPU holds
    import bench.case

    params = next(p for p in SUITES["checkpointing"].grid("smoke", "cuda:0") if "model" not in p)
    case = Case("checkpointing", "offload", params, "suites.checkpointing", predict=True, skip_predicted_oom=True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2**40, 2**40))  # 1 TiB GPU
    monkeypatch.setattr(bench.case, "mem_available_bytes", lambda: 2**20)  # 1 MiB of host memory
    _, why = predict_case(SUITES["checkpointing"], case, "cuda:0")
    assert why.startswith("predicted not to fit in host memory: offload's pinned copies hold ") and "GiB > the " \
        "0.00 GiB available" in why
    monkeypatch.setattr(bench.case, "mem_available_bytes", lambda: 2**40)
    assert predict_case(SUITES["checkpointing"], case, "cuda:0")[1] is None
    # each rank of a node pins its own copies: 8 ranks need 8 times one rank's
    from bench.plan import plan_case

    host = plan_case(SUITES["checkpointing"], "offload", params, "cuda").host_bytes
    monkeypatch.setattr(bench.case, "mem_available_bytes", lambda: 4 * host)  # room for 4 ranks' copies, not 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    _, why = predict_case(SUITES["checkpointing"], case, "cuda:0")
    assert f"hold {host / 2**30:.2f} GiB a rank x 8 ranks of this node > the {4 * host / 2**30:.2f} GiB" in why
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert predict_case(SUITES["checkpointing"], case, "cuda:0")[1] is None  # one rank's fit
    none = Case("checkpointing", "none", params, "suites.checkpointing", predict=True, skip_predicted_oom=True)
    monkeypatch.setattr(bench.case, "mem_available_bytes", lambda: 2**20)
    assert predict_case(SUITES["checkpointing"], none, "cuda:0")[1] is None  # no offload: no host copies to hold


def test_skip_predicted_oom_implies_predict(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "checkpointing", "--size", "smoke", "--device", "cpu", "--inline", "--threads", "1",
                 "--variant", "none", "--params", "model=None", "--skip-predicted-oom", "--out", str(out)]) == 0
    (record,) = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert record["status"] == "ok" and record["metrics"]["predicted_peak_mem_bytes"] > 0  # on CPU: recorded, kept
    assert "--skip-predicted-oom skips only on a GPU; on cpu every case runs" in capsys.readouterr().err


@needs("plotly")
def test_the_report_counts_the_cases_within_the_target_and_the_reserved_error(tmp_path):
    # a GPU run with --predict: peaks 0%, +5% and -20% off (2 of 3 within 10%), and where the case's process measured
    # the allocator's segments, the reserved error beside them
    from reports.run_report import render
    from tests.runs import A100, write_run

    def case(variant, measured, predicted, reserved=None):
        metrics = {"peak_mem_bytes": measured, "predicted_peak_mem_bytes": predicted}
        if reserved:
            metrics |= {"reserved_mem_bytes": reserved[0], "predicted_reserved_mem_bytes": reserved[1]}
        return {"suite": "checkpointing", "variant": variant, "params": {"batch": 8}, "metrics": metrics}

    run = write_run(tmp_path, "gpu", [case("none", 100, 100, (200, 210)), case("full", 100, 105, (200, 150)),
                                      case("sqrt", 100, 80), case("selective", 100, 110)])  # +10% is within
    page = render([run])
    section = page[page.index("Predicted memory"):page.index("</table>", page.index("Predicted memory"))]
    assert "within 10%" in section and "3 of 4" in section and "-20.0%" in section
    assert "reserved: median |error|" in section and "15.0%" in section and "-25.0%" in section
    # two GPUs' runs: a row each
    other = write_run(tmp_path, "other", [case("none", 100, 130)], gpu=A100)
    page = render([run, other])
    section = page[page.index("Predicted memory"):page.index("</table>", page.index("Predicted memory"))]
    assert "<th>run</th>" in section and "3 of 4" in section and "0 of 1" in section


def test_what_the_prediction_left_on_the_gpu_is_given_back_so_a_cases_reserved_bytes_are_its_own(monkeypatch):
    """On a GPU the prediction itself allocates (its SDPA-choice proxies, FlexAttention's probe, whose matmul makes
    cuBLAS's workspace) and leaves a cached segment: the case would read as not fresh and record no reserved bytes.
    The workspaces are cleared; with nothing then live, the cache is emptied and the counters of frees reset; with a
    tensor live, the case is not fresh."""
    from bench import case as case_module
    from bench.plan_alloc import CONFIG_ENV

    for name in CONFIG_ENV:
        monkeypatch.delenv(name, raising=False)
    state = {"allocated": 8 << 20, "reserved": 10 << 20, "calls": []}

    def clear_workspaces():
        state["calls"].append("clear_workspaces")
        state["allocated"] = 0  # the workspace was all that was live

    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch._C, "_cuda_clearCublasWorkspaces", clear_workspaces, raising=False)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: state["allocated"])
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: state["reserved"])
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: (state["calls"].append("empty_cache"),
                                                            state.update(reserved=state["allocated"])))
    monkeypatch.setattr(torch.cuda, "reset_accumulated_memory_stats",
                        lambda device=None: state["calls"].append("reset_accumulated"))
    assert case_module._fresh_allocator("cuda:0")
    assert state["calls"] == ["clear_workspaces", "empty_cache", "reset_accumulated"] and state["reserved"] == 0
    state.update(allocated=512, reserved=2 << 20)
    monkeypatch.setattr(torch._C, "_cuda_clearCublasWorkspaces", lambda: None)  # a live tensor it does not free
    assert not case_module._fresh_allocator("cuda:0") and len(state["calls"]) == 3  # left alone
    assert not case_module._fresh_allocator("cpu")
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")  # a configuration not modelled
    state.update(allocated=0)
    assert not case_module._fresh_allocator("cuda:0") and len(state["calls"]) == 3


FRESH = """
import sys
sys.path.insert(0, sys.argv[1])
import torch
from bench.case import Case, _fresh_allocator, predict_case
from bench.suite import SUITES, discover

discover()
suite = SUITES["rmpad"]
params = next(p for p in suite.grid("quick", "cuda") if p["mode"] == "train" and "model" not in p)
for variant in ("flex", "padded"):  # FlexAttention's probe runs a matmul; SDPA's choice makes proxies on the GPU
    predict_case(suite, Case("rmpad", variant, params, "suites.rmpad", predict=True), "cuda")
print("after the plans:", torch.cuda.memory_allocated(), "B live,", torch.cuda.memory_reserved(), "B reserved")
print("fresh", _fresh_allocator("cuda"), torch.cuda.memory_allocated(), torch.cuda.memory_reserved())
"""


@needs_cuda
def test_after_a_prediction_on_the_gpu_the_case_starts_from_a_fresh_allocator():
    done = fresh_cuda_process(FRESH)
    print(done.stdout)
    assert done.returncode == 0 and done.stdout.splitlines()[-1] == "fresh True 0 0", done.stderr[-2000:]


@needs("plotly")
def test_the_report_names_the_cases_the_plan_could_not_predict(tmp_path):
    # torch's meta kernel of _grouped_mm takes bf16 alone while its CPU kernel runs the case's fp32: no prediction,
    # and the report says so beside the cases it predicted rather than counting only those
    out = tmp_path / "run"
    assert main(["run", "moe", "--size", "smoke", "--device", "cpu", "--inline", "--threads", "1", "--variant",
                 "loop", "grouped_mm", "--params", "experts=8", "--predict", "--out", str(out)]) == 0
    records = {json.loads(line)["variant"]: json.loads(line)["metrics"] for line in open(out / "records.jsonl")}
    assert records["grouped_mm"]["predicted_peak_mem_bytes"] is None and records["grouped_mm"]["peak_mem_bytes"] > 0
    assert records["loop"]["predicted_peak_mem_bytes"] == records["loop"]["peak_mem_bytes"]
    page = (out / "report.html").read_text()
    assert "<th>not predicted</th>" in page and "<td>1: grouped_mm</td>" in page and "1 of 1" in page
