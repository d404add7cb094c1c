"""pytest plugin: GPU-correct pytest-benchmark timing and GPU machine info (registered as the pytest11 entry point
`techbench`; without the installed entry point, load it with `pytest -p bench.pytest_plugin`).

The `gpu_benchmark` fixture wraps pytest-benchmark's `benchmark` fixture in pedantic mode:

    def test_matmul(gpu_benchmark):
        a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
        gpu_benchmark(torch.mm, a, a)                       # 20 rounds after 3 warm-up rounds
        gpu_benchmark.extra_info["tflops"] = 2 * 4096**3 / gpu_benchmark.stats.stats.median / 1e12

    # or, with pytest-benchmark's own knobs:
    gpu_benchmark.pedantic(step, setup=make_batch, rounds=50, warmup_rounds=5, iterations=1)

CUDA kernels run asynchronously, so a wall clock around a launch measures the launch, not the work. Once CUDA is
initialised in the process, every timed call is followed by `torch.cuda.synchronize()` inside the timed region (the
time then covers the queued work; the synchronize itself adds a few microseconds), and the GPU is synchronized before
the first round and after setup and teardown, outside it, so each round starts on an idle GPU. On CPU the fixture is
plain `benchmark.pedantic` with warm-up rounds. The current CUDA device is synchronized; torch is looked up in
`sys.modules` and never imported by this plugin for a benchmark that does not use it.

Raw per-round times are kept: pytest-benchmark writes them with --benchmark-json, and this plugin adds them to
--benchmark-save files too for `gpu_benchmark` tests. Every saved or JSON-written run gets
machine_info["techbench"]: GPU names, driver, clocks, power limit, torch/CUDA/cuDNN/Triton versions and env_id
(collected once per session, when pytest-benchmark writes its file).
"""

from __future__ import annotations

import sys

import pytest

WARMUP_ROUNDS = 3  # the first call pays for CUDA context, cuBLAS handles, autotuning and allocator growth
ROUNDS = 20
TAG = "techbench"


def _synchronize() -> bool:
    """torch.cuda.synchronize() when this process has initialised CUDA; whether it did."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return False
    torch.cuda.synchronize()
    return True


class GpuBenchmark:
    """Callable like `benchmark`, timed in pedantic mode with synchronization; other attributes pass through."""

    def __init__(self, benchmark):
        self._benchmark = benchmark

    def __getattr__(self, name):
        return getattr(self._benchmark, name)

    def __setattr__(self, name, value):  # e.g. `gpu_benchmark.group = "gemm"` reaches pytest-benchmark
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            setattr(self._benchmark, name, value)

    def __call__(self, target, *args, **kwargs):
        return self.pedantic(target, args=args, kwargs=kwargs)

    def pedantic(self, target, args=(), kwargs=None, setup=None, teardown=None, rounds=ROUNDS,
                 warmup_rounds=WARMUP_ROUNDS, iterations=1):
        synced = []

        def timed(*a, **kw):
            result = target(*a, **kw)
            synced.append(_synchronize())
            return result

        def synced_setup():
            out = setup()
            _synchronize()
            return out

        def synced_teardown(*a, **kw):
            teardown(*a, **kw)
            _synchronize()

        _synchronize()
        result = self._benchmark.pedantic(timed, args=args, kwargs=kwargs,
                                          setup=synced_setup if setup is not None else None,
                                          teardown=synced_teardown if teardown is not None else None,
                                          rounds=rounds, warmup_rounds=warmup_rounds, iterations=iterations)
        self._benchmark.extra_info[TAG] = {"cuda_synchronize": any(synced), "warmup_rounds": warmup_rounds}
        return result


@pytest.fixture
def gpu_benchmark(benchmark):
    """pytest-benchmark's `benchmark`, synchronized around every round on CUDA and warmed up; see the module doc."""
    return GpuBenchmark(benchmark)


_MACHINE_INFO: dict = {}


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_machine_info(config, machine_info):
    if not _MACHINE_INFO:
        from bench.env import collect
        from bench.interop import techbench_machine_info

        try:
            _MACHINE_INFO.update(techbench_machine_info(collect(config.rootpath)))
        except Exception as e:  # a machine_info entry must never fail the user's test session
            _MACHINE_INFO.update({"error": f"{type(e).__name__}: {e}"})
    machine_info[TAG] = _MACHINE_INFO


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_json(config, benchmarks, output_json):
    """Keep the raw samples of `gpu_benchmark` tests in every file, --benchmark-save ones included."""
    raw = {b.fullname: b.stats.data for b in benchmarks if TAG in (b.extra_info or {}) and b.stats}
    for bench in output_json.get("benchmarks", []):
        if bench.get("fullname") in raw and "data" not in bench.get("stats", {}):
            bench["stats"]["data"] = list(raw[bench["fullname"]])
