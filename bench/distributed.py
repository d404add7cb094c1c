"""Distributed cases: one job of every rank per case, with NCCL on CUDA and gloo on CPU.

The runner calls `run_distributed` for a case of a distributed suite (one that lists `world_sizes`) on more than
one rank; a one-rank case runs as any other, in the runner's child process, inside `one_rank_group`. It starts the
job under a keeper, which kills the launcher and every rank, whatever session each started, at a timeout or when
`bench` dies however it dies. On one node (`--nproc-per-node N`) the launcher is bench.ranks, which forks the ranks
with torchrun's environment from one process that has imported torch and the suite (a torchrun job paid a torch
import for its agent and for every rank, ~2 CPU seconds each); the keeper and the launcher are forked from the run's
case server (bench.launchers.fork_ranks), which has imported them for the whole run. Over several nodes (`--nnodes M
--rdzv-endpoint`) the launcher is `python -m torch.distributed.run` under `python -m bench.lifeline`, whose elastic
agents meet at the rendezvous. Either way, when one rank dies the launcher stops the others. Each rank runs the suite's
`measure` with the process group initialised, and writes how it ended to `rank<R>.json` in the job's folder; global
rank 0 gathers every rank's metrics and writes the aggregate. A case whose rank failed, ran out of memory or hung
becomes an error, oom or timeout record that names the rank.

A job's scratch folder (`techbench-dist-*` in the temporary directory) holds its owner's pid: one whose owner was
killed before it could remove it is removed when the next is made.

Per-rank metrics aggregate into the case's record as bench.rank_metrics says.

With `bench run --cpus` the keeper is pinned to those CPUs, and the agent and every rank inherit them; each rank then
runs len(cpus) / nproc-per-node threads (unless OMP_NUM_THREADS is set).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from bench.interference import CASE_ROOT
from bench.lifeline import KEEPER_WAIT_S, exit_code, kill_session
from bench.rank_metrics import aggregate

LOG_LINES = 12
AGREE_PEER_S = 120.0
"""How long a rank of the agreement waits for the other nodes' ranks once the nodes met at the rendezvous (they start
within seconds of each other): a node stopped or lost meanwhile ends the agreement then, not at the store's 300 s."""
OWNER = "owner.pid"
"""The file in a scratch folder that holds its owner's pid."""


@dataclass(frozen=True)
class Launch:
    """How a distributed case is launched: `bench run --nproc-per-node N [--nnodes M --rdzv-endpoint HOST:PORT]`."""

    nproc_per_node: int = 1
    nnodes: int = 1
    rdzv_endpoint: str | None = None
    """HOST:PORT of the c10d rendezvous; None runs one standalone node (bench.ranks)."""

    def __post_init__(self):
        if self.nproc_per_node < 1 or self.nnodes < 1:
            raise ValueError(f"--nproc-per-node and --nnodes must be at least 1, got {self.nproc_per_node} and "
                             f"{self.nnodes}")
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise ValueError("--nnodes above 1 needs --rdzv-endpoint HOST:PORT, the same on every node")
        if self.rdzv_endpoint is not None and self.host_port() is None:
            raise ValueError(f"--rdzv-endpoint {self.rdzv_endpoint!r} is not HOST:PORT (a port of 1-65535), "
                             "e.g. node0.cluster:29500")

    def host_port(self) -> tuple[str, int] | None:
        """(host, port) of the rendezvous endpoint; None where there is none or it is not HOST:PORT."""
        host, colon, port = (self.rdzv_endpoint or "").rpartition(":")
        ok = colon and host and port.isdigit() and 0 < int(port) < 65536
        return (host, int(port)) if ok else None

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes

    def torchrun_args(self, job: str) -> list[str]:
        """What follows `python -m` to start this node's ranks of a job over several nodes: torchrun's elastic agent,
        which meets the other nodes' at the c10d rendezvous and starts each rank as an interpreter of its own. The
        rendezvous id is the job's (`job`: its case_id), so that nodes at different cases never form one job."""
        rdzv_id = hashlib.sha256(job.encode()).hexdigest()[:16]
        return ["torch.distributed.run", f"--nproc-per-node={self.nproc_per_node}", f"--nnodes={self.nnodes}",
                "--rdzv-backend=c10d", f"--rdzv-endpoint={self.rdzv_endpoint}", f"--rdzv-id={rdzv_id}"]


