"""A file cache for trained weights, keyed by the config that produced them, so a suite trains each config once.

Files live under $TECHBENCH_CACHE (default ~/.cache/techbench)/<namespace>/<sha256 of the key>.pt, and hold the key
beside the payload: a file whose key differs, or that does not load (truncated, corrupt, another format), is rebuilt,
never trusted. Writes go to a temporary file renamed into place, so a killed run leaves no half-written entry; a cache
that cannot be written (read-only, full disk) costs a retrain next time, not the result.

Before the user cache, the read-only artifacts shipped with the package are consulted (impls/weights/, the same
layout and names, built by `python -m impls.weights build`): the smoke and quick configs the suites train, so a first
run trains nothing at those sizes. A shipped file is held to the same check (its stored key must equal the asked key),
and a mismatch falls through to the user cache and training. TECHBENCH_SHIPPED=0 ignores them (train on this machine).

Training loops report progress through logging (PROGRESS), so a display can show it without impls importing it; and
each payload handed out is named on ARTIFACTS with a digest of its contents, so that a record can say which trained
weights its figures came from (a GPU that retrains them adds in another order, and its quality metrics move).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

FORMAT = 1  # bump when what a payload holds changes: old entries then miss and are rebuilt
SHIPPED = Path(__file__).parent / "weights"
PROGRESS = logging.getLogger("techbench.progress")
ARTIFACTS = logging.getLogger("techbench.artifacts")  # extra={"artifact": namespace, "digest": digest(payload)}
PROGRESS_RECORDS = 50  # one record per ~2% of a loop's steps, and the last
# "1": `bench run` found the cache folder unwritable and said so in one line before its first case (bench.cli_run,
# which does not import impls, spells the name too). Each case runs in its own process, where a warning per failed
# write repeated that news up to three times a case (samplers)
UNWRITABLE_SAID = "TECHBENCH_CACHE_UNWRITABLE"


def cache_dir() -> Path:
    return Path(os.environ.get("TECHBENCH_CACHE") or Path.home() / ".cache" / "techbench")


def shipped_enabled() -> bool:
    return os.environ.get("TECHBENCH_SHIPPED", "1") != "0"


def entry(namespace: str, key: dict) -> Path:
    text = json.dumps({"format": FORMAT, **key}, sort_keys=True, default=str)
    return cache_dir() / namespace / f"{hashlib.sha256(text.encode()).hexdigest()[:24]}.pt"


def shipped_entry(namespace: str, key: dict) -> Path:
    """Where the package would ship the entry of `key` (whether or not it does)."""
    return SHIPPED / namespace / entry(namespace, key).name


def stored_key(key: dict) -> dict:
    """The key as a file holds it (JSON types: tuples become lists, other objects their str)."""
    return json.loads(json.dumps(key, sort_keys=True, default=str))


def read(path: Path, key: dict) -> dict | None:
    """The payload at `path` if the file loads and holds exactly `key`, else None."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001  -- a missing or unreadable file is a miss
        return None
    if isinstance(saved, dict) and saved.get("key") == stored_key(key) and isinstance(saved.get("payload"), dict):
        return saved["payload"]
    return None


def write(path: Path, key: dict, payload: dict) -> None:
    """{"key", "payload"} to `path` through a temporary file renamed into place; raises OSError."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as f:
            tmp = Path(f.name)
            torch.save({"key": stored_key(key), "payload": payload}, f)
        os.replace(tmp, path)
    except OSError:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise


def fetch(namespace: str, key: dict, build: Callable[[], dict]) -> tuple[dict, str]:
    """(payload, source): the shipped artifact for `key` ("shipped"), else the user cache's ("cache"), else
    `build()`'s, cached for next time ("built"). Payloads hold tensors, numbers, strings. Each is named on ARTIFACTS
    with its digest."""
    global _depth
    _depth += 1  # a fetch inside a build (reflow's teacher) is part of the outer artifact: only the outermost is named
    try:
        payload, source = _fetch(namespace, key, build)
    finally:
        _depth -= 1
    if _depth == 0 and ARTIFACTS.isEnabledFor(logging.INFO):  # a digest only where a case listens (bench.artifacts)
        ARTIFACTS.info("%s %s", namespace, source, extra={"artifact": namespace, "digest": digest(payload)})
    return payload, source


_depth = 0


def _fetch(namespace: str, key: dict, build: Callable[[], dict]) -> tuple[dict, str]:
    if shipped_enabled() and (payload := read(shipped_entry(namespace, key), key)) is not None:
        return payload, "shipped"
    path = entry(namespace, key)
    if (payload := read(path, key)) is not None:
        return payload, "cache"
    payload = build()
    store(namespace, key, payload, stacklevel=5)
    return payload, "built"


TIME_SUFFIXES = ("_s", "_ms")  # a key naming a duration (detection's train_s): wall-clock, no part of the numbers


def digest(payload) -> str:
    """12 hex digits of the sha256 of a payload's contents: tensors and arrays by dtype, shape and bytes, the rest by
    repr, dicts by sorted key, leaving out the values of keys that name a duration (TIME_SUFFIXES): the same numbers
    trained twice give one digest."""
    h = hashlib.sha256()
    _feed(h, payload)
    return h.hexdigest()[:12]


def _feed(h, x) -> None:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu().contiguous().reshape(-1)
        h.update(f"T{t.dtype}{tuple(x.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    elif isinstance(x, dict):
        h.update(b"{")
        for k in sorted(x, key=str):
            h.update(repr(k).encode())
            if not (isinstance(k, str) and k.endswith(TIME_SUFFIXES)):
                _feed(h, x[k])
        h.update(b"}")
    elif isinstance(x, (list, tuple)):
        h.update(f"[{len(x)}".encode())
        for v in x:
            _feed(h, v)
    else:
        h.update(repr(x).encode())


def store(namespace: str, key: dict, payload: dict, stacklevel: int = 2) -> None:
    """Cache `payload` for `key` in the user cache, over what it held: for a result its builder has just measured
    afresh, that later readers should take rather than an older one. A cache that cannot be written warns (a retrain
    next time, not a lost result), unless UNWRITABLE_SAID says the run has already said so once."""
    path = entry(namespace, key)
    try:
        write(path, key, payload)
    except OSError as e:
        if os.environ.get(UNWRITABLE_SAID) != "1":
            warnings.warn(f"could not cache {namespace} in {path.parent}: {e}", stacklevel=stacklevel)


def load_or_build(namespace: str, key: dict, build: Callable[[], dict]) -> dict:
    """The payload shipped or cached for `key`, or `build()`'s, cached for next time."""
    return fetch(namespace, key, build)[0]


def progress(what: str, total: int) -> Callable[[int], None]:
    """report(done): logs "training <what> <done>/<total>" on the "techbench.progress" logger, with
    extra={"done", "total"}, every ~2% of `total` steps and at the last; call it after each step."""
    every = max(1, total // PROGRESS_RECORDS)

    def report(done: int) -> None:
        if done % every == 0 or done == total:
            PROGRESS.info("training %s %d/%d", what, done, total, extra={"done": done, "total": total})

    return report
