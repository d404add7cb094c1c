"""How long a run has left: each case still to run takes what it took in the newest earlier runs beside this one (runs/
by default), scaled by this run's pace against them; without them for most cases, "ETA unknown". bench.progress shows
it."""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import re
from pathlib import Path

from bench.records import RECORDS_JSONL

EARLIER_RUNS = 10
"""Run directories read for the ETA, newest first: enough to cover a run split over days; a few hundred records parse
in milliseconds."""
PACE_PRIOR_S = 60.0
"""This run's pace against the earlier runs counts only once it has a minute of comparable work behind it, so that
one odd first case does not scale the whole estimate."""
NOT_INSTALLED = re.compile(r"needs (.+?), which is not installed")
"""A skip's reason for want of packages, as bench.suite.requires words it: the modules it names."""


def duration(seconds: float) -> str:
    """45s, 2m10s, 1h02m."""
    s = max(int(round(seconds)), 0)
    if s < 60:
        return f"{s}s"
    return f"{s // 60}m{s % 60:02d}s" if s < 3600 else f"{s // 3600}h{s % 3600 // 60:02d}m"


def earlier_durations(out: str | Path, case_ids: list[str], device: str) -> dict[str, float]:
    """case_id -> elapsed_s of its latest record on `device` in the newest EARLIER_RUNS run directories beside `out`
    (and `out` itself: a case that timed out there will likely take its timeout again). A case whose latest record is a
    skip for want of a package installed since has none: that skip timed the refusal, not the case, which now runs."""
    wanted, found = set(case_ids), {}
    files = []
    try:
        for d in Path(out).parent.iterdir():
            try:
                files.append(((d / RECORDS_JSONL).stat().st_mtime, d / RECORDS_JSONL))
            except OSError:  # not a run directory, or unreadable
                continue
    except OSError:
        return {}
    for _, path in sorted(files, reverse=True)[:EARLIER_RUNS]:
        latest = {}
        try:
            with path.open(encoding="utf-8", errors="replace") as f:
                for line in f:
                    try:
                        d = json.loads(line)
                        cid, elapsed = d.get("case_id"), d.get("elapsed_s")
                    except (ValueError, AttributeError, RecursionError):
                        continue
                    if cid in wanted and d.get("device") == device and isinstance(elapsed, (int, float)) \
                            and not isinstance(elapsed, bool) and 0 <= elapsed < math.inf:
                        stale = d.get("status") == "skipped" and installed_since(d.get("error"))
                        latest[cid] = None if stale else float(elapsed)  # the last record of a case is its measurement
        except OSError:
            continue
        found |= {k: v for k, v in latest.items() if k not in found}
        if len(found) == len(wanted):
            break
    return {k: v for k, v in found.items() if v is not None}


def installed_since(reason) -> bool:
    """Whether a skip's `reason` names packages missing then (NOT_INSTALLED) that are all installed now (with one of
    them still missing the case skips again, in no time, as it did then). The quick start's first run skips 162
    library cases in no time; after `pip install -e ".[ecosystem]"` they run, and an ETA that took those skips for
    their time said "ETA 2s" with a smoke checkpointing run's three transformers cases (35 s) to go."""
    found = NOT_INSTALLED.search(reason) if isinstance(reason, str) else None
    return found is not None and all(_importable(m.strip()) for m in found.group(1).split(","))


@functools.cache
def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package that is not installed, or not a module's name
        return False


class Eta:
    """The run's remaining time: each case still to run takes what it took before, times this run's pace."""

    def __init__(self, todo: list[str], expected: dict[str, float], where: str = "runs/"):
        self.pending, self.expected, self.where = dict.fromkeys(todo), expected, where
        self._was = self._took = 0.0

    @classmethod
    def from_runs(cls, out: str | Path, todo: list[str], device: str) -> Eta:
        return cls(todo, earlier_durations(out, todo, device), f"{Path(out).parent}/")

    def finished(self, case_id: str, elapsed_s: float) -> None:
        self.pending.pop(case_id, None)
        if case_id in self.expected:
            self._was += self.expected[case_id]
            self._took += elapsed_s

    def remaining(self, running: str | None = None, running_s: float = 0.0) -> tuple[float, int] | None:
        """(seconds left for the cases timed before, count of cases never timed), or None when no case was."""
        if not self.expected:
            return None
        pace = (self._took + PACE_PRIOR_S) / (self._was + PACE_PRIOR_S)
        left = sum(pace * self.expected[c] for c in self.pending if c in self.expected and c != running)
        if running in self.expected:
            left += max(pace * self.expected[running] - running_s, 0.0)
        return left, sum(c not in self.expected for c in self.pending)

    def text(self, running: str | None = None, running_s: float = 0.0) -> str:
        left = self.remaining(running, running_s)
        if left is None:
            return "ETA unknown"
        seconds, untimed = left
        if 2 * untimed > len(self.pending):  # most of what is left never ran here: a figure would mislead
            return f"ETA unknown ({untimed} of {len(self.pending)} cases not timed before)"
        return f"ETA {duration(seconds)}" + (f" + {untimed} case{'s' * (untimed > 1)} not timed before" if untimed
                                             else "")
