"""ci/gpu_check.py's packing: what a lent GPU sends back, in files that each stay under the device's size limit."""

import importlib.util
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "ci" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_traces_and_snapshots_travel_apart_from_the_records(tmp_path):
    out = tmp_path / "gpu"
    files = {"steps.tsv": "step\n", "quick/records.jsonl": "{}\n", "quick/report.html": "<html>",
             "profile-rmpad/top_ops.txt": "ops", "profile-rmpad/trace/t.pt.trace.json": "{}" * 1000,
             "profile-rmpad/memory_snapshot.pickle": "s", "profile-checkpointing/memory_snapshot.pickle": "s",
             "profile-checkpointing/trace/u.pt.trace.json": "{}", "trace/not-a-profile.txt": "kept"}
    for name, text in files.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)
    made = gpu_check().pack(out)
    assert [p.name for p in made] == ["gpu-traces.tar.gz", "gpu-snapshots.tar.gz", "gpu-check.tar.gz"]
    members = {p.name: sorted(tarfile.open(p).getnames()) for p in made}
    assert members["gpu-traces.tar.gz"] == ["gpu/profile-checkpointing/trace/u.pt.trace.json",
                                            "gpu/profile-rmpad/trace/t.pt.trace.json"]
    assert members["gpu-snapshots.tar.gz"] == ["gpu/profile-checkpointing/memory_snapshot.pickle",
                                               "gpu/profile-rmpad/memory_snapshot.pickle"]
    assert members["gpu-check.tar.gz"] == sorted(f"gpu/{n}" for n in ("steps.tsv", "quick/records.jsonl",
                                                                     "quick/report.html", "profile-rmpad/top_ops.txt",
                                                                     "trace/not-a-profile.txt"))
    assert all((out / p.name).is_file() for p in made) and not list(tmp_path.glob("*.tar.gz"))
    # packed again (a rerun into the same OUT): the tarballs of the first are not packed into the second
    again = gpu_check().pack(out)
    assert {p.name: sorted(tarfile.open(p).getnames()) for p in again} == members


def test_a_run_that_keeps_time_for_later_steps_still_gets_half_of_what_is_left(tmp_path):
    module = gpu_check()
    echo = [__import__("sys").executable, "-c", "import sys; print(sys.argv[-1])"]  # prints the --budget it got
    check = module.Check(tmp_path, budget_s=200.0)
    own = 200.0 - module.RESERVE_S - module.STARTUP_S  # what a run gets of a fresh budget, less its start-up
    assert check.step("keeps", echo, log="keeps.log", budgeted_run=True, keep_s=20.0) == "ok"
    assert abs(float((tmp_path / "keeps.log").read_text()) - (own - 20)) <= 2
    assert check.step("halved", echo, log="halved.log", budgeted_run=True, keep_s=150.0) == "ok"
    assert abs(float((tmp_path / "halved.log").read_text()) - own / 2) <= 2  # 150 s of 165: half, not 15 s
    assert check.step("plain", echo, log="plain.log") == "ok" and (tmp_path / "plain.log").read_text() == "-c\n"
