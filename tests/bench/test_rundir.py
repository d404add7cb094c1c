"""The run directory (bench.rundir): one writer at a time, --out new, empty or a run, a suite named twice run once,
and a run.json that a crash, a full disk or a deletion cannot turn into a second run."""

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from bench import runner
from bench.cli import main
from bench.records import RECORDS_JSONL, RUN_JSON, Record, RecordWriter, read_run_json, write_run_json
from bench.rundir import LOCK, RunDirError, RunLock, holder
from bench.suite import SUITES
from tests.bench import fake_suites  # noqa: F401 - registers the fake suites

ROOT = Path(__file__).resolve().parents[2]
# the four cases of the fake `_parts` suite: a run in a fraction of a second
RUN = ["run", "_parts", "--size", "smoke", "--device", "cpu", "--inline"]


@pytest.fixture(autouse=True)
def fake_suites_on_the_command_line(monkeypatch):
    """`bench` finds the fake suites as it finds built-in ones."""
    monkeypatch.setattr("bench.cli.discover", lambda: dict(SUITES))


def cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def lines(run_dir: Path) -> list[dict]:
    """records.jsonl read raw: read_records keeps one record per case_id, and these tests count every line."""
    return [json.loads(line) for line in (run_dir / RECORDS_JSONL).read_text().splitlines()]


def files(run_dir: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in run_dir.iterdir() if p.is_file()}


def parts(out: Path, **kw) -> runner.RunConfig:
    """The four in-process cases of the fake `_parts` suite: a run in milliseconds."""
    return runner.RunConfig(suites=[SUITES["_parts"]], size="smoke", device="cpu", out=out, inline=True, **kw)


