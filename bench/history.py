"""A history store: a folder that runs are added to, one Parquet file per run, read back by anything that reads Parquet.

Layout::

    STORE/runs/<run_id>.parquet     one file per run, written whole (temp file, then rename); rewritten whole only
                                    when its run directory's records changed since it was added
    STORE/damaged/<run_id>.parquet  a file of runs/ that could not be read, set aside when its run was added again

A file of runs/ that cannot be read (cut short, not Parquet) is left out of what `load` reads, with a warning naming
it: the rest of the store is used, and runs are still added. It is never written over or deleted: adding its run
directory again moves it to damaged/ (never over a file there) and writes the run in its place.

Read it without techbench: ``pandas.read_parquet("STORE/runs")``, DuckDB ``SELECT * FROM 'STORE/runs/*.parquet'``,
Spark ``spark.read.parquet("STORE/runs")``. Such readers take the columns from one file (pyarrow: the first): over
files written before a column was added, pass the schema, ``pyarrow.parquet.read_table("STORE/runs",
schema=bench.history.schema())``, as `load` does. One row per (case, metric); a case without metrics (oom, timeout,
error, skipped) keeps one row with metric and value null, so failures stay in the history.

========== ==================== ====================================================================================
column     type                 meaning
========== ==================== ====================================================================================
run_id     string               the run (run.json run_id); one file per run_id
timestamp  timestamp[us, UTC]   when the run started (run.json started_at)
git_sha    string               commit the run was made from (null outside a git checkout)
git_dirty  bool                 the checkout had uncommitted changes
env_id     string               environment fingerprint: the same env_id means comparable hardware and software
gpu        string               name of the GPU the case ran on (its device's: cuda:1 is the second), "cpu" for
                                a CPU run
device     string               device the run asked for (cpu, cuda:0)
size       string               smoke, quick or full
suite      string               suite name
variant    string               variant name
case_id    string               suite/variant/params sorted by key
params     string               the case's parameters as a JSON object
status     string               ok, oom, timeout, error or skipped
error      string               the reason of a non-ok case, else null
metric     string               metric name, its unit as suffix (null on a status-only row)
value      double               the metric's value (null when it had none)
direction  string               "lower" or "higher" is better, null for informational metrics
n_samples  int64                raw samples behind the value (0 when the metric was measured once)
iqr        double               relative spread of the samples, (q75 - q25) / median; null with fewer than 2 samples
contended  bool                 something outside the case disturbed its timed window (bench.interference), on every
                                row of the case; on the row of a ratio of a timing to the reference variant (a
                                `relative` metric: speedup_x, time_overhead_x) also when the reference case was
                                contended in the same run, the reason naming it (a ratio of bytes is not); null
                                without a timed window, or in a store written before the flag
kind       string               "measured" (from a clock, or a ratio of one: judged against a noise band), "exact"
                                (deterministic for a commit and machine, or a ratio of such: judged exactly) or
                                "info"; null on a status-only row, or in a store written before the column
library    string               the library and version the variant measures, as the run's suite names it
                                ("transformers 4.57.1"); null for techbench's own variants, or in an older store
artifacts  string               the case's artifacts_digest in hex: which cached artifacts (trained weights) its
                                figures came from; null where it read none, and on counts of bytes and FLOPs, which
                                come from shapes (bench.metrics.of_weights)
inputs     string               for a derived metric (a rate, TFLOP/s, % of peak, a ratio), the metrics it is
                                computed from as a JSON list (bench.metrics `inputs`); null for the others, or in an
                                older store
source_run string               the run that measured the case: run_id, or in a merged run (bench merge) the run_id
                                of the shard whose record it is; null in an older store
imported   bool                 the run is a `bench import` of a pytest-benchmark file (an export of runs holds their
                                timings only); null in an older store
nonfinite  string               "nan", "inf" or "-inf" where the case measured the metric so (value is then null:
                                the record's `nonfinite`); null otherwise, or in an older store
threads    int64                the CPU thread count the case's torch ran with (its suite's in run.json, else the
                                environment's default); null on a GPU run, or in an older store
========== ==================== ====================================================================================

Each file keeps, in its Parquet key-value metadata (RECORDS_DIGEST), a digest of the records it was written from.
Adding a run directory the store holds already changes nothing while its records are the same; once they changed (a
`--resume --retry-failed` replaced a failed case, a resume added cases), its file is replaced, whole, by the run as it
now is. A file of an older store, without the digest, counts as changed when its cases or their statuses differ.

A case measured once can reach the store twice, added by separate commands: a shard of a sweep, then the sweep's
merged run, or two merges that share a shard. Its rows then share source_run, case_id and metric in two files; `load`
keeps one of them, from a run that is no import (then the run that holds the most shards, then the earliest), and a
reader of the files themselves drops the others the same way.

and ``contended_reason`` (string): why, in one line ("other processes used 1.7 of 2 CPUs during the timed window"),
null when not contended.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from pathlib import Path

from bench.atomic import atomic_path
from bench.history_rows import rows as _rows
from bench.records import RECORDS_JSONL, Record, read_run_json, scan_records
from bench.rundir import rerun_lost
from bench.sides import damage, distinct

RUNS = "runs"
DAMAGED = "damaged"
RECORDS_DIGEST = b"techbench.records_sha256"
"""The key, in each file's Parquet metadata, of the sha256 of the records it was written from (`digest`)."""
# new columns go last: positional readers keep working
COLUMNS = ("run_id", "timestamp", "git_sha", "git_dirty", "env_id", "gpu", "device", "size", "suite", "variant",
           "case_id", "params", "status", "error", "metric", "value", "direction", "n_samples", "iqr", "contended",
           "contended_reason", "kind", "library", "artifacts", "inputs", "source_run", "imported", "nonfinite",
           "threads")

