"""The one progress display: a tqdm bar redrawn in place on a terminal, a few log lines elsewhere.

:class:`ProgressBar` counts ``done`` and ``failed`` items of a known ``total`` and
estimates the time left from the items left and the average rate so far. On a terminal
(:func:`is_terminal`: a tty whose ``TERM`` is not ``dumb``) tqdm redraws one line on the
stream (``[####----] 7/20 finished: 6 done, 1 failed, ETA 0:12``: tqdm draws the bar and
fits the line to the terminal's width, the text is ours); anywhere else (a pipe, a file, a
dumb terminal such as Emacs' shell) it logs one line per quarter of the items
(:data:`PLAIN_LINES`) through the ``crypto_ml.progress`` console logger (so
``--log-format json`` sees them as JSON, and ``--quiet`` hides them). The download counts
coins with it, a backtest without an observer its forecasts, a table run its series.

:class:`Progress` is a run's :class:`~crypto_ml.dispatch.report.RunObserver` (a protocol,
so this module need not import the dispatcher): ``done`` and ``failed`` count finished
forecasts; ``running`` counts the forecasts of messages whose result backend state is
STARTED (deep tasks are stored so when they start; a cheap batch, milliseconds long, is
not), read at most twice a second; ``queued`` is the rest. Every count is in forecasts,
whatever the stream, and the ETA is the forecasts left at the rate forecasts have finished
so far. On a terminal the bar is drawn once the messages are sent (or, while sending takes
long, after a whole message's forecasts are counted; never a batch's first forecast as if
it were the whole run), at most 5 times a second; each result clears it (the caller prints
next) and the next wait draws it again. A run of several dispatches on one observer
(``--model best``: a backtest, then the forecasts) counts each as a phase of its own:
:meth:`Progress.new_phase` starts the counts (and the ETA) afresh under a label shown
before them.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from typing import Any, TextIO

from tqdm import tqdm

from crypto_ml.core.results import result_meta

log = logging.getLogger("crypto_ml.progress")
DRAW_SECONDS = 0.2  # a run's bar: redrawn at most 5 times a second
POLL_SECONDS = 0.5  # a run's running count: read from the result backend at most this often
PLAIN_LINES = 4  # off a terminal: one line per quarter of the items
DUMB_TERMS = ("dumb", "unknown")  # terminals that show control codes as text
DEFAULT_COLUMNS = 100  # a terminal that does not say its width (a fresh pseudo-terminal)


def is_terminal(stream: TextIO) -> bool:
    """Whether ``stream`` is a terminal a bar can be redrawn on: a tty, and ``TERM`` not a
    dumb terminal's (which prints ``\\r`` and control codes as they are)."""
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False
    return tty and os.environ.get("TERM", "").lower() not in DUMB_TERMS


def terminal_columns(stream: TextIO) -> int:
    """The width of the terminal ``stream`` is on; :data:`DEFAULT_COLUMNS` when it says 0 or
    nothing (tqdm would take a pseudo-terminal's 0 x 0 for no room at all)."""
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        columns = 0
    return columns or DEFAULT_COLUMNS


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "ETA --"
    seconds = round(seconds)
    return f"ETA {seconds // 60}:{seconds % 60:02d}"


class _Line(tqdm):
    """tqdm drawn only when :class:`ProgressBar` says (``refresh``): no monitor thread."""

    monitor_interval = 0


def _line(stream: TextIO, tty: bool) -> Any:
    """A tqdm line on ``stream`` that shows ``[bar] text`` (the text: its description), not
    drawn until refreshed (``delay``), always on the stream's current line (``position``)."""
    return _Line(total=1, file=stream, disable=not tty, bar_format="[{bar}] {desc}",
                 ascii="-#", leave=False, position=0, delay=math.inf, ncols=DEFAULT_COLUMNS - 1,
                 nrows=20)


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
        self.skipped = 0  # finished by an earlier run: counted, not in the rate
        self.drawn_at = float("-inf")
        self.shown = False
        self.next_line = 1  # the quarter at which the next plain line is due
        self.line = _line(stream, self.tty)

    @property
    def finished(self) -> int:
        return self.done + self.failed

    def rate(self) -> float:
        """Items finished a second so far (those an earlier run finished left out)."""
        return (self.finished - self.skipped) / max(self.clock() - self.started_at, 1e-9)

    def eta(self) -> float | None:
        """Seconds left: the items left at the average rate of those finished so far."""
        if self.finished <= self.skipped:
            return None
        return (self.total - self.finished) / self.rate()

    def status(self) -> str:
        return f"{self.counts()}, {format_eta(self.eta())}"

    def counts(self) -> str:
        return f"{self.finished}/{self.total} {self.unit}: {self.done} done, {self.failed} failed"

    def step(self, ok: bool = True) -> None:
        """One more item finished (``ok`` or failed)."""
        self.add(int(ok), int(not ok))

    def add(self, done: int, failed: int) -> None:
        """More items finished: redraw, or log at each quarter."""
        self.done += done
        self.failed += failed
        if self.tty:
            self.draw()
        else:
            self.maybe_log()

    def draw(self) -> None:
        """Show the counts in place: tqdm fills the bar and fits the line to the width."""
        self.line.ncols = terminal_columns(self.stream) - 1
        self.line.total = max(self.total, 1)  # tqdm draws a bar only for a nonzero total
        self.line.n = min(self.finished, self.line.total)
        self.line.set_description_str(self.status(), refresh=False)
        self.line.refresh()
        self.drawn_at = self.clock()
        self.shown = True

    def clear(self) -> None:
        """Blank the bar's line, so that what is printed next starts on a clean line."""
        if self.shown:
            self.line.clear()
            self.stream.flush()  # tqdm leaves its last "\r" unflushed
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
        self.line.close()


