"""Outputs written whole or not at all.

Each output goes to a temporary name beside its target and is renamed onto it only once complete, so a read-only
folder or a full disk leaves the target as it was (or absent) and no temporary file behind; the failure becomes
OutputError, one line naming the target and the OS error, which the command prints and exits 1 on. Temporary names
start with "." so that directory readers (pandas, Spark, DuckDB globs) skip them while they exist.

- atomic_write_text / atomic_write_bytes: one file from data in memory.
- atomic_path: a temporary path for a writer that wants a file name (pyarrow), or a new folder to fill (a run
  directory: `bench import`, `bench merge`, `bench profile`), renamed onto the target when the block ends cleanly.
- atomic_files: several files of one folder (the dashboard's pages), renamed in only once every one is written.

This module never imports torch.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


class OutputError(Exception):
    """An output could not be written: the message is one line naming the target and the OS error (exit 1)."""


def cannot_write(path: str | Path, e: OSError) -> OutputError:
    # the target, not the temporary file the OSError names: that one is removed before anyone reads the message
    why = f"[Errno {e.errno}] {e.strerror}" if e.errno and e.strerror else (str(e).splitlines() or [repr(e)])[0]
    return OutputError(f"cannot write {path}: {why}")


def _temp_beside(path: Path) -> Path:
    # 200: room for the prefix and suffix within the usual 255-byte limit on a file name
    return path.with_name(f".{path.name[:200]}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")


def _make_dirs(folder: Path) -> list[Path]:
    """Create `folder` and its missing parents; returns the ones this made, innermost first, to undo on failure."""
    made = [p for p in (folder, *folder.parents) if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    return made


def _remove(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    except OSError:  # cleaning up must not replace the error that made it necessary
        pass


def _undo_dirs(made: list[Path]) -> None:
    for d in made:
        try:
            d.rmdir()  # only when empty: another writer may have put something there meanwhile
        except OSError:
            return


def _write_file(path: Path, data: bytes) -> None:
    """Write and fsync `data` to a new file: a full disk shows up here (at write or at fsync), not after the rename.
    O_EXCL with mode 0o666 gives the permissions a plain open() would (minus the umask), unlike mkstemp's 0o600."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` (parents created) through a temporary file and a rename; OutputError on failure."""
    path = Path(path)
    with atomic_path(path) as tmp:
        _write_file(tmp, data)
    return path


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    return atomic_write_bytes(path, text.encode(encoding))


@contextmanager
def atomic_path(path: str | Path, directory: bool = False) -> Iterator[Path]:
    """A temporary path beside `path` to write to (with `directory`, a new empty folder to fill), renamed onto
    `path` when the block ends without an error and removed when it raises; an OSError in the block becomes
    OutputError naming `path`. A folder replaces `path` only where `path` is absent or an empty folder."""
    path = Path(path)
    if directory and path.exists():
        path = path.resolve()  # a link or "." names the folder to replace by its real name
    tmp, made, done = _temp_beside(path), [], False
    try:
        made = _make_dirs(path.parent)
        if directory:
            tmp.mkdir()
        yield tmp
        if not directory and tmp.is_file():  # a library writer (pyarrow) does not fsync what it wrote
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
        done = True
    except OSError as e:
        raise cannot_write(path, e) from None
    finally:
        if not done:
            _remove(tmp)
            _undo_dirs(made)


@contextmanager
def atomic_files(folder: str | Path) -> Iterator[Callable[[str, str], Path]]:
    """`put(name, text)` writes `folder/name` to a temporary file; when the block ends cleanly every one is renamed
    into place, and when it raises they are all removed (and `folder`, if this made it), so a failure leaves the
    folder's earlier files as they were."""
    folder = Path(folder)
    staged: list[tuple[Path, Path]] = []
    made, target, done = [], folder, False

    def put(name: str, text: str) -> Path:
        nonlocal target
        target = folder / name
        tmp = _temp_beside(target)
        staged.append((tmp, target))
        _write_file(tmp, text.encode("utf-8"))
        return target

    try:
        made = _make_dirs(folder)
        yield put
        for tmp, target in staged:
            os.replace(tmp, target)
        done = True
    except OSError as e:
        raise cannot_write(target, e) from None
    finally:
        if not done:
            for tmp, _ in staged:
                _remove(tmp)
            _undo_dirs(made)


def keep_beside(path: Path, data: bytes) -> Path:
    """`data` (a damaged part of `path`, about to be replaced) written to a new file beside it, `<name>.cut-<time>`
    (with -1, -2... where one is there already: two cuts in one second keep both); its path."""
    import time

    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    for n in range(1000):
        kept = path.with_name(f"{path.name}.cut-{stamp}" + (f"-{n}" if n else ""))
        try:
            with kept.open("xb") as f:
                f.write(data)
            return kept
        except FileExistsError:
            continue
    raise FileExistsError(f"{path}: 1000 cut files of {stamp} already")