# what every file has held since the first: a file without one of them read as rows of nulls (a run without a run_id
# or a time), which the dashboard cannot place
KEY_COLUMNS = ("run_id", "timestamp", "case_id", "status", "metric", "value")


def schema():
    """The Arrow schema of every file: fixed, so a glob over files written years apart reads as one table."""
    import pyarrow as pa

    types = {"timestamp": pa.timestamp("us", tz="UTC"), "git_dirty": pa.bool_(), "value": pa.float64(),
             "n_samples": pa.int64(), "iqr": pa.float64(), "contended": pa.bool_(), "imported": pa.bool_(),
             "threads": pa.int64()}
    return pa.schema([(c, types.get(c, pa.string())) for c in COLUMNS])


def add(run_dir: str | Path, store: str | Path) -> int:
    """Add a run directory to the store; returns the rows written, 0 when the run is already there. ValueError for
    what is not a finished, intact run of distinct cases (`check`); OutputError when the store cannot be written
    (nothing is)."""
    return add_runs([run_dir], store)


def add_runs(run_dirs: list[str | Path], store: str | Path, said=None) -> int:
    """Add run directories given together (`bench history add RUN...`, a folder's runs) to the store; returns the
    rows written. Each run counts once (bench.sides.distinct: a run reached twice, a shard whose merged run is among
    them; a warning names each left out). Every run is checked before any is written: ValueError for the first that
    `check` refuses, and then nothing is written. `said` gets a line for each run the store holds already (with its
    rows there), and for each that recorded no case: a run added before is not 0 rows of this one."""
    run_dirs = [Path(d) for d in run_dirs]
    metas = [read_run_json(d) if d.is_dir() else None for d in run_dirs]
    checked = [(run_dirs[i], check(run_dirs[i], metas[i])) for i in distinct(run_dirs, metas)]
    todo = {}  # path -> the run to write there, and why the file there cannot be read (None: there is none)
    for run_dir, (meta, records) in checked:
        run_id = str(meta.get("run_id") or run_dir.name)
        # an import is a file of its own: the run itself (same run_id, more records), added later, is not "added"
        path = Path(store) / RUNS / f"{_file_stem(run_id)}{'-imported' * bool(meta.get('imported_from'))}.parquet"
        damaged = _read(path)[1] if path.exists() else None
        was = _count(path) if path.exists() and damaged is None and _changed(path, records) else None
        if path not in todo and (damaged is not None or not path.exists() or was is not None):
            todo[path] = (run_dir, meta, records, run_id, damaged, was)
        elif path not in todo and said is not None:
            said(f"run {run_id} ({run_dir}) is in the store already, with {_count(path)} rows: not added again")
    added = 0
    held = _held(store, skip=set(todo)) if todo else {}  # a damaged file about to be set aside is named once
    for path, (run_dir, meta, records, run_id, damaged, was) in todo.items():
        rows = list(_rows(records, meta, run_id))
        sources = {row["source_run"] for row in rows}
        again = sources & held.keys()
        if again:  # written all the same: which copy `load` keeps depends on runs added later
            parts = [f"run {s}'s" + ("" if held[s] == {s} else f" (in {', '.join(sorted(held[s]))})")
                     for s in sorted(again)]
            warnings.warn(f"{run_dir} holds cases the store has already, {'; '.join(parts)}: a shard and its "
                          "sweep's merged run, or a run and an import of it, added apart; the history counts each "
                          "case once, from a run that is no import, then from the run holding the most shards",
                          stacklevel=2)
        aside = _aside(path, store) if damaged else None
        _write(rows, path, aside, digest(records))
        if was is not None and said is not None:
            said(f"run {run_id} ({run_dir}) changed since it was added: its {was} rows replaced by {len(rows)}")
        if aside is not None:  # kept, never written over: what it held may be more than the run directory has now
            warnings.warn(f"{path} could not be read ({damaged}): moved to {aside}, and {run_dir} written in its "
                          "place", stacklevel=2)
        added += len(rows)
        if not rows and said is not None:  # a shard that got no case: added, and said apart from a run added before
            said(f"run {run_id} ({run_dir}) recorded no case: added with no rows")
        for source in sources:
            held.setdefault(source, set()).add(run_id)
    return added


