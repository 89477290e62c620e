"""Progress of a run while results arrive: :class:`Progress`, the run's observer on the one bar.

:class:`Progress` implements the :class:`~crypto_ml.dispatch.report.RunObserver` hooks (a
protocol, so this module need not import the dispatcher) on
:class:`~crypto_ml.core.progress.ProgressBar`. ``done`` and ``failed`` count finished
forecasts; ``running`` counts the forecasts of messages whose result backend state is
STARTED (deep tasks are stored so when they start; a cheap batch, milliseconds long, is
not), read at most twice a second; ``queued`` is the rest. Every count is in forecasts,
whatever the stream, and the ETA is the forecasts left at the rate forecasts have finished
so far. On a terminal the bar redraws in place on its stream (stderr): once the messages are
sent (or, while sending takes long, after a whole message's forecasts are counted; never a
batch's first forecast as if it were the whole run), at most 5 times a second; anywhere
else, a dumb terminal included, it logs one line per quarter of the forecasts.

A run of several dispatches on one observer (``--model best``: a backtest, then the
forecasts) counts each as a phase of its own: :meth:`Progress.new_phase` starts the
counts (and the ETA) afresh under a label shown before them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TextIO

from celery import Celery

from crypto_ml.core.progress import ProgressBar, format_eta

POLL_SECONDS = 0.5
DRAW_SECONDS = 0.2


class Progress(ProgressBar):
    """Counts a run's tasks and shows them on ``stream`` (a bar if ``tty``, else log lines)."""

    def __init__(self, stream: TextIO, tty: bool | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(stream, tty, clock)
        self.running = 0
        self.app: Celery | None = None
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
    def on_sent(self, app: Celery, task_id: str, coin: str, model: str) -> None:
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

    def status(self) -> str:
        queued = max(self.total - self.finished - self.running, 0)
        label = f"{self.phase}: " if self.phase else ""
        return (f"{label}{self.finished}/{self.total} finished: {self.done} done, {self.failed} failed, "
                f"{self.running} running, {queued} queued, {format_eta(self.eta())}")

    def _count_started(self) -> int:
        """Forecasts not back yet in messages the result backend shows as STARTED."""
        if self.app is None or not self.unfinished:
            return 0
        backend = self.app.backend
        ids = list(self.unfinished)
        try:
            values = backend.mget([backend.get_key_for_task(t) for t in ids])
            return sum(self.unfinished[t] for t, v in zip(ids, values, strict=True)
                       if v and backend.decode_result(v)["status"] == "STARTED")
        except Exception:  # the bar is best effort; the run itself reports broker trouble
            return self.running
