"""Which cached artifacts a case read: trained weights, reference curves (impls.cache), each named with a digest of
its contents on the "techbench.artifacts" logger. bench.case records them as one number, `artifacts_digest`; where two
runs' differ, their exact metrics came from other numbers (a GPU that retrains adds in another order), and compare and
the dashboard hold a changed value to the threshold rather than exactly. By logging, so that impls need not import
bench."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager

from bench.progress import listening

LOGGER = "techbench.artifacts"


class _Seen(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.seen: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        name, digest = getattr(record, "artifact", None), getattr(record, "digest", None)
        if isinstance(name, str) and isinstance(digest, str):
            self.seen.add(f"{name}:{digest}")


@contextmanager
def artifacts_read() -> Iterator[set[str]]:
    """The "name:digest" of every artifact named on the logger while the block runs (filled as it runs)."""
    handler = _Seen()
    with listening(LOGGER, handler):
        yield handler.seen


def artifacts_digest(seen: set[str]) -> int:
    """The first 48 bits of the sha256 of the sorted names: a whole number a float holds exactly, as records do."""
    return int(hashlib.sha256("\n".join(sorted(seen)).encode()).hexdigest()[:12], 16)
