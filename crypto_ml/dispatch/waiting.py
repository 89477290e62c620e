"""Waiting for results without spending the workers' cores: Redis pub/sub, not polling.

A Redis result backend stores each task state with ``SET`` and ``PUBLISH`` on the
result key's channel (Celery's own ``ResultConsumer`` relies on it). The waiter
subscribes to the pending tasks' channels and blocks on the socket, so a result is
read the moment it is stored and waiting costs nothing; a few times a second it
wakes to run ``on_interval`` (progress bar, stop request). One ``MGET`` sweep right
after subscribing (results stored before the subscription) and a slow sweep every
``SWEEP_SECONDS`` (anything a reconnect lost) make it as sure as polling was.

The earlier loop read every pending key up to a hundred times a second, on the
cores the workers train on (issue 13).

:class:`ResultWatcher` serves the other shape of waiting, many threads of one
process at once (an API server's requests, the coalescer's messages): one thread
reads every awaited key of the process in one ``MGET`` per 2 ms tick while
anything is awaited, and sleeps otherwise.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from celery import Celery, states

log = logging.getLogger(__name__)

SWEEP_SECONDS = 2.0
WAKE_SECONDS = 0.1  # on_interval runs at least this often while nothing arrives
CHUNK = 1000  # keys per SUBSCRIBE / MGET command

# One subscriber connection per result backend, kept between waits: a new one per wait
# costs a connect and an AUTH (about half of a one-coin round trip when it was done so).
_SUBSCRIBERS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def _subscriber(backend: Any) -> Any:
    pubsub = _SUBSCRIBERS.get(backend)
    if pubsub is None:
        pubsub = _SUBSCRIBERS[backend] = backend.client.pubsub(ignore_subscribe_messages=True)
    return pubsub


def _chunks(items: list[bytes], size: int = CHUNK) -> Iterator[list[bytes]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class ResultWaiter:
    """Yields ``(task_id, meta)`` of each finished task of ``task_ids`` as it is stored."""

    def __init__(self, app: Celery, task_ids: Iterable[str]) -> None:
        self.backend = app.backend
        self.keys: dict[bytes, str] = {}
        for task_id in task_ids:
            key = self.backend.get_key_for_task(task_id)
            self.keys[key if isinstance(key, bytes) else key.encode()] = task_id

    def _decode(self, key: bytes, payload: bytes | None) -> tuple[str, dict[str, Any]] | None:
        if payload is None or key not in self.keys:
            return None
        meta = self.backend.decode_result(payload)
        if meta.get("status") not in states.READY_STATES:
            return None  # STARTED and the like: keep waiting
        return self.keys.pop(key), meta

    def _sweep(self) -> Iterator[tuple[str, dict[str, Any]]]:
        client = self.backend.client
        for chunk in _chunks(list(self.keys)):
            for key, payload in zip(chunk, client.mget(chunk), strict=True):
                done = self._decode(key, payload)
                if done is not None:
                    yield done

    def wait(self, timeout: float | None = None,
             on_interval: Callable[[], None] | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every pending task's result; TimeoutError when ``timeout`` s pass first.
        Redis connection errors propagate (the caller waits for the backend and calls again)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pubsub = _subscriber(self.backend)
        subscribed = list(self.keys)
        clean = False
        try:
            for chunk in _chunks(subscribed):
                pubsub.subscribe(*chunk)
            yield from self._sweep()
            next_sweep = time.monotonic() + SWEEP_SECONDS
            while self.keys:
                now = time.monotonic()
                if deadline is not None and now > deadline:
                    raise TimeoutError(f"{len(self.keys)} result(s) did not arrive in time")
                wake = WAKE_SECONDS if deadline is None else min(WAKE_SECONDS, deadline - now)
                message = pubsub.get_message(timeout=max(wake, 0.0))
                while message is not None:
                    if message.get("type") == "message":
                        channel = message["channel"]
                        done = self._decode(channel if isinstance(channel, bytes)
                                            else channel.encode(), message["data"])
                        if done is not None:
                            yield done
                    message = pubsub.get_message(timeout=0.0) if self.keys else None
                if time.monotonic() >= next_sweep:
                    yield from self._sweep()
                    next_sweep = time.monotonic() + SWEEP_SECONDS
                if on_interval is not None:
                    on_interval()
            clean = True
        finally:
            if clean:  # leave the connection subscribed to nothing, for the next wait
                for chunk in _chunks(subscribed):
                    pubsub.unsubscribe(*chunk)
            else:  # an error or an interrupted wait: start afresh next time
                _SUBSCRIBERS.pop(self.backend, None)
                pubsub.close()


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
