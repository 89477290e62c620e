"""Progress of a run while results arrive: a bar on a terminal, a few plain lines elsewhere.

:class:`Progress` is a :class:`~crypto_ml.manager.RunObserver`. ``done`` and ``failed``
count finished forecasts; ``running`` counts the forecasts of messages whose result
backend state is STARTED (the app tracks started tasks; a batch message carries
several), read at most twice a second; ``queued`` is the rest. The ETA is the
remaining count at the average rate so far. On a terminal the bar redraws in place
on its stream (stderr); anywhere else it logs one line per tenth of the forecasts
through ``crypto_ml.progress``.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from typing import Any, TextIO

from celery import Celery

from crypto_ml.manager import RunObserver

log = logging.getLogger("crypto_ml.progress")
POLL_SECONDS = 0.5
DRAW_SECONDS = 0.2


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "ETA --"
    seconds = round(seconds)
    return f"ETA {seconds // 60}:{seconds % 60:02d}"


class Progress(RunObserver):
    """Counts a run's tasks and shows them on ``stream`` (a bar if ``tty``, else log lines)."""

    def __init__(self, stream: TextIO, tty: bool | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.clock = clock
        self.started_at = clock()
        self.total = self.done = self.failed = self.running = 0
        self.app: Celery | None = None
        self.unfinished: dict[str, int] = {}  # message id: forecasts not back yet
        self.polled_at = self.drawn_at = float("-inf")
        self.shown = False
        self.next_line = 1  # the tenth at which the next plain line is due

    # RunObserver hooks
    def on_sent(self, app: Celery, task_id: str, coin: str, model: str) -> None:
        if self.app is None:  # the ETA counts from the first dispatch, not cluster start-up
            self.started_at = self.clock()
        self.app = app
        self.total += 1
        self.unfinished[task_id] = self.unfinished.get(task_id, 0) + 1
        if self.tty and self.clock() - self.drawn_at >= DRAW_SECONDS:
            self.draw()  # shown from the first dispatch, even if every result is back at once

    def on_done(self, task_id: str | None, coin: str, model: str,
                result: dict[str, Any] | None, reason: str | None) -> None:
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
            self._maybe_log()

    def on_wait(self) -> None:
        now = self.clock()
        if now - self.polled_at >= POLL_SECONDS:
            self.polled_at = now
            self.running = self._count_started()
        if self.tty and now - self.drawn_at >= DRAW_SECONDS:
            self.draw()

    # state
    @property
    def finished(self) -> int:
        return self.done + self.failed

    def eta(self) -> float | None:
        if not self.finished:
            return None
        rate = self.finished / max(self.clock() - self.started_at, 1e-9)
        return (self.total - self.finished) / rate

    def status(self) -> str:
        queued = max(self.total - self.finished - self.running, 0)
        return (f"{self.finished}/{self.total} finished: {self.done} done, {self.failed} failed, "
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

    # output
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

    def _maybe_log(self) -> None:
        if not self.total:
            return
        tenth = self.finished * 10 // self.total
        if tenth >= self.next_line or self.finished == self.total:
            self.next_line = tenth + 1
            log.info("progress: %s", self.status(),
                     extra={"fields": {"finished": self.finished, "total": self.total,
                                       "done": self.done, "failed": self.failed}})

    def close(self) -> None:
        """Remove the bar before the summary is printed."""
        self.clear()
