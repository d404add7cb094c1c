"""Progress a person can read: the running case's own progress crosses from its process to the display (plain lines
and a rich live view), the ETA comes from earlier runs, and a timeout says what the case was doing."""

import io
import json
import logging
import re
import time
from pathlib import Path

import pytest
from rich.console import Console

from bench import progress, runner
from bench.progress import Forwarder, PlainProgress, RichProgress, duration, read_note
from bench.suite import SUITES, Measurement, Suite, register

STEPS = 5
LAST = f"training fake {STEPS}/{STEPS}"


@register
class Talking(Suite):
    """Logs its progress as a training loop does, then waits until `bench` has shown the last message (the test's
    display creates params["marker"] when it has): the message must cross from the case's process to the display."""

    name = "_talking"
    variants = {"train": "reference", "hang": "logs, then never returns"}
    marker = ""

    def grid(self, size, device):
        return [{"steps": STEPS, "marker": self.marker}]

    def measure(self, variant, params, device):
        log = logging.getLogger(progress.LOGGER)
        for i in range(1, params["steps"] + 1):  # a burst: the forwarder writes the first, its timer the last
            log.info("training fake %d/%d", i, params["steps"], extra={"done": i, "total": params["steps"]})
        if variant == "hang":
            time.sleep(3600)
        deadline = time.monotonic() + 30
        while not Path(params["marker"]).exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        return Measurement({"seen_x": float(Path(params["marker"]).exists())})


class Shows:
    """A display that creates the case's marker once it has shown the case's last message."""

    def tick(self):
        super().tick()
        if self.note is not None and self.note.message == LAST:
            if isinstance(self, RichProgress):
                self.live.refresh()  # drawn, not only read
            Path(SUITES["_talking"].marker).touch()


class ShowsPlain(Shows, PlainProgress):
    pass


class ShowsRich(Shows, RichProgress):
    pass


@pytest.fixture
def talking(tmp_path, monkeypatch):
    monkeypatch.setattr(SUITES["_talking"], "marker", str(tmp_path / "shown"))
    monkeypatch.setattr(progress, "STILL_RUNNING_FIRST_S", 0.0)  # a "still running" line at every tick
    monkeypatch.setattr(progress, "STILL_RUNNING_S", 0.0)
    return runner.RunConfig(suites=[SUITES["_talking"]], size="smoke", device="cpu", out=tmp_path / "runs" / "b",
                            variants=["train"])


@pytest.mark.parametrize("inline", [False, True])
def test_plain_lines_show_the_running_cases_own_progress(talking, inline):
    stream = io.StringIO()
    talking.inline = inline
    code, [record] = runner.run(talking, ShowsPlain(stream, poll_s=0.02))
    out = stream.getvalue()
    assert code == 0 and record.metrics["seen_x"] == 1.0, out
    assert f"still running: {record.case_id} " in out and f", {LAST}" in out
    assert f"[1/1] ok      {record.case_id}" in out
    assert "1 case to run; ETA unknown (no earlier run under" in out


def test_the_live_view_shows_the_case_its_elapsed_time_its_progress_and_the_eta(talking):
    console = Console(file=io.StringIO(), force_terminal=True, width=200, record=True, color_system=None)
    code, [record] = runner.run(talking, ShowsRich(console, poll_s=0.02))
    text = console.export_text()
    assert code == 0 and record.metrics["seen_x"] == 1.0, text
    assert re.search(rf"running {re.escape(record.case_id)}  \d+s\n  {LAST} ", text), text
    assert re.search(r"run .* 0/1 .* ETA unknown", text)
    assert f"ok      {record.case_id}" in text  # the finished line scrolls above the live view


def test_the_eta_comes_from_the_same_cases_in_earlier_runs(talking):
    Path(SUITES["_talking"].marker).touch()  # no display to wait for
    first = runner.run(runner.RunConfig(**{**vars(talking), "out": talking.out.parent / "a", "inline": True}))
    [done] = first[1]
    stream = io.StringIO()
    code, _ = runner.run(runner.RunConfig(**{**vars(talking), "inline": True}), ShowsPlain(stream, poll_s=0.02))
    line = stream.getvalue().splitlines()[0]
    assert code == 0 and line == f"1 case to run; ETA {duration(done.elapsed_s)} from earlier runs under " \
                                 f"{talking.out.parent}/"


def test_a_timeout_says_how_long_the_case_ran_and_what_it_was_doing(talking):
    talking.variants, talking.timeout_s = ["hang"], 3.0
    code, [record] = runner.run(talking)
    assert code == 1 and record.status == "timeout"
    assert re.match(r"no result after \d+\.\d s \(--timeout 3 s\): the case was killed; its last progress, logged ",
                    record.error), record.error
    assert record.error.endswith(f" before: {LAST}")


def test_the_default_timeout_follows_the_size_and_timeout_overrides_it(tmp_path, monkeypatch):
    given = []
    monkeypatch.setattr(runner, "_execute", lambda case, cfg, timeout_s, said: given.append(timeout_s) or
                        {"status": "skipped", "error": "not run"})
    for i, (size, timeout_s) in enumerate([("smoke", None), ("quick", None), ("full", None), ("quick", 5.0)]):
        runner.run(runner.RunConfig(suites=[SUITES["_talking"]], size=size, device="cpu", out=tmp_path / str(i),
                                    timeout_s=timeout_s))
    assert given == [300.0] * 2 + [900.0] * 2 + [3600.0] * 2 + [5.0] * 2  # two variants a run


def test_the_forwarder_writes_at_most_every_interval_and_the_last_message_at_the_end(tmp_path):
    path = tmp_path / "note.json"
    logger = logging.getLogger(progress.LOGGER)
    level = logger.level
    with progress.forwarding(path):
        handler = next(h for h in logger.handlers if isinstance(h, Forwarder))
        handler.every_s = 3600.0  # nothing but the first gets through until the block ends
        for i in range(1, 101):
            logger.info("step %d/100", i, extra={"done": i, "total": 100})
        assert read_note(path).message == "step 1/100"
    note = read_note(path)
    assert (note.message, note.done, note.total) == ("step 100/100", 100, 100) and note.at <= time.time()
    assert handler not in logger.handlers and logger.level == level
    with progress.forwarding(None):
        logger.info("nowhere")
    assert read_note(path).message == "step 100/100"


def test_a_pause_after_a_burst_still_shows_the_last_message(tmp_path):
    path = tmp_path / "note.json"
    logger = logging.getLogger(progress.LOGGER)
    with progress.forwarding(path):
        for i in (1, 2, 3):  # 2 and 3 come within the interval of 1: its timer writes 3
            logger.info("step %d/3", i, extra={"done": i, "total": 3})
        deadline = time.monotonic() + 10
        while read_note(path).message != "step 3/3" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert read_note(path).message == "step 3/3"


def test_a_note_that_is_not_one_reads_as_none(tmp_path):
    bad = tmp_path / "bad.json"
    for text in ("", "{", "[]", '{"done": 1}'):
        bad.write_text(text)
        assert read_note(bad) is None
    assert read_note(tmp_path / "absent.json") is None and read_note(None) is None
    bad.write_text(json.dumps({"message": "m", "done": "x", "total": True}))
    assert read_note(bad) == progress.Note("m", None, None, 0.0)


def test_make_progress_picks_the_live_view_only_on_a_terminal():
    assert type(progress.make_progress(Console(file=io.StringIO(), force_terminal=True))) is RichProgress
    assert type(progress.make_progress(Console(file=io.StringIO()))) is PlainProgress
