"""The test session: spread over the CPUs when pytest-xdist is installed (the dev extra brings it), one intra-op
thread a process.

`pytest` alone runs on min(4, CPUs) workers; `-n N` (or `-n 0`, `-p no:xdist`) chooses otherwise. Not on a machine
with a CUDA device: the CUDA tests time and sample one shared GPU, and workers beside each other would disturb them
(that is what `bench doctor` warns of). Tests are handed out a module at a time, so each module's fixtures are built
once, except that every test of one suite's smoke run (tests/suites/: its test_<suite>.py and its cases of
test_all_suites.py) goes with that run; the runs are shared across workers through files besides
(tests/suites/conftest.py).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

# Every process the tests start (bench, its case processes, torchrun's ranks) computes on one intra-op thread unless
# the environment says otherwise: the tests' shapes are too small to share, workers already fill the CPUs, and on a
# busy 2-core machine waking a second thread for every op made smoke cases 5-10x slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")
MAX_WORKERS = 4


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _workers() -> int:
    return min(MAX_WORKERS, _cpus())


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config):
    if importlib.util.find_spec("xdist") is None or not config.pluginmanager.has_plugin("xdist"):
        return
    if config.option.numprocesses is not None or os.environ.get("PYTEST_XDIST_WORKER"):
        return  # chosen on the command line, or this is a worker
    if config.option.collectonly or config.option.usepdb or _workers() < 2:
        return
    import torch

    if torch.cuda.is_available():
        return
    config.option.numprocesses = _workers()
    config.option.dist = "loadgroup"


def pytest_collection_modifyitems(config, items):
    """xdist groups (read by loadgroup only): a module each, and a suite's smoke-run tests together."""
    for item in items:
        module = item.nodeid.split("::")[0]
        group = module
        if module.startswith("tests/suites/"):
            params = getattr(getattr(item, "callspec", None), "params", {})
            suite = params.get("name") or Path(module).stem.removeprefix("test_")
            group = f"smoke-{suite}"
        item.add_marker(pytest.mark.xdist_group(group))


def pytest_configure(config):
    """This process too: torch may have been imported (by a plug-in) before OMP_NUM_THREADS was set."""
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