def digest(records: list[Record]) -> bytes:
    """The sha256, in hex, of a run's records in case_id order: what tells a run directory changed since its file was
    written (RECORDS_DIGEST)."""
    h = hashlib.sha256()
    for r in sorted(records, key=lambda r: r.case_id):
        h.update(r.to_json().encode() + b"\n")
    return h.hexdigest().encode()


def _changed(path: Path, records: list[Record]) -> bool:
    """Whether the store's file of a run was written from other records than `records`: by its digest, or in a
    file without one (an older store) by its cases and their statuses."""
    import pyarrow.parquet as pq

    held = (pq.read_schema(path).metadata or {}).get(RECORDS_DIGEST)
    if held is not None:
        return held != digest(records)
    table = pq.read_table(path, columns=["case_id", "status"])
    return set(zip(*(table.column(c).to_pylist() for c in ("case_id", "status")))) != {
        (r.case_id, r.status) for r in records}


def _held(store: str | Path, skip: set[Path]) -> dict[str, set[str]]:
    """source_run -> the run_ids of the store's runs that hold its cases (of the files that can be read, but
    `skip`)."""
    held: dict[str, set[str]] = {}
    for table in _tables(store, ["run_id", "source_run"], skip):
        for run_id, source in set(zip(*(table.column(c).to_pylist() for c in ("run_id", "source_run")))):
            if source is not None:
                held.setdefault(source, set()).add(run_id)
    return held


