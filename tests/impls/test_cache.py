"""impls.cache's writes to a cache folder that cannot be written: a warning each, unless `bench run` has already said
so once for the whole run (UNWRITABLE_SAID, which it sets for its cases' processes)."""

import warnings

import pytest

from impls import cache


@pytest.fixture
def unwritable(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("TECHBENCH_CACHE", str(blocker))  # a file where the cache folder should be


def test_a_failed_write_warns(unwritable, monkeypatch):
    monkeypatch.delenv(cache.UNWRITABLE_SAID, raising=False)
    with pytest.warns(UserWarning, match="could not cache"):
        cache.store("t", {"a": 1}, {"v": 1})


def test_a_failed_write_is_quiet_once_the_run_has_said_so(unwritable, monkeypatch):
    monkeypatch.setenv(cache.UNWRITABLE_SAID, "1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cache.load_or_build("t", {"a": 1}, lambda: {"v": 1}) == {"v": 1}  # built, returned, not kept


def test_bench_spells_the_switch_the_same():
    from bench.cli_run import CACHE_UNWRITABLE

    assert CACHE_UNWRITABLE == cache.UNWRITABLE_SAID
