"""The runs of one side of a comparison (bench.compare), per case: one value per run and metric, never pooled.

Reads run directories only: no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.interference import reason as contention
from bench.records import RECORDS_JSONL, Record, read_records, read_run_json


def number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass
class CaseRuns:
    """One case on one side, over that side's run directories: one entry per ok run, never pooled."""

    suite: str
    variant: str
    status: str
    error: str | None
    runs: dict[str, list[float]] = field(default_factory=dict)
    """Per metric, one value per ok run: the median of its samples, else its recorded value."""
    samples: dict[str, list[list[float]]] = field(default_factory=dict)
    """Per metric, the samples of each ok run that has some."""
    contended: list[str] = field(default_factory=list)
    """"<run_id>: <reason>" for each ok run whose timed window was disturbed."""
    disturbed: dict[str, list[str | None]] = field(default_factory=dict)
    """Per metric, beside `runs`: that run's entry of `contended` if it was contended, else None."""
    samples_disturbed: dict[str, list[str | None]] = field(default_factory=dict)
    """Per metric, beside `samples`."""
    artifacts: set[int] = field(default_factory=set)
    """The artifacts_digest of each ok run that read cached artifacts (trained weights): which numbers its exact
    metrics came from."""

    def value(self, metric: str) -> float:
        return float(np.median(self.runs[metric]))

    def undisturbed(self, metric: str) -> CaseRuns:
        """This case's `metric` over its runs that were not contended only."""
        runs = [v for v, d in zip(self.runs[metric], self.disturbed[metric]) if not d]
        samples = [s for s, d in zip(self.samples.get(metric, ()), self.samples_disturbed.get(metric, ())) if not d]
        return CaseRuns(self.suite, self.variant, self.status, self.error, {metric: runs} if runs else {},
                        {metric: samples} if samples else {})


def merge(records: list[Record]) -> CaseRuns:
    """The records of one case, one per run directory."""
    ok = [r for r in records if r.status == "ok"]
    last = records[-1]
    case = CaseRuns(last.suite, last.variant, "ok" if ok else last.status, None if ok else last.error)
    for r in ok:
        disturbed = None
        if number(r.metrics.get("artifacts_digest")):
            case.artifacts.add(int(r.metrics["artifacts_digest"]))
        if r.metrics.get("contended") is True:
            disturbed = f"{r.run_id}: {contention(r.metrics) or 'flagged contended in its timed window'}"
            case.contended.append(disturbed)
        for m in dict.fromkeys([*r.metrics, *r.samples]):
            s = [float(x) for x in r.samples.get(m, ()) if number(x)]
            if s:
                case.samples.setdefault(m, []).append(s)
                case.samples_disturbed.setdefault(m, []).append(disturbed)
                case.runs.setdefault(m, []).append(float(np.median(s)))
            elif number(r.metrics.get(m)):
                case.runs.setdefault(m, []).append(float(r.metrics[m]))
            else:
                continue
            case.disturbed.setdefault(m, []).append(disturbed)
    return case


def load(run_dirs) -> tuple[dict[str, CaseRuns], list[dict], list[str]]:
    """(case_id -> CaseRuns, each run's run.json, each run's name) of the run directories of one side."""
    by_case: dict[str, list[Record]] = {}
    metas, names = [], []
    for d in map(Path, run_dirs):
        meta = read_run_json(d)
        if meta is None and not (d / RECORDS_JSONL).exists():
            raise FileNotFoundError(f"{d} is not a run directory (no run.json or records.jsonl)")
        metas.append(meta or {})
        names.append((meta or {}).get("run_id") or d.name)
        latest = {r.case_id: r for r in read_records(d / RECORDS_JSONL)}  # a rerun case: its last record counts
        for case_id, r in latest.items():
            by_case.setdefault(case_id, []).append(r)
    return {c: merge(rs) for c, rs in by_case.items()}, metas, names
