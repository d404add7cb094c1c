"""The `bench` command: the parser, and the measuring subcommands (list, run, env, profile); the ones that read
finished runs (report, compare, history, dashboard, export, import) are in bench/commands.py.

Exit codes: 0 every case finished (ok, oom and skipped are results); 1 a case errored or timed out, or a compare
found a regression under --fail-on-regression; 2 bad usage or bad input, with a one-line reason naming the valid
choices, and nothing existing overwritten; 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import threading
import warnings
from collections import Counter
from pathlib import Path

from bench import commands
from bench.atomic import OutputError
from bench.commands import UsageError
from bench.distributed import Launch
from bench.records import read_run_json
from bench.runner import DEFAULT_TIMEOUT_S
from bench.suite import SIZES, discover


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="bench", description="Measure what deep-learning efficiency techniques trade, on your hardware.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    ls = sub.add_parser("list", help="suites, variants and case counts per size")
    ls.add_argument("--json", action="store_true", help="machine-readable output")

    r = sub.add_parser("run", help="run suites into a run directory (default: all suites, quick size)")
    r.add_argument("suites", nargs="*", metavar="SUITE", help="suites to run (default: all)")
    r.add_argument("--size", default="quick", choices=SIZES, help="grid size (default: quick)")
    r.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda or cuda:N")
    r.add_argument("--out", type=Path, help="run directory (default: runs/<run_id>)")
    r.add_argument("--variant", nargs="+", action="extend", metavar="NAME", help="only these variants")
    r.add_argument("--shard", default="1/1", metavar="I/N", help="run the I-th of N deterministic slices")
    r.add_argument("--params", metavar="K=V,...", help="only cases whose params match (e.g. batch=4,seq=256)")
    r.add_argument("--case", action="append", metavar="GLOB",
                   help="only cases whose case_id matches this shell-style glob (repeatable: any of them), e.g. "
                        "'fp8/*/*part=gemm*'")
    r.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="S",
                   help=f"seconds per case (default: {DEFAULT_TIMEOUT_S:g})")
    r.add_argument("--nproc-per-node", type=int, default=1, metavar="N",
                   help="ranks per node for distributed suites, one torchrun job a case (default: 1)")
    r.add_argument("--nnodes", type=int, default=1, metavar="M", help="nodes of each distributed job (default: 1)")
    r.add_argument("--rdzv-endpoint", metavar="HOST:PORT", help="rendezvous of a multi-node job (same on every node)")
    r.add_argument("--threads", type=int, metavar="N",
                   help="torch intra-op threads for every CPU case (default: each suite's own choice)")
    r.add_argument("--budget", type=float, metavar="S",
                   help="stop starting cases after S seconds; cases not run are listed, and --resume runs them")
    r.add_argument("--inline", action="store_true", help="run cases in this process (debugging; no timeout)")
    r.add_argument("--resume", action="store_true", help="continue OUT, skipping cases it already finished")

    new = sub.add_parser("new", help="scaffold a technique: reference, a variant, suite, tests, figure module")
    new.add_argument("name", help="the technique's name, a lower-case Python identifier")
    new.add_argument("--dir", type=Path, default=Path("."), help="the techbench checkout to write into (default: .)")

    mrg = sub.add_parser("merge", help="the shard run directories of one sweep as one run directory")
    mrg.add_argument("runs", nargs="+", metavar="RUN", help="run directories (or folders of them)")
    mrg.add_argument("--out", type=Path, required=True, metavar="DIR", help="a new run directory")

    e = sub.add_parser("env", help="the environment fingerprint that runs record")
    e.add_argument("--json", action="store_true", help="machine-readable output")

    rep = sub.add_parser("report", help="one offline HTML page of one or more runs")
    rep.add_argument("runs", nargs="+", metavar="RUN", help="run directories (or folders of them)")
    rep.add_argument("-o", "--output", type=Path, required=True, metavar="FILE.html")

    cmp = sub.add_parser("compare", help="what changed between two runs (or sets of runs), beyond noise")
    cmp.add_argument("base", metavar="BASE", help="run directory, or a folder of run directories")
    cmp.add_argument("new", metavar="NEW", help="run directory, or a folder of run directories")
    cmp.add_argument("--threshold", type=float, default=5.0, metavar="PCT", help="smallest change that counts (5)")
    cmp.add_argument("--fail-on-regression", action="store_true", help="exit 1 when a case got significantly worse")
    cmp.add_argument("-o", "--output", type=Path, metavar="FILE.html", help="also write a comparison page")

    his = sub.add_parser("history", help="a store of runs over time (Parquet, one row per case and metric)")
    his_sub = his.add_subparsers(dest="action", required=True, parser_class=_Parser)
    add = his_sub.add_parser("add", help="add runs to the store (adding a run twice changes nothing)")
    add.add_argument("runs", nargs="+", metavar="RUN")
    add.add_argument("--store", type=Path, required=True, metavar="DIR")

    dash = sub.add_parser("dashboard", help="a static site of the history: time series, baselines, regressions")
    dash.add_argument("store", type=Path, metavar="DIR", help="history store")
    dash.add_argument("-o", "--output", type=Path, required=True, metavar="SITE")
    dash.add_argument("--threshold", type=float, default=5.0, metavar="PCT", help="smallest change that counts (5)")

    prof = sub.add_parser("profile", help="one case under torch.profiler: trace, top operators, memory snapshot")
    prof.add_argument("suite", metavar="SUITE")
    prof.add_argument("--variant", required=True)
    prof.add_argument("--size", default="smoke", choices=SIZES)
    prof.add_argument("--device", default="auto")
    prof.add_argument("--params", metavar="K=V,...", help="which case of the grid (e.g. batch=4,seq=256)")
    prof.add_argument("--out", type=Path, required=True, metavar="DIR")
    prof.add_argument("--wait", type=int, default=1, help="measure() calls run before profiling (1)")
    prof.add_argument("--warmup", type=int, default=1, help="calls profiled but discarded (1)")
    prof.add_argument("--active", type=int, default=1, help="calls recorded in the trace (1)")

    exp = sub.add_parser("export", help="write runs in another tool's format")
    exp.add_argument("runs", nargs="+", metavar="RUN")
    exp.add_argument("--format", required=True, choices=["pytest-benchmark"])
    exp.add_argument("-o", "--output", type=Path, required=True, metavar="FILE.json")

    imp = sub.add_parser("import", help="turn a pytest-benchmark JSON into a run directory")
    imp.add_argument("file", metavar="FILE.json")
    imp.add_argument("--out", type=Path, required=True, metavar="DIR")
    return p


# The largest --timeout and --budget: 1e6 s is 11.6 days; a larger number is a typo, and one past 2.1e6 s overflows
# the wait for an isolated case (a pipe's poll takes its timeout as a C int of milliseconds)
MAX_SECONDS = 1e6
# The most --threads: beyond any machine's cores, a typo that would make torch spawn a thread pool of that size
MAX_THREADS = 4096


def _parse_shard(text: str) -> tuple[int, int]:
    i = n = 0
    if text.count("/") == 1 and all(x.isascii() and x.isdigit() for x in text.split("/")):
        i, n = (int(x) for x in text.split("/"))
    if not 1 <= i <= n:
        raise UsageError(f"--shard must be I/N with 1 <= I <= N (e.g. 1/2), got {text!r}")
    return i, n


def parse_params(text: str | None) -> dict[str, str]:
    """'k=v,k2=v2' -> {'k': 'v', 'k2': 'v2'}; a key given twice is refused (which value would it match?)."""
    if not text:
        return {}
    pairs = [(k.strip(), sep, v.strip()) for k, sep, v in (item.partition("=") for item in text.split(","))]
    if any(not k or not sep for k, sep, _ in pairs):
        raise UsageError(f"--params must be k=v[,k=v...], got {text!r}")
    keys = [k for k, _, _ in pairs]
    if len(set(keys)) < len(keys):
        twice = next(k for k in keys if keys.count(k) > 1)
        raise UsageError(f"--params names {twice!r} twice, got {text!r}")
    return {k: v for k, _, v in pairs}


def _check_numbers(args) -> None:
    """--timeout, --budget and --threads, refused before anything is imported or created."""
    for flag, value in (("--timeout", args.timeout), ("--budget", args.budget)):
        if value is not None and not 0 < value < math.inf:
            raise UsageError(f"{flag} must be a positive number of seconds, got {value:g}")
        if value is not None and value > MAX_SECONDS:
            raise UsageError(f"{flag} must be at most {MAX_SECONDS:g} seconds (11.6 days), got {value:g}")
    if args.threads is not None and not 1 <= args.threads <= MAX_THREADS:
        raise UsageError(f"--threads must be between 1 and {MAX_THREADS}, got {args.threads}")


def _resolve_device(text: str) -> str:
    from bench.env import resolve_device

    try:
        return resolve_device(text)
    except ValueError as e:
        raise UsageError(str(e)) from None


def _select(registry: dict, names: list[str], variants: list[str] | None):
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise UsageError(f"unknown suite {unknown[0]!r} (valid: {', '.join(sorted(registry))})")
    suites = [registry[n] for n in dict.fromkeys(names or sorted(registry))]  # a suite named twice runs once
    if variants:
        valid = sorted({v for s in suites for v in s.variants})
        bad = [v for v in variants if v not in valid]
        if bad:
            raise UsageError(f"unknown variant {bad[0]!r} for {', '.join(s.name for s in suites)} "
                             f"(valid: {', '.join(valid)})")
    return suites


def cmd_run(args) -> int:
    from rich.console import Console

    from bench import runner
    from bench.progress import make_progress

    shard = _parse_shard(args.shard)
    _check_numbers(args)
    where = parse_params(args.params)
    registry = discover()
    suites = _select(registry, args.suites, args.variant)
    device = _resolve_device(args.device)
    try:
        how = Launch(args.nproc_per_node, args.nnodes, args.rdzv_endpoint)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if where and not runner.plan(suites, args.size, device, args.variant, where=where, world_size=how.world_size):
        keys = sorted({k for s in suites for p in s.grid(args.size, device) for k in p})
        raise UsageError(f"no {args.size} case matches --params {args.params} (params: {', '.join(keys)})")
    for glob in args.case or ():  # each glob must match something: a typo would silently drop its cases
        if not runner.plan(suites, args.size, device, args.variant, where=where or None, world_size=how.world_size,
                           cases_like=[glob]):
            raise UsageError(f"no {args.size} case on {device} matches --case {glob!r} (case ids are "
                             "suite/variant/k=v,... with keys sorted; `bench list` names the suites and variants)")
    run_id = runner.new_run_id()
    out = args.out or Path("runs") / run_id
    cfg = runner.RunConfig(suites=suites, size=args.size, device=device, out=out, variants=args.variant,
                           shard=shard, where=where or None, cases_like=args.case, timeout_s=args.timeout,
                           launch=how, inline=args.inline, resume=args.resume, run_id=run_id, budget_s=args.budget,
                           threads=args.threads, argv=["bench", *sys.argv[1:]])
    console = Console()
    try:
        code, records = runner.run(cfg, make_progress(console))
    except runner.RunDirError as e:
        raise UsageError(str(e)) from None
    except OSError as e:  # e.g. a full disk: every record already written is intact, --resume continues
        print(f"bench: cannot write to {out}: {e.strerror or e}; finished records are kept, rerun with --resume",
              file=sys.stderr)
        return 1
    counts = Counter(r.status for r in records)
    print(f"{len(records)} cases: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + f" -> {out}")
    not_run = (read_run_json(out) or {}).get("not_run") or []
    if not_run:
        again = [a for a in sys.argv[1:] if a != "--resume"] + ([] if args.out else ["--out", str(out)])
        print(f"bench: the --budget of {args.budget:g} s ran out with {len(not_run)} cases not run (listed in "
              f"{out / 'run.json'} under not_run); `bench {' '.join(again)} --resume` runs them", file=sys.stderr)
    _write_report(out)
    return code


def _write_report(out: Path) -> None:
    """report.html beside the records; a report that fails to build never changes what the run measured."""
    try:
        from reports.run_report import write_report

        with warnings.catch_warnings():  # the run has already said what it had to about its records
            warnings.simplefilter("ignore")
            print(f"report -> {write_report([out], out / 'report.html')}")
    except Exception as e:  # noqa: BLE001
        why = missing_package(e) if isinstance(e, ModuleNotFoundError) else f"{type(e).__name__}: {e}"
        print(f"bench: warning: no report.html ({why}); `bench report {out} -o FILE` retries", file=sys.stderr)


def cmd_new(args) -> int:
    from bench.scaffold import ScaffoldError, scaffold

    try:
        written = scaffold(args.name, args.dir)
    except ScaffoldError as e:
        raise UsageError(str(e)) from None
    for path in written:
        print(path)
    tests = f"tests/impls/test_{args.name}.py tests/suites/test_{args.name}.py"
    print(f"next: edit impls/{args.name}/, then `pytest {tests}` and `bench run {args.name} --size smoke`")
    return 0


def cmd_profile(args) -> int:
    _select(discover(), [args.suite], [args.variant])
    return commands.cmd_profile(args, _resolve_device(args.device), parse_params(args.params))


def cmd_list(args) -> int:
    from bench.runner import plan

    registry = discover()
    rows = [{"name": s.name, **s.describe(), "cases": {size: len(plan([s], size, "cpu")) for size in SIZES}}
            for s in (registry[n] for n in sorted(registry))]
    if args.json:
        print(json.dumps({"suites": rows, "sizes": list(SIZES)}, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table("suite", "variants (reference first)", *(f"{size} cases" for size in SIZES), title="techbench suites")
    for row in rows:
        variants = [row["reference"]] + [v for v in row["variants"] if v != row["reference"]]
        ranks = f"\n[dim]torchrun ranks: {', '.join(map(str, row['world_sizes']))}[/]" if row["world_sizes"] else ""
        table.add_row(f"{row['name']}\n[dim]{row['description']}[/]{ranks}", ", ".join(variants),
                      *(str(row["cases"][size]) for size in SIZES))
    Console().print(table)
    return 0


def cmd_env(args) -> int:
    from bench import env as envmod

    environment = envmod.collect()
    if args.json:
        print(json.dumps({"env_id": envmod.env_id(environment), **environment}, indent=2, default=str))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table("field", "value", title=f"env_id {envmod.env_id(environment)}")
    for name, value in envmod.table_rows(environment):
        table.add_row(name, str(value))
    Console().print(table)
    return 0


# Packages that only some commands need (pyproject installs them all; a checkout run with PYTHONPATH=. may lack them):
# import name -> (what needs it, the distribution to install)
OPTIONAL = {"plotly": ("reports, compare pages and the dashboard", "plotly"),
            "pyarrow": ("the history store", "pyarrow"),
            "sklearn": ("the samplers suite's digits", "scikit-learn"),
            "pycocotools": ("the detection suite's COCO AP", "pycocotools")}


def missing_package(e: ModuleNotFoundError) -> str:
    name = (e.name or "").split(".")[0]
    what, dist = OPTIONAL.get(name, ("this command", name))
    return f"{name} is not installed (pip install {dist}); it is needed for {what}"


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    print(f"bench: warning: {message}", file=sys.stderr)


def _terminated(signum, frame):
    raise KeyboardInterrupt  # SIGTERM stops a run as Ctrl-C does: its cases' processes ended, finished records kept


def main(argv: list[str] | None = None) -> int:
    warnings.showwarning = _one_line_warning
    if argv is None and threading.current_thread() is threading.main_thread():  # the command itself, not a test
        signal.signal(signal.SIGTERM, _terminated)
    try:
        args = _parser().parse_args(argv)
        handlers = {"run": cmd_run, "list": cmd_list, "env": cmd_env, "profile": cmd_profile,
                    "report": commands.cmd_report, "compare": commands.cmd_compare, "history": commands.cmd_history,
                    "dashboard": commands.cmd_dashboard, "export": commands.cmd_export, "import": commands.cmd_import,
                    "merge": commands.cmd_merge, "new": cmd_new}
        return handlers[args.command](args)
    except UsageError as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return 2
    except OutputError as e:  # a read-only folder or a full disk: nothing half-written was left behind
        print(f"bench: error: {e}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as e:
        if e.name is None or e.name.split(".")[0] not in OPTIONAL:
            raise
        print(f"bench: error: {missing_package(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted; finished records are kept, rerun with --resume", file=sys.stderr)
        return 130
