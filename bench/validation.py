"""What a record and a run.json may hold: the type checks that the runner applies to what `measure` returned, before
writing it, and that the readers apply to every line they load, so that bad data is refused in one place.

Plain Python only (no torch, no pandas): reports read runs through bench.records, which checks with this module.
"""

from __future__ import annotations

import math
from typing import Any

# pandas and the statistics hold integers as int64: a larger one is kept as a float, which every reader can hold
INT64 = 2**63
RECORD_FIELDS = ("schema", "run_id", "suite", "variant", "params", "case_id", "status", "metrics", "samples", "error",
                 "device", "started_at", "elapsed_s", "env_id", "nonfinite")
# what a metric that measure() returned as NaN or an infinity was: the record holds null (JSON has no spelling for
# them) and names it under `nonfinite`, so that a diverged loss is not read as a metric that was not measured
NONFINITE = ("nan", "inf", "-inf")
TEXT_FIELDS = ("run_id", "suite", "variant", "case_id", "status", "device", "started_at", "env_id")
PARAM_TYPES = (str, int, float, bool, type(None))
# A metric shares one row with the record's fields and the columns the loaders add (records_frame's run_dir, the
# report's run, size and command): a metric of one of these names would overwrite them
RESERVED = frozenset(RECORD_FIELDS) | {"run_dir", "run", "size", "command"}
# run.json's fields that readers index into, and what each may be (None: null)
RUN_JSON_TYPES = {"run_id": (str,), "argv": (list,), "size": (str, None), "device": (str, None), "shard": (str,),
                  "variants": (list, None), "started_at": (str, None), "finished_at": (str, None), "env": (dict,),
                  "env_id": (str, None), "git": (dict, None), "version": (str, None), "suites": (dict,),
                  "not_run": (list, None), "recorded": (int, None)}
_TYPE_NAMES = {str: "a string", list: "a list", dict: "an object", int: "a whole number", None: "null"}


def kind(value) -> str:
    """The JSON-ish name of a value's type, for messages."""
    return "null" if value is None else type(value).__name__


def scalar(value):
    """A 0-dim numpy array or tensor, or a numpy scalar, as its Python number; anything else as it is."""
    return value.item() if getattr(value, "ndim", None) == 0 and hasattr(value, "item") else value


def _number(value, bools: bool):
    """value as a plain JSON number (NaN and infinities as null, as records write them); TypeError otherwise."""
    value = scalar(value)
    if value is None or (bools and isinstance(value, bool)):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        if -INT64 <= value < INT64:
            return value
        try:
            value = float(value)
        except OverflowError:
            raise TypeError("a number beyond a float's range") from None
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    raise TypeError(kind(value))


def nonfinite(metrics) -> dict[str, str]:
    """The metrics that are NaN or infinite, each as "nan", "inf" or "-inf" (what the record's `nonfinite` holds)."""
    out = {}
    for name, value in metrics.items() if isinstance(metrics, dict) else ():
        value = scalar(value)
        if isinstance(value, float) and not math.isfinite(value):
            out[name] = "nan" if math.isnan(value) else "inf" if value > 0 else "-inf"
    return out


def check_measurement(metrics, samples) -> tuple[dict[str, Any], dict[str, list]]:
    """metrics (name -> number, bool or null) and samples (name -> list of numbers or nulls) as plain Python values;
    ValueError naming the first offending key. NaN and infinities become null, as the record writes them."""
    if not isinstance(metrics, dict):
        raise ValueError(f"metrics is {kind(metrics)}, not an object")
    if not isinstance(samples, dict):
        raise ValueError(f"samples is {kind(samples)}, not an object")
    for what, names in (("metric", metrics), ("samples", samples)):
        for name in names:
            if not isinstance(name, str) or not name:
                raise ValueError(f"{what} name {name!r} is not a non-empty string")
            if what == "metric" and name in RESERVED:
                raise ValueError(f"metric {name!r} has the name of a record field")
    clean: dict[str, Any] = {}
    for name, value in metrics.items():
        try:
            clean[name] = _number(value, bools=True)
        except TypeError as e:
            raise ValueError(f"metric {name!r} is {e}, not a number, bool or null") from None
    lists: dict[str, list] = {}
    for name, values in samples.items():
        if not isinstance(values, (list, tuple)):
            raise ValueError(f"samples {name!r} is {kind(values)}, not a list of numbers")
        try:
            lists[name] = [_number(v, bools=False) for v in values]
        except TypeError as e:
            raise ValueError(f"samples {name!r} hold {e}, not only numbers") from None
    return clean, lists


def check_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """A record's fields (as read from a line, schema already checked) with metrics and samples made plain; ValueError
    naming the first field of the wrong type. Missing fields are left to the Record constructor."""
    for k in TEXT_FIELDS:
        if k in fields and not isinstance(fields[k], str):
            raise ValueError(f"{k} is {kind(fields[k])}, not a string")
    if not isinstance(fields.get("error"), (str, type(None))):
        raise ValueError(f"error is {kind(fields['error'])}, not a string or null")
    params = fields.get("params")
    if not isinstance(params, dict) or not all(isinstance(k, str) and isinstance(v, PARAM_TYPES)
                                               for k, v in params.items()):
        raise ValueError("params is not an object of strings, numbers, bools and nulls")
    elapsed = fields.get("elapsed_s", 0.0)
    # an int is checked against int64's range: math.isfinite(10**400) raises OverflowError
    if isinstance(elapsed, bool) or not isinstance(elapsed, (int, float)) or not (
            -INT64 <= elapsed < INT64 if isinstance(elapsed, int) else math.isfinite(elapsed)):
        raise ValueError(f"elapsed_s is {kind(elapsed)}, not a finite number")
    metrics, samples = check_measurement(fields.get("metrics", {}), fields.get("samples", {}))
    named = fields.get("nonfinite", {})
    if not isinstance(named, dict) or not all(isinstance(k, str) and v in NONFINITE for k, v in named.items()):
        raise ValueError(f"nonfinite is not an object of metric names to {', '.join(NONFINITE)}")
    return {**fields, "metrics": metrics, "samples": samples, "nonfinite": named}


def run_json_problem(meta: dict) -> str | None:
    """What is wrong with the types of a run.json's fields, in one line, or None."""
    for name, types in RUN_JSON_TYPES.items():
        value = meta.get(name)
        if name in meta and not (value is None and None in types or isinstance(value, tuple(t for t in types if t))):
            return f"{name} is {kind(value)}, not {' or '.join(_TYPE_NAMES[t] for t in types)}"
    return _suites_problem(meta.get("suites") or {})


# what a suite's declaration in run.json (Suite.describe) may hold, for the readers that index into it (compare's
# metric specs, the report's figures); an entry of a declaration's "metrics" or "parts" is an object too
SUITE_INFO_TYPES = {"variants": dict, "libraries": dict, "parts": dict, "metrics": dict, "relative": list,
                    "world_sizes": list, "param_defaults": dict}


def _suites_problem(suites: dict) -> str | None:
    for suite, info in suites.items():
        if not isinstance(info, dict):
            return f"suites.{suite} is {kind(info)}, not an object"
        for key, t in SUITE_INFO_TYPES.items():
            if info.get(key) is not None and not isinstance(info[key], t):
                return f"suites.{suite}.{key} is {kind(info[key])}, not {_TYPE_NAMES[t]}"
        for key in ("metrics", "parts"):
            for name, entry in (info.get(key) or {}).items():
                if not isinstance(entry, dict):
                    return f"suites.{suite}.{key}.{name} is {kind(entry)}, not an object"
    return None
