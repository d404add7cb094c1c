"""The `bench` subcommands that read finished runs: report, compare, history, dashboard, export, import, merge; and
profile.

Each handler takes the parsed arguments and returns the exit code; bad input raises UsageError (exit 2, one line).
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.atomic import atomic_write_text
from bench.records import RECORDS_JSONL, RUN_JSON, CorruptRunJson, SchemaError, read_run_json

REPORT_HTML = "report.html"  # `bench run`'s page of its run, beside its records


class UsageError(Exception):
    """Bad usage or input: printed as one line, exit 2."""


def console(**kwargs):
    """A rich Console for a command's output whose reader going away (`bench doctor | head -1`) raises BrokenPipeError,
    which `bench` ends quietly with 141 as a pipe's writer ends, where rich's own handling exits 1, a failure."""
    from rich.console import Console

    class PipedConsole(Console):
        def on_broken_pipe(self) -> None:
            raise BrokenPipeError(32, "Broken pipe")

    return PipedConsole(**kwargs)


def schema_errors_are_usage(handler):
    """A run directory of another schema, or a corrupt run.json, is bad input: one line, exit 2."""

    def wrapped(args) -> int:
        try:
            return handler(args)
        except SchemaError as e:
            raise UsageError(str(e)) from None

    return wrapped


def run_dirs(paths: list[str | Path], what: str = "RUN") -> list[Path]:
    """Each path is a run directory (it holds run.json) or a folder of them (e.g. the shards of one sweep); a run.json
    that is no JSON object is refused with the resume that rebuilds it from the records, as a lost one is."""
    dirs = []
    for p in map(Path, paths):
        if not p.exists():
            raise UsageError(f"{what} {p} does not exist")
        if (p / RUN_JSON).is_file():
            dirs.append(p)
        elif p.is_dir() and (inner := sorted(d for d in p.iterdir() if (d / RUN_JSON).is_file())):
            dirs += inner
        elif (p / RECORDS_JSONL).is_file():
            raise UsageError(f"{what} {p} has lost its {RUN_JSON} ({RECORDS_JSONL} is there): {_rebuild(p)}")
        else:
            raise UsageError(f"{what} {p} is not a run directory (no {RUN_JSON} in it or in its subfolders)")
    for d in dirs:
        try:
            read_run_json(d)
        except CorruptRunJson as e:  # cut short by a full disk, say: the records still say which run it is
            how = f": {_rebuild(d)}" if (d / RECORDS_JSONL).is_file() else ""
            raise UsageError(f"{what} {d}: {e}{how}") from None
        except SchemaError:  # another schema, unreadable: the command's reader says so, in its own words
            pass
    return dirs


def _rebuild(run_dir: Path) -> str:
    """The resume that writes a run.json again from a run directory's records, for a folder that lost it."""
    from bench.records import scan_records
    from bench.rundir import shell_word

    try:
        suites = " ".join(sorted({r.suite for r in scan_records(run_dir / RECORDS_JSONL).records})) or "SUITE"
    except SchemaError:
        suites = "SUITE"
    return (f"`bench run {suites} --size SIZE --resume --out {shell_word(run_dir)}`, with the size (and --device, "
            "--shard) it was run with, rebuilds it from the records")


def counted(dirs: list[Path]) -> list[Path]:
    """The runs of `dirs` that count, each once (bench.sides.distinct: a run reached twice, a sweep's shards beside
    their merged run), a warning naming each left out: a report or an export of a sweep folder holds each case once."""
    from bench.sides import count_once

    return count_once(dirs)


