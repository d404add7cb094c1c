"""`bench run`'s command line: its options, their checks, and the command. bench.cli builds the parser from
`add_arguments` and dispatches to `cmd_run`.

Every option is checked before anything is imported or created: a bad one exits 2 with one line (bench.cli.main).
"""

from __future__ import annotations

import math
import os
import signal
import socket
import sys
import tempfile
from collections import Counter
from pathlib import Path

from bench.cli_select import nearest, no_case_matches, select, warn_ratios_lost, warn_unused_selection
from bench.commands import UsageError
from bench.distributed import Launch
from bench.records import path_text, read_run_json
from bench.rundir import command_of, resume_command, shell_word
from bench.runner import TIMEOUTS
from bench.suite import SIZES

# The largest --timeout, --budget and --wait-idle: 1e6 s is 11.6 days; a larger number is a typo, and one past 2.1e6 s
# overflows the wait for an isolated case (a pipe's poll takes its timeout as a C int of milliseconds)
MAX_SECONDS = 1e6
# The most --threads: beyond any machine's cores, a typo that would make torch spawn a thread pool of that size
MAX_THREADS = 4096
# impls.cache.UNWRITABLE_SAID (bench does not import impls): "1" in the environment the cases inherit tells their
# cache writes that this run has already said, once, that the cache folder cannot be written
CACHE_UNWRITABLE = "TECHBENCH_CACHE_UNWRITABLE"


