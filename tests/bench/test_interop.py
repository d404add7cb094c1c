import json
import math
import subprocess
import sys

import pytest

from bench.interop import export_pytest_benchmark, import_pytest_benchmark
from bench.records import read_records, read_run_json
from tests.runs import A100, H200, checkpointing_records, samples, write_run


def by_case(run_dir):
    return {r.case_id: r for r in read_records(run_dir / "records.jsonl")}


def test_export_then_import_keeps_every_case_and_its_samples(tmp_path):
    run = write_run(tmp_path, "night", checkpointing_records())
    with pytest.warns(UserWarning, match=r"left out of the export \(records with no timing series to export\): "
                      "1 error, 1 oom, 1 skipped"):
        out = export_pytest_benchmark([run], tmp_path / "bench.json")
    back = import_pytest_benchmark(out, tmp_path / "imported")

    before, after = by_case(run), by_case(back)
    ok = {k: r for k, r in before.items() if r.status == "ok"}
    assert after.keys() == ok.keys()  # oom, error and skipped cases have no samples to export
    for cid, r in ok.items():
        got = after[cid]
        assert (got.suite, got.variant, got.params, got.device, got.env_id) == (
            r.suite, r.variant, r.params, r.device, r.env_id)
        assert got.samples.keys() == r.samples.keys()
        for name, values in r.samples.items():
            # ms -> s -> ms in float64: rounding error only
            assert got.samples[name] == pytest.approx(values, rel=1e-12)
        assert got.metrics == r.metrics
    meta = read_run_json(back)
    assert meta["schema"] == 1 and meta["run_id"] == "night" and meta["size"] == "quick"
    assert meta["env"]["gpus"][0]["name"] == "NVIDIA H200" and meta["git"]["sha"].startswith("0123456789")


