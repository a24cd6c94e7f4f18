"""Progress where no one watches a bar: a line at least every 30 s on a pipe, a file or a CI log.

The rules: a terminal keeps what it shows (a tqdm bar, or nothing); any other stream gets one
plain line (``step 120/400, loss 1.23, 41 s``) as soon as `every` seconds have passed since
the last one, counted on `time.monotonic()`, so a log shows the run is alive and how far it
is. A line is written where the work reports itself (each step, each batch loaded), never
from a timer thread: nothing runs beside the training loop, and a run that hangs looks hung.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import Any, TextIO

__all__ = ["PROGRESS_EVERY_S", "ProgressLines", "progress_bar"]

#: The longest a non-terminal stream waits for a line while work goes on.
PROGRESS_EVERY_S = 30.0


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class ProgressLines:
    """Writes a progress line to `stream` (stderr) when `every` seconds have passed; not on a TTY."""

    def __init__(self, stream: TextIO | None = None, *, every: float = PROGRESS_EVERY_S) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.every = every
        self.enabled = not _is_tty(self.stream)
        self._start = self._last = time.monotonic()

    def __call__(self, what: str, done: int, total: int | None = None, **figures: float) -> None:
        """`done` of `total` `what` so far (and figures such as the loss); a line if one is due."""
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < self.every:
            return
        self._last = now
        parts = [f"{what} {done}/{total}" if total else f"{what} {done}"]
        parts += [f"{name} {value:.3g}" for name, value in figures.items()]
        parts.append(f"{now - self._start:.0f} s")
        try:
            self.stream.write(", ".join(parts) + "\n")
            self.stream.flush()
        except (OSError, ValueError):  # a closed pipe must not stop the run it reports on
            self.enabled = False


class _LineBar:
    """The part of tqdm's interface the evaluation loops use, reported as `ProgressLines`."""

    def __init__(self, total: int, desc: str, lines: ProgressLines) -> None:
        self.total, self.desc, self.lines, self.n = total, desc, lines, 0

    def update(self, n: int = 1) -> None:
        self.n += n
        self.lines(self.desc, self.n, self.total)

    def __enter__(self) -> _LineBar:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None


def progress_bar(
    total: int,
    desc: str,
    unit: str,
    progress: bool | None,
    *,
    lines: ProgressLines | None = None,
) -> Any:
    """A tqdm bar on a terminal (or where `progress` is True), lines elsewhere, nothing if False."""
    from tqdm import tqdm

    if progress is None and not _is_tty(sys.stderr):
        return _LineBar(total, desc, lines or ProgressLines())
    show = sys.stderr.isatty() if progress is None else progress
    return tqdm(total=total, desc=desc, unit=unit, disable=not show, dynamic_ncols=True)
