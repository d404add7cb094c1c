"""The `bench` command: the parser, and the measuring subcommands (list, run, env, doctor, profile); `bench run`'s
options and their checks are in bench/cli_run.py, and the commands that read finished runs (report, compare, history,
dashboard, export, import) in bench/commands.py.

Exit codes: 0 every case finished (ok, oom and skipped are results); 1 a case errored or timed out, a write failed
(`bench run`'s report.html included: its records are kept), or under --fail-on-regression a compare found a
regression (a timing judged from one run a side is shown, not gated), a newly failing case, a contended timing that
looked slower from several runs a side, or an unfinished or damaged NEW run; 2 bad usage or bad input, with a
one-line reason naming the valid choices, and nothing existing overwritten; 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import select as io_select
import signal
import sys
import threading
import warnings
from pathlib import Path

from bench import cli_run, commands, plan_cli
from bench.atomic import OutputError
from bench.cli_run import Stopped, parse_params, resolve_device, say, stop_code, stopped_by
from bench.cli_select import select
from bench.commands import UsageError
from bench.records import path_text
from bench.rundir import shell_word
from bench.suite import SIZES, GridError, SuiteError, discover


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="bench", description="Measure what deep-learning efficiency techniques trade, on your hardware.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    ls = sub.add_parser("list", help="suites, variants and case counts per size")
    ls.add_argument("--json", action="store_true", help="machine-readable output")

    run = sub.add_parser("run", help="run suites into a run directory (default: all suites, quick size)")
    cli_run.add_arguments(run)

    new = sub.add_parser("new", help="scaffold a technique: reference, a variant, suite, tests, figure module")
    new.add_argument("name", help="the technique's name, a lower-case Python identifier")
    new.add_argument("--dir", type=Path, default=Path("."), help="the techbench checkout to write into (default: .)")

    mrg = sub.add_parser("merge", help="the shard run directories of one sweep as one run directory")
    mrg.add_argument("runs", nargs="+", metavar="RUN", help="run directories (or folders of them)")
    mrg.add_argument("--out", type=Path, required=True, metavar="DIR", help="a new run directory")

    e = sub.add_parser("env", help="the environment fingerprint that runs record")
    e.add_argument("--json", action="store_true", help="machine-readable output")

    doc = sub.add_parser("doctor", help="what here would make timings unstable, each with its fix (changes nothing)")
    doc.add_argument("--json", action="store_true", help="machine-readable output")

    rep = sub.add_parser("report", help="one offline HTML page of one or more runs")
    rep.add_argument("runs", nargs="+", metavar="RUN", help="run directories (or folders of them)")
    rep.add_argument("-o", "--output", type=Path, required=True, metavar="FILE.html")

    cmp = sub.add_parser("compare", help="what changed between two runs (or sets of runs), beyond noise")
    cmp.add_argument("base", metavar="BASE", help="run directory, or a folder of run directories")
    cmp.add_argument("new", metavar="NEW", help="run directory, or a folder of run directories")
    cmp.add_argument("--threshold", type=float, default=5.0, metavar="PCT", help="smallest change that counts (5)")
    cmp.add_argument("--fail-on-regression", action="store_true",
                     help="exit 1 when a case got significantly worse (but a timing judged from one run a side), "
                          "newly failed, looked slower under load from several runs a side, or NEW did not finish "
                          "or lost records")
    cmp.add_argument("--allow-contended", action="store_true", help="judge timings that other load disturbed too")
    cmp.add_argument("-o", "--output", type=Path, metavar="FILE.html",
                     help="also write a comparison page, or with FILE.json every row and the gate verdict for scripts")

    his = sub.add_parser("history", help="a store of runs over time (Parquet, one row per case and metric)")
    his_sub = his.add_subparsers(dest="action", required=True, parser_class=_Parser)
    add = his_sub.add_parser("add", help="add runs to the store (adding a run twice changes nothing)")
    add.add_argument("runs", nargs="+", metavar="RUN")
    add.add_argument("--store", type=Path, required=True, metavar="DIR")

    dash = sub.add_parser("dashboard", help="a static site of the history: time series, baselines, regressions")
    dash.add_argument("store", type=Path, metavar="DIR", help="history store")
    dash.add_argument("-o", "--output", type=Path, required=True, metavar="SITE")
    dash.add_argument("--threshold", type=float, default=5.0, metavar="PCT", help="smallest change that counts (5)")

    pl = sub.add_parser("plan", help="predict each case's peak memory, FLOPs and roofline bound on a GPU, and whether "
                        "it fits, from shapes alone (meta device: no data, no compute)")
    plan_cli.add_arguments(pl)

    prof = sub.add_parser("profile", help="one case under torch.profiler: trace, top operators, memory snapshot")
    prof.add_argument("suite", metavar="SUITE")
    prof.add_argument("--variant", required=True)
    prof.add_argument("--size", default="smoke", choices=SIZES, help="grid size (default: smoke)")
    prof.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
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


def cmd_run(args) -> int:
    # looked up here, in the command layer, at each call: `discover` finds the suites, `_write_report` imports reports/
    return cli_run.cmd_run(args, discover, _write_report)


def _write_report(out: Path) -> str | None:
    """report.html beside the records. None when it is written, or where reports cannot be drawn at all (plotly is
    not installed: a warning says so, and the run's exit code stands); else why there is none, in one line, and
    `bench run` exits 1. A report that fails never changes what the run measured."""
    try:
        from reports.run_report import write_report

        with warnings.catch_warnings():  # the run has already said what it had to about its records
            warnings.simplefilter("ignore")
            print(f"report -> {path_text(write_report([out], out / 'report.html'))}")
    except OutputError as e:  # it names the path and the OS error
        return str(e)
    except ModuleNotFoundError as e:
        if e.name is None or e.name.split(".")[0] not in OPTIONAL:
            return f"{type(e).__name__}: {e}"
        print(f"bench: warning: no report.html ({missing_package(e)})", file=sys.stderr)
    except Exception as e:  # noqa: BLE001
        return f"{type(e).__name__}: {e}"
    return None


def cmd_new(args) -> int:
    from bench.scaffold import ScaffoldError, scaffold

    try:
        written = scaffold(args.name, args.dir)
    except ScaffoldError as e:
        raise UsageError(str(e)) from None
    for path in written:
        print(path)
    tests = f"tests/impls/test_{args.name}.py tests/suites/test_{args.name}.py"
    # the example runs through all of them: a new grid's params reach the suite, its tests and the figure module
    print(f"next: replace the example in impls/{args.name}/, suites/{args.name}.py, reports/figures/{args.name}.py and "
          f"both tests, then `pytest {tests}` and `bench run {args.name} --size smoke`")
    checkout, running = args.dir.resolve(), Path(__file__).resolve().parents[1]
    if checkout != running:  # the bench at hand (an editable install, say) would not see the new suite
        print(f"  run them in {shell_word(checkout)} with PYTHONPATH={shell_word(checkout)}: this bench runs the code "
              f"of {shell_word(running)}")
    return 0


def cmd_plan(args) -> int:
    return plan_cli.cmd_plan(args, discover, _write_plan_page)


def _write_plan_page(records: list[dict], summary: dict, path: Path) -> Path:
    from reports.plan_page import write_plan_page

    return write_plan_page(records, summary, path)


def cmd_profile(args) -> int:
    select(discover(), [args.suite], [args.variant])
    return commands.cmd_profile(args, resolve_device(args.device), parse_params(args.params))


def cmd_list(args) -> int:
    from bench.catalog import catalog

    rows = catalog()
    if args.json:
        print(json.dumps({"suites": rows, "sizes": list(SIZES)}, indent=2))
        return 0
    from rich.table import Column, Table

    ordered = [[row["reference"]] + [v for v in row["variants"] if v != row["reference"]] for row in rows]
    # names are what --variant and `bench run SUITE` take: their columns are never narrower than the longest name
    # (its comma included), so a narrow terminal wraps the descriptions and the lists between names, never a name;
    # the counts keep the width of "smoke" (their headers wrap to "smoke / cases"), which leaves 80 columns room
    longest_suite = max((len(row["name"]) for row in rows), default=0)
    longest_variant = max((len(v) + 1 for variants in ordered for v in variants), default=0)
    count_width = max([5, *(len(str(n)) for row in rows for n in row["cases"].values())])
    table = Table(Column("suite", min_width=longest_suite),
                  Column("variants (reference first)", min_width=longest_variant),
                  *(Column(f"{size} cases", justify="right", width=count_width) for size in SIZES),
                  title="techbench suites")
    for row, variants in zip(rows, ordered):
        ranks = f"\n[dim]torchrun ranks: {', '.join(map(str, row['world_sizes']))}[/]" if row["world_sizes"] else ""
        table.add_row(f"{row['name']}\n[dim]{row['description']}[/]{ranks}", ", ".join(variants),
                      *(str(row["cases"][size]) for size in SIZES))
    commands.console().print(table)
    return 0


def cmd_doctor(args) -> int:
    from bench import doctor

    findings = doctor.diagnose()
    if args.json:
        print(doctor.to_json(findings))
    else:
        doctor.render(findings, commands.console())
    return 0  # it advises: nothing it finds fails the command


def cmd_env(args) -> int:
    from bench import env as envmod

    try:
        environment = envmod.collect()
    except (ImportError, OSError) as e:
        if sys.modules.get("torch") is not None:  # torch imported: the failure is another one
            raise
        # a missing or broken torch (a shared library it loads is gone): one line, as `bench run` and `bench list` say
        raise UsageError(f"torch does not import ({type(e).__name__}: {e}); the environment's torch version and "
                         "CUDA build come from it: install or repair torch") from None
    if args.json:
        print(json.dumps({"env_id": envmod.env_id(environment), **environment}, indent=2, default=str))
        return 0
    from rich.table import Table

    table = Table("field", "value", title=f"env_id {envmod.env_id(environment)}")
    for name, value in envmod.table_rows(environment):
        table.add_row(name, str(value))
    commands.console().print(table)
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


def _stdout_gone() -> bool:
    """Whether stdout is a pipe or socket whose reader has closed it (poll reports an error, or a socket's hang-up,
    on its write end)."""
    try:
        poller = io_select.poll()
        poller.register(sys.stdout.fileno(), io_select.POLLOUT)
        return any(events & (io_select.POLLERR | io_select.POLLHUP) for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no descriptor (a test's capture), or no poll here
        return False


def _stopped(signum, frame):
    """SIGTERM, or SIGHUP (the terminal closed), stops a command as Ctrl-C does: a run's cases' processes are ended
    and its finished records kept. A repeat of the signal while it stops is ignored (SIGKILL is there to force it)."""
    signal.signal(signum, signal.SIG_IGN)
    raise Stopped(signum)


def main(argv: list[str] | None = None) -> int:
    warnings.showwarning = _one_line_warning
    if argv is None and threading.current_thread() is threading.main_thread():  # the command itself, not a test
        for signum in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(signum) is not signal.SIG_IGN:  # nohup's SIGHUP stays ignored
                signal.signal(signum, _stopped)
    args = None
    try:
        args = _parser().parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)  # for the command that continues a run
        handlers = {"run": cmd_run, "list": cmd_list, "env": cmd_env, "profile": cmd_profile,
                    "report": commands.cmd_report, "compare": commands.cmd_compare, "history": commands.cmd_history,
                    "dashboard": commands.cmd_dashboard, "export": commands.cmd_export, "import": commands.cmd_import,
                    "merge": commands.cmd_merge, "new": cmd_new, "doctor": cmd_doctor,
                    "plan": cmd_plan}
        return handlers[args.command](args)
    except (UsageError, GridError, SuiteError) as e:
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
    except KeyboardInterrupt as e:
        # a run says itself, from its first write on, what it kept and the command that continues it
        kept = " before the run began; nothing was written" if getattr(args, "command", None) == "run" else ""
        say(f"bench: {stopped_by(e)}{kept}")
        return stop_code(e)
    except BrokenPipeError:
        if not _stdout_gone():  # another pipe (a child's, a socket): a failure like any other
            raise
        # the reader of the output went away (`bench list --json | head`): stop quietly, as a pipe's writer does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # or Python's flush at exit raises again
        return 141  # 128 + SIGPIPE, what a shell reports for a writer the pipe ended