def run_distributed(case, device: str, how: Launch, timeout_s: float, seed: int,
                    fork: Callable[..., int | None], cpus: frozenset[int] | None = None,
                    preload: Sequence[str] = ()) -> dict[str, Any] | None:
    """Run `case` as one job of every rank, pinned to `cpus` when given; {status, metrics, samples, error} as
    bench.case.execute, or None on a node without global rank 0 (that node's run records the case). On one node,
    `fork` runs the job (bench.launchers.fork_ranks: its launcher forked from a process that has imported torch,
    the `preload` modules and the case's); over several nodes, torchrun under `python -m bench.lifeline`. Never
    raises."""
    with scratch("techbench-dist-") as job:
        spec = {"case": asdict(case), "device": device.split(":")[0], "seed": seed, "dir": str(job)}
        (job / "spec.json").write_text(json.dumps(spec))
        root = str(Path(__file__).resolve().parent.parent)  # so that a checkout without an install imports too
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
               "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(_threads_per_rank(how, cpus)))}
        if how.nnodes == 1:
            modules = list(dict.fromkeys([*preload, case.module]))
            code = fork(how.nproc_per_node, str(job / "spec.json"), modules, env, str(job / "job.log"), timeout_s,
                        cpus)
        else:
            cmd = [sys.executable, "-m", *how.torchrun_args(case.id), "-m", "bench.distributed",
                   str(job / "spec.json")]
            code = _keep(cmd, env, job, timeout_s, cpus)
        ranks = {int(p.stem[4:]): json.loads(p.read_text()) for p in job.glob("rank*.json")}
        if code is None:
            started = sorted(int(p.name[3:]) for p in job.glob("pid*"))
            hung = [r for r in started if r not in ranks] or "none"
            return {"status": "timeout", "error": f"no result after {timeout_s:g} s (--timeout); the job was killed; "
                                                   f"ranks (of this node) that had not finished: {hung}\n"
                                                   + _log_tail(job)}
        failed = {r: v for r, v in sorted(ranks.items()) if v["status"] in ("error", "oom")}
        if failed:
            rank, first = next(iter(failed.items()))
            return {"status": first["status"], "error": f"rank {rank} of {how.world_size}: {first['error']}"}
        result = job / "result.json"
        if result.exists():  # every rank finished measuring; a crash in teardown after that costs nothing
            return json.loads(result.read_text())
        if how.nnodes > 1 and len(ranks) == how.nproc_per_node and not failed:
            return None  # every local rank finished and global rank 0 is on another node, which records the case
        tail = _log_tail(job)
        return {"status": "error", "error": f"the job exited with {_exit_text(code)} without a result"
                                            + (f":\n{tail}" if tail else "")}


class NodesDiffer(Exception):
    """The nodes of a run over several nodes were started for different distributed cases (the message says how)."""


class NodesUnreachable(NodesDiffer):
    """The nodes of a run over several nodes could not meet at the rendezvous before the first case (a wrong
    --rdzv-endpoint, a node not started): every distributed case would wait there until its timeout, and fail."""


