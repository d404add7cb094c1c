"""A fake `bench run` for tests/bench/test_nightly.py, which ci/nightly.sh starts for each night and each rerun of
ci/confirm.py: apart from the test module, whose imports (tests.optional) bring torch, so that the script's many
processes each start in a fraction of torch's import time."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from bench.case_ids import case_id
from tests.runs import H200, checkpointing_records, write_run


def fake_run(argv: list[str]) -> None:
    """`bench run [SUITE...] --size S --device D --out OUT [--case GLOB...]`: a finished run of the checkpointing
    cases (those a --case names), nothing measured; FAKE_SLOW names a case whose timing is 1.8x slower tonight, and
    in the rerun of ci/confirm.py (a run with --case) too where FAKE_SLOW_AGAIN is set; FAKE_CONTENDED makes every ok
    case contended."""
    import fnmatch

    if os.environ.get("FAKE_NO_RUN"):  # refused before it starts, as `--device cuda` on a machine whose GPU is gone
        sys.exit("bench: error: --device cuda: CUDA is not available here; valid: auto, cpu")
    flags = [i for i, a in enumerate(argv) if a.startswith("--")]
    opts = {argv[i]: argv[i + 1] for i in flags if argv[i] != "--case"}
    cases = [argv[i + 1] for i in flags if argv[i] == "--case"]
    out = Path(opts["--out"])
    kept = []
    for r in checkpointing_records(seed=int(time.time() * 1000) % 997):
        case = case_id(r["suite"], r["variant"], r["params"])
        if case == os.environ.get("FAKE_SLOW") and (not cases or os.environ.get("FAKE_SLOW_AGAIN")):
            r["metrics"]["step_time_ms"] *= 1.8
            r["samples"]["step_time_ms"] = [x * 1.8 for x in r["samples"]["step_time_ms"]]
        if os.environ.get("FAKE_CONTENDED") and r.get("status", "ok") == "ok":  # another job ran beside every case
            r["metrics"].update(contended=True, host_cpus=2, host_other_cpus=1.7)
        if not cases or any(fnmatch.fnmatchcase(case, g) for g in cases):
            kept.append(r)
    records = kept
    # the suites' declarations the test wrote (FAKE_DECLARED): discovering the suites here would import torch
    declared = json.loads(Path(os.environ["FAKE_DECLARED"]).read_text()) if os.environ.get("FAKE_DECLARED") else None
    write_run(out.parent, out.name, records, size=opts["--size"], gpu=None if opts["--device"] == "cpu" else H200,
              run_id=f"{out.parent.name}-{out.name}", declared=declared)  # a run of its own, as bench run's run_id
