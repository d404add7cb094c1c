"""Facts about known GPUs: dense tensor-core TFLOP/s per dtype, memory bandwidth in GB/s, memory capacity in bytes,
multiprocessors and the threads each holds (what CUDA's device properties report; a plan sizes kernels' scratch
from them, bench.plan_scratch).

Datasheet rates without 2:4 sparsity (NVIDIA's headline numbers with sparsity are twice these). A GPU not in the
table gets None, never a guess. Matched on the whole name NVML and torch report, lower-cased (DEVICE_NAMES).
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar

MIB = 1 << 20
# (name fragment, {dtype: dense TFLOP/s}, memory GB/s, memory bytes, (multiprocessors, max threads per one, compute
# capability)). H200 and H100 SXM share the GH100 compute; the H200 has HBM3e at 4.8 TB/s. "fp32" is the
# non-tensor-core rate; "tf32" the tensor-core one. Memory: the total the driver reports (nvidia-smi's MiB; the
# datasheets' "141 GB", "80 GB" are these, rounded), before the CUDA context. Multiprocessors: the datasheets' SM
# counts; 2048 threads an SM on Ampere's and Hopper's data-centre parts, 1536 on Ada's; the compute capability:
# Hopper 9.0, Ampere 8.0, Ada 8.9.
_HOPPER = {"bf16": 989.4, "fp16": 989.4, "fp8": 1978.9, "tf32": 494.7, "fp32": 66.9}
TABLE = (
    ("h200", _HOPPER, 4800.0, 143771 * MIB, (132, 2048, (9, 0))),
    ("h100 80gb hbm3", _HOPPER, 3350.0, 81559 * MIB, (132, 2048, (9, 0))),  # SXM5
    ("h100 pcie", {"bf16": 756.5, "fp16": 756.5, "fp8": 1513.0, "tf32": 378.0, "fp32": 51.2}, 2000.0, 81559 * MIB,
     (114, 2048, (9, 0))),
    ("a100-sxm4-80gb", {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5}, 2039.0, 81920 * MIB,
     (108, 2048, (8, 0))),
    ("a100-sxm4-40gb", {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5}, 1555.0, 40960 * MIB,
     (108, 2048, (8, 0))),
    ("l40s", {"bf16": 362.05, "fp16": 362.05, "fp8": 733.0, "tf32": 183.0, "fp32": 91.6}, 864.0, 46068 * MIB,
     (142, 1536, (8, 9))),
    ("l4", {"bf16": 121.0, "fp16": 121.0, "fp8": 242.5, "tf32": 60.0, "fp32": 30.3}, 300.0, 23034 * MIB,
     (58, 1536, (8, 9))),
)
DTYPE_KEYS = {"bfloat16": "bf16", "float16": "fp16", "float8_e4m3fn": "fp8", "float8_e5m2": "fp8",
              "float32": "fp32", "tf32": "tf32"}


# What the driver calls each entry (torch.cuda.get_device_name and NVML agree), lower-cased: a name is matched whole,
# never by a part of it, as an L40 ("nvidia l40") holds the L4's name and a GH200 or an H200 NVL the H200's, with
# other memory and rates; a MIG slice ("... mig 1g.10gb") has a fraction of both. Those are not in the table.
DEVICE_NAMES = {"h200": "nvidia h200", "h100 80gb hbm3": "nvidia h100 80gb hbm3", "h100 pcie": "nvidia h100 pcie",
                "a100-sxm4-80gb": "nvidia a100-sxm4-80gb", "a100-sxm4-40gb": "nvidia a100-sxm4-40gb",
                "l40s": "nvidia l40s", "l4": "nvidia l4"}
# Short names a user may type for `bench plan --gpu`: the SXM parts, as the datasheets' headline ones
ALIASES = {"h100": "h100 80gb hbm3", "h100 sxm": "h100 80gb hbm3", "h100 sxm5": "h100 80gb hbm3",
           "h200 sxm": "h200", "a100": "a100-sxm4-80gb", "a100 80gb": "a100-sxm4-80gb",
           "a100 40gb": "a100-sxm4-40gb", "a100-80gb": "a100-sxm4-80gb", "a100-40gb": "a100-sxm4-40gb"}


def _entry(gpu_name: str | None):
    name = " ".join((gpu_name or "").lower().split())
    return next((e for e in TABLE if name in (e[0], DEVICE_NAMES[e[0]])), None)


def peak_tflops(gpu_name: str | None, dtype: str) -> float | None:
    """Dense peak TFLOP/s of `gpu_name` for a dtype ("bfloat16", "float8_e4m3fn", "bf16", ...), or None."""
    entry = _entry(gpu_name)
    return None if entry is None else entry[1].get(DTYPE_KEYS.get(dtype, dtype))


def peak_gbps(gpu_name: str | None) -> float | None:
    """Memory bandwidth of `gpu_name` in GB/s, or None."""
    entry = _entry(gpu_name)
    return None if entry is None else entry[2]


def memory_bytes(gpu_name: str | None) -> int | None:
    """Total memory of `gpu_name` in bytes, as its driver reports it, or None."""
    entry = _entry(gpu_name)
    return None if entry is None else entry[3]


def multiprocessors(gpu_name: str | None) -> tuple[int, int, tuple[int, int]] | None:
    """(multiprocessors, max threads per multiprocessor, compute capability) of `gpu_name`, or None."""
    entry = _entry(gpu_name)
    return None if entry is None else entry[4]


def resolve(name: str) -> str | None:
    """The table's name for what a user typed: a table name ("a100-sxm4-40gb"), a device name with or without
    "NVIDIA " ("NVIDIA H100 80GB HBM3", "l40s") or a short name of ALIASES ("h100", "a100"), in any case; None for
    anything else (an "h20" is not an H200, a "0" nothing)."""
    typed = " ".join(name.lower().split())
    typed = ALIASES.get(typed, typed)
    entry = _entry(typed) or _entry(f"nvidia {typed}")
    return None if entry is None else entry[0]


def known() -> list[str]:
    """The table's GPU names, in its order."""
    return [e[0] for e in TABLE]


