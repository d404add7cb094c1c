"""Each suite's smoke run on CPU, made once per test session and shared by every test (and every xdist worker) that
reads it.

`smoke(name)` runs suite `name` at smoke size in-process, into a folder of the session's temporary root that all
workers share; the first worker to ask runs it under a file lock while others asking for the same suite wait, then
read its records back. A module named test_<suite>.py gets that suite's run as `smoke_run` (run directory, exit
code, records) and `smoke_records` (exit code, {suite: {variant: [records]}}). The models come from the shipped
weights (impls/weights); what is computed (the samplers' noise floor, fp8's reference curve) is built in a fresh
cache, as on a first run. One intra-op thread: smoke shapes are too small to share, and on a busy 2-core machine
waking a second thread for every op made the checkpointing smoke run 6x slower (62 s against 11 s).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import NamedTuple

import pytest

from bench import runner
from bench.records import Record, read_records
from bench.suite import SUITES, discover


class SmokeRun(NamedTuple):
    out: Path
    code: int
    records: list[Record]


@contextlib.contextmanager
def _locked(path: Path):
    try:
        import fcntl
    except ImportError:  # no flock (not POSIX): each worker runs what it needs itself
        yield
        return
    with path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def _cache_at(path: Path):
    before, os.environ["TECHBENCH_CACHE"] = os.environ.get("TECHBENCH_CACHE"), str(path)
    try:
        yield
    finally:
        if before is None:
            del os.environ["TECHBENCH_CACHE"]
        else:
            os.environ["TECHBENCH_CACHE"] = before


@pytest.fixture(scope="session")
def smoke(tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # what every worker of this session sees
    made: dict[str, SmokeRun] = {}
    discover()

    def get(name: str) -> SmokeRun:
        if name not in made:
            folder = root / f"smoke-{name}"
            folder.mkdir(exist_ok=True)
            with _locked(root / f"smoke-{name}.lock"):
                done = folder / "exit_code"
                if not done.exists():
                    with _cache_at(root / "smoke-cache"):
                        code, _ = runner.run(runner.RunConfig(suites=[SUITES[name]], size="smoke", device="cpu",
                                                              out=folder / "run", inline=True,
                                                              threads=1))
                    done.write_text(str(code))
                records = read_records(folder / "run" / "records.jsonl")
                made[name] = SmokeRun(folder / "run", int(done.read_text()), records)
        return made[name]

    return get


def _suite_of(request) -> str:
    name = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    if name not in SUITES:
        raise LookupError(f"{request.module.__name__} names no suite: use the `smoke` fixture, smoke(name)")
    return name


@pytest.fixture(scope="module")
def smoke_run(smoke, request) -> SmokeRun:
    """This module's suite (test_<suite>.py) at smoke size: (run directory, exit code, records)."""
    return smoke(_suite_of(request))


@pytest.fixture(scope="module")
def smoke_records(smoke_run, request):
    """(exit code, {suite: {variant: [records]}}) of this module's suite's smoke run."""
    by_variant: dict = {}
    for r in smoke_run.records:
        by_variant.setdefault(r.variant, []).append(r)
    return smoke_run.code, {_suite_of(request): by_variant}