def _count(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.read_metadata(path).num_rows


def _tables(store: str | Path, columns: list[str] | None = None, skip: set[Path] = frozenset()) -> list:
    """The Arrow table of each file of the store (but `skip`), oldest name first, leaving out with a warning each
    that cannot be read: one damaged file must not stop every later night's `history add` and dashboard."""
    tables = []
    for f in sorted(set((Path(store) / RUNS).glob("*.parquet")) - skip):
        table, why = _read(f, columns)
        if why is None:
            tables.append(table)
        else:
            warnings.warn(f"{f} cannot be read ({why}): left out of the history; move it aside, and its run directory "
                          f"can be added again with `bench history add RUN --store {store}`", stacklevel=3)
    return tables


def _read(f: Path, columns: list[str] | None = None) -> tuple:
    """(table, None), or (None, why in one line) where the file cannot be read: cut short, not Parquet, unreadable,
    or of columns the schema cannot take."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if lacking := [c for c in KEY_COLUMNS if c not in pq.read_schema(f).names]:  # a Parquet file of another kind
            return None, f"no {', '.join(lacking)} column{'s' * (len(lacking) > 1)}: not a run of a history store"
        return pq.read_table(f, columns=columns, schema=schema()), None
    except (OSError, pa.ArrowException) as e:  # ArrowInvalid: no footer (cut short), not a Parquet file
        why = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return None, re.sub(r"^Could not open Parquet input source '.*?': ", "", why)


def _aside(path: Path, store: str | Path) -> Path:
    """Where a damaged file of the store goes before its run is written again: STORE/damaged/NAME, or NAME-2, ...
    where that is taken (never over a file)."""
    folder = Path(store) / DAMAGED
    n = 1
    while (aside := folder / (path.name if n == 1 else f"{path.stem}-{n}{path.suffix}")).exists():
        n += 1
    return aside


def check(run_dir: str | Path, meta: dict | None = None,
          taker: str = "the history keeps a run for good, so it takes an intact run only") -> tuple[dict, list[Record]]:
    """(run.json, records) of a run the history takes: a finished run whose records are whole, each case once. A
    run taken half, or with records lost since it finished, would read as so in the history until it is added again:
    ValueError, one line naming why, for a directory without
    run.json, an unfinished run (finished_at missing or null), a case recorded twice, or a run that `bench compare`
    calls damaged (bench.sides.damage: fewer records than it finished with, a corrupt line)."""
    run_dir = Path(run_dir)
    if meta is None:  # `meta`: its run.json where the caller has read it
        meta = read_run_json(run_dir) if run_dir.is_dir() else None
    if meta is None:
        raise ValueError(f"{run_dir} is not a run directory: it has no run.json")
    if not meta.get("finished_at"):  # a half run would read as the whole run in the history
        how = ("`bench merge` of every shard, each finished, makes the whole sweep" if meta.get("merged_from")
               else "complete it with `bench run ... --resume` first")
        raise ValueError(f"{run_dir} has not finished (run.json finished_at is null); {how}")
    twice = repeated_case(run_dir)
    if twice is not None:
        raise ValueError(f"{run_dir} holds case {twice} more than once ({RECORDS_JSONL} has several records of it); "
                         "the history keeps one row per case and metric of a run (after a --retry-failed cut short, "
                         f"`bench run ... --resume --out {run_dir}` drops the failures it replaced)")
    scan = scan_records(run_dir / RECORDS_JSONL)
    why = damage(meta, scan, run_dir / RECORDS_JSONL)
    if why is not None:
        raise ValueError(f"{run_dir} is damaged since it finished: {why}; {taker}: {rerun_lost(meta, run_dir)}")
    if (message := scan.warning(run_dir / RECORDS_JSONL)) is not None:  # lines of another schema, left out
        warnings.warn(message, stacklevel=3)
    return meta, scan.records


def repeated_case(run_dir: str | Path) -> str | None:
    """The first case_id that two valid records of the run hold. A run measures each case once; a second record of
    one (records files joined by hand, say) would count twice in the history and clash in a merge, and which of the
    two is the measurement is not for a reader to guess, so history and merge refuse the run. Read from the lines
    themselves: a reader of records keeps one record per case_id."""
    path, seen = Path(run_dir) / RECORDS_JSONL, set()
    try:
        with path.open(encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    d = json.loads(line)
                    case = Record.from_dict(d).case_id if isinstance(d, dict) else None
                except (ValueError, TypeError, RecursionError):  # a corrupt line is the reader's to count
                    continue
                if case in seen:
                    return case
                if case is not None:
                    seen.add(case)
    except OSError:  # no records (yet), or unreadable: the reader says which
        return None
    return None


def load(store: str | Path):
    """Every run of the store as one long DataFrame (the columns above), oldest run first; a file that cannot be read
    is left out, with a warning naming it."""
    import pandas as pd

    tables = _tables(store)  # a file that cannot be read is left out, with a warning naming it
    if not tables:
        return schema().empty_table().to_pandas()
    frame = pd.concat([t.to_pandas() for t in tables], ignore_index=True)
    return _measured_once(frame).sort_values(["timestamp", "run_id"], kind="stable", ignore_index=True)


def _measured_once(frame):
    """The frame with each measurement once: of the rows of one source_run, case_id and metric in several runs (a
    shard and its sweep's merged run, added by separate commands; a run and an import of its export), those of a run
    that is no import, then of the run holding the most source runs, then of the earliest run. Rows without a
    source_run (an older store) are kept as they are."""
    sourced = frame["source_run"].notna()
    if not sourced.any():
        return frame
    holds = frame[sourced].groupby("run_id")["source_run"].nunique()
    order = frame.assign(_holds=frame["run_id"].map(holds).fillna(0),
                         _imported=frame["imported"].fillna(False).astype(bool)).sort_values(
        ["_imported", "_holds", "timestamp", "run_id"], ascending=[True, False, True, True], kind="stable")
    again = order.duplicated(["source_run", "case_id", "metric"]) & order["source_run"].notna()
    return frame.drop(index=order.index[again])


def _write(rows: list[dict], path: Path, aside: Path | None = None, records_digest: bytes | None = None) -> None:
    """Write the rows to `path` (over the file there, at once, by a rename), with the digest of the records they
    come from; a damaged file there is first moved to `aside`, once the new one is written whole."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(rows, schema=schema()) if rows else schema().empty_table()
    if records_digest is not None:
        table = table.replace_schema_metadata({RECORDS_DIGEST: records_digest})
    with atomic_path(path) as tmp:  # dot-prefixed while written: pandas, Spark and *.parquet globs skip it
        pq.write_table(table, tmp)
        if aside is not None:  # out of runs/, where a directory reader (pandas, Spark) would fail on it
            aside.parent.mkdir(parents=True, exist_ok=True)
            path.rename(aside)


def _file_stem(run_id: str) -> str:
    # a leading "." or "_" would hide the file from directory readers (pandas, Spark), which skip such names
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", run_id).lstrip("._") or "run"
    return safe if safe == run_id else f"{safe}-{hashlib.sha1(run_id.encode()).hexdigest()[:8]}"
