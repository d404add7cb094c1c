import copy
import types

import pytest

from bench import env


class FakeNVMLError(Exception):
    pass


def fake_pynvml(n_gpus=2, failing=()):
    """A stand-in for pynvml: H200-like answers, and FakeNVMLError from every query named in `failing`."""

    def answer(name, value):
        def query(*args):
            if name in failing:
                raise FakeNVMLError(f"{name}: Not Supported")
            return value(*args) if callable(value) else value

        return query

    answers = {
        "nvmlInit": None,
        "nvmlShutdown": None,
        "nvmlSystemGetDriverVersion": "570.86.15",
        "nvmlSystemGetCudaDriverVersion": 12080,
        "nvmlSystemGetNVMLVersion": "12.570.86.15",
        "nvmlDeviceGetCount": n_gpus,
        "nvmlDeviceGetHandleByIndex": lambda i: ("handle", i),
        "nvmlDeviceGetName": b"NVIDIA H200",  # older pynvml returns bytes
        "nvmlDeviceGetUUID": lambda h: f"GPU-0000-{h[1]}",
        "nvmlDeviceGetCudaComputeCapability": (9, 0),
        "nvmlDeviceGetMemoryInfo": types.SimpleNamespace(total=150_754_820_096, used=0, free=150_754_820_096),
        "nvmlDeviceGetMaxClockInfo": lambda h, dom: {0: 1980, 2: 3201}[dom],
        "nvmlDeviceGetClockInfo": lambda h, dom: {0: 345, 2: 3201}[dom],
        "nvmlDeviceGetEnforcedPowerLimit": 700_000,
        "nvmlDeviceGetEccMode": (1, 1),
        "nvmlDeviceGetMigMode": (0, 0),
        "nvmlDeviceGetPersistenceMode": 1,
        "nvmlDeviceGetPciInfo": types.SimpleNamespace(busId="00000000:19:00.0"),
    }
    mod = types.SimpleNamespace(**{name: answer(name, value) for name, value in answers.items()})
    mod.NVMLError = FakeNVMLError
    mod.NVML_CLOCK_SM, mod.NVML_CLOCK_MEM = 0, 2
    return mod


@pytest.fixture(scope="module")
def here():
    return env.collect()


def test_collect_here_without_nvml(monkeypatch):
    monkeypatch.setattr(env, "load_nvml", lambda: None)
    e = env.collect()
    assert e["nvml"] is None
    if not e["cuda_available"]:
        assert e["gpus"] == []
    for key in ("python_version", "torch", "cpu_model", "cpu_logical_cores", "host_memory_bytes", "techbench"):
        assert e[key], key
    assert set(e["git"]) == {"sha", "dirty"}
    assert len(env.env_id(e)) == 12


def test_table_rows_are_strings(here):
    rows = env.table_rows(here)
    assert rows[0] == ("env_id", env.env_id(here))
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in rows)
    assert env.summary_lines(here)[0].startswith("env_id: ")


def test_env_id_stable_and_ignores_per_run_fields(monkeypatch):
    monkeypatch.setattr(env, "load_nvml", lambda: fake_pynvml())
    e = env.collect()
    assert env.env_id(e) == env.env_id(copy.deepcopy(e))
    other = copy.deepcopy(e)
    other["gpus"][0].update(uuid="GPU-other", sm_clock_mhz=1980, mem_clock_mhz=1593, pci_bus_id="00000000:AA:00.0")
    other["git"] = {"sha": "0" * 40, "dirty": False}
    other["hostname"] = "another-node"
    assert env.env_id(other) == env.env_id(e)


@pytest.mark.parametrize(
    "change",
    [
        lambda e: e.update(torch="9.9.9"),
        lambda e: e["gpus"][0].update(name="NVIDIA H100 80GB HBM3"),
        lambda e: e["gpus"].pop(),
    ],
)
def test_env_id_changes_with_identity(monkeypatch, change):
    monkeypatch.setattr(env, "load_nvml", lambda: fake_pynvml())
    e = env.collect()
    changed = copy.deepcopy(e)
    change(changed)
    assert env.env_id(changed) != env.env_id(e)


def test_git_outside_a_repo_is_none(tmp_path, monkeypatch):
    # Keep git from walking up into a repository that happens to hold the temp dir.
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert env.git_info(tmp_path) == {"sha": None, "dirty": None}
    assert env.collect(root=tmp_path)["git"] == {"sha": None, "dirty": None}


