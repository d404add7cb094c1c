"""A file cache for trained weights, keyed by the config that produced them, so a suite trains each config once.

Files live under $TECHBENCH_CACHE (default ~/.cache/techbench)/<namespace>/<sha256 of the key>.pt, and hold the key
beside the payload: a file whose key differs, or that does not load (truncated, corrupt, another format), is rebuilt,
never trusted. Writes go to a temporary file renamed into place, so a killed run leaves no half-written entry; a cache
that cannot be written (read-only, full disk) costs a retrain next time, not the result.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

FORMAT = 1  # bump when what a payload holds changes: old entries then miss and are rebuilt


def cache_dir() -> Path:
    return Path(os.environ.get("TECHBENCH_CACHE") or Path.home() / ".cache" / "techbench")


def entry(namespace: str, key: dict) -> Path:
    text = json.dumps({"format": FORMAT, **key}, sort_keys=True, default=str)
    return cache_dir() / namespace / f"{hashlib.sha256(text.encode()).hexdigest()[:24]}.pt"


def load_or_build(namespace: str, key: dict, build: Callable[[], dict]) -> dict:
    """The payload cached for `key`, or `build()`'s, cached for next time. Payloads hold tensors, numbers, strings."""
    path = entry(namespace, key)
    stored = json.loads(json.dumps(key, sort_keys=True, default=str))
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(saved, dict) and saved.get("key") == stored and isinstance(saved.get("payload"), dict):
            return saved["payload"]
    except Exception:  # noqa: BLE001  -- a missing or unreadable file is a miss: it is rebuilt and overwritten
        pass
    payload = build()
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as f:
            tmp = Path(f.name)
            torch.save({"key": stored, "payload": payload}, f)
        os.replace(tmp, path)
    except OSError as e:
        warnings.warn(f"could not cache {namespace} weights in {path.parent}: {e}", stacklevel=2)
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    return payload
