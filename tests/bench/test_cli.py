import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.cli import main
from bench.records import SCHEMA
from tests.optional import needs


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_list_json(capsys):
    code, out, _ = run_cli(capsys, "list", "--json")
    suites = {s["name"]: s for s in json.loads(out)["suites"]}
    assert code == 0
    ckpt = suites["checkpointing"]
    assert list(ckpt["variants"]) == ["none", "full", "sqrt", "selective", "offload", "hf_full", "hf_selective"]
    assert ckpt["libraries"] == {v: ckpt["libraries"][v] for v in ("hf_full", "hf_selective")}  # transformers' own
    assert ckpt["reference"] == "none" and ckpt["cases"]["smoke"] >= 5
    step = ckpt["metrics"]["step_time_ms"]  # what each metric is, as the suite declares it
    assert (step["kind"], step["direction"], step["unit"]) == ("measured", "lower", "ms") and step["meaning"]
    assert ckpt["metrics"]["mem_saving_x"]["inputs"] == ["peak_mem_bytes"]


def test_list_table(capsys):
    code, out, _ = run_cli(capsys, "list")
    assert code == 0 and "checkpointing" in out and "selective" in out


@pytest.mark.parametrize("argv, message", [
    (["run", "nosuch"], "unknown suite 'nosuch' (valid: "),
    (["run", "checkpointng"], "unknown suite 'checkpointng' (did you mean checkpointing or fsdp_checkpointing? "
                              "valid: "),
    (["plan", "sampler"], "unknown suite 'sampler' (did you mean samplers? valid: "),
    (["run", "sqrt"], "unknown suite 'sqrt' (sqrt is a variant of checkpointing, fsdp_checkpointing: checkpointing "
                      "--variant sqrt; valid: "),
    (["run", "checkpointing", "--variant", "nosuch"], "unknown variant 'nosuch' for checkpointing (valid: full, "),
    (["run", "checkpointing", "--variant", "ful"], "unknown variant 'ful' for checkpointing (did you mean full or "),
    (["run", "--variant", "full", "checkpointing"], "'checkpointing' is a suite, not a variant: name suites before "
                                                    "--variant (checkpointing --variant full)"),
    (["run", "--variant", "checkpointing"], "name suites before --variant (checkpointing, and a variant after "),
    (["run", "--size", "huge"], "invalid choice: 'huge' (choose from "),
    (["run", "--shard", "3/2"], "--shard must be I/N with 1 <= I <= N"),
    (["run", "--shard", "two"], "--shard must be I/N"),
    (["run", "--timeout", "0"], "--timeout must be a positive number of seconds, got 0"),
    (["run", "--timeout", "inf"], "--timeout must be a positive number of seconds, got inf"),
    (["run", "--timeout", "nan"], "--timeout must be a positive number of seconds, got nan"),
    (["run", "--budget", "-1"], "--budget must be a positive number of seconds, got -1"),
    (["run", "--timeout=-inf"], "--timeout must be a positive number of seconds, got -inf"),
    (["run", "--timeout", "1e300"], "--timeout must be at most 1e+06 seconds (11.6 days), got 1e+300"),
    (["run", "--budget", "nan"], "--budget must be a positive number of seconds, got nan"),
    (["run", "--budget", "inf"], "--budget must be a positive number of seconds, got inf"),
    (["run", "--budget", "1e300"], "--budget must be at most 1e+06 seconds"),
    (["run", "--threads", "0"], "--threads must be between 1 and 4096, got 0"),
    (["run", "--threads", "100000000"], "--threads must be between 1 and 4096, got 100000000"),
    (["run", "--threads", "1e3"], "argument --threads: invalid int value: '1e3'"),
    (["run", "--shard", "1/2/3"], "--shard must be I/N"),
    (["run", "--shard", "1/0"], "--shard must be I/N"),
    (["run", "--shard", "\u0661/\u0662"], "--shard must be I/N"),  # Arabic-Indic digits, which int() reads
    (["run", "checkpointing", "--size", "smoke", "--params", "layers=2,layers=4"], "--params names 'layers' twice"),
    (["run", "--device", "tpu"], "unknown --device 'tpu' (valid: auto, cpu, cuda, cuda:N)"),
    (["run", "checkpointing", "--size", "smoke", "--params", "layers"], "--params must be k=v"),
    (["run", "checkpointing", "--size", "smoke", "--params", "layers=99"], "no smoke case matches --params layers=99"),
    # what each given key takes, or that it is no key: a typo shows at once
    (["run", "checkpointing", "--size", "smoke", "--params", "layers=99,lyers=2"], "(layers takes 8; lyers is no "
     "param; params: batch, d_model, dtype, heads, layers, model, seq)"),
    # the plan refuses the same, where it listed no case and exited 0
    (["plan", "moe", "--size", "full", "--gpu", "h200", "--params", "tokens=65536"],
     "no full case matches --params tokens=65536 (tokens takes 8192; params: "),
    (["plan", "moe", "--size", "smoke", "--gpu", "cpu", "--params", "part=balance,tokens=256"],
     "(each value is in the grid, but no grid point has them all; params: "),
    (["plan", "fsdp_checkpointing", "--size", "smoke", "--gpu", "cpu", "--params", "world_size=2"],
     "(world_size is 1, the launch's: set it with --world-size; the suite runs at 1, 2, 4, 8; params: "),
    (["run", "fsdp_checkpointing", "--size", "smoke", "--params", "world_size=4"],
     "(world_size is 1, the launch's: set it with --nproc-per-node and --nnodes; the suite runs at 1, 2, 4, 8; "),
    (["plan", "moe", "--size", "smoke", "--gpu", "cpu", "--variant", "loop", "--params", "part=balance"],
     "no smoke case of --variant loop matches --params part=balance (the variants have no case at those grid points)"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
])
def test_bad_usage_exits_2_with_one_line(capsys, tmp_path, argv, message):
    code, out, err = run_cli(capsys, *argv, *(["--out", str(tmp_path / "r")] if argv[0] == "run" else []))
    assert code == 2
    assert message in err and err.startswith("bench: error: ") and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("command", [["compare", "BASE", "NEW"], ["dashboard", "STORE", "-o", "SITE"]])
@pytest.mark.parametrize("pct", ["nan", "inf", "-1", "100", "1e300"])
def test_a_threshold_outside_0_100_exits_2_with_one_line(capsys, tmp_path, command, pct):
    code, _, err = run_cli(capsys, *[str(tmp_path / a) if a.isupper() else a for a in command], "--threshold", pct)
    assert code == 2 and err.count("\n") == 1 and "--threshold is a percentage in [0, 100)" in err
    assert not any(tmp_path.iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_device_without_cuda(capsys, tmp_path):
    code, _, err = run_cli(capsys, "run", "--device", "cuda", "--out", str(tmp_path / "r"))
    assert code == 2 and "CUDA is not available" in err and "valid: auto, cpu" in err


def test_out_that_is_a_file_is_bad_input(capsys, tmp_path):
    out = tmp_path / "r"
    out.write_text("mine")
    code, _, err = run_cli(capsys, "run", "checkpointing", "--size", "smoke", "--device", "cpu", "--out", str(out))
    assert code == 2 and "is a file" in err and err.count("\n") == 1
    assert out.read_text() == "mine"


@needs("plotly")
def test_corrupt_line_warning_is_one_line(capsys, tmp_path):
    out = tmp_path / "r"
    code, _, _ = run_cli(capsys, "run", "checkpointing", "--size", "smoke", "--device", "cpu", "--inline",
                         "--variant", "none", "--out", str(out))
    with (out / "records.jsonl").open("a") as f:
        f.write("{not json\n")
    code, _, err = run_cli(capsys, "run", "checkpointing", "--size", "smoke", "--device", "cpu", "--inline",
                           "--variant", "none", "--out", str(out), "--resume")
    assert code == 0  # the resume sets the line aside (records.jsonl.cut-<time>) and says so, on one line
    assert err.startswith("bench: warning: ") and "1 line held no whole record" in err and err.count("\n") == 1
    assert [p.read_text() for p in out.glob("records.jsonl.cut-*")] == ["{not json\n"]


@pytest.mark.parametrize("contents", [
    {"records.jsonl": json.dumps({"schema": SCHEMA + 1, "case_id": "x"}) + "\n"},
    {"run.json": json.dumps({"schema": SCHEMA, "run_id": "old", "size": "smoke", "device": "cpu"})},
])
def test_existing_out_is_never_overwritten(capsys, tmp_path, contents):
    out = tmp_path / "r"
    out.mkdir()
    for name, text in contents.items():
        (out / name).write_text(text)
    code, _, err = run_cli(capsys, "run", "checkpointing", "--size", "smoke", "--device", "cpu", "--out", str(out))
    assert code == 2 and err.count("\n") == 1 and str(out) in err
    assert {p.name: p.read_text() for p in out.iterdir()} == contents


def test_env_json(capsys):
    code, out, _ = run_cli(capsys, "env", "--json")
    env = json.loads(out)
    assert code == 0 and len(env["env_id"]) >= 8 and env["torch"] == torch.__version__


@pytest.mark.parametrize("as_json", [False, True])
def test_env_with_a_torch_that_does_not_import_is_one_line(capsys, monkeypatch, as_json):
    # a missing or broken torch (a library it loads that is gone): what `bench run` and `bench list` say in one line
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    code, out, err = run_cli(capsys, "env", *(["--json"] if as_json else []))
    assert code == 2 and out == "" and err.count("\n") == 1 and err.startswith("bench: error: torch does not import")


def test_python_dash_m_bench_runs_one_variant(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "bench", "run", "checkpointing", "--size", "smoke", "--device", "cpu",
                           "--variant", "none", "full", "--params", "model=None", "--inline", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = (out / "records.jsonl").read_text().splitlines()
    assert [json.loads(line)["variant"] for line in lines] == ["none", "full"]
    assert "2 cases: 2 ok" in proc.stdout


def test_full_disk_is_one_line_and_keeps_finished_records(capsys, tmp_path, monkeypatch):
    from bench.records import RecordWriter

    write, calls = RecordWriter.write, []

    def write_until_full(self, record):
        calls.append(record.case_id)
        if len(calls) > 1:
            raise OSError(28, "No space left on device")
        write(self, record)

    monkeypatch.setattr(RecordWriter, "write", write_until_full)
    out = tmp_path / "r"
    code, _, err = run_cli(capsys, "run", "checkpointing", "--size", "smoke", "--device", "cpu", "--inline",
                           "--variant", "none", "full", "--out", str(out))
    assert code == 1 and err.count("\n") == 1 and "No space left on device" in err and "--resume" in err
    kept = [json.loads(line)["case_id"] for line in (out / "records.jsonl").read_text().splitlines()]
    assert kept == calls[:1]


def test_an_unmatched_params_message_names_values_of_any_type():
    from bench.cli_select import no_case_matches

    class Stub:  # a plug-in's grid may hold lists, None, floats and bools side by side
        world_sizes = ()

        def grid(self, size, device):
            return [{"shape": [1, 2], "n": 3, "flag": True}, {"shape": None, "n": 2.5, "flag": False}]

    err = no_case_matches([Stub()], "smoke", "cpu", {"shape": "x", "n": "7", "flag": "True"}, "shape=x,n=7,flag=True")
    assert str(err) == ("no smoke case matches --params shape=x,n=7,flag=True (shape takes None, [1, 2]; n takes 2.5, "
                        "3; params: flag, n, shape)")


def test_a_reader_that_stops_early_ends_the_command_quietly(tmp_path):
    # `bench list --json | head`: the pipe closes under a 195 KB listing, which must end without a traceback
    env = {**os.environ, "TECHBENCH_CACHE": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "bench", "list", "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd=Path(__file__).resolve().parents[2])
    assert proc.stdout.read(10)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and err == "", err


@pytest.mark.parametrize("command", ["doctor", "env"])
def test_a_reader_gone_before_a_rich_output_ends_the_command_quietly_too(tmp_path, command):
    # `bench doctor | head -1`: rich's own handling of a closed pipe exits 1, which reads as a failure under pipefail
    env = {**os.environ, "TECHBENCH_CACHE": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "bench", command], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd=Path(__file__).resolve().parents[2])
    proc.stdout.close()  # no reader left: its first write breaks the pipe
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and err == "", err


def test_a_broken_pipe_that_is_not_the_output_is_a_failure(monkeypatch):
    # only the reader of stdout going away is quiet: a child's pipe or a socket breaking is an error like any other
    import bench.cli

    def broken(args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(bench.cli, "cmd_list", broken)
    with pytest.raises(BrokenPipeError):
        main(["list"])


def test_a_variant_run_without_its_reference_is_told_it_loses_its_ratios(capsys, tmp_path):
    from argparse import Namespace

    from bench import runner
    from bench.cli_select import warn_ratios_lost
    from bench.suite import discover

    registry = discover()
    suite = registry["checkpointing"]
    args = Namespace(suites=["checkpointing"], size="smoke", case=None, resume=False, retry_failed=False)
    for variants, told in ((["full"], True), (["full", "none"], False), (["none"], False)):
        warn_ratios_lost(args, runner.plan([suite], "smoke", "cpu", variants), registry, tmp_path / "fresh")
        err = capsys.readouterr().err
        assert ("will run without the case of its reference variant none: no mem_saving_x" in err) == told, err
        assert "(add --variant none)" in err or not told
    # one --case for the variant alone: the hint is a --case for the reference's
    full = runner.plan([suite], "smoke", "cpu", ["full"], cases_like=["checkpointing/full/*"])
    warn_ratios_lost(Namespace(**{**vars(args), "case": ["checkpointing/full/*"]}), full, registry, tmp_path / "f")
    ref = full[0].id.replace("/full/", "/none/")
    assert f"(add --case '{ref}')" in capsys.readouterr().err
    # a resume that adds the variant to a run holding the reference's records: its ratios are taken, nothing said
    from tests.runs import write_run

    run = write_run(tmp_path, "run", [{"suite": "checkpointing", "variant": "none", "params": full[0].params,
                                        "metrics": {"step_time_ms": 1.0}}])
    warn_ratios_lost(Namespace(**{**vars(args), "resume": True}), full, registry, run)
    assert capsys.readouterr().err == ""
    (tmp_path / "odd" / "records.jsonl").mkdir(parents=True)  # unreadable records: the resume itself says so
    warn_ratios_lost(Namespace(**{**vars(args), "resume": True}), full, registry, tmp_path / "odd")
    assert "will run without the case of its reference variant none" in capsys.readouterr().err


def test_a_shard_past_the_selections_groups_says_why_it_is_empty(tmp_path, capsys):
    # a CI matrix of more shards than the selection has grid points: the shard still runs (its merge wants it)
    code = main(["run", "mla", "--size", "smoke", "--device", "cpu", "--shard", "17/17", "--out", str(tmp_path / "e")])
    out, err = capsys.readouterr()
    assert code == 0 and "bench: note: shard 17/17 holds no case: the selection has 3 groups of cases" in err
    assert "no case to run" in out and f"0 cases -> {tmp_path / 'e'}" in out and "ETA" not in out
