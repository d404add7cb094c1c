"""Distributed cases: each one torchrun job (gloo on CPU), its ranks' figures aggregated by rank 0 into one record;
a rank that raises, runs out of memory or hangs gives a record naming it, and the run goes on."""

import os
import signal
import time

import pytest

from bench import launchers, runner
from bench.cli import main
from bench.distributed import Launch, _exit_text, _keep, aggregate
from bench.records import read_records
from bench.suite import SUITES
from tests.bench import fake_suites  # noqa: F401 - registers the fake suites


def run(tmp_path, variants, nproc=2, timeout_s=120.0, cpus=None):
    out = tmp_path / "run"
    code, records = runner.run(runner.RunConfig(suites=[SUITES["_dist"]], size="smoke", device="cpu", out=out,
                                                variants=variants, launch=Launch(nproc), timeout_s=timeout_s,
                                                cpus=cpus))
    assert [r.case_id for r in read_records(out / "records.jsonl")] == [r.case_id for r in records]
    return code, {r.variant: r for r in records}


def test_two_ranks_one_record_per_case_each_failure_naming_its_rank(tmp_path, monkeypatch):
    # the ranks take OMP_NUM_THREADS as it is now, not as when the server they are forked from imported torch
    launchers.start_server()
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    code, r = run(tmp_path, ["ok", "raise", "oom", "skip"], cpus=frozenset({max(os.sched_getaffinity(0))}))
    assert code == 1  # a case errored; the others still ran and were recorded
    ok = r["ok"]
    assert ok.status == "ok" and ok.params == {"n": 3, "world_size": 2}
    m = ok.metrics
    # value_ms is 3 on rank 0 and 6 on rank 1: lower is better, so the worst rank's is the case's figure
    assert (m["value_ms"], m["rank_min_value_ms"], m["rank_mean_value_ms"], m["rank_max_value_ms"]) == (6, 3, 4.5, 6)
    assert m["rank_sum"] == 3.0 and m["world"] == 2  # the all-reduce ran across both ranks
    assert m["dynamo_inherited"] and m["frozen_inherited"]  # imported and frozen once, before the ranks were forked
    assert (m["threads"], m["cpus"]) == (2, 1)
    assert ok.samples == {"value_ms": [1.0]}  # those of rank 1, which gave the figure
    assert r["raise"].status == "error" and r["raise"].error.startswith("rank 1 of 2: ")
    assert "boom on rank 1" in r["raise"].error
    assert r["oom"].status == "oom" and r["oom"].error.startswith("rank 1 of 2: ")
    assert r["skip"].status == "skipped" and "needs a GPU per rank" in r["skip"].error


def test_a_hung_rank_is_a_timeout_that_names_it_and_is_killed(tmp_path, monkeypatch):
    pidfile = tmp_path / "hung.pid"
    monkeypatch.setenv("TECHBENCH_TEST_HANG_PIDFILE", str(pidfile))
    code, r = run(tmp_path, ["hang"], timeout_s=12.0)  # the job starts in ~4 s (torch and torch._dynamo imported
    # once, then the ranks forked)
    assert code == 1
    assert r["hang"].status == "timeout" and "had not finished: [1]" in r["hang"].error
    assert "RuntimeWarning" not in r["hang"].error  # the log's tail it quotes is the ranks' own, not runpy's noise
    pid = int(pidfile.read_text())
    for _ in range(50):  # killed with its job, not left asleep (its reaper may take a moment)
        if not _alive(pid):
            break
        time.sleep(0.1)
    assert not _alive(pid), f"the hung rank (pid {pid}) outlived its job"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:  # a zombie is dead, only not yet reaped
            return f.read().split(") ")[-1][0] != "Z"
    except OSError:  # reaped since: no such file, or ESRCH when it went between the open and the read
        return False


def test_a_job_killed_by_a_signal_says_which():
    # the ranks' launcher killed by SIGTERM (a `kill` of it, the OS) ends the job with 143; a code the job chose stays
    assert _exit_text(143) == "code 143 (killed by SIGTERM)" and _exit_text(137) == "code 137 (killed by SIGKILL)"
    assert _exit_text(3) == "code 3" and _exit_text(255) == "code 255"