def device_name(device: str) -> str | None:
    """The GPU's name for a "cuda:N" device, None for the CPU."""
    if not str(device).startswith("cuda"):
        return None
    import torch

    return torch.cuda.get_device_name(torch.device(device))


_PLANNED: ContextVar[str | None] = ContextVar("planned_gpu", default=None)


@contextmanager
def planning(gpu: str | None):
    """While `bench plan` builds a case's step for `gpu` (a table name or a device name; None: this machine's GPU):
    what `planned_gpu` answers, for the support checks a suite makes there."""
    token = _PLANNED.set(gpu)
    try:
        yield
    finally:
        _PLANNED.reset(token)


def planned_gpu() -> str | None:
    """The GPU the plan in progress is for (`planning`); None outside a plan, or for this machine's GPU."""
    return _PLANNED.get()


def here(gpu: str | None) -> bool:
    """Whether `gpu` (None: this machine's GPU) is this machine's current CUDA device, so that torch can be asked
    about it here (its kernel choices, a probe's real step); a plan for another GPU reads its table entry instead."""
    import torch

    if not torch.cuda.is_available():
        return False
    if gpu is None:
        return True
    local = torch.cuda.get_device_name(torch.cuda.current_device())
    return (resolve(local) or local.lower()) == (resolve(gpu) or gpu.lower())


def capability(gpu: str | None) -> tuple[int, int] | None:
    """The compute capability of `gpu` (None: this machine's GPU): the table's, else this machine's device's where it
    is that GPU, else None."""
    known = multiprocessors(gpu) if gpu is not None else None
    if known is not None:
        return known[2]
    if not here(gpu):
        return None
    import torch

    return torch.cuda.get_device_capability(torch.cuda.current_device())
