import threading
import time

import pytest
import torch

from bench import telemetry
from bench.telemetry import SUMMARY_KEYS, Telemetry, reason_names
from tests.optional import needs_cuda


class FakeNVMLError(Exception):
    pass


class FakeNVML:
    """Deterministic pynvml stand-in: 300 W, 1410 MHz, 60 C rising 1 C per read up to 70 C, SW power cap set,
    energy counter +5 J per read."""

    NVML_CLOCK_SM = 0
    NVML_TEMPERATURE_GPU = 0
    NVMLError = FakeNVMLError

    def __init__(self, energy=True, fail_init=False):
        self.energy_mj = 1_000_000
        self.temps = iter(range(60, 10_000))
        self.shutdown = False
        self.lock = threading.Lock()
        self._energy, self._fail_init = energy, fail_init

    def nvmlInit(self):
        if self._fail_init:
            raise FakeNVMLError("Driver Not Loaded")

    def nvmlShutdown(self):
        self.shutdown = True

    def nvmlDeviceGetHandleByUUID(self, uuid):
        raise FakeNVMLError("Not Found")  # a CPU-only torch gives no UUID anyway; exercise the index fallback

    def nvmlDeviceGetHandleByIndex(self, i):
        return ("handle", i)

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        if not self._energy:
            raise FakeNVMLError("Not Supported")
        with self.lock:
            self.energy_mj += 5_000
            return self.energy_mj

    def nvmlDeviceGetPowerUsage(self, h):
        return 300_000

    def nvmlDeviceGetClockInfo(self, h, domain):
        return 1410

    def nvmlDeviceGetTemperature(self, h, sensor):
        return min(next(self.temps), 70)

    def nvmlDeviceGetCurrentClocksEventReasons(self, h):
        return 0x1 | 0x4  # gpu_idle | sw_power_cap


def test_cpu_starts_nothing(monkeypatch):
    monkeypatch.setattr(telemetry, "load_nvml", lambda: pytest.fail("CPU telemetry must not load NVML"))
    threads = threading.active_count()
    with Telemetry("cpu") as tel:
        assert tel._thread is None
        assert threading.active_count() == threads
    assert tel.summary() == dict.fromkeys(SUMMARY_KEYS)


def test_without_pynvml_all_none(monkeypatch):
    monkeypatch.setattr(telemetry, "load_nvml", lambda: None)
    with Telemetry("cuda:0") as tel:
        assert tel._thread is None
    assert tel.summary() == dict.fromkeys(SUMMARY_KEYS)


def test_nvml_init_failure_all_none(monkeypatch):
    monkeypatch.setattr(telemetry, "load_nvml", lambda: FakeNVML(fail_init=True))
    with Telemetry("cuda") as tel:
        assert tel._thread is None
    assert tel.summary() == dict.fromkeys(SUMMARY_KEYS)


def test_fake_nvml_summary(monkeypatch):
    fake = FakeNVML()
    monkeypatch.setattr(telemetry, "load_nvml", lambda: fake)
    with Telemetry("cuda:0", interval_s=0.005) as tel:
        thread = tel._thread
        assert thread is not None and thread.is_alive() and thread.daemon
        time.sleep(0.05)
    assert not thread.is_alive()
    assert tel._thread is None
    assert fake.shutdown
    s = tel.summary()
    assert set(s) == set(SUMMARY_KEYS)
    assert s["energy_j"] == 5.0 * (len(tel.samples) - 1)  # one counter read per sample, 5 J apart
    assert s["avg_power_w"] == 300.0
    assert s["sm_clock_mhz"] == 1410.0
    assert s["max_temp_c"] == min(60 + len(tel.samples) - 1, 70)  # one temperature read per sample
    assert s["throttled"] is True
    assert s["throttle_reasons"] == ["gpu_idle", "sw_power_cap"]
    # Sample count is never asserted exactly: it depends on the scheduler, and one entry/exit sample is guaranteed.
    assert len(tel.samples) >= 2


def test_window_keeps_only_the_samples_taken_in_it(monkeypatch):
    monkeypatch.setattr(telemetry, "load_nvml", lambda: FakeNVML())
    with Telemetry("cuda:0", interval_s=0.005) as tel:
        time.sleep(0.02)
        t0 = time.monotonic()
        time.sleep(0.05)
        t1 = time.monotonic()
        time.sleep(0.02)
    inside = [x for x in tel.samples if t0 <= x.t_s <= t1]
    assert 2 <= len(inside) < len(tel.samples)
    assert tel.summary(window=(t0, t1))["energy_j"] == 5.0 * (len(inside) - 1)
    assert tel.summary(window=(t0, t1))["max_temp_c"] == max(x.temp_c for x in inside)
    assert tel.summary()["energy_j"] == 5.0 * (len(tel.samples) - 1)


def test_energy_falls_back_to_integrating_power(monkeypatch):
    monkeypatch.setattr(telemetry, "load_nvml", lambda: FakeNVML(energy=False))
    with Telemetry("cuda:0", interval_s=0.005) as tel:
        time.sleep(0.02)
    elapsed = tel.samples[-1].t_s - tel.samples[0].t_s
    assert tel.summary()["energy_j"] == pytest.approx(300.0 * elapsed)


def test_idle_alone_is_not_throttling(monkeypatch):
    fake = FakeNVML()
    fake.nvmlDeviceGetCurrentClocksEventReasons = lambda h: 0x1 | 0x2  # gpu_idle | applications_clocks_setting
    monkeypatch.setattr(telemetry, "load_nvml", lambda: fake)
    with Telemetry("cuda:0", interval_s=0.005) as tel:
        pass
    s = tel.summary()
    assert s["throttled"] is False
    assert s["throttle_reasons"] == ["gpu_idle", "applications_clocks_setting"]


@pytest.mark.parametrize(
    "mask, names",
    [(0, []), (0x8 | 0x40, ["hw_slowdown", "hw_thermal_slowdown"]), (0x200, ["bit9"])],
)
def test_reason_names(mask, names):
    assert reason_names(mask) == names


@needs_cuda
def test_real_gpu_never_raises():
    a = torch.randn(2048, 2048, device="cuda")
    with Telemetry("cuda", interval_s=0.01) as tel:
        for _ in range(50):
            a @ a
        torch.cuda.synchronize()
    s = tel.summary()
    assert set(s) == set(SUMMARY_KEYS)
    if s["avg_power_w"] is not None:
        assert s["avg_power_w"] > 0
