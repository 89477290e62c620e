"""Runs submitted now and read later: the non-blocking side of dispatch.

:class:`RunQueue` publishes a run's forecasts exactly as the manager does (same
tasks, same queues, :func:`~crypto_ml.dispatch.planning.plan_messages` batching) and
returns at once with a run id (publishing and freeing results as the
:mod:`~crypto_ml.dispatch.engine` does). The caller then either waits a bounded time for
it (:meth:`RunQueue.wait`, served by one
:class:`~crypto_ml.dispatch.waiting.ResultWatcher` thread that reads every pending
result of the process in one ``MGET`` per tick), or saves it
(:meth:`RunQueue.save`) and reads its state later, from any process that shares
the result backend (:meth:`RunQueue.state`), which is how several API replicas
answer for each other's runs.

With a :class:`~crypto_ml.dispatch.coalesce.Coalescer` (the API's), a run's cheap
forecasts are one *part* of a message that concurrent runs share: the part has its
own result id, a task id of the run like any other, and ``Run.carriers`` names the
message that carries it, whose failure as a whole ends the part.

Redis layout (the result backend): ``crypto_ml:run:<id>`` holds a saved run as
JSON, ``{"tasks": {task_id: [[coin, model], ...]}, "carriers": {part id: message id},
"deadline": unix time}`` while
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
from crypto_ml.dispatch.coalesce import Coalescer
from crypto_ml.dispatch.engine import forget, forget_keys, publish
from crypto_ml.dispatch.planning import plan_messages
from crypto_ml.dispatch.report import RunReport, add_meta
from crypto_ml.dispatch.waiting import ResultWatcher
from crypto_ml.models import HEAVY
from crypto_ml.worker.requests import PARTS_TASK_NAME, ForecastRequest

log = logging.getLogger(__name__)

RUN_PREFIX = "crypto_ml:run:"
Items = list[tuple[str, str]]


@dataclass
class Run:
    """A submitted run: its id and, per task message, the (coin, model) forecasts it carries."""

    id: str
    tasks: dict[str, Items]
    deadline: float  # unix time after which unfinished forecasts count as lost
    carriers: dict[str, str] = field(default_factory=dict)  # part id: id of its shared message


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


def final_state(run_id: str, report: RunReport) -> RunState:
    status = "failed" if report.failed and not report.results else "done"
    return RunState(run_id, status, report.results, report.failed)


class RunQueue:
    """Submit runs to ``app``'s workers; wait for them, or save them and read their state later.

    ``expires``: seconds a queued task stays valid (a dead submitter's work is then
    discarded by the workers); ``record_ttl``: seconds a saved run is kept; ``coalesce``:
    messages of shared parts in flight before parts wait to share one (0: a run's cheap
    forecasts go in messages of their own, as the manager sends them).
    """

    def __init__(self, app: Celery, batch_size: int = 64, expires: float = 3600.0,
                 record_ttl: int = 86400, coalesce: int = 0) -> None:
        self.app = app
        self.batch_size = batch_size
        self.expires = expires
        self.record_ttl = record_ttl
        self._watcher: ResultWatcher | None = None
        self._watcher_lock = threading.Lock()
        self.coalescer = Coalescer(self._publish_parts, self.watcher().watch, self._forget_one,
                                   window=coalesce, max_items=batch_size) if coalesce else None

    @property
    def client(self) -> Any:
        return self.app.backend.client

    def _send(self, task: str, kwargs: dict[str, Any], task_id: str) -> None:
        publish(self.app, task, kwargs, task_id, self.expires)

    def _publish_parts(self, message_id: str, kwargs: dict[str, Any]) -> None:
        self._send(PARTS_TASK_NAME, kwargs, message_id)

    def submit(self, requests: Sequence[ForecastRequest]) -> Run:
        """Publish every forecast of ``requests``; all of them or none (BrokerUnavailable)."""
        shared = [r for r in requests if r.model not in HEAVY] if self.coalescer else []
        if len(shared) > self.batch_size:  # a large run fills messages of its own
            shared = []
        own = [r for r in requests if r.model in HEAVY] if shared else list(requests)
        # one message for a small run: an API request's forecasts cost one round trip; many
        # concurrent requests, not one request's parts, keep the workers busy
        messages = plan_messages(own, self.batch_size, min_messages=1)
        run = Run(uuid.uuid4().hex, {}, time.time() + self.expires)
        try:
            for message in messages:
                task_id = str(uuid.uuid4())
                self._send(message.task, message.kwargs, task_id)
                run.tasks[task_id] = message.items
            if shared and self.coalescer is not None:
                part_id = str(uuid.uuid4())
                run.carriers[part_id] = self.coalescer.submit(part_id, [r.as_kwargs() for r in shared])
                run.tasks[part_id] = [(r.coin, r.model) for r in shared]
        except Exception as exc:  # kombu and redis raise many connection errors
            self.discard(run)
            if isinstance(exc, BrokerUnavailable):
                raise
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

    def _forget_one(self, task_id: str) -> None:
        self._forget([task_id])

    def _forget(self, task_ids: list[str]) -> None:
        forget(self.app, task_ids)

    def watcher(self) -> ResultWatcher:
        with self._watcher_lock:
            if self._watcher is None:
                self._watcher = ResultWatcher(self.app)
            return self._watcher

    def wait(self, run: Run, timeout: float) -> RunState | None:
        """The run's final state if it finishes within ``timeout`` s (kept under the run's id;
        its task results are then deleted from the backend), else None."""
        metas = self.watcher().wait(list(run.tasks), timeout, run.carriers) if timeout > 0 else {}
        if len(metas) < len(run.tasks):
            return None
        report = RunReport()
        for task_id, items in run.tasks.items():
            add_meta(report, items, metas[task_id])
        state = final_state(run.id, report)
        self._finish(state, list(run.tasks))
        return state

    def save(self, run: Run) -> None:
        """Keep the run in the backend so that :meth:`state` can answer for it from anywhere."""
        record = {"tasks": {t: [list(i) for i in items] for t, items in run.tasks.items()},
                  "carriers": run.carriers, "deadline": run.deadline}
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
        carriers: dict[str, str] = record.get("carriers", {})
        backend = self.app.backend
        ids = list(tasks)
        watched = ids + sorted(set(carriers.values()))
        raws = self.client.mget([backend.get_key_for_task(t) for t in watched])
        metas = {t: backend.decode_result(r) for t, r in zip(watched, raws, strict=True) if r}
        ready = {t: m for t, m in metas.items() if m["status"] in states.READY_STATES}
        for part, carrier in carriers.items():  # a message that failed as a whole ends its parts
            if part not in ready and ready.get(carrier, {}).get("status", states.SUCCESS) \
                    != states.SUCCESS:
                ready[part] = ready[carrier]
        ready = {t: m for t, m in ready.items() if t in tasks}
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
        self._finish(state, ids)
        return state

    def _finish(self, state: RunState, task_ids: list[str]) -> None:
        """Keep a finished run's answer (its id can be read until it expires, however it was
        answered) and delete the task results it was built from, in one round trip."""
        final = {"status": state.status, "results": state.results, "failed": state.failed}
        pipe = self.client.pipeline(transaction=False)
        pipe.set(RUN_PREFIX + state.id, json.dumps({"final": final}), ex=self.record_ttl)
        pipe.delete(*forget_keys(self.app, task_ids))
        pipe.execute()

    def close(self) -> None:
        if self.coalescer is not None:
            self.coalescer.close()
        if self._watcher is not None:
            self._watcher.close()
