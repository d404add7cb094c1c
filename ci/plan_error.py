"""The plan's error against a GPU run's measured peaks, re-predicted here: no GPU needed.

A GPU run keeps each case's measured peak_mem_bytes (the caching allocator's, over the step). This plans the same
cases for a CUDA target (the GPU that measured each, as run.json names it, whose multiprocessors size kernels' scratch:
bench.plan_scratch) with the bench.plan in this checkout, on the meta device, and prints per case the measured
peak, the prediction the run recorded (with --predict, by the plan it ran with) and this checkout's prediction, each
with its error; for a run that recorded the allocator's reserved bytes (`bench run --predict` on a GPU), the plan's
error on those too. Run it after a change to the plan, against a committed baseline, to see what the change does to
the CUDA error before GPU time is spent on it.

Usage: python ci/plan_error.py RUN_DIR [CASE_SUBSTRING] [--gradients-netted]
  python ci/plan_error.py ci/baselines/nvidia-h100-80gb-hbm3/checkpointing-full

--gradients-netted: for a run made before the suites cleared the previous step's gradients outside the measured window
(`Workload.clear`; the H100 baseline's quick run): the training steps of NETTED set them to None inside it, and the
allocator netted those frees out of its peak. Those cases are then predicted the same way: a warm-up, then the step
with its clearing inside the window, where the plan's model of the allocator (bench.plan_alloc) nets them out too.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench import hardware  # noqa: E402 - after the checkout is on the path
from bench.doctor_limits import _n  # noqa: E402
from bench.env import measured_gpu  # noqa: E402
from bench.machines import record_gpu  # noqa: E402
from bench.plan import plan_case, run_step  # noqa: E402
from bench.records import read_records  # noqa: E402
from bench.suite import discover  # noqa: E402

TARGET = 0.10  # the prediction's target error against max_memory_allocated
NETTED = {"moe", "rmpad", "packing", "mtp", "moe_ep"}
"""The suites whose training steps set the previous gradients to None inside the measured window before
`Workload.clear` (checkpointing's and fsdp_checkpointing's step_memory cleared them first already)."""
AFTER_FORWARD = {"mtp"}
"""Of NETTED, the suites whose step set them to None after its forward, not first (mtp: opt.zero_grad between the
loss and backward), so that the previous gradients were live through the forward."""


@dataclass
class Row:
    case_id: str
    suite: str
    measured: int
    recorded: int | None  # the prediction the run recorded (--predict), by the plan it ran with
    predicted: int | None  # this checkout's
    reason: str | None  # why it is not planned
    reserved: int | None = None  # the allocator's segments the run measured (reserved_mem_bytes, --predict on a GPU)
    predicted_reserved: int | None = None  # this checkout's (bench.plan_alloc)

    @property
    def error(self) -> float | None:
        return self._relative(self.predicted)

    @property
    def recorded_error(self) -> float | None:
        return self._relative(self.recorded)

    def _relative(self, predicted: int | None) -> float | None:
        return None if predicted is None else (predicted - self.measured) / self.measured


def re_predict(run: Path, match: str = "", gradients_netted: bool = False) -> list[Row]:
    """Every measured case of `run` whose id holds `match`, predicted by this checkout's plan for CUDA."""
    suites, rows, meta = discover(), [], _run_json(run)
    for r in read_records(run / "records.jsonl"):
        measured = r.metrics.get("peak_mem_bytes")
        if r.status != "ok" or match not in r.case_id or not measured or r.suite not in suites:
            continue
        gpu = _name(record_gpu(meta, r))  # a merge's shard's: shards of one machine ran on GPUs of their own
        reserved = None
        if gradients_netted and r.suite in NETTED:
            predicted, reason = _netted(suites[r.suite], r, gpu)
        else:
            now = plan_case(suites[r.suite], r.variant, r.params, "cuda", gpu)
            predicted, reason, reserved = now.step_peak_bytes, now.reason, now.reserved_bytes
        rows.append(Row(r.case_id, r.suite, measured, r.metrics.get("predicted_peak_mem_bytes"), predicted, reason,
                        r.metrics.get("reserved_mem_bytes"), reserved))
    return rows


