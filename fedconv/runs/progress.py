"""Live progress of a run's rounds on a terminal: a bar with round i/N, the time left, the
last central accuracy and the MB moved so far, under the usual one line per round.

Only where standard output is a terminal: in CI, a log file or a deployed ServerApp (whose
output the SuperLink collects) the lines are printed as they always were, with no escape
codes. Rich (a Flower dependency) draws the bar.
"""

from __future__ import annotations

import os
import sys
from typing import Any, TextIO


def live_terminal(stream: TextIO) -> bool:
    """A terminal that can redraw a bar (not ``TERM=dumb``, not ``FEDCONV_PLAIN=1``)."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and os.environ.get("TERM") != "dumb" and not os.environ.get("FEDCONV_PLAIN")


class RoundProgress:
    """Prints each round's line; on a terminal also keeps the progress bar below them."""

    def __init__(self, rounds: int, done: int = 0, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self._bar: Any = None
        if not live_terminal(self.stream):
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(
            TextColumn("round"), MofNCompleteColumn(), BarColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
            console=Console(file=self.stream), transient=True, redirect_stdout=False, redirect_stderr=False,
        )
        self._task = self._bar.add_task("rounds", total=rounds, completed=done, status="")
        self._bar.start()

    def line(self, text: str) -> None:
        if self._bar is None:
            print(text, file=self.stream, flush=True)
        else:
            self._bar.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def round_done(self, server_round: int, accuracy: float | None, megabytes: float) -> None:
        if self._bar is None:
            return
        status = (f"acc {accuracy:.4f}  " if accuracy is not None else "") + f"{megabytes:.1f} MB"
        self._bar.update(self._task, completed=server_round, status=status)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
