"""Runs submitted now and read later: the non-blocking side of dispatch.

:class:`RunQueue` publishes a run's forecasts exactly as the manager does (same
tasks, same queues, :func:`~crypto_ml.manager.plan_messages` batching) and
returns at once with a run id. The caller then either waits a bounded time for
it (:meth:`RunQueue.wait`, served by one :class:`ResultWatcher` thread that reads
every pending result of the process in one ``MGET`` per tick), or saves it
(:meth:`RunQueue.save`) and reads its state later, from any process that shares
the result backend (:meth:`RunQueue.state`), which is how several API replicas
answer for each other's runs.

Redis layout (the result backend): ``crypto_ml:run:<id>`` holds a saved run as
JSON, ``{"tasks": {task_id: [[coin, model], ...]}, "deadline": unix time}`` while
it is pending and ``{"final": {"status", "results", "failed"}}`` once every
forecast has finished; then the task results it was built from are deleted.
Both expire with the results (``CRYPTO_ML_RESULT_EXPIRES``).

Nothing is half-queued: if publishing any message of a run fails, the messages
already sent are revoked and their results deleted, and :class:`BrokerUnavailable`
is raised; the caller reports the run as never accepted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from celery import Celery, states

from crypto_ml.core.errors import BrokerUnavailable
from crypto_ml.dispatch.manager import PUBLISH_RETRY
from crypto_ml.dispatch.planning import plan_messages
from crypto_ml.dispatch.report import RunReport
from crypto_ml.ops.flower import send_options
from crypto_ml.worker.deliveries import delivery_key
from crypto_ml.worker.requests import ForecastRequest

log = logging.getLogger(__name__)

RUN_PREFIX = "crypto_ml:run:"
WATCH_INTERVAL = 0.002  # a ready result is seen within ~2 ms
ERROR_PAUSE = 0.1
Items = list[tuple[str, str]]


@dataclass
class Run:
    """A submitted run: its id and, per task message, the (coin, model) forecasts it carries."""

    id: str
    tasks: dict[str, Items]
    deadline: float  # unix time after which unfinished forecasts count as lost


@dataclass
class RunState:
    """Where a run stands: ``queued``, ``running``, ``done`` (every forecast finished, some may
    be in ``failed``) or ``failed`` (every forecast failed)."""

    id: str
    status: str
    results: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    failed: dict[str, dict[str, str]] = field(default_factory=dict)
    fresh: bool = False  # this call saw the run finish (count it once)

    @property
    def finished(self) -> bool:
        return self.status in ("done", "failed")

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "status": self.status, "results": self.results,
                "failed": self.failed}


def failure_reason(meta: dict[str, Any]) -> str:
    """The reason a non-successful task result gives, as the manager prints it."""
    exc = meta.get("result")
    reason = f"{type(exc).__name__}: {exc}" if isinstance(exc, BaseException) else str(exc)
    return reason if meta["status"] == states.FAILURE else f"{meta['status']}: {reason}"


def add_meta(report: RunReport, items: Items, meta: dict[str, Any]) -> None:
    """Record one finished task message (a single forecast or a batch) in ``report``."""
    if meta["status"] != states.SUCCESS:
        for coin, model in items:
            report.add_failure(coin, model, failure_reason(meta))
        return
    results = meta["result"]
    for result in results if isinstance(results, list) else [results]:
        if "error" in result:
            report.add_failure(result["coin"], result["model"], result["error"])
        else:
            report.add_result(result)


def final_state(run_id: str, report: RunReport) -> RunState:
    status = "failed" if report.failed and not report.results else "done"
    return RunState(run_id, status, report.results, report.failed)


class ResultWatcher:
    """One thread that reads every awaited task result of this process, one MGET per tick."""

    def __init__(self, app: Celery, interval: float = WATCH_INTERVAL) -> None:
        self.backend = app.backend
        self.interval = interval
        self._lock = threading.Lock()
        self._waiters: dict[str, list[_Waiter]] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="crypto-ml-results", daemon=True)
        self._thread.start()

    def wait(self, task_ids: Sequence[str], timeout: float) -> dict[str, dict[str, Any]]:
        """Metas of the tasks of ``task_ids`` that finished within ``timeout`` seconds."""
        waiter = _Waiter(set(task_ids))
        with self._lock:
            for task_id in task_ids:
                self._waiters.setdefault(task_id, []).append(waiter)
        self._wake.set()
        try:
            waiter.done.wait(timeout)
        finally:
            with self._lock:
                for task_id in task_ids:
                    waiting = self._waiters.get(task_id, [])
                    if waiter in waiting:
                        waiting.remove(waiter)
                    if not waiting:
                        self._waiters.pop(task_id, None)
        with waiter.lock:
            return dict(waiter.metas)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                ids = list(self._waiters)
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
                        waiters = self._waiters.pop(task_id, [])
                    for waiter in waiters:
                        waiter.deliver(task_id, meta)
            time.sleep(self.interval)


class _Waiter:
    def __init__(self, task_ids: set[str]) -> None:
        self.missing = task_ids
        self.metas: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.done = threading.Event()

    def deliver(self, task_id: str, meta: dict[str, Any]) -> None:
        with self.lock:
            self.metas[task_id] = meta
            self.missing.discard(task_id)
            if not self.missing:
                self.done.set()


class RunQueue:
    """Submit runs to ``app``'s workers; wait for them, or save them and read their state later.

    ``expires``: seconds a queued task stays valid (a dead submitter's work is then
    discarded by the workers); ``record_ttl``: seconds a saved run is kept.
    """

    def __init__(self, app: Celery, batch_size: int = 64, expires: float = 3600.0,
                 record_ttl: int = 86400) -> None:
        self.app = app
        self.batch_size = batch_size
        self.expires = expires
        self.record_ttl = record_ttl
        self._watcher: ResultWatcher | None = None
        self._watcher_lock = threading.Lock()

    @property
    def client(self) -> Any:
        return self.app.backend.client

    def submit(self, requests: Sequence[ForecastRequest]) -> Run:
        """Publish every forecast of ``requests``; all of them or none (BrokerUnavailable)."""
        # one message for a small run: an API request's forecasts cost one round trip; many
        # concurrent requests, not one request's parts, keep the workers busy
        messages = plan_messages(list(requests), self.batch_size, min_messages=1)
        run = Run(uuid.uuid4().hex, {}, time.time() + self.expires)
        try:
            for message in messages:
                task_id = str(uuid.uuid4())
                self.app.send_task(message.task, kwargs=message.kwargs, task_id=task_id,
                                   retry=True, retry_policy=PUBLISH_RETRY, expires=self.expires,
                                   **send_options(message.kwargs))
                run.tasks[task_id] = message.items
        except Exception as exc:  # kombu and redis raise many connection errors
            self.discard(run)
            raise BrokerUnavailable(f"could not queue the forecasts ({type(exc).__name__}: "
                                    f"{exc}); nothing of this request was queued") from None
        return run

    def discard(self, run: Run) -> None:
        """Revoke a run's tasks and delete their results (best effort: the broker may be down)."""
        if not run.tasks:
            return
        with contextlib.suppress(Exception):
            self.app.control.revoke(list(run.tasks))
        with contextlib.suppress(Exception):
            self._forget(list(run.tasks))

    def _forget(self, task_ids: list[str]) -> None:
        backend = self.app.backend
        self.client.delete(*(backend.get_key_for_task(t) for t in task_ids),
                           *(delivery_key(t) for t in task_ids))

    def watcher(self) -> ResultWatcher:
        with self._watcher_lock:
            if self._watcher is None:
                self._watcher = ResultWatcher(self.app)
            return self._watcher

    def wait(self, run: Run, timeout: float) -> RunState | None:
        """The run's final state if it finishes within ``timeout`` s (its results are then
        deleted from the backend), else None."""
        metas = self.watcher().wait(list(run.tasks), timeout) if timeout > 0 else {}
        if len(metas) < len(run.tasks):
            return None
        report = RunReport()
        for task_id, items in run.tasks.items():
            add_meta(report, items, metas[task_id])
        self._forget(list(run.tasks))
        return final_state(run.id, report)

    def save(self, run: Run) -> None:
        """Keep the run in the backend so that :meth:`state` can answer for it from anywhere."""
        record = {"tasks": {t: [list(i) for i in items] for t, items in run.tasks.items()},
                  "deadline": run.deadline}
        self.client.set(RUN_PREFIX + run.id, json.dumps(record), ex=self.record_ttl)

    def state(self, run_id: str) -> RunState | None:
        """A saved run's state now, or None for an unknown (or expired) id."""
        raw = self.client.get(RUN_PREFIX + run_id)
        if raw is None:
            return None
        record = json.loads(raw)
        if "final" in record:
            return RunState(run_id, **record["final"])
        tasks = {t: [(c, m) for c, m in items] for t, items in record["tasks"].items()}
        backend = self.app.backend
        ids = list(tasks)
        raws = self.client.mget([backend.get_key_for_task(t) for t in ids])
        metas = {t: backend.decode_result(r) for t, r in zip(ids, raws, strict=True) if r}
        ready = {t: m for t, m in metas.items() if m["status"] in states.READY_STATES}
        lost = time.time() > record["deadline"]
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
        final = {"status": state.status, "results": state.results, "failed": state.failed}
        self.client.set(RUN_PREFIX + run_id, json.dumps({"final": final}), ex=self.record_ttl)
        self._forget(ids)
        return state

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.close()
