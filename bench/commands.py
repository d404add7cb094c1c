"""The `bench` subcommands that read finished runs: report, compare, history, dashboard, export, import; and profile.

Each handler takes the parsed arguments and returns the exit code; bad input raises UsageError (exit 2, one line).
"""

from __future__ import annotations

from pathlib import Path

from bench.records import RUN_JSON


class UsageError(Exception):
    """Bad usage or input: printed as one line, exit 2."""


def run_dirs(paths: list[str | Path], what: str = "RUN") -> list[Path]:
    """Each path is a run directory (it holds run.json) or a folder of them (e.g. the shards of one sweep)."""
    dirs = []
    for p in map(Path, paths):
        if (p / RUN_JSON).is_file():
            dirs.append(p)
        elif p.is_dir() and (inner := sorted(d for d in p.iterdir() if (d / RUN_JSON).is_file())):
            dirs += inner
        else:
            raise UsageError(f"{what} {p} is not a run directory (no {RUN_JSON} in it or in its subfolders)")
    return dirs


def _output(path: Path, what: str = "-o") -> Path:
    if path.exists() and path.is_dir():
        raise UsageError(f"{what} {path} is a directory; give a file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def cmd_report(args) -> int:
    from reports.run_report import write_report

    out = write_report(run_dirs(args.runs), _output(args.output))
    print(f"report -> {out}")
    return 0


def cmd_compare(args) -> int:
    from bench.compare import compare

    if not 0 <= args.threshold < 100:
        raise UsageError(f"--threshold is a percentage in [0, 100), got {args.threshold:g}")
    base, new = run_dirs([args.base], "BASE"), run_dirs([args.new], "NEW")
    result = compare(base, new, threshold=args.threshold / 100)
    for line in result.summary_lines():
        print(line)
    if args.output:
        from reports.compare_page import write_compare_html

        print(f"compare page -> {write_compare_html(result, _output(args.output))}")
    return 1 if args.fail_on_regression and (len(result.regressions) or len(result.newly_failing)) else 0


def cmd_history(args) -> int:
    from bench import history

    added = 0
    for run in run_dirs(args.runs):
        try:
            added += history.add(run, args.store)
        except ValueError as e:
            raise UsageError(str(e)) from None
    print(f"{added} rows added to {args.store}")
    return 0


def cmd_dashboard(args) -> int:
    from reports.dashboard import build

    if not Path(args.store).is_dir():
        raise UsageError(f"history store {args.store} does not exist (fill it with `bench history add RUN --store`)")
    print(f"dashboard -> {build(args.store, args.output, threshold=args.threshold / 100)}")
    return 0


def cmd_export(args) -> int:
    from bench.interop import export_pytest_benchmark

    try:
        out = export_pytest_benchmark(run_dirs(args.runs), _output(args.output))
    except ValueError as e:
        raise UsageError(str(e)) from None
    print(f"pytest-benchmark JSON -> {out}")
    return 0


def cmd_import(args) -> int:
    from bench.interop import import_pytest_benchmark

    if not Path(args.file).is_file():
        raise UsageError(f"{args.file} is not a file")
    try:
        out = import_pytest_benchmark(args.file, args.out)
    except ValueError as e:
        raise UsageError(str(e)) from None
    print(f"run directory -> {out}")
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
