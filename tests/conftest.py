"""The test session: spread over the CPUs when pytest-xdist is installed (the dev extra brings it), one intra-op
thread a process.

`pytest` alone runs on min(4, CPUs + 1) workers where there are 2 CPUs or more; `-n N` (or `-n 0`, `-p no:xdist`)
chooses otherwise. Not on a machine with a CUDA device: the CUDA tests time and sample one shared GPU, and workers
beside each other would disturb them (that is what `bench doctor` warns of). Tests are handed out a group at a time
(`--dist loadgroup`, this file's scheduler): a module each, so each module's fixtures are built once, except that
every test of one suite's smoke run (tests/suites/: its test_<suite>.py and its cases of test_all_suites.py) goes
with that run; the runs are shared across workers through files besides (tests/suites/conftest.py). The longest
groups (LONGEST) go out first, so that the workers finish together instead of one running a long group alone at the
end.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

# Every process the tests start (bench, its case processes, torchrun's ranks) computes on one intra-op thread unless
# the environment says otherwise: the tests' shapes are too small to share, workers already fill the CPUs, and on a
# busy 2-core machine waking a second thread for every op made smoke cases 5-10x slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Bytecode is written and read, whatever PYTHONDONTWRITEBYTECODE says, in every process of the session: without it
# each worker rewrote every test module's asserts again at collection (pytest reuses its rewritten modules only from
# the __pycache__ it may write: collecting took 6.2 s, against 3.3 s with them written), and each of the processes
# the tests start (`bench`, its case server, ranks) compiled the project's modules again.
sys.dont_write_bytecode = False
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
MAX_WORKERS = 4


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _workers() -> int:
    # one more than the CPUs: a worker's tests leave its CPU idle ~20% of their time (they wait on the processes they
    # start, on timeouts, on Chromium), which the extra worker fills. On the 2-core VM, the same code, alternating
    # the order: 3 workers 217 s against 2 workers' 249 s, then 241 s against 266 s.
    cpus = _cpus()
    return min(MAX_WORKERS, cpus + 1) if cpus >= 2 else 1


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


# The groups that take longest, longest first (the seconds each took, below): they are
# handed out before every other group, which then fill in behind them, so that no long group is left to run alone at
# the end. Only the order depends on this list: a group missing from it, or named wrongly, still runs, after these.
LONGEST = (  # seconds of one worker's wall time each, from `pytest --durations=0` at 7758fe3 (3 workers, 2 CPUs)
    "tests/bench/test_distributed.py",  # 58: distributed jobs, a two-node rendezvous
    "tests/bench/test_runner.py",  # 25
    "tests/bench/test_lifeline.py",  # 18: `bench` processes, killed
    "tests/bench/test_nightly.py",  # 18: ci/nightly.sh and its rerun
    "tests/reports/test_dashboard.py",  # 16: headless Chromium
    "tests/bench/test_plugins.py",  # 15: `bench` processes
    "tests/impls/test_samplers.py",  # 14
    "tests/impls/test_weights.py",  # 12: retraining the smoke models
    "tests/bench/test_cli.py",  # 12
    "smoke-packing",  # 12
    "triton-interpreted",  # 12: fp8 gemm and quantizers, moe's grouped gemm
    "tests/bench/test_plan.py",  # 11
    "smoke-samplers",  # 10
    "tests/bench/test_rundir.py",  # 10
    "tests/bench/test_scaffold.py",  # 10 (6 before it ran pytest on a checkout with no test folders too)
    "tests/bench/test_plan_error.py",  # 9
    "tests/impls/test_samplers_diffusers.py",  # 8
    "tests/impls/test_samplers_metrics.py",  # 8
    "tests/bench/test_plan_pool.py",  # 8
    "smoke-fsdp_checkpointing",  # 8: distributed jobs
    "tests/reports/test_compare_dashboard_browser.py",  # 7: headless Chromium
    "tests/bench/test_interference.py",  # 7
    "tests/reports/test_dashboard_exact.py",  # 7
    "tests/impls/test_trl_packing.py",  # 7
)


# Tests that need a quiet CPU, which they look for: handed out after every other group, as the other workers finish.
# Handed out with the rest, the other two workers kept both CPUs busy through the whole wait, and the test was skipped
# in every full run.
QUIET = ("tests/bench/test_pinning.py::test_an_idle_cpu_starts_the_case_at_once",)


# The modules that run Triton kernels under the interpreter: one group, so that one worker's interpreter child runs
# them all (tests/triton_interpret.py), and torch and triton are imported for them once.
INTERPRETED = ("tests/impls/test_fp8_gemm.py", "tests/impls/test_fp8_quant_triton.py", "tests/impls/test_moe_triton.py")


def group(nodeid: str) -> str:
    """A test's xdist group: its module; for tests/suites/, the suite whose smoke run it reads (test_<suite>.py, or
    the suite that test_all_suites.py's case is parametrized with, the first part of its id); for the modules of
    INTERPRETED, one group; for the tests of QUIET, one group, handed out last."""
    module, _, rest = nodeid.partition("::")
    if nodeid in QUIET:
        return "quiet"
    if module in INTERPRETED:
        return "triton-interpreted"
    if not module.startswith("tests/suites/"):
        return module
    suite = Path(module).stem.removeprefix("test_")
    if suite == "all_suites":
        suite = rest.partition("[")[2].split("-")[0].rstrip("]")
    return f"smoke-{suite}"


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """loadgroup, with the groups above and the longest first. xdist's own scheduler finds a test's xdist_group mark
    in a suffix its workers append to the test's id (item._nodeid), which pytest 9 no longer reads: each test was a
    group of its own, so a module's fixtures were built on every worker and the workers that did not win a suite's
    smoke-run lock sat waiting for it."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    rank = {g: i for i, g in enumerate(LONGEST)} | {"quiet": len(LONGEST) + 1}

    class Groups(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return group(nodeid)

        def _assign_work_unit(self, node) -> None:
            first = min(self.workqueue, key=lambda g: rank.get(g, len(LONGEST)))  # ties: the queue's order
            self.workqueue.move_to_end(first, last=False)
            super()._assign_work_unit(node)

    return Groups(config, log)


def pytest_addoption(parser, pluginmanager):
    """pyproject's `timeout` is pytest-timeout's, from the dev extra. Without it (`pip install -e .` alone, the quick
    start's first line, then the `pytest tests/...` that `bench new` names) every pytest run warned "Unknown config
    option: timeout", which says nothing a user can act on: the key is known here instead, and tests have no limit."""
    if not pluginmanager.has_plugin("timeout"):
        parser.addini("timeout", "seconds a test may take, enforced by pytest-timeout (the dev extra) where installed")


def pytest_configure(config):
    """This process too: torch may have been imported (by a plug-in) before OMP_NUM_THREADS was set."""
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def pytest_collection_finish(session):
    """What collecting imported (torch, the suites, the test modules) is frozen out of the cyclic collector's sight,
    as `bench` does before its cases (bench.lifeline.freeze_alive): each full collection of a worker walked it again."""
    from bench.lifeline import freeze_alive

    freeze_alive()


@pytest.fixture
def flash_first():
    """torch's SDPA kernels in their default priority (flash, memory-efficient, math, cuDNN), for a test that names
    the kernel a CUDA target takes: torch puts cuDNN first on sm90 and sm100 with cuDNN above 9.15 (an H100 or H200
    with torch 2.11), which would change the names, not what the test checks. No effect on a CPU's choice."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from bench.plan_attention import settle_cuda_priority

    settle_cuda_priority()  # or torch's first CUDA choice would put its own default over the order pinned here
    order = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH, SDPBackend.CUDNN_ATTENTION]
    with sdpa_kernel(order, set_priority=True):
        yield
