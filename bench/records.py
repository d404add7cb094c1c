"""The record schema, the run directory (run.json + records.jsonl), and pandas loaders.

Reports read runs through this module, so it never imports torch. Readers never fail on a bad line: a line that is
not a record of this schema (bench.validation says what a field may hold) is skipped, a case_id recorded twice keeps
its last record, and one warning a file says what was left out.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.atomic import keep_beside
from bench.validation import check_fields, kind, run_json_problem, scalar

SCHEMA = 1
STATUSES = ("ok", "oom", "timeout", "error", "skipped")
FAILED = ("timeout", "error")
RUN_JSON, RECORDS_JSONL = "run.json", "records.jsonl"
TAIL_BLOCK = 1 << 16  # bytes read at a time looking for the last newline of a records.jsonl


class SchemaError(ValueError):
    """A run directory this techbench cannot read (another schema version, an unreadable or malformed run.json):
    refuse it rather than mix records or guess."""


class CorruptRunJson(SchemaError):
    """run.json is not a JSON object at all, e.g. cut short by a crash while an older techbench wrote it in place."""


@dataclass
class Record:
    """One finished case. oom/timeout/error/skipped records carry the reason in `error`."""

    run_id: str
    suite: str
    variant: str
    params: dict[str, Any]
    case_id: str
    status: str
    metrics: dict[str, Any] = field(default_factory=dict)
    samples: dict[str, list[float]] = field(default_factory=dict)
    error: str | None = None
    device: str = "cpu"
    started_at: str = ""
    elapsed_s: float = 0.0
    env_id: str = ""
    schema: int = SCHEMA
    nonfinite: dict[str, str] = field(default_factory=dict)
    """Metrics measured NaN or infinite ("nan", "inf", "-inf"; null in `metrics`); left out of an empty line."""

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"status {self.status!r} is not one of {', '.join(STATUSES)}")
        if self.status != "ok" and not self.error:
            raise ValueError(f"a {self.status} record needs its reason in `error`")

    def to_json(self) -> str:
        d = asdict(self)
        if not d["nonfinite"]:
            del d["nonfinite"]
        return json.dumps(_finite({"schema": d.pop("schema"), **d}), allow_nan=False, default=_jsonable)

    @classmethod
    def from_dict(cls, d: dict) -> Record:
        """The record a parsed line holds; ValueError or TypeError when a field has the wrong type (a corrupt line),
        SchemaError when the line is a record of another schema version."""
        schema = d.get("schema")
        if isinstance(schema, int) and not isinstance(schema, bool) and schema != SCHEMA:
            raise SchemaError(f"record schema {schema}, this techbench reads schema {SCHEMA}")
        if schema != SCHEMA or isinstance(schema, bool):
            raise ValueError("not a record: no schema")
        fields = check_fields({k: d[k] for k in cls.__dataclass_fields__ if k in d})
        return cls(**fields)


def _finite(value):
    """NaN and infinities become null: JSON has no spelling for them and a record must always be writable."""
    value = scalar(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _jsonable(value):
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


@dataclass
class Scan:
    """What a records.jsonl holds: its valid records, one per case_id, and the count of lines left out.

    A case_id recorded twice (two runs that once shared a directory, files joined by hand) keeps its last record,
    the newest measurement, at the place of its first; the readers say how many case_ids that happened to."""

    records: list[Record] = field(default_factory=list)
    corrupt: int = 0
    """Lines that are not a record: cut short, not JSON, or a field of the wrong type."""
    other_schemas: Counter = field(default_factory=Counter)
    """schema version -> lines of that version, skipped: another techbench wrote them."""
    duplicates: int = 0
    """case_ids with more than one record."""

    def warning(self, path) -> str | None:
        """One line that says what was left out, or None."""
        parts = []
        if self.corrupt:
            parts.append(f"skipped {self.corrupt} corrupt line{'s' * (self.corrupt > 1)}")
        if self.other_schemas:
            n, versions = sum(self.other_schemas.values()), ", ".join(map(str, sorted(self.other_schemas)))
            parts.append(f"skipped {n} line{'s' * (n > 1)} of schema {versions} (this techbench reads {SCHEMA})")
        if self.duplicates:
            parts.append(f"{self.duplicates} case_id{'s' * (self.duplicates > 1)} recorded more than once: kept the "
                         "last record of each")
        return f"{path}: {'; '.join(parts)}" if parts else None


def scan_records(path: str | Path) -> Scan:
    """Every valid record of a records.jsonl (see Scan), warning about nothing; SchemaError when it cannot be read."""
    path, scan = Path(path), Scan()
    if not path.exists():
        return scan
    latest: dict[str, Record] = {}
    seen: Counter = Counter()
    try:
        lines = path.open(encoding="utf-8", errors="replace")
    except OSError as e:
        raise SchemaError(f"cannot read {path}: {e.strerror or e}") from None
    with lines as f:
        for line in f:
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                if not isinstance(d, dict):
                    raise ValueError("not an object")
                r = Record.from_dict(d)
            except SchemaError:
                scan.other_schemas[d["schema"]] += 1
                continue
            except (ValueError, TypeError, RecursionError):  # RecursionError: JSON nested thousands deep
                scan.corrupt += 1
                continue
            latest[r.case_id] = r
            seen[r.case_id] += 1
    scan.records = list(latest.values())
    scan.duplicates = sum(n > 1 for n in seen.values())
    return scan


def read_records(path: str | Path) -> list[Record]:
    """Every valid record of a records.jsonl, one per case_id (see Scan); what was left out is said in one warning."""
    scan = scan_records(path)
    if (message := scan.warning(path)) is not None:
        warnings.warn(message, stacklevel=2)
    return scan.records


class RecordWriter:
    """Appends records to records.jsonl, one line each, written and fsynced so a killed run loses nothing finished.

    The file only ever ends at a complete line: a write that fails (a full disk, a failed fsync) is cut back to where
    it began before the error goes on, and a file left ending in a partial line (a run killed mid-write, or a last
    line damaged since) has that line moved to a file beside it (records.jsonl.cut-<time>) on opening. Either way
    the case has no record, so --resume runs it again, and no reader meets a corrupt line. Unbuffered, so a failed
    write leaves no bytes in a buffer for close() to append after the cut."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._f = self.path.open("a+b", buffering=0)
        try:
            self._end_at_a_line()
        except BaseException:
            self._f.close()
            raise

    def _end_at_a_line(self) -> None:
        """Cut off what follows the last newline, unless it is a whole JSON object that only lacks its newline (a
        file joined by hand), which gets the newline instead; complete lines are never touched."""
        fd = self._f.fileno()
        end = start = os.lseek(fd, 0, os.SEEK_END)
        while start > 0:  # back from the end a block at a time: a record with its samples can be hundreds of KB
            step = min(TAIL_BLOCK, start)
            block = os.pread(fd, step, start - step)
            if (cut := block.rfind(b"\n")) >= 0:
                start -= step - cut - 1
                break
            start -= step
        if start == end:
            return
        try:
            whole = isinstance(json.loads(os.pread(fd, end - start, start)), dict)
        except (ValueError, RecursionError):
            whole = False
        if whole:
            self._write_all(b"\n")
            return
        # a write cut short by a kill, or a whole line damaged since: its bytes are kept beside the file, not lost
        kept = keep_beside(self.path, os.pread(fd, end - start, start))
        os.ftruncate(fd, start)
        warnings.warn(f"{self.path}: its last line was no whole record (a write cut short, or a line damaged): its "
                      f"{end - start} bytes moved to {kept.name}; the case runs again", stacklevel=3)

    def write(self, record: Record) -> None:
        line = record.to_json().encode() + b"\n"
        fd = self._f.fileno()
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            self._write_all(line)
            os.fsync(fd)
        except OSError:
            try:
                os.ftruncate(fd, start)
            except OSError:
                pass  # the error that matters is the write's; a reader skips the partial line, the next open cuts it
            raise

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:  # a raw write may take only part (a disk filling up, a signal)
            view = view[self._f.write(view):]

    def close(self) -> None:
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_run_json(run_dir: str | Path) -> dict | None:
    """run.json of a run directory, None when there is none; SchemaError (CorruptRunJson when it is not a JSON object)
    when it cannot be read as this schema's."""
    path = Path(run_dir) / RUN_JSON
    if not path.exists():
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except OSError as e:
        raise SchemaError(f"cannot read {path}: {e.strerror or e}") from None
    except (ValueError, RecursionError) as e:
        raise CorruptRunJson(f"{path} is not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise CorruptRunJson(f"{path} is {kind(meta)}, not a JSON object")
    if meta.get("schema") != SCHEMA or isinstance(meta.get("schema"), bool):
        raise SchemaError(f"{path} has schema {meta.get('schema')!r}, this techbench reads schema {SCHEMA}")
    if (wrong := run_json_problem(meta)) is not None:
        raise SchemaError(f"{path}: {wrong}")
    return meta


@dataclass
class RunMeta:
    """run.json, the one description of a run directory (`bench run`, `bench merge` and `bench import` all write it
    through write_run_json). A field a run of an older techbench lacks reads as its default."""

    run_id: str
    argv: list[str] = field(default_factory=list)
    size: str | None = None
    device: str | None = None
    shard: str = "1/1"
    variants: list[str] | None = None
    started_at: str | None = None
    finished_at: str | None = None
    """None until every planned case has a record (a killed run, or one stopped by its --budget, is unfinished)."""
    env: dict = field(default_factory=dict)
    env_id: str | None = None
    git: dict | None = None
    version: str | None = None
    seed: int | None = None
    suites: dict[str, dict] = field(default_factory=dict)
    """Per suite, what it declared (Suite.describe: variants, parts, references, metric specs) and its CPU threads."""
    not_run: list[str] | None = None
    """case_ids of the run's selection (what it was started for, and each --resume's) with no record, for --resume:
    a --budget left them, or a resume selected fewer cases, or the run was killed (written as a run starts)."""
    machine_start: dict | None = None
    """The machine as the run began (bench.interference.machine_state): load average, CPU used by others, memory
    available, GPUs' processes and clocks. A resumed run keeps its first start."""
    machine_end: dict | None = None
    """The same, as the run (or its last resumption) ended."""
    recorded: int | None = None
    """How many case records records.jsonl held as the run (or its last resumption) finished: a reader that finds
    fewer (a file cut short or damaged since) knows that cases are missing, not that they were never run."""
    cpus: list[int] | None = None
    """The CPUs every case was pinned to (`bench run --cpus`), as the run (or its last resumption) was started; null:
    not pinned. Each record's host_cpus counts the CPUs its case could use."""
    extra: dict[str, Any] = field(default_factory=dict)
    """What only some runs carry: merged_from, envs, missing_shards, cases (bench merge); imported_from."""
    schema: int = SCHEMA

    def to_json(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k not in ("extra", "schema")}
        for optional in ("not_run", "machine_start", "machine_end", "recorded"):
            if d[optional] is None:
                del d[optional]
        return {"schema": self.schema, **d, **self.extra}

    @classmethod
    def from_json(cls, d: dict) -> RunMeta:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d and k != "extra"}
        known.setdefault("run_id", "")
        return cls(**known, extra={k: v for k, v in d.items() if k not in cls.__dataclass_fields__})


