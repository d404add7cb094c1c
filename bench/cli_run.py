"""`bench run`'s command line: its options, their checks, and the command. bench.cli builds the parser from
`add_arguments` and dispatches to `cmd_run`.

Every option is checked before anything is imported or created: a bad one exits 2 with one line (bench.cli.main).
"""

from __future__ import annotations

import difflib
import math
import os
import socket
import sys
import tempfile
import warnings
from collections import Counter
from contextlib import suppress
from pathlib import Path

from bench.commands import UsageError
from bench.distributed import Launch
from bench.records import RECORDS_JSONL, SchemaError, case_id, glob_escape, path_text, read_run_json, scan_records
from bench.rundir import shell_word
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


def no_case_matches(suites, size: str, device: str, where: dict[str, str], text: str, variants=None,
                    world_size: int = 1, world_flag: str = "--world-size") -> UsageError:
    """The error for --params that select no case: the values each given key takes in the grid (a typo'd value or key
    shows at once) and every key; or that the values are each in the grid but never together; or, where grid points
    match and --variant has no case at them, that. A distributed suite's world_size is the launch's (`world_flag`
    sets it), not a grid key."""
    grid = [{**p, **({"world_size": world_size} if s.world_sizes else {})}
            for s in suites for p in s.grid(size, device)]
    if variants and any(_matches(p, where) for p in grid):
        return UsageError(f"no {size} case of --variant {' '.join(variants)} matches --params {text} (the variants "
                          "have no case at those grid points)")
    told = []
    for key, wanted in where.items():
        values = {repr(p[key]): p[key] for p in grid if key in p}  # by repr: a plug-in's value may be a list
        ordered = sorted(values.values(), key=lambda v: (0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v)))
        if key == "world_size" and any(s.world_sizes for s in suites):
            sizes = sorted({n for s in suites for n in s.world_sizes})
            told.append(f"world_size is {world_size}, the launch's: set it with {world_flag}; the suite runs at "
                        f"{', '.join(map(str, sizes))}")
        elif not values:
            told.append(f"{key} is no param")
        elif wanted not in {str(v) for v in ordered}:
            told.append(f"{key} takes {', '.join(map(str, ordered))}")
    if not told:
        told.append("each value is in the grid, but no grid point has them all")
    keys = sorted({k for p in grid for k in p})
    return UsageError(f"no {size} case matches --params {text} ({'; '.join(told)}; params: {', '.join(keys)})")


def warn_unused_selection(args, suites, cases, how, registry) -> None:
    """One warning line for what the command names but will not run: a suite named on the command line that the
    other filters leave without a case (`bench run mla fp8 --case 'mla/*'`), and a launch for distributed suites
    (--nproc-per-node, --nnodes) when none is selected."""
    planned = {c.suite for c in cases}
    for name in dict.fromkeys(args.suites):
        if name not in planned:
            print(f"bench: warning: no {args.size} case of {name} passes --variant, --params, --case and --shard "
                  "here: it will not run", file=sys.stderr)
    if how.world_size > 1 and not any(s.world_sizes for s in suites):
        print("bench: warning: --nproc-per-node and --nnodes launch the distributed suites only "
              f"({', '.join(sorted(n for n, s in registry.items() if s.world_sizes))}); none is selected",
              file=sys.stderr)


def warn_ratios_lost(args, cases, registry, out: Path) -> None:
    """One warning line a suite for the cases whose ratios to the reference variant cannot be taken: its case is
    neither among `cases` nor recorded in `out` already (a resumed run's), as `--variant full` or one --case leaves
    it."""
    ids, alone = {c.id for c in cases}, {}
    if args.resume or args.retry_failed:
        with warnings.catch_warnings(), suppress(SchemaError):  # the run says what is wrong with its records itself
            warnings.simplefilter("ignore")
            ids |= {r.case_id for r in scan_records(Path(out) / RECORDS_JSONL).records if r.status == "ok"}
    for c in cases:  # a ratio to the reference is taken against its case in the same run
        suite = registry[c.suite]
        ref = suite.reference_variant(c.params)
        if ref != c.variant and suite.relative_for(c.params) and case_id(c.suite, ref, c.params) not in ids:
            alone.setdefault((c.suite, ref), []).append(c)
    for (name, ref), lacking in alone.items():
        ratios = ", ".join(dict.fromkeys(r.name for c in lacking for r in registry[name].relative_for(c.params)))
        add = (f"add --case '{glob_escape(case_id(name, ref, lacking[0].params))}'" if args.case and len(lacking) == 1
               else "add its cases with --case" if args.case else f"add --variant {ref}")
        print(f"bench: warning: {len(lacking)} case{'s' * (len(lacking) > 1)} of {name} will run without the case of "
              f"its reference variant {ref}: no {ratios} ({add})", file=sys.stderr)


