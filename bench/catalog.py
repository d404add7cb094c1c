"""What `bench list` prints (every suite's description, variants, libraries, world sizes and case count per size),
cached so that listing does not import torch.

The catalog is a function of code alone: the suites' modules, what they import, and the installed distributions. Its
cache key hashes the path, size and modification time of every .py file under the packages the suites come from
(suites/, impls/, bench/, and each `techbench.suites` plug-in's top-level package) and the name and version of every
installed distribution, so an edit to a suite, an upgraded library or a new plug-in rebuilds it. Listing imports
every suite, and with them torch: 2.3 s of the 2.5 s a cold `bench list` takes on an idle 2-core VM; the cached
answer takes a tenth of that. Written by hand: no library caches the result of importing a plug-in set.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import warnings
from pathlib import Path

from bench import __version__
from bench.atomic import OutputError, atomic_write_text
from bench.suite import ENTRY_POINTS, SIZES, discover

BUILT_IN = ("bench", "suites", "impls")


def _package_dirs() -> list[Path]:
    """The folders of the packages whose code decides the catalog (found without importing them)."""
    names = {*BUILT_IN, *(ep.module.split(".")[0] for ep in importlib.metadata.entry_points(group=ENTRY_POINTS))}
    dirs = []
    for name in sorted(names):
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        if spec is None:
            continue
        if spec.submodule_search_locations:
            dirs += [Path(p) for p in spec.submodule_search_locations]
        elif spec.origin:
            dirs.append(Path(spec.origin))
    return dirs


def key() -> str:
    h = hashlib.sha256(__version__.encode())
    for root in _package_dirs():
        files = [root] if root.is_file() else sorted(root.rglob("*.py"))
        for f in files:
            st = f.stat()
            h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    for dist in sorted(f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions()):
        h.update(dist.encode())
    return h.hexdigest()[:32]


def cache_dir() -> Path:
    """impls.cache's folder, found as it finds it (bench does not import impls)."""
    return Path(os.environ.get("TECHBENCH_CACHE") or Path.home() / ".cache" / "techbench")


def _path(k: str) -> Path:
    return cache_dir() / "catalog" / f"{k}.json"


def build() -> tuple[list[dict], bool]:
    """The rows, and whether every plug-in loaded (a broken one is warned about, and its catalog not cached, so the
    warning shows on every listing until it is fixed)."""
    from bench.runner import plan

    with warnings.catch_warnings(record=True) as caught:  # the filters in force stay: only showing is deferred
        registry = discover()
    for w in caught:
        warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    broken = any(str(w.message).startswith("suites of ") for w in caught)  # bench.suite.discover's warning
    return [{"name": s.name, **s.describe(), "cases": {size: len(plan([s], size, "cpu")) for size in SIZES}}
            for s in (registry[n] for n in sorted(registry))], not broken


def _whole(row) -> bool:
    """A cached row holds what `bench list` prints of it: a row with a field missing or of another type (a file
    written by hand, or by something else) is no catalog row, and the catalog is rebuilt."""
    return (isinstance(row, dict) and all(isinstance(row.get(k), str) for k in ("name", "description", "reference"))
            and isinstance(row.get("variants"), dict) and isinstance(row.get("world_sizes"), list)
            and isinstance(row.get("cases"), dict) and all(type(row["cases"].get(s)) is int for s in SIZES))


def catalog() -> list[dict]:
    """The catalog's rows, one per suite sorted by name: from the cache when the code is unchanged, else built (which
    imports every suite) and cached. A cache that cannot be read or written is rebuilt or skipped, never an error."""
    path = _path(key())
    try:
        rows = json.loads(path.read_text())["suites"]
        if isinstance(rows, list) and all(map(_whole, rows)):
            return rows
    except (OSError, ValueError, KeyError, TypeError):
        pass  # any other shape (a file written by something else) is rebuilt too
    rows, complete = build()
    if not complete:
        return rows
    try:
        atomic_write_text(path, json.dumps({"suites": rows}))
    except (OSError, OutputError):
        pass  # a read-only home: list all the same, uncached
    return rows
