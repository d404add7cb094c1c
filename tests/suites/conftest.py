import pytest

from bench import runner
from bench.suite import discover


@pytest.fixture(scope="session")
def smoke_records(tmp_path_factory):
    """Every registered suite at smoke size on CPU, once per test session: {suite: {variant: [records]}}."""
    registry = discover()
    out = tmp_path_factory.mktemp("smoke") / "run"
    code, records = runner.run(runner.RunConfig(suites=list(registry.values()), size="smoke", device="cpu", out=out,
                                                inline=True))
    by_suite: dict = {}
    for r in records:
        by_suite.setdefault(r.suite, {}).setdefault(r.variant, []).append(r)
    return code, by_suite
