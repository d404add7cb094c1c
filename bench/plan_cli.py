"""`bench plan`'s command line: its options, the GPU it plans for, the table and the JSON. bench.cli builds the parser
from `add_arguments` and dispatches to `cmd_plan` (which also writes the page: reports/ is the command layer's).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from bench import hardware
from bench.commands import UsageError, console, output_file
from bench.interference import affinity
from bench.labels import case_labels, group_of
from bench.suite import SIZES, case_id

GIB = 1 << 30


def add_arguments(p) -> None:
    p.add_argument("suites", nargs="*", metavar="SUITE", help="suites to plan (default: all)")
    p.add_argument("--size", default="quick", choices=SIZES, help="grid size (default: quick)")
    p.add_argument("--gpu", default="auto", metavar="NAME",
                   help=f"the GPU to plan for: {', '.join(hardware.known())}, or the name torch reports (h100 and "
                        "a100: the SXM parts); auto: this machine's GPU; cpu: this machine's CPU and memory "
                        "(default: auto)")
    p.add_argument("--variant", nargs="+", action="extend", metavar="NAME", help="only these variants")
    p.add_argument("--params", metavar="K=V,...", help="only cases whose params match (e.g. batch=8)")
    p.add_argument("--set", metavar="K=V,...", dest="changes",
                   help="plan the cases selected with these params changed, sizes no grid holds (e.g. batch=64: "
                        "does it fit?)")
    p.add_argument("--case", action="append", metavar="GLOB",
                   help="only cases whose case_id matches this shell-style glob (repeatable: any of them), as "
                        "`bench run --case`, e.g. a case id copied from a report")
    p.add_argument("--world-size", type=int, default=1, metavar="N",
                   help="plan the distributed suites' cases as one rank of N (what each GPU of a run with N ranks "
                        "holds; default 1)")
    p.add_argument("-j", "--jobs", type=int, default=None, metavar="N",
                   help="plan in N processes, one CPU each (default: the CPUs this process may use; one with --gpu "
                        "auto, which initialises CUDA)")
    p.add_argument("--json", action="store_true", help="machine-readable output: one JSON object")
    p.add_argument("-o", "--output", type=Path, metavar="FILE.html",
                   help="also draw the plan: predicted memory per case against the GPU's memory, and the roofline")


def resolve_gpu(name: str) -> tuple[str, str | None, int | None]:
    """(target device type, GPU name in bench.hardware's table or None, memory capacity in bytes)."""
    typed = name.strip().lower()
    if typed == "cpu":
        return "cpu", None, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if typed == "auto":
        import torch

        if not torch.cuda.is_available():
            raise UsageError("--gpu auto: this machine has no CUDA GPU; name the one to plan for "
                             f"(--gpu {', '.join(hardware.known())}) or --gpu cpu")
        local = torch.cuda.get_device_name(0)
        capacity = hardware.memory_bytes(local) or torch.cuda.get_device_properties(0).total_memory
        return "cuda", hardware.resolve(local) or local, capacity
    resolved = hardware.resolve(typed)
    if resolved is None:
        raise UsageError(f"--gpu {name}: unknown GPU (valid: {', '.join(hardware.known())}, h100, a100, auto, "
                         "cpu; a GPU outside the table is planned on it with --gpu auto)")
    return "cuda", resolved, hardware.memory_bytes(resolved)


def predictions(args, discover) -> tuple[list, dict]:
    """Plan what the arguments select; (predictions, a summary of the plan)."""
    from bench.cli_run import parse_params
    from bench.cli_select import nearest, no_case_matches, select
    from bench.plan import grid_device, plan, plan_points

    suites = select(discover(), args.suites, args.variant)  # first: a typo'd suite is the error, whatever --gpu says
    target, gpu, capacity = resolve_gpu(args.gpu)
    start = time.monotonic()
    jobs = args.jobs if args.jobs is not None else len(affinity(os.getpid()) or ()) or os.cpu_count() or 1
    if jobs < 1:
        raise UsageError(f"--jobs must be at least 1, got {jobs}")
    if args.world_size < 1:
        raise UsageError(f"--world-size must be at least 1, got {args.world_size}")
    check_world_size(args.world_size, suites)
    where, changes = parse_params(args.params), parse_params(getattr(args, "changes", None), "--set")
    try:
        changed = plan_points(suites, args.size, target, args.variant, where, args.world_size, args.case, changes)
    except ValueError as e:  # a param the cases lack, or a value not of its type
        raise UsageError(str(e)) from None
    if changes:  # the cases without those params (another suite's, another part's) are left out: say whose
        left = {s.name for s, _, _ in plan_points(suites, args.size, target, args.variant, where, args.world_size,
                                                  args.case)} - {s.name for s, _, _ in changed}
        if left:
            print(f"bench: warning: --set {', '.join(changes)}: no case of {', '.join(sorted(left))} has "
                  f"{'that param' if len(changes) == 1 else 'those params'}: left out", file=sys.stderr)
    if where and not plan_points(suites, args.size, target, args.variant, where, args.world_size):
        raise no_case_matches(suites, args.size, grid_device(target), where, args.params, args.variant,
                              args.world_size)
    narrowed = ", ".join(flag for flag, given in (("--variant", args.variant), ("--params", where),
                                                   ("--world-size", args.world_size != 1)) if given)
    for glob in args.case or ():  # each glob must match something: a typo would silently drop its cases
        if not plan_points(suites, args.size, target, args.variant, where, args.world_size, [glob]):
            among = f"it matches none of the cases that {narrowed} leave" if narrowed else "case ids are " \
                "suite/variant/k=v,... with keys sorted; `bench list` names the suites and variants"
            ids = [case_id(s.name, v, p) for s, p, vs in plan_points(suites, args.size, target, args.variant, where,
                                                                      args.world_size) for v in vs]
            raise UsageError(f"no {args.size} case matches --case {glob!r} ({among}{nearest(glob, ids, target)})")
    out = plan(suites, args.size, target, gpu, args.variant, where, capacity, jobs, Progress(sys.stderr, start),
               world_size=args.world_size, cases_like=args.case, changes=changes)
    summary = {"size": args.size, "target": target, "gpu": gpu, "capacity_bytes": capacity, "changed": changes,
               "elapsed_s": round(time.monotonic() - start, 2), "cases": len(out),
               "plannable": sum(p.status == "ok" for p in out), "fits": sum(p.fits is True for p in out)}
    return out, summary


def check_world_size(world_size: int, suites) -> None:
    """--world-size is the launch of the distributed suites: a size none of the selected ones runs at is refused
    (their every case would be listed skipped), and one given where none is selected is said to change nothing."""
    distributed = [s for s in suites if s.world_sizes]
    if world_size != 1 and not distributed:
        print(f"bench: warning: --world-size {world_size} plans the distributed suites only; none is selected",
              file=sys.stderr)
    elif distributed and all(why := [s.unsupported_world_size(world_size) for s in distributed]):
        raise UsageError(f"--world-size {world_size}: " + "; ".join(why))


class Progress:
    """How far a plan is, on `stream`: one line rewritten in place on a terminal; on a pipe or log, a line at each
    tenth of the cases (a full plan takes minutes)."""

    def __init__(self, stream, start: float, clock=time.monotonic):
        self.stream, self.start, self.clock, self.shown = stream, start, clock, 0
        self.live = hasattr(stream, "isatty") and stream.isatty()

    def __call__(self, planned: int, total: int) -> None:
        tenth = planned * 10 // max(1, total)
        if not self.live and tenth == self.shown and planned < total:
            return
        self.shown = tenth
        line = f"planned {planned}/{total} cases in {self.clock() - self.start:.0f} s"
        if self.live:
            self.stream.write("\r" + line + ("\n" if planned == total else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def _gib(n: int | None, unit: int = GIB) -> str:
    return "" if n is None else f"{n / unit:.2f}"


UNITS = ((GIB, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB"))


def _unit(preds) -> tuple[int, str]:
    """The table's unit of bytes: GiB, or MiB or KiB where the largest peak is under one of the next (smoke sizes'
    peaks are a few MiB, which GiB would show as 0.00)."""
    largest = max((p.peak_bytes or 0 for p in preds), default=0)
    return next(((size, name) for size, name in UNITS if largest >= size), UNITS[-1])


def _reserved_meaning(target: str) -> str:
    """What the reserved column holds for the plan's target: the CUDA caching allocator's segments, or nothing on a
    CPU, where torch keeps no cache of freed memory."""
    if target == "cpu":
        return "reserved: none on a CPU (torch keeps no cache of CPU memory)"
    return "reserved: the CUDA caching allocator's segments"


def render(preds, summary, console) -> None:
    from rich.markup import escape
    from rich.table import Table

    where, (unit, unit_name) = summary["gpu"] or "this CPU", _unit(preds)
    target = summary.get("target") or ("cuda" if summary["gpu"] else "cpu")
    table = Table("case", f"peak {unit_name}", "reserved", "params", "grads", "optim", "saved act", "inputs",
                  "transient", "GFLOP", "GB moved", "roofline ms", "fits",
                  title=f"bench plan: {summary['size']} on {where} ({_gib(summary['capacity_bytes'])} GiB)",
                  caption=f"{unit_name} columns but the last three; {_reserved_meaning(target)}; "
                          "fits: peak + headroom (1 GiB + 10% of the peak) <= memory")
    groups, names, shared = {}, {}, {}
    for p in preds:  # labelled within each suite, or each part of one
        groups.setdefault(group_of(p.suite, p.params), []).append(p)
    for group, mine in groups.items():
        labels, shared[group] = case_labels([(p.variant, p.params) for p in mine])
        # the part in each row: a part of one grid point is labelled by its variant alone (fp8's gemm and training)
        names.update((id(p), escape(f"{p.suite}/{label}" + (f" part={p.params['part']}" if "part" in p.params
                                                             else ""))) for p, label in zip(mine, labels))
    for p in preds:
        name = names[id(p)]
        if p.attention:  # "math" in yellow: that attention holds its S x S scores on the target
            name += "\n[dim]attention:[/] " + ", ".join(f"[yellow]{k}[/]" if k == "math" else k for k in p.attention)
        if p.status != "ok":
            table.add_row(name, f"[yellow]{p.status.replace('_', ' ')}[/]: {escape(p.reason or '')}",
                          end_section=False)  # escaped: a reason's `.[ecosystem]` is no markup tag
            continue
        verdict = {True: "[green]yes[/]", False: "[red]no[/]", None: "?"}[p.fits]
        roof = "" if p.roofline_ms is None else f"{p.roofline_ms:.3g}"
        table.add_row(name, _gib(p.peak_bytes, unit), _gib(p.reserved_bytes, unit), *(_gib(p.parts[k], unit) for k in
                      ("parameters", "gradients", "optimizer", "activations", "inputs", "transient")),
                      f"{p.flops / 1e9:.4g}", f"{p.bytes_moved / 1e9:.4g}", roof, verdict)
    console.print(table)
    hosted = [f"{names[id(p)]} {_gib(p.host_bytes, unit)} {unit_name}" for p in preds if p.host_bytes]
    if hosted:  # pinned host memory, which no fits verdict checks
        console.print("[dim]host memory of offload's copies, in no fits verdict:[/] " + "; ".join(hosted))
    for group, common in shared.items():
        if common:
            console.print(f"[dim]every {escape(group)} case here:[/] "
                          + escape(", ".join(f"{k}={v}" for k, v in common.items())))
    console.print(f"{summary['cases']} cases, {summary['plannable']} plannable, {summary['fits']} fit; "
                  f"planned in {summary['elapsed_s']} s")


def cmd_plan(args, discover, write_page) -> int:
    """`bench plan`. `write_page(records, summary, path)` draws the page (reports/, imported by the command layer)."""
    import json

    if args.output is not None:  # before planning: a page that cannot be written is said at once
        output_file(args.output, ".html")
    preds, summary = predictions(args, discover)
    records = [p.to_json() for p in preds]
    if args.json:
        json.dump({**summary, "predictions": records}, sys.stdout, indent=2)
        print()
    else:
        out = console()
        render(preds, summary, out if out.is_terminal else console(width=180))  # a pipe: 80 columns else
    if args.output is not None:
        print(f"plan -> {write_page(records, summary, args.output)}", file=sys.stderr if args.json else sys.stdout)
    return 0