def run_gpu(run: Path) -> str | None:
    """The GPU a run measured on (its device's, bench.env.measured_gpu), as bench.hardware names it, or None."""
    meta = _run_json(run)
    return _name(measured_gpu(meta.get("device"), meta.get("env")))


def _run_json(run: Path) -> dict:
    try:
        meta = json.loads((run / "run.json").read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _name(gpu: dict | None) -> str | None:
    return hardware.resolve(gpu["name"]) if gpu and gpu.get("name") else None


def _netted(suite, r, gpu: str | None) -> tuple[int | None, str | None]:
    """(the peak, None) as a run before `Workload.clear` measured it: a warm-up, then the step's peak as the
    allocator counts it, the previous gradients' frees inside the window netted out; or (None, why) where the case
    does not plan."""
    try:
        with _zero_grad_before_backward() if suite.name in AFTER_FORWARD else nullcontext():
            raw = run_step(suite, r.variant, r.params, "cuda", warm_up=True, clear=False, gpu=gpu)
    except Exception:  # noqa: BLE001 - Skip, NotPlannable or a step meta cannot run: plan_case says which
        return None, plan_case(suite, r.variant, r.params, "cuda", gpu).reason
    return raw["step_peak_bytes"], None


@contextmanager
def _zero_grad_before_backward():
    """Optimizer.zero_grad deferred to the next backward: an AFTER_FORWARD step's order, from today's step (which
    clears first)."""
    zero_grad, backward, deferred = torch.optim.Optimizer.zero_grad, torch.Tensor.backward, []

    def defer(self, set_to_none: bool = True):
        deferred.append((self, set_to_none))

    def then_backward(self, *args, **kwargs):
        while deferred:
            zero_grad(*deferred.pop())
        return backward(self, *args, **kwargs)

    torch.optim.Optimizer.zero_grad, torch.Tensor.backward = defer, then_backward
    try:
        yield
    finally:
        torch.optim.Optimizer.zero_grad, torch.Tensor.backward = zero_grad, backward


def percent(error: float | None) -> str:
    return "-" if error is None else f"{error:+.2%}"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="ci/plan_error.py", description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="a run directory (its records.jsonl) measured on a GPU")
    p.add_argument("match", nargs="?", default="", help="only the cases whose id holds this")
    p.add_argument("--gradients-netted", action="store_true",
                   help="the run's training peaks net out the previous step's gradients (see above)")
    args = p.parse_args(argv)
    rows = re_predict(args.run, args.match, args.gradients_netted)
    print(f"{'case':<72} {'measured MiB':>12} {'run pred':>9} {'plan now':>9}  why not planned")
    for row in rows:
        print(f"{row.case_id[:72]:<72} {row.measured / 2**20:12.1f} {percent(row.recorded_error):>9} "
              f"{percent(row.error):>9}  {(row.reason or '')[:80]}")
    reserved = [row for row in rows if row.reserved and row.predicted_reserved]
    if reserved:  # a run with --predict on a GPU: the allocator's segments too (library workspaces in the measured)
        print(f"\n{'case':<72} {'reserved MiB':>12} {'plan now':>9}")
        for row in reserved:
            print(f"{row.case_id[:72]:<72} {row.reserved / 2**20:12.1f} "
                  f"{percent((row.predicted_reserved - row.reserved) / row.reserved):>9}")
    for suite in dict.fromkeys(row.suite for row in rows):  # every suite measured, those the plan cannot predict too
        measured = [row for row in rows if row.suite == suite]
        found = [row for row in measured if row.error is not None]
        if not found:
            print(f"{suite}: none of its {_n(len(measured), 'measured case')} planned ({measured[0].reason})")
            continue
        worst = max(found, key=lambda row: abs(row.error))
        print(f"{suite}: {len(found)} of {_n(len(measured), 'measured case')} planned, "
              f"{sum(abs(row.error) <= TARGET + 1e-12 for row in found)} within {TARGET:.0%} of the measured peak, "
              f"worst {worst.error:+.2%} ({worst.case_id})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