def test_fake_nvml_populates_gpus(monkeypatch):
    monkeypatch.setattr(env, "load_nvml", lambda: fake_pynvml(n_gpus=2))
    e = env.collect()
    assert e["nvml"] == {"driver_version": "570.86.15", "cuda_driver_version": "12.8", "nvml_version": "12.570.86.15"}
    assert [g["index"] for g in e["gpus"]] == [0, 1]
    g = e["gpus"][0]
    assert set(g) == set(env.GPU_FIELDS)
    assert g == {
        "index": 0,
        "name": "NVIDIA H200",
        "uuid": "GPU-0000-0",
        "driver_version": "570.86.15",
        "cuda_driver_version": "12.8",
        "compute_capability": "9.0",
        "memory_total_bytes": 150_754_820_096,
        "max_sm_clock_mhz": 1980,
        "max_mem_clock_mhz": 3201,
        "sm_clock_mhz": 345,
        "mem_clock_mhz": 3201,
        "power_limit_w": 700.0,
        "ecc_mode": True,
        "mig_mode": False,
        "persistence_mode": True,
        "pci_bus_id": "00000000:19:00.0",
        "source": "nvml",
    }


def test_failing_nvml_queries_give_none_for_those_fields_only(monkeypatch):
    failing = ("nvmlDeviceGetEnforcedPowerLimit", "nvmlDeviceGetMigMode", "nvmlDeviceGetMaxClockInfo")
    monkeypatch.setattr(env, "load_nvml", lambda: fake_pynvml(n_gpus=1, failing=failing))
    g = env.collect()["gpus"][0]
    nulls = {"power_limit_w", "mig_mode", "max_sm_clock_mhz", "max_mem_clock_mhz"}
    assert {k for k, v in g.items() if v is None} == nulls
    assert g["name"] == "NVIDIA H200" and g["sm_clock_mhz"] == 345


def test_nvml_init_failure_means_no_nvml(monkeypatch):
    monkeypatch.setattr(env, "load_nvml", lambda: fake_pynvml(failing=("nvmlInit",)))
    e = env.collect()
    assert e["nvml"] is None
    if not e["cuda_available"]:
        assert e["gpus"] == []


def test_a_venv_or_runs_in_the_checkout_do_not_make_it_dirty(tmp_path, monkeypatch):
    import subprocess

    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "a.py").write_text("x = 1\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    assert env.git_info(tmp_path)["dirty"] is False
    (tmp_path / "venv" / "lib").mkdir(parents=True)
    (tmp_path / "venv" / "lib" / "site.py").write_text("")
    (tmp_path / "venv" / "pyvenv.cfg").write_text("")
    (tmp_path / "report.html").write_text("")
    assert env.git_info(tmp_path)["dirty"] is False  # a venv (its Python files too), a page: not code under test
    (tmp_path / "myplugin").mkdir()
    (tmp_path / "myplugin" / "__init__.py").write_text("x = 1\n")
    assert env.git_info(tmp_path)["dirty"] is True  # an untracked folder of Python is (git names the folder alone)
    (tmp_path / "myplugin" / "__init__.py").unlink()
    (tmp_path / "conda" / "conda-meta").mkdir(parents=True)
    (tmp_path / "conda" / "lib").mkdir()
    (tmp_path / "conda" / "lib" / "os.py").write_text("")
    assert env.git_info(tmp_path)["dirty"] is False  # a conda prefix is an environment too
    (tmp_path / "démo").mkdir()
    (tmp_path / "démo" / "y.py").write_text("")
    assert env.git_info(tmp_path)["dirty"] is True  # a name git would quote
    (tmp_path / "démo" / "y.py").unlink()
    (tmp_path / "bench" / "new.py").write_text("")
    assert env.git_info(tmp_path)["dirty"] is True  # an untracked module of the package is
    (tmp_path / "bench" / "new.py").unlink()
    (tmp_path / "bench" / "a.py").write_text("x = 2\n")
    assert env.git_info(tmp_path)["dirty"] is True  # a tracked file changed


@pytest.mark.parametrize("device, visible, named", [
    ("cuda", None, "A100"),  # no index: the first GPU
    ("cuda:1", None, "H200"),  # the second of a machine with mixed GPUs
    ("cuda:0", "1", "H200"),  # the first visible, which NVML numbers 1
    ("cuda:0", "GPU-h200", "H200"),  # the first visible, named by its UUID
    ("cpu", None, None),
])
def test_the_gpu_a_run_measured_on_is_its_devices(device, visible, named):
    gpus = [{"index": 0, "name": "A100", "uuid": "GPU-a100", "source": "nvml"},
            {"index": 1, "name": "H200", "uuid": "GPU-h200", "source": "nvml"}]
    found = env.measured_gpu(device, {"gpus": gpus, "env_vars": {"CUDA_VISIBLE_DEVICES": visible} if visible else {}})
    assert (found or {}).get("name") == named
