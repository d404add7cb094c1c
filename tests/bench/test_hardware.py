import pytest

from bench.hardware import device_name, peak_gbps, peak_tflops


@pytest.mark.parametrize("name, dtype, tflops", [
    ("NVIDIA H200", "bfloat16", 989.4), ("NVIDIA H200", "float8_e4m3fn", 1978.9),
    ("NVIDIA H100 80GB HBM3", "bf16", 989.4), ("NVIDIA A100-SXM4-80GB", "bfloat16", 312.0),
    ("NVIDIA A100-SXM4-80GB", "float8_e4m3fn", None),  # no FP8 tensor cores before Hopper/Ada
    ("NVIDIA L4", "fp8", 242.5), ("Some Future GPU", "bfloat16", None), (None, "bfloat16", None),
])
def test_peak_tflops(name, dtype, tflops):
    assert peak_tflops(name, dtype) == tflops


def test_peak_bandwidth_and_cpu():
    assert peak_gbps("NVIDIA H200") == 4800.0 and peak_gbps("NVIDIA H100 80GB HBM3") == 3350.0
    assert peak_gbps("AMD EPYC") is None and device_name("cpu") is None
