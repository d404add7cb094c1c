"""`bench doctor`'s GPU checks, through NVML: throttling and other processes (critical), persistence mode, locked
clocks, power limit, ECC, MIG, and the driver's CUDA against torch's. Every query stands alone (bench.env.guarded):
one the GPU does not support gives "unknown" for that check. Nothing is set; each finding names the command.
"""

from __future__ import annotations

import os

from bench.doctor import Finding, Host
from bench.env import guarded, load_nvml
from bench.telemetry import THROTTLE_BITS, reason_names

APP_CLOCKS_BIT = 0x2  # nvmlClocksEventReasonApplicationsClocksSetting: a clock someone chose holds the GPU

# Why each check matters for timings (by the last part of the check's name).
WHY = {
    "gpu": "GPU settings and other work on the GPU change timings",
    "driver": "a torch built for a newer CUDA than the driver's falls back to PTX JIT or fails; driver and CUDA "
              "versions are part of env_id",
    "throttle": "a GPU slowing down on its own runs the same kernels slower than it does unthrottled",
    "processes": "another process on the GPU shares its SMs, memory bandwidth and power budget with the case",
    "persistence": "without persistence mode the driver unloads when no process holds the GPU: each case's "
                   "process pays GPU initialisation, and clock settings are lost",
    "clocks": "an unlocked SM clock boosts as power and temperature allow, differing between runs and within one; "
              "a locked clock the card holds under load repeats",
    "power_limit": "a lowered power limit caps the clocks under load: kernels run slower than on a default card",
    "ecc": "ECC costs some bandwidth and capacity on GDDR memory: compare runs taken with the same setting",
    "mig": "with MIG on, a process gets one slice of the GPU, not the whole card",
}


def finding(check: str, status: str, found: str, fix: str | None = None) -> Finding:
    return Finding(check, status, found, WHY[check.rpartition(".")[2]], fix)


def check_throttle(g: str, i: int, reasons: int | None) -> Finding:
    if reasons is None:
        return finding(f"{g}.throttle", "unknown", "clock event reasons not reported")
    if reasons & THROTTLE_BITS:
        return finding(f"{g}.throttle", "critical", "slowed now: " + ", ".join(reason_names(reasons & THROTTLE_BITS)),
                       f"nvidia-smi -i {i} -q -d PERFORMANCE,TEMPERATURE,POWER  # which limit, and why")
    return finding(f"{g}.throttle", "ok", "no slowdown now" + (f" ({', '.join(reason_names(reasons))})"
                                                               if reasons else ""))


def check_processes(nvml, h, g: str, i: int, host: Host, critical_only: bool) -> Finding:
    compute = guarded(nvml.nvmlDeviceGetComputeRunningProcesses, h)
    if compute is None:
        return finding(f"{g}.processes", "unknown", "running processes not reported")
    others = [p for p in compute if p.pid != host.pid]
    graphics = [p for p in guarded(nvml.nvmlDeviceGetGraphicsRunningProcesses, h) or [] if p.pid != host.pid]
    if not others and (critical_only or not graphics):  # a display server is no compute rival: warn, not critical
        return finding(f"{g}.processes", "ok", "no other process")
    listed = ", ".join(f"{(host.read(f'proc/{p.pid}/comm') or '?').strip()} (pid {p.pid})" for p in others or graphics)
    return finding(f"{g}.processes", "critical" if others else "warn", f"{'compute' if others else 'graphics'}: "
                   f"{listed}", f"nvidia-smi -i {i} --query-compute-apps=pid,process_name,used_memory --format=csv")


def check_persistence(nvml, h, g: str, i: int) -> Finding:
    pm = guarded(nvml.nvmlDeviceGetPersistenceMode, h)
    if pm is None:
        return finding(f"{g}.persistence", "unknown", "not reported")
    return finding(f"{g}.persistence", "ok", "on") if pm else finding(f"{g}.persistence", "warn", "off",
                                                                         f"sudo nvidia-smi -i {i} -pm 1")


def check_clocks(nvml, h, g: str, i: int, reasons: int | None) -> Finding:
    app = guarded(nvml.nvmlDeviceGetApplicationsClock, h, nvml.NVML_CLOCK_GRAPHICS)
    default = guarded(nvml.nvmlDeviceGetDefaultApplicationsClock, h, nvml.NVML_CLOCK_GRAPHICS)
    top = guarded(nvml.nvmlDeviceGetMaxClockInfo, h, nvml.NVML_CLOCK_SM)
    if app and default and app != default:
        return finding(f"{g}.clocks", "ok", f"application clocks {app} MHz (default {default})")
    if reasons is not None and reasons & APP_CLOCKS_BIT:
        return finding(f"{g}.clocks", "ok", "held by a clock setting (locked or application clocks)")
    # NVML has no query for locked clocks (nvidia-smi -lgc), only the event reason above; the default application
    # clock is the card's sustained one on datacenter parts, so it is what the fix proposes
    mhz = default or top or "MHZ"
    found = "not known to be locked" + (f" (application clock at its default {default} MHz, max {top} MHz)"
                                        if default else "")
    return finding(f"{g}.clocks", "warn", found, f"sudo nvidia-smi -i {i} --lock-gpu-clocks={mhz},{mhz}  # lower "
                   "if it power-throttles; --reset-gpu-clocks undoes it")


