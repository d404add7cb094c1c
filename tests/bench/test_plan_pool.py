"""A plan in forked processes (bench.plan.plan with jobs > 1) whose worker dies, as the kernel kills one for host
memory: the case it was planning is not plannable, saying so, and the rest of the plan completes (bench.plan_pool)."""

import json
import multiprocessing as mp
import os
import signal
import time

import pytest
import torch

import bench.cli
import bench.plan
from bench.cli import main
from bench.plan import plan
from bench.suite import Suite, Workload
from tests.optional import forks_beside_threads

PARENT = os.getpid()

pytestmark = pytest.mark.skipif(torch.cuda.is_available() or "fork" not in mp.get_all_start_methods(),
                                reason="plans in this process where torch sees a GPU: no worker to kill")


class Dying(Suite):
    """Three variants at three grid points; "dies" at n=2 kills its own process (SIGKILL, as the OOM killer does),
    "exits" at n=3 exits."""

    name = "_plan_dying"
    variants = {"ok": "a linear layer's training step", "dies": "SIGKILL at n=2", "exits": "os._exit(3) at n=3"}

    def grid(self, size, device):
        return [{"n": n} for n in (1, 2, 3)]

    def workload(self, variant, params, device, target=None):
        if (variant, params["n"]) in (("dies", 2), ("exits", 3)):
            if os.getpid() == PARENT:  # never the test's own process
                raise AssertionError("a case that kills its process was planned in the test's process")
            if variant == "dies":
                os.kill(os.getpid(), signal.SIGKILL)
            os._exit(3)
        model = torch.nn.Linear(8, 8 * params["n"], device=device)
        x = torch.empty(4, 8, device=device)
        return Workload(lambda: model(x).sum().backward(), modules=(model,),
                        clear=lambda: model.zero_grad(set_to_none=True))


def _in_a_fresh_process(target, tmp_path):
    """target(path) run in a spawned interpreter, which writes its answer to `path` as JSON; the answer. A process
    whose autograd engine has run (this test process, after other tests' backward passes on some torch builds)
    forks workers that cannot run backward, and the plan then plans those points in the process itself (bench.plan's
    AUTOGRAD_FORK), where a dying case would kill the test."""
    path = tmp_path / "answer.json"
    child = mp.get_context("spawn").Process(target=target, args=(str(path),))
    child.start()
    child.join(300)
    assert child.exitcode == 0, child.exitcode
    return json.loads(path.read_text())


def _plan_dying(path: str) -> None:
    told = []
    out = plan([Dying()], "smoke", "cpu", jobs=2, progress=lambda n, total: told.append((n, total)))
    with open(path, "w") as f:
        json.dump({"told": told, "cases": [[p.variant, p.params["n"], p.status, p.reason, p.peak_bytes]
                                           for p in out]}, f)


def _command_dying(path: str) -> None:
    import contextlib
    import io

    bench.cli.discover = lambda: {Dying.name: Dying()}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["plan", Dying.name, "--size", "smoke", "--gpu", "cpu", "--jobs", "2", "--json"])
    with open(path, "w") as f:
        json.dump({"code": code, "out": json.loads(out.getvalue())}, f)


def test_a_worker_that_dies_leaves_its_case_not_plannable_and_the_rest_planned(tmp_path):
    answer = _in_a_fresh_process(_plan_dying, tmp_path)
    cases = {(v, n): (status, reason, peak) for v, n, status, reason, peak in answer["cases"]}
    assert [(v, n) for v, n, *_ in answer["cases"]] == [(v, n) for n in (1, 2, 3) for v in Dying.variants]
    killed, exited = cases.pop(("dies", 2)), cases.pop(("exits", 3))
    assert all(status == "ok" and peak > 0 for status, _, peak in cases.values()), cases
    assert killed[0] == exited[0] == "not_plannable"
    assert killed[1] == "the process planning it died before its plan was done: killed by SIGKILL (as the " \
        "kernel kills a process when host memory runs out)"
    assert exited[1] == "the process planning it died before its plan was done: it exited with status 3"
    assert answer["told"][-1] == [9, 9]