def output_file(path: Path, suffix: str, inputs: list[Path] = (), report_of: list[Path] = ()) -> Path:
    """A file to write: never a directory, never a file a run directory or a history store owns (not_owned), and of
    the expected kind. `report_of`: the runs of a `bench report`, whose one run's own report.html it may write."""
    if path.is_dir():
        raise UsageError(f"-o {path} is a directory; give a {suffix} file name")
    if path.suffix != suffix:
        raise UsageError(f"-o {path} should end in {suffix}")
    if path.exists() and any(path.resolve() == (d / name).resolve() for d in inputs for name in (RUN_JSON,
                                                                                                 RECORDS_JSONL)):
        raise UsageError(f"-o {path} is a file of the run it reads; choose another name")
    not_owned(path, "file", report_of)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create the folder of -o {path}: {e.strerror or e}") from None
    return path


def not_owned(path: Path, what: str, report_of: list[Path] = ()) -> None:
    """UsageError where output `path` (a file, or the dashboard's folder) is a file of a run directory (run.json,
    records.jsonl, report.html: DESIGN.md's layout) or lies in a history store's runs/ or damaged/ folder, which
    pandas and pyarrow read whole as Parquet. report.html is `bench run`'s page of its run: only a report of that one
    run (`report_of`) writes it again, as `bench run` would; another page there would be taken for the run's own."""
    from bench.history import DAMAGED, RUNS
    from bench.rundir import shell_word

    run = path.parent
    if path.name in (RUN_JSON, RECORDS_JSONL, REPORT_HTML) and ((run / RUN_JSON).exists() or
                                                                (run / RECORDS_JSONL).exists()):
        if path.name == REPORT_HTML and [d.resolve() for d in report_of] == [run.resolve()]:
            return
        again = (f" (its page: only `bench report {shell_word(run)} -o {shell_word(path)}` writes it again)"
                 if path.name == REPORT_HTML else "")
        raise UsageError(f"-o {path} is a file of the run directory {run}{again}; choose another {what} name")
    inside = path.resolve() if what == "folder" else path.resolve().parent
    for folder in (inside, *inside.parents):
        if folder.name in (RUNS, DAMAGED) and any((folder.parent / RUNS).glob("*.parquet")):
            raise UsageError(f"-o {path} is in the {folder.name}/ folder of the history store {folder.parent}, "
                             f"which is read whole as Parquet; choose a {what} outside it")


@schema_errors_are_usage
def cmd_report(args) -> int:
    from reports.run_report import write_report

    runs = counted(run_dirs(args.runs))
    out = write_report(runs, output_file(args.output, ".html", runs, report_of=runs))
    print(f"report -> {out}")
    return 0


@schema_errors_are_usage
def cmd_compare(args) -> int:
    from bench.compare import compare
    from bench.sides import SidesError

    _threshold(args.threshold)
    base, new = run_dirs([args.base], "BASE"), run_dirs([args.new], "NEW")
    if args.output is not None and args.output.suffix not in (".html", ".json") and not args.output.is_dir():
        raise UsageError(f"-o {args.output} should end in .html (a page) or .json (for scripts)")
    as_json = args.output is not None and args.output.suffix == ".json"
    page = output_file(args.output, ".json" if as_json else ".html", base + new) if args.output else None
    try:
        result = compare(base, new, threshold=args.threshold / 100, allow_contended=args.allow_contended)
    except SidesError as e:  # sides that cannot be compared as given
        raise UsageError(str(e)) from None
    for line in result.summary_lines():
        print(line)
    if as_json:
        written = atomic_write_text(page, json.dumps(result.to_json(), indent=1, default=str, allow_nan=False) + "\n")
        print(f"comparison -> {written}")
    elif page:
        from reports.compare_page import write_compare_html

        print(f"compare page -> {write_compare_html(result, page)}")
    return 1 if args.fail_on_regression and result.failed else 0


def _threshold(pct: float) -> None:
    if not 0 <= pct < 100:
        raise UsageError(f"--threshold is a percentage in [0, 100), got {pct:g}")


