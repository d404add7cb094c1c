"""ci/nightly.sh across a change of TECHBENCH_SIZE: the good nights of another size are not tonight's comparison set.

The script runs as CI runs it, but for `bench run`, `env`, `history add` and `dashboard`, which a `python3` first on
PATH answers with a synthetic run directory (tests/nightly_run.py) or nothing: what is tested is which nights it
compares."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.optional import needs
from tests.runs import A100, H200, checkpointing_records, declarations, write_run

ROOT = Path(__file__).resolve().parents[2]
STUB = """#!/bin/sh
case "$1 $2 $3" in
  "-m bench run") shift 3
    exec {python} -c "import sys; from tests.nightly_run import fake_run; fake_run(sys.argv[1:])" "$@";;
  "-m bench env"|"-m bench history"|"-m bench dashboard") exit 0;;
esac
exec {python} "$@"
"""


def nightly(tmp_path: Path, size: str) -> tuple[subprocess.CompletedProcess, Path]:
    """ci/nightly.sh once (the fake `bench run`), and the night's run directory."""
    before = {p.name for p in (tmp_path / "home" / "runs").iterdir()}
    while time.strftime("%Y%m%d-%H%M%S", time.gmtime()) in before:  # a night's folder is named to the second
        time.sleep(0.1)
    done = run_script(tmp_path, size)
    (night,) = {p.name for p in (tmp_path / "home" / "runs").iterdir()} - before
    return done, tmp_path / "home" / "runs" / night


def run_script(tmp_path: Path, size: str, device: str = "cpu") -> subprocess.CompletedProcess:
    """ci/nightly.sh under TECHBENCH_HOME=tmp_path/home, `python3` a stub whose `bench run` is fake_run."""
    bin_dir = tmp_path / "bin"
    if not bin_dir.exists():
        bin_dir.mkdir()
        (bin_dir / "python3").write_text(STUB.format(python=sys.executable))
        (bin_dir / "python3").chmod(0o755)
    declared = tmp_path / "declared.json"  # for fake_run, from this process, which has imported the suites already
    if not declared.exists():
        declared.write_text(json.dumps(declarations({"checkpointing"})))
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "TECHBENCH_HOME": str(tmp_path / "home"),
           "TECHBENCH_SIZE": size, "TECHBENCH_DEVICE": device, "PYTHONPATH": str(ROOT), "FAKE_DECLARED": str(declared)}
    return subprocess.run(["bash", str(ROOT / "ci" / "nightly.sh")], env=env, capture_output=True, text=True,
                          timeout=300)


@needs("plotly")  # the comparison page
def test_a_size_change_starts_a_fresh_comparison_set(tmp_path):
    runs = tmp_path / "home" / "runs"
    for stamp in ("20200101-000001", "20200102-000001"):  # two good smoke nights
        write_run(runs, stamp, checkpointing_records(), size="smoke", gpu=None, declare=False)
        (runs / stamp / "GOOD").touch()
    done, first = nightly(tmp_path, "quick")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no earlier good night of size quick on cpu" in done.stdout and "fresh baseline" in done.stdout
    assert (first / "GOOD").exists() and not (first / "compare-last-good.html").exists()
    done, second = nightly(tmp_path, "quick")  # compared against the quick night alone: no side of two sizes
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in (tmp_path / "home" / "last-good").iterdir()) == [first.name]
    assert (second / "compare-last-good.html").exists() and "several sizes" not in done.stderr


SLOW = "checkpointing/full/batch=8,d_model=256,dtype=bfloat16,layers=8,seq=256"


def good_nights(root: Path, n: int = 4) -> None:
    for i in range(n):
        write_run(root / "home" / "runs", f"2020010{i + 1}-000001", checkpointing_records(seed=i), size="smoke",
                  gpu=None)
        (root / "home" / "runs" / f"2020010{i + 1}-000001" / "GOOD").touch()


