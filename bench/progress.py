"""Run progress: what the running case is doing, and how long the run has left.

- A case's own progress travels by the standard library's logging: a long loop logs to the logger
  "techbench.progress", e.g. `log.info("training centernet %d/%d", i, n, extra={"done": i, "total": n})`. In the
  case's process, `forwarding(path)` attaches a handler that writes the latest message to a small JSON file (one per
  case, in a temporary folder the runner keeps for the run), at most every FORWARD_EVERY_S: a call in between only
  keeps its record (O(1)), so a timed loop is not slowed, and a timer writes the last one kept.
- In `bench`, a display reads that file while the case runs: on a terminal a rich live view (the run's bar, count and
  ETA; the running case, its elapsed time and its own progress), elsewhere plain lines (one per finished case, and a
  "still running" line now and then, for CI logs).
- The ETA (bench.eta) comes from the elapsed_s of the same case_ids on the same device in earlier run directories
  beside this one (runs/ by default), scaled by this run's pace against them; without them for most cases it says
  "ETA unknown".
rich is imported only by the displays: the case's process needs none of it."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.eta import Eta, duration

LOGGER = "techbench.progress"
FORWARD_EVERY_S = 0.5
"""A case's process writes its progress at most this often: twice a second is all a person can read."""
POLL_S = 1.0
"""How often `bench` reads the running case's progress."""
STILL_RUNNING_FIRST_S, STILL_RUNNING_S = 30.0, 60.0
"""Plain output: the first "still running" line after 30 s of a case, then one a minute (a 15-minute case: 15 lines)."""
STATUS_STYLE = {"ok": "green", "skipped": "dim", "oom": "yellow", "timeout": "red", "error": "bold red"}


@dataclass(frozen=True)
class Note:
    """A case's latest progress: the message it logged, its step count when it gave one, when (time.time())."""

    message: str
    done: int | None = None
    total: int | None = None
    at: float = 0.0


def _count(value) -> int | None:
    try:
        return None if value is None or isinstance(value, bool) else int(value)
    except (TypeError, ValueError):
        return None


def read_note(path: str | Path | None) -> Note | None:
    """The latest progress a case wrote to `path`, or None (none yet, or no channel)."""
    if path is None:
        return None
    try:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
        return Note(str(d["message"]), _count(d.get("done")), _count(d.get("total")), float(d.get("at") or 0.0))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


class Forwarder(logging.Handler):
    """Writes the latest "techbench.progress" record to a file, at most every `every_s`; in between, emit() only keeps
    the record, and a timer writes the last one kept so a pause after a burst still shows where the case stands."""

    def __init__(self, path: str | Path, every_s: float = FORWARD_EVERY_S):
        super().__init__(logging.INFO)
        self.path, self.every_s = Path(path), every_s
        self._tmp = self.path.with_name(f".{self.path.name}.tmp")
        self._last = -math.inf
        self._pending: logging.LogRecord | None = None
        self._timer: threading.Timer | None = None

    def emit(self, record: logging.LogRecord) -> None:  # under self.lock (Handler.handle)
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._write(record, now)
            return
        self._pending = record
        if self._timer is None:
            self._timer = threading.Timer(self._last + self.every_s - now, self._flush)
            self._timer.daemon = True
            self._timer.start()

    def _flush(self) -> None:
        with self.lock:
            self._timer = None
            if self._pending is not None:
                self._write(self._pending, time.monotonic())

    def _write(self, record: logging.LogRecord, now: float) -> None:
        self._pending, self._last = None, now
        try:
            note = {"message": record.getMessage(), "done": _count(getattr(record, "done", None)),
                    "total": _count(getattr(record, "total", None)), "at": record.created}
            self._tmp.write_text(json.dumps(note), encoding="utf-8")
            os.replace(self._tmp, self.path)  # whole or not at all: `bench` never reads half a message
        except Exception:  # noqa: BLE001 - progress is for the display: a case never fails because of it
            pass

    def close(self) -> None:
        with self.lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self._pending is not None:
                self._write(self._pending, time.monotonic())
        super().close()


@contextmanager
def forwarding(path: str | Path | None):
    """While the block runs, "techbench.progress" records at INFO and up go to `path` (nothing when it is None)."""
    if path is None:
        yield
        return
    with listening(LOGGER, Forwarder(path)):
        yield


