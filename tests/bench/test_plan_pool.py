"""A plan in forked processes (bench.plan.plan with jobs > 1) whose worker dies, as the kernel kills one for host
memory: the case it was planning is not plannable, saying so, and the rest of the plan completes (bench.plan_pool)."""

import json
import multiprocessing as mp
import os
import signal

import pytest
import torch

import bench.cli
import bench.plan
from bench.cli import main
from bench.plan import plan
from bench.suite import Suite, Workload

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


def test_a_worker_that_dies_leaves_its_case_not_plannable_and_the_rest_planned():
    told = []
    out = plan([Dying()], "smoke", "cpu", jobs=2, progress=lambda n, total: told.append((n, total)))
    status = {(p.variant, p.params["n"]): p for p in out}
    assert [(p.variant, p.params["n"]) for p in out] == [(v, n) for n in (1, 2, 3) for v in Dying.variants]
    killed, exited = status.pop(("dies", 2)), status.pop(("exits", 3))
    assert all(p.status == "ok" and p.peak_bytes > 0 for p in status.values()), {k: p.reason for k, p in
                                                                                  status.items()}
    assert killed.status == exited.status == "not_plannable"
    assert killed.reason == "the process planning it died before its plan was done: killed by SIGKILL (as the " \
        "kernel kills a process when host memory runs out)"
    assert exited.reason == "the process planning it died before its plan was done: it exited with status 3"
    assert told[-1] == (9, 9)


def test_the_command_reports_it_as_any_case_not_plannable(monkeypatch, capsys):
    monkeypatch.setattr(bench.cli, "discover", lambda: {Dying.name: Dying()})
    assert main(["plan", Dying.name, "--size", "smoke", "--gpu", "cpu", "--jobs", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["cases"], out["plannable"]) == (9, 7)
    reasons = {p["case_id"]: p["reason"] for p in out["predictions"] if p["status"] != "ok"}
    assert set(reasons) == {"_plan_dying/dies/n=2", "_plan_dying/exits/n=3"}
    assert "killed by SIGKILL" in reasons["_plan_dying/dies/n=2"]


PLAN_FORKED = bench.plan._plan_forked


def dies_before_it_starts(i, how):
    """A pool worker that dies before it marks point 1 started (as one killed between points would)."""
    if i == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return PLAN_FORKED(i, how)


def test_points_no_worker_started_are_planned_alone_where_the_pool_makes_no_progress(monkeypatch):
    # a pool that dies before any point starts would be made again and again: those points are planned alone instead
    monkeypatch.setattr(bench.plan, "_plan_forked", dies_before_it_starts)
    out = plan([Dying()], "smoke", "cpu", variants=["ok"], jobs=2)
    assert [(p.params["n"], p.status) for p in out] == [(1, "ok"), (2, "ok"), (3, "ok")]
