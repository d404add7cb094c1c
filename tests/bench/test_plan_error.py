"""ci/plan_error.py: the plan re-predicted against the peaks a GPU run measured (the committed H100 baseline), no GPU
needed. Each check is a figure a change to the plan must keep: the CUDA error it reached against real allocator
peaks."""

import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from bench.cli import main
from bench.plan import plan_case
from bench.records import read_records
from tests.optional import missing, needs
from tests.runs import A100, H200, on_device, shards_on_one_machine, write_run

# The figures below are the plan's as a machine without CUDA makes them: attention by torch's default priority, flash
# first. On an H100 or H200 with torch 2.11 the plan asks torch's own choice, cuDNN first, which changes them (routed to
# cuDNN on a CPU, the masked steps of packing and rmpad came to the byte, two cases each, and mla's decode 0.3-2.7
# points further under), so the default priority is pinned here on every machine.
pytestmark = pytest.mark.usefixtures("flash_first")

ROOT = Path(__file__).resolve().parents[2]
BASELINE = ROOT / "ci" / "baselines" / "nvidia-h100-80gb-hbm3"


@pytest.fixture
def tool():
    spec = importlib.util.spec_from_file_location("plan_error", ROOT / "ci" / "plan_error.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_plan_error_re_predicts_a_gpu_runs_peaks(tool, capsys, monkeypatch):
    # ci/plan_error.py on the committed H100 baseline, full-size checkpointing with every block recomputed: the
    # measured peak, the error the run recorded (its plan took the math path for cuDNN's attention: +398%), and this
    # checkout's, which is bench.plan's for a CUDA target: the caching allocator's bytes (bench.plan_alloc), to the
    # byte what the H100 measured
    planned = []
    monkeypatch.setattr(tool, "plan_case", lambda *args: planned.append(plan_case(*args)) or planned[-1])
    run = BASELINE / "checkpointing-full"
    assert tool.main([str(run), "checkpointing/full/batch=8,"]) == 0
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith("checkpointing/full/")]
    (r,) = [r for r in read_records(run / "records.jsonl") if r.case_id.startswith("checkpointing/full/batch=8,")]
    measured = r.metrics["peak_mem_bytes"]
    (p,) = planned
    assert (p.suite, p.variant, p.params, p.target) == ("checkpointing", "full", r.params, "cuda")
    now = p.step_peak_bytes
    assert line.split()[1:4] == [f"{measured / 2**20:.1f}", "+398.27%", tool.percent((now - measured) / measured)]
    assert now == measured


@pytest.mark.parametrize("match, bound", [
    ("packing/", 0.01),  # 0 to +0.5%: RMSNorm planned as CUDA's fused kernel (+11% to +21% before)
    ("rmpad/padded/", 0.01),  # ours -0.3% (+26% before), transformers' Llama +0.1%, both training
    ("moe/", 0.0),  # to the byte (+84% to +138% before: the window, the engine's sums counted out of place, and
    # grouped_mm's CUTLASS arguments and workspace, 70 KiB, bench.plan_scratch)
    ("rmpad/flex/", 0.01),  # +0.7%: compiled FlexAttention's buffers (bench.plan_flex; not plannable before)
    pytest.param("rmpad/hf_flat_flex/", 0.01, marks=needs("transformers")),  # -0.7%: transformers' flex_attention
])
def test_the_h100_quick_runs_peaks_are_predicted_within_the_errors_reached(tool, match, bound):
    # that run netted the previous step's gradients out of its training peaks (it predates Workload.clear)
    rows = [row for row in tool.re_predict(BASELINE / "quick", match, gradients_netted=True) if row.error is not None]
    assert rows, match
    worst = max(rows, key=lambda row: abs(row.error))
    print(f"\n{match}: {len(rows)} cases, worst {worst.error:+.2%} ({worst.case_id})")
    assert abs(worst.error) <= bound, (worst.case_id, worst.error)


@pytest.mark.parametrize("match, netted, exact", [
    # ours, all five, with the reduce kernel's staging at the bias gradients' sums (bench.plan_scratch: 4.5 to 5.5 MiB
    # under without it); fsdp_checkpointing's two at one rank, with FSDP2's unsharded parameters, which it frees and
    # re-allocates by resizing their storage (bench.memory: 1.1-1.5 MiB under without them), and its all-gathers'
    # and reduce-scatters' blocks on streams of their own (bench.plan_alloc: 0.4 MiB over without); transformers'
    # Llama's none, hf_full, hf_selective where it is installed
    ("checkpointing/", False, 7 + 3 * (not missing("transformers"))),
    # loop, grouped_torch, grouped_mm (its CUTLASS kernel's arguments and workspace: bench.plan_scratch), and
    # grouped_triton where triton is installed (its module imports it; the plan launches none)
    ("moe/", True, 3 + (not missing("triton"))),
    ("packing/", True, 4),  # pad_to_max, ffd, spfhp, ffd_naive
    ("mla/mla_absorbed/", False, 1),
    # plain, mtp, mtp_d2: bf16 autocast (bench.plan_autocast), the shared head cast once; without autocast +51%,
    # without its weight cache 8 and 16 KiB over, with the gradients cleared first (today's order) -9% to -11%
    ("mtp/", True, 3),
    # nested tensors' SDPA as flash over the values (bench.plan_attention; planned since that run)
    ("rmpad/nested/", True, 1),
])
def test_the_allocator_model_predicts_h100_peaks_to_the_byte(tool, match, netted, exact):
    # where no kernel allocates scratch of its own at the peak, the plan's blocks are what max_memory_allocated
    # reported; the tensors' bytes alone missed by 2 KiB to 110 KiB (512 B rounding, blocks handed out whole)
    rows = [row for row in tool.re_predict(BASELINE / "quick", match, gradients_netted=netted) if row.predicted]
    hits = [row.case_id for row in rows if row.predicted == row.measured]
    print(f"\n{match}: {len(hits)} of {len(rows)} to the byte")
    assert len(hits) == exact, [(row.case_id, row.predicted - row.measured) for row in rows]


