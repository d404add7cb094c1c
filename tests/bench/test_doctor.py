"""`bench doctor` and bench run's disturbance warning, against a fake /sys and /proc tree and a fake NVML."""

import io
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from rich.console import Console

from bench import doctor, doctor_gpu, doctor_limits
from bench.cli import main
from bench.doctor import Host, check_busy, check_load, format_cpus, measure_busy, parse_cpus, snapshot
from bench.suite import SUITES
from tests.bench import fake_suites  # noqa: F401 - registers the fake suites

CPU = "sys/devices/system/cpu"
OWN = 7  # the pid the fake tree gives this process


def tree(root: Path, files: dict) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def proc(cpu: tuple, procs: dict, ncpu: int = 2) -> dict:
    """/proc/stat with `cpu` = (user, idle, steal) ticks of all CPUs, and "pid (comm) ... utime stime" per process."""
    user, idle, steal = cpu
    files = {"proc/stat": f"cpu  {user} 0 0 {idle} 0 0 0 {steal} 0 0\n"
                          + "".join(f"cpu{i} 0 0 0 0 0 0 0 0 0 0\n" for i in range(ncpu))}
    for pid, (comm, ticks) in procs.items():
        files[f"proc/{pid}/stat"] = f"{pid} ({comm}) S 1 1 1 0 -1 0 0 0 0 0 {ticks} 0 0 0 20 0 1 0 100 0 0"
        files[f"proc/{pid}/comm"] = f"{comm}\n"
    return files


def sampled(tmp_path, before: dict, after: dict, **host) -> Host:
    """A Host whose sample sees `before`, then `after` (written by its sleep)."""
    tree(tmp_path, before)
    return Host(tmp_path, pid=OWN, affinity=host.pop("affinity", {0, 1}), sleep=lambda s: tree(tmp_path, after),
                **host)


# 2 CPUs over 100 ticks each (200 in all): this process 60 ticks, a calm daemon 4
CALM = (proc((1000, 5000, 0), {OWN: ("bench", 0), 50: ("sshd", 0)}),
        proc((1064, 5136, 0), {OWN: ("bench", 60), 50: ("sshd", 4)}))


def busy_of(tmp_path, before, after):
    host = sampled(tmp_path, before, after)
    first = snapshot(host)
    host.sleep(0)
    return measure_busy(first, snapshot(host), OWN)


@pytest.mark.parametrize("text, cpus, back", [("0-3,8,10-11", {0, 1, 2, 3, 8, 10, 11}, "0-3,8,10-11"),
                                              ("domain,managed_irq,2-3", {2, 3}, "2-3"), ("\n", set(), "")])
def test_cpu_lists(text, cpus, back):
    assert parse_cpus(text) == cpus and format_cpus(cpus) == back


@pytest.mark.parametrize("governors, status", [(["performance"] * 4, "ok"), (["performance", "powersave"] * 2, "warn"),
                                               ([], "unknown")])
def test_governor(tmp_path, governors, status):
    tree(tmp_path, {f"{CPU}/cpu{i}/cpufreq/scaling_governor": f"{g}\n" for i, g in enumerate(governors)})
    f = doctor.check_governor(Host(tmp_path))
    assert f.status == status and f.why
    if status == "warn":
        assert f.found == "performance on cpu 0,2; powersave on cpu 1,3"
        assert f.fix == "sudo cpupower frequency-set -g performance"


@pytest.mark.parametrize("files, status, fix", [
    ({"intel_pstate/no_turbo": "0"}, "warn", f"echo 1 | sudo tee /{CPU}/intel_pstate/no_turbo"),
    ({"intel_pstate/no_turbo": "1", "cpufreq/boost": "1"}, "ok", None),  # intel_pstate decides where it runs
    ({"cpufreq/boost": "1"}, "warn", f"echo 0 | sudo tee /{CPU}/cpufreq/boost"),
    ({"cpufreq/boost": "0"}, "ok", None),
    ({}, "unknown", None),
])
def test_turbo(tmp_path, files, status, fix):
    f = doctor.check_turbo(Host(tree(tmp_path, {f"{CPU}/{k}": v for k, v in files.items()})))
    assert (f.status, f.fix) == (status, fix)