def test_a_job_whose_keeper_was_killed_says_which_signal(tmp_path):
    # over several nodes the job runs under `python -m bench.lifeline`: that keeper killed outright (SIGKILL, the OOM
    # killer) was waited on as -9, and the record read "the job exited with code -9", naming no signal
    code = _keep(["sh", "-c", "kill -9 $PPID; sleep 5"], dict(os.environ), tmp_path, 60.0)
    assert code == 128 + signal.SIGKILL and _exit_text(code) == "code 137 (killed by SIGKILL)"


def test_one_rank_runs_and_an_unsupported_world_size_is_skipped(tmp_path):
    _, r = run(tmp_path, ["ok"], nproc=1)
    # one rank runs in the runner's child process with a one-rank group, no torchrun job, and the same columns
    assert r["ok"].status == "ok" and r["ok"].metrics["value_ms"] == 3 and r["ok"].params["world_size"] == 1
    assert r["ok"].metrics["rank_max_value_ms"] == r["ok"].metrics["rank_min_value_ms"] == 3
    _, r = run(tmp_path / "three", ["ok"], nproc=3)
    assert r["ok"].status == "skipped" and "world sizes 1, 2, not 3" in r["ok"].error


def test_only_distributed_suites_gain_a_world_size():
    plain = runner.plan([SUITES["_endings"]], "smoke", "cpu", world_size=4)
    dist = runner.plan([SUITES["_dist"]], "smoke", "cpu", world_size=4)
    assert all("world_size" not in c.params for c in plain)
    assert all(c.params["world_size"] == 4 for c in dist)


def test_aggregate_takes_the_worst_rank_by_direction():
    ranks = [{"status": "ok", "metrics": {"step_ms": 2.0, "tokens_per_s": 10.0, "flag": True, "id": 0.0},
              "samples": {"step_ms": [2.0]}},
             {"status": "ok", "metrics": {"step_ms": 4.0, "tokens_per_s": 5.0, "flag": False, "id": 1.0},
              "samples": {"step_ms": [4.0]}}]
    out = aggregate(ranks, {"step_ms": "lower", "tokens_per_s": "higher", "id": None})
    m = out["metrics"]
    assert (m["step_ms"], m["tokens_per_s"], m["id"], m["flag"]) == (4.0, 5.0, 0.0, True)
    assert (m["rank_min_tokens_per_s"], m["rank_mean_tokens_per_s"], m["rank_max_tokens_per_s"]) == (5.0, 7.5, 10.0)
    assert "rank_min_flag" not in m and out["samples"] == {"step_ms": [4.0]}  # the worst rank's, as its figure


@pytest.mark.parametrize("argv, message", [
    (["--nnodes", "2"], "--rdzv-endpoint"),
    (["--nproc-per-node", "0"], "at least 1"),
])
def test_bad_launches_are_usage_errors(tmp_path, capsys, argv, message):
    assert main(["run", "checkpointing", "--size", "smoke", "--out", str(tmp_path / "x"), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def two_nodes(tmp_path, *argv, second=(), code=0):
    """Two `bench run`s of moe_ep as two nodes of one rendezvous (one rank each), into tmp_path/node0 and node1, the
    second with `second` added to its arguments; both must exit `code`. Their records, over both nodes."""
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "bench", "run", "moe_ep", "--size", "smoke", "--device", "cpu", "--timeout", "120",
           "--nproc-per-node", "1", "--nnodes", "2", "--rdzv-endpoint", f"localhost:{port}", *argv]
    logs = [(tmp_path / f"node{i}.log").open("wb") for i in range(2)]
    nodes = []
    for i, log in enumerate(logs):
        node = [*cmd, *(second if i else ()), "--out", str(tmp_path / f"node{i}")]
        nodes.append(subprocess.Popen(node, stdout=log, stderr=subprocess.STDOUT))
        time.sleep(2)  # the first node hosts the rendezvous store
    for i, node in enumerate(nodes):
        node.wait(timeout=300)
        logs[i].close()
        assert node.returncode == code, (tmp_path / f"node{i}.log").read_text()[-2000:]
    return [r for i in range(2) if code == 0 for r in read_records(tmp_path / f"node{i}" / "records.jsonl")]


def test_two_nodes_on_one_machine_record_each_case_once(tmp_path):
    # each case is recorded by the node that got rank 0
    records = two_nodes(tmp_path, "--variant", "ep")
    assert [(r.variant, r.status, r.params["world_size"]) for r in records] == [("ep", "ok", 2)]
    assert records[0].metrics["alltoall_bytes"] > 0
    # resumed for more cases, each node holding other records: the nodes agree to skip what either recorded, so
    # they start the same case together (each from its own records, one would wait for ep while the other ran
    # replicated), and each case is recorded once
    records = two_nodes(tmp_path, "--variant", "ep", "replicated", "--resume")
    assert sorted((r.variant, r.status) for r in records) == [("ep", "ok"), ("replicated", "ok")]


def test_nodes_started_for_different_cases_stop_at_once(tmp_path):
    # one node for ep, the other for ep and replicated: they meet at the agreement, not each at a first case of its
    # own until the timeout, and each exits 2 naming both plans; neither leaves a folder behind
    started = time.monotonic()
    two_nodes(tmp_path, "--variant", "ep", second=["replicated"], code=2)
    assert time.monotonic() - started < 120
    for i in range(2):
        said = (tmp_path / f"node{i}.log").read_text()
        assert "the nodes were started for different distributed cases (node 0 " in said, said[-2000:]
        assert "1 case [" in said and "2 cases [" in said
        assert not (tmp_path / f"node{i}").exists()


def _one_rank(rank: int, spec: str, port: int) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="localhost",
                      MASTER_PORT=str(port))
    from bench.distributed import _rank_main  # the spawned process imported this module: the fake suites are there

    _rank_main(spec)


