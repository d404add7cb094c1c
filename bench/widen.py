"""What a run covers, as one command line: a --resume that selects more than the run was started for (another
--variant, --case or --params) widens run.json's argv and variants to the union of both selections, so that the
command that continues the run (bench.rundir.command_of: printed by a narrower resume, report, history add and merge)
runs every case of it, those the resume added included.
"""

from __future__ import annotations

from typing import Callable

SELECTING = ("--variant", "--case", "--params")
"""`bench run`'s options that select cases (bench.cli_run): --variant takes one or more names, --case and --params
one value each (--case repeats)."""


def _option(token: str) -> str | None:
    """The selecting option `token` names, in full or as a prefix argparse takes (`--var`), or None."""
    name = token.split("=", 1)[0]
    found = [o for o in SELECTING if len(name) >= 3 and o.startswith(name)]
    return found[0] if len(found) == 1 and token.startswith("--") else None


def split(argv: list[str]) -> tuple[list[str], dict]:
    """argv without its selecting options, and what they select: {option: list of values}, absent where not given
    (every variant, case or params)."""
    kept, chosen, i = [], {}, 0
    while i < len(argv):
        option = _option(argv[i])
        if option is None:
            kept.append(argv[i])
            i += 1
            continue
        _, eq, value = argv[i].partition("=")
        i += 1
        if eq:
            values = [value]
        elif option == "--variant":  # nargs="+": the words up to the next option
            values = []
            while i < len(argv) and not argv[i].startswith("-"):
                values.append(argv[i])
                i += 1
        else:
            values, i = argv[i:i + 1], i + 1
        chosen.setdefault(option, []).extend(values)
    return kept, chosen


def _params(values: list[str]) -> dict[str, str]:
    """--params k=v,... as argparse leaves it (the last one given wins), as a dict."""
    pairs = (item.partition("=") for item in values[-1].split(",")) if values else ()
    return {k.strip(): v.strip() for k, _, v in pairs}


def union(old: dict, new: dict) -> dict:
    """The selecting options that select what either selection does: each option's values joined, dropped where
    either selects everything of it; --params keeps the pairs both give alike. Exact where the two differ in one
    option; more than both otherwise."""
    out = {}
    for option in ("--variant", "--case"):
        if option in old and option in new:
            out[option] = list(dict.fromkeys([*old[option], *new[option]]))
    if "--params" in old and "--params" in new:
        a, b = _params(old["--params"]), _params(new["--params"])
        if common := {k: v for k, v in a.items() if b.get(k) == v}:
            out["--params"] = [",".join(f"{k}={v}" for k, v in common.items())]
    return out


def joined(kept: list[str], chosen: dict) -> list[str]:
    """`kept` with the selecting options of `chosen` after it."""
    words = list(kept)
    for option, values in chosen.items():
        words += [option, *values] if option == "--variant" else [w for v in values for w in (option, v)]
    return words


def widened(meta, cfg, finished, cases: list, plan: Callable) -> tuple[list[str], list[str] | None]:
    """run.json's (argv, variants) once a resume (RunConfig `cfg`) of the run `meta` (a RunMeta) plans `cases`: as
    they were unless some case is neither `finished` nor listed as not run; otherwise this command's argv with the
    union of both selections, or with none (the whole suites) where the union's plan (bench.runner.plan) would miss
    a case the run now covers that the whole suites hold."""
    covered = {*finished, *(meta.not_run or ())}
    if all(c.id in covered for c in cases):
        return meta.argv, meta.variants
    covered |= {c.id for c in cases}

    def ids(variants, where, globs):
        return {c.id for c in plan(cfg.suites, cfg.size, cfg.device, variants, cfg.shard, where,
                                   cfg.launch.world_size, globs)}

    kept, new = split(cfg.argv)
    kept = [w for w in kept if w != "--retry-failed"]  # how this resume ran, not what the run covers
    old = meta.argv
    chosen = union(split(old)[1], new) if isinstance(old, list) and old[:2] == ["bench", "run"] else {}
    where = _params(chosen["--params"]) if "--params" in chosen else None
    if not covered & ids(None, None, None) <= ids(chosen.get("--variant"), where, chosen.get("--case")):
        chosen = {}
    return joined(kept, chosen), chosen.get("--variant")