def agree(skipped: set[str], planned: list[str], how: Launch, timeout_s: float,
          cpus: frozenset[int] | None = None) -> set[str]:
    """The cases of `planned` (this node's distributed cases, which must be every node's) that any node skips
    (`skipped`: this node's, those it holds a record of), gathered from every node by one small job at the
    rendezvous. Raises NodesDiffer where the nodes planned different cases, NodesUnreachable where they could not
    meet within `timeout_s` (with the job's last words).
    Each node knows only its own records (a case is recorded by the node that held rank 0), so each would resume at
    a case of its own, and its peers would wait at another: every node skips what any of them does instead. The
    job's rendezvous id is the same whatever the node planned, so that nodes started with different filters meet
    and say so at once, rather than each waiting at a case of its own until its timeout."""
    with scratch("techbench-dist-") as job:
        digest = hashlib.sha256("\n".join(planned).encode()).hexdigest()[:16]
        spec = {"agree": sorted(skipped & set(planned)), "planned": digest, "count": len(planned), "dir": str(job)}
        (job / "spec.json").write_text(json.dumps(spec))
        root = str(Path(__file__).resolve().parent.parent)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        cmd = [sys.executable, "-m", *how.torchrun_args("techbench agree"), "-m", "bench.distributed",
               str(job / "spec.json")]
        code = _keep(cmd, env, job, timeout_s, cpus)
        if code != 0 or not (job / "agreed.json").exists():
            raise _unreached(job, how, code, timeout_s)
        answer = json.loads((job / "agreed.json").read_text())
        if "differ" in answer:
            raise NodesDiffer(answer["differ"])
        return set(answer["skipped"])


def _unreached(job: Path, how: Launch, code: int | None, timeout_s: float) -> NodesUnreachable:
    """Why an agreement gave no answer: the nodes never met at the rendezvous (a wrong endpoint, a node not started),
    or they met, since torchrun started this node's ranks only then (each marks it, `met<rank>`), and another node
    stopped answering before they agreed (stopped or lost)."""
    said = "no answer in {:.0f} s".format(timeout_s) if code is None else _last_words(job / "job.log")
    if any(job.glob("met*")):
        return NodesUnreachable(f"the nodes met at the rendezvous {how.rdzv_endpoint}, but another node stopped "
                                f"answering before they agreed on the cases ({said}): it was stopped or lost; start "
                                "every node again with the same command and --resume")
    return NodesUnreachable(f"the nodes could not meet at the rendezvous {how.rdzv_endpoint} before the first case "
                            f"({said}): check --rdzv-endpoint HOST:PORT and start every node with it")


def _last_words(log: Path) -> str:
    """The last error line of a job's log, cut to 200 characters; its last line where none names an error."""
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()] if log.is_file() else []
    line = ([ln for ln in lines if "error" in ln.lower()] or lines or ["it said nothing"])[-1]
    return line if len(line) <= 200 else line[:197] + "..."


def _join_plans(said: list[dict]) -> dict:
    """agreed.json from what each rank said at the agreement (its spec, host and node): the cases any node skips, or
    `differ`, a line naming each node's plan where any two ranks' plans differ."""
    if len({(s["planned"], s["count"]) for s in said}) > 1:
        nodes = {s["node"]: s for s in said}  # by node, for the message: a node's ranks said the same
        named = "; ".join(f"node {n} ({s['host']}) {s['count']} case{'s' * (s['count'] != 1)} [{s['planned'][:8]}]"
                          for n, s in sorted(nodes.items()))
        return {"differ": f"the nodes were started for different distributed cases ({named}): start every node with "
                          "the same suites, --size, --variant, --params and --case"}
    return {"skipped": sorted({c for s in said for c in s["agree"]})}


