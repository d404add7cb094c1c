"""Environment fingerprint of the machine and software a run measured, and the env_id that groups like runs.

Every NVML query stands alone: a query the driver or GPU does not support gives None for that field, and a machine
without NVML gives `nvml: None, gpus: []`. torch is imported only inside `collect`, so `env_id` and `table_rows`
can be used where torch is absent (reports).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path

# One dict per GPU with these keys; "source" is "nvml", or "torch" where only torch.cuda could be asked.
GPU_FIELDS = tuple(
    "index name uuid driver_version cuda_driver_version compute_capability memory_total_bytes"
    " max_sm_clock_mhz max_mem_clock_mhz sm_clock_mhz mem_clock_mhz power_limit_w"
    " ecc_mode mig_mode persistence_mode pci_bus_id source".split()
)

# (field, NVML query, clock domain) for the four clock fields, all in MHz.
_CLOCKS = (
    ("max_sm_clock_mhz", "nvmlDeviceGetMaxClockInfo", "NVML_CLOCK_SM"),
    ("max_mem_clock_mhz", "nvmlDeviceGetMaxClockInfo", "NVML_CLOCK_MEM"),
    ("sm_clock_mhz", "nvmlDeviceGetClockInfo", "NVML_CLOCK_SM"),
    ("mem_clock_mhz", "nvmlDeviceGetClockInfo", "NVML_CLOCK_MEM"),
)


def load_nvml():
    """The pynvml module (from nvidia-ml-py), or None where it is not installed. Tests replace this loader."""
    try:
        import pynvml
    except ImportError:
        return None
    return pynvml


def guarded(query, *args):
    """One NVML (or other) query; None on any error, so one unsupported field never hides the rest."""
    try:
        return query(*args)
    except Exception:
        return None


def _text(value):
    return value.decode() if isinstance(value, bytes) else value


def _cuda_version(v: int | None) -> str | None:
    # NVML reports the CUDA driver API version as 1000 * major + 10 * minor (12040 -> "12.4").
    return None if v is None else f"{v // 1000}.{v % 1000 // 10}"


def _nvml_gpus(nvml) -> tuple[dict | None, list[dict]]:
    try:
        nvml.nvmlInit()
    except Exception:
        return None, []
    try:
        driver = _text(guarded(nvml.nvmlSystemGetDriverVersion))
        cuda_driver = _cuda_version(guarded(nvml.nvmlSystemGetCudaDriverVersion))
        nvml_version = _text(guarded(nvml.nvmlSystemGetNVMLVersion))
        info = {"driver_version": driver, "cuda_driver_version": cuda_driver, "nvml_version": nvml_version}
        gpus = []
        for i in range(guarded(nvml.nvmlDeviceGetCount) or 0):
            h = guarded(nvml.nvmlDeviceGetHandleByIndex, i)
            if h is None:
                continue
            cc = guarded(nvml.nvmlDeviceGetCudaComputeCapability, h)
            mem = guarded(nvml.nvmlDeviceGetMemoryInfo, h)
            power_mw = guarded(nvml.nvmlDeviceGetEnforcedPowerLimit, h)
            ecc = guarded(nvml.nvmlDeviceGetEccMode, h)  # (current, pending)
            mig = guarded(nvml.nvmlDeviceGetMigMode, h)  # (current, pending)
            pci = guarded(nvml.nvmlDeviceGetPciInfo, h)
            clocks = {f: guarded(lambda: getattr(nvml, fn)(h, getattr(nvml, domain))) for f, fn, domain in _CLOCKS}
            persistence = guarded(nvml.nvmlDeviceGetPersistenceMode, h)
            gpus.append(
                {
                    "index": i,
                    "name": _text(guarded(nvml.nvmlDeviceGetName, h)),
                    "uuid": _text(guarded(nvml.nvmlDeviceGetUUID, h)),
                    "driver_version": driver,
                    "cuda_driver_version": cuda_driver,
                    "compute_capability": None if cc is None else f"{cc[0]}.{cc[1]}",
                    "memory_total_bytes": guarded(lambda: int(mem.total)),
                    **clocks,
                    "power_limit_w": None if power_mw is None else power_mw / 1000,
                    "ecc_mode": guarded(lambda: bool(ecc[0])),
                    "mig_mode": guarded(lambda: bool(mig[0])),
                    "persistence_mode": None if persistence is None else bool(persistence),
                    "pci_bus_id": _text(guarded(lambda: pci.busId)),
                    "source": "nvml",
                }
            )
        return info, gpus
    finally:
        guarded(nvml.nvmlShutdown)


def _torch_gpus(torch) -> list[dict]:
    """What torch alone can say about each visible GPU, for machines without NVML."""
    gpus = []
    for i in range(torch.cuda.device_count()):
        p = guarded(torch.cuda.get_device_properties, i)
        gpu = dict.fromkeys(GPU_FIELDS)
        gpu.update(index=i, source="torch")
        if p is not None:
            uuid = guarded(lambda: str(p.uuid))
            gpu.update(
                name=p.name,
                uuid=None if uuid is None else f"GPU-{uuid}",
                compute_capability=f"{p.major}.{p.minor}",
                memory_total_bytes=int(p.total_memory),
            )
        gpus.append(gpu)
    return gpus


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _physical_cores() -> int | None:
    """Distinct (physical id, core id) pairs in /proc/cpuinfo; None where that file or those fields are missing."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    cores, phys = set(), "0"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "physical id":
            phys = value.strip()
        elif key == "core id":
            cores.add((phys, value.strip()))
    return len(cores) or None