@schema_errors_are_usage
def cmd_history(args) -> int:
    from bench import history

    if Path(args.store).exists() and not Path(args.store).is_dir():
        raise UsageError(f"--store {args.store} is a file, not a history store folder")
    try:  # every run checked before any is written; a run given twice, or beside its merged run, added once
        added = history.add_runs(run_dirs(args.runs), args.store, said=(said := []).append)
    except ValueError as e:
        raise UsageError(str(e)) from None
    print("; ".join([f"{added} rows added to {args.store}", *said]))
    return 0


def cmd_dashboard(args) -> int:
    from reports.dashboard import build

    _threshold(args.threshold)
    if not Path(args.store).is_dir():
        raise UsageError(f"history store {args.store} does not exist (fill it with `bench history add RUN --store`)")
    if Path(args.output).exists() and not Path(args.output).is_dir():
        raise UsageError(f"-o {args.output} is a file; the dashboard is a folder of pages")
    not_owned(Path(args.output), "folder")
    try:
        lines = []
        index = build(args.store, args.output, threshold=args.threshold / 100, said=lines.append)
        print(f"dashboard -> {index} ({''.join(lines)})")
    except ValueError as e:
        raise UsageError(str(e)) from None
    return 0


@schema_errors_are_usage
def cmd_export(args) -> int:
    from bench.interop import export_pytest_benchmark

    try:
        runs = counted(run_dirs(args.runs))
        out = export_pytest_benchmark(runs, output_file(args.output, ".json", runs))
    except ValueError as e:
        raise UsageError(str(e)) from None
    print(f"pytest-benchmark JSON -> {out}")
    return 0


def cmd_import(args) -> int:
    from bench.interop import import_pytest_benchmark

    if not Path(args.file).exists():
        raise UsageError(f"{args.file} does not exist")
    if not Path(args.file).is_file():
        raise UsageError(f"{args.file} is not a file")
    try:
        out = import_pytest_benchmark(args.file, args.out)
    except ValueError as e:
        raise UsageError(str(e)) from None
    print(f"run directory -> {out}")
    return 0


def cmd_merge(args) -> int:
    import sys

    from bench.merge import MergeError, merge

    try:
        meta, n = merge(run_dirs(args.runs), args.out, ["bench", *sys.argv[1:]])
    except MergeError as e:
        raise UsageError(str(e)) from None
    from bench.machines import gpus_used

    # shards on the GPUs of one machine (CUDA_VISIBLE_DEVICES) share its env_id: one machine, and its GPUs said too
    machines, gpus = len(meta["envs"]), len(gpus_used(meta))
    runs = len(meta["merged_from"])
    print(f"{n} record{'s' * (n != 1)} of {runs} run{'s' * (runs != 1)} ({machines} machine{'s' * (machines != 1)}"
          f"{f', {gpus} GPUs' if gpus > machines else ''}) -> {args.out}")
    from bench.rundir import unfinished_shards

    if meta["missing_shards"]:
        print(f"bench: note: no run of shard {', '.join(meta['missing_shards'])} was given: the merged sweep is "
              "partial, and unfinished (compare names it, history refuses it); merge again with every shard",
              file=sys.stderr)
    for shard, now in unfinished_shards(meta):
        how = (f"`{now}` finishes it, then merge again" if now and now != "finished since" else
               "it has finished since: merge again" if now else "resume it, then merge again")
        print(f"bench: note: {shard['dir']} (shard {shard['shard']}) has not finished, so neither has the merged "
              f"sweep; {how}", file=sys.stderr)
    return 0


def cmd_profile(args, device: str, where: dict[str, str]) -> int:
    from bench.profile import profile_case

    try:
        result = profile_case(args.suite, args.variant, args.size, device, where, args.out,
                              wait=args.wait, warmup=args.warmup, active=args.active)
    except ValueError as e:
        raise UsageError(str(e)) from None
    for key, value in result.items():
        if value is not None:
            print(f"{key}: {value}")
    return 1 if result.get("status") in ("error", "timeout") else 0
