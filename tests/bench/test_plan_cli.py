"""`bench plan` as a user runs it: the JSON and the table, the cases --case and --params select, the page, and how far
a long plan is. What the plan predicts is tests/bench/test_plan.py's."""

import io
import json

import pytest
import torch

from bench.cli import main
from bench.plan import Prediction
from bench.plan_cli import Progress, render
from tests.optional import missing, needs


@pytest.fixture(scope="module")
def registry():
    from bench.suite import discover

    return discover()


def test_cli_json_and_bad_gpu(capsys):
    assert main(["plan", "checkpointing", "--size", "smoke", "--gpu", "h200", "--variant", "none", "offload",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    # none at our model's point and at transformers' (skipped where transformers is not installed), and offload
    assert out["gpu"] == "h200" and out["cases"] == 3 and out["fits"] == (2 if missing("transformers") else 3)
    by_status = {p["variant"] + str(p["params"].get("model")): p for p in out["predictions"]}
    assert by_status["noneNone"]["fits"] is True and by_status["noneNone"]["peak_bytes"] > 0
    # offload's saved tensors are in host memory on a GPU: what the step holds on the device is less
    offload = by_status["offloadNone"]
    assert offload["status"] == "ok" and 0 < offload["step_peak_bytes"] < by_status["noneNone"]["step_peak_bytes"]
    # ... and held there: at least what none saves on the device, parameters copied besides (bench.plan_offload)
    assert offload["host_bytes"] >= by_status["noneNone"]["parts"]["activations"] > 0
    assert by_status["noneNone"]["host_bytes"] is None
    assert main(["plan", "checkpointing", "--size", "smoke", "--gpu", "h200", "--variant", "offload"]) == 0
    assert "host memory of offload's copies, in no fits verdict: checkpointing/offload" in capsys.readouterr().out
    assert main(["plan", "--gpu", "nosuch"]) == 2
    assert "unknown GPU (valid: h200" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["plan", "checkpointing", "--gpu", "auto"]) == 2
        assert "no CUDA GPU" in capsys.readouterr().err


def test_a_reason_in_the_table_is_printed_as_it_is_written():
    """A skipped case's reason names its install line, whose brackets rich would read as a style tag and drop."""
    from rich.console import Console

    reason = 'needs transformers, which is not installed (pip install -e ".[ecosystem]")'
    pred = Prediction("checkpointing", "hf_full", {"model": "hf_llama"}, "skipped", reason)
    console = Console(file=io.StringIO(), width=400)
    render([pred], {"gpu": "h200", "size": "smoke", "capacity_bytes": 141 << 30, "cases": 1, "plannable": 0,
                    "fits": 0, "elapsed_s": 0.1}, console)
    assert f"skipped: {reason}" in console.file.getvalue()


def test_the_table_labels_cases_by_the_params_that_tell_them_apart(capsys):
    # moe's balance and dispatch parts share no params: each part's shared ones are said once, below the table
    assert main(["plan", "moe", "--size", "smoke", "--gpu", "h100"]) == 0
    out = capsys.readouterr().out
    assert "moe/grouped_triton experts=8" in out and "moe/loop experts=16" in out
    assert "every moe dispatch case here: dim=32, dtype=bfloat16, hidden=32, part=dispatch, tokens=256, top_k=2" in out
    assert "tokens=256" not in out.split("every moe")[0]  # in no row of the table
    # smoke's peaks, which 0.00 GiB would hide: in MiB where transformers' batched_mm (4.3 MiB of gathered weights)
    # is planned, else KiB
    assert f"peak {'KiB' if missing('transformers') else 'MiB'}" in out and "GiB columns" not in out
    # a part of one grid point is labelled by its variant alone: the part in the row tells fp8's parts apart
    assert main(["plan", "fp8", "--size", "smoke", "--gpu", "h100"]) == 0
    out = capsys.readouterr().out
    assert "fp8/bf16 part=gemm" in out and "fp8/bf16 part=training" in out


def test_cli_plans_the_cases_a_glob_names_as_bench_run_would_run_them(capsys):
    # a case id copied from a report, and a second glob: the plan keeps the cases either matches, in the grid's order
    assert main(["plan", "moe", "--size", "smoke", "--gpu", "h100", "--json", "--case",
                 "moe/loop/dim=32,dtype=bfloat16,experts=16,hidden=32,part=dispatch,tokens=256,top_k=2",
                 "--case", "moe/grouped_mm/*experts=8,*"]) == 0
    ids = [p["case_id"] for p in json.loads(capsys.readouterr().out)["predictions"]]
    assert ids == ["moe/grouped_mm/dim=32,dtype=bfloat16,experts=8,hidden=32,part=dispatch,tokens=256,top_k=2",
                   "moe/loop/dim=32,dtype=bfloat16,experts=16,hidden=32,part=dispatch,tokens=256,top_k=2"]
    assert main(["plan", "moe", "--size", "smoke", "--gpu", "h100", "--case", "moe/loop/*", "--case", "moe/lop/*"]) == 2
    assert "no smoke case matches --case 'moe/lop/*'" in capsys.readouterr().err  # each glob must match a case
    # --params that select nothing say so first, and a glob outside what --variant keeps says that
    assert main(["plan", "moe", "--size", "smoke", "--gpu", "h100", "--params", "experts=99", "--case", "moe/*"]) == 2
    assert "no smoke case matches --params experts=99 (experts takes 8, 16;" in capsys.readouterr().err
    assert main(["plan", "moe", "--size", "smoke", "--gpu", "h100", "--variant", "loop", "--case",
                 "moe/grouped_mm/*"]) == 2
    assert "(it matches none of the cases that --variant leave)" in capsys.readouterr().err


def test_a_case_id_of_another_devices_grid_is_pointed_to_its_nearest_here(capsys):
    # copied from a CPU run (float32), planned for a GPU, whose grid runs bfloat16
    cpu_id = "checkpointing/full/batch=2,d_model=64,dtype=float32,heads=4,layers=8,seq=64"
    assert main(["plan", "--size", "smoke", "--gpu", "h100", "--case", cpu_id]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.rstrip().endswith(
        "; the nearest on cuda: checkpointing/full/batch=2,d_model=64,dtype=bfloat16,heads=4,layers=8,seq=64)"), err
    assert main(["run", "checkpointing", "--size", "smoke", "--device", "cpu", "--case", cpu_id.replace("full", "ful"),
                 "--out", "/nonexistent/never"]) == 2
    assert f"the nearest on cpu: {cpu_id})" in capsys.readouterr().err


@needs("plotly")
def test_the_page_draws_memory_against_the_gpu(registry, tmp_path, capsys):
    out = tmp_path / "plan.html"
    assert main(["plan", "mla", "--size", "smoke", "--gpu", "h100", "-o", str(out)]) == 0
    assert "h100 80gb hbm3" in capsys.readouterr().out
    text = out.read_text()
    assert "Predicted memory per case" in text and "Roofline lower bound" in text and "79.6 GiB" in text
    assert "reserved (caching allocator)" in text and "reserved GiB" in text  # a GPU's: its segments, modelled
    assert "not_plannable" in text  # the cache part has no step: listed with its reason


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_long_plan_says_how_far_it_is():
    log = io.StringIO()  # a pipe or a CI log: a line at each tenth
    progress = Progress(log, 0.0, clock=lambda: 12.4)
    for n in range(1, 21):
        progress(n, 20)
    assert log.getvalue().splitlines() == [f"planned {n}/20 cases in 12 s" for n in range(2, 21, 2)]
    terminal = _Terminal()  # one line, rewritten
    progress = Progress(terminal, 0.0, clock=lambda: 3.0)
    for n in range(1, 4):
        progress(n, 3)
    assert terminal.getvalue() == "".join(f"\rplanned {n}/3 cases in 3 s" for n in range(1, 4)) + "\n"


def test_set_plans_a_size_no_grid_holds(capsys):
    # what would fit? the full grid's two batches of our model, both made 64: planned once, at 64
    assert main(["plan", "checkpointing", "--size", "full", "--gpu", "h100", "--variant", "none", "full",
                 "--params", "model=None", "--set", "batch=64", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["changed"] == {"batch": "64"} and out["cases"] == 2
    assert {p["params"]["batch"] for p in out["predictions"]} == {64}
    by = {p["variant"]: p for p in out["predictions"]}
    assert by["none"]["fits"] is False and by["full"]["fits"] is True  # checkpointing makes batch 64 fit an H100
    assert main(["plan", "checkpointing", "--size", "full", "--gpu", "h100", "--variant", "none", "--params",
                 "model=None", "--set", "batch=8", "--json"]) == 0
    at_8 = json.loads(capsys.readouterr().out)["predictions"][0]
    assert at_8["peak_bytes"] < by["none"]["peak_bytes"]


@pytest.mark.parametrize("changes, message", [
    ("nosuch=3", "--set nosuch: no case selected has a param nosuch (their params: batch,"),
    ("batch=x", "--set batch=x: batch takes int values, such as 8"),
    ("batch=-4", "--set batch=-4: batch is a size, which must be positive, such as 8"),
    ("batch=0", "--set batch=0: batch is a size, which must be positive, such as 8"),
    ("batch", "--set must be k=v[,k=v...]"),
])
def test_set_refuses_what_the_cases_cannot_take(capsys, changes, message):
    assert main(["plan", "checkpointing", "--size", "full", "--gpu", "h100", "--params", "model=None",
                 "--set", changes]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_set_refuses_a_float_that_is_not_finite(capsys, value):
    # a grid's params are finite numbers (Suite.points): --json would write "aux_alpha": NaN, which is no JSON
    assert main(["plan", "moe", "--size", "smoke", "--gpu", "h200", "--set", f"aux_alpha={value}", "--json"]) == 2
    captured = capsys.readouterr()
    assert f"--set aux_alpha={value}: aux_alpha takes finite float values, such as 0.001" in captured.err
    assert captured.out == ""


def test_set_names_the_params_of_every_case_selected(capsys):
    # mla's parts have other params: the cache cases (dtype, part, shape) and the decode ones (batch, context, ...)
    assert main(["plan", "mla", "--size", "smoke", "--gpu", "h200", "--set", "bogus=1"]) == 2
    err = capsys.readouterr().err
    assert "--set bogus: no case selected has a param bogus (their params: batch, context," in err and "shape" in err


def test_set_that_leaves_a_variant_no_case_says_so(capsys):
    assert main(["plan", "checkpointing", "--size", "smoke", "--gpu", "h100", "--variant", "hf_full", "--set",
                 "model=x"]) == 2
    assert "--set model=x leaves hf_full no case" in capsys.readouterr().err


def test_set_takes_a_rate_of_zero(capsys):
    # a float param may be 0 where a count may not (moe's aux_alpha: the aux-loss-free balancing alone)
    assert main(["plan", "moe", "--size", "smoke", "--gpu", "h200", "--set", "aux_alpha=0", "--json"]) == 0
    assert all(p["params"]["aux_alpha"] == 0 for p in json.loads(capsys.readouterr().out)["predictions"])


def test_set_changes_the_cases_selected_as_the_grid_holds_them(capsys):
    # --case and --variant select on the grid's params, then the change is made: a glob of the grid's batch plans
    # that case at the new batch, and a param only some points have is changed where the selected cases have it
    assert main(["plan", "checkpointing", "--size", "smoke", "--gpu", "cpu", "--case",
                 "checkpointing/none/batch=2,d_model=64,dtype=float32,heads=4,layers=8,seq=64", "--set", "batch=64",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [(p["variant"], p["params"]["batch"]) for p in out["predictions"]] == [("none", 64)]
    assert main(["plan", "checkpointing", "--size", "smoke", "--gpu", "cpu", "--variant", "hf_full", "--set",
                 "model=hf_llama", "--json"]) == 0
    assert {p["params"]["model"] for p in json.loads(capsys.readouterr().out)["predictions"]} == {"hf_llama"}
    assert main(["plan", "checkpointing", "mla", "--size", "smoke", "--gpu", "cpu", "--set", "layers=2",
                 "--json"]) == 0
    captured = capsys.readouterr()
    assert {p["suite"] for p in json.loads(captured.out)["predictions"]} == {"checkpointing"}
    assert "--set layers: no case of mla has that param: left out" in captured.err


def test_the_caption_says_what_reserved_means_on_the_target(capsys, monkeypatch):
    # a plan for the CPU has no caching allocator to hold segments: its caption does not speak of CUDA's
    monkeypatch.setenv("COLUMNS", "400")
    case = "checkpointing/none/batch=2,d_model=64,dtype=float32,heads=4,layers=8,seq=64"  # bfloat16 on a GPU
    assert main(["plan", "checkpointing", "--size", "smoke", "--gpu", "cpu", "--case", case]) == 0
    out = capsys.readouterr().out
    assert "reserved: none on a CPU (torch keeps no cache of CPU memory)" in out and "CUDA" not in out
    assert main(["plan", "checkpointing", "--size", "smoke", "--gpu", "h200", "--case",
                 case.replace("float32", "bfloat16")]) == 0
    assert "reserved: the CUDA caching allocator's segments" in capsys.readouterr().out


def test_a_world_size_no_distributed_suite_runs_at_is_refused(capsys):
    # every case was listed skipped, exit 0: the size is the launch's, and no case could be planned at it
    assert main(["plan", "fsdp_checkpointing", "--size", "smoke", "--gpu", "h100", "--world-size", "3"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "bench: error: --world-size 3: fsdp_checkpointing runs at world sizes 1, 2, 4, 8, not 3"


def test_a_world_size_where_no_distributed_suite_is_selected_is_said_to_change_nothing(capsys):
    assert main(["plan", "checkpointing", "--size", "smoke", "--gpu", "h100", "--case", "checkpointing/none/*",
                 "--world-size", "8", "--json"]) == 0
    captured = capsys.readouterr()
    assert "bench: warning: --world-size 8 plans the distributed suites only; none is selected" in captured.err
    assert json.loads(captured.out)["cases"] >= 1