@pytest.mark.parametrize("files, status, found", [
    ({"smt/active": "1"}, "warn", "on"), ({"smt/active": "0"}, "ok", "off"),
    ({"cpu0/topology/thread_siblings_list": "0,2", "cpu2/topology/thread_siblings_list": "0,2"}, "warn",
     "on (2 threads a core)"),
    ({"cpu0/topology/thread_siblings_list": "0", "cpu1/topology/thread_siblings_list": "1"}, "ok",
     "off (one thread a core)"),
    ({}, "unknown", "no smt/active or topology/thread_siblings_list here"),
])
def test_smt(tmp_path, files, status, found):
    f = doctor.check_smt(Host(tree(tmp_path, {f"{CPU}/{k}": v for k, v in files.items()})))
    assert (f.status, f.found) == (status, found)
    assert (f.fix is not None) == (status == "warn")


@pytest.mark.parametrize("files, affinity, status, found, fix", [
    ({f"{CPU}/isolated": "\n", "proc/cmdline": "quiet", f"{CPU}/online": "0-3"}, {0, 1, 2, 3}, "warn",
     "no CPU isolated", "add isolcpus=2-3 nohz_full=2-3 rcu_nocbs=2-3 to the kernel command line, reboot, then "
     "`bench run --cpus 2-3 ...`"),
    ({f"{CPU}/isolated": "2-3\n", "proc/cmdline": "isolcpus=domain,2-3 nohz_full=2-3"}, {2, 3}, "warn",
     "cpu 2-3 isolated (nohz_full 2-3); bench itself runs on cpu 2-3 (taskset), beside each case",
     "bench run --cpus 2-3 ... without taskset (each case on them, bench itself off them; the scheduler"),
    ({f"{CPU}/isolated": "2-3\n"}, {0, 1}, "ok", "cpu 2-3 isolated; `bench run --cpus 2-3` puts each case on them",
     None),  # what isolcpus leaves every process: the setting --cpus is for
    ({f"{CPU}/isolated": "2-3\n"}, {0, 1, 2, 3}, "warn", "cpu 2-3 isolated, but bench runs on cpu 0-3, isolated or not",
     "bench run --cpus 2-3 ... without taskset (each case on them, bench itself off them"),
    ({"proc/cmdline": "isolcpus=1"}, {0, 1}, "warn", "cpu 1 isolated, but bench runs on cpu 0-1, isolated or not",
     "bench run --cpus 1 "),
    ({}, {0}, "unknown", "no cpu/isolated or /proc/cmdline here", None),
])
def test_isolation(tmp_path, files, affinity, status, found, fix):
    f = doctor.check_isolation(Host(tree(tmp_path, files), affinity=affinity))
    assert (f.status, f.found) == (status, found)
    assert f.fix == fix or f.fix.startswith(fix)


@pytest.mark.parametrize("meminfo, status, found", [
    ("MemTotal: 16777216 kB\nMemFree: 100 kB\nMemAvailable: 838860 kB\n", "warn", "0.8 GiB of 16.0 GiB available (5%)"),
    ("MemTotal: 16777216 kB\nMemAvailable: 8388608 kB\nHugePages_Total: 0\n", "ok",
     "8.0 GiB of 16.0 GiB available (50%)"),
    ("MemTotal: 16777216 kB\n", "unknown", "no MemTotal/MemAvailable in /proc/meminfo"),
])
def test_memory(tmp_path, meminfo, status, found):
    f = doctor.check_memory(Host(tree(tmp_path, {"proc/meminfo": meminfo})))
    assert (f.status, f.found) == (status, found)


def test_a_calm_sample_leaves_this_process_aside(tmp_path):
    busy = busy_of(tmp_path, *CALM)
    assert busy.busy == pytest.approx((64 - 60) / 200)  # user 64 ticks, of which 60 were this process's
    assert busy.others == [] and busy.steal == 0
    assert check_busy(busy).status == "ok"


def test_one_busy_process_is_critical(tmp_path):
    before = proc((1000, 5000, 0), {OWN: ("bench", 0), 42: ("stress (x)", 0), 50: ("sshd", 0)})
    after = proc((1110, 5090, 0), {OWN: ("bench", 0), 42: ("stress (x)", 90), 50: ("sshd", 20)})
    busy = busy_of(tmp_path, before, after)
    assert busy.others == [(42, "stress (x)", 0.9), (50, "sshd", 0.2)]  # a comm with ") " still parses
    f = check_busy(busy)
    assert f.status == "critical" and "stress (x) (pid 42) 0.9 CPU" in f.found and f.fix.startswith("ps -o pid")
    assert "-p 42,50" in f.fix