def _keep(cmd: list[str], env: dict[str, str], job: Path, timeout_s: float,
          cpus: frozenset[int] | None = None) -> int | None:
    """Run `cmd` under a keeper (pinned to `cpus`, which `cmd` inherits) on a lifeline only this process holds; its
    exit code (128+N: killed by signal N), or None after a timeout. Whatever way this returns or raises, the job and
    all it started are gone after."""
    lifeline, keeping = os.pipe()
    pin = [f"--cpus={','.join(map(str, sorted(cpus)))}"] if cpus else []
    try:
        with (job / "job.log").open("wb") as log:
            # a session of its own: Ctrl-C on `bench`'s terminal reaches `bench`, which closes the lifeline
            keeper = subprocess.Popen([sys.executable, "-m", "bench.lifeline", *pin, str(lifeline), *cmd], stdout=log,
                                      stderr=subprocess.STDOUT, env=env, pass_fds=(lifeline,), start_new_session=True)
    except BaseException:
        os.close(keeping)
        raise
    finally:
        os.close(lifeline)
    try:
        # the keeper says 128+N for the job a signal ended; the keeper itself ended by one (SIGKILL, the OOM killer)
        # is -N here: the same 128+N, so that the record names the signal either way
        return exit_code(keeper.wait(timeout_s))
    except subprocess.TimeoutExpired:
        return None
    finally:
        os.close(keeping)  # EOF: the keeper kills the agent and every rank still there, then exits
        try:
            keeper.wait(KEEPER_WAIT_S)
        except subprocess.TimeoutExpired:
            keeper.kill()
            keeper.wait()
        if keeper.returncode < 0:  # a keeper killed by a signal killed nothing itself: what is left of its session
            kill_session(keeper.pid)


@contextmanager
def scratch(prefix: str) -> Iterator[Path]:
    """A temporary folder named with `prefix` that holds its owner's pid, after removing those whose owner died."""
    sweep(Path(tempfile.gettempdir()))
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        (Path(tmp) / OWNER).write_text(f"{os.getpid()}@{socket.gethostname()}")
        yield Path(tmp)


def sweep(root: Path) -> list[Path]:
    """Remove the scratch folders in `root` whose owner is dead (a kill kept it from removing them); those it
    removed. A folder without an owner file is left alone: it may be one being made; so is another host's, whose
    pids this host cannot see (a temporary folder shared by nodes)."""
    removed = []
    for folder in root.glob("techbench-*"):
        try:
            pid, _, host = (folder / OWNER).read_text().partition("@")
            owner = int(pid)
        except (OSError, ValueError):
            continue
        if host in ("", socket.gethostname()) and not _alive(owner):  # a TMPDIR shared by nodes: only this host's
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _exit_text(code: int) -> str:
    """A job's exit code in words: 143 is "code 143 (killed by SIGTERM)", as a launcher (bench.ranks, torchrun) or
    the keeper reports a process a signal ended."""
    try:
        killed = f" (killed by {signal.Signals(code - 128).name})" if code > 128 else ""
    except ValueError:  # no such signal: an exit code the job chose
        killed = ""
    return f"code {code}{killed}"


def _log_tail(job: Path) -> str:
    return "\n".join((job / "job.log").read_text(errors="replace").strip().splitlines()[-LOG_LINES:])