def _host_memory_bytes() -> int | None:
    return guarded(lambda: os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


CODE_DIRS = ("bench/", "impls/", "suites/", "reports/")


def _changes_code(line: str, root: Path) -> bool:
    """Whether a `git status --porcelain` line makes the code under test differ from its commit: any change to a
    tracked file, and an untracked Python file, a folder holding one (a plug-in; git names the folder alone), or
    anything in the packages' folders; not a virtual environment, the runs or the pages a user keeps in the
    checkout, or every run from a working clone would read as dirty."""
    if not line.startswith("??"):
        return True
    path = line[3:]  # -z: never quoted, whatever bytes the name holds
    if path.endswith(".py") or path.startswith(CODE_DIRS):
        return True
    if not path.endswith("/"):
        return False
    for folder, dirs, files in os.walk(root / path):
        if "pyvenv.cfg" in files or "conda-meta" in dirs:  # an environment: installed packages, not code under test
            dirs.clear()
        elif any(f.endswith(".py") for f in files):
            return True
    return False


def git_info(root: str | Path | None = None) -> dict:
    """{"sha", "dirty"} of the checkout at `root` (default: the one holding this package); None where unknown."""
    root = Path(root) if root is not None else Path(__file__).resolve().parents[1]

    def git(*args):
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10,
                             errors="surrogateescape")  # a file name's bytes as the file system holds them
        return out.stdout.strip() if out.returncode == 0 else None

    try:
        if git("rev-parse", "--is-inside-work-tree") != "true":
            return {"sha": None, "dirty": None}
        status = git("status", "--porcelain", "-z")
        return {"sha": git("rev-parse", "HEAD"),
                "dirty": None if status is None else any(_changes_code(e, root) for e in status.split("\0") if e)}
    except (OSError, subprocess.SubprocessError):  # git not installed, or hung
        return {"sha": None, "dirty": None}


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception:
        return None


# Optional packages that change which code runs (torchvision's NMS kernel in detection, flash-attn's and
# Liger-Kernel's kernels, the ecosystem's library variants, pycocotools' evaluator): their versions from the package
# metadata (no import), recorded but not part of env_id, so that installing one does not start new series.
OPTIONAL_PACKAGES = ("torchvision", "flash-attn", "liger-kernel", "transformers", "diffusers", "torchao", "trl",
                     "datasets", "torchdiffeq", "torchsde", "pycocotools")


# Environment variables that set how many threads a case runs, where, which GPUs it sees or which kernels run: what
# moves timings on one machine with the code unchanged. Recorded with the CPUs this process may run on, the cgroup's
# CPU quota and torch's thread count, not part of env_id (settings of a run, as --threads and --cpus are), so that
# compare names them.
TIMING_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_PROC_BIND", "OMP_PLACES",
               "KMP_AFFINITY", "GOMP_CPU_AFFINITY", "CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "CUDA_LAUNCH_BLOCKING",
               "PYTORCH_CUDA_ALLOC_CONF", "NVIDIA_TF32_OVERRIDE", "TORCH_ALLOW_TF32_CUBLAS_OVERRIDE",
               "CUBLAS_WORKSPACE_CONFIG")


