"""Runs submitted now and read later: the non-blocking side of dispatch, on asyncio.

:class:`RunQueue` publishes a run's forecasts as the manager does (same tasks, same
queues, :func:`~crypto_ml.dispatch.planning.plan_messages` batching, messages the workers
cannot tell apart: :mod:`~crypto_ml.dispatch.envelope`) and returns at once with a run id.
Everything it does is a coroutine of the caller's event loop (the HTTP API's) on
:mod:`redis.asyncio`: one ``LPUSH`` per message, results awaited on pub/sub
(:class:`~crypto_ml.dispatch.async_results.ResultHub`, subscribed before the messages are
sent), no thread per request. The caller then either waits a bounded time for the run
(:meth:`RunQueue.wait`), or saves it (:meth:`RunQueue.save`) and reads its state later,
from any process that shares the result backend (:meth:`RunQueue.state`), which is how
several API replicas answer for each other's runs.

With a :class:`~crypto_ml.dispatch.coalesce.Coalescer` (the API's), a run's cheap
forecasts are one *part* of a message that concurrent runs share: the part has its
own result id, a task id of the run like any other, and ``Run.carriers`` names the
message that carries it, whose failure as a whole ends the part.

Redis layout (the result backend): ``crypto_ml:run:<id>`` holds a saved run as
JSON, ``{"tasks": {task_id: [[coin, model], ...]}, "carriers": {part id: message id},
"deadline": unix time}`` while
it is pending and ``{"final": {"status", "results", "failed"}}`` once every
forecast has finished (whether it was answered at once or later: every id the API gives
can be read until it expires); then the task results it was built from are deleted.
Both expire with the results (``CRYPTO_ML_RESULT_EXPIRES``).

Nothing is half-queued: if publishing any message of a run fails, the messages
already sent are revoked and their results deleted, and :class:`BrokerUnavailable`
is raised; the caller reports the run as never accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from celery import Celery, states
from redis.exceptions import RedisError

from crypto_ml.core import keys
from crypto_ml.core.errors import BrokerUnavailable
from crypto_ml.core.results import result_meta
from crypto_ml.core.sentinel import async_redis_client, client_timeouts
from crypto_ml.core.settings import Settings
from crypto_ml.dispatch.async_lost import LostWatch
from crypto_ml.dispatch.async_results import ResultHub, Waiter
from crypto_ml.dispatch.background import spawn
from crypto_ml.dispatch.capacity import Sizing, slots_in
from crypto_ml.dispatch.coalesce import Coalescer
from crypto_ml.dispatch.engine import forget_keys, revoke_now
from crypto_ml.dispatch.envelope import task_envelope
from crypto_ml.dispatch.pipelined import Pipelined
from crypto_ml.dispatch.planning import plan_messages
from crypto_ml.dispatch.report import RunReport, add_meta
from crypto_ml.models import HEAVY
from crypto_ml.worker.app import CPU_QUEUE, GPU_QUEUE
from crypto_ml.worker.requests import PARTS_TASK_NAME, ForecastRequest

log = logging.getLogger(__name__)

#: Shared messages in flight when neither the caller nor the settings fix it, until the workers'
#: slots are read (then one per task slot of the live workers: :mod:`~.capacity`)
COALESCE = 4
#: Seconds a withdrawn run waits for the broker's PING before it revokes its tasks.
PING_WAIT = 1.0
Items = list[tuple[str, str]]


@dataclass
class Run:
    """A submitted run: its id and, per task message, the (coin, model) forecasts it carries."""

    id: str
    tasks: dict[str, Items]
    deadline: float  # unix time after which unfinished forecasts count as lost
    carriers: dict[str, str] = field(default_factory=dict)  # part id: id of its shared message
    waiter: Waiter | None = None  # listening for its results (submitted to be waited for)


@dataclass
class RunState:
    """Where a run stands: ``queued``, ``running``, ``done`` (every forecast finished, some may
    be in ``failed``) or ``failed`` (every forecast failed)."""

    id: str
    status: str
    results: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    failed: dict[str, dict[str, str]] = field(default_factory=dict)
    fresh: bool = False  # this call saw the run finish (count it once)
    _encoded: bytes | None = field(default=None, repr=False, compare=False)

    @property
    def finished(self) -> bool:
        return self.status in ("done", "failed")

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "status": self.status, "results": self.results,
                "failed": self.failed}

    def encoded(self) -> bytes:
        """:meth:`to_json` as compact JSON (strict: no NaN), made once: the API answers it and
        keeps it under the run's id."""
        if self._encoded is None:
            self._encoded = json.dumps(self.to_json(), ensure_ascii=False, allow_nan=False,
                                       separators=(",", ":")).encode()
        return self._encoded


