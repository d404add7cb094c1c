"""NVML sampler: power, energy, SM clock, temperature and clock-event (throttle) reasons while a case runs.

    with Telemetry("cuda:0") as tel:
        run_case()
    record_metrics.update(tel.summary())

On CPU, or where NVML is missing or fails, no thread starts and every summary value is None; nothing here raises.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass

from bench.env import guarded, load_nvml
from bench.interference import case_root, gpu_others, tree_pids

SUMMARY_KEYS = ("energy_j", "avg_power_w", "sm_clock_mhz", "max_temp_c", "throttled", "throttle_reasons")

# Bit values of nvmlClocksEventReason* (nvmlClocksThrottleReason* before NVML 12.2; same bits) in nvml.h.
REASON_BITS = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}
# A case counts as throttled when the GPU lowered its clocks on its own: power cap, thermal limits, HW slowdown or
# an external power brake. Not counted: gpu_idle (the gaps between kernels), applications_clocks_setting and
# display_clock_setting (clocks someone chose), sync_boost (held to the slowest GPU of a sync-boost group).
THROTTLE_BITS = 0x4 | 0x8 | 0x20 | 0x40 | 0x80
# What disturbs a timing from outside the workload: thermal limits, HW slowdown, an external power brake. The power
# cap is left out: heavy kernels reach it on every run alike (an H100 FP8 GEMM does), so it is the workload's own.
SLOWDOWN_BITS = 0x8 | 0x20 | 0x40 | 0x80


def reason_names(mask: int) -> list[str]:
    """Names of the bits set in a clock-event reason mask, unknown bits as "bit<n>"."""
    return [REASON_BITS.get(1 << b, f"bit{b}") for b in range(mask.bit_length()) if mask >> b & 1]


def _cuda_index(device) -> int | None:
    """The torch CUDA index of "cuda" / "cuda:i" / a torch.device, None for any other device."""
    text = str(device)
    if not text.startswith("cuda"):
        return None
    if ":" in text:
        return int(text.split(":", 1)[1])
    index = getattr(device, "index", None)
    if index is not None:
        return index
    import torch

    return guarded(torch.cuda.current_device) or 0


def _torch_uuid(index: int) -> str | None:
    try:
        import torch

        return f"GPU-{torch.cuda.get_device_properties(index).uuid}"
    except Exception:
        return None


@dataclass(frozen=True)
class Sample:
    t_s: float
    """time.monotonic() when taken."""
    power_w: float | None
    sm_clock_mhz: float | None
    temp_c: float | None
    reasons: int | None
    """Clock-event reason bit mask (REASON_BITS)."""
    energy_mj: int | None = None
    """The GPU's total-energy counter (mJ since driver load; Volta and newer)."""
    other_procs: int | None = None
    """Compute processes on the GPU outside the case's process tree (bench.interference)."""