def _threads_per_rank(how: Launch, cpus: frozenset[int] | None = None) -> int:
    return max(1, (len(cpus) if cpus else os.cpu_count() or 1) // how.nproc_per_node)  # the node's ranks share them


@contextmanager
def one_rank_group(device: str):
    """A process group of this process alone (gloo on CPU, NCCL on CUDA), for a distributed suite's world-size-1
    case: it runs like any case, in the runner's child process, without a job of ranks around it (whose start costs
    seconds a case). Nothing happens when a group exists already (a job's rank)."""
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        yield
        return
    cuda = device.startswith("cuda")
    with scratch("techbench-pg-") as tmp:
        store = dist.FileStore(str(tmp / "store"), 1)
        dist.init_process_group("nccl" if cuda else "gloo", store=store, rank=0, world_size=1,
                                **({"device_id": torch.device(device)} if cuda else {}))
        try:
            yield
        finally:
            dist.destroy_process_group()


def _rank_main(spec_path: str) -> int:
    """One rank of a case's job (the launcher's entry point: bench.ranks or torchrun)."""
    import torch
    import torch.distributed as dist

    from bench.case import Case, execute, predict_case
    from bench.suite import SUITES, directions

    spec = json.loads(Path(spec_path).read_text())
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    os.environ[CASE_ROOT] = str(os.getppid())  # the launcher: every rank of this node is in the case's tree
    job = Path(spec["dir"])
    if "agree" in spec:  # `agree`: what every node planned and skips, joined through the job's store (no
        world = int(os.environ["WORLD_SIZE"])  # collective backend: a GPU cluster's gloo may not find its network)
        (job / f"met{rank}").touch()  # torchrun starts the ranks once every node met at the rendezvous
        store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=rank == 0,
                              timeout=timedelta(seconds=AGREE_PEER_S))
        store.set(f"agree/{rank}", json.dumps({**spec, "host": socket.gethostname(),
                                               "node": int(os.environ.get("GROUP_RANK", 0))}))
        store.wait([f"agree/{r}" for r in range(world)])
        said = [json.loads(store.get(f"agree/{r}")) for r in range(world)]
        if local_rank == 0:
            (job / "agreed.json").write_text(json.dumps(_join_plans(said)))
        store.add("agree/read", 1)
        deadline = time.monotonic() + AGREE_PEER_S
        while rank == 0 and int(store.add("agree/read", 0)) < world:  # until every rank read: the store may be rank 0's
            if time.monotonic() > deadline:  # a rank that said its plan and was lost before it read: agreed all the
                break  # same (agreed.json is written), and the lost node's next case says it is gone
            time.sleep(0.05)
        os._exit(0)
    (job / f"pid{rank}").write_text(str(os.getpid()))  # this rank started: a timeout names those that had not ended
    cuda = spec["device"] == "cuda"
    device = f"cuda:{local_rank}" if cuda else "cpu"
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():  # a rank forked from a process that imported torch under
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))  # another OMP_NUM_THREADS kept that one's count
    if cuda:
        torch.cuda.set_device(local_rank)
    case, prediction = Case(**spec["case"]), None
    if case.predict:  # before the job's group exists: the plan runs the case in a fake group of its own
        try:
            importlib.import_module(case.module)
            prediction = predict_case(SUITES[case.suite], case, device)
        except Exception:  # noqa: BLE001 - execute imports the module again and records what is wrong with it
            prediction = None
    dist.init_process_group("nccl" if cuda else "gloo", **({"device_id": torch.device(device)} if cuda else {}))
    said: list = [None] * dist.get_world_size()
    # one job, one case: ranks of two cases must never measure as one; and one verdict of --skip-predicted-oom: a
    # rank that skipped while the others measured would leave them waiting in their first collective
    dist.all_gather_object(said, (case.id, prediction[1] if prediction else None))
    ids, too_big = [c for c, _ in said], next((f"rank {r}: {w}" for r, (_, w) in enumerate(said) if w), None)
    t0 = time.perf_counter()
    if len(set(ids)) > 1:
        result = {"status": "error", "error": "the job's ranks run different cases: " + "; ".join(
            f"rank {r} {c}" for r, c in enumerate(ids))}
    else:
        if too_big:
            prediction = (prediction[0] if prediction else {}, too_big)
        result = execute(case, device, spec["seed"], prediction=prediction)
    (job / f"rank{rank}.json").write_text(json.dumps({"status": result["status"], "error": result.get("error"),
                                                      "elapsed_s": time.perf_counter() - t0}))
    if result["status"] in ("error", "oom"):
        os._exit(1)  # the agent sees a failed rank and stops the others, wherever they wait
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, result)
    if rank == 0:
        names = {m for r in gathered for m in r.get("metrics") or {}}
        out = aggregate(gathered, directions(spec["case"]["suite"], names))
        (job / "result.json.tmp").write_text(json.dumps(out))
        os.replace(job / "result.json.tmp", job / "result.json")
    dist.barrier()
    # Everything is written. Leave without tearing the process group down: gloo's teardown can race another rank's
    # exit and abort (SIGABRT, "terminate called without an active exception"), failing a finished job.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(_rank_main(sys.argv[1]))