def test_many_small_processes_that_fill_the_cpus_are_critical(tmp_path):
    before = proc((1000, 5000, 0), {p: ("python", 0) for p in range(40, 45)})
    after = proc((1190, 5010, 0), {p: ("python", 38) for p in range(40, 45)})  # 5 x 0.38 CPU, none >= 0.5
    f = check_busy(busy_of(tmp_path, before, after))
    assert f.status == "critical" and f.found.startswith("95% of the CPUs busy")
    assert f.found.count("python (pid") == 3  # the busiest three are named


@pytest.mark.parametrize("load, sample, status", [("0.20", CALM, "ok"), ("1.50", CALM, "warn"),
                                                  ("9.00", CALM, "warn"), ("9.00", "busy", "critical"),
                                                  ("9.00", None, "critical")])
def test_load_against_cpu_count(tmp_path, load, sample, status):
    """A high load average whose sample found the CPUs idle is a burst that ended: warn, not critical."""
    if sample == "busy":
        sample = (proc((1000, 5000, 0), {42: ("make", 0)}), proc((1180, 5020, 0), {42: ("make", 180)}))
    tree(tmp_path, {"proc/loadavg": f"{load} 1.00 0.50 3/200 999\n", f"{CPU}/online": "0-1\n"})
    busy = busy_of(tmp_path, *sample) if sample else measure_busy(snapshot(Host(tmp_path)), snapshot(Host(tmp_path)), 0)
    f = check_load(Host(tmp_path), busy)
    assert f.status == status and f.found.startswith(f"load average {load} (1 min) on 2 CPUs")
    assert ("a burst that ended" in f.found) == (status == "warn" and load == "9.00")


@pytest.mark.parametrize("steal, flags, status, found", [(0, "fpu hypervisor", "ok", "a VM; nothing stolen"),
                                                        (20, "fpu hypervisor", "warn", "a VM; 10.0% stolen"),
                                                        (0, "fpu sse", "ok", "bare metal")])
def test_steal_time(tmp_path, steal, flags, status, found):
    tree(tmp_path, {"proc/cpuinfo": f"processor\t: 0\nflags\t\t: {flags}\n"})
    busy = busy_of(tmp_path, proc((1000, 5000, 0), {}), proc((1000, 5200 - steal, steal), {}))
    f = doctor.check_vm(Host(tmp_path), busy)
    assert f.status == status and f.found.startswith(found)


def test_missing_proc_is_unknown_not_an_error(tmp_path):
    host = Host(tmp_path, pid=OWN, sleep=lambda s: None, environ={})
    found = doctor.diagnose(host, sample_s=0)
    cpu = {f.check: f.status for f in found if not f.check.startswith("gpu")}
    # the environment is this process's own, never missing: no thread variable set is ok
    assert cpu == {**dict.fromkeys(["cpu.governor", "cpu.turbo", "cpu.smt", "cpu.isolation", "cpu.quota",
                                    "cpu.affinity", "cpu.load", "cpu.busy", "cpu.vm", "memory"], "unknown"),
                   "cpu.threads": "ok"}


# ---- GPU ---------------------------------------------------------------------------------------------------------

HEALTHY = {
    "nvmlInit": None, "nvmlShutdown": None, "nvmlDeviceGetCount": 1,
    "nvmlDeviceGetHandleByIndex": lambda i: ("index", i), "nvmlDeviceGetHandleByUUID": lambda u: ("uuid", u),
    "nvmlSystemGetDriverVersion": b"550.54.15", "nvmlSystemGetCudaDriverVersion": 12040,
    "nvmlDeviceGetCurrentClocksEventReasons": 0x1, "nvmlDeviceGetComputeRunningProcesses": [],
    "nvmlDeviceGetGraphicsRunningProcesses": [], "nvmlDeviceGetPersistenceMode": 1,
    "nvmlDeviceGetApplicationsClock": 1755, "nvmlDeviceGetDefaultApplicationsClock": 1980,
    "nvmlDeviceGetMaxClockInfo": 1980, "nvmlDeviceGetPowerManagementLimit": 700_000,
    "nvmlDeviceGetPowerManagementDefaultLimit": 700_000, "nvmlDeviceGetEnforcedPowerLimit": 700_000,
    "nvmlDeviceGetEccMode": (1, 1), "nvmlDeviceGetMigMode": (0, 0),
}


