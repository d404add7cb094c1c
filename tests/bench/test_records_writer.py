"""records.jsonl only ever ends at a complete line: a write that fails (a full disk, a failed fsync) is cut back to
where it began, and a partial last line that a killed run left is moved beside the file when it is opened again, so
that no reader meets a corrupt line and --resume runs that case again."""

import errno
import os
import warnings

import pytest

from bench.records import TAIL_BLOCK, Record, RecordWriter, read_records, scan_records


def make(i: int, samples: int = 2) -> Record:
    return Record(run_id="r1", suite="s", variant="v", params={"n": i}, case_id=f"s/v/n={i}", status="ok",
                  metrics={"step_time_ms": 1.5 + i}, samples={"step_time_ms": [1.0] * samples})


def line(i: int, samples: int = 2) -> bytes:
    return make(i, samples).to_json().encode() + b"\n"


class FillingDisk:
    """The writer's file on a disk with `room` bytes left: a write takes what fits, the next fails with ENOSPC."""

    def __init__(self, f, room: int):
        self.f, self.room = f, room

    def write(self, data) -> int:
        if self.room <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = self.f.write(data[:self.room])
        self.room -= n
        return n

    def __getattr__(self, name):
        return getattr(self.f, name)


def clean_ids(path) -> list[str]:
    """The case_ids of a records.jsonl that every reader takes without a warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return [r.case_id for r in read_records(path)]


def test_a_full_disk_cuts_the_line_it_was_writing(tmp_path):
    path = tmp_path / "records.jsonl"
    with RecordWriter(path) as w:
        w.write(make(0))
        w.write(make(1))
        real = w._f
        w._f = FillingDisk(real, room=30)  # 30 bytes of the next line fit, then the disk is full
        with pytest.raises(OSError) as failed:
            w.write(make(2))
        assert failed.value.errno == errno.ENOSPC and w._f.room == 0  # the 30 bytes were written, then cut
        assert path.read_bytes() == line(0) + line(1)
        w._f = real  # room again (a --resume after freeing space): the next record starts a line of its own
        w.write(make(3))
    assert clean_ids(path) == ["s/v/n=0", "s/v/n=1", "s/v/n=3"]


@pytest.mark.parametrize("errno_", [errno.ENOSPC, errno.EIO])
def test_a_failed_fsync_cuts_the_line_it_was_writing(tmp_path, monkeypatch, errno_):
    # NFS and quota-limited disks report a full disk at fsync, after the write itself went through
    path = tmp_path / "records.jsonl"
    with RecordWriter(path) as w:
        w.write(make(0))

        def fsync(fd):
            raise OSError(errno_, os.strerror(errno_))

        with monkeypatch.context() as m:
            m.setattr(os, "fsync", fsync)
            with pytest.raises(OSError):
                w.write(make(1))
    assert path.read_bytes() == line(0) and clean_ids(path) == ["s/v/n=0"]


@pytest.mark.parametrize("tail", ["killed mid-write", "a whole line damaged since"])
def test_opening_moves_a_partial_last_line_beside_the_file(tmp_path, tail):
    path = tmp_path / "records.jsonl"
    last = line(1)[:40] if tail == "killed mid-write" else line(1).replace(b'"ok"', b'ok"').rstrip(b"\n")
    path.write_bytes(line(0) + last)
    with pytest.warns(UserWarning, match=rf"its last line was no whole record .*: its {len(last)} bytes moved to "
                                         r"records\.jsonl\.cut-\d{8}T\d{6}; the case runs again"):
        w = RecordWriter(path)
    with w:
        assert path.read_bytes() == line(0)  # cut on opening, before anything is written
        w.write(make(2))
    assert clean_ids(path) == ["s/v/n=0", "s/v/n=2"] and scan_records(path).corrupt == 0
    kept = list(tmp_path.glob("records.jsonl.cut-*"))
    assert len(kept) == 1 and kept[0].read_bytes() == last  # nothing lost: a damaged result can be mended by hand


def test_opening_keeps_a_whole_record_that_lacks_only_its_newline(tmp_path):
    # a file joined by hand, or written by another tool, may end without a newline: no record is lost for that
    path = tmp_path / "records.jsonl"
    path.write_bytes(line(0) + line(1).rstrip(b"\n"))
    with RecordWriter(path) as w:
        w.write(make(2))
    assert path.read_bytes() == line(0) + line(1) + line(2)


@pytest.mark.parametrize("after_a_line", [False, True])
def test_a_partial_line_longer_than_the_block_read_at_a_time(tmp_path, after_a_line):
    path = tmp_path / "records.jsonl"
    big = line(1, samples=TAIL_BLOCK)  # a record with many samples: 5 bytes each, 320 KB
    kept = line(0) if after_a_line else b""
    path.write_bytes(kept + big[:3 * TAIL_BLOCK + 5])  # the last newline more than 3 blocks back
    with pytest.warns(UserWarning, match="its last line was no whole record"), RecordWriter(path):
        pass
    assert path.read_bytes() == kept
    assert next(tmp_path.glob("records.jsonl.cut-*")).read_bytes() == big[:3 * TAIL_BLOCK + 5]


@pytest.mark.parametrize("contents", [None, b"", b"\n", line(0)])
def test_opening_leaves_a_file_that_ends_at_a_line_alone(tmp_path, contents):
    path = tmp_path / "records.jsonl"
    if contents is not None:
        path.write_bytes(contents)
    with RecordWriter(path):
        pass
    assert path.read_bytes() == (contents or b"")


def test_two_cut_lines_in_one_second_are_both_kept(tmp_path, monkeypatch):
    import time

    monkeypatch.setattr(time, "strftime", lambda *a: "20260101T000000")  # both cuts in the same second
    path = tmp_path / "records.jsonl"
    for n in (1, 2):
        with path.open("ab") as f:
            f.write(line(n)[:30 + n])
        with pytest.warns(UserWarning, match="moved to records.jsonl.cut-20260101T000000"), RecordWriter(path):
            pass
    kept = sorted(tmp_path.glob("records.jsonl.cut-*"))
    assert [p.name for p in kept] == ["records.jsonl.cut-20260101T000000", "records.jsonl.cut-20260101T000000-1"]
    assert [p.read_bytes() for p in kept] == [line(1)[:31], line(2)[:32]]