def renamed(answer: bytes, old_id: str, new_id: str) -> bytes:
    """A run's answer (:meth:`RunState.encoded`, whose first field is the id) under another id."""
    return _id_field(new_id) + answer[len(_id_field(old_id)):]


def _id_field(run_id: str) -> bytes:
    return b'{"id":' + json.dumps(run_id, ensure_ascii=False).encode()


def final_state(run_id: str, report: RunReport) -> RunState:
    status = "failed" if report.failed and not report.results else "done"
    return RunState(run_id, status, report.results, report.failed)


class RunQueue:
    """Submit runs to ``app``'s workers; wait for them, or save them and read their state later.

    ``settings`` name the broker and result backend (Sentinel URLs too) and hold the batch
    size, how long a saved run is kept (``result_expires``) and the coalescing window
    (``coalesce``, else ``api_coalesce``; 0: a run's cheap forecasts go in messages of their
    own, as the manager sends them; neither: one message per task slot of the live workers,
    read again every few seconds, so workers added by ``kubectl scale`` or KEDA share the
    load); ``expires``: seconds a queued task stays valid (a dead submitter's work is then
    discarded by the workers).

    Its connections belong to the event loop that first uses them (one per process in a
    server; a test client may bring another, which then gets its own).
    """

    at_once = False  # a run is answered by workers, later: wait=0 gets a 202

    def __init__(self, app: Celery, settings: Settings, expires: float = 3600.0,
                 coalesce: int | None = None) -> None:
        self.app, self.settings, self.expires = app, settings, expires
        self.batch_size = settings.batch_size
        self.record_ttl = settings.result_expires
        self.coalesce = coalesce if coalesce is not None else settings.api_coalesce
        self._on: _OnLoop | None = None

    def _loop(self) -> _OnLoop:
        loop = asyncio.get_running_loop()
        if self._on is None or self._on.loop is not loop:
            self._on = _OnLoop(loop, self.app, self.settings, self._publish, self.coalesce,
                               self.batch_size)
        return self._on

    def backend(self) -> aioredis.Redis:
        """The result backend's client on the running event loop."""
        return self._loop().backend

    @property
    def coalescer(self) -> Coalescer | None:
        return self._on.coalescer if self._on is not None else None

    def coalesced(self) -> tuple[int, int]:
        """Shared messages sent so far, and the parts they carried (for /metrics)."""
        coalescer = self.coalescer
        return (coalescer.messages, coalescer.parts) if coalescer is not None else (0, 0)

    async def _publish(self, task: str, kwargs: dict[str, Any], task_id: str,
                       run_id: str | None = None) -> None:
        """Push one message; watched until consumed (:mod:`~crypto_ml.dispatch.async_lost`)."""
        queue, envelope = task_envelope(self.app, task, kwargs, task_id, self.expires)
        on = self._loop()
        await on.broker.lpush(queue, envelope)  # type: ignore[misc]
        on.lost.record(task_id, task, kwargs, time.time() + self.expires,
                       keys.RUN + run_id if run_id else None)

    async def submit(self, requests: Sequence[ForecastRequest], listen: bool = True) -> Run:
        """Publish every forecast of ``requests``; all of them or none (BrokerUnavailable).
        ``listen``: listen for the results from before they can arrive (to :meth:`wait`)."""
        on = self._loop()
        shared = [r for r in requests if r.model not in HEAVY] if on.coalescer else []
        if len(shared) > self.batch_size:  # a large run fills messages of its own
            shared = []
        own = [r for r in requests if r.model in HEAVY] if shared else list(requests)
        # one message for a small run: an API request's forecasts cost one round trip; many
        # concurrent requests, not one request's parts, keep the workers busy
        messages = [(str(uuid.uuid4()), m) for m in plan_messages(own, self.batch_size,
                                                                  min_messages=1)]
        part_id = str(uuid.uuid4()) if shared else None
        run = Run(uuid.uuid4().hex, {t: m.items for t, m in messages}, time.time() + self.expires)
        if part_id:
            run.tasks[part_id] = [(r.coin, r.model) for r in shared]
        if listen:  # a part's result comes on the hub's home channel
            run.waiter = await on.hub.expect(list(run.tasks), home=[part_id] if part_id else ())
        try:
            for task_id, message in messages:
                await self._publish(message.task, message.kwargs, task_id, run.id)
            if part_id and on.coalescer is not None:
                on.resize()
                carrier = await on.coalescer.submit(part_id, [r.as_kwargs() for r in shared])
                run.carriers[part_id] = carrier
                if run.waiter is not None:
                    await on.hub.carry(run.waiter, run.carriers)
        except Exception as exc:  # redis raises many connection errors
            await self.discard(run)
            if isinstance(exc, BrokerUnavailable):
                raise
            raise BrokerUnavailable(f"could not queue the forecasts ({type(exc).__name__}: "
                                    f"{exc}); nothing of this request was queued") from None
        return run

    async def discard(self, run: Run) -> None:
        """Revoke a run's tasks and delete their results (best effort: the broker may be down)."""
        if run.waiter is not None:
            await self._loop().hub.forget(run.waiter)
        self._loop().lost.forget(run.tasks)  # not its carriers: other runs' parts ride them
        if not run.tasks:
            return
        if await self._broker_answers():  # else no revoke can go out: the tasks expire
            with contextlib.suppress(Exception):  # a control broadcast: kombu's blocking I/O
                await asyncio.to_thread(revoke_now, self.app, list(run.tasks))
        # in the background: a Redis that stopped answering would hold the caller's 503 for
        # another socket timeout
        spawn(self._forget(list(run.tasks)), self._loop().cleanups)

    async def _forget(self, task_ids: list[str]) -> None:
        with contextlib.suppress(Exception):  # best effort: the results expire anyway
            await self._loop().backend.delete(*forget_keys(self.app, task_ids))

    async def _broker_answers(self) -> bool:
        """Whether the broker answers a PING within a second."""
        try:
            return bool(await asyncio.wait_for(self._loop().broker.ping(), PING_WAIT))
        except (TimeoutError, RedisError, OSError):
            return False

    async def wait(self, run: Run, timeout: float) -> RunState | None:
        """The run's final state if it finishes within ``timeout`` s (kept under the run's id;
        its task results are then deleted from the backend), else None."""
        if run.waiter is None:
            return None
        metas = await self._loop().hub.collect(run.waiter, timeout)
        run.waiter = None
        if len(metas) < len(run.tasks):
            return None
        report = RunReport()
        for task_id, items in run.tasks.items():
            add_meta(report, items, metas[task_id])
        state = final_state(run.id, report)
        await self._finish(state, list(run.tasks), run.carriers.values())
        return state

    async def save(self, run: Run) -> None:
        """Keep the run in the backend so that :meth:`state` can answer for it from anywhere."""
        record = {"tasks": {t: [list(i) for i in items] for t, items in run.tasks.items()},
                  "carriers": run.carriers, "deadline": run.deadline}
        await self._loop().backend.set(keys.RUN + run.id, json.dumps(record),
                                       ex=self.record_ttl)

    async def state(self, run_id: str) -> RunState | None:
        """A saved run's state now, or None for an unknown (or expired) id."""
        backend = self._loop().backend
        raw = await backend.get(keys.RUN + run_id)
        if raw is None:
            return None
        record = json.loads(raw)
        if "final" in record:
            final = record["final"]
            return RunState(run_id, final["status"], final["results"], final["failed"])
        tasks = {t: [(c, m) for c, m in items] for t, items in record["tasks"].items()}
        carriers: dict[str, str] = record.get("carriers", {})
        watched = list(tasks) + sorted(set(carriers.values()))
        raws = await backend.mget([self.app.backend.get_key_for_task(t) for t in watched])
        metas = {t: result_meta(self.app, r)
                 for t, r in zip(watched, raws, strict=True) if r}
        state = saved_state(run_id, tasks, carriers, metas, time.time() > record["deadline"])
        if state.finished:
            await self._finish(state, list(tasks), carriers.values())
        return state

    async def _finish(self, state: RunState, task_ids: list[str],
                      carriers: Iterable[str] = ()) -> None:
        """Keep a finished run's answer (its id can be read until it expires, however it was
        answered) and delete the task results it was built from, in one round trip."""
        self._loop().lost.forget([*task_ids, *carriers])  # consumed: never lost now
        await self._loop().writes.run(self._record(state.id, state.encoded()),
                                      ("delete", tuple(forget_keys(self.app, task_ids)), {}))

    async def keep(self, run_id: str, answer: bytes) -> None:
        """Keep a finished run's ``answer`` (:meth:`RunState.encoded`) under ``run_id``, one
        that no task ran for (an answer reused, :mod:`crypto_ml.api.answers`): :meth:`state`
        reads it until it expires."""
        await self._loop().writes.run(self._record(run_id, answer))

    def _record(self, run_id: str, answer: bytes) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
        return ("set", (keys.RUN + run_id, b'{"final":' + answer + b"}"), {"ex": self.record_ttl})

    async def aclose(self) -> None:
        """Stop this loop's coalescer and result listener; close its connections."""
        on, self._on = self._on, None
        if on is not None:
            await on.close()