class FakeNVMLError(Exception):
    pass


class FakeNVML:
    """pynvml stand-in: each query returns its value in HEALTHY (or `values`), calls it, or raises it."""

    NVML_CLOCK_GRAPHICS, NVML_CLOCK_SM = 0, 1

    def __init__(self, **values):
        self.values = {**HEALTHY, **values}
        self.asked = []

    def __getattr__(self, name):
        if name not in self.values or self.values[name] is AttributeError:
            raise AttributeError(name)
        value = self.values[name]

        def query(*args):
            self.asked.append((name, *args))
            if isinstance(value, Exception):
                raise value
            return value(*args) if callable(value) else value
        return query


def gpu(monkeypatch, tmp_path, critical_only=False, index=None, torch_cuda="12.4", **values):
    nvml = FakeNVML(**values)
    monkeypatch.setattr(doctor_gpu, "load_nvml", lambda: nvml)
    tree(tmp_path, {"proc/4242/comm": "python\n", "proc/1500/comm": "Xorg\n"})
    found = doctor_gpu.gpu_findings(Host(tmp_path, pid=OWN), index, critical_only, torch_cuda=torch_cuda)
    return {f.check: f for f in found}, nvml


def test_a_healthy_gpu(monkeypatch, tmp_path):
    found, nvml = gpu(monkeypatch, tmp_path)
    assert {c: f.status for c, f in found.items()} == {
        "gpu.driver": "ok", "gpu0.throttle": "ok", "gpu0.processes": "ok", "gpu0.persistence": "ok",
        "gpu0.clocks": "ok", "gpu0.power_limit": "ok", "gpu0.ecc": "ok", "gpu0.mig": "ok"}
    assert found["gpu.driver"].found == "driver 550.54.15, CUDA 12.4; torch for CUDA 12.4"
    assert found["gpu0.clocks"].found == "application clocks 1755 MHz (default 1980)"
    assert found["gpu0.throttle"].found == "no slowdown now (gpu_idle)"
    assert nvml.asked[-1] == ("nvmlShutdown",)


def test_what_a_gpu_would_need_changed(monkeypatch, tmp_path):
    proc_ = SimpleNamespace(pid=4242, usedGpuMemory=2**30)
    found, _ = gpu(monkeypatch, tmp_path, torch_cuda="12.8", nvmlDeviceGetCurrentClocksEventReasons=0x1 | 0x40,
                   nvmlDeviceGetComputeRunningProcesses=[proc_, SimpleNamespace(pid=OWN, usedGpuMemory=0)],
                   nvmlDeviceGetPersistenceMode=0, nvmlDeviceGetApplicationsClock=1980,
                   nvmlDeviceGetPowerManagementLimit=500_000, nvmlDeviceGetEnforcedPowerLimit=500_000,
                   nvmlDeviceGetEccMode=(1, 0), nvmlDeviceGetMigMode=(1, 1))
    expect = {
        "gpu.driver": ("warn", "install a driver for CUDA 12.8, or torch for CUDA 12.4"),
        "gpu0.throttle": ("critical", "nvidia-smi -i 0 -q -d PERFORMANCE,TEMPERATURE,POWER"),
        "gpu0.processes": ("critical", "nvidia-smi -i 0 --query-compute-apps=pid,process_name,used_memory"),
        "gpu0.persistence": ("warn", "sudo nvidia-smi -i 0 -pm 1"),
        "gpu0.clocks": ("warn", "sudo nvidia-smi -i 0 --lock-gpu-clocks=1980,1980"),
        "gpu0.power_limit": ("warn", "sudo nvidia-smi -i 0 -pl 700"),
        "gpu0.ecc": ("warn", "sudo nvidia-smi -i 0 -e 1"),
        "gpu0.mig": ("warn", "sudo nvidia-smi -i 0 -mig 0"),
    }
    assert {c: f.status for c, f in found.items()} == {c: s for c, (s, _) in expect.items()}
    for check, (_, fix) in expect.items():
        assert found[check].fix.startswith(fix), check
    assert found["gpu0.throttle"].found == "slowed now: hw_thermal_slowdown"
    assert found["gpu0.processes"].found == "compute: python (pid 4242)"  # this process is not "another"
    assert found["gpu0.power_limit"].found == "500 W enforced, default 700 W"
    assert found["gpu0.ecc"].found == "on, off after a reset"