def two_ranks(tmp_path, cases, target=_one_rank) -> tuple[list[int], list[dict]]:
    """Rank r of a 2-rank job runs cases[r] in a spawned process (`target`: _one_rank or a wrapper of it); each
    rank's exit code and its rank<r>.json."""
    import json
    import multiprocessing
    import socket
    from dataclasses import asdict

    specs = []
    for rank, case in enumerate(cases):
        specs.append(tmp_path / f"spec{rank}.json")
        specs[-1].write_text(json.dumps({"case": asdict(case), "device": "cpu", "seed": 0, "dir": str(tmp_path)}))
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    ranks = [multiprocessing.get_context("spawn").Process(target=target, args=(r, str(specs[r]), port))
             for r in range(2)]
    for p in ranks:
        p.start()
    for p in ranks:
        p.join(120)
    return [p.exitcode for p in ranks], [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]


def test_ranks_of_two_cases_never_measure_as_one_job(tmp_path):
    # two ranks that met in one group with different cases: each records an error that names both, measures nothing
    ok, other = (runner.plan([SUITES["_dist"]], "smoke", "cpu", [v], world_size=2)[0] for v in ("ok", "skip"))
    codes, results = two_ranks(tmp_path, (ok, other))
    assert codes == [1, 1] and all(r["status"] == "error" for r in results)
    assert f"rank 0 {ok.id}; rank 1 {other.id}" in results[0]["error"]


def _one_rank_predicting(rank: int, spec: str, port: int) -> None:
    # --skip-predicted-oom decided apart on each rank (each reads its own GPU's free memory): rank 1's does not fit
    import bench.case

    bench.case.predict_case = lambda suite, case, device: ({"predicted_peak_mem_bytes": 1},
                                                           "predicted not to fit" if rank == 1 else None)
    _one_rank(rank, spec, port)


def test_a_skip_predicted_on_one_rank_skips_the_job_on_every_rank(tmp_path):
    # a rank that skipped while its peers measured would leave them waiting in their first collective
    from dataclasses import replace

    case = replace(runner.plan([SUITES["_dist"]], "smoke", "cpu", ["ok"], world_size=2)[0], predict=True,
                   skip_predicted_oom=True)
    codes, results = two_ranks(tmp_path, (case, case), _one_rank_predicting)
    assert codes == [0, 0] and [r["status"] for r in results] == ["skipped", "skipped"]
    assert all(r["error"] == "rank 1: predicted not to fit" for r in results)


def test_plans_that_differ_are_found_whatever_the_nodes_are_called():
    # ranks without torchrun's GROUP_RANK all say node 0: their plans are compared rank by rank, not node by node
    from bench.distributed import _join_plans

    said = [{"planned": p, "count": n, "agree": a, "host": "h", "node": 0}
            for p, n, a in (("aaa", 2, ["x"]), ("bbb", 1, []))]
    assert "different distributed cases" in _join_plans(said)["differ"]
    assert _join_plans([{**s, "planned": "aaa", "count": 2} for s in said]) == {"skipped": ["x"]}


