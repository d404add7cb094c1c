"""Every command that writes, on a target it cannot write: one line naming the path and the OS error, exit 1, and no
partial or temporary file left behind."""

import errno
import os

import pytest

from bench.cli import main
from bench.records import RecordWriter, read_run_json
from tests.optional import missing, needs
from tests.runs import checkpointing_records, write_run

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
# {out}: a folder the command cannot write into (read-only, or on a full disk)
COMMANDS = {
    "report": (["report", "{run}", "-o", "{out}/report.html"], needs("plotly")),
    "compare": (["compare", "{run}", "{run2}", "-o", "{out}/compare.html"], needs("plotly")),
    "export": (["export", "{run}", "--format", "pytest-benchmark", "-o", "{out}/pb.json"], needs("pytest_benchmark")),
    "history": (["history", "add", "{run}", "--store", "{out}/store"], needs("pyarrow")),
    "merge": (["merge", "{run}", "--out", "{out}/merged"], ()),
    "import": (["import", "{pb}", "--out", "{out}/imported"], ()),
    "dashboard": (["dashboard", "{store}", "-o", "{out}/site"], needs("plotly", "pyarrow")),
    "profile": (["profile", "checkpointing", "--variant", "none", "--size", "smoke", "--device", "cpu",
                 "--params", "layers=8,model=None", "--out", "{out}/profile"], ()),
}
EACH = [pytest.param(name, marks=marks, id=name) for name, (_, marks) in COMMANDS.items()]


def everything(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A run, a pytest-benchmark file of it and a history store holding it: what the commands read."""
    root = tmp_path_factory.mktemp("inputs")
    run = write_run(root, "r1", checkpointing_records())
    run2 = write_run(root, "r2", checkpointing_records(seed=1))
    pb = root / "pb.json"
    pb.write_text('{"benchmarks": [{"name": "test_mm", "stats": {"median": 0.002}}], "datetime": null}')
    store = root / "store"
    if not missing("pyarrow"):
        from bench import history

        history.add(run, store)
    return {"run": run, "run2": run2, "pb": pb, "store": store}


def argv(name, out, inputs):
    return [a.format(out=out, **inputs) for a in COMMANDS[name][0]]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
@pytest.mark.parametrize("name", EACH)
def test_a_read_only_target_is_one_line_and_exit_1(capsys, tmp_path, inputs, name):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        code, _, err = cli(capsys, *argv(name, ro, inputs))
    finally:
        ro.chmod(0o755)
    assert code == 1 and err.count("\n") == 1, err
    assert err.startswith(f"bench: error: cannot write {ro}/") and "[Errno 13] Permission denied" in err, err
    assert everything(ro) == []


@pytest.mark.parametrize("name", EACH)
def test_a_failed_rename_leaves_no_file_and_is_one_line(monkeypatch, capsys, tmp_path, inputs, name):
    """The rename that publishes each output fails (as on a full disk, whose folder has no room for the new entry):
    whatever was written first, temporary files and folders included, goes."""
    def replace(src, dst):
        raise ENOSPC

    monkeypatch.setattr(os, "replace", replace)
    before = everything(inputs["run"].parent)
    code, _, err = cli(capsys, *argv(name, tmp_path, inputs))
    assert code == 1 and err.count("\n") == 1 and "[Errno 28] No space left on device" in err, err
    assert err.startswith(f"bench: error: cannot write {tmp_path}/"), err
    assert everything(tmp_path) == [] and everything(inputs["run"].parent) == before


@pytest.fixture
def full_disk(monkeypatch):
    """The disk fills 1 MiB into a file: os.write writes what still fits, then fails with ENOSPC."""
    real, room = os.write, [1 << 20]

    def write(fd, data):
        if room[0] <= 0:
            raise ENOSPC
        n = real(fd, bytes(data[:room[0]]))
        room[0] -= n
        return n

    monkeypatch.setattr(os, "write", write)


@needs("plotly")
def test_a_full_disk_leaves_no_partial_report_and_exits_1(capsys, tmp_path, inputs, full_disk):
    out = tmp_path / "report.html"
    out.write_text("last night's report")
    code, _, err = cli(capsys, "report", inputs["run"], "-o", out)  # the page is ~5 MB: plotly.js inline
    assert code == 1 and err == f"bench: error: cannot write {out}: [Errno 28] No space left on device\n"
    assert out.read_text() == "last night's report" and everything(tmp_path) == ["report.html"]


@needs("plotly")
def test_a_run_whose_report_meets_a_full_disk_keeps_its_records_and_no_partial_report(capsys, tmp_path, full_disk):
    out = tmp_path / "run"
    _, _, err = cli(capsys, "run", "checkpointing", "--variant", "none", "--params", "layers=8,model=None",
                    "--size", "smoke", "--device", "cpu", "--inline", "--out", out)
    assert f"cannot write {out / 'report.html'}: [Errno 28] No space left on device" in err, err
    assert len((out / "records.jsonl").read_text().splitlines()) == 1 and read_run_json(out)["finished_at"]
    assert "report.html" not in everything(out) and not [p for p in everything(out) if p.endswith(".tmp")]


def test_an_import_whose_records_cannot_be_written_leaves_no_finished_run(monkeypatch, capsys, tmp_path, inputs):
    def write(self, record):
        raise ENOSPC

    monkeypatch.setattr(RecordWriter, "write", write)
    out = tmp_path / "imported"
    code, _, err = cli(capsys, "import", inputs["pb"], "--out", out)
    assert code == 1 and err == f"bench: error: cannot write {out}: [Errno 28] No space left on device\n"
    assert everything(tmp_path) == []
    code, _, err = cli(capsys, "history", "add", out, "--store", tmp_path / "store")
    assert code == 2 and f"{out} does not exist" in err  # nothing there for the history to take as finished


@pytest.mark.parametrize("name", ["import", "merge"])
def test_records_are_written_before_the_run_json_that_says_they_finished(monkeypatch, capsys, tmp_path, inputs,
                                                                         name):
    seen = []
    real = RecordWriter.write

    def write(self, record):
        seen.append([p.name for p in tmp_path.rglob("run.json")])
        real(self, record)

    monkeypatch.setattr(RecordWriter, "write", write)
    code, _, err = cli(capsys, *argv(name, tmp_path, inputs))
    assert code == 0, err
    assert seen and all(found == [] for found in seen)  # no run.json yet while any record was being written
    (out,) = tmp_path.iterdir()
    assert read_run_json(out)["finished_at"] and len((out / "records.jsonl").read_text().splitlines()) == len(seen)
