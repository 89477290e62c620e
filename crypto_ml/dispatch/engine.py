"""The dispatch engine: publish task messages, track them, collect each outcome once.

:class:`Dispatcher` is what the command line's runs (:class:`~crypto_ml.dispatch.manager.
CryptoManager`) and the table runs (:mod:`~crypto_ml.dispatch.table_run`) send through:

* **publish** each :class:`~crypto_ml.dispatch.planning.Message` under an id of its own,
  subscribed to its result channel first (no result can slip past), riding out a
  broker that is briefly away (restart, failover);
* **backpressure**: with ``max_in_flight`` set, at most that many messages are
  queued or running at once; the next is published when an outcome comes back, so
  Redis holds a bounded amount whatever the number of series;
* **wait** on Redis pub/sub (the result backend publishes every stored state), with a
  slow ``MGET`` sweep for anything a reconnect lost: waiting costs no core;
* **resend** messages the broker lost (:mod:`~crypto_ml.dispatch.lost`);
* **free** the results' keys: with backpressure each one as soon as it is read (a table
  run's results are megabytes), otherwise all at the end of the run, so that a worker that
  is handed a finished task again (its first worker died before the ack) finds the result
  and skips it; either way a last sweep at the end deletes what such a duplicate stored
  meanwhile. What is still pending when the run stops early is revoked, and the values
  stored beside its messages deleted;
* **close**: each message names its run (:data:`~crypto_ml.worker.deliveries.RUN_HEADER`),
  and the run's end is marked in Redis for as long as a message can still be handed out
  again (:func:`redelivery_bound`), so a worker skips a redelivery that comes after the
  run has ended instead of computing a result that nobody will read.

A run gives up when no outcome arrives for ``timeout`` seconds: every message still
pending comes back as an :class:`Outcome` with ``meta`` None.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import redis
from celery import Celery, states

from crypto_ml.core.results import result_meta
from crypto_ml.core.settings import Settings, check_timeout
from crypto_ml.dispatch.broker_errors import PUBLISH_ERRORS, Away, refused, transient
from crypto_ml.dispatch.capacity import UNSERVED_SECONDS, Unserved
from crypto_ml.dispatch.lost import LostMessages
from crypto_ml.dispatch.payloads import store_payload
from crypto_ml.dispatch.planning import Message
from crypto_ml.dispatch.report import failure_reason
from crypto_ml.ops.flower import send_options
from crypto_ml.worker.app import CPU_QUEUE, GPU_QUEUE, restore_sweep_seconds
from crypto_ml.worker.chunks import VALUES_GONE, payload_key
from crypto_ml.worker.deliveries import RUN_HEADER, closed_key, delivery_key

log = logging.getLogger(__name__)

PUBLISH_RETRY = {"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 2}
RECONNECT_PAUSE = 1.0
SWEEP_SECONDS = 2.0
WAKE_SECONDS = 0.1  # the run's hooks (progress, stop, lost messages) run at least this often
CHUNK = 1000  # keys per MGET


@dataclass(frozen=True)
class Outcome:
    """What came back for one message: its result meta, or None when the run timed out."""

    message: Message
    task_id: str
    meta: dict[str, Any] | None


#: How the reason of a message that timed out begins (:func:`no_result`).
NO_RESULT = "no result within"
#: A run's limit on messages pending: fixed, or asked again as it goes (dispatch/capacity.py)
InFlightLimit = int | Callable[[], int]


def no_result(timeout: float | None) -> str:
    """The reason a message that timed out (:class:`Outcome` with ``meta`` None) gives."""
    return f"{NO_RESULT} {timeout:g} s (--timeout)"


def publish(app: Celery, task: str, kwargs: dict[str, Any], task_id: str,
            expires: float | None, serializer: str | None = None,
            run_id: str | None = None) -> None:
    """Send one task message under ``task_id`` (kombu retries a few times; what Flower and
    the logs show of it is :func:`~crypto_ml.ops.flower.send_options`)."""
    options: dict[str, Any] = {"serializer": serializer} if serializer else {}
    if run_id:
        options["headers"] = {RUN_HEADER: run_id}
    app.send_task(task, kwargs=kwargs, task_id=task_id, retry=True, retry_policy=PUBLISH_RETRY,
                  expires=expires, **options, **send_options(kwargs))


def payload_seconds(app: Celery, expires: float | None) -> int:
    """How long a message's bulk is kept: its own expiry (``expires`` seconds after it is
    sent; none: as long as a result is kept), then a run and a redelivery."""
    kept = app.conf.result_expires or Settings.result_expires  # seconds, or Celery's own timedelta
    queued = expires if expires is not None else getattr(kept, "total_seconds", lambda: kept)()
    return math.ceil(float(queued)) + int(app.conf.task_time_limit or 0) + redelivery_bound(app)


def revoke_now(app: Celery, task_ids: list[str]) -> None:
    """Revoke ``task_ids`` if the broker answers now; kombu's error otherwise, at once (a
    revoke alone would retry its connection until the broker came back)."""
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1)
        app.control.revoke(task_ids, connection=conn)


def forget_keys(app: Celery, task_ids: list[str]) -> list[Any]:
    """The result keys of ``task_ids`` and their delivery counters."""
    backend = app.backend
    return [*(backend.get_key_for_task(t) for t in task_ids), *map(delivery_key, task_ids)]


def forget(app: Celery, task_ids: list[str], payloads: bool = False) -> None:
    """Delete the results of ``task_ids`` and their delivery counters: read, so not needed;
    with ``payloads``, the bulk stored beside their messages too (its own command: the
    manager's ACL grants it on its own keys)."""
    app.backend.client.delete(*forget_keys(app, task_ids))
    if payloads:
        app.backend.client.delete(*map(payload_key, task_ids))


def stable_task_id(run_id: str, key: int) -> str:
    """The task id of message ``key`` of run ``run_id``: the same in each run resuming it."""
    return str(uuid.uuid5(uuid.NAMESPACE_OID, f"crypto-ml/{run_id}/{key}"))


def redelivery_bound(app: Celery) -> int:
    """Seconds within which the broker hands out again a message whose worker died: the
    visibility timeout, a restore sweep, and a minute of margin."""
    visibility = int((app.conf.broker_transport_options or {}).get("visibility_timeout", 3600))
    return visibility + restore_sweep_seconds(visibility) + 60


class Dispatcher:
    """Sends messages over ``app`` and yields their outcomes (see the module doc).

    ``say`` gets the notices a user should see (a lost broker, a resent message, a queue no
    live worker takes: :class:`~crypto_ml.dispatch.capacity.Unserved`);
    ``on_wait`` runs between outcomes (progress bars, stop requests: it may raise).
    """

    def __init__(self, app: Celery, say: Callable[[str], None] = log.warning,
                 on_wait: Callable[[], None] = lambda: None,
                 check_lost_every: float | None = None,
                 unserved_after: float = UNSERVED_SECONDS) -> None:
        self.app, self.say, self.on_wait = app, say, on_wait
        # seconds between looks for lost messages, and of quiet before one for live workers
        self.check_lost_every, self.unserved_after = check_lost_every, unserved_after
        self._away_broker = Away(say, "the broker", "a message is sent once it is back")
        self._away_backend = Away(say, "the result backend", "the run gives up at --timeout")
        self.pending: dict[str, Message] = {}
        self._keys: dict[bytes, str] = {}
        self._pubsub: Any = None
        self._expires: float | None = None
        self._next_sweep = 0.0
        self._collected: list[str] = []  # task ids whose outcome was read
        #: What freeing results and marking the run's end may meet: best effort, both (the
        #: backend away, or a full Redis refusing the write); results expire anyway.
        self._bookkeeping_errors = (*app.backend.connection_errors, redis.RedisError)
        self._free_as_read = False
        self._payloads = False  # some message stored its bulk beside it
        self._restored: dict[str, bytes] = {}  # task id: the failure that had it resent
        self._stable_ids = False
        self.run_id = ""

    def run(self, messages: Iterable[Message], timeout: float | None = None,
            max_in_flight: InFlightLimit | None = None,
            on_sent: Callable[[str, Message], None] = lambda task_id, message: None,
            run_id: str | None = None) -> Generator[Outcome, None, None]:
        """Publish ``messages`` (at most ``max_in_flight`` pending: a number, or a callable
        asked again as results arrive, :mod:`crypto_ml.dispatch.capacity`) and yield each
        outcome.

        ``run_id`` names a run that may have been started before (a resumed table run): each
        message with a ``key`` then gets the id it had then, so a result its workers stored
        for the interrupted run is taken, and its messages still queued count as this run's.
        """
        self._expires = check_timeout(timeout)  # an expiry past Python's dates broke publish
        self._free_as_read = max_in_flight is not None
        self._stable_ids = run_id is not None
        self.run_id = run_id or uuid.uuid4().hex
        source = iter(messages)
        exhausted = False
        lost = LostMessages(self.app, self.pending, self._resend, (CPU_QUEUE, GPU_QUEUE),
                            self.check_lost_every)
        unserved = Unserved(self.app, self.say, self.unserved_after)
        last_progress = time.monotonic()
        try:
            while True:
                limit = max_in_flight() if callable(max_in_flight) else max_in_flight
                while not exhausted and (limit is None or len(self.pending) < limit):
                    message = next(source, None)
                    if message is None:
                        exhausted = True
                    else:
                        on_sent(self._publish(message), message)
                if not self.pending:
                    return
                for outcome in self._arrived():
                    last_progress = time.monotonic()
                    yield outcome
                if timeout is not None and time.monotonic() - last_progress > timeout:
                    yield from self._give_up()
                    return
                self.on_wait()
                lost.check()
                unserved.check(self.pending.values(), time.monotonic() - last_progress)
        finally:
            self._close()

    # -- publishing ------------------------------------------------------------------------

    def _task_id(self, message: Message) -> str:
        if self._stable_ids and message.key is not None:
            return stable_task_id(self.run_id, message.key)
        return str(uuid.uuid4())

    def _publish(self, message: Message, task_id: str | None = None) -> str:
        task_id = task_id or self._task_id(message)
        key = self.app.backend.get_key_for_task(task_id)
        key = key if isinstance(key, bytes) else key.encode()
        self._keys[key] = task_id
        self.pending[task_id] = message
        self._subscribe(key)
        while True:
            try:
                if message.payload is not None:
                    self._payloads = True
                    store_payload(self.app, task_id, message.payload,
                                  payload_seconds(self.app, self._expires))
                publish(self.app, message.task, message.kwargs, task_id, self._expires,
                        message.serializer, self.run_id)
                self._away_broker.back()
                return task_id
            except PUBLISH_ERRORS as exc:
                if not transient(exc):  # Redis answered no: waiting will not help
                    self.pending.pop(task_id, None)
                    raise refused(exc) from None
                self._broker_away(exc)

    def _resend(self, task_id: str) -> None:
        """Send a lost message again under its own id (:mod:`crypto_ml.dispatch.lost`)."""
        self._publish(self.pending[task_id], task_id)
        self.say(f"resent task {task_id}: the broker lost its message")

    def _broker_away(self, exc: BaseException) -> None:
        self._away_broker.lost(exc)
        time.sleep(RECONNECT_PAUSE)
        self.on_wait()

    # -- waiting -----------------------------------------------------------------------------

    def _subscribe(self, key: bytes) -> None:
        try:
            if self._pubsub is None:
                self._pubsub = self.app.backend.client.pubsub(ignore_subscribe_messages=True)
            self._pubsub.subscribe(key)
        except self.app.backend.connection_errors:
            self._pubsub = None  # subscribed again, with a sweep, once the backend is back

    def _arrived(self) -> Iterator[Outcome]:
        """The outcomes that arrive within about WAKE_SECONDS."""
        try:
            if self._pubsub is None:  # new, or lost with the backend: subscribe and sweep
                self._pubsub = self.app.backend.client.pubsub(ignore_subscribe_messages=True)
                keys = list(self._keys)
                for i in range(0, len(keys), CHUNK):
                    self._pubsub.subscribe(*keys[i : i + CHUNK])
                self._next_sweep = 0.0
            ready = self._listen()
            if time.monotonic() >= self._next_sweep:
                ready += self._sweep()
                self._next_sweep = time.monotonic() + SWEEP_SECONDS
        except self.app.backend.connection_errors as exc:
            self._pubsub = None
            self._away_backend.lost(exc)
            time.sleep(RECONNECT_PAUSE)
            return
        self._away_backend.back()
        yield from self._collect(ready)

    def _listen(self) -> list[tuple[bytes, bytes]]:
        ready = []
        message = self._pubsub.get_message(timeout=WAKE_SECONDS)
        while message is not None:
            if message.get("type") == "message":
                channel = message["channel"]
                ready.append((channel if isinstance(channel, bytes) else channel.encode(),
                              message["data"]))
            message = self._pubsub.get_message(timeout=0.0)
        return ready

    def _sweep(self) -> list[tuple[bytes, bytes]]:
        keys = list(self._keys)
        found = []
        for i in range(0, len(keys), CHUNK):
            chunk = keys[i : i + CHUNK]
            found += [(k, v) for k, v in zip(chunk, self.app.backend.client.mget(chunk),
                                             strict=True) if v is not None]
        return found

    def _collect(self, ready: list[tuple[bytes, bytes]]) -> Iterator[Outcome]:
        done = []
        for key, payload in ready:
            task_id = self._keys.get(key)
            if task_id is None or self._restored.get(task_id) == payload:
                continue  # not ours, or a copy of a failure already acted on
            meta = result_meta(self.app, payload)
            if meta.get("status") not in states.READY_STATES:
                continue  # STARTED and the like
            if self._values_gone(task_id, meta):
                self._restore(task_id, payload)
                continue
            del self._keys[key]
            done.append((key, task_id, self.pending.pop(task_id), meta))
        if not done:
            return
        self._forget([key for key, *_ in done], [task_id for _, task_id, *_ in done])
        for _, task_id, message, meta in done:
            yield Outcome(message, task_id, meta)

    def _values_gone(self, task_id: str, meta: dict[str, Any]) -> bool:
        """Whether the worker found the message's stored bulk gone (a Redis that restarted
        without its data): the first time, the run stores it again and resends the message."""
        return (self.pending[task_id].payload is not None and task_id not in self._restored
                and meta.get("status") == states.FAILURE and VALUES_GONE in failure_reason(meta))

    def _restore(self, task_id: str, failure: bytes) -> None:
        self._restored[task_id] = failure
        forget(self.app, [task_id])  # its failure (else the sweep reads it again) and count
        self._publish(self.pending[task_id], task_id)
        self.say(f"stored the values of task {task_id} again and resent it: its worker found "
                 "them gone from Redis")

    def _forget(self, keys: list[bytes], task_ids: list[str]) -> None:
        """Stop listening for the results read; free them now when the run frees as it reads."""
        self._collected += task_ids
        try:
            if self._pubsub is not None:
                self._pubsub.unsubscribe(*keys)
            if self._free_as_read:
                forget(self.app, task_ids, self._payloads)
        except self._bookkeeping_errors as exc:
            log.debug("could not free %d result(s) now (%s); freed at the end", len(keys), exc)

    def _forget_collected(self) -> None:
        """Free every result read in this run (and what a duplicate stored since)."""
        self._forget_ids(self._collected)
        self._collected = []

    def forget_earlier(self, keys: Iterable[int]) -> None:
        """Free what late duplicates stored for the messages ``keys`` of this run id that
        earlier runs read (a resumed table run's chunks done before it started)."""
        if self._stable_ids:
            self._forget_ids([stable_task_id(self.run_id, key) for key in keys], payloads=True)

    def _forget_ids(self, task_ids: list[str], payloads: bool = False) -> None:
        try:
            for i in range(0, len(task_ids), CHUNK):
                forget(self.app, task_ids[i : i + CHUNK], payloads or self._payloads)
        except self._bookkeeping_errors as exc:
            log.debug("could not free the run's results (%s); they expire", exc)

    def _mark_closed(self) -> None:
        """Tell the workers that this run reads nothing more (see the module doc)."""
        try:
            self.app.backend.client.set(closed_key(self.run_id), 1,
                                        ex=redelivery_bound(self.app))
        except self._bookkeeping_errors as exc:
            log.debug("could not mark run %s closed (%s)", self.run_id, exc)

    def _give_up(self) -> Iterator[Outcome]:
        """Every pending message as timed out; they stay pending, to be revoked on close."""
        self._keys.clear()
        for task_id, message in list(self.pending.items()):
            yield Outcome(message, task_id, None)

    def _close(self) -> None:
        self._mark_closed()
        self._forget_collected()
        if self.pending:  # timed out or interrupted: leave no work queued for nobody
            try:
                revoke_now(self.app, list(self.pending))
                log.warning("revoked %d queued task(s)", len(self.pending))
            except Exception as exc:  # the broker is gone too: the tasks expire
                log.error("could not revoke %d queued task(s) (%s); if the broker comes back "
                          "with them, workers run them for nobody", len(self.pending), exc)
            self._forget_ids(list(self.pending))  # their results, counts and values
        if self._pubsub is not None:
            try:
                self._pubsub.close()
            except Exception as exc:  # closing a broken connection
                log.debug("pubsub close: %s", exc)
            self._pubsub = None
