"""What confines bench itself: a cgroup CPU quota (v1 and v2, the tightest ancestor), taskset's CPUs and thread
variables, against fake /proc and /sys/fs/cgroup trees; and the quota in the environment and compare's diff."""

import json

import pytest

from bench import cgroup, doctor, env
from bench.cgroup import Quota, cpu_quota, cpuset
from bench.cli import main
from bench.compare import compare
from bench.doctor import Host
from bench.doctor_limits import check_affinity, check_quota, check_threads, limit_findings
from bench.records import read_run_json, write_run_json
from tests.bench.test_doctor import CPU, tree
from tests.runs import checkpointing_records, write_run

V1_MOUNT = "/sys/fs/cgroup/cpu,cpuacct"
# a container without a cgroup namespace: /proc/self/cgroup names the host's path, the mount shows it from its root
V1 = {"proc/self/cgroup": "12:cpu,cpuacct:/docker/abc/job\n11:cpuset:/docker/abc\n1:name=systemd:/docker/abc\n0::/\n",
      "proc/self/mountinfo": f"32 31 0:29 /docker/abc {V1_MOUNT} rw,nosuid - cgroup cgroup rw,cpu,cpuacct\n"
                             "34 31 0:31 /docker/abc /sys/fs/cgroup/cpuset rw - cgroup cgroup rw,cpuset\n"
                             "41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"}
V2 = {"proc/self/cgroup": "0::/user.slice/bench\n",
      "proc/self/mountinfo": "23 1 8:1 / / rw - ext4 /dev/sda1 rw\n"
                             "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"}


def v1(parent: str, child: str, period: str = "100000") -> dict:
    return {**V1, f"{V1_MOUNT[1:]}/cpu.cfs_quota_us": parent, f"{V1_MOUNT[1:]}/cpu.cfs_period_us": period,
            f"{V1_MOUNT[1:]}/job/cpu.cfs_quota_us": child, f"{V1_MOUNT[1:]}/job/cpu.cfs_period_us": period}


def v2(parent: str, child: str) -> dict:
    return {**V2, "sys/fs/cgroup/user.slice/cpu.max": parent, "sys/fs/cgroup/user.slice/bench/cpu.max": child}


@pytest.mark.parametrize("files, quota", [
    # the tightest of the process's cgroup and its ancestors holds, whichever of them sets it
    (v1("50000", "100000"), Quota(0.5, 100000, f"{V1_MOUNT}/cpu.cfs_quota_us")),
    (v1("-1", "150000"), Quota(1.5, 100000, f"{V1_MOUNT}/job/cpu.cfs_quota_us")),
    (v1("-1", "-1"), Quota(None, None, None)),
    (v2("50000 100000\n", "max 100000\n"), Quota(0.5, 100000, "/sys/fs/cgroup/user.slice/cpu.max")),
    (v2("max 100000\n", "150000 100000\n"), Quota(1.5, 100000, "/sys/fs/cgroup/user.slice/bench/cpu.max")),
    (v2("max 100000\n", "max 100000\n"), Quota(None, None, None)),
    ({}, None),  # no /proc/self/cgroup: unknown, not "no quota"
])
def test_cpu_quota_is_the_tightest_of_the_cgroup_and_its_ancestors(tmp_path, files, quota):
    assert cpu_quota(tree(tmp_path, files)) == quota


@pytest.mark.parametrize("files, cpus", [
    ({**V1, "sys/fs/cgroup/cpuset/cpuset.effective_cpus": "0-1\n"}, {0, 1}),
    ({**V2, "sys/fs/cgroup/user.slice/cpuset.cpus.effective": "2-3\n"}, {2, 3}),  # the nearest that has the file
    (V2, None),
])
def test_cpuset(tmp_path, files, cpus):
    assert cpuset(tree(tmp_path, files)) == cpus


def host(tmp_path, files: dict, affinity=(0, 1), environ=None, online="0-1") -> Host:
    return Host(tree(tmp_path, {f"{CPU}/online": f"{online}\n", "proc/cmdline": "quiet\n", **files}),
                affinity=affinity, environ=environ or {})


@pytest.mark.parametrize("files, affinity, status, found, fix", [
    (v1("50000", "-1"), (0, 1), "warn", f"a CPU quota of 0.5 CPUs a 100 ms period ({V1_MOUNT}/cpu.cfs_quota_us) for "
     "the 2 CPUs bench may use: torch's default of 2 threads is throttled every period, and so is one thread",
     "bench run --threads 1 ...  # the quota's whole CPUs; or raise the container's CPU limit to 2 "),
    (v2("max 100000", "250000 100000"), (0, 1, 2, 3), "warn", "a CPU quota of 2.5 CPUs", "bench run --threads 2 ..."),
    # one CPU under half a CPU's worth: fewer threads cannot help
    (v1("50000", "-1"), (0,), "warn", "a CPU quota of 0.5 CPUs", "raise the container's CPU limit to 1 "),
    (v2("200000 100000", "max 100000"), (0, 1), "ok", "a CPU quota of 2 CPUs", None),
    (v2("max 100000", "max 100000"), (0, 1), "ok", "no CPU quota", None),
    ({}, (0, 1), "unknown", "no cgroup here", None),
])
def test_quota_below_the_cpus_warns_with_the_threads_it_can_keep_busy(tmp_path, files, affinity, status, found, fix):
    h = host(tmp_path, files, affinity, online="0-3")
    f = check_quota(h, cpu_quota(h.root))
    assert (f.status, f.found[:len(found)]) == (status, found) and f.why
    assert f.fix == fix or f.fix.startswith(fix)


