"""A case's identity and the command line that selects it alone: case_id (the key resume, shard, compare and history
join on), the shell-style glob that matches one case id and no other, and the `bench run` line that runs a case again.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

NAME = re.compile(r"[A-Za-z0-9_.+-]+")
"""What a suite's or variant's name may hold: a case_id joins them with "/" (and `bench run` splits it there), a name
is a --variant word and a --case glob's text, and a suite's is a file's name (reports/figures/<suite>.py)."""
NAME_RULE = "names other than letters, digits and _ . + - (a case_id is suite/variant/params)"


def case_id(suite: str, variant: str, params: dict[str, Any]) -> str:
    """suite/variant/k=v,... with params sorted by key: the identity that resume, shard and compare join on."""
    return f"{suite}/{variant}/" + ",".join(f"{k}={params[k]}" for k in sorted(params))


def reproduce_command(suite: str, variant: str, params: dict, size: str, device: str,
                      reference: str | None = None, nodes: tuple[int, str] | None = None) -> str:
    """The `bench run` line that runs exactly this case again: its case_id as a --case glob that matches it alone
    (--params would also match the cases with params of their own beyond it), and the case of its `reference` variant
    (same params) beside it, whose timing and bytes its ratios to the reference are taken against. A distributed
    case's world_size becomes --nproc-per-node on one node, or over `nodes` (the --nnodes and --rdzv-endpoint of the
    run that measured it) the line each node runs."""
    ids = [case_id(suite, variant, params)]
    if reference and reference != variant:
        ids.append(case_id(suite, reference, params))
    cases = " ".join(f"--case {shlex.quote(glob_escape(i))}" for i in ids)
    ranks, each = "", ""
    if "world_size" in params:
        world = int(params["world_size"])
        if nodes and nodes[0] > 1 and world % nodes[0] == 0:
            ranks = f" --nnodes {nodes[0]} --nproc-per-node {world // nodes[0]} --rdzv-endpoint {shlex.quote(nodes[1])}"
            each = f"  # on each of the {nodes[0]} nodes"
        else:
            ranks = f" --nproc-per-node {world}"
    return f"bench run {suite} --size {size} --device {device}{ranks} {cases}{each}"


def nodes_of_run(meta: dict) -> tuple[int, str] | None:
    """nodes_of the command that measured a run: its own argv, or a merged run's (bench merge) shards' argv."""
    entries = meta.get("merged_from") if isinstance(meta.get("merged_from"), list) else []
    for argv in [meta.get("argv"), *(e.get("argv") for e in entries if isinstance(e, dict))]:
        if isinstance(argv, list) and (nodes := nodes_of([str(a) for a in argv])) is not None:
            return nodes
    return None


def nodes_of(argv: list[str]) -> tuple[int, str] | None:
    """The --nnodes and --rdzv-endpoint of a `bench run` command line (run.json's argv) launched over several nodes;
    None for one node."""
    found = {}
    for i, arg in enumerate(argv):
        name, eq, value = arg.partition("=")
        for flag in ("--nnodes", "--rdzv-endpoint"):
            # argparse takes an unambiguous prefix (--nn 2, --rdzv=HOST:PORT): a command that ran used one only so
            if len(name) > 2 and name.startswith("--") and flag.startswith(name):
                if eq:
                    found[flag] = value
                elif i + 1 < len(argv):
                    found[flag] = argv[i + 1]
    try:
        n = int(found.get("--nnodes", 1))
    except ValueError:
        return None
    return (n, found["--rdzv-endpoint"]) if n > 1 and "--rdzv-endpoint" in found else None


def glob_escape(text: str) -> str:
    """`text` as a shell-style glob (fnmatch) that matches it alone: [, * and ? as one-character classes."""
    return re.sub(r"([\[*?])", r"[\1]", text)
