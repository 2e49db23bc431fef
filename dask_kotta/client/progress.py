"""The progress of a wait for many jobs, on stderr: a bar on a terminal, a few lines elsewhere.

On a terminal (``stderr.isatty()``) it is a rich progress bar that counts the
jobs ended and failed. Anywhere else (a log file, a pipe, CI) a bar would be
noise: it prints one plain line at most every ``LINE_EVERY_S`` seconds while
jobs are still running, and one when the wait is over.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any

#: Seconds between two plain lines when stderr is not a terminal.
LINE_EVERY_S = 30.0


class Progress:
    """Counts jobs as they end; shows nothing unless ``enabled``."""

    def __init__(self, total: int, enabled: bool, stream: IO[str] | None = None):
        self.total, self.done, self.failed = total, 0, 0
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled and total > 0
        self.start = time.monotonic()
        self._last_line = self.start
        self._bar: Any = None
        self._task: Any = None
        if self.enabled and _isatty(self.stream):
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("kotta jobs"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[failed]} failed"), TimeElapsedColumn(),
                console=Console(file=self.stream), transient=False,
            )  # fmt: skip
            self._task = self._bar.add_task("jobs", total=total, failed=0)
            self._bar.start()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ended(self, failed: bool) -> None:
        """One more job ended (``failed``: it did not complete)."""
        self.done += 1
        self.failed += bool(failed)
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, failed=self.failed)
        elif time.monotonic() - self._last_line >= LINE_EVERY_S and self.done < self.total:
            self._line()

    def close(self) -> None:
        """Stop the bar, or print the last plain line."""
        if not self.enabled:
            return
        self.enabled = False
        if self._bar is not None:
            self._bar.stop()
        else:
            self._line()

    def _line(self) -> None:
        self._last_line = time.monotonic()
        print(
            f"kotta: {self.done}/{self.total} jobs ended, {self.failed} failed "
            f"({self._last_line - self.start:.1f} s)",
            file=self.stream,
            flush=True,
        )


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