def test_two_concurrent_runs_on_one_out_make_one_run_and_one_refusal(tmp_path):
    out = tmp_path / "r"
    argv = ["run", "checkpointing", "--size", "smoke", "--device", "cpu", "--inline", "--variant", "none", "full",
            "--params", "model=None"]  # our model's points only (the library's are model=hf_llama)
    procs = [subprocess.Popen([sys.executable, "-m", "bench", *argv, "--out", str(out)], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    ends = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    assert sorted(code for code, _ in ends) == [0, 2], ends
    refusal = next(err for code, err in ends if code == 2)
    assert refusal.startswith("bench: error: ") and refusal.count("\n") == 1 and str(out) in refusal
    records = lines(out)
    assert Counter(r["case_id"] for r in records) == {r["case_id"]: 1 for r in records} and len(records) == 2
    assert {r["run_id"] for r in records} == {read_run_json(out)["run_id"]}


@pytest.mark.parametrize("resume", [False, True])
def test_a_held_lock_refuses_a_second_bench_naming_its_pid(capsys, tmp_path, resume):
    out = tmp_path / "r"
    out.mkdir()
    if resume:
        assert runner.run(parts(out))[0] == 0
    before = files(out)
    lock = RunLock(out)  # as the first bench holds it while it runs
    try:
        code, _, err = cli(capsys, *RUN, "--out", out, *(["--resume"] if resume else []))
        assert code == 2 and err.count("\n") == 1
        assert f"is being written by another bench (PID {os.getpid()})" in err
        assert {k: v for k, v in files(out).items() if k != LOCK} == {k: v for k, v in before.items() if k != LOCK}
        with pytest.raises(RunDirError, match="another bench"):
            runner.run(parts(out, resume=True))
    finally:
        lock.release()
    assert holder(out) is None
    assert cli(capsys, *RUN, "--out", out, "--resume")[0] == 0  # released: the directory takes its writer again


def test_a_run_that_lands_between_the_first_check_and_the_lock_is_seen(tmp_path, monkeypatch):
    other = tmp_path / "other"
    assert runner.run(parts(other))[0] == 0
    take = RunLock.__init__

    def late(self, run_dir):  # another bench's first writes land after this one's check, before its lock
        for name in (RUN_JSON, RECORDS_JSONL):
            shutil.copy(other / name, run_dir / name)
        take(self, run_dir)

    monkeypatch.setattr(RunLock, "__init__", late)
    out = tmp_path / "r"
    with pytest.raises(RunDirError, match="already holds a run"):
        runner.run(parts(out))
    assert lines(out) == lines(other) and holder(out) is None  # nothing appended, and the lock let go


def test_the_lock_ends_with_the_process_that_held_it(tmp_path):
    script = ("import sys, time\nfrom pathlib import Path\nfrom bench.rundir import RunLock\n"
              "RunLock(Path(sys.argv[1]))\nprint('locked', flush=True)\ntime.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        assert holder(tmp_path) == str(proc.pid)
    finally:
        proc.kill()  # SIGKILL: no cleanup of its own ran, only the kernel's
        proc.wait()
        proc.stdout.close()
    assert holder(tmp_path) is None
    RunLock(tmp_path).release()


def test_a_suite_named_twice_runs_each_case_once(capsys, tmp_path):
    out = tmp_path / "r"
    code, stdout, err = cli(capsys, "run", "_parts", *RUN[1:], "--out", out)
    assert code == 0, err
    assert "4 cases: 4 ok" in stdout
    assert [(r["params"]["part"], r["variant"]) for r in lines(out)] == [("x", "a"), ("x", "c"), ("y", "b"),
                                                                         ("y", "c")]


@pytest.mark.parametrize("contents", [{"report.html": "<p>mine</p>"}, {"notes.txt": "mine", "data.csv": "1,2"}])
@pytest.mark.parametrize("resume", [False, True])
def test_an_existing_folder_that_is_not_a_run_is_refused_and_untouched(capsys, tmp_path, contents, resume):
    out = tmp_path / "r"
    out.mkdir()
    for name, text in contents.items():
        (out / name).write_text(text)
    code, _, err = cli(capsys, *RUN, "--out", out, *(["--resume"] if resume else []))
    assert code == 2 and err.count("\n") == 1 and "is a folder that is not a run directory" in err
    assert files(out) == contents


@pytest.mark.parametrize("left", [[], [LOCK]])
def test_an_empty_folder_takes_a_run(capsys, tmp_path, left):
    # a lock file alone is what a run killed before its first write leaves: the folder is still empty
    out = tmp_path / "r"
    out.mkdir()
    for name in left:
        (out / name).write_text("")
    code, _, err = cli(capsys, *RUN, "--out", out)
    assert code == 0, err
    assert len(lines(out)) == 4 and read_run_json(out)["run_id"] == lines(out)[0]["run_id"]


@pytest.mark.parametrize("damage", ["truncate", "empty", "delete"])
def test_resume_takes_the_run_id_from_the_records_when_run_json_is_damaged(tmp_path, damage):
    out = tmp_path / "r"
    assert runner.run(parts(out, variants=["a", "b"]))[0] == 0
    run_id = read_run_json(out)["run_id"]
    text = (out / RUN_JSON).read_text()
    if damage == "delete":
        (out / RUN_JSON).unlink()
    else:
        (out / RUN_JSON).write_text(text[: len(text) // 2] if damage == "truncate" else "")
    with pytest.warns(UserWarning, match=f"rebuilt it from 2 records of run {run_id}"):
        code, records = runner.run(parts(out, resume=True))
    assert code == 0 and len(records) == 4
    assert Counter(r["case_id"] for r in lines(out)) == Counter(r.case_id for r in records)
    assert {r["run_id"] for r in lines(out)} == {run_id}
    meta = read_run_json(out)
    assert meta["run_id"] == run_id and "rebuilt" in meta and meta["finished_at"]
    kept = list(out.glob(f"{RUN_JSON}.cut-*"))  # what was there is not lost with the rebuild
    if damage == "delete":
        assert not kept
    else:
        assert [k.read_text() for k in kept] == [text[: len(text) // 2] if damage == "truncate" else ""]


def test_a_rebuilt_run_json_selects_the_variants_its_records_hold_too(tmp_path):
    out = tmp_path / "r"
    assert runner.run(parts(out, variants=["a", "b"]))[0] == 0
    (out / RUN_JSON).write_text("{")
    with pytest.warns(UserWarning, match=r"the damaged file is kept as run\.json\.cut-"):
        assert runner.run(parts(out, variants=["a"], resume=True))[0] == 0
    assert read_run_json(out)["variants"] == ["a", "b"]


def test_a_rebuilt_run_json_never_relabels_records_of_another_size(tmp_path):
    # run.json lost: its size is taken from the resuming command, so every record must be a case it would plan
    out = tmp_path / "r"
    assert runner.run(parts(out, variants=["a"]))[0] == 0
    with (out / RECORDS_JSONL).open("a") as f:  # a case of another size's grid
        f.write(json.dumps({**lines(out)[0], "case_id": "_parts/a/n=64,part=x", "params": {"part": "x", "n": 64}})
                + "\n")
    (out / RUN_JSON).unlink()
    before = files(out)
    with pytest.raises(RunDirError, match=r"1 of its records are not smoke cases on cpu \(such as _parts/a/n=64"):
        runner.run(parts(out, resume=True))
    assert files(out) == before


def test_resume_without_run_json_refuses_records_of_two_runs(tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    with RecordWriter(out / RECORDS_JSONL) as w:
        for run_id in ("one", "two"):
            w.write(Record(run_id=run_id, suite="_parts", variant="a", params={"part": "x", "n": 1},
                           case_id=f"_parts/a/n=1,part=x,{run_id}", status="ok"))
    before = files(out)
    with pytest.raises(RunDirError, match=r"missing or unreadable and its records belong to 2 runs \(one, two\)"):
        runner.run(parts(out, resume=True))
    assert files(out) == before


@pytest.mark.parametrize("where", ["run.json", "records.jsonl"])
def test_resume_refuses_a_directory_of_another_schema(tmp_path, where):
    out = tmp_path / "r"
    assert runner.run(parts(out, variants=["a"]))[0] == 0
    if where == "run.json":
        write_run_json(out, {**read_run_json(out), "schema": 2})
    else:
        with (out / RECORDS_JSONL).open("a") as f:
            f.write(json.dumps({**lines(out)[0], "schema": 2, "case_id": "_parts/z/"}) + "\n")
    before = files(out)
    with pytest.raises(RunDirError, match="cannot resume .*schema 2"):
        runner.run(parts(out, resume=True))
    assert files(out) == before


def test_a_full_disk_when_resume_starts_leaves_run_json_whole(capsys, tmp_path, monkeypatch):
    out = tmp_path / "r"
    assert cli(capsys, *RUN, "--out", out)[0] == 0
    before = files(out)

    def full(fd):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(os, "fsync", full)  # the first write of a resume is run.json's
        code, _, err = cli(capsys, *RUN, "--out", out, "--resume")
    assert code == 1 and err.count("\n") == 1 and "No space left on device" in err and "--resume" in err
    assert files(out) == before and not (out / "run.json.tmp").exists()
    code, _, err = cli(capsys, *RUN, "--out", out, "--resume")
    assert code == 0, err  # and the run resumes once there is space


def test_a_read_only_run_directory_is_a_write_failure_exit_1(capsys, tmp_path, monkeypatch):
    # as the README's exit codes say: a read-only target (or a full disk) is a failed write, 1, not bad usage
    import errno

    from bench import rundir

    out = tmp_path / "r"
    assert cli(capsys, *RUN, "--out", out)[0] == 0
    before, real = files(out), os.open

    def read_only(path, *args, **kwargs):
        if str(path).endswith(LOCK):
            raise OSError(errno.EROFS, "Read-only file system")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(rundir.os, "open", read_only)
    code, _, err = cli(capsys, *RUN, "--out", out, "--resume")
    assert code == 1 and err.count("\n") == 1 and "cannot open the lock file" in err and "Read-only" in err
    assert files(out) == before