def write_run_json(run_dir: str | Path, meta: RunMeta | dict) -> None:
    """Atomic replace: a crash while writing leaves the previous run.json, never half of one. A dict is read as a
    RunMeta first, so every run.json has the same fields."""
    meta = meta if isinstance(meta, RunMeta) else RunMeta.from_json(meta)
    path = Path(run_dir) / RUN_JSON
    tmp = path.with_suffix(".json.tmp")
    text = json.dumps(meta.to_json(), indent=2, default=_jsonable) + "\n"
    try:
        with tmp.open("w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())  # the rename must never publish a file whose bytes are not on disk yet
        os.replace(tmp, path)
    except BaseException:  # a full disk, an interrupt: no half-written temporary file stays behind
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise


def path_text(path: str | Path) -> str:
    """A path as text that any encoder takes (pyarrow's and HTML's UTF-8 included): a name that is not valid UTF-8,
    which Python holds as lone surrogates, shows its odd bytes as \\xNN escapes. The same for the same path."""
    return os.fsencode(path).decode("utf-8", errors="backslashreplace")


def _runs_in(paths) -> list[Path]:
    """Run directories, a folder of them standing for those directly in it, each run once (a sweep's shards beside
    its merged run: bench.sides.distinct, as the commands count them); FileNotFoundError for a path that is neither,
    rather than a frame without its rows."""
    from bench.sides import count_once  # bench.sides reads records with this module

    out = []
    for p in map(Path, paths):
        runs = [p] if (p / RUN_JSON).exists() or (p / RECORDS_JSONL).exists() else sorted(
            d for d in (p.iterdir() if p.is_dir() else ()) if (d / RUN_JSON).exists())
        if not runs:
            raise FileNotFoundError(f"{p} is not a run directory (no {RUN_JSON}) nor a folder of them")
        out += runs
    return count_once(out)


def records_frame(*run_dirs: str | Path, samples: bool = False):
    """One row per record of one or many run directories; each metric is a column, params stay a dict column, and
    with `samples` the raw samples too (a dict column: name -> list). `nonfinite` (a dict column) names the metrics
    measure() returned as NaN or an infinity, which their columns hold as null."""
    import pandas as pd

    rows = []
    for run_dir in _runs_in(run_dirs):
        for r in read_records(Path(run_dir) / RECORDS_JSONL):
            row = {k: v for k, v in asdict(r).items() if k not in ("metrics", "samples")}
            row["run_dir"] = path_text(run_dir)
            if samples:
                row["samples"] = r.samples
            row.update(r.metrics)
            rows.append(row)
    return pd.DataFrame(rows)


def long_frame(*run_dirs: str | Path):
    """One row per (record, metric), with the metric's direction: the shape for plotting and comparison. A value
    measure() returned as NaN or an infinity is null, with "nan", "inf" or "-inf" in `nonfinite`."""
    import pandas as pd

    from bench.metrics import default, specs_of

    rows = []
    for run_dir in _runs_in(run_dirs):
        specs = specs_of([read_run_json(run_dir) or {}])
        for r in read_records(Path(run_dir) / RECORDS_JSONL):
            for metric, value in r.metrics.items():
                spec = specs.get(r.suite, {}).get(metric) or default(metric)
                rows.append({"run_id": r.run_id, "case_id": r.case_id, "suite": r.suite, "variant": r.variant,
                             "params": r.params, "status": r.status, "device": r.device, "env_id": r.env_id,
                             "metric": metric, "value": value, "direction": spec.direction,
                             "nonfinite": r.nonfinite.get(metric)})
    return pd.DataFrame(rows, columns=["run_id", "case_id", "suite", "variant", "params", "status", "device",
                                       "env_id", "metric", "value", "direction", "nonfinite"])
