"""The one progress bar: a bar redrawn in place on a terminal, a few plain log lines elsewhere.

:class:`ProgressBar` counts ``done`` and ``failed`` items of a known ``total`` and
estimates the time left from the items left and the average rate so far. On a terminal
(:func:`is_terminal`: a tty whose ``TERM`` is not ``dumb``) it redraws one line on its
stream; anywhere else (a pipe, a file, a dumb terminal such as Emacs' shell) it logs one
line per quarter of the items (:data:`PLAIN_LINES`) through the ``crypto_ml.progress``
console logger (so ``--log-format json`` sees them as JSON, and ``--quiet`` hides them).
The download counts coins with it; a run's forecasts are counted by its subclass
:class:`crypto_ml.ops.progress.Progress`, which adds running and queued.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from typing import TextIO

log = logging.getLogger("crypto_ml.progress")
DRAW_SECONDS = 0.2
PLAIN_LINES = 4  # off a terminal: one line per quarter of the items
DUMB_TERMS = ("dumb", "unknown")  # terminals that show control codes as text


def is_terminal(stream: TextIO) -> bool:
    """Whether ``stream`` is a terminal a bar can be redrawn on: a tty, and ``TERM`` not a
    dumb terminal's (which prints ``\\x1b[K`` as it is)."""
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False
    return tty and os.environ.get("TERM", "").lower() not in DUMB_TERMS


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "ETA --"
    seconds = round(seconds)
    return f"ETA {seconds // 60}:{seconds % 60:02d}"


class ProgressBar:
    """Counts finished items of ``total`` and shows them on ``stream`` (a bar if ``tty``)."""

    def __init__(self, stream: TextIO, tty: bool | None = None,
                 clock: Callable[[], float] = time.monotonic, unit: str = "finished") -> None:
        self.stream = stream
        self.tty = is_terminal(stream) if tty is None else tty
        self.clock = clock
        self.unit = unit
        self.started_at = clock()
        self.total = self.done = self.failed = 0
        self.drawn_at = float("-inf")
        self.shown = False
        self.next_line = 1  # the quarter at which the next plain line is due

    @property
    def finished(self) -> int:
        return self.done + self.failed

    def eta(self) -> float | None:
        """Seconds left: the items left at the average rate of those finished so far."""
        if not self.finished:
            return None
        rate = self.finished / max(self.clock() - self.started_at, 1e-9)
        return (self.total - self.finished) / rate

    def status(self) -> str:
        return (f"{self.finished}/{self.total} {self.unit}: {self.done} done, "
                f"{self.failed} failed, {format_eta(self.eta())}")

    def step(self, ok: bool = True) -> None:
        """One more item finished (``ok`` or failed): redraw, or log at each quarter."""
        if ok:
            self.done += 1
        else:
            self.failed += 1
        if self.tty:
            self.draw()
        else:
            self.maybe_log()

    def bar(self, width: int) -> str:
        text = self.status()
        cells = max(width - len(text) - 3, 10)
        filled = cells * self.finished // self.total if self.total else 0
        return f"[{'#' * filled}{'-' * (cells - filled)}] {text}"[:width]

    def draw(self) -> None:
        width = shutil.get_terminal_size((100, 20)).columns - 1
        self.stream.write("\r" + self.bar(width) + "\x1b[K")
        self.stream.flush()
        self.drawn_at = self.clock()
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.shown = False

    def maybe_log(self) -> None:
        if not self.total:
            return
        part = self.finished * PLAIN_LINES // self.total
        if part >= self.next_line or self.finished == self.total:
            self.next_line = part + 1
            log.info("progress: %s", self.status(),
                     extra={"fields": {"finished": self.finished, "total": self.total,
                                       "done": self.done, "failed": self.failed}})

    def close(self) -> None:
        """Remove the bar before anything else is printed."""
        self.clear()
