"""ci/gpu_check.py: what a lent GPU sends back, in files that each stay under the device's size limit, and the budget
each step gets."""

import importlib.util
import json
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "ci" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def members(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        return sorted(tar.getnames())


def test_each_profiled_cases_trace_and_snapshot_travel_apart_from_the_records(tmp_path):
    out = tmp_path / "gpu"
    files = {"steps.tsv": "step\n", "quick/records.jsonl": "{}\n", "quick/report.html": "<html>",
             "profile-rmpad/top_ops.txt": "ops", "profile-rmpad/trace/t.pt.trace.json": "{}" * 1000,
             "profile-rmpad/memory_snapshot.pickle": "s", "profile-checkpointing/memory_snapshot.pickle": "s",
             "profile-checkpointing/trace/u.pt.trace.json": "{}", "trace/not-a-profile.txt": "kept"}
    for name, text in files.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)
    made = gpu_check().pack(out)
    assert [p.name for p in made] == ["gpu-snapshot-checkpointing.tar.gz", "gpu-snapshot-rmpad.tar.gz",
                                      "gpu-trace-checkpointing.tar.gz", "gpu-trace-rmpad.tar.gz", "gpu-check.tar.gz"]
    packed = {p.name: members(p) for p in made}
    assert packed["gpu-trace-rmpad.tar.gz"] == ["gpu/profile-rmpad/trace/t.pt.trace.json"]
    assert packed["gpu-snapshot-checkpointing.tar.gz"] == ["gpu/profile-checkpointing/memory_snapshot.pickle"]
    assert packed["gpu-check.tar.gz"] == sorted(f"gpu/{n}" for n in ("steps.tsv", "quick/records.jsonl",
                                                                     "quick/report.html", "profile-rmpad/top_ops.txt",
                                                                     "trace/not-a-profile.txt"))
    assert sum(map(len, packed.values())) == len(files)  # every file once
    assert all((out / p.name).is_file() for p in made) and not list(tmp_path.glob("*.tar.gz"))
    # packed again (a rerun into the same OUT): the tarballs of the first are not packed into the second
    assert {p.name: members(p) for p in gpu_check().pack(out)} == packed


def test_a_tarball_over_the_limit_is_named(tmp_path, capsys, monkeypatch):
    module = gpu_check()
    (tmp_path / "gpu").mkdir()
    (tmp_path / "gpu" / "steps.tsv").write_bytes(bytes(range(256)) * 64)
    monkeypatch.setattr(module, "LIMIT", 100)
    module.pack(tmp_path / "gpu")
    assert "gpu-check.tar.gz: " in capsys.readouterr().err


def test_a_run_that_keeps_time_for_later_steps_still_gets_half_of_what_is_left(tmp_path, monkeypatch):
    module = gpu_check()
    echo = [sys.executable, "-c", "import sys; print(sys.argv[-1])"]  # prints the --budget it got
    check = module.Check(tmp_path, budget_s=200.0)
    monkeypatch.setattr(check, "left", lambda: 185.0)  # the clock stands still
    own = 185.0 - module.STARTUP_S
    assert check.step("keeps", echo, log="keeps.log", budgeted_run=True, keep_s=20.0) == "ok"
    assert float((tmp_path / "keeps.log").read_text()) == round(own - 20)
    assert check.step("halved", echo, log="halved.log", budgeted_run=True, keep_s=150.0) == "ok"
    assert float((tmp_path / "halved.log").read_text()) == round(own / 2)  # 150 s of 165: half, not 15 s
    assert check.step("plain", echo, log="plain.log") == "ok" and (tmp_path / "plain.log").read_text() == "-c\n"


@pytest.mark.parametrize("status, said, relabelled", [
    ("failed (exit 1)", "bench: the --budget of 30 s ran out with 2 cases not run", True),
    ("failed (exit 1)", "Traceback (most recent call last):", False),  # a crash exits 1 too
    ("failed (exit -9)", "", False), ("timeout", "", False)])
def test_only_a_run_that_stopped_itself_is_said_to_be_stopped_at_the_budget(tmp_path, status, said, relabelled):
    # run.json lists the cases without a record from the run's start: a crashed or killed run lists them too,
    # and they are not run, but only a run that said its budget ran out was stopped by it
    run = tmp_path / "quick"
    run.mkdir()
    (tmp_path / "quick.log").write_text(said + "\n")
    (run / "run.json").write_text(json.dumps({"not_run": ["s/a/n=1", "s/a/n=2", "s/a/n=3"]}))
    (run / "records.jsonl").write_text(json.dumps({"case_id": "s/a/n=1", "status": "ok"}) + "\n{\"case_")
    module = gpu_check()
    check = module.Check(tmp_path, None)
    check.steps.append(("quick", status, 1.0))
    check.runs_stopped(run, "quick")
    assert check.not_run == ["quick: s/a/n=2", "quick: s/a/n=3"]  # the recorded one, and the line cut short, aside
    assert (check.steps[-1][1] == "stopped at the budget, 2 cases not run") == relabelled
    (run / "records.jsonl").unlink()  # killed before its first record
    assert module.not_run_cases(run) == ["s/a/n=1", "s/a/n=2", "s/a/n=3"]
