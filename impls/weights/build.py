"""`python -m impls.weights build [--size smoke quick] [--only GLOB...] [--out DIR]`: train every shipped model
from scratch, seeded, as its suite would (same loader, key and thread count), and write it into impls/weights (or
DIR) with its quality.

Each model trains in a throw-away cache with the shipped files ignored (TECHBENCH_SHIPPED=0), so nothing already
shipped is reused. Its state dict is stored in fp16 (the rest of the payload as trained) under the name the user cache
would give it; reference.json records, per model, the training time, the file's bytes, and the quality figures of
the fp32 model as trained and of the fp16 one as shipped, which tests/impls/test_weights.py holds the shipped files to.
`python -m impls.weights check` says, without training, whether every model is shipped and matches its key.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from impls import cache
from impls.weights.recipes import SIZES, Artifact, artifacts

REFERENCE = cache.SHIPPED / "reference.json"


def slim(payload: dict, weights: str | None) -> dict:
    """The payload with the floating tensors of its `weights` state dict in fp16 (loading casts them back)."""
    if weights is None:
        return payload
    state = {k: v.half() if v.is_floating_point() else v for k, v in payload[weights].items()}
    return {**payload, weights: state}


@contextlib.contextmanager
def _env(**values: str):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _threads(n: int | None):
    before = torch.get_num_threads()
    torch.set_num_threads(n or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def build_one(a: Artifact, out: Path) -> dict:
    """Train `a` in the current (throw-away) cache, write its shipped file under `out`; its reference entry."""
    with _threads(a.threads):
        threads = torch.get_num_threads()
        t = time.perf_counter()
        source = a.load()
        train_s = time.perf_counter() - t
        if source != "built":
            raise RuntimeError(f"{a.name} was not trained ({source}): the build must start from an empty cache")
        trained = a.quality()
        staged = cache.entry(a.namespace, a.key)
        shipped = slim(cache.read(staged, a.key), a.weights)
        # the fp16 payload, scored as the loader will see it; a later model built on this one (reflow draws its
        # pairs from the flow model) then trains from what ships, as it would on a machine that has the package
        cache.write(staged, a.key, shipped)
        quality = a.quality()
    target = out / a.namespace / staged.name
    cache.write(target, a.key, shipped)
    return {"namespace": a.namespace, "file": f"{a.namespace}/{staged.name}", "bytes": target.stat().st_size,
            "train_s": round(train_s, 2), "threads": threads, "trained": trained,
            "shipped": quality, "built_with": {"torch": torch.__version__, "python": platform.python_version(),
                                               "machine": platform.machine()}}


def build(sizes=SIZES, only: list[str] | None = None, out: Path = cache.SHIPPED) -> dict:
    """Train and write the artifacts of `sizes` (those whose name matches a glob of `only`); returns reference.json's
    content, also written to `out`. Files of `out` that no entry names are removed. An artifact that cannot be
    trained here (Artifact.unavailable: torchvision's FPN where torchvision does not import) is said so and skipped,
    its entry and shipped file kept."""
    path = out / REFERENCE.name
    reference = json.loads(path.read_text()) if path.exists() else {"format": 1, "artifacts": {}}
    wanted = [a for size in sizes for a in artifacts(size) if not only or any(fnmatch.fnmatch(a.name, g) for g in only)]
    unbuilt = {a.name: why for a in wanted if (why := a.unavailable()) is not None}
    if not only:  # a whole size rebuilt: its entries are exactly what it lists now
        reference["artifacts"] = {k: v for k, v in reference["artifacts"].items()
                                  if k.split("/")[1] not in sizes or k in unbuilt}
    with tempfile.TemporaryDirectory() as staging, _env(TECHBENCH_CACHE=staging, TECHBENCH_SHIPPED="0"):
        for a in wanted:
            if a.name in unbuilt:
                print(f"{a.name}: not built here ({unbuilt[a.name]}); what ships is kept", file=sys.stderr)
                continue
            reference["artifacts"][a.name] = entry = build_one(a, out)
            print(f"{a.name}: {entry['train_s']:.1f} s, {entry['bytes'] / 1e3:.0f} kB, trained {entry['trained']}, "
                  f"shipped {entry['shipped']}", file=sys.stderr)
    reference["artifacts"] = dict(sorted(reference["artifacts"].items()))
    kept = {e["file"] for e in reference["artifacts"].values()}
    for stale in out.glob("*/*.pt"):
        if f"{stale.parent.name}/{stale.name}" not in kept:
            stale.unlink()
    path.write_text(json.dumps(reference, indent=1) + "\n")
    return reference


def check(sizes=SIZES) -> list[str]:
    """Names of the artifacts of `sizes` that are not shipped or whose shipped file does not hold their key."""
    return [a.name for size in sizes for a in artifacts(size)
            if cache.read(cache.shipped_entry(a.namespace, a.key), a.key) is None]


class _Progress(logging.Handler):
    """The training loops' progress records, as one line per model that a terminal sees advance."""

    def emit(self, record: logging.LogRecord) -> None:
        done, total = getattr(record, "done", 0), getattr(record, "total", 0)
        if sys.stderr.isatty():
            sys.stderr.write("\r" + record.getMessage() + ("\n" if done == total else ""))
        elif done == total:
            sys.stderr.write(record.getMessage() + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m impls.weights", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="train the shipped models and write them with their quality")
    b.add_argument("--size", nargs="+", choices=SIZES, default=list(SIZES))
    b.add_argument("--only", nargs="+", metavar="GLOB", help="artifact names, e.g. 'detection/quick/*'")
    b.add_argument("--out", type=Path, default=cache.SHIPPED, help="where to write (default: the package's folder)")
    c = sub.add_parser("check", help="is every model shipped and does it match its key (no training)")
    c.add_argument("--size", nargs="+", choices=SIZES, default=list(SIZES))
    args = parser.parse_args(argv)
    if args.command == "check":
        missing = check(args.size)
        print("\n".join(f"not shipped or stale: {name}" for name in missing) or "every model is shipped")
        return 1 if missing else 0
    progress = _Progress()
    cache.PROGRESS.addHandler(progress)
    cache.PROGRESS.setLevel(logging.INFO)
    try:
        build(args.size, args.only, args.out)
    finally:
        cache.PROGRESS.removeHandler(progress)
    return 0
