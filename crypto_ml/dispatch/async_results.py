"""Task results awaited by an asyncio process (the HTTP API): one pub/sub connection.

The result backend publishes every state it stores on the result key's channel.
:class:`ResultHub` subscribes to the keys of the awaited task ids, before their messages are
sent, on one :mod:`redis.asyncio` pub/sub connection read by one task; each waiter is woken
by the message of its own result. The subscriptions asked for in one turn of the event loop
go as one ``SUBSCRIBE`` (and the ones no longer wanted as one ``UNSUBSCRIBE``): a burst of
requests costs two commands, not two each. (One ``PSUBSCRIBE`` of a per-process prefix
would cost none, but Redis's ACLs match a pattern subscription literally, so the API's user,
allowed ``&celery-task-meta-*``, could only subscribe to every result of the cluster.)
Nothing polls: a sweep (one ``MGET`` of the awaited keys every few seconds while anything is
awaited, and at once after a reconnect) finds a result whose message a lost connection took,
as the command line's engine does (:mod:`crypto_ml.dispatch.engine`).

A *part* of a shared message (:mod:`crypto_ml.dispatch.coalesce`) ends with its own
result, or with its carrier's when the carrier failed as a whole. Parts need no subscription
at all: the message names this hub's *home* channel (:attr:`ResultHub.reply_to`, itself a
result channel, which keeps the connection subscribed), and the worker publishes each part's
result there, so a burst of requests costs no ``SUBSCRIBE`` or ``UNSUBSCRIBE`` of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Collection, Coroutine, Iterable, Mapping, Sequence
from typing import Any, Protocol

import redis.asyncio as aioredis
from celery import states
from redis.exceptions import RedisError

from crypto_ml.dispatch.background import spawn
from crypto_ml.worker.requests import REPLY_PREFIX

log = logging.getLogger(__name__)

SWEEP_SECONDS = 2.0
RECONNECT_PAUSE = 1.0
#: Seconds the reader waits on its pub/sub connection before it waits again.
READ_WAIT = 1.0
CHUNK = 1000  # channels per SUBSCRIBE, keys per MGET
Meta = dict[str, Any]
#: What a lost or refused connection raises (redis-py wraps most; the rest are the OS's).
LOST = (RedisError, OSError)


class ResultHub:
    """Awaits task results for every coroutine of this process's event loop.

    ``client``: the result backend; ``key_for(task_id)``: a result's key (its channel);
    ``decode``: a stored result's bytes to its meta (Celery's backend does both).
    """

    def __init__(self, client: aioredis.Redis, key_for: Callable[[str], str | bytes],
                 decode: Callable[[bytes], Meta], sweep_seconds: float = SWEEP_SECONDS) -> None:
        self.client, self.decode, self.sweep_seconds = client, decode, sweep_seconds
        self._key_for = key_for
        self._listeners: dict[bytes, list[_Listener]] = {}
        self._ids: dict[bytes, str] = {}
        self._channels: set[bytes] = set()  # the awaited keys subscribed to (not the home's)
        self._pubsub: Any = None
        self._away = False  # the connection is lost and not back yet
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()  # referenced until done
        # keeps the connection subscribed: a result channel no task has (the API's Redis user
        # may subscribe to result channels only), where workers publish the parts' results
        self.reply_to = f"{REPLY_PREFIX}{uuid.uuid4().hex}"
        self._home = self.key(self.reply_to)
        self._to_subscribe: list[bytes] = []
        self._subscribed: asyncio.Future[None] | None = None  # this turn's SUBSCRIBE sent
        self._to_unsubscribe: list[bytes] = []

    def key(self, task_id: str) -> bytes:
        key = self._key_for(task_id)
        return key if isinstance(key, bytes) else key.encode()

    async def expect(self, task_ids: Sequence[str], home: Collection[str] = ()) -> Waiter:
        """Listen for the results of ``task_ids`` from now on (before their messages are
        sent, so none can be missed); :meth:`collect` them later. Those also in ``home`` are
        published on the home channel (:attr:`reply_to`): no subscription of their own."""
        waiter = Waiter(task_ids)
        await self._add(waiter, waiter.watched, home)
        return waiter

    async def carry(self, waiter: Waiter, carriers: Mapping[str, str]) -> None:
        """``carriers``: a part's id to its shared message's, whose failure ends the part."""
        await self._add(waiter, waiter.carried_by(carriers))

    async def collect(self, waiter: Waiter, timeout: float) -> dict[str, Meta]:
        """Metas of the waiter's tasks that finished within ``timeout`` seconds; it then stops
        listening."""
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter.done.wait(), timeout)
        finally:
            await self.forget(waiter)
        return dict(waiter.metas)

    async def forget(self, waiter: Waiter) -> None:
        """Stop listening for what ``waiter`` awaits (a run answered later, from its record)."""
        self._discard(waiter)

    async def watch(self, task_ids: Sequence[str], callback: Callable[[], None], timeout: float,
                    ends: Sequence[str] = (), home: Collection[str] = ()) -> None:
        """``callback()`` once, when every one of ``task_ids`` has finished, or any one of
        ``ends`` has, or ``timeout`` seconds have passed, whichever comes first (``home``: as
        for :meth:`expect`)."""
        watch = _Watch(task_ids, ends, lambda: self._discard(watch), callback)
        try:
            await self._add(watch, watch.watched, home)
        except BaseException:  # cancelled (the coalescer closing): no listener left behind
            self._discard(watch)
            raise
        watch.timer = asyncio.get_running_loop().call_later(timeout, watch.end)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, *LOST):
                await task
        self._tasks = []
        await self._drop()

    # -- listeners -----------------------------------------------------------------------

    async def _add(self, listener: _Listener, task_ids: Iterable[str],
                   home: Collection[str] = ()) -> None:
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._read(), name="crypto-ml-results"),
                           asyncio.create_task(self._sweeps(), name="crypto-ml-sweeps")]
        new = []
        for task_id in task_ids:
            key = self.key(task_id)
            self._ids[key] = task_id
            self._listeners.setdefault(key, []).append(listener)
            if task_id not in home and key not in self._channels:
                self._channels.add(key)
                new.append(key)
        if new:
            await self._subscribe(new)

    async def _subscribe(self, keys: list[bytes]) -> None:
        """Subscribe to ``keys`` with this turn's others; returns once the command is sent."""
        self._to_subscribe += keys
        if self._subscribed is None:
            self._subscribed = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_soon(self._spawn, self._send_subscribe())
        await asyncio.shield(self._subscribed)

    async def _send_subscribe(self) -> None:
        keys, self._to_subscribe = self._to_subscribe, []
        sent, self._subscribed = self._subscribed, None
        keys = [key for key in keys if key in self._channels]  # not answered meanwhile
        try:
            if keys and self._pubsub is not None:
                await self._pubsub.subscribe(*keys)
        except LOST as exc:  # the reader reconnects, subscribes again and sweeps
            log.debug("could not subscribe (%s); the next sweep reads them", exc)
        finally:
            if sent is not None and not sent.done():
                sent.set_result(None)

    def _discard(self, listener: _Listener) -> None:
        """Stop delivering to ``listener``; unsubscribe from the keys nobody else awaits."""
        gone = []
        for task_id in listener.watched:
            key = self.key(task_id)
            waiting = self._listeners.get(key, [])
            if listener in waiting:
                waiting.remove(listener)
            if not waiting and self._listeners.pop(key, None) is not None:
                self._ids.pop(key, None)
                gone.append(key)
        self._unsubscribe(gone)

    def _unsubscribe(self, keys: list[bytes]) -> None:
        """Unsubscribe from ``keys`` with this turn's others (nobody waits for them; those
        never subscribed to are passed over)."""
        keys = [key for key in keys if key in self._channels]
        self._channels.difference_update(keys)
        if not keys:
            return
        if not self._to_unsubscribe:
            asyncio.get_running_loop().call_soon(self._spawn, self._send_unsubscribe())
        self._to_unsubscribe += keys

    async def _send_unsubscribe(self) -> None:
        keys, self._to_unsubscribe = self._to_unsubscribe, []
        keys = [key for key in keys if key not in self._channels]  # wanted again meanwhile
        if keys and self._pubsub is not None:
            with contextlib.suppress(*LOST):
                await self._pubsub.unsubscribe(*keys)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        spawn(work, self._background)

    def _arrived(self, key: bytes, raw: bytes) -> None:
        if key != self._home and key not in self._listeners:
            return  # nobody waits for it: not worth decoding
        try:
            meta = self.decode(raw)
            if key == self._home:  # a part's result: its key from the task id inside
                key = self.key(str(meta["task_id"]))
        except Exception as exc:  # not a result (anything may publish on a channel)
            log.warning("ignored a message on %r that is not a task result (%s)", key, exc)
            return
        if key not in self._listeners or meta.get("status") not in states.READY_STATES:
            return  # STARTED and the like
        listeners = self._listeners.pop(key)
        task_id = self._ids.pop(key)
        self._unsubscribe([key])
        for listener in listeners:
            listener.deliver(task_id, meta)

    # -- the connection ------------------------------------------------------------------

    async def _read(self) -> None:
        while True:
            try:
                if self._pubsub is None:
                    await self._connect()
                # a wait of its own: silence is None, where the client's socket timeout
                # (a command to a Redis that stopped answering fails) would raise
                message = await self._pubsub.get_message(ignore_subscribe_messages=True,
                                                          timeout=READ_WAIT)
            except LOST as exc:  # said once per outage, then retried every RECONNECT_PAUSE
                (log.debug if self._away else log.warning)(
                    "result backend lost (%s); subscribing again", type(exc).__name__)
                self._away = True
                await self._drop()
                await asyncio.sleep(RECONNECT_PAUSE)
                continue
            self._away = False
            if message and message.get("type") == "message":
                channel = message["channel"]
                self._arrived(channel if isinstance(channel, bytes) else channel.encode(),
                              message["data"])

    async def _connect(self) -> None:
        pubsub = self.client.pubsub()
        await pubsub.subscribe(self._home)
        self._pubsub = pubsub
        keys = list(self._channels)
        for i in range(0, len(keys), CHUNK):
            await pubsub.subscribe(*keys[i : i + CHUNK])
        if self._listeners:  # what was stored while the connection was away
            self._spawn(self._sweep())

    async def _drop(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(*LOST):
                await pubsub.aclose()

    async def _sweeps(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_seconds)
            await self._sweep()

    async def _sweep(self) -> None:
        keys = list(self._listeners)
        for i in range(0, len(keys), CHUNK):
            chunk = keys[i : i + CHUNK]
            try:
                values = await self.client.mget(chunk)
            except LOST as exc:
                log.debug("sweep: cannot read results (%s)", exc)
                return
            for key, raw in zip(chunk, values, strict=True):
                if raw is not None:
                    self._arrived(key, raw)


class _Listener(Protocol):
    watched: set[str]

    def deliver(self, task_id: str, meta: Meta | None) -> None: ...


class _Watch:
    """Calls back once: when its ``task_ids`` have all finished or one of ``ends`` has, or at
    :meth:`end` (its timer); ``discard`` then stops its deliveries."""

    def __init__(self, task_ids: Iterable[str], ends: Iterable[str], discard: Callable[[], None],
                 callback: Callable[[], None]) -> None:
        self.missing, self.ends = set(task_ids), set(ends)
        self.watched = self.missing | self.ends
        self.discard, self.callback = discard, callback
        self.timer: asyncio.TimerHandle | None = None
        self.ended = False

    def deliver(self, task_id: str, meta: Meta | None) -> None:
        self.missing.discard(task_id)
        if task_id in self.ends or not self.missing:
            self.end()

    def end(self) -> None:
        if self.ended:
            return
        self.ended = True
        if self.timer is not None:
            self.timer.cancel()
        self.discard()
        self.callback()


class Waiter:
    """Results of ``task_ids``; a part also ends when its carrier message fails as a whole."""

    def __init__(self, task_ids: Iterable[str]) -> None:
        self.missing = set(task_ids)
        self.parts_of: dict[str, set[str]] = {}
        self.watched = set(self.missing)
        self.metas: dict[str, Meta] = {}
        self.done = asyncio.Event()
        if not self.missing:
            self.done.set()

    def carried_by(self, carriers: Mapping[str, str]) -> set[str]:
        """Watch the carriers of the parts of ``carriers`` too; returns the new ids."""
        new = set()
        for part, carrier in carriers.items():
            if part in self.missing:
                self.parts_of.setdefault(carrier, set()).add(part)
                new.add(carrier)
        new -= self.watched
        self.watched |= new
        return new

    def deliver(self, task_id: str, meta: Meta | None) -> None:
        if meta is None:
            return
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