def test_clocks_held_by_a_setting_and_graphics_only_processes(monkeypatch, tmp_path):
    found, _ = gpu(monkeypatch, tmp_path, nvmlDeviceGetCurrentClocksEventReasons=0x2,
                   nvmlDeviceGetApplicationsClock=1980, nvmlDeviceGetGraphicsRunningProcesses=[
                       SimpleNamespace(pid=1500, usedGpuMemory=None)])
    assert found["gpu0.clocks"].status == "ok" and "locked or application clocks" in found["gpu0.clocks"].found
    assert (found["gpu0.processes"].status, found["gpu0.processes"].found) == ("warn", "graphics: Xorg (pid 1500)")


def test_unsupported_queries_are_unknown_and_old_nvml_names_work(monkeypatch, tmp_path):
    unsupported = FakeNVMLError("Not Supported")
    found, _ = gpu(monkeypatch, tmp_path, nvmlDeviceGetCurrentClocksEventReasons=AttributeError,
                   nvmlDeviceGetCurrentClocksThrottleReasons=0x4, **{q: unsupported for q in (
                       "nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetPersistenceMode",
                       "nvmlDeviceGetPowerManagementLimit", "nvmlDeviceGetEccMode", "nvmlDeviceGetMigMode",
                       "nvmlSystemGetDriverVersion")})
    assert found["gpu0.throttle"].found == "slowed now: sw_power_cap"  # NVML before 12.2 names it "Throttle"
    assert {c for c, f in found.items() if f.status == "unknown"} == {
        "gpu.driver", "gpu0.processes", "gpu0.persistence", "gpu0.power_limit", "gpu0.ecc", "gpu0.mig"}


@pytest.mark.parametrize("nvml, found", [(None, "nvidia-ml-py is not installed"),
                                         (FakeNVML(nvmlInit=FakeNVMLError("Driver Not Loaded")),
                                          "no NVIDIA driver here (NVML: Driver Not Loaded)")])
def test_no_nvml_is_unknown_and_says_nothing_to_bench_run(monkeypatch, tmp_path, nvml, found):
    monkeypatch.setattr(doctor_gpu, "load_nvml", lambda: nvml)
    [f] = doctor_gpu.gpu_findings(Host(tmp_path))
    assert (f.check, f.status, f.found) == ("gpu", "unknown", found)
    assert doctor_gpu.gpu_findings(Host(tmp_path), 0, critical_only=True) == []


@pytest.mark.parametrize("visible, asked, name", [(None, ("nvmlDeviceGetHandleByIndex", 1), "gpu1"),
                                                  ("3,2", ("nvmlDeviceGetHandleByIndex", 2), "gpu2"),
                                                  ("GPU-a,GPU-b", ("nvmlDeviceGetHandleByUUID", "GPU-b"), "gpu1")])
def test_bench_runs_gpu_is_found_through_cuda_visible_devices(monkeypatch, tmp_path, visible, asked, name):
    """cuda:1 is the second visible GPU; only its critical checks are asked, and nothing but them."""
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    found, nvml = gpu(monkeypatch, tmp_path, critical_only=True, index=1)
    assert asked in nvml.asked and {c: f.status for c, f in found.items()} == {
        f"{name}.throttle": "ok", f"{name}.processes": "ok"}
    assert not any(q[0] == "nvmlDeviceGetPersistenceMode" for q in nvml.asked)


# ---- bench run's warning and the command ---------------------------------------------------------------------------

