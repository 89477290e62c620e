"""Many threads of one process waiting for results at once (an API server's requests,
the coalescer's messages): :class:`ResultWatcher`, one thread that reads every awaited
key of the process in one ``MGET`` per 2 ms tick while anything is awaited, and sleeps
otherwise. A run of the command line or a table run waits on pub/sub instead
(:mod:`crypto_ml.dispatch.engine`)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from celery import Celery, states

log = logging.getLogger(__name__)

WATCH_INTERVAL = 0.002  # a ready result is seen within ~2 ms
ERROR_PAUSE = 0.1
Callback = Callable[[str, "dict[str, Any] | None"], None]


class ResultWatcher:
    """One thread that reads every awaited task result of this process, one MGET per tick.

    Many threads wait at once (an API process's requests); each gets its results the tick
    after they are stored. :meth:`wait` blocks for a set of results; :meth:`watch` calls
    back instead (the coalescer's messages).
    """

    def __init__(self, app: Celery, interval: float = WATCH_INTERVAL) -> None:
        self.backend = app.backend
        self.interval = interval
        self._lock = threading.Lock()
        self._listeners: dict[str, list[_Listener]] = {}
        self._watches: set[_Watch] = set()  # the callbacks, each with a deadline
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="crypto-ml-results", daemon=True)
        self._thread.start()

    def wait(self, task_ids: Sequence[str], timeout: float,
             carriers: Mapping[str, str] | None = None) -> dict[str, dict[str, Any]]:
        """Metas of the tasks of ``task_ids`` that finished within ``timeout`` seconds.

        ``carriers`` maps a part's id to the message that carries it
        (:mod:`crypto_ml.dispatch.coalesce`): a message that failed as a whole ends its
        parts with its own meta."""
        waiter = _Waiter(task_ids, carriers or {})
        self._add(waiter)
        try:
            waiter.done.wait(timeout)
        finally:
            self._remove(waiter)
        with waiter.lock:
            return dict(waiter.metas)

    def watch(self, task_id: str, callback: Callback, timeout: float) -> None:
        """``callback(task_id, meta)`` once the task finishes; ``meta`` None after ``timeout`` s."""
        watch = _Watch(task_id, callback, time.monotonic() + timeout)
        with self._lock:
            self._watches.add(watch)
        self._add(watch)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(5)

    def _add(self, listener: _Listener) -> None:
        with self._lock:
            for task_id in listener.watched:
                self._listeners.setdefault(task_id, []).append(listener)
        self._wake.set()

    def _remove(self, listener: _Listener) -> None:
        with self._lock:
            for task_id in listener.watched:
                waiting = self._listeners.get(task_id, [])
                if listener in waiting:
                    waiting.remove(listener)
                if not waiting:
                    self._listeners.pop(task_id, None)

    def _expire(self) -> None:
        """Call back, with None, each watch whose deadline has passed (a few at most: the
        coalescer's messages in flight; waiters end by their own timeout)."""
        now = time.monotonic()
        with self._lock:
            expired = [w for w in self._watches if w.deadline < now]
            self._watches.difference_update(expired)
        for watch in expired:
            self._remove(watch)
            watch.callback(watch.task_id, None)

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                ids = list(self._listeners)
            if not ids:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            try:
                values = self.backend.client.mget([self.backend.get_key_for_task(t) for t in ids])
            except Exception as exc:  # the backend's errors vary; waiters time out
                log.warning("result watcher: cannot read results (%s); retrying", exc)
                time.sleep(ERROR_PAUSE)
                continue
            for task_id, raw in zip(ids, values, strict=True):
                if raw is None:
                    continue
                meta = self.backend.decode_result(raw)
                if meta["status"] in states.READY_STATES:
                    with self._lock:
                        listeners = self._listeners.pop(task_id, [])
                        self._watches.difference_update(listeners)
                    for listener in listeners:
                        listener.deliver(task_id, meta)
            self._expire()
            time.sleep(self.interval)


class _Listener(Protocol):
    watched: set[str]

    def deliver(self, task_id: str, meta: dict[str, Any]) -> None: ...


class _Watch:
    def __init__(self, task_id: str, callback: Callback, deadline: float) -> None:
        self.task_id, self.callback, self.deadline = task_id, callback, deadline
        self.watched = {task_id}

    def deliver(self, task_id: str, meta: dict[str, Any]) -> None:
        self.callback(task_id, meta)


class _Waiter:
    """Results of ``task_ids``; a part also ends when its carrier message fails as a whole."""

    def __init__(self, task_ids: Iterable[str], carriers: Mapping[str, str]) -> None:
        self.missing = set(task_ids)
        self.parts_of: dict[str, set[str]] = {}
        for part, carrier in carriers.items():
            if part in self.missing:
                self.parts_of.setdefault(carrier, set()).add(part)
        self.watched = self.missing | set(self.parts_of)
        self.metas: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.done = threading.Event()
        if not self.missing:
            self.done.set()

    def deliver(self, task_id: str, meta: dict[str, Any]) -> None:
        with self.lock:
            if task_id in self.parts_of:  # a carrier: its parts' own results tell, unless
                parts = self.parts_of.pop(task_id)  # it failed before storing them
                ended = set() if meta["status"] == states.SUCCESS else parts & self.missing
            else:
                ended = {task_id} & self.missing
            for part in ended:
                self.metas[part] = meta
            self.missing -= ended
            if not self.missing:
                self.done.set()