def saved_state(run_id: str, tasks: dict[str, Items], carriers: dict[str, str],
                metas: dict[str, dict[str, Any]], lost: bool) -> RunState:
    """Where a saved run stands, from the metas of its tasks and carriers stored so far
    (``lost``: past its deadline, so what has not finished never will)."""
    ready = {t: m for t, m in metas.items() if m["status"] in states.READY_STATES}
    for part, carrier in carriers.items():  # a message that failed as a whole ends its parts
        if part not in ready and ready.get(carrier, {}).get("status", states.SUCCESS) \
                != states.SUCCESS:
            ready[part] = ready[carrier]
    ready = {t: m for t, m in ready.items() if t in tasks}
    report = RunReport()
    for task_id, items in tasks.items():
        if task_id in ready:
            add_meta(report, items, ready[task_id])
    if len(ready) < len(tasks) and not lost:  # partial results so far
        started = ready or any(m["status"] == states.STARTED for m in metas.values())
        return RunState(run_id, "running" if started else "queued", report.results,
                        report.failed)
    for task_id, items in tasks.items():
        if task_id not in ready:
            for coin, model in items:
                report.add_failure(coin, model, "no result before the task expired")
    state = final_state(run_id, report)
    state.fresh = True
    return state


class _OnLoop:
    """A RunQueue's connections, result listener and coalescer on one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, app: Celery, settings: Settings,
                 publish: Any, coalesce: int | None, batch_size: int) -> None:
        self.loop = loop
        master, password = settings.sentinel_master, settings.sentinel_password
        self.broker: aioredis.Redis = async_redis_client(settings.broker_url or "", master,
                                                         password, **client_timeouts())
        self.backend: aioredis.Redis = async_redis_client(
            settings.backend_url or "", master, password, **client_timeouts())
        self.writes = Pipelined(self.backend)
        self.cleanups: set[asyncio.Task[None]] = set()  # withdrawn runs' results deleted, slots
        self.reading = False  # the workers' slots
        self.lost = LostWatch(
            self.broker, self.backend, app.backend.get_key_for_task,
            functools.partial(task_envelope, app),
            (CPU_QUEUE, GPU_QUEUE), settings.lost_check_seconds)
        self.hub = ResultHub(self.backend, app.backend.get_key_for_task,
                             functools.partial(result_meta, app))
        hub = self.hub
        self.coalescer = Coalescer(  # workers publish the parts' results on the hub's home
            lambda message_id, kwargs: publish(PARTS_TASK_NAME,
                                               {**kwargs, "reply_to": hub.reply_to}, message_id),
            lambda parts, done, timeout, ends: hub.watch(parts, done, timeout, ends, home=parts),
            window=coalesce or COALESCE, max_items=batch_size) if coalesce != 0 else None
        self.sizing = Sizing(COALESCE, per_slot=1, least=1) if coalesce is None else None

    def resize(self) -> None:
        """The coalescing window: one message per task slot of the live workers (unless fixed),
        read at most every few seconds, in the background (a request never waits on it: a
        Redis that stopped answering held each request for another socket timeout); a failed
        read keeps the window."""
        if self.sizing is None or self.coalescer is None or self.reading \
                or not self.sizing.due():
            return
        self.reading = True
        spawn(self._read_slots(self.sizing, self.coalescer), self.cleanups)

    async def _read_slots(self, sizing: Sizing, coalescer: Coalescer) -> None:
        try:
            entries = await self.broker.hgetall(keys.SLOTS)  # type: ignore[misc]
        except (RedisError, OSError) as exc:
            log.debug("could not read the workers' slots (%s)", exc)
            return
        finally:
            self.reading = False
        coalescer.window = sizing.learn(slots_in(entries, CPU_QUEUE))

    async def close(self) -> None:
        for cleanup in list(self.cleanups):
            cleanup.cancel()
        if self.coalescer is not None:
            await self.coalescer.close()
        await self.lost.close()
        await self.hub.close()
        for client in (self.broker, self.backend):
            with contextlib.suppress(Exception):
                await client.aclose()
