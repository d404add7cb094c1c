"""Which values of a results table rest on a noisy timing.

A timing `<name>_ms` carries the flag `<name>_noisy` when its samples' IQR is over 10% of their median
(bench/timing.py). What is built on it is as uncertain: a metric whose declared inputs (run.json "suites" -> metrics
-> inputs, followed through rates and % of peak) reach a noisy timing of its case, and a ratio against the reference
(the suite's `relative`) whose reference case has one. Reads run directories only.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from reports.figures import declared, params_key

MARK = "~"
NOISY = "IQR over 10% of the median"


def _flagged(value) -> bool:
    return isinstance(value, (bool, np.bool_)) and bool(value)


def _sources(metric: str, specs: dict) -> set[str]:
    """`metric` and every metric it is built on, through the declared inputs."""
    found, todo = set(), [metric]
    while todo:
        m = todo.pop()
        if m not in found:
            found.add(m)
            todo += (specs.get(m) or {}).get("inputs") or []
    return found


def caveats(rows: pd.DataFrame) -> dict:
    """{index of a row of `rows` (one suite's records): {metric: why its value is caveated}}, for the rows that have
    one: a noisy timing itself, or a value built on one."""
    if rows.empty:
        return {}
    info = declared(rows, str(rows["suite"].iloc[0]))
    specs = info.get("metrics") or {}
    relative = {r["name"] for part in (info, *(info.get("parts") or {}).values()) for r in part.get("relative") or []}
    timings = [c for c in rows.columns if c.endswith("_ms") and f"{c[:-3]}_noisy" in rows.columns]
    noisy = {i: {t for t in timings if _flagged(r[f"{t[:-3]}_noisy"])} for i, r in rows.iterrows()}
    by_case = {(r.get("run_dir"), r["variant"], params_key(r["params"])): i for i, r in rows.iterrows()}
    metrics = [c for c in rows.columns if c in specs or c in timings]
    out = {}
    for i, r in rows.iterrows():
        ref = by_case.get((r.get("run_dir"), r.get("reference"), params_key(r["params"])))
        marks = {}
        for m in metrics:
            sources = _sources(m, specs)
            own = sorted(sources & noisy[i])
            theirs = sorted(sources & noisy[ref]) if ref is not None and ref != i and m in relative else []
            if m in own:
                marks[m] = f"noisy timing: {NOISY}"
            elif own:
                marks[m] = f"built on a noisy timing ({', '.join(own)}: {NOISY})"
            elif theirs:
                marks[m] = f"built on the reference's noisy timing ({', '.join(theirs)}: {NOISY})"
        if marks:
            out[i] = marks
    return out
