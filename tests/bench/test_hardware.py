import pytest

from bench.hardware import device_name, memory_bytes, peak_gbps, peak_tflops, resolve


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


@pytest.mark.parametrize("name", ["NVIDIA L40", "NVIDIA GH200 480GB", "NVIDIA H200 NVL", "NVIDIA H20",
                                  "NVIDIA H100 80GB HBM3 MIG 1g.10gb", "NVIDIA A100 80GB PCIe"])
def test_a_gpu_whose_name_holds_a_known_one_is_not_it(name):
    # an L40 is no L4 (48 GB, not 24), a GH200 or H200 NVL no H200, a MIG slice a fraction of its GPU: unknown
    assert memory_bytes(name) is None and peak_tflops(name, "bf16") is None and resolve(name) is None


@pytest.mark.parametrize("typed, entry", [
    ("h200", "h200"), ("H100", "h100 80gb hbm3"), ("NVIDIA H100 80GB HBM3", "h100 80gb hbm3"),
    ("h100 pcie", "h100 pcie"), ("a100", "a100-sxm4-80gb"), ("A100-SXM4-40GB", "a100-sxm4-40gb"), ("l4", "l4"),
    ("L40S", "l40s"), ("  nvidia   l4 ", "l4"),
    ("h20", None), ("l40", None), ("0", None), ("sxm", None), ("", None),
])
def test_resolve_takes_whole_names_only(typed, entry):
    assert resolve(typed) == entry


def test_a_plan_reads_the_named_gpus_capability_and_asks_this_machine_only_of_its_own(monkeypatch):
    import torch

    from bench import hardware

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a machine whose GPU is an A100
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-80GB")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert hardware.here(None) and hardware.here("a100-sxm4-80gb") and hardware.here("NVIDIA A100-SXM4-80GB")
    assert not hardware.here("h200")
    assert hardware.capability("h200") == (9, 0) and hardware.capability("l4") == (8, 9)
    assert hardware.capability(None) == (8, 0)  # this machine's GPU, asked
    assert hardware.capability("NVIDIA B200") is None  # neither in the table nor here: not guessed
    with hardware.planning("h200"):
        assert hardware.planned_gpu() == "h200"
    assert hardware.planned_gpu() is None
