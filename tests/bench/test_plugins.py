"""A suite from another package, through the `techbench.suites` entry-point group: it lists, runs, resumes, shards,
compares and reports like a built-in one. The package is put on the path with its dist-info (what pip installs), so
importlib.metadata finds its entry point as it would an installed one."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.optional import needs

ROOT = Path(__file__).resolve().parents[2]

PLUGIN = '''
"""A demo technique: sum of n floats, plain Python against math.fsum."""

import math

from bench.metrics import Metric, timing
from bench.suite import Measurement, Relative, Suite, register
from bench.timing import time_fn


@register
class DemoSum(Suite):
    name = "demo_sum"
    description = "a plug-in suite: two ways to add n floats"
    variants = {"builtin": "reference: sum()", "fsum": "math.fsum, exactly rounded"}
    relative = (Relative("speedup_x", "call_time_ms", invert=True),)
    metrics = (*timing("call_time", "one sum of n floats"), Metric("total", "exact", None, "the sum"))

    def grid(self, size, device):
        return [{"n": n} for n in (100, 1000)]

    def measure(self, variant, params, device):
        xs = [0.1] * params["n"]
        fn = {"builtin": sum, "fsum": math.fsum}[variant]
        t = time_fn(lambda: fn(xs), device, warmup=1, min_reps=5, min_time_s=0.01)
        return Measurement({"total": fn(xs)}, timed=t, timings={"call_time": t})
'''


@pytest.fixture(scope="module")
def plugin(tmp_path_factory) -> dict:
    site = tmp_path_factory.mktemp("site")
    (site / "techbench_demo").mkdir()
    (site / "techbench_demo" / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    info = site / "techbench_demo-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: techbench-demo\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[techbench.suites]\ndemo = techbench_demo\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}


def bench(env, *argv, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", *map(str, argv)], env=env, cwd=cwd or ROOT,
                          capture_output=True, text=True, timeout=300)


def test_a_plugin_suite_lists_and_declares_its_metrics(plugin):
    done = bench(plugin, "list", "--json")
    suites = {s["name"]: s for s in json.loads(done.stdout)["suites"]}
    assert "demo_sum" in suites and "checkpointing" in suites  # beside the built-in ones
    assert suites["demo_sum"]["reference"] == "builtin" and suites["demo_sum"]["cases"]["smoke"] == 4
    assert suites["demo_sum"]["metrics"]["call_time_ms"]["kind"] == "measured"


@pytest.fixture(scope="module")
def plugin_run(plugin, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """One `bench run demo_sum` (isolated cases, as a user's), read by the tests below: its directory and process."""
    out = tmp_path_factory.mktemp("plugin") / "run"
    return out, bench(plugin, "run", "demo_sum", "--size", "smoke", "--device", "cpu", "--out", out)


def test_a_plugin_suite_runs_resumes_shards_and_compares(plugin, plugin_run, tmp_path):
    first, done = plugin_run
    assert done.returncode == 0, done.stderr
    out = tmp_path / "run"
    shutil.copytree(first, out)  # resumed here, so that the run the other tests read stays as `bench run` left it
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert {r["status"] for r in records} == {"ok"} and len(records) == 4
    fsum = next(r for r in records if r["variant"] == "fsum" and r["params"]["n"] == 1000)
    assert fsum["metrics"]["total"] == 100.0 and fsum["metrics"]["speedup_x"] > 0
    done = bench(plugin, "run", "demo_sum", "--size", "smoke", "--device", "cpu", "--out", out, "--resume")
    assert done.returncode == 0 and len((out / "records.jsonl").read_text().splitlines()) == 4  # nothing rerun
    # the shards' cases run in `bench` itself (--inline): the run above ran the plug-in's cases isolated
    shards = [tmp_path / f"s{i}" for i in (1, 2)]
    for i, shard in enumerate(shards, 1):
        assert bench(plugin, "run", "demo_sum", "--size", "smoke", "--device", "cpu", "--shard", f"{i}/2", "--inline",
                     "--out", shard).returncode == 0
    assert bench(plugin, "merge", *shards, "--out", tmp_path / "merged").returncode == 0
    done = bench(plugin, "compare", out, tmp_path / "merged")
    assert done.returncode == 0 and "other metrics: " in done.stdout, done.stdout
    judged = [line for line in done.stdout.splitlines() if " total " in line]
    assert not judged, judged  # the exact sums are the same on both sides, whatever the clocks did


@needs("plotly")
def test_a_plugin_suite_reports(plugin_run):
    out, done = plugin_run
    assert done.returncode == 0, done.stderr
    page = (out / "report.html").read_text()
    assert "demo_sum" in page and "fsum" in page
    # no figure module: drawn from its declarations, the ratio against the reference and the timing
    assert page.count('class="plotly-graph-div"') == 2 and "reference (builtin)" in page, page.count("plotly-graph")
    assert "call_time_ms (ms)" in page and "speedup_x (x)" in page  # units on the axes


def test_a_broken_plugin_is_left_out_with_one_warning(plugin, tmp_path):
    site = Path(plugin["PYTHONPATH"].split(os.pathsep)[0])
    broken = tmp_path / "broken"
    shutil.copytree(site, broken)
    (broken / "techbench_demo" / "__init__.py").write_text("raise ImportError('no such dependency')\n")
    env = {**plugin, "PYTHONPATH": os.pathsep.join([str(broken), str(ROOT)])}
    done = bench(env, "list", "--json")
    assert done.returncode == 0 and "checkpointing" in done.stdout and "demo_sum" not in done.stdout
    assert "suites of techbench-demo (techbench_demo) not loaded: ImportError: no such dependency" in done.stderr
