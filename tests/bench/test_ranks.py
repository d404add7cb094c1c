"""bench.ranks: one node's ranks forked from one process, with torchrun's environment; a failed rank stops the job."""

import json
import os
import subprocess
import sys
import time

from tests.optional import needs_cuda
from tests.ranks import ROOT


def launch(tmp_path, mode: str, nproc: int = 2) -> subprocess.CompletedProcess:
    out = tmp_path / "out.json"
    # a module that cannot be imported is left for the ranks to fail on (here, none of them imports it)
    cmd = [sys.executable, "-m", "bench.ranks", str(nproc), "--preload", "torch.nn,techbench_no_such_module", "-m",
           "tests.bench.rank_probe", str(out), mode]
    return subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=120)


def test_ranks_meet_in_one_group_with_torchruns_environment(tmp_path):
    proc = launch(tmp_path, "ok", nproc=3)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads((tmp_path / "out.json").read_text())
    assert got["sum"] == 1 + 2 + 3 and got["argv"] == [str(tmp_path / "out.json"), "ok"]
    for rank, env in enumerate(got["env"]):
        assert (env["RANK"], env["LOCAL_RANK"], env["WORLD_SIZE"], env["LOCAL_WORLD_SIZE"]) == (str(rank),) * 2 + \
            ("3",) * 2
        assert env["MASTER_PORT"] == got["env"][0]["MASTER_PORT"] and env["TORCHELASTIC_RUN_ID"]


@needs_cuda
def test_a_forked_rank_initialises_cuda_and_nccl(tmp_path):
    import torch

    proc = launch(tmp_path, "cuda", nproc=torch.cuda.device_count())  # NCCL takes one GPU a rank
    assert proc.returncode == 0, proc.stderr[-2000:]
    n = torch.cuda.device_count()
    assert json.loads((tmp_path / "out.json").read_text())["sum"] == n * (n + 1) / 2


def test_a_failed_rank_stops_the_others_and_its_code_is_the_jobs(tmp_path):
    t0 = time.monotonic()
    proc = launch(tmp_path, "fail")
    assert proc.returncode == 3 and "rank 1 exited with code 3; stopping the others" in proc.stderr, proc.stderr
    assert time.monotonic() - t0 < 60  # not rank 0's 120 s wait
    pid = int((tmp_path / "out.json").read_text())
    try:
        os.kill(pid, 0)
        alive = open(f"/proc/{pid}/stat").read().split(") ")[-1][0] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        alive = False
    assert not alive, f"rank 0 (pid {pid}) outlived its job"


def test_a_bad_command_line_is_a_usage_line():
    proc = subprocess.run([sys.executable, "-m", "bench.ranks", "0", "-m", "x"], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2 and proc.stderr.startswith("usage: python -m bench.ranks N")