def test_the_command_reports_it_as_any_case_not_plannable(tmp_path):
    answer = _in_a_fresh_process(_command_dying, tmp_path)
    out = answer["out"]
    assert answer["code"] == 0 and (out["cases"], out["plannable"]) == (9, 7)
    reasons = {p["case_id"]: p["reason"] for p in out["predictions"] if p["status"] != "ok"}
    assert set(reasons) == {"_plan_dying/dies/n=2", "_plan_dying/exits/n=3"}
    assert "killed by SIGKILL" in reasons["_plan_dying/dies/n=2"]


PLAN_FORKED = bench.plan._plan_forked


def dies_before_it_starts(i, how):
    """A pool worker that dies before it marks point 1 started (as one killed between points would)."""
    if i == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return PLAN_FORKED(i, how)


@forks_beside_threads
def test_points_no_worker_started_are_planned_alone_where_the_pool_makes_no_progress(monkeypatch):
    # a pool that dies before any point starts would be made again and again: those points are planned alone instead
    monkeypatch.setattr(bench.plan, "_plan_forked", dies_before_it_starts)
    out = plan([Dying()], "smoke", "cpu", variants=["ok"], jobs=2)
    assert [(p.params["n"], p.status) for p in out] == [(1, "ok"), (2, "ok"), (3, "ok")]


class Stuck(Suite):
    """Point n=1 plans at once; the others mark their start in `Stuck.folder` and wait there for a release that
    never comes (WAIT_S at most), then mark that they were planned."""

    name = "_plan_stuck"
    variants = {"ok": "a linear layer's training step"}
    folder = ""
    WAIT_S = 30

    def grid(self, size, device):
        return [{"n": n} for n in (1, 2, 3, 4)]

    def workload(self, variant, params, device, target=None):
        n = params["n"]
        if n > 1:
            with open(os.path.join(self.folder, f"started-{n}"), "w") as f:
                f.write(str(os.getpid()))
            for _ in range(self.WAIT_S * 10):
                if os.path.exists(os.path.join(self.folder, "release")):
                    break
                time.sleep(0.1)
            open(os.path.join(self.folder, f"planned-{n}"), "w").close()
        model = torch.nn.Linear(8, 8, device=device)
        x = torch.empty(4, 8, device=device)
        return Workload(lambda: model(x).sum().backward(), modules=(model,),
                        clear=lambda: model.zero_grad(set_to_none=True))


def _stop_after_the_first_point(path: str) -> None:
    Stuck.folder = os.path.dirname(path)

    def progress(planned, total):
        raise KeyboardInterrupt  # as Ctrl-C, or bench.cli's SIGTERM handler, raises where the command waits

    _plan_stuck(path, progress=progress)


def _plan_stuck(path: str, **kwargs) -> None:
    """Plan the Stuck suite on 2 workers, and write to `path` whether a KeyboardInterrupt stopped it."""
    try:
        plan([Stuck()], "smoke", "cpu", jobs=2, **kwargs)
        stopped = False
    except KeyboardInterrupt:
        stopped = True
    with open(path, "w") as f:
        json.dump({"stopped": stopped}, f)


def test_a_stopped_plan_ends_its_workers_and_plans_no_further_point(tmp_path):
    # leaving the pool's `with` waited for every point submitted: Ctrl-C or SIGTERM stopped `bench plan packing
    # --size full` minutes after it said so, its workers planning on
    answer = _in_a_fresh_process(_stop_after_the_first_point, tmp_path)
    assert answer == {"stopped": True}
    assert not list(tmp_path.glob("planned-*"))  # no point past the first was planned: each was cancelled or killed
    for started in tmp_path.glob("started-*"):  # the worker that had started one is gone (killed and reaped)
        assert not os.path.exists(f"/proc/{int(started.read_text())}")


def _stop_while_submitting(path: str) -> None:
    from concurrent.futures import ProcessPoolExecutor

    Stuck.folder = os.path.dirname(path)
    submit, calls = ProcessPoolExecutor.submit, []

    def interrupted(self, *args, **kwargs):  # Ctrl-C as the third point is handed to the pool
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return submit(self, *args, **kwargs)

    ProcessPoolExecutor.submit = interrupted
    _plan_stuck(path)


def test_a_plan_stopped_while_its_points_are_handed_to_the_pool_plans_no_further_point(tmp_path):
    # the points were submitted outside the stop's reach: the pool's `with` then waited for those handed over so far
    answer = _in_a_fresh_process(_stop_while_submitting, tmp_path)
    assert answer == {"stopped": True}
    assert not list(tmp_path.glob("planned-*"))