def cpu_list(cpus) -> str:
    """A set of CPUs as the kernel writes a list: "0-3,8"."""
    runs: list[list[int]] = []
    for c in sorted(cpus):
        if runs and c == runs[-1][1] + 1:
            runs[-1][1] = c
        else:
            runs.append([c, c])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def parse_cpus(text: str) -> set[int]:
    """A kernel CPU list ("0-3,8,10-11") as a set; flags such as isolcpus' "domain" are skipped."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        if part[:1].isdigit():
            lo, _, hi = part.partition("-")
            cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


def _packages() -> dict[str, str]:
    import importlib.metadata

    found = {}
    for dist in OPTIONAL_PACKAGES:
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def collect(root: str | Path | None = None) -> dict:
    """Fingerprint of this machine and its software; `root` is the checkout whose git state is recorded."""
    import torch

    from bench import __version__
    from bench.cgroup import cpu_quota

    nvml = load_nvml()
    nvml_info, gpus = _nvml_gpus(nvml) if nvml is not None else (None, [])
    cuda_available = bool(guarded(torch.cuda.is_available))
    if not gpus and cuda_available:
        gpus = _torch_gpus(torch)
    affinity = guarded(os.sched_getaffinity, 0) if hasattr(os, "sched_getaffinity") else None
    return {
        "techbench": __version__,
        "python_version": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "os": sys.platform,
        "hostname": socket.gethostname(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": guarded(torch.backends.cudnn.version),
        "triton": _version("triton"),
        "numpy": _version("numpy"),
        "packages": _packages(),
        "cpu_model": _cpu_model(),
        "cpu_logical_cores": os.cpu_count(),
        "cpu_physical_cores": _physical_cores(),
        "cpu_usable_cores": None if affinity is None else len(affinity),
        "cpu_affinity": None if affinity is None else cpu_list(affinity),
        "cpu_quota": guarded(lambda: cpu_quota().cpus),  # CPUs' worth a CFS period (a container's limit); None: none
        "torch_threads": guarded(torch.get_num_threads),
        "env_vars": {k: os.environ[k] for k in TIMING_VARS if k in os.environ},
        "host_memory_bytes": _host_memory_bytes(),
        "cuda_available": cuda_available,
        "cuda_device_count": guarded(torch.cuda.device_count) if cuda_available else 0,
        "nvml": nvml_info,
        "gpus": gpus,
        "git": git_info(root),
    }


# The fields that decide what a benchmark can measure: the GPUs (model, count, memory, architecture), the driver and
# CUDA stack, the framework and compiler versions, Python, and the CPU. Left out: UUIDs, PCI ids and hostname (they
# differ between identical machines), current clocks and temperature (they differ between runs), git state and the
# techbench version (they describe the code under test, recorded beside env_id), and settings an admin may flip
# (power limit, ECC, MIG, persistence) which run.json still records for whoever investigates a shift. GPU memory is
# rounded to GiB because NVML and torch report totals that differ by a few MiB for the same card.
def identity(env: dict) -> dict:
    gpus = env.get("gpus") or []
    return {
        "gpus": [
            {
                "name": g.get("name"),
                "compute_capability": g.get("compute_capability"),
                "memory_gib": None if g.get("memory_total_bytes") is None else round(g["memory_total_bytes"] / 2**30),
            }
            for g in gpus
        ],
        "gpu_count": len(gpus),
        "driver_version": next((g.get("driver_version") for g in gpus if g.get("driver_version")), None),
        "torch_cuda": env.get("torch_cuda"),
        "cudnn": env.get("cudnn"),
        "torch": env.get("torch"),
        "triton": env.get("triton"),
        "python_version": env.get("python_version"),
        "cpu_model": env.get("cpu_model"),
        "cpu_logical_cores": env.get("cpu_logical_cores"),
    }


def env_id(env: dict) -> str:
    """First 12 hex digits of the sha256 of the canonical JSON of `identity(env)`."""
    canonical = json.dumps(identity(env), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def measured_gpu(device: str | None, env: dict | None) -> dict | None:
    """The GPU of a run's env (run.json's) that its device ran on, or None (a CPU device, no GPU recorded). cuda:N is
    the Nth GPU the run saw: NVML lists every GPU of the machine, so N goes through a recorded CUDA_VISIBLE_DEVICES
    (an NVML index or a UUID); without one, or where torch listed only the visible GPUs, the Nth listed."""
    env = env if isinstance(env, dict) else {}
    gpus = [g for g in env.get("gpus") or [] if isinstance(g, dict)]
    kind, _, index = str(device or "").partition(":")
    if kind != "cuda" or not gpus:
        return None
    n = int(index) if index.isdigit() else 0
    visible = (env.get("env_vars") if isinstance(env.get("env_vars"), dict) else {}).get("CUDA_VISIBLE_DEVICES")
    ids = [v.strip() for v in str(visible).split(",")] if visible is not None else []
    one = ids[n] if n < len(ids) and ids[n] else None
    seen = [g for g in gpus if one and g.get("source") == "nvml" and one in (str(g.get("index")), g.get("uuid"))]
    return seen[0] if seen else gpus[n] if n < len(gpus) else gpus[0]


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_fmt(v)}" for k, v in value.items())
    return str(value)


def table_rows(env: dict) -> list[tuple[str, str]]:
    """(field, value) rows for printing: top-level fields, then one `gpu<i>.<field>` row per GPU field."""
    rows = [("env_id", env_id(env))]
    rows += [(k, _fmt(v)) for k, v in env.items() if k != "gpus"]
    for g in env.get("gpus") or []:
        rows += [(f"gpu{g.get('index')}.{k}", _fmt(v)) for k, v in g.items() if k != "index"]
    return rows


def summary_lines(env: dict) -> list[str]:
    return [f"{field}: {value}" for field, value in table_rows(env)]


def resolve_device(text: str) -> str:
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' -> 'cpu' or 'cuda:N' (records name the exact device); ValueError naming the
    valid choices when the device is unknown or absent here."""
    import torch

    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return text
    if text == "cuda" or (text.startswith("cuda:") and text[5:].isdigit()):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {text}: CUDA is not available here (torch {torch.__version__}); "
                             "valid: auto, cpu")
        index, count = (int(text[5:]) if ":" in text else 0), torch.cuda.device_count()
        if index >= count:
            raise ValueError(f"--device {text}: this machine has {count} CUDA device(s) "
                             f"(valid: cuda:0..cuda:{count - 1})")
        return f"cuda:{index}"
    raise ValueError(f"unknown --device {text!r} (valid: auto, cpu, cuda, cuda:N)")
