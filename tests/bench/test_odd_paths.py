"""A run directory whose name is not valid UTF-8 (Python holds its odd bytes as lone surrogates): frames and pages name
it in text that any encoder takes, and the commands printed for it paste back into a shell as the same path."""

import os
import subprocess
from pathlib import Path

import pytest

from bench.cli import main
from bench.records import Record, RecordWriter, path_text, records_frame
from bench.rundir import shell_word
from tests.optional import needs
from tests.runs import checkpointing_records, write_run

ODD = os.fsdecode(b"odd\xff dir")


def test_path_text_escapes_only_the_bytes_that_are_not_utf8(tmp_path):
    assert path_text(ODD) == "odd\\xff dir" and path_text(ODD).encode("utf-8")
    assert path_text(tmp_path / "caf\u00e9") == str(tmp_path / "caf\u00e9")  # valid UTF-8 stays as it is


def test_the_frame_names_an_odd_directory_in_encodable_text(tmp_path):
    run = tmp_path / ODD
    run.mkdir()
    with RecordWriter(run / "records.jsonl") as w:
        w.write(Record(run_id="r1", suite="s", variant="v", params={}, case_id="s/v/", status="ok"))
    frame = records_frame(run)
    assert list(frame["run_dir"]) == [path_text(run)] and frame["run_dir"][0].encode("utf-8")


@needs("plotly")
def test_report_of_an_odd_directory(capsys, tmp_path):
    run = write_run(tmp_path, "r1", checkpointing_records()).rename(tmp_path / ODD)
    assert main(["report", str(run), "-o", str(tmp_path / "o1.html")]) == 0, capsys.readouterr().err
    page = (tmp_path / "o1.html").read_text(encoding="utf-8")
    assert "odd\\xff dir" in page


@pytest.mark.parametrize("path, word", [
    ("runs/r1", "runs/r1"),
    ("my runs/it's", "'my runs/it'\"'\"'s'"),
    (ODD, "$'odd\\xff dir'"),
    (os.fsdecode(b"a'\\\xff"), "$'a\\x27\\x5c\\xff'"),
])
def test_shell_word(path, word):
    assert shell_word(path) == word


def test_a_shell_word_pastes_back_as_the_same_path(tmp_path):
    # bash reads $'...' itself; the path it hands on is the directory's exact bytes
    odd = tmp_path / ODD
    odd.mkdir()
    proc = subprocess.run(["bash", "-c", f"cd {shell_word(tmp_path)} && test -d {shell_word(ODD)}"])
    assert proc.returncode == 0


def test_the_resume_command_pastes_back_as_the_same_path():
    from bench.rundir import resume_command

    out = Path(os.fsdecode(b"/tmp/odd\xffp/run1"))
    said = resume_command(["run", "mla", "--out", str(out)], out)
    assert said == "bench run mla --resume --out $'/tmp/odd\\xffp/run1'"
