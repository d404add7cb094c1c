import json
from importlib.metadata import entry_points

import pytest
import torch

from bench.env import collect
from tests.optional import needs_cuda

pytest_plugins = ["pytester"]

# Installed with its pytest11 entry point the plugin loads itself; loading it again with -p would register it twice.
INSTALLED = any(ep.name == "techbench" for ep in entry_points(group="pytest11"))
LOAD = [] if INSTALLED else ["-p", "bench.pytest_plugin"]

TESTS = """
import pytest

calls = []

@pytest.mark.parametrize("n", [100, 1000])
def test_sum(gpu_benchmark, n):
    gpu_benchmark.extra_info["items"] = n
    assert gpu_benchmark(lambda: calls.append(n) or sum(range(n))) == n * (n - 1) // 2

def test_pedantic_with_setup(gpu_benchmark):
    gpu_benchmark.group = "sorting"
    gpu_benchmark.pedantic(lambda xs: sorted(xs), setup=lambda: (([3, 1, 2],), {}), rounds=4, warmup_rounds=2)

def test_warmup_rounds_are_run_but_not_kept():
    assert calls.count(100) == 3 + 20 and calls.count(1000) == 3 + 20
"""


@pytest.fixture(autouse=True, scope="module")
def _imported_once():
    # pytester drops the modules an in-process run imported; torch and triton (imported by the machine_info hook)
    # cannot be imported twice in one process, so import them here first
    collect()


@pytest.fixture(autouse=True)
def _not_an_xdist_worker(monkeypatch):
    # the inner session is a plain one even when this test runs on an xdist worker: pytest-benchmark reads
    # PYTEST_XDIST_WORKER and would treat it as a worker of its own
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
        monkeypatch.delenv(name, raising=False)


def run(pytester, *args):
    pytester.makepyfile(test_gpu=TESTS)
    return pytester.runpytest_inprocess(*LOAD, "-p", "no:cacheprovider", "-p", "no:randomly", *args)


def test_gpu_benchmark_keeps_raw_samples_and_records_gpu_machine_info(pytester):
    out, store = pytester.path / "bench.json", pytester.path / "store"
    result = run(pytester, f"--benchmark-json={out}", f"--benchmark-storage={store}", "--benchmark-save=first")
    result.assert_outcomes(passed=4)
    doc = json.loads(out.read_text())
    tb = doc["machine_info"]["techbench"]
    assert {"env_id", "gpus", "driver_version", "torch", "torch_cuda", "env"} <= tb.keys()
    assert "git" not in tb["env"]  # commit_info has it; machine_info must not change with every commit
    benches = {b["name"]: b for b in doc["benchmarks"]}
    assert benches.keys() == {"test_sum[100]", "test_sum[1000]", "test_pedantic_with_setup"}
    assert len(benches["test_sum[100]"]["stats"]["data"]) == benches["test_sum[100]"]["stats"]["rounds"] == 20
    assert len(benches["test_pedantic_with_setup"]["stats"]["data"]) == 4
    assert benches["test_pedantic_with_setup"]["group"] == "sorting"
    assert benches["test_sum[1000]"]["extra_info"]["items"] == 1000
    info = benches["test_sum[1000]"]["extra_info"]["techbench"]
    # the inner session runs in this process: it synchronised if an earlier test here initialised CUDA (a GPU machine
    # runs the tests in one process), and not otherwise (the tests above use no CUDA)
    assert info["warmup_rounds"] == 3 and info["cuda_synchronize"] is torch.cuda.is_initialized()

    # --benchmark-save leaves raw data out unless --benchmark-save-data; the plugin keeps it for gpu_benchmark
    (saved,) = store.rglob("*_first.json")
    doc = json.loads(saved.read_text())
    assert all(len(b["stats"]["data"]) == b["stats"]["rounds"] for b in doc["benchmarks"])
    assert "techbench" in doc["machine_info"]


@needs_cuda
def test_cuda_rounds_are_synchronized(pytester):
    pytester.makepyfile(test_cuda="""
import torch

def test_mm(gpu_benchmark):
    a = torch.randn(4096, 4096, device="cuda")
    gpu_benchmark(torch.mm, a, a)
    assert gpu_benchmark.extra_info["techbench"]["cuda_synchronize"] is True
""")
    out = pytester.path / "bench.json"
    result = pytester.runpytest_inprocess(*LOAD, "-p", "no:cacheprovider", f"--benchmark-json={out}")
    result.assert_outcomes(passed=1)
    (bench,) = json.loads(out.read_text())["benchmarks"]
    # 2 * 4096^3 = 137 GFLOP in fp32 takes ~2 ms on an H200; an unsynchronized launch returns in ~10 us
    assert bench["stats"]["min"] > 1e-4
