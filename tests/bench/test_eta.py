"""The ETA a run shows (bench.eta): earlier runs' durations of the same cases, scaled by this run's pace."""

import json
import os

import pytest

from bench.eta import Eta, duration, earlier_durations


def test_eta_scales_the_earlier_durations_by_this_runs_pace():
    eta = Eta(["a", "b", "c"], {"a": 10.0, "b": 20.0})
    assert eta.text() == "ETA 30s + 1 case not timed before"
    eta.finished("a", 20.0)  # twice as slow as before, over 10 s of a 60 s prior: pace (20 + 60) / (10 + 60)
    assert eta.remaining() == (pytest.approx(20.0 * 80 / 70), 1)
    assert eta.remaining("b", 5.0) == (pytest.approx(20.0 * 80 / 70 - 5.0), 1)
    assert eta.remaining("b", 500.0) == (0.0, 1)  # past its estimate: nothing left of it, not less
    assert Eta(["a"], {}).text() == "ETA unknown"
    # most of the cases left never ran here (a first quick run after a smoke one): no figure from the few that did
    eta = Eta(["a", "b", "c"], {"a": 2.0})
    assert eta.text() == "ETA unknown (2 of 3 cases not timed before)"
    eta.finished("b", 1.0)
    assert eta.text() == "ETA 2s + 1 case not timed before"


def test_earlier_durations_take_each_cases_latest_record_on_the_same_device(tmp_path):
    def run_dir(name, records, mtime):
        d = tmp_path / name
        d.mkdir()
        (d / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + "not json\n")
        os.utime(d / "records.jsonl", (mtime, mtime))

    run_dir("old", [{"case_id": "a", "device": "cpu", "elapsed_s": 1.0},
                    {"case_id": "b", "device": "cpu", "elapsed_s": 7.0}], 1_000)
    run_dir("new", [{"case_id": "a", "device": "cpu", "elapsed_s": 2.0},
                    {"case_id": "a", "device": "cpu", "elapsed_s": 3.0},  # retried: the last record counts
                    {"case_id": "b", "device": "cuda:0", "elapsed_s": 0.1},
                    {"case_id": "c", "device": "cpu", "elapsed_s": "slow"}], 2_000)
    (tmp_path / "not-a-run").mkdir()
    assert earlier_durations(tmp_path / "next", ["a", "b", "c"], "cpu") == {"a": 3.0, "b": 7.0}
    assert earlier_durations(tmp_path / "absent" / "next", ["a"], "cpu") == {}


@pytest.mark.parametrize("seconds, text", [(0.4, "0s"), (45, "45s"), (130, "2m10s"), (3720, "1h02m")])
def test_durations_read_as_a_person_says_them(seconds, text):
    assert duration(seconds) == text


def test_a_skip_for_want_of_a_package_installed_since_is_no_duration_of_its_case(tmp_path):
    # the quick start's first run skips the library cases in no time; once `.[ecosystem]` installs their packages they
    # run, and an ETA that took those skips for the cases' time said seconds with minutes of them to go
    d = tmp_path / "first"
    d.mkdir()
    skips = {"lib": "needs json, which is not installed (pip install -e '/x[ecosystem]')",  # installed now
             "both": "needs json, re, which is not installed (pip install -e '/x[ecosystem]')",  # both installed now
             "one": "needs no_such_module_here, json, which is not installed (pip install -e '/x[ecosystem]')",  # skips
             "gone": "needs no_such_module_here, which is not installed (pip install no-such-module)",  # still not
             "cuda": "a Triton kernel runs on CUDA only: skipped on cpu"}
    (d / "records.jsonl").write_text("".join(json.dumps({"case_id": c, "device": "cpu", "elapsed_s": 0.01,
                                                         "status": "skipped", "error": why}) + "\n"
                                             for c, why in skips.items()))
    assert earlier_durations(tmp_path / "next", list(skips), "cpu") == {"one": 0.01, "gone": 0.01, "cuda": 0.01}
    assert Eta.from_runs(tmp_path / "next", list(skips), "cpu").text() == "ETA 0s + 2 cases not timed before"
