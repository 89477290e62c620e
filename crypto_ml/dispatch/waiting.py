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
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from celery import Celery, states

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