def nearest(glob: str, ids: list[str], where: str) -> str:
    """"; the nearest on WHERE: ID" for the case id most like `glob` (a case id copied from a run on another device,
    whose grid differs: a GPU's runs bfloat16 where a CPU's runs float32), else ""."""
    near = difflib.get_close_matches(glob, ids, n=1, cutoff=0.6)
    return f"; the nearest on {where}: {near[0]}" if near else ""


def _matches(params: dict, where: dict[str, str]) -> bool:
    return all(str(params.get(k)) == str(v) for k, v in where.items())


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


def select(registry: dict, names: list[str], variants: list[str] | None):
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise UsageError(f"unknown suite {unknown[0]!r} (valid: {', '.join(sorted(registry))})")
    suites = [registry[n] for n in dict.fromkeys(names or sorted(registry))]  # a suite named twice runs once
    if variants:
        valid = sorted({v for s in suites for v in s.variants})
        bad = [v for v in variants if v not in valid]
        if bad and bad[0] in registry:  # `--variant full checkpointing`: --variant takes every word after it
            named = " ".join([*names, *(v for v in bad if v in registry)])
            rest = " ".join(v for v in variants if v not in registry)
            raise UsageError(f"{bad[0]!r} is a suite, not a variant: name suites before --variant ({named}"
                             f"{' --variant ' + rest if rest else ', and a variant after --variant'})")
        if bad:
            near = difflib.get_close_matches(bad[0], valid, n=3)
            raise UsageError(f"unknown variant {bad[0]!r} for {', '.join(s.name for s in suites)} "
                             f"({'did you mean ' + ' or '.join(near) + '? ' if near else ''}valid: {', '.join(valid)})")
    return suites


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
        host, _, port = how.rdzv_endpoint.rpartition(":")
        try:
            socket.getaddrinfo(host.strip("[]"), int(port))
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
    warn_unused_selection(args, suites, runner.plan(suites, args.size, device, args.variant, shard, where or None,
                                                    how.world_size, args.case), how, registry)
    if args.skip_predicted_oom and not device.startswith("cuda"):
        print(f"bench: warning: --skip-predicted-oom skips only on a GPU; on {device} every case runs, with its "
              "prediction recorded (as --predict)", file=sys.stderr)
    run_id = runner.new_run_id()
    resume = args.resume or args.retry_failed
    out = args.out or (latest_run(args, device, "{}/{}".format(*shard), [s.name for s in suites]) if resume
                       else Path("runs") / run_id)
    if resume and args.out and not Path(args.out).exists():  # start-or-continue scripts rely on this: said, not refused
        print(f"bench: warning: {args.out} does not exist: nothing to resume, a new run starts there", file=sys.stderr)
    warn_ratios_lost(args, runner.plan(suites, args.size, device, args.variant, shard, where or None, how.world_size,
                                       args.case), registry, out)
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
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the cases' processes are ended, finished records kept
        print(f"bench: interrupted; finished records are kept in {out}, `{rundir.resume_command(argv, out)}` "
              "continues", file=sys.stderr)
        return 130
    finally:  # this run's news: another run in this process (a notebook's, a test's) checks the cache afresh
        if said is None:
            os.environ.pop(CACHE_UNWRITABLE, None)
        else:
            os.environ[CACHE_UNWRITABLE] = said
    counts = Counter(r.status for r in records)
    print(f"{len(records)} cases: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
          + f" -> {path_text(out)}")
    meta = read_run_json(out) or {}
    not_run = meta.get("not_run") or []
    selected = {c.id for c in runner.plan(suites, args.size, device, args.variant, shard, where or None,
                                          how.world_size, args.case)}
    if stopped := set(not_run) & selected:  # this command's own cases: its --budget ran out
        print(f"bench: the --budget of {args.budget:g} s ran out with {len(stopped)} cases not run (listed in "
              f"{out / 'run.json'} under not_run); `{rundir.resume_command(argv, out)}` runs them", file=sys.stderr)
    elif not_run:
        print(f"bench: {out} stays unfinished: {len(not_run)} cases of the selection it was started for have no "
              f"record (listed in {out / 'run.json'} under not_run); `{rundir.command_of(meta, out)}` runs them",
              file=sys.stderr)
    if (why := write_report(out)) is not None:  # the records are whole, but a script's next step needs the page
        print(f"bench: error: no report.html ({path_text(why)}); the records are kept, `bench report "
              f"{shell_word(out)} -o FILE` retries", file=sys.stderr)  # path_text: `why` names the path
        return code or 1
    return code


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