def check_power_limit(nvml, h, g: str, i: int) -> Finding:
    limit = guarded(nvml.nvmlDeviceGetPowerManagementLimit, h)  # mW
    default = guarded(nvml.nvmlDeviceGetPowerManagementDefaultLimit, h)
    enforced = guarded(nvml.nvmlDeviceGetEnforcedPowerLimit, h)
    if limit is None or default is None:
        return finding(f"{g}.power_limit", "unknown", "power limits not reported")
    if limit < default or (enforced is not None and enforced < limit):
        return finding(f"{g}.power_limit", "warn", f"{(enforced or limit) / 1000:.0f} W enforced, default "
                       f"{default / 1000:.0f} W", f"sudo nvidia-smi -i {i} -pl {default // 1000}")
    return finding(f"{g}.power_limit", "ok", f"{limit / 1000:.0f} W (default {default / 1000:.0f} W)")


def check_mode(nvml, h, g: str, i: int, key: str) -> Finding:
    """ECC or MIG, each (current, pending): warn when a reset would change it, and when MIG is on."""
    mode = guarded(nvml.nvmlDeviceGetEccMode if key == "ecc" else nvml.nvmlDeviceGetMigMode, h)
    if mode is None:
        return finding(f"{g}.{key}", "unknown", "not reported (unsupported on this GPU?)")
    cur, pending = (int(m) for m in mode)
    found = ("on" if cur else "off") + ("" if cur == pending else f", {'on' if pending else 'off'} after a reset")
    if cur == pending and not (key == "mig" and cur):
        return finding(f"{g}.{key}", "ok", found)
    fix = f"sudo nvidia-smi -i {i} -mig 0" if key == "mig" else f"sudo nvidia-smi -i {i} -e {cur}  # keep it"
    return finding(f"{g}.{key}", "warn", found, fix)


def check_driver(nvml, torch_cuda: str | None) -> Finding:
    driver = guarded(nvml.nvmlSystemGetDriverVersion)
    driver = driver.decode() if isinstance(driver, bytes) else driver
    v = guarded(nvml.nvmlSystemGetCudaDriverVersion)
    cuda = None if v is None else f"{v // 1000}.{v % 1000 // 10}"  # 12040 -> "12.4"
    found = f"driver {driver or '?'}, CUDA {cuda or '?'}" + (f"; torch for CUDA {torch_cuda}" if torch_cuda else "")
    if cuda and torch_cuda and tuple(map(int, torch_cuda.split(".")[:2])) > tuple(map(int, cuda.split("."))):
        return finding("gpu.driver", "warn", found, f"install a driver for CUDA {torch_cuda}, or torch for CUDA {cuda}")
    return finding("gpu.driver", "ok" if driver else "unknown", found)


def _reasons(nvml, h) -> int | None:
    query = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or getattr(
        nvml, "nvmlDeviceGetCurrentClocksThrottleReasons", None)  # renamed in NVML 12.2, same bits
    return None if query is None else guarded(query, h)


def _handles(nvml, index: int | None) -> list[tuple[int, object]]:
    """(NVML index, handle) of every GPU, or of torch's cuda:`index`, matched through CUDA_VISIBLE_DEVICES without
    starting CUDA here (a context would show as a process on the GPU): exact on single-GPU and PCI-ordered machines."""
    if index is None:
        return [(i, guarded(nvml.nvmlDeviceGetHandleByIndex, i)) for i in range(guarded(nvml.nvmlDeviceGetCount) or 0)]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [v.strip() for v in visible.split(",")] if visible is not None else [str(i) for i in range(index + 1)]
    one = ids[index] if index < len(ids) else ""
    if one.startswith(("GPU-", "MIG-")):
        return [(index, guarded(nvml.nvmlDeviceGetHandleByUUID, one))]
    return [(int(one), guarded(nvml.nvmlDeviceGetHandleByIndex, int(one)))] if one.isdigit() else []


def gpu_findings(host: Host, index: int | None = None, critical_only: bool = False,
                 torch_cuda: str | None = None) -> list[Finding]:
    """The checks of every GPU NVML sees (or only torch's cuda:`index`); critical_only: throttle and processes only,
    and nothing said where there is no NVML."""
    nvml = load_nvml()
    if nvml is None:
        return [] if critical_only else [finding("gpu", "unknown", "nvidia-ml-py is not installed",
                                                 "pip install nvidia-ml-py")]
    try:
        nvml.nvmlInit()
    except Exception as e:  # noqa: BLE001 - any NVML failure means: no NVIDIA GPU to ask here
        return [] if critical_only else [finding("gpu", "unknown", f"no NVIDIA driver here (NVML: {e})")]
    try:
        if not critical_only and torch_cuda is None:  # a driver is there: say which CUDA torch was built for
            torch_cuda = guarded(lambda: __import__("torch").version.cuda)
        out = [] if critical_only else [check_driver(nvml, torch_cuda)]
        for i, h in _handles(nvml, index):
            if h is None:
                continue
            g, reasons = f"gpu{i}", _reasons(nvml, h)
            out += [check_throttle(g, i, reasons), check_processes(nvml, h, g, i, host, critical_only)]
            if not critical_only:
                out += [check_persistence(nvml, h, g, i), check_clocks(nvml, h, g, i, reasons),
                        check_power_limit(nvml, h, g, i), check_mode(nvml, h, g, i, "ecc"),
                        check_mode(nvml, h, g, i, "mig")]
        return out
    finally:
        guarded(nvml.nvmlShutdown)