class Progress(ProgressBar):
    """A run's forecasts on ``stream`` (a bar if ``tty``, else log lines), as its observer."""

    def __init__(self, stream: TextIO, tty: bool | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(stream, tty, clock)
        self.running = 0
        self.app: Any = None  # the run's Celery app: only its result backend is read
        self.unfinished: dict[str, int] = {}  # message id: forecasts not back yet
        self.polled_at = float("-inf")
        self.phase = ""  # e.g. "backtest": shown before the counts
        self.last_sent: str | None = None  # the message whose forecasts are being counted
        self.draw_due = False  # forecasts sent since the bar was last drawn

    def new_phase(self, label: str = "") -> None:
        """Count from zero again (the next dispatch of a run), under ``label``."""
        self.clear()
        self.total = self.done = self.failed = self.running = 0
        self.unfinished.clear()
        self.next_line = 1
        self.app = None
        self.phase = label
        self.last_sent, self.draw_due = None, False

    # RunObserver hooks
    def on_sent(self, app: Any, task_id: str, coin: str, model: str) -> None:
        if self.app is None:  # the ETA counts from the first dispatch, not cluster start-up
            self.started_at = self.clock()
            self.drawn_at = self.started_at  # a dispatch sent at once shows its whole total
        self.app = app
        if (task_id != self.last_sent and self.draw_due and self.tty
                and self.clock() - self.drawn_at >= DRAW_SECONDS):
            self.draw()  # a new message: every forecast of those before it is counted
        self.last_sent = task_id
        self.total += 1
        self.unfinished[task_id] = self.unfinished.get(task_id, 0) + 1
        self.draw_due = True

    def on_done(self, task_id: str | None, coin: str, model: str,
                result: dict[str, Any] | None, reason: str | None) -> None:
        if self.tty and self.draw_due:
            self.draw()  # shown from the first dispatch, even if every result is back at once
        if task_id is None:
            self.total += 1  # failed before dispatch
        elif self.unfinished.get(task_id, 0) > 1:
            self.unfinished[task_id] -= 1
        else:
            self.unfinished.pop(task_id, None)
        if result is not None:
            self.done += 1
        else:
            self.failed += 1
        self.running = min(self.running, self.total - self.finished)
        self.clear()  # the caller prints next; the bar comes back at the next wait
        if not self.tty and task_id is not None:  # after dispatch: the total is known
            self.maybe_log()

    def on_wait(self) -> None:
        now = self.clock()
        if now - self.polled_at >= POLL_SECONDS:
            self.polled_at = now
            self.running = self._count_started()
        if self.tty and (not self.shown or now - self.drawn_at >= DRAW_SECONDS):
            self.draw()  # back after a result cleared it, else at most 5 times a second

    def draw(self) -> None:
        super().draw()
        self.draw_due = False

    def counts(self) -> str:
        queued = max(self.total - self.finished - self.running, 0)
        label = f"{self.phase}: " if self.phase else ""
        return f"{label}{super().counts()}, {self.running} running, {queued} queued"

    def _count_started(self) -> int:
        """Forecasts not back yet in messages the result backend shows as STARTED."""
        if self.app is None or not self.unfinished:
            return 0
        backend = self.app.backend
        ids = list(self.unfinished)
        try:
            values = backend.mget([backend.get_key_for_task(t) for t in ids])
            return sum(self.unfinished[t] for t, v in zip(ids, values, strict=True)
                       if v and result_meta(self.app, v)["status"] == "STARTED")
        except Exception:  # the bar is best effort; the run itself reports broker trouble
            return self.running