@pytest.mark.parametrize("files, affinity, status, found", [
    ({}, (0, 1, 2, 3), "ok", "bench may use cpu 0-3: every online CPU"),
    ({}, (0,), "warn", "bench may use cpu 0; a process started plainly, cpu 0-3 (taskset, or a cpuset)"),
    ({**V1, "sys/fs/cgroup/cpuset/cpuset.effective_cpus": "0-3\n"}, (0,), "warn",
     "bench may use cpu 0; a process started plainly, cpu 0-3 (taskset)"),
    # a container given CPUs 0-1: its cpuset, which no option of bench's widens
    ({**V1, "sys/fs/cgroup/cpuset/cpuset.effective_cpus": "0-1\n"}, (0, 1), "ok",
     "bench may use cpu 0-1; a process started plainly, cpu 0-3: its cgroup's cpuset"),
    # isolcpus leaves every process off the isolated CPUs: not a taskset
    ({"proc/cmdline": "isolcpus=2-3\n"}, (0, 1), "ok", "bench may use cpu 0-1: every online CPU not isolated"),
])
def test_taskset_to_fewer_cpus_than_online(tmp_path, files, affinity, status, found):
    f = check_affinity(host(tmp_path, files, affinity, online="0-3"))
    assert (f.status, f.found[:len(found)]) == (status, found)
    assert (f.fix == "start bench without taskset and pin the cases instead: bench run --cpus 0 ...  # each case "
            "on them, as many torch threads, in run.json") if status == "warn" else f.fix is None


@pytest.mark.parametrize("files, environ, status, found", [
    ({}, {}, "ok", "none of OMP_NUM_THREADS, MKL_NUM_THREADS, OPENBLAS_NUM_THREADS set"),
    ({}, {"OMP_NUM_THREADS": "1"}, "warn", "OMP_NUM_THREADS=1: torch and its BLAS follow it, not the 2 CPUs bench"),
    ({}, {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}, "ok", "OMP_NUM_THREADS=2, MKL_NUM_THREADS=2: 2 threads"),
    # under a 0.5-CPU quota one thread is the count that fits
    (v1("50000", "-1"), {"OMP_NUM_THREADS": "1"}, "ok", "OMP_NUM_THREADS=1: 1 thread for the 2 CPUs bench may use "
     "(under its 0.5-CPU quota)"),
])
def test_thread_variables(tmp_path, files, environ, status, found):
    h = host(tmp_path, files, environ=environ)
    f = check_threads(h, cpu_quota(h.root))
    assert (f.status, f.found[:len(found)]) == (status, found)
    assert (status == "warn") == (f.fix is not None and "bench run --threads N" in f.fix)


def test_doctor_text_and_json_agree_on_the_quota(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(doctor, "ROOT", tree(tmp_path, {f"{CPU}/online": "0-1\n", **v1("50000", "-1")}))
    monkeypatch.setattr(doctor, "SAMPLE_S", 0.01)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0})
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert main(["doctor"]) == 0  # findings are advice: always 0
    text = capsys.readouterr().out
    assert main(["doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    by = {f["check"]: f for f in report["findings"]}
    for check in ("cpu.quota", "cpu.affinity", "cpu.threads"):
        assert by[check]["status"] == "warn"
        assert f"warn     {check:<18} {by[check]['found']}\n" in text and f"fix: {by[check]['fix']}" in text
    assert [f.check for f in limit_findings(Host(doctor.ROOT))] == ["cpu.quota", "cpu.affinity", "cpu.threads"]


def test_the_quota_is_recorded_and_compare_names_it(monkeypatch, tmp_path):
    monkeypatch.setattr(cgroup, "ROOT", tree(tmp_path / "machine", v2("max 100000\n", "50000 100000\n")))
    assert env.collect()["cpu_quota"] == 0.5
    monkeypatch.setattr(cgroup, "ROOT", tmp_path / "nothing")
    assert env.collect()["cpu_quota"] is None
    a, b = (write_run(tmp_path, n, checkpointing_records(seed=i)) for i, n in enumerate("ab"))
    for run, quota in ((a, None), (b, 0.5)):
        meta = read_run_json(run)
        meta["env"]["cpu_quota"] = quota
        write_run_json(run, meta)
    result = compare([a], [b])
    assert {f: (old, new) for f, old, new in result.env_diff}["cpu_quota"] == (None, "0.5")
    assert result.same_env  # a setting of the run, not the machine's identity
    meta = read_run_json(a)
    del meta["env"]["cpu_quota"]  # a run from before the quota was recorded says nothing of it
    write_run_json(a, meta)
    assert "cpu_quota" not in {f for f, _, _ in compare([a], [b]).env_diff}