class Telemetry:
    """Samples one GPU through NVML from a daemon thread between __enter__ and __exit__."""

    def __init__(self, device="cpu", interval_s: float = 0.05):
        self.device = device
        self.interval_s = interval_s
        self.samples: list[Sample] = []
        self._nvml = None
        self._handle = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.root = case_root()
        self._tree: set[int] = set()
        self.max_sm_clock_mhz: float | None = None

    def __enter__(self) -> Telemetry:
        index = _cuda_index(self.device)
        nvml = load_nvml() if index is not None else None
        if nvml is None:
            return self
        try:
            nvml.nvmlInit()
        except Exception:
            return self
        self._nvml = nvml
        # torch and NVML number GPUs differently (CUDA_VISIBLE_DEVICES, CUDA_DEVICE_ORDER=FASTEST_FIRST), so match
        # by UUID; the index is right on the common single-visible-GPU and PCI-ordered setups.
        uuid = _torch_uuid(index)
        self._handle = (uuid and guarded(nvml.nvmlDeviceGetHandleByUUID, uuid)) or guarded(
            nvml.nvmlDeviceGetHandleByIndex, index
        )
        if self._handle is None:
            self._close()
            return self
        self.max_sm_clock_mhz = guarded(lambda: nvml.nvmlDeviceGetMaxClockInfo(self._handle, nvml.NVML_CLOCK_SM))
        self._sample()
        self._thread = threading.Thread(target=self._loop, name="techbench-telemetry", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        if self._handle is not None:
            self._sample()
        self._close()

    def _close(self) -> None:
        if self._nvml is not None:
            guarded(self._nvml.nvmlShutdown)
            self._nvml = None

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def _sample(self) -> None:
        nvml, h = self._nvml, self._handle
        power_mw = guarded(nvml.nvmlDeviceGetPowerUsage, h)
        reasons_fn = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or getattr(
            nvml, "nvmlDeviceGetCurrentClocksThrottleReasons", None
        )
        self.samples.append(
            Sample(
                t_s=time.monotonic(),
                power_w=None if power_mw is None else power_mw / 1000,
                sm_clock_mhz=guarded(lambda: nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_SM)),
                temp_c=guarded(lambda: nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU)),
                reasons=None if reasons_fn is None else guarded(reasons_fn, h),
                energy_mj=guarded(nvml.nvmlDeviceGetTotalEnergyConsumption, h),
                other_procs=self._other_procs(),
            )
        )

    def _other_procs(self) -> int | None:
        procs = guarded(lambda: self._nvml.nvmlDeviceGetComputeRunningProcesses(self._handle))
        if procs is None:
            return None
        pids = [p.pid for p in procs]
        if any(p not in self._tree for p in pids):  # a process not seen yet: perhaps one the case started
            self._tree = set(tree_pids(self.root))
        torch = sys.modules.get("torch")
        return gpu_others(pids, self._tree, bool(torch and guarded(torch.cuda.is_initialized)))

    def _in(self, window: tuple[float, float] | None) -> list[Sample]:
        samples = self.samples
        if window is not None:
            inside = [s for s in samples if window[0] <= s.t_s <= window[1]]
            samples = inside if len(inside) >= 2 else samples  # too short a window for the 50 ms sampler
        return samples

    def interference(self, window: tuple[float, float] | None) -> dict:
        """gpu_other_procs (most seen at once), gpu_clock_pct (mean SM clock, % of its max) and gpu_slowdown over
        the timed window; all None without a window or NVML samples."""
        samples = self._in(window) if window is not None else []
        procs = [s.other_procs for s in samples if s.other_procs is not None]
        clocks = [s.sm_clock_mhz for s in samples if s.sm_clock_mhz is not None]
        masks = [s.reasons for s in samples if s.reasons is not None]
        top = self.max_sm_clock_mhz
        return {
            "gpu_other_procs": max(procs) if procs else None,
            "gpu_clock_pct": round(100 * sum(clocks) / len(clocks) / top, 1) if clocks and top else None,
            "gpu_slowdown": any(m & SLOWDOWN_BITS for m in masks) if masks else None,
        }

    def summary(self, window: tuple[float, float] | None = None) -> dict:
        """energy_j, avg_power_w, sm_clock_mhz (mean), max_temp_c, throttled, throttle_reasons; all None without
        NVML samples. `window` (time.monotonic() start and end, e.g. Timing.window_s) keeps only the samples taken
        in it, so that the figures describe the timed repetitions rather than set-up."""
        samples = self._in(window)
        if not samples:
            return dict.fromkeys(SUMMARY_KEYS)
        powers = [s.power_w for s in samples if s.power_w is not None]
        clocks = [s.sm_clock_mhz for s in samples if s.sm_clock_mhz is not None]
        temps = [s.temp_c for s in samples if s.temp_c is not None]
        masks = [s.reasons for s in samples if s.reasons is not None]
        mask = 0
        for m in masks:
            mask |= m
        return {
            "energy_j": _energy_j(samples),
            "avg_power_w": sum(powers) / len(powers) if powers else None,
            "sm_clock_mhz": sum(clocks) / len(clocks) if clocks else None,
            "max_temp_c": max(temps) if temps else None,
            "throttled": bool(mask & THROTTLE_BITS) if masks else None,
            "throttle_reasons": reason_names(mask) if masks else None,
        }


def _energy_j(samples: list[Sample]) -> float | None:
    counter = [s for s in samples if s.energy_mj is not None]
    if len(counter) >= 2:
        return (counter[-1].energy_mj - counter[0].energy_mj) / 1000
    # The energy counter needs Volta or newer; without it, integrate the power samples over time (trapezoids).
    # Coarser: on A100/H100 nvmlDeviceGetPowerUsage is a trailing 1 s average, so short cases smear.
    pts = [(s.t_s, s.power_w) for s in samples if s.power_w is not None]
    if len(pts) < 2:
        return None
    return sum((t1 - t0) * (p0 + p1) / 2 for (t0, p0), (t1, p1) in zip(pts, pts[1:]))


def gpu_state() -> list[dict] | None:
    """Every GPU NVML sees, now: its compute processes, SM clock and max, temperature and clock-event reasons; None
    without NVML (run.json's machine state at the start and end of a run)."""
    nvml = load_nvml()
    if nvml is None:
        return None
    try:
        nvml.nvmlInit()
    except Exception:
        return None
    try:
        reasons_fn = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or getattr(
            nvml, "nvmlDeviceGetCurrentClocksThrottleReasons", None
        )
        out = []
        for i in range(guarded(lambda: nvml.nvmlDeviceGetCount()) or 0):
            h = guarded(nvml.nvmlDeviceGetHandleByIndex, i)
            if h is None:
                continue
            procs = guarded(lambda: nvml.nvmlDeviceGetComputeRunningProcesses(h))
            mask = None if reasons_fn is None else guarded(reasons_fn, h)
            out.append({
                "index": i,
                "compute_procs": None if procs is None else len(procs),
                "sm_clock_mhz": guarded(lambda: nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_SM)),
                "sm_clock_max_mhz": guarded(lambda: nvml.nvmlDeviceGetMaxClockInfo(h, nvml.NVML_CLOCK_SM)),
                "temp_c": guarded(lambda: nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU)),
                "clock_event_reasons": None if mask is None else reason_names(mask),
            })
        return out
    finally:
        guarded(nvml.nvmlShutdown)