@contextmanager
def listening(name: str, handler: logging.Handler):
    """`handler` on the logger `name` at INFO and up while the block runs (the root's WARNING would drop info()),
    closed after."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        handler.close()


def _line(record) -> str:
    reason = f"  ({record.error.strip().splitlines()[-1]})" if record.error else ""
    return f"{record.status:<7} {record.case_id}  {record.elapsed_s:.1f}s{reason}"


class PlainProgress:
    """`[ 3/12] ok      checkpointing/full/...  1.2s  ETA 4m10s`: one line per finished case, and
    `still running: <case> 2m10s, training centernet 120/500` while a long one runs; safe for any log.

    A watcher thread reads the running case's progress every `poll_s` and calls tick(); tests call tick() directly."""

    def __init__(self, stream=None, poll_s: float = POLL_S, clock=time.monotonic):
        self.stream = stream or sys.stdout
        self.poll_s, self.clock = poll_s, clock
        self.total = self.done = 0
        self.eta = Eta([], {})
        self.case: str | None = None
        self.channel: Path | None = None
        self.note: Note | None = None
        self.held = False  # the case waits for the machine to go idle (--wait-idle): it has not started
        self.case_t0 = self._due = 0.0
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    def start(self, total: int, done: int, eta: Eta | None = None) -> None:
        self.total, self.done, self.eta = total, done, eta or Eta([], {})
        if done:
            self._print(f"resuming: {done}/{total} cases already finished")
        to_run = f"{total - done} case{'s' * (total - done != 1)} to run"
        if total == done or not self.eta.expected or (eta := self.eta.text()).startswith("ETA unknown"):
            self._print("no case to run" if total == done else f"{to_run}; ETA unknown (no earlier run under "
                        f"{self.eta.where} timed {'most of ' * bool(self.eta.expected)}these cases on this device)")
        else:
            self._print(f"{to_run}; {eta} from earlier runs under {self.eta.where}")

        def watch():
            while not self._stop.wait(self.poll_s):
                self.tick()

        self._stop.clear()
        self._watcher = threading.Thread(target=watch, name="techbench-progress", daemon=True)
        self._watcher.start()

    def begin(self, case, channel: Path | None = None) -> None:
        with self._lock:
            self.case, self.channel, self.note, self.held = case.id, channel, None, False
            self.case_t0 = self.clock()
            self._due = self.case_t0 + STILL_RUNNING_FIRST_S

    def waiting(self, case, why: str) -> None:
        """Before `begin`: the case waits for the machine to go idle (`bench run --wait-idle`); `why`: what is busy."""
        with self._lock:
            self.begin(case)
            self.held, self.note = True, Note(f"waiting for the machine to go idle: {why}")
            self._print(f"{case.id}: {self.note.message}")

    def running_s(self) -> float:
        return self.clock() - self.case_t0 if self.case else 0.0

    def tick(self) -> None:
        """Read the running case's progress, and show it."""
        with self._lock:
            if self.case is not None:
                self.note = read_note(self.channel) or self.note
                self._show()

    def _show(self) -> None:
        now = self.clock()
        if now >= self._due:  # plain output says nothing new until a "still running" line is due
            self._due = now + STILL_RUNNING_S
            doing = f", {self.note.message}" if self.note else ""
            eta = f"; {self.eta.text(self.case, self.running_s())}" if self.eta.expected else ""
            self._print(f"still {'waiting' if self.held else 'running'}: {self.case} {duration(now - self.case_t0)}"
                        f"{doing}{eta}")

    def end(self, record) -> None:
        with self._lock:
            self.case = None
            self.done += 1
            self.eta.finished(record.case_id, record.elapsed_s)
            self._ended(record)

    def _ended(self, record) -> None:
        eta = f"  {self.eta.text()}" if self.eta.expected and self.eta.pending else ""
        self._print(f"[{self.done:>{len(str(self.total))}}/{self.total}] {_line(record)}{eta}")

    def stop(self) -> None:
        self._stop.set()
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join()
        self._watcher = None

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)


class _RunningCase:
    """The live view's case lines, rendered afresh at each refresh: its id and elapsed time, then its own progress."""

    def __init__(self, progress: RichProgress):
        self.progress = progress

    def __rich__(self):
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        p = self.progress
        if p.case is None:
            return Text("")
        head = Text.assemble(("waiting " if p.held else "running ", "dim"), (p.case, "bold"),
                             (f"  {duration(p.running_s())}", "cyan"),
                             no_wrap=True, overflow="ellipsis")
        note = p.note
        if note is None:  # a suite that logs no progress: its elapsed time is all there is to show
            return head
        row = Table.grid(padding=(0, 1))
        message = Text(f"  {note.message}", no_wrap=True, overflow="ellipsis")
        if note.total:
            row.add_row(message, ProgressBar(total=note.total, completed=min(note.done or 0, note.total), width=20))
        else:
            row.add_row(message)
        return Group(head, row)


class RichProgress(PlainProgress):
    """A terminal's live view: the run's bar, count, elapsed time, ETA and running case; finished cases scroll above."""

    def __init__(self, console, poll_s: float = POLL_S, clock=time.monotonic):
        from rich.console import Group
        from rich.live import Live
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        super().__init__(poll_s=poll_s, clock=clock)
        self.console = console
        self.bar = Progress(TextColumn("run"), BarColumn(bar_width=24), MofNCompleteColumn(), TimeElapsedColumn(),
                            TextColumn("{task.fields[eta]}"), console=console)
        self.task = None
        self.live = Live(Group(self.bar, _RunningCase(self)), console=console, transient=True,
                         refresh_per_second=2)

    def start(self, total: int, done: int, eta: Eta | None = None) -> None:
        self.task = self.bar.add_task("run", total=total, completed=done, eta=(eta or Eta([], {})).text())
        self.live.start()
        super().start(total, done, eta)

    def _show(self) -> None:  # the case's lines render themselves (_RunningCase); the ETA moves as it runs
        self.bar.update(self.task, eta=self.eta.text(self.case, self.running_s()))

    def _ended(self, record) -> None:
        from rich.text import Text

        self.console.print(Text(_line(record), style=STATUS_STYLE.get(record.status, "")), soft_wrap=True)
        self.bar.update(self.task, advance=1, eta=self.eta.text())

    def _print(self, text: str) -> None:
        self.console.print(text, style="dim", soft_wrap=True)

    def stop(self) -> None:
        super().stop()
        self.live.stop()


def make_progress(console=None):
    """The live view on a terminal, plain lines elsewhere (a pipe, a CI log)."""
    from rich.console import Console

    console = console or Console()
    return RichProgress(console) if console.is_terminal else PlainProgress()