class Stopped(KeyboardInterrupt):
    """A stop signal other than Ctrl-C's SIGINT (SIGTERM, SIGHUP), raised where the command is, to stop it as Ctrl-C
    does; the command then exits 128 + its number, as a shell reports a process the signal ended."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def stopped_by(e: KeyboardInterrupt) -> str:
    return f"stopped by {signal.Signals(e.signum).name}" if isinstance(e, Stopped) else "interrupted"


def stop_code(e: KeyboardInterrupt) -> int:
    return 128 + (e.signum if isinstance(e, Stopped) else signal.SIGINT)


def say(line: str) -> None:
    """`line` on stderr where it still goes somewhere: after SIGHUP the terminal may be gone (EIO), and the command
    is stopping anyway."""
    try:
        print(line, file=sys.stderr, flush=True)
    except OSError:
        pass


def add_arguments(r) -> None:
    """The options of `bench run`, on its subparser `r`."""
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
    r.add_argument("--timeout", type=float, metavar="S", help="seconds per case (default by --size: "
                   + ", ".join(f"{size} {s:g}" for size, s in TIMEOUTS.items()) + ")")
    r.add_argument("--nproc-per-node", type=int, default=1, metavar="N",
                   help="ranks per node for distributed suites, one job of ranks a case (default: 1)")
    r.add_argument("--nnodes", type=int, default=1, metavar="M", help="nodes of each distributed job (default: 1)")
    r.add_argument("--rdzv-endpoint", metavar="HOST:PORT", help="rendezvous of a multi-node job (same on every node)")
    r.add_argument("--threads", type=int, metavar="N",
                   help="torch intra-op threads for every CPU case (default: each suite's own choice)")
    r.add_argument("--cpus", metavar="LIST",
                   help="pin each case to these CPUs, e.g. 0-3,8, with as many torch threads (--threads wins; a "
                        "suite that asks for fewer keeps its own)")
    r.add_argument("--wait-idle", type=float, metavar="S",
                   help="before each case, wait up to S seconds for other processes to leave its CPUs")
    r.add_argument("--budget", type=float, metavar="S",
                   help="stop starting cases after S seconds; cases not run are listed, and --resume runs them")
    r.add_argument("--predict", action="store_true",
                   help="first predict each case's peak memory on the meta device (bench plan) and record it as "
                        "predicted_peak_mem_bytes beside the measured peak; the report shows the error")
    r.add_argument("--skip-predicted-oom", action="store_true",
                   help="with --predict (implied), on a GPU: skip a case predicted not to fit in its memory, saying "
                        "the predicted and available bytes")
    r.add_argument("--inline", action="store_true", help="run cases in this process (debugging; no timeout)")
    r.add_argument("--resume", action="store_true",
                   help="continue OUT, skipping cases it already finished (without --out: the latest unfinished run "
                        "under runs/ of the same size, device, shard and suites)")
    r.add_argument("--retry-failed", action="store_true",
                   help="with --resume (implied): run again the cases recorded as error or timeout")


def parse_shard(text: str) -> tuple[int, int]:
    i = n = 0
    if text.count("/") == 1 and all(x.isascii() and x.isdigit() for x in text.split("/")):
        i, n = (int(x) for x in text.split("/"))
    if not 1 <= i <= n:
        raise UsageError(f"--shard must be I/N with 1 <= I <= N (e.g. 1/2), got {text!r}")
    return i, n


def parse_params(text: str | None, flag: str = "--params") -> dict[str, str]:
    """'k=v,k2=v2' -> {'k': 'v', 'k2': 'v2'}; a key given twice is refused (which value would it match?)."""
    if not text:
        return {}
    pairs = [(k.strip(), sep, v.strip()) for k, sep, v in (item.partition("=") for item in text.split(","))]
    if any(not k or not sep for k, sep, _ in pairs):
        raise UsageError(f"{flag} must be k=v[,k=v...], got {text!r}")
    keys = [k for k, _, _ in pairs]
    if len(set(keys)) < len(keys):
        twice = next(k for k in keys if keys.count(k) > 1)
        raise UsageError(f"{flag} names {twice!r} twice, got {text!r}")
    return {k: v for k, _, v in pairs}


def parse_cpus(text: str | None) -> frozenset[int] | None:
    """--cpus "0-3,8" as a set; refused when malformed or naming a CPU that the kernel will not let `bench` run on:
    one that does not exist, or that a cgroup's cpuset keeps it off (it would refuse it, or drop it silently). A CPU
    outside this process's affinity is fine where the kernel lets it move there: isolated CPUs (isolcpus), which no
    process starts on, are what --cpus is for, with bench itself left on the others."""
    if text is None:
        return None
    if not hasattr(os, "sched_setaffinity"):
        raise UsageError("--cpus needs CPU affinity (os.sched_setaffinity), which this system lacks")
    from bench.doctor import format_cpus

    allowed = os.sched_getaffinity(0)
    top, cpus = max(max(allowed), _configured_cpus() - 1), set()
    for part in text.split(","):
        lo, dash, hi = part.strip().partition("-")
        hi = hi if dash else lo
        if not (_digits(lo) and _digits(hi)) or int(hi) < int(lo):
            raise UsageError(f"--cpus must be a list of CPUs and low-high ranges such as 0-3,8, got {text!r}")
        first, last = int(lo), int(hi)
        bad = next((c for c in range(first, min(last, top) + 1) if c not in allowed and not _may_move_to(c)), None)
        if bad is None and last > top:  # checked before the range is built: "0-99999999" is one line, not 1e8 ints
            bad = max(first, top + 1)
        if bad is not None:
            raise UsageError(f"--cpus {text}: there is no CPU {bad} that bench may run on here (it runs on "
                             f"{format_cpus(allowed)}, and may move to CPUs outside that which its cpuset allows)")
        cpus.update(range(first, last + 1))
    return frozenset(cpus)


def _configured_cpus() -> int:
    """CPUs the system numbers, offline ones included (os.cpu_count counts the online: with CPU 2 offline, CPU 3
    would lie past it)."""
    try:
        return max(os.sysconf("SC_NPROCESSORS_CONF"), os.cpu_count() or 1)
    except (ValueError, OSError, AttributeError):
        return os.cpu_count() or 1


def _may_move_to(cpu: int) -> bool:
    """Whether the kernel lets this thread run on `cpu`: asked by moving there and straight back (a cpuset that
    excludes it makes the call fail)."""
    own = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {cpu})
        return os.sched_getaffinity(0) == {cpu}
    except OSError:
        return False
    finally:
        os.sched_setaffinity(0, own)


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


def check_numbers(args) -> None:
    """--timeout, --budget, --wait-idle and --threads, refused before anything is imported or created."""
    for flag, value in (("--timeout", args.timeout), ("--budget", args.budget), ("--wait-idle", args.wait_idle)):
        if value is not None and not 0 < value < math.inf:
            raise UsageError(f"{flag} must be a positive number of seconds, got {value:g}")
        if value is not None and value > MAX_SECONDS:
            raise UsageError(f"{flag} must be at most {MAX_SECONDS:g} seconds (11.6 days), got {value:g}")
    if args.threads is not None and not 1 <= args.threads <= MAX_THREADS:
        raise UsageError(f"--threads must be between 1 and {MAX_THREADS}, got {args.threads}")


def resolve_device(text: str) -> str:
    from bench.env import resolve_device

    try:
        return resolve_device(text)
    except ValueError as e:
        raise UsageError(str(e)) from None


def cmd_run(args, discover, write_report) -> int:
    """`bench run`. `discover` finds the suites and `write_report` writes report.html: both come from bench.cli, the
    command layer, since reports/ is no import of the harness's core."""
    from rich.console import Console

    from bench import doctor, rundir, runner
    from bench.progress import make_progress

    shard = parse_shard(args.shard)
    check_numbers(args)
    where = parse_params(args.params)
    cpus = parse_cpus(args.cpus)
    since = doctor.snapshot()  # the disturbance check samples the CPUs while the suites load
    registry = discover()
    suites = select(registry, args.suites, args.variant)
    device = resolve_device(args.device)
    try:
        how = Launch(args.nproc_per_node, args.nnodes, args.rdzv_endpoint)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if how.nnodes > 1:  # a host no node can find: torchrun retries it for minutes at every case
        host, port = how.host_port()
        try:
            socket.getaddrinfo(host.strip("[]"), port)
        except (OSError, UnicodeError) as e:
            raise UsageError(f"--rdzv-endpoint {how.rdzv_endpoint}: cannot resolve host {host!r} ({e})") from None
    if where and not runner.plan(suites, args.size, device, args.variant, where=where, world_size=how.world_size):
        raise no_case_matches(suites, args.size, device, where, args.params, args.variant, how.world_size,
                              "--nproc-per-node and --nnodes")
    for glob in args.case or ():  # each glob must match something: a typo would silently drop its cases
        if not runner.plan(suites, args.size, device, args.variant, where=where or None, world_size=how.world_size,
                           cases_like=[glob]):
            ids = [c.id for c in runner.plan(suites, args.size, device, args.variant, where=where or None,
                                             world_size=how.world_size)]
            raise UsageError(f"no {args.size} case on {device} matches --case {glob!r} (case ids are "
                             "suite/variant/k=v,... with keys sorted; `bench list` names the suites and variants"
                             f"{nearest(glob, ids, device)})")
    planned = runner.plan(suites, args.size, device, args.variant, shard, where or None, how.world_size, args.case)
    warn_unused_selection(args, suites, planned, how, registry)
    if not planned and shard[1] > 1:  # a matrix of more shards than the selection has groups: said, run all the same
        groups = len({c.group for c in runner.plan(suites, args.size, device, args.variant, (1, 1), where or None,
                                                  how.world_size, args.case)})
        print(f"bench: note: shard {args.shard} holds no case: the selection has {groups} group{'s' * (groups != 1)} "
              f"of cases (one per grid point), dealt one a shard in turn, so shards past {groups}/{shard[1]} are "
              "empty", file=sys.stderr)
    if args.skip_predicted_oom and not device.startswith("cuda"):
        print(f"bench: warning: --skip-predicted-oom skips only on a GPU; on {device} every case runs, with its "
              "prediction recorded (as --predict)", file=sys.stderr)
    run_id = runner.new_run_id()
    resume = args.resume or args.retry_failed
    out = args.out or (latest_run(args, device, "{}/{}".format(*shard), [s.name for s in suites]) if resume
                       else Path("runs") / run_id)
    if resume and args.out and not Path(args.out).exists():  # start-or-continue scripts rely on this: said, not refused
        print(f"bench: warning: {args.out} does not exist: nothing to resume, a new run starts there", file=sys.stderr)
    warn_ratios_lost(args, planned, registry, out)
    argv = getattr(args, "argv", sys.argv[1:])
    cfg = runner.RunConfig(suites=suites, size=args.size, device=device, out=out, variants=args.variant,
                           shard=shard, where=where or None, cases_like=args.case, timeout_s=args.timeout,
                           launch=how, inline=args.inline, resume=resume, run_id=run_id, budget_s=args.budget,
                           threads=args.threads, argv=["bench", *argv], retry_failed=args.retry_failed,
                           cpus=cpus, wait_idle_s=args.wait_idle, predict=args.predict or args.skip_predicted_oom,
                           skip_predicted_oom=args.skip_predicted_oom)
    console = Console()

    def opened():  # once --out is found fit: a usage error is said at once, without this sample's second or two
        say_if_cache_unwritable()
        disturbed = doctor.critical_warning(device, since=since)
        if disturbed:  # beside the run's progress and summary: it is about what this run measures
            print(f"bench: warning: {disturbed}", flush=True)

    said = os.environ.get(CACHE_UNWRITABLE)
    try:
        code, records = runner.run(cfg, make_progress(console), opened)
    except runner.RunDirError as e:
        raise UsageError(str(e)) from None
    except OSError as e:  # e.g. a full disk: every record already written is intact, --resume continues
        print(f"bench: cannot write to {out}: {e.strerror or e}; finished records are kept, "
              f"`{rundir.resume_command(argv, out)}` continues", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:  # Ctrl-C, SIGTERM or SIGHUP: the cases' processes are ended, finished records kept
        return _stopped(e, argv, out)
    finally:  # this run's news: another run in this process (a notebook's, a test's) checks the cache afresh
        if said is None:
            os.environ.pop(CACHE_UNWRITABLE, None)
        else:
            os.environ[CACHE_UNWRITABLE] = said
    try:
        return _finish(args, argv, out, planned, code, records, write_report)
    except KeyboardInterrupt as e:  # after the last case, at the summary or report.html: the same resume writes them
        return _stopped(e, argv, out)


def _stopped(e: KeyboardInterrupt, argv: list[str], out: Path) -> int:
    """What a stopped run says, with the command that continues it (for a run whose cases all ran, that command runs
    none and writes its report.html), and its exit code."""
    say(f"bench: {stopped_by(e)}; finished records are kept in {out}, `{resume_command(argv, out)}` continues")
    return stop_code(e)


def _finish(args, argv: list[str], out: Path, planned, code: int, records, write_report) -> int:
    """After the run's last case: its summary, what it left unrun, and its report.html; the command's exit code."""
    print(summary(records, out))
    if (disturbed := contended_line(records)) is not None:
        print(f"bench: warning: {disturbed}")
    meta = read_run_json(out) or {}
    not_run = meta.get("not_run") or []
    if stopped := set(not_run) & {c.id for c in planned}:  # this command's own cases: its --budget ran out
        print(f"bench: the --budget of {args.budget:g} s ran out with {len(stopped)} cases not run (listed in "
              f"{out / 'run.json'} under not_run); `{resume_command(argv, out)}` runs them", file=sys.stderr)
    elif not_run:
        print(f"bench: {out} stays unfinished: {len(not_run)} cases of the selection it was started for have no "
              f"record (listed in {out / 'run.json'} under not_run); `{command_of(meta, out)}` runs them",
              file=sys.stderr)
    if (why := write_report(out)) is not None:  # the records are whole, but a script's next step needs the page
        print(f"bench: error: no report.html ({path_text(why)}); the records are kept, `bench report "
              f"{shell_word(out)} -o FILE` retries", file=sys.stderr)  # path_text: `why` names the path
        return code or 1
    return code


def summary(records, out: Path) -> str:
    """The run's last line: its cases by status, and how many of those timed were contended (other work ran while
    they were timed), so that a run whose timings measured the load does not end on a line that reads clean."""
    tally = ", ".join(f"{n} {s}" for s, n in sorted(Counter(r.status for r in records).items()))
    line = f"{len(records)} case{'s' * (len(records) != 1)}{': ' + tally if tally else ''}"
    judged = [r.metrics.get("contended") for r in records if r.status == "ok"]
    if contended := judged.count(True):
        timed = sum(c is not None for c in judged)
        line += f" ({contended} of the {timed} timed case{'s' * (timed != 1)} contended)"
    return f"{line} -> {path_text(out)}"


def contended_line(records) -> str | None:
    """The warning under a run's last line where some of its cases ran contended: the reason of the most disturbed
    and what it means; None when none did. A load that began after the run's start is said nowhere else on the
    console, and the run still exits 0: a contended case is a result, not a failure."""
    from bench.interference import reason

    hit = [r for r in records if r.status == "ok" and r.metrics.get("contended") is True]
    if not hit:
        return None
    worst = max(hit, key=lambda r: r.metrics.get("host_other_cpus") or 0.0)
    return (f"other load disturbed the timings of {len(hit)} case{'s' * (len(hit) != 1)} (the most: "
            f"{reason(worst.metrics) or 'flagged contended'}); the report lists each with its reason, and `bench "
            "compare` calls such timings contended, not faster or slower: rerun them on a quiet machine (`bench "
            "doctor` says what is busy)")


def cache_unwritable() -> str | None:
    """Why the folder where suites cache what they train (TECHBENCH_CACHE, bench.catalog.cache_dir) cannot be created
    and written, or None when it can."""
    from bench.catalog import cache_dir

    root = cache_dir()
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".bench-probe-"):
            pass
    except OSError as e:
        return f"{root}: {e.strerror or e}"
    return None


def say_if_cache_unwritable() -> None:
    """One line, before the first case, when the cache folder cannot be written; the cases (which inherit this
    environment) then stay quiet about each write that fails."""
    why = cache_unwritable()
    if why is None:
        return
    print(f"bench: warning: the cache folder cannot be written ({why}): each case that trains a model or reference "
          "trains it again, and nothing trained is kept; point TECHBENCH_CACHE at a writable folder", file=sys.stderr)
    os.environ[CACHE_UNWRITABLE] = "1"


def latest_run(args, device: str, shard: str, suites: list[str]) -> Path:
    """--resume without --out: the latest unfinished run under runs/ made the same way, said aloud."""
    from bench import rundir

    try:
        out = rundir.latest_unfinished(Path("runs"), (args.size, device, shard), suites, args.retry_failed)
    except rundir.RunDirError as e:
        raise UsageError(str(e)) from None
    print(f"bench: resuming {out}, the latest unfinished {args.size} run on {device} under runs/ (--out names "
          "another)", file=sys.stderr)
    return out
