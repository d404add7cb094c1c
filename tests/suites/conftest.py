import os

import pytest

from bench import runner
from bench.suite import discover


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """Every registered suite at smoke size on CPU, once per test session: (run directory, exit code, records)."""
    out = tmp_path_factory.mktemp("smoke") / "run"
    # a fresh cache, as on a first run: smoke models come from the shipped weights (impls/weights), what is computed
    # (the samplers' noise floor, fp8's reference curve) is built here
    cache, os.environ["TECHBENCH_CACHE"] = os.environ.get("TECHBENCH_CACHE"), str(tmp_path_factory.mktemp("cache"))
    try:
        code, records = runner.run(runner.RunConfig(suites=list(discover().values()), size="smoke", device="cpu",
                                                    out=out, inline=True))
    finally:
        if cache is None:
            del os.environ["TECHBENCH_CACHE"]
        else:
            os.environ["TECHBENCH_CACHE"] = cache
    return out, code, records


@pytest.fixture(scope="session")
def smoke_records(smoke_run):
    """(exit code, {suite: {variant: [records]}}) of the smoke run."""
    _, code, records = smoke_run
    by_suite: dict = {}
    for r in records:
        by_suite.setdefault(r.suite, {}).setdefault(r.variant, []).append(r)
    return code, by_suite