def test_export_then_import_keeps_the_metrics_measured_nan(tmp_path):
    records = checkpointing_records()
    records[0]["metrics"]["energy_j"], records[0]["nonfinite"] = None, {"energy_j": "nan"}
    run = write_run(tmp_path, "night", records)
    with pytest.warns(UserWarning, match="left out of the export"):
        out = export_pytest_benchmark([run], tmp_path / "bench.json")
    back = import_pytest_benchmark(out, tmp_path / "imported")
    assert {k: r.nonfinite for k, r in by_case(back).items() if r.nonfinite} == {
        k: r.nonfinite for k, r in by_case(run).items() if r.nonfinite} != {}
    doc = json.loads((tmp_path / "bench.json").read_text())
    doc["benchmarks"][0]["extra_info"]["techbench"]["nonfinite"] = {"energy_j": "NaN"}
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="nonfinite"):
        import_pytest_benchmark(tmp_path / "bad.json", tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_exported_file_is_pytest_benchmark_json(tmp_path):
    run = write_run(tmp_path, "night", checkpointing_records())
    with pytest.warns(UserWarning, match="left out of the export"):
        out = export_pytest_benchmark([run], tmp_path / "bench.json")
    doc = json.loads(out.read_text())
    assert {"machine_info", "commit_info", "benchmarks", "datetime", "version"} <= doc.keys()
    tb = doc["machine_info"]["techbench"]
    assert tb["gpus"][0]["name"] == "NVIDIA H200" and tb["driver_version"] == "580.65"
    assert doc["commit_info"]["id"] == "0123456789abcdef0123456789abcdef01234567"
    bench = doc["benchmarks"][0]
    assert bench["group"] == "checkpointing" and bench["name"] == bench["fullname"]
    assert bench["params"] == {"batch": 4, "d_model": 256, "dtype": "bfloat16", "layers": 8, "seq": 256}
    stats = bench["stats"]
    assert stats["rounds"] == len(stats["data"]) == 30 and stats["iterations"] == 1
    assert stats["min"] <= stats["q1"] <= stats["median"] <= stats["q3"] <= stats["max"] < 1  # seconds, not ms
    assert math.isclose(stats["ops"], stats["rounds"] / stats["total"])
    # pytest-benchmark's own reader renders it
    shown = subprocess.run([sys.executable, "-m", "pytest_benchmark", "compare", str(out), "--columns=min,median"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "benchmark 'checkpointing': 10 tests" in shown.stdout


def test_export_refuses_runs_from_two_machines_or_the_same_case_twice(tmp_path):
    records = [{"suite": "checkpointing", "variant": "none", "metrics": {"step_time_ms": 1.0},
                "samples": {"step_time_ms": samples(1.0)}}]
    a = write_run(tmp_path, "a", records, gpu=H200)
    b = write_run(tmp_path, "b", records, gpu=A100)
    with pytest.raises(ValueError, match="different environments"):
        export_pytest_benchmark([a, b], tmp_path / "x.json")
    with pytest.raises(ValueError, match="export each to its own file"):
        export_pytest_benchmark([a, write_run(tmp_path, "a2", records, gpu=H200)], tmp_path / "x.json")
    with pytest.raises(ValueError, match="not a run directory"):
        export_pytest_benchmark([tmp_path], tmp_path / "x.json")


def test_import_of_a_plain_pytest_benchmark_file(tmp_path):
    data = [0.002, 0.0021, 0.0019]
    doc = {"machine_info": {"node": "ci", "python_version": "3.12.3", "cpu": {"brand_raw": "Xeon", "count": 8}},
           "commit_info": {"id": "abc", "dirty": True},
           "benchmarks": [
               {"group": None, "name": "test_mm[64]", "fullname": "t.py::test_mm[64]", "params": {"n": 64},
                "extra_info": {}, "stats": {"median": 0.002, "mean": 0.002, "stddev": 1e-4, "data": data}},
               {"group": "io", "name": "test_read", "fullname": "t.py::test_read", "params": None,
                "extra_info": {}, "stats": {"median": 0.5, "mean": 0.5, "stddev": 0.0}}],
           "datetime": "2026-11-28T01:02:03.456+00:00", "version": "5.1.0"}
    file = tmp_path / "pb.json"
    file.write_text(json.dumps(doc))
    out = import_pytest_benchmark(file, tmp_path / "run")
    records = by_case(out)
    mm, read = records["pytest/test_mm[64]/n=64"], records["io/test_read/"]
    assert mm.metrics["time_ms"] == pytest.approx(2.0) and mm.samples["time_ms"] == pytest.approx([2.0, 2.1, 1.9])
    assert read.metrics == pytest.approx({"time_ms": 500.0, "time_mean_ms": 500.0, "time_stddev_ms": 0.0})
    assert read.samples == {} and read.started_at == "2026-11-28T01:02:03Z"
    meta = read_run_json(out)
    assert meta["git"] == {"sha": "abc", "dirty": True} and meta["env"]["cpu_model"] == "Xeon"
    assert {r.env_id for r in records.values()} == {meta["env_id"]}

    with pytest.raises(ValueError, match="not empty"):
        import_pytest_benchmark(file, out)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not a pytest-benchmark JSON"):
        import_pytest_benchmark(tmp_path / "bad.json", tmp_path / "other")
    assert not (tmp_path / "other").exists()


def test_a_timing_twice_as_slow_in_imports_without_samples_is_said_not_judged(tmp_path):
    # pytest-benchmark keeps no raw samples unless --benchmark-save-data: one run a side has no test to run
    from bench.compare import compare

    def imported(name, medians, commit):
        doc = {"machine_info": {"node": "ci", "python_version": "3.12.3", "cpu": {"brand_raw": "Xeon", "count": 8}},
               "commit_info": {"id": commit, "dirty": False}, "datetime": "2026-11-28T01:02:03+00:00",
               "version": "5.1.0", "benchmarks": [
                   {"group": None, "name": n, "fullname": f"t.py::{n}", "params": None, "extra_info": {},
                    "stats": {"median": m, "mean": m, "stddev": 0.0}} for n, m in medians.items()]}
        (tmp_path / f"{name}.json").write_text(json.dumps(doc))
        return import_pytest_benchmark(tmp_path / f"{name}.json", tmp_path / name)

    base = imported("base", {"test_mm": 1.4e-4, "test_io": 0.5}, "a" * 40)
    new = imported("new", {"test_mm": 2.8e-4, "test_io": 0.51}, "b" * 40)
    lines = [ln for ln in compare([base], [new]).summary_lines() if "not judged (" in ln]
    assert len(lines) == 1 and "not judged (1: measured metrics without raw samples" in lines[0], lines  # the median
    assert "pytest/test_mm/ time_ms x2.000" in lines[0] and "test_io" not in lines[0]  # +2%: inside the threshold


def test_round_trip_of_a_real_smoke_run(tmp_path):
    from bench import runner
    from bench.suite import SUITES
    from suites import checkpointing  # noqa: F401 - registers the suite

    cfg = runner.RunConfig(suites=[SUITES["checkpointing"]], size="smoke", device="cpu", out=tmp_path / "run",
                           variants=["none", "full"], where={"model": "None"}, inline=True)  # our model's points
    code, records = runner.run(cfg)
    assert code == 0 and [r.status for r in records] == ["ok", "ok"]
    back = import_pytest_benchmark(export_pytest_benchmark([cfg.out], tmp_path / "b.json"), tmp_path / "back")
    after = by_case(back)
    assert after.keys() == {r.case_id for r in records}
    for r in records:
        assert after[r.case_id].samples["step_time_ms"] == pytest.approx(r.samples["step_time_ms"], rel=1e-12)
        assert after[r.case_id].metrics == r.metrics
    assert read_run_json(back)["env_id"] == read_run_json(cfg.out)["env_id"]


def test_a_pytest_benchmark_file_with_tuple_and_object_params_imports_with_stable_case_ids(tmp_path):
    # pytest-benchmark writes a parametrized tuple (a shape) as a list, and an object it cannot serialize with its
    # memory address, which differs in every run: both import, and two runs of the same tests share their case_ids
    from bench.compare import compare

    def imported(name, address):
        params = [{"shape": [8, 16], "fn": f"UNSERIALIZABLE[<function mm at 0x{address}>]"},
                  {"shape": [16, 32], "fn": f"UNSERIALIZABLE[<function mm at 0x{address}>]"}]
        doc = {"machine_info": {"node": "ci"}, "commit_info": {}, "datetime": "2026-11-28T01:02:03+00:00",
               "benchmarks": [{"group": None, "name": f"test_mm[p{i}]", "fullname": f"t.py::test_mm[p{i}]",
                               "params": p, "extra_info": {},
                               "stats": {"median": 1e-3, "mean": 1e-3, "stddev": 0.0, "data": [1e-3] * 5}}
                              for i, p in enumerate(params)]}
        (tmp_path / f"{name}.json").write_text(json.dumps(doc))
        return import_pytest_benchmark(tmp_path / f"{name}.json", tmp_path / name)

    base, new = imported("base", "7f84f9313150"), imported("new", "7fa0c2b1e9d0")
    assert sorted(by_case(base)) == sorted(by_case(new)) == [
        "pytest/test_mm[p0]/fn=UNSERIALIZABLE[<function mm>],shape=[8, 16]",
        "pytest/test_mm[p1]/fn=UNSERIALIZABLE[<function mm>],shape=[16, 32]"]
    assert [r.params["shape"] for r in by_case(base).values()] == ["[8, 16]", "[16, 32]"]
    assert not compare([base], [new]).nothing_shared


def test_a_noisier_pytest_benchmark_run_with_the_same_median_is_no_regression(tmp_path):
    # stats.stddev and stats.mean of a foreign benchmark are a spread and an outlier-led summary beside its median:
    # three runs a side at the same median, the new ones three times as noisy, judge the median alone, the same
    from bench.compare import compare

    def imported(name, median, stddev):
        doc = {"machine_info": {"node": "ci"}, "commit_info": {}, "datetime": "2026-11-28T01:02:03+00:00",
               "benchmarks": [{"group": None, "name": "test_mm", "fullname": "t.py::test_mm", "params": None,
                               "extra_info": {}, "stats": {"median": median, "mean": median + 2 * stddev,
                                                           "stddev": stddev}}]}
        (tmp_path / f"{name}.json").write_text(json.dumps(doc))
        return import_pytest_benchmark(tmp_path / f"{name}.json", tmp_path / "runs" / name)

    base = [imported(f"base{i}", m, 1e-5) for i, m in enumerate((1.00e-3, 1.01e-3, 0.99e-3))]
    new = [imported(f"new{i}", m, 3e-5 + i * 1e-6) for i, m in enumerate((1.00e-3, 0.99e-3, 1.01e-3))]
    c = compare(base, new)
    assert list(c.regressions["metric"]) == [] and list(c.timing_rows["metric"]) == ["time_ms"]
    declared = read_run_json(base[0])["suites"]["pytest"]["metrics"]
    assert declared["time_ms"]["kind"] == "measured" and declared["time_stddev_ms"]["kind"] == "info"


def test_export_of_runs_with_no_timing_writes_nothing(tmp_path):
    # a run of skipped cases (a CUDA-only variant on CPU) or of untimed metrics only: an empty file, which import
    # refuses, is no export
    records = [{"suite": "checkpointing", "variant": "none", "status": "skipped", "error": "needs a CUDA device"},
               {"suite": "checkpointing", "variant": "full", "metrics": {"peak_mem_bytes": 1e6}}]
    run = write_run(tmp_path, "skips", records)
    with pytest.raises(ValueError, match=r"nothing to export: no ok record of skips has a timing series \(1 ok "
                                         r"without a timing series, 1 skipped\)"):
        export_pytest_benchmark([run], tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()


def test_one_run_a_side_of_imports_is_told_to_rerun_pytest_not_bench_run(tmp_path):
    # more runs a side of a pytest-benchmark test come from pytest and bench import: `bench run` runs no pytest test
    from bench.compare import compare

    def imported(name, median):
        doc = {"machine_info": {"node": "ci"}, "commit_info": {}, "datetime": "2026-11-28T01:02:03+00:00",
               "benchmarks": [{"group": None, "name": "test_mm", "fullname": "t.py::test_mm", "params": None,
                               "extra_info": {}, "stats": {"median": median, "data": samples(median)}}]}
        (tmp_path / f"{name}.json").write_text(json.dumps(doc))
        return import_pytest_benchmark(tmp_path / f"{name}.json", tmp_path / name)

    base, new = imported("base", 1e-3), imported("new", 2e-3)
    caveat = [ln for ln in compare([base], [new]).summary_lines() if ln.startswith("one run per side")]
    assert len(caveat) == 1 and "bench import BASE-1.json --out BASE/r1" in caveat[0] and "bench run" not in caveat[0]
    assert read_run_json(base)["imported_from"]["origin"] == "pytest"
    # an import of techbench's own export is a run bench run makes more of
    records = [{"suite": "checkpointing", "variant": "none", "metrics": {"step_time_ms": m},
                "samples": {"step_time_ms": samples(m)}} for m in (1.0,)]
    ours = []
    for name, gpu in (("a", H200), ("b", H200)):
        export_pytest_benchmark([write_run(tmp_path, name, records, gpu=gpu)], tmp_path / f"{name}.json")
        ours.append(import_pytest_benchmark(tmp_path / f"{name}.json", tmp_path / f"{name}-imported"))
    assert read_run_json(ours[0])["imported_from"]["origin"] == "techbench"
    caveat = [ln for ln in compare([ours[0]], [ours[1]]).summary_lines() if ln.startswith("one run per side")]
    assert len(caveat) == 1 and "bench run --out BASE/r1" in caveat[0]
