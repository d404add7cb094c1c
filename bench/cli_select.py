"""What a command line selects (suites, variants, cases) and what it names but will not run: the one-line errors of a
selection that matches nothing, with the choices it could have named, and the warnings of a selection that loses
something (a suite filtered out, ratios without their reference). `bench run` and `bench plan` share them.
"""

from __future__ import annotations

import difflib
import sys
import warnings
from contextlib import suppress
from pathlib import Path

from bench.case_ids import case_id, glob_escape
from bench.commands import UsageError
from bench.records import RECORDS_JSONL, SchemaError, scan_records


def select(registry: dict, names: list[str], variants: list[str] | None):
    unknown = [n for n in names if n not in registry]
    if unknown:
        name, valid = unknown[0], sorted(registry)
        near = difflib.get_close_matches(name, valid, n=3)
        hint = f"did you mean {' or '.join(near)}? " if near else ""
        if not near and (owners := [s for s in valid if name in registry[s].variants]):  # `bench run full`
            hint = f"{name} is a variant of {', '.join(owners)}: {owners[0]} --variant {name}; "
        raise UsageError(f"unknown suite {name!r} ({hint}valid: {', '.join(valid)})")
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
