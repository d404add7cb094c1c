"""Short labels for a list of cases: the variant and the params that tell the cases apart (`case_labels`), within
a suite's part (`group_of`: moe's balance and dispatch share no params to leave out).

A full plan's case ids run to 150 characters (packing: ten params), so a table or chart that shows them whole either
wraps them into columns of text or cuts off the params that differ. Said once, the params every case shares leave a
label such as `grouped_triton experts=256 top_k=8`. No torch: the pages in reports/ use it too.
"""

from __future__ import annotations

from collections import Counter


def case_labels(cases: list[tuple[str, dict]]) -> tuple[list[str], dict]:
    """For (variant, params) pairs: (a label per case, `variant k=v ...` with the params that differ between the
    cases; the params all of them share, with their values). A key some cases lack is not shared: the cases that
    have it show it. Two cases whose labels still agree are numbered, never shown as one."""
    if not cases:
        return [], {}
    keys = list(dict.fromkeys(k for _, params in cases for k in sorted(params)))
    first = cases[0][1]
    shared = {k: first[k] for k in keys
              if all(k in params for _, params in cases) and len({repr(params[k]) for _, params in cases}) == 1}
    out = [" ".join([variant, *(f"{k}={v}" for k, v in sorted(params.items()) if k not in shared)])
           for variant, params in cases]
    twice = {label for label, n in Counter(out).items() if n > 1}
    taken, n = set(out) - twice, Counter()
    for i, label in enumerate(out):
        if label in twice:  # numbered past any label already taken: "x=1 (1)" may be a value of its own
            while f"{label} ({n[label] + 1})" in taken:
                n[label] += 1
            n[label] += 1
            out[i] = f"{label} ({n[label]})"
            taken.add(out[i])
    return out, shared


def group_of(suite: str, params: dict) -> str:
    """The cases labelled together: a suite's, or one part's of a suite with parts ("moe dispatch")."""
    return f"{suite} {params['part']}" if "part" in params else suite