@needs("plotly")  # the comparison page
@pytest.mark.parametrize("again", [False, True])
def test_slower_timings_are_run_again_before_they_fail_the_night(tmp_path, monkeypatch, again):
    good_nights(tmp_path)
    monkeypatch.setenv("FAKE_SLOW", SLOW)  # x1.8 tonight; in the rerun too where `again`: the code's, not the machine's
    if again:
        monkeypatch.setenv("FAKE_SLOW_AGAIN", "1")
    done, night = nightly(tmp_path, "smoke")
    assert done.returncode == int(again), done.stdout + done.stderr
    slower = re.search(rf"confirm: 1 timing\(s\) slower \({re.escape(SLOW)} step_time_ms x(\d\.\d+)\)", done.stdout)
    assert slower and 1.7 < float(slower.group(1)) < 1.9, done.stdout
    assert "running their 2 case(s) again" in done.stdout  # with its reference case, `none`
    confirm = tmp_path / "home" / "confirm" / night.name
    assert {json.loads(x)["variant"] for x in (confirm / "records.jsonl").read_text().splitlines()} == {"full", "none"}
    if again:
        assert f"confirm: 1 of 1 slower again in the rerun: {SLOW} step_time_ms" in done.stdout
        assert not (night / "GOOD").exists()
    else:
        assert f"confirm: 0 of 1 slower again in the rerun; not reproduced: {SLOW} step_time_ms" in done.stdout
        assert (night / "GOOD").exists()
    # the night's folder says what became of the slower timing its own comparison page shows, and where the rerun's is
    said = (night / "confirm.txt").read_text().splitlines()
    assert said[0] == (f"the night {'fails' if again else 'passes'}: its 1 slower timing(s) were run again into "
                       f"{confirm}")
    assert said[1].startswith(f"confirm: {int(again)} of 1 slower again in the rerun")
    assert said[2] == f"the rerun's comparison: {confirm / 'compare-last-good.html'}"
    page = (confirm / "compare-last-good.html").read_text()  # of the rerun's cases, not the others as removed
    assert ("Regressions (1)" in page) == again and SLOW in page and ">removed<" not in page


def test_a_night_whose_run_never_started_says_so(tmp_path, monkeypatch):
    good_nights(tmp_path)
    monkeypatch.setenv("FAKE_NO_RUN", "1")
    done = run_script(tmp_path, "smoke")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "wrote no run.json" in done.stdout, done.stdout
    # not a night of another size or device starting a fresh baseline, nor one to `touch GOOD`
    assert "fresh baseline" not in done.stdout and "touch" not in done.stdout, done.stdout


def test_a_disturbed_night_that_nothing_compares_is_not_good(tmp_path, monkeypatch):
    # the first night, every case timed beside another job: no good night and no committed baseline to compare it
    # against, yet it measured the load; marked GOOD, it would be the comparison set of the nights after it
    monkeypatch.setenv("FAKE_CONTENDED", "1")
    done = run_script(tmp_path, "smoke")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "nothing to compare against yet" in done.stdout, done.stdout
    assert "disturbed: 10 of its 10 timed cases were contended" in done.stdout, done.stdout
    (night,) = (tmp_path / "home" / "runs").iterdir()
    assert not (night / "GOOD").exists()


@needs("plotly")  # the comparison page
def test_good_nights_of_another_gpu_are_not_tonights_comparison_set(tmp_path):
    runs = tmp_path / "home" / "runs"
    for i in range(3):  # three good nights of the runner's old GPU; tonight's fake run is an H200's
        write_run(runs, f"2020010{i + 1}-000001", checkpointing_records(seed=i), size="smoke", gpu=A100)
        (runs / f"2020010{i + 1}-000001" / "GOOD").touch()
    done = run_script(tmp_path, "smoke", "cuda")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no earlier good night of size smoke on cuda (NVIDIA H200)" in done.stdout, done.stdout
    # the baseline of the GPU the run measured on, named from its run.json, not from the machine the script runs on
    assert "no committed baseline at ci/baselines/nvidia-h200/nightly" in done.stdout, done.stdout
    assert not any((tmp_path / "home" / "last-good").iterdir())


def same_kind(*args: str) -> str:
    """ci/nightly.sh's same_kind (its embedded Python, which reads run.json only) with these arguments."""
    script = (ROOT / "ci" / "nightly.sh").read_text()
    snippet = script[script.index("<<'PY'\n") + 7:script.index("\nPY\n")]
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", snippet, *args], capture_output=True, text=True,
                          check=True, timeout=60, cwd=ROOT)  # the script runs from the checkout's root
    assert not [x for x in done.stderr.splitlines() if x.endswith("| torch")]  # bench.env without torch: cheap
    return done.stdout.strip()


@pytest.mark.parametrize("device, visible, gpu", [
    ("cuda", None, "nvidia-a100-sxm4-80gb"),  # no index: the first GPU
    ("cuda:1", None, "nvidia-h200"),  # the second of a machine with mixed GPUs
    ("cuda:0", "1", "nvidia-h200"),  # the first visible, which NVML numbers 1
])
def test_the_baseline_is_of_the_gpu_the_run_device_names(tmp_path, device, visible, gpu):
    gpus = [{**A100, "index": 0}, {**H200, "index": 1}]
    env_vars = {"CUDA_VISIBLE_DEVICES": visible} if visible else {}
    (tmp_path / "run.json").write_text(json.dumps({"size": "full", "device": device,
                                                   "env": {"gpus": gpus, "env_vars": env_vars}}))
    assert same_kind("gpu", str(tmp_path)) == gpu
    assert same_kind("kind", str(tmp_path)).endswith(f"({gpus[gpu == 'nvidia-h200']['name']})")
