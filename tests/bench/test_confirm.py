"""ci/confirm.py: a night's slower timings run again, and fail the night only where the rerun is slower too."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from bench.case_ids import case_id
from tests.optional import needs
from tests.runs import checkpointing_records, write_run

ROOT = Path(__file__).resolve().parents[2]
SLOW = "checkpointing/full/batch=8,d_model=256,dtype=bfloat16,layers=8,seq=256"
pytestmark = needs("scipy")


def _confirm():
    spec = importlib.util.spec_from_file_location("confirm", ROOT / "ci" / "confirm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def night(root: Path, name: str, factor: float = 1.0, seed: int = 10, only=None, status: str = "ok") -> Path:
    """A run of the checkpointing cases with SLOW `factor` times slower (or of `status`); `only`: those cases."""
    records = checkpointing_records(seed=seed)
    for r in records:
        case = case_id(r["suite"], r["variant"], r["params"])
        if case == SLOW and status != "ok":
            r.update(status=status, error="boom", metrics={}, samples={})
        elif case == SLOW:
            r["metrics"]["step_time_ms"] *= factor
            r["samples"]["step_time_ms"] = [x * factor for x in r["samples"]["step_time_ms"]]
        r["keep"] = only is None or case in only
    return write_run(root, name, [{k: v for k, v in r.items() if k != "keep"} for r in records if r["keep"]],
                     size="smoke", gpu=None)


@pytest.fixture
def good(tmp_path):
    for i in range(4):  # four good nights within ~1% of each other
        night(tmp_path / "good", f"g{i}", seed=i)
    return tmp_path / "good"


@pytest.mark.parametrize("tonight, rerun, fails", [
    (1.8, 1.0, False),  # a one-off of the machine: not in the rerun
    (1.8, 1.8, True),
    (1.3, 1.8, True),  # slower again, by more: the two runs disagree on the size, not on the slowdown
    (1.8, 1.4, True),
    (1.5, 1.25, True),
])
def test_a_timing_fails_the_night_only_where_the_rerun_is_slower_too(tmp_path, good, capsys, tonight, rerun, fails):
    confirm = _confirm()
    run = night(tmp_path, "tonight", tonight)
    asked = []

    def fake(ids, meta, out):
        asked.append(ids)
        night(out.parent, out.name, rerun, seed=20, only=set(ids))
        return 0

    assert confirm.confirm(good, run, tmp_path / "again", 0.05, fake) == int(fails)
    assert asked == [[SLOW, SLOW.replace("/full/", "/none/")]]  # with its reference case
    said = capsys.readouterr().out
    assert f"confirm: {int(fails)} of 1 slower again in the rerun" in said, said


def test_a_case_failing_in_the_rerun_fails_the_night(tmp_path, good, capsys):
    confirm = _confirm()

    def fake(ids, meta, out):
        night(out.parent, out.name, seed=20, only=set(ids), status="error")
        return 1

    assert confirm.confirm(good, night(tmp_path, "tonight", 1.8), tmp_path / "again", 0.05, fake) == 1
    assert f"failed in the rerun: {SLOW} (error)" in capsys.readouterr().out


def test_a_damaged_good_night_does_not_keep_tonight_from_its_rerun(tmp_path, good):
    confirm = _confirm()
    with (good / "g0" / "records.jsonl").open("a") as f:
        f.write("{garbage\n")  # compare names it; the gate does not fail on a damaged BASE

    def fake(ids, meta, out):
        night(out.parent, out.name, seed=20, only=set(ids))
        return 0

    with pytest.warns(UserWarning, match="skipped 1 corrupt line"):
        assert confirm.confirm(good, night(tmp_path, "tonight", 1.8), tmp_path / "again", 0.05, fake) == 0


def test_a_night_failing_on_something_else_is_not_rerun(tmp_path, good, capsys):
    confirm = _confirm()
    run = night(tmp_path, "tonight", status="error")  # a case newly failing

    def fake(ids, meta, out):
        raise AssertionError("not rerun")

    assert confirm.confirm(good, run, tmp_path / "again", 0.05, fake) == 1
    assert "not a matter of slower timings alone" in capsys.readouterr().out


def disturbed(run: Path, only: str = "") -> Path:
    """The run with every case's timed window (those whose case_id starts with `only`) disturbed, as
    bench.interference flags it."""
    path = run / "records.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    for r in records:
        if r["case_id"].startswith(only):
            r["metrics"].update(contended=True, host_cpus=2, host_other_cpus=1.6)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return run


@pytest.mark.parametrize("rerun", [1.8, 1.0])
def test_a_disturbed_rerun_does_not_pass_the_night(tmp_path, good, capsys, rerun):
    confirm = _confirm()

    def fake(ids, meta, out):  # slower again or not, the load hides it: compare fails such a NEW run
        disturbed(night(out.parent, out.name, rerun, seed=20, only=set(ids)))
        return 0

    assert confirm.confirm(good, night(tmp_path, "tonight", 1.8), tmp_path / "again", 0.05, fake) == 1
    said = capsys.readouterr().out
    assert "the rerun was disturbed" in said and "not reproduced" not in said, said
    assert "the night fails" in (tmp_path / "tonight" / "confirm.txt").read_text()


def test_a_slower_timing_disturbed_in_the_rerun_fails_the_night(tmp_path, good, capsys):
    confirm = _confirm()

    def fake(ids, meta, out):  # only the slow case disturbed: the rerun is not, but that timing still looked slower
        disturbed(night(out.parent, out.name, 1.8, seed=20, only=set(ids)), only=SLOW)
        return 0

    assert confirm.confirm(good, night(tmp_path, "tonight", 1.8), tmp_path / "again", 0.05, fake) == 1
    said = capsys.readouterr().out
    assert "confirm: 1 of 1 slower again in the rerun" in said and "was disturbed" not in said, said


@pytest.mark.parametrize("rerun", [1.8, 1.0])
def test_the_log_counts_timings_with_their_rates_under_them(tmp_path, good, capsys, rerun):
    confirm = _confirm()

    def with_rates(run: Path, factor: float) -> Path:  # the rates a slower step moves with it, as a run has them
        path = run / "records.jsonl"
        records = [json.loads(line) for line in path.read_text().splitlines()]
        for r in records:
            if r["case_id"] == SLOW:
                r["metrics"]["tokens_per_s"] /= factor
                r["metrics"]["time_overhead_x"] *= factor
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        return run

    def fake(ids, meta, out):
        with_rates(night(out.parent, out.name, rerun, seed=20, only=set(ids)), rerun)
        return 0

    run = with_rates(night(tmp_path, "tonight", 1.8), 1.8)
    assert confirm.confirm(good, run, tmp_path / "again", 0.05, fake) == int(rerun > 1)
    said = capsys.readouterr().out
    first = next(line for line in said.splitlines() if line.startswith("confirm: ") and " slower (" in line)
    # compare says "regressions (3; 2 derived from another listed)": one timing, its two rates listed under it
    assert first.startswith(f"confirm: 1 timing(s) slower ({SLOW} step_time_ms x1.8"), first
    assert "(with it: time_overhead_x x1.800, tokens_per_s x0.556)" in first, first
    assert f"{SLOW} tokens_per_s" not in first, first
    verdict = next(line for line in said.splitlines() if " slower again in the rerun" in line)
    listed = f"{SLOW} step_time_ms (with it: time_overhead_x, tokens_per_s)"
    assert verdict == (f"confirm: 1 of 1 slower again in the rerun: {listed}" if rerun > 1
                       else f"confirm: 0 of 1 slower again in the rerun; not reproduced: {listed}"), verdict
    assert "its 1 slower timing(s) were run again" in (run / "confirm.txt").read_text()


def test_a_metric_gone_nan_in_the_rerun_fails_the_night(tmp_path, good, capsys):
    from bench.records import RECORDS_JSONL, RecordWriter, read_records

    confirm = _confirm()

    def fake(ids, meta, out):  # the slowdown is gone, but the rerun measured the case's energy NaN
        rerun = night(out.parent, out.name, seed=20, only=set(ids))
        records = read_records(rerun / RECORDS_JSONL)
        for r in records:
            if r.case_id == SLOW:
                r.metrics["energy_j"], r.nonfinite = None, {"energy_j": "nan"}
        (rerun / RECORDS_JSONL).unlink()
        with RecordWriter(rerun / RECORDS_JSONL) as writer:
            for r in records:
                writer.write(r)
        return 0

    assert confirm.confirm(good, night(tmp_path, "tonight", 1.8), tmp_path / "again", 0.05, fake) == 1
    assert f"failed in the rerun: {SLOW} (energy_j nan)" in capsys.readouterr().out
