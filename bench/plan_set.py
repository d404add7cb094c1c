"""`bench plan --set k=v`: a grid point's params changed to a size no grid holds (a batch that should not fit), and
what is said where no selected case can take the change."""

from __future__ import annotations

import math


def with_changes(params: dict, changes: dict[str, str]) -> dict:
    """`params` with `changes` (text, `bench plan --set k=v`) in each param's type: a size no grid holds, such as a
    batch that should not fit. ValueError naming the param for a key it lacks, a value not of its type, a size <= 0,
    a float that is NaN or infinite (grid params are finite: bench.suite.Suite.points)."""
    out = dict(params)
    for key, text in changes.items():
        if key not in params:
            raise ValueError(f"--set {key}: the case has no param {key} (its params: {', '.join(sorted(params))})")
        was = params[key]
        try:
            if isinstance(was, bool):
                out[key] = {"true": True, "false": False}[text.lower()]
            elif isinstance(was, (int, float)):
                out[key] = type(was)(text)
            else:  # a text param, or one whose default is None (checkpointing's model)
                out[key] = None if was is None and text == "None" else text
        except (KeyError, ValueError):
            raise ValueError(f"--set {key}={text}: {key} takes {type(was).__name__} values, such as {was!r}") from None
        if isinstance(out[key], float) and not math.isfinite(out[key]):  # no case id or JSON record spells it
            raise ValueError(f"--set {key}={text}: {key} takes finite float values, such as {was!r}")
        if type(was) is int and was > 0 and out[key] <= 0:  # a count (batch, seq, layers); a float may be 0 (a rate)
            raise ValueError(f"--set {key}={text}: {key} is a size, which must be positive, such as {was!r}")
    return out


def nothing_changed(changes: dict[str, str], lacking: set[str], ruled_out: list[str]) -> None:
    """ValueError for a --set that changed no selected case: the variants the changed params leave no case, or the
    param no case has (with the params the selected cases do have)."""
    if ruled_out:
        text = ",".join(f"{k}={v}" for k, v in changes.items())
        raise ValueError(f"--set {text} leaves {', '.join(dict.fromkeys(ruled_out))} no case (a variant's cases are at "
                         "some values of a param only)")
    if lacking:
        absent = [k for k in changes if k not in lacking]
        raise ValueError(f"--set {absent[0]}: no case selected has a param {absent[0]} (their params: "
                         f"{', '.join(sorted(lacking))})" if absent else
                         f"--set {', '.join(changes)}: no case selected has all of these params together")