def test_critical_warning(monkeypatch, tmp_path):
    calm = sampled(tmp_path / "calm", *CALM)
    assert doctor.critical_warning("cpu", host=calm) is None
    busy = (proc((1000, 5000, 0), {42: ("stress", 0)}), proc((1100, 5100, 0), {42: ("stress", 100)}))
    line = doctor.critical_warning("cpu", host=sampled(tmp_path / "busy", *busy))
    assert "cpu.busy: 50% of the CPUs busy" in line and "stress (pid 42) 1.0 CPU" in line and "\n" not in line
    assert "bench doctor" in line
    monkeypatch.setattr(doctor_gpu, "load_nvml", lambda: FakeNVML(nvmlDeviceGetComputeRunningProcesses=[
        SimpleNamespace(pid=4242, usedGpuMemory=1)]))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    tree(tmp_path / "gpu", {"proc/4242/comm": "python\n"})
    line = doctor.critical_warning("cuda:0", host=sampled(tmp_path / "gpu", *CALM))
    assert line.endswith("gpu0.processes: compute: python (pid 4242) (`bench doctor` says what to do)")


def fake_machine(monkeypatch, tmp_path, load: str, nvml=None):
    """ROOT at a fake tree with this load average (no /proc/stat: the load alone decides), NVML as given."""
    monkeypatch.setattr(doctor, "ROOT", tree(tmp_path, {"proc/loadavg": f"{load} 1 1 1/100 1\n",
                                                        f"{CPU}/online": "0-3\n", f"{CPU}/smt/active": "1\n"}))
    monkeypatch.setattr(doctor, "SAMPLE_S", 0.01)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3})  # every fake CPU: no taskset
    for name in doctor_limits.THREAD_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(doctor_gpu, "load_nvml", lambda: nvml)
    monkeypatch.setattr(torch.version, "cuda", "12.4")  # the fake driver's: a CPU or a CUDA build of torch alike


def test_bench_doctor_prints_each_finding_with_its_fix(monkeypatch, tmp_path, capsys):
    fake_machine(monkeypatch, tmp_path, "9.0", FakeNVML(nvmlDeviceGetPersistenceMode=0))
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "critical cpu.load           load average 9.00 (1 min) on 4 CPUs" in out
    assert "warn     gpu0.persistence   off\n         why: without persistence mode" in out
    assert "         fix: sudo nvidia-smi -i 0 -pm 1" in out and "fix: echo off | sudo tee" in out
    assert out.splitlines()[-1] == "9 ok, 2 warn, 1 critical, 7 unknown"  # cpu.quota unknown: no cgroup here


def test_bench_doctor_json(monkeypatch, tmp_path, capsys):
    fake_machine(monkeypatch, tmp_path, "0.1")
    assert main(["doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    by = {f["check"]: f for f in report["findings"]}
    assert by["cpu.load"]["status"] == "ok" and by["cpu.smt"] == {
        "check": "cpu.smt", "status": "warn", "found": "on", "why": doctor.WHY["smt"],
        "fix": "echo off | sudo tee /sys/devices/system/cpu/smt/control"}
    assert by["gpu"]["found"] == "nvidia-ml-py is not installed"
    assert sum(report["counts"].values()) == len(report["findings"]) and report["counts"]["critical"] == 0


def test_bench_doctor_bad_usage_exits_2(capsys):
    assert main(["doctor", "--fix"]) == 2
    assert "unrecognized arguments: --fix" in capsys.readouterr().err


def test_the_table_on_a_terminal(tmp_path):
    console = Console(file=io.StringIO(), force_terminal=True, width=200)
    doctor.render([doctor.finding("cpu.busy", "critical", "[kworker] (pid 9) 0.9 CPU", "top -o %CPU")], console)
    text = console.file.getvalue()
    assert "bench doctor" in text and "[kworker] (pid 9)" in text and "top -o %CPU" in text  # markup escaped


@pytest.mark.parametrize("load, warned", [("9.0", True), ("0.1", False)])
def test_bench_run_warns_in_one_line_when_the_machine_is_disturbed(monkeypatch, tmp_path, capsys, load, warned):
    fake_machine(monkeypatch, tmp_path / "machine", load)
    monkeypatch.setattr("bench.cli.discover", lambda: dict(SUITES))
    monkeypatch.setattr("bench.cli._write_report", lambda out: None)  # the report is not what this test is about
    code = main(["run", "_parts", "--size", "smoke", "--device", "cpu", "--inline", "--out", str(tmp_path / "r")])
    out = capsys.readouterr().out
    warnings = [line for line in out.splitlines() if line.startswith("bench: warning: the machine is disturbed")]
    assert code == 0 and len(warnings) == warned
    if warned:
        assert "cpu.load: load average 9.00 (1 min) on 4 CPUs" in warnings[0]
