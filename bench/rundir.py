"""The run directory that `bench run` writes: what --out may be, and its one writer.

--out must be new, empty, or a run directory (run.json or records.jsonl) continued with --resume; anything else is
refused before anything is created. While a run writes, it holds an exclusive flock on OUT/.bench.lock, so a second
`bench run` on the same --out is refused with the holder's PID instead of interleaving its records. Which run
directory --resume continues without --out, and the command that continues one, are found here too.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shlex
import warnings
from dataclasses import replace
from pathlib import Path

from bench.atomic import OutputError, atomic_write_bytes, keep_beside
from bench.records import (
    FAILED,
    RECORDS_JSONL,
    RUN_JSON,
    SCHEMA,
    CorruptRunJson,
    Record,
    Scan,
    SchemaError,
    read_run_json,
    scan_records,
)

LOCK = ".bench.lock"
"""The lock file: the `bench run` writing the directory holds an exclusive flock on it and writes its PID in it."""
# What a run's first steps leave before run.json exists: a folder holding only these is still empty
NOT_A_RUN_YET = (LOCK, RUN_JSON + ".tmp")


class RunDirError(ValueError):
    """--out cannot take this run (a file, a folder that is not a run, another run, another schema, another bench
    writing it); nothing was written."""


WRITE_FAILURES = (errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM)
"""What makes --out's folder or lock file fail to be made: a failed write (exit 1, as a full disk mid-run), not bad
usage."""


class RunLock:
    """One writer per run directory: an exclusive, non-blocking flock on OUT/.bench.lock. The kernel drops it when
    the process ends, however it ends, so a killed run never leaves its directory locked."""

    def __init__(self, run_dir: Path):
        path = run_dir / LOCK
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            if e.errno in WRITE_FAILURES:  # what the folder held is as it was
                raise OutputError(f"cannot open the lock file {path}: {e.strerror or e}") from None
            raise RunDirError(f"cannot open the lock file {path}: {e.strerror or e}") from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._fd)
            raise RunDirError(_busy(run_dir, _pid_in(path))) from None
        try:  # the PID only names the holder to a second bench; the lock holds without it (e.g. on a full disk)
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass

    def release(self) -> None:
        os.close(self._fd)


def _pid_in(path: Path) -> str:
    try:
        return path.read_text().split()[0]
    except (OSError, IndexError):
        return "unknown"


def _busy(run_dir: Path, pid: str) -> str:
    return f"{run_dir} is being written by another bench (PID {pid}); wait for it to end or choose another --out"


def holder(run_dir: Path) -> str | None:
    """The PID of the bench that holds run_dir's lock, or None when none does; creates nothing."""
    try:
        fd = os.open(run_dir / LOCK, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return _pid_in(run_dir / LOCK)
    finally:
        os.close(fd)
    return None


def inspect(out: Path, resume: bool, how: tuple, locked: bool = False,
            suites: list[str] = ()) -> tuple[dict | None, Scan, str | None]:
    """What `out` holds: (run.json, its records, why run.json must be rebuilt or None), after checking that it can
    take a run made `how` (size, device, shard) of `suites`: new, empty, or a run directory under --resume of those
    suites or fewer (a resume continues a run; another suite's cases would join it unasked). Reads only; raises
    RunDirError. `locked`: this process holds the lock, so do not probe it."""
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--out {out} is a file, not a run directory")
    if not out.exists():
        return None, Scan(), None
    if not locked and (pid := holder(out)) is not None:
        raise RunDirError(_busy(out, pid))
    try:
        names = sorted(p.name for p in out.iterdir())
    except OSError as e:
        raise RunDirError(f"cannot read --out {out}: {e.strerror or e}") from None
    if RUN_JSON not in names and RECORDS_JSONL not in names:
        others = [n for n in names if n not in NOT_A_RUN_YET]
        if others:
            shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
            raise RunDirError(f"--out {out} is a folder that is not a run directory (it holds {shown}); choose a new "
                              "or empty folder")
        return None, Scan(), None
    if not resume:
        raise RunDirError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    rebuild = None
    try:
        try:
            meta = read_run_json(out)
        except CorruptRunJson as e:  # e.g. cut short by a full disk: the records still say which run this is
            meta, rebuild = None, str(e)
        scan = scan_records(out / RECORDS_JSONL)
    except SchemaError as e:
        raise RunDirError(f"cannot resume {out}: {e}") from None
    if scan.other_schemas:
        versions = ", ".join(map(str, sorted(scan.other_schemas)))
        raise RunDirError(f"cannot resume {out}: it holds records of schema {versions}, and this techbench writes "
                          f"schema {SCHEMA}; choose another --out")
    if meta is None:
        run_ids = sorted({r.run_id for r in scan.records})
        if len(run_ids) > 1:
            raise RunDirError(f"cannot resume {out}: its {RUN_JSON} is missing or unreadable and its records belong "
                              f"to {len(run_ids)} runs ({', '.join(run_ids[:3])}); choose another --out")
        return None, scan, rebuild or f"{out / RUN_JSON} is missing"
    if (why := not_resumable(meta)) is not None:
        raise RunDirError(f"cannot resume {out}: {why}")
    was = (meta.get("size"), meta.get("device"), meta.get("shard", "1/1"))
    if was != tuple(how):  # e.g. `bench run --resume --out DIR` of a smoke run: this command's size is quick
        raise RunDirError(f"{out} was run with --size {was[0]} --device {was[1]} --shard {was[2]}; resume it with "
                          f"the same: `{command_of(meta, out)}`")
    ran = meta.get("suites")
    if isinstance(ran, dict) and ran and (more := [s for s in suites if s not in ran]):
        raise RunDirError(f"{out} is a run of {', '.join(sorted(ran))}, not of {', '.join(more)}: resume it with "
                          f"`{command_of(meta, out)}`, or run {', '.join(more)} into another --out")
    return meta, scan, None


def open_run_dir(out: Path, resume: bool, how: tuple,
                 suites: list[str] = ()) -> tuple[RunLock, dict | None, Scan, str | None]:
    """Checks `out` before creating anything, creates it and takes its lock, then checks it again under the lock
    (another bench may have written it in between): the lock and `inspect`'s answer. The caller releases the lock."""
    inspect(out, resume, how, suites=suites)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        if e.errno in WRITE_FAILURES:
            raise OutputError(f"cannot create --out {out}: {e.strerror or e}") from None
        raise RunDirError(f"cannot create --out {out}: {e.strerror or e}") from None
    lock = RunLock(out)
    try:
        meta, scan, rebuild = inspect(out, resume, how, locked=True, suites=suites)
        if scan.corrupt:
            scan = _set_aside_damaged(out / RECORDS_JSONL, scan)
        return lock, meta, scan, rebuild
    except BaseException:
        lock.release()
        raise


def _set_aside_damaged(path: Path, scan: Scan) -> Scan:
    """--resume of a run with whole lines that are no record (damaged since they were written): their bytes are moved
    beside the file (records.jsonl.cut-<time>), as a cut last line is, so that their cases run again and the run,
    once finished, is whole again (a damaged line left in it would keep history add, merge and export refusing it).
    A last line without its newline is left to RecordWriter. On a failed write the file is left as it was."""
    try:
        lines = path.read_bytes().splitlines(keepends=True)
        bad = {i for i, line in enumerate(lines) if line.endswith(b"\n") and line.strip() and not _is_record(line)}
        if not bad:
            return scan
        kept = keep_beside(path, b"".join(lines[i] for i in sorted(bad)))
        atomic_write_bytes(path, b"".join(line for i, line in enumerate(lines) if i not in bad))
    except (OSError, OutputError):  # readers skip the lines meanwhile; history and merge name them
        return scan
    warnings.warn(f"{path}: {len(bad)} line{'s' * (len(bad) > 1)} held no whole record (damaged since written): "
                  f"moved to {kept.name}; {'their cases run' if len(bad) > 1 else 'its case runs'} again",
                  stacklevel=3)
    return replace(scan, corrupt=scan.corrupt - len(bad))


def _is_record(line: bytes) -> bool:
    """Whether a line reads as a record, of this schema or another (scan_records's rule)."""
    try:
        d = json.loads(line)
        if not isinstance(d, dict):
            return False
        Record.from_dict(d)
    except SchemaError:
        return True  # another schema's: refused as such before a resume gets here, never set aside
    except (ValueError, TypeError, RecursionError):
        return False
    return True


def shell_word(path: str | Path) -> str:
    """`path` as one word to paste into a shell: shlex.quote's, or for a name that is not valid UTF-8 (no terminal
    shows its bytes) bash's $'...' with each byte outside printable ASCII as \\xNN."""
    raw = os.fsencode(path)
    try:
        return shlex.quote(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return "$'" + "".join(chr(b) if 32 <= b < 127 and b not in b"\\'" else f"\\x{b:02x}" for b in raw) + "'"


def resume_command(argv: list[str], out: Path) -> str:
    """The command that continues a run: its arguments (after `bench`) without --resume and --out, then
    `--resume --out OUT`."""
    kept, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--out":
            skip = True
        elif a != "--resume" and not a.startswith("--out="):
            kept.append(a)
    return f"{shlex.join(['bench', *kept, '--resume', '--out'])} {shell_word(out)}"


def command_of(meta: dict, out: Path) -> str:
    argv = meta.get("argv")
    if isinstance(argv, list) and argv[:2] == ["bench", "run"] and all(isinstance(a, str) for a in argv):
        return resume_command(argv[1:], out)
    return resume_command(["run", *sorted(meta.get("suites") or {}), "--size", str(meta.get("size")), "--device",
                           str(meta.get("device")), "--shard", str(meta.get("shard", "1/1"))], out)


def rerun_lost(meta: dict, run_dir: Path) -> str:
    """What makes a run that lost records since it finished (bench.sides.damage) whole again: the resume that runs
    the lost cases again, and sets a damaged line aside."""
    if not_resumable(meta) is None:
        return f"`{command_of(meta, run_dir)}` runs its lost cases again"
    return "make it again from what it was made of"


def not_resumable(meta: dict) -> str | None:
    """Why `bench run --resume` does not continue this run directory: a merge of shards, or an import."""
    if meta.get("imported_from"):
        return "it is an import of a pytest-benchmark file (bench import), not a run bench measured"
    if meta.get("merged_from"):
        return ("it is a merge of shards (bench merge); resume each unfinished shard (`bench run ... --resume --out "
                "SHARD`) and merge them again")
    return None


def unfinished_runs(root: Path, retry_failed: bool = False) -> list[tuple[Path, dict]]:
    """The run directories directly under `root` that --resume would continue, newest first: those whose run.json
    has no finished_at (interrupted, killed, out of --budget) and, for --retry-failed, those holding an error or
    timeout record; not one that another bench is writing."""
    found = []
    try:
        dirs = [d for d in root.iterdir() if d.is_dir()]
    except OSError:
        return []
    for d in dirs:
        try:
            meta = read_run_json(d)
            if meta is None or holder(d) is not None or not_resumable(meta):
                continue
            if meta.get("finished_at") and not (
                    retry_failed and any(r.status in FAILED for r in scan_records(d / RECORDS_JSONL).records)):
                continue
        except (SchemaError, OSError):
            continue
        found.append((d, meta))
    return sorted(found, key=lambda x: (str(x[1].get("started_at") or ""), x[0].name), reverse=True)


def latest_unfinished(root: Path, how: tuple[str, str, str], suites: list[str], retry_failed: bool = False) -> Path:
    """The run that `bench run --resume` without --out continues: the newest unfinished run under `root` made with
    the same (size, device, shard) and suites. RunDirError naming the command to use when there is none."""
    runs = unfinished_runs(root, retry_failed)
    for d, meta in runs:
        if (meta.get("size"), meta.get("device"), meta.get("shard", "1/1")) == tuple(how) \
                and sorted(meta.get("suites") or {}) == sorted(suites):
            return d
    if not runs:
        failed = ", nor holds an error or timeout record" if retry_failed else ""
        raise RunDirError(f"--resume without --out: no run under {root}/ is unfinished (none was interrupted, killed "
                          f"or stopped by --budget{failed}); drop --resume to start a new run")
    d, meta = runs[0]
    raise RunDirError(f"--resume without --out: no unfinished run under {root}/ was made with --size {how[0]} "
                      f"--device {how[1]} --shard {how[2]} and these {len(suites)} suite{'s' * (len(suites) != 1)}; "
                      f"the latest unfinished one, {d}, continues with `{command_of(meta, d)}`")


def keep_damaged(path: Path) -> Path | None:
    """A damaged run.json's bytes, kept beside it (`run.json.cut-<time>`) before --resume rebuilds it from the
    records; None where there is none to keep (it was missing)."""
    try:
        return keep_beside(path, path.read_bytes())
    except FileNotFoundError:
        return None


def unfinished_shards(meta: dict) -> list[tuple[dict, str | None]]:
    """Each shard a merged run lists as unfinished when it was merged, with what to do now: the command that resumes
    it, "finished since" (merge again), or None where its folder is not here (or not a shard's)."""
    out = []
    for e in meta.get("merged_from") or []:
        if not isinstance(e, dict) or e.get("finished_at"):
            continue
        try:
            now = read_run_json(e["dir"]) if isinstance(e.get("dir"), str) and Path(e["dir"]).is_dir() else None
        except (CorruptRunJson, SchemaError, OSError):
            now = None
        if now is None or now.get("run_id") != e.get("run_id") or not_resumable(now):
            out.append((e, None))
        else:
            out.append((e, "finished since" if now.get("finished_at") else command_of(now, Path(e["dir"]))))
    return out
