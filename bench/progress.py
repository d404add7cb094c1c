"""Run progress: a rich bar (case, count, ETA) on a terminal, one plain line per case in CI logs."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Column
from rich.text import Text

STATUS_STYLE = {"ok": "green", "skipped": "dim", "oom": "yellow", "timeout": "red", "error": "bold red"}


def _line(record) -> str:
    reason = f"  ({record.error.strip().splitlines()[-1]})" if record.error else ""
    return f"{record.status:<7} {record.case_id}  {record.elapsed_s:.1f}s{reason}"


class PlainProgress:
    """`[ 3/12] ok      checkpointing/full/...  1.2s`: one line per finished case, safe for any log."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout
        self.total = self.done = 0

    def start(self, total: int, done: int) -> None:
        self.total, self.done = total, done
        if done:
            print(f"resuming: {done}/{total} cases already finished", file=self.stream, flush=True)

    def begin(self, case) -> None:
        pass

    def end(self, record) -> None:
        self.done += 1
        width = len(str(self.total))
        print(f"[{self.done:>{width}}/{self.total}] {_line(record)}", file=self.stream, flush=True)

    def stop(self) -> None:
        pass


class RichProgress(PlainProgress):
    """A live bar with the running case, the count and the ETA; finished cases scroll above it."""

    def __init__(self, console: Console):
        super().__init__()
        self.console = console
        case = TextColumn("{task.description}", table_column=Column(ratio=1, no_wrap=True, overflow="ellipsis"))
        self.bar = Progress(case, BarColumn(bar_width=24), MofNCompleteColumn(),
                            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console,
                            transient=True)
        self.task = None

    def start(self, total: int, done: int) -> None:
        self.total, self.done = total, done
        self.bar.start()
        self.task = self.bar.add_task("starting", total=total, completed=done)

    def begin(self, case) -> None:
        self.bar.update(self.task, description=case.id)

    def end(self, record) -> None:
        self.done += 1
        style = STATUS_STYLE.get(record.status, "")
        self.bar.console.print(Text(_line(record), style=style), soft_wrap=True)
        self.bar.update(self.task, advance=1)

    def stop(self) -> None:
        self.bar.stop()


def make_progress(console: Console | None = None):
    console = console or Console()
    return RichProgress(console) if console.is_terminal else PlainProgress()
