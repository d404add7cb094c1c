"""How bench.case classifies the ways a case ends."""

import pytest
import torch

from bench.case import Case, _is_oom, execute
from bench.metrics import Metric
from bench.suite import SUITES, Suite


def test_cpu_allocation_failure_is_oom():
    # torch's CPU allocator raises a plain RuntimeError; the case ran out of memory, it did not fail
    with pytest.raises(RuntimeError) as info:
        torch.empty(1 << 52, dtype=torch.uint8)  # 4 PiB: more than any machine has
    assert _is_oom(info.value)


@pytest.mark.parametrize("exc, oom", [
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 TiB"), True),
    (RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate(handle)"), True),
    (MemoryError(), True),
    (RuntimeError("shape mismatch"), False),
    (ValueError("out of memory"), False),
])
def test_is_oom(exc, oom):
    assert _is_oom(exc) is oom


class Lists(Suite):
    name = "_lists"
    variants = {"lists": "reference"}
    metrics = (Metric("n_ms", "measured", "lower", "n"),)

    def grid(self, size, device):
        return [{"batch": 10**13}]

    def measure(self, variant, params, device):
        lengths = [0] * params["batch"]  # 80 TB of list: Python's own MemoryError, which names nothing
        return len(lengths)


def test_a_host_out_of_memory_says_so_and_where(monkeypatch):
    monkeypatch.setitem(SUITES, "_lists", Lists())
    result = execute(Case("_lists", "lists", {"batch": 10**13}, module="bench.suite"), "cpu")
    assert result["status"] == "oom"
    assert "\n  File " in result["error"]  # the traceback's frames stay above
    last = result["error"].splitlines()[-1]  # the line progress and the reports show
    line = Lists.measure.__code__.co_firstlineno + 1
    assert last.startswith(f"the host ran out of memory (MemoryError) in measure ({__file__}:{line}: lengths = [0]")


class Plain(Lists):
    name = "_plain"

    def grid(self, size, device):
        return [{"n": 1}]

    def measure(self, variant, params, device):
        return {"n_ms": 1.0}  # the metrics alone, not wrapped in a Measurement


def test_measure_returning_no_measurement_says_what_to_return(monkeypatch):
    monkeypatch.setitem(SUITES, "_plain", Plain())
    result = execute(Case("_plain", "lists", {"n": 1}, module="bench.suite"), "cpu")
    assert result["status"] == "error"
    assert result["error"] == ("Plain.measure() returned dict, not a bench.suite.Measurement: "
                               "return Measurement(metrics, timed=..., timings=...)")
