"""The dashboard across a change of the CPU thread count (--threads, --cpus, a suite's own): another setting measured,
as a library upgrade is another version, so a series of its own and never a regression of the code under test."""

import json

from bench import history
from reports import dashboard
from reports import regressions as rule
from tests.optional import needs
from tests.reports.test_dashboard import frame_of
from tests.runs import write_run


def test_another_thread_count_starts_a_series_of_its_own():
    # six nights at one thread, then two at --threads 2: mla's decode on a busy 2-core VM went x1000, which read as a
    # step of every timing, with nothing on the page saying that the setting changed
    frame = frame_of([100.0, 101.0, 99.0, 100.0, 102.0, 100.0, 1000.0, 1010.0], device="cpu").assign(
        threads=[1] * 6 + [2] * 2)
    assert not len(dashboard.regressions(frame))
    assert [s["threads"].iloc[0] for s, _ in rule.judged(frame, 0.05, 7)] == ["1", "2"]
    # a slowdown at the same thread count is still one
    slower = frame_of([100.0] * 6 + [130.0] * 2, device="cpu").assign(threads=[2] * 8)
    assert list(zip(dashboard.regressions(slower)["kind"], dashboard.regressions(slower)["threads"])) == [
        ("step", "2")]


def test_a_store_carried_across_the_threads_column_keeps_its_series_whole():
    # runs added before the column have no thread count; the same count is named from then on: one series, whose
    # slowdown keeps its flag
    frame = frame_of([100.0] * 6 + [130.0] * 6, device="cpu").assign(threads=[None] * 8 + [1.0] * 4)
    found = dashboard.regressions(frame)
    assert list(zip(found["kind"], found["threads"], found["bad_runs"])) == [("step", "1", 6)]


@needs("pyarrow")
def test_history_rows_carry_the_cpu_thread_count(tmp_path):
    records = [{"suite": "checkpointing", "variant": "full", "params": {"n": 1}, "metrics": {"step_time_ms": 1.0}},
               {"suite": "mla", "variant": "mha", "params": {"n": 1}, "metrics": {"decode_time_ms": 1.0}}]
    run = write_run(tmp_path / "runs", "r0", records, gpu=None)
    meta = json.loads((run / "run.json").read_text())
    meta["suites"]["mla"]["threads"] = 1  # its declaration; checkpointing's None: torch's default, the environment's
    meta["env"]["torch_threads"] = 16
    (run / "run.json").write_text(json.dumps(meta))
    gpu_run = write_run(tmp_path / "runs", "r1", records, started_at="2026-11-29T01:00:00Z")
    history.add_runs([run, gpu_run], tmp_path / "store")
    frame = history.load(tmp_path / "store")
    threads = {(r.run_id, r.suite): r.threads for r in frame.itertuples()}
    assert threads[("r0", "mla")] == 1 and threads[("r0", "checkpointing")] == 16
    assert frame[frame["run_id"] == "r1"]["threads"].isna().all()  # a GPU run's host threads only launch kernels
