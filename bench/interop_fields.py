"""Reading a pytest-benchmark file for `bench import` (bench.interop), field by field, each type-checked: a wrong field
is a ValueError naming it by its path (benchmarks[2].stats.median), so a bad file never becomes a bad run directory.
This module never imports torch."""

from __future__ import annotations

import datetime as dt
import math

# What readers of run.json do with an env (reports join GPU names, scale memory bytes, read gpus as a list of objects
# and nvml as an object): in an imported env these names must be text and names with these endings numbers; fields
# no reader looks into are copied as they are.
ENV_TEXT = ("name", "driver_version", "cuda_driver_version", "compute_capability", "cpu_model", "python_version",
            "torch", "torch_cuda", "triton")
ENV_NUMBER_SUFFIXES = ("_bytes", "_mhz", "_w", "_cores", "_count")
KINDS = {"text": (str,), "number": (int, float), "bool": (bool,), "object": (dict,), "list": (list,),
         "metric": (int, float, bool), "value": (str, int, float, bool)}


class Fields:
    """Reads a parsed pytest-benchmark file field by field, each type-checked: a field of the wrong type is a
    ValueError naming it by its path (benchmarks[2].stats.median), so a bad file never becomes a bad run directory.
    Wants are the keys of KINDS; null and a missing field are allowed unless the field is required."""

    def __init__(self, file):
        self.file = file

    def bad(self, field: str, why: str) -> ValueError:
        return ValueError(f"{self.file}: {field} {why}")

    def need(self, value, field: str, want: str, required: bool = True):
        if value is None:
            if required:
                raise self.bad(field, f"is missing (it must be {_a(want)})")
            return None
        ok = isinstance(value, KINDS[want]) and not (isinstance(value, bool) and want == "number")
        if ok and isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                ok = math.isfinite(value)  # NaN or Infinity (json.loads reads them) or past float's range
            except OverflowError:
                ok = False
        if not ok:
            raise self.bad(field, f"must be {_a(want)}, got {_kind(value)}")
        return value

    def get(self, obj: dict, key: str, where: str, want: str, required: bool = False):
        return self.need(obj.get(key), f"{where}.{key}" if where else key, want, required)


def _a(want: str) -> str:
    return {"text": "a string", "number": "a finite number", "bool": "true or false", "object": "an object",
            "list": "a list", "metric": "a number or boolean", "value": "a string, number or boolean"}[want]


def _kind(value) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, float):
        return "a number" if math.isfinite(value) else repr(value)
    if isinstance(value, int):  # 2**1024 and up has no float
        return "a number" if value.bit_length() < 1024 else "a number beyond the range of a float"
    return {str: "a string", dict: "an object", list: "a list"}.get(type(value), type(value).__name__)


def stamp(f: Fields, iso: str | None) -> str:
    """pytest-benchmark's datetime as our '%Y-%m-%dT%H:%M:%SZ' (UTC); now when absent."""
    try:
        when = dt.datetime.fromisoformat(iso) if iso else dt.datetime.now(dt.timezone.utc)
        when = when.astimezone(dt.timezone.utc) if when.tzinfo is not None else when
    except (ValueError, OverflowError):
        when = None
    if when is None or not 1970 <= when.year < 2262:  # the range of pandas' timestamps, which the history uses
        raise f.bad("datetime", f"must be an ISO 8601 time between 1970 and 2261, got {iso[:40]!r}")
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _check_env(f: Fields, env: dict, where: str) -> dict:
    """A techbench env carried by the file (export, the pytest plugin), checked as readers of run.json use it."""
    for key, value in env.items():
        field = f"{where}.{key}"
        if key == "git":  # replaced by commit_info
            continue
        if key == "gpus":
            for i, gpu in enumerate(f.need(value, field, "list", required=False) or []):
                _check_flat(f, f.need(gpu, f"{field}[{i}]", "object"), f"{field}[{i}]")
        elif key == "nvml":
            _check_flat(f, f.need(value, field, "object", required=False) or {}, field)
        else:
            _check_flat(f, {key: value}, where)
    return env


def _check_flat(f: Fields, obj: dict, where: str) -> None:
    for key in obj:
        want = "text" if key in ENV_TEXT else "number" if key.endswith(ENV_NUMBER_SUFFIXES) else None
        if want:
            f.get(obj, key, where, want)


def env_from(f: Fields, machine_info: dict, commit_info: dict) -> dict:
    """A techbench env: ours when the file carries it (export, the pytest plugin), else what pytest-benchmark knows."""
    git = {"sha": f.get(commit_info, "id", "commit_info", "text"),
           "dirty": f.get(commit_info, "dirty", "commit_info", "bool")}
    ours = f.get(f.get(machine_info, "techbench", "machine_info", "object") or {}, "env", "machine_info.techbench",
                 "object")
    if ours is not None:
        return {**_check_env(f, ours, "machine_info.techbench.env"), "git": git}
    cpu = f.get(machine_info, "cpu", "machine_info", "object") or {}
    text = {k: f.get(machine_info, k, "machine_info", "text")
            for k in ("python_version", "python_implementation", "system", "release", "node")}
    return {"python_version": text["python_version"], "python_implementation": text["python_implementation"],
            "platform": " ".join(text[k] for k in ("system", "release") if text[k]) or None,
            "hostname": text["node"], "cpu_model": f.get(cpu, "brand_raw", "machine_info.cpu", "text"),
            "cpu_logical_cores": f.get(cpu, "count", "machine_info.cpu", "number"), "gpus": [], "git": git}
