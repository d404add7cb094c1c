"""The plan's error against a GPU run's measured peaks, re-predicted here: no GPU needed.

A GPU run keeps each case's measured peak_mem_bytes (the caching allocator's, over the step). This plans the same
cases for a CUDA target with the bench.plan in this checkout, on the meta device, and prints per case the measured
peak, the prediction the run recorded (with --predict, by the plan it ran with) and this checkout's prediction, each
with its error. Run it after a change to the plan, against a committed baseline, to see what the change does to the
CUDA error before GPU time is spent on it.

Usage: python ci/plan_error.py RUN_DIR [CASE_SUBSTRING]
  python ci/plan_error.py ci/baselines/nvidia-h100-80gb-hbm3/checkpointing-full
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.plan import plan_case  # noqa: E402 - after the checkout is on the path
from bench.records import read_records  # noqa: E402
from bench.suite import discover  # noqa: E402


def error(predicted: int | None, measured: int) -> str:
    return "-" if not predicted else f"{(predicted - measured) / measured:+.2%}"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="ci/plan_error.py", description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="a run directory (its records.jsonl) measured on a GPU")
    p.add_argument("match", nargs="?", default="", help="only the cases whose id holds this")
    args = p.parse_args(argv)
    suites = discover()
    print(f"{'case':<72} {'measured MiB':>12} {'run pred':>9} {'plan now':>9}  why not planned")
    for r in read_records(args.run / "records.jsonl"):
        measured = r.metrics.get("peak_mem_bytes")
        if r.status != "ok" or args.match not in r.case_id or not measured or r.suite not in suites:
            continue
        now = plan_case(suites[r.suite], r.variant, r.params, "cuda")
        recorded = error(r.metrics.get("predicted_peak_mem_bytes"), measured)
        print(f"{r.case_id[:72]:<72} {measured / 2**20:12.1f} {recorded:>9} {error(now.step_peak_bytes, measured):>9}"
              f"  {(now.reason or '')[:80]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