def test_plan_error_compares_the_reserved_bytes_a_gpu_run_recorded(tool, tmp_path, capsys):
    # `bench run --predict` on a GPU records the allocator's segments (reserved_mem_bytes): the tool sets the plan's
    # model of them beside it. A record of the H100 run, given a reserved figure, stands for such a run
    lines = (BASELINE / "quick" / "records.jsonl").read_text().splitlines()
    record = next(json.loads(x) for x in lines if '"checkpointing/full/' in x)
    record["metrics"]["reserved_mem_bytes"] = 64 << 20
    (tmp_path / "records.jsonl").write_text(json.dumps(record) + "\n")
    (row,) = tool.re_predict(tmp_path)
    assert row.predicted and row.predicted_reserved > row.predicted  # segments hold at least the blocks
    assert tool.main([str(tmp_path)]) == 0
    (line,) = [x for x in capsys.readouterr().out.splitlines()[3:] if x.startswith("checkpointing/full/")]
    assert line.split()[1:] == ["64.0", tool.percent(row.predicted_reserved / (64 << 20) - 1)]


@pytest.mark.parametrize("variant", ["none", "sqrt", "selective", "offload"])
def test_full_size_steps_are_predicted_to_the_byte(tool, variant):
    # with `full` above: the three full-size steps that recompute, 12.6 and 31.6 GiB here, as the H100 measured them;
    # offload's 4.06 GiB, its saved tensors in host memory and copied back at their backward (bench.plan_offload);
    # and none's 49.2 GiB, which peaks inside mse_loss, at its second buffer of the loss's size (bench.plan_scratch:
    # 128 MiB under without it)
    (row,) = tool.re_predict(BASELINE / "checkpointing-full", f"checkpointing/{variant}/batch=8,")
    assert row.predicted == row.measured


def test_the_summary_counts_the_measured_cases_the_plan_cannot_predict(tool, tmp_path, capsys):
    # a suite none of whose cases plan (detection) gets a line saying so with the reason, and one with some planned
    # says of how many measured (packing's ffd and ffd_naive, not Liger's fused loss): no measured case drops silently
    lines = (BASELINE / "quick" / "records.jsonl").read_text().splitlines()
    kept = [x for x in lines if '"detection/' in x or '"packing/ffd' in x]
    (tmp_path / "records.jsonl").write_text("\n".join(kept) + "\n")
    (tmp_path / "run.json").write_text((BASELINE / "quick" / "run.json").read_text())  # the H100 it ran on
    assert tool.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "detection: none of its 2 measured cases planned (its measured step is detection with" in "\n".join(out)
    (summary,) = [x for x in out if x.startswith("packing: ")]
    assert summary.startswith("packing: 2 of 3 measured cases planned, 2 within 10% of the measured peak")


def test_the_summary_of_one_measured_case_says_case(tool, tmp_path, capsys):
    lines = (BASELINE / "quick" / "records.jsonl").read_text().splitlines()
    (tmp_path / "records.jsonl").write_text(next(x for x in lines if '"detection/' in x) + "\n")
    assert tool.main([str(tmp_path)]) == 0
    assert "detection: none of its 1 measured case planned (" in capsys.readouterr().out


def test_the_gpu_planned_for_is_the_one_the_runs_device_names(tool, tmp_path):
    # cuda:1 of a machine with an A100 and an H200 measured on the H200: the plan is of its multiprocessors
    run = on_device(write_run(tmp_path, "run", [], gpu=A100, declare=False), "cuda:1", [A100, H200])
    assert tool.run_gpu(run) == "h200"


def test_each_case_of_a_merge_over_two_gpus_is_planned_for_the_gpu_that_measured_it(tool, tmp_path, monkeypatch):
    # shards on an A100 (NVML index 0) and an H200 (index 1) of one machine, each by CUDA_VISIBLE_DEVICES on its
    # cuda:0: the first shard's run.json named the A100 for every case
    shards = shards_on_one_machine(tmp_path, [A100, H200])
    assert main(["merge", *map(str, shards), "--out", str(tmp_path / "m")]) == 0
    planned = {}

    def plan(suite, variant, params, target, gpu):
        planned[params["b"]] = gpu
        return SimpleNamespace(step_peak_bytes=100, reason=None, reserved_bytes=None)

    monkeypatch.setattr(tool, "plan_case", plan)
    assert [row.error for row in tool.re_predict(tmp_path / "m")] == [0.0, 0.0]
    assert planned == {1: "a100-sxm4-80gb", 2: "h200"}
