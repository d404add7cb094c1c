"""The `bench` command: list, run, env.

Exit codes: 0 every case finished (ok, oom and skipped are results); 1 a case errored or timed out; 2 bad usage or bad
input, with a one-line reason naming the valid choices, and nothing existing overwritten.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections import Counter
from pathlib import Path

from bench.runner import DEFAULT_TIMEOUT_S
from bench.suite import SIZES, discover


class UsageError(Exception):
    """Bad usage or input: printed as one line, exit 2."""


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
    r.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="S",
                   help=f"seconds per case (default: {DEFAULT_TIMEOUT_S:g})")
    r.add_argument("--inline", action="store_true", help="run cases in this process (debugging; no timeout)")
    r.add_argument("--resume", action="store_true", help="continue OUT, skipping cases it already finished")

    e = sub.add_parser("env", help="the environment fingerprint that runs record")
    e.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def _parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        i = n = 0
    if not 1 <= i <= n:
        raise UsageError(f"--shard must be I/N with 1 <= I <= N (e.g. 1/2), got {text!r}")
    return i, n


def parse_params(text: str | None) -> dict[str, str]:
    """'k=v,k2=v2' -> {'k': 'v', 'k2': 'v2'}."""
    if not text:
        return {}
    pairs = [item.partition("=") for item in text.split(",")]
    if any(not k or not sep for k, sep, _ in pairs):
        raise UsageError(f"--params must be k=v[,k=v...], got {text!r}")
    return {k.strip(): v.strip() for k, _, v in pairs}


def _resolve_device(text: str) -> str:
    import torch

    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return text
    if text == "cuda" or (text.startswith("cuda:") and text[5:].isdigit()):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {text}: CUDA is not available here (torch {torch.__version__}); "
                             "valid: auto, cpu")
        index, count = (int(text[5:]) if ":" in text else 0), torch.cuda.device_count()
        if index >= count:
            raise UsageError(f"--device {text}: this machine has {count} CUDA device(s) "
                             f"(valid: cuda:0..cuda:{count - 1})")
        return f"cuda:{index}"  # records name the exact device
    raise UsageError(f"unknown --device {text!r} (valid: auto, cpu, cuda, cuda:N)")


def _select(registry: dict, names: list[str], variants: list[str] | None):
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise UsageError(f"unknown suite {unknown[0]!r} (valid: {', '.join(sorted(registry))})")
    suites = [registry[n] for n in (names or sorted(registry))]
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

    registry = discover()
    suites = _select(registry, args.suites, args.variant)
    shard = _parse_shard(args.shard)
    if args.timeout <= 0:
        raise UsageError(f"--timeout must be positive, got {args.timeout:g}")
    device = _resolve_device(args.device)
    where = parse_params(args.params)
    if where and not runner.plan(suites, args.size, device, args.variant, where=where):
        keys = sorted({k for s in suites for p in s.grid(args.size, device) for k in p})
        raise UsageError(f"no {args.size} case matches --params {args.params} (params: {', '.join(keys)})")
    run_id = runner.new_run_id()
    out = args.out or Path("runs") / run_id
    cfg = runner.RunConfig(suites=suites, size=args.size, device=device, out=out, variants=args.variant,
                           shard=shard, where=where or None, timeout_s=args.timeout, inline=args.inline,
                           resume=args.resume, run_id=run_id, argv=["bench", *sys.argv[1:]])
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
    return code


def cmd_list(args) -> int:
    registry = discover()
    rows = [{"name": s.name, "description": s.description, "reference": s.reference_variant(),
             "variants": dict(s.variants),
             "cases": {size: len(s.grid(size, "cpu")) * len(s.variants) for size in SIZES}}
            for s in (registry[n] for n in sorted(registry))]
    if args.json:
        print(json.dumps({"suites": rows, "sizes": list(SIZES)}, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table("suite", "variants (reference first)", *(f"{size} cases" for size in SIZES), title="techbench suites")
    for row in rows:
        variants = [row["reference"]] + [v for v in row["variants"] if v != row["reference"]]
        table.add_row(f"{row['name']}\n[dim]{row['description']}[/]", ", ".join(variants),
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


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    print(f"bench: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    warnings.showwarning = _one_line_warning
    try:
        args = _parser().parse_args(argv)
        return {"run": cmd_run, "list": cmd_list, "env": cmd_env}[args.command](args)
    except UsageError as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted; finished records are kept, rerun with --resume", file=sys.stderr)
        return 130
