"""bench.atomic: an output is whole or absent, and a failure to write it is one line naming it."""

import errno
import os

import pytest

from bench.atomic import OutputError, atomic_files, atomic_path, atomic_write_text

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def everything(root):
    """Every path under root, hidden ones (the temporary names) included."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def full_disk(monkeypatch):
    """The disk fills after 64 KiB: os.write writes what still fits, then fails with ENOSPC."""
    real, room = os.write, [64 << 10]

    def write(fd, data):
        if room[0] <= 0:
            raise ENOSPC
        n = real(fd, bytes(data[:room[0]]))
        room[0] -= n
        return n

    monkeypatch.setattr(os, "write", write)


def test_a_new_file_and_its_folders(tmp_path):
    path = atomic_write_text(tmp_path / "a" / "b" / "page.html", "<p>é</p>")
    assert path.read_text(encoding="utf-8") == "<p>é</p>"
    assert everything(tmp_path) == ["a", "a/b", "a/b/page.html"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # as open() makes it, readable by a web server


def test_a_full_disk_keeps_the_old_file_and_leaves_no_temporary(tmp_path, full_disk):
    path = tmp_path / "report.html"
    path.write_text("the report of last night")
    with pytest.raises(OutputError) as e:
        atomic_write_text(path, "x" * (1 << 20))
    assert str(e.value) == f"cannot write {path}: [Errno 28] No space left on device"
    assert path.read_text() == "the report of last night" and everything(tmp_path) == ["report.html"]


def test_a_full_disk_in_a_new_folder_removes_the_folder(tmp_path, full_disk):
    with pytest.raises(OutputError, match="No space left"):
        atomic_write_text(tmp_path / "new" / "deeper" / "r.html", "x" * (1 << 20))
    assert everything(tmp_path) == []


def test_a_library_writer_gets_a_hidden_path_and_its_errors_pass_through(tmp_path):
    target = tmp_path / "runs" / "night.parquet"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".") and not tmp.exists()
        tmp.write_bytes(b"PAR1")
    assert target.read_bytes() == b"PAR1" and everything(tmp_path) == ["runs", "runs/night.parquet"]
    with pytest.raises(ZeroDivisionError):  # not a write problem: not turned into OutputError
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            1 / 0
    assert target.read_bytes() == b"PAR1" and everything(tmp_path) == ["runs", "runs/night.parquet"]


def test_a_folder_is_renamed_in_whole_or_not_at_all(tmp_path):
    out = tmp_path / "run"
    out.mkdir()  # an empty folder is replaced, as `--out DIR` allows one
    with atomic_path(out, directory=True) as staged:
        (staged / "records.jsonl").write_text("{}\n")
        assert everything(out) == []  # nothing visible until the block ends
    assert everything(tmp_path) == ["run", "run/records.jsonl"]
    with pytest.raises(OutputError, match=f"cannot write {tmp_path / 'other'}: .Errno 28. No space left"):
        with atomic_path(tmp_path / "other", directory=True) as staged:
            (staged / "records.jsonl").write_text("{}\n")
            raise ENOSPC
    assert everything(tmp_path) == ["run", "run/records.jsonl"]


def test_pages_of_a_site_are_renamed_in_together(tmp_path, full_disk):
    site = tmp_path / "site"
    with atomic_files(site) as put:
        put("index.html", "old index")
        put("suite-a.html", "old a")
    with pytest.raises(OutputError) as e:
        with atomic_files(site) as put:
            put("suite-a.html", "new a")
            put("index.html", "x" * (1 << 20))
            raise AssertionError("not reached: the second page fails")
    assert str(e.value).startswith(f"cannot write {site / 'index.html'}: [Errno 28]")
    assert (site / "index.html").read_text() == "old index" and (site / "suite-a.html").read_text() == "old a"
    assert everything(site) == ["index.html", "suite-a.html"]


def test_a_site_that_fails_in_a_new_folder_leaves_no_folder(tmp_path, monkeypatch):
    def fsync(fd):  # delayed allocation: the write was taken, the disk turns out full at fsync
        raise ENOSPC

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OutputError, match="No space left on device"):
        with atomic_files(tmp_path / "site") as put:
            put("index.html", "<p>hi</p>")
    assert everything(tmp_path) == []