def test_a_node_left_without_distributed_cases_still_meets_the_others(tmp_path, monkeypatch):
    # its filters left it no case of the distributed suite selected: it must still meet its peers (which may have
    # some, and would wait at their first case for it), and say its plan is empty
    from bench import distributed

    met = []
    monkeypatch.setattr(distributed, "agree", lambda skipped, planned, *a: met.append(planned) or set())
    cfg = runner.RunConfig(suites=[SUITES["_dist"]], size="smoke", device="cpu", out=tmp_path / "r",
                           launch=Launch(1, 2, "localhost:1"))
    assert runner._skipped_by_peers([], [], cfg) == set() and met == [[]]
    cfg = runner.RunConfig(suites=[SUITES["_timed"]], size="smoke", device="cpu", out=tmp_path / "r",
                           launch=Launch(1, 2, "localhost:1"))
    assert runner._skipped_by_peers([], [], cfg) == set() and met == [[]]  # no distributed suite: no meeting


@pytest.mark.parametrize("endpoint", ["nohostport", "node0:", ":29500", "node0:0", "node0:65536", "node0:port"])
def test_an_endpoint_that_is_not_host_and_port_is_refused(endpoint, capsys):
    with pytest.raises(ValueError, match="is not HOST:PORT"):
        Launch(2, 2, endpoint)
    assert main(["run", "moe_ep", "--size", "smoke", "--device", "cpu", "--nnodes", "2", "--rdzv-endpoint",
                 endpoint, "--out", "/nonexistent/never"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not HOST:PORT" in err, err
    assert Launch(2, 2, "[::1]:29500").world_size == 4  # an IPv6 address in brackets


def test_a_host_no_node_can_resolve_is_refused_before_anything_runs(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["run", "moe_ep", "--size", "smoke", "--device", "cpu", "--nnodes", "2", "--rdzv-endpoint",
                 "no-such-host.invalid:29500", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "cannot resolve host 'no-such-host.invalid'" in err and err.count("\n") == 1 and not out.exists()


def test_nodes_that_cannot_meet_stop_the_run_before_its_first_case(tmp_path, monkeypatch):
    # the other node never comes: each distributed case would wait at its rendezvous until its timeout, and fail
    import socket

    from bench import distributed
    from bench.rundir import RunDirError

    monkeypatch.setattr(runner, "AGREE_TIMEOUT_S", 3.0)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "r"
    cfg = runner.RunConfig(suites=[SUITES["_dist"]], size="smoke", device="cpu", out=out,
                           launch=Launch(1, 2, f"127.0.0.1:{port}"))
    t0 = time.monotonic()
    with pytest.raises(RunDirError, match=rf"could not meet at the rendezvous 127.0.0.1:{port} before the first case "
                                          r"\(no answer in 3 s\)"):
        runner.run(cfg)
    assert time.monotonic() - t0 < 60 and not out.exists()  # a fresh run's folder held only its lock
    assert issubclass(distributed.NodesUnreachable, distributed.NodesDiffer)


def test_nodes_that_met_and_lost_one_say_so_not_to_check_the_endpoint(tmp_path):
    # a node stopped during the agreement: this node's ranks ran (torchrun starts them once the nodes met), so the
    # endpoint was right; the line says the other node went away, not "check --rdzv-endpoint"
    from bench import distributed

    how = Launch(1, 2, "127.0.0.1:29400")
    (tmp_path / "job.log").write_text("torch.distributed.DistStoreError: wait timeout after 120000ms\n")
    unmet = str(distributed._unreached(tmp_path, how, 1, 600.0))
    assert "could not meet at the rendezvous 127.0.0.1:29400" in unmet and "check --rdzv-endpoint" in unmet
    (tmp_path / "met0").touch()
    lost = str(distributed._unreached(tmp_path, how, 1, 600.0))
    assert lost.startswith("the nodes met at the rendezvous 127.0.0.1:29400, but another node stopped answering "
                           "before they agreed on the cases (torch.distributed.DistStoreError: wait timeout after "
                           "120000ms): it was stopped or lost; start every node again with the same command and "
                           "--resume") and "check --rdzv-endpoint" not in lost
