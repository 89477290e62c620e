"""Celery tasks: thin wrappers that validate a request and run a model.

Time limits, acknowledgement and routing come from the app's config
(:mod:`crypto_ml.worker.app`); the delivery limit, validation caps, the
time-limit error and the per-task log line come from :class:`ForecastTask`.
The task body holds no policy of its own.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

from celery import Task, shared_task, states
from celery.exceptions import Ignore, SoftTimeLimitExceeded

from crypto_ml.core.errors import CryptoMLError, TaskTimedOut, TooManyDeliveries
from crypto_ml.core.results import result_meta
from crypto_ml.core.settings import Settings
from crypto_ml.models import HEAVY
from crypto_ml.worker.chunks import TABLE_TASK_NAME, fetch_payload, parse_chunk, run_chunk
from crypto_ml.worker.deliveries import RUN_HEADER, count_delivery, delivery_key
from crypto_ml.worker.model_store import ModelStore, open_store
from crypto_ml.worker.requests import (
    BATCH_TASK_NAME,
    PARTS_TASK_NAME,
    TASK_NAME,
    ForecastRequest,
    check_parts,
    check_reply,
    run_batch,
    run_forecast,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
#: Each worker process's model store by its spec, opened at the first task that needs it.
_STORES: dict[str | None, tuple[ModelStore | None]] = {}


class ForecastTask(Task):
    """Base class: delivery limit, validation caps, clear time-limit errors, one log line per task.

    Before each run :meth:`before_start` skips a duplicate delivery of a task
    that already succeeded and fails a task delivered more than
    ``crypto_ml_max_deliveries`` times (see :mod:`crypto_ml.worker.deliveries`); a deep
    task is then stored as STARTED with its pool process and worker (Celery's
    ``task_track_started`` is off: cheap tasks last milliseconds, and it cost them two
    Redis round trips each).
    """

    #: Failures with a clear message of their own: logged in one line, without a traceback.
    throws = (CryptoMLError,)

    def before_start(self, task_id: str, args: Any, kwargs: Any) -> None:
        self._count_delivery(task_id)
        if (kwargs or {}).get("model") in HEAVY:  # minutes of work: say it runs, and where
            self.backend.store_result(task_id, {"pid": os.getpid(),
                                                "hostname": self.request.hostname},
                                      states.STARTED, request=self.request)

    def _count_delivery(self, task_id: str) -> None:
        client = getattr(self.backend, "client", None)
        if client is None:  # not a Redis result backend: deliveries cannot be counted
            return
        conf = self.app.conf
        run_id = getattr(self.request, RUN_HEADER, None)
        deliveries, stored, closed = self._riding_out_restarts(lambda: count_delivery(
            client, task_id, int(conf.result_expires or Settings.result_expires),
            self.backend.get_key_for_task(task_id), run_id))
        if closed:  # its run has read all it will read (a redelivery after the run's end)
            log.info("task %s: its run %s has ended, skipped", task_id, run_id)
            self._riding_out_restarts(lambda: client.delete(delivery_key(task_id)))
            raise Ignore()
        if stored is not None and result_meta(self.app, stored)["status"] == states.SUCCESS:
            log.info("task %s: duplicate delivery of a finished task, skipped", task_id)
            raise Ignore()
        limit = int(conf.get("crypto_ml_max_deliveries", 3))
        if deliveries > limit:
            raise TooManyDeliveries.for_task(task_id, deliveries, limit)
        if deliveries > 1:
            log.warning("task %s: delivery %d of at most %d (an earlier run's worker died)",
                        task_id, deliveries, limit)

    def _riding_out_restarts(self, call: Callable[[], T]) -> T:
        """``call()``, retried while the backend is unreachable (a Redis restart or failover:
        seconds), for as long as a result store is retried (``result_backend_max_retries``)."""
        errors = tuple(getattr(self.backend, "connection_errors", ())) or (ConnectionError,)
        for attempt in range(int(self.app.conf.result_backend_max_retries or 20)):
            try:
                return call()
            except errors:
                time.sleep(min(0.2 * 2 ** attempt, 5.0))
        return call()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except SoftTimeLimitExceeded:
            limits = self.request.timelimit or (None, None)
            soft = limits[1] or self.soft_time_limit or self.app.conf.task_soft_time_limit
            raise TaskTimedOut.for_limit(float(soft or 0)) from None

    @property
    def model_store(self) -> ModelStore | None:
        """This process's model store (``crypto_ml_model_store_secret``; default: the result backend)."""
        conf = self.app.conf
        spec = conf.get("crypto_ml_model_store_secret")
        cached = _STORES.get(spec)
        if cached is None:
            store = open_store(spec, getattr(self.backend, "client", None),
                               int(conf.get("crypto_ml_model_store_ttl") or Settings.model_store_ttl),
                               conf.get("crypto_ml_sentinel_master") or Settings.sentinel_master,
                               conf.get("crypto_ml_sentinel_password"))
            cached = _STORES[spec] = (store,)
        return cached[0]

    def parse(self, **kwargs: Any) -> ForecastRequest:
        conf = self.app.conf
        return ForecastRequest.parse(
            **kwargs,
            max_horizon=conf.get("crypto_ml_max_horizon", Settings.max_horizon),
            max_series=conf.get("crypto_ml_max_series", Settings.max_series),
        )

    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        if isinstance(retval, dict) and "rows" in retval:  # a table chunk: one line
            log.info("task %s done: table chunk of %d series, %d failed, %.3f s", task_id,
                     retval["rows"], len(retval["errors"]), retval["fit_seconds"])
        elif not (isinstance(retval, dict) and "parts" in retval):  # parts log as they store
            self.log_results(task_id, retval if isinstance(retval, list) else [retval])

    def log_results(self, task_id: str, results: list[dict[str, Any]]) -> None:
        """One line per forecast of a task: done (info) or failed (warning)."""
        for r in results:
            fields = {"task_id": task_id, "coin": r["coin"], "model": r["model"],
                      "worker": self.request.hostname}
            if "error" in r:
                log.warning("task %s item failed: coin=%s model=%s: %s", task_id, r["coin"],
                            r["model"], r["error"],
                            extra={"fields": {**fields, "status": "failed", "reason": r["error"]}})
            else:
                log.info("task %s done: coin=%s model=%s worker=%s device=%s fit_seconds=%.3f",
                         task_id, r["coin"], r["model"], r["worker"], r["device"],
                         r["fit_seconds"], extra={"fields": {
                             **fields, "status": "ok", "worker": r["worker"],
                             "device": r["device"], "seconds": r["fit_seconds"]}})

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any,
                   einfo: Any) -> None:
        fields = {"task_id": task_id, "status": "failed", "coin": kwargs.get("coin"),
                  "model": kwargs.get("model"), "worker": self.request.hostname,
                  "reason": f"{type(exc).__name__}: {exc}"}
        log.warning("task %s failed: coin=%s model=%s: %s: %s", task_id, kwargs.get("coin"),
                    kwargs.get("model"), type(exc).__name__, exc, extra={"fields": fields})


@shared_task(bind=True, base=ForecastTask, name=TASK_NAME)
def forecast(self: ForecastTask, coin: str, model: str, prices: list[float], horizon: int,
             last_date: str | None = None, params: dict[str, Any] | None = None,
             levels: list[float] | None = None, retrain: bool = False,
             use_store: bool = True) -> dict[str, Any]:
    """Fit ``model`` on one coin's closes (oldest first) and forecast ``horizon`` days, with
    prediction intervals at ``levels`` (percent; default 80 and 95; ``[]`` for none); a deep
    model already fitted on these closes comes from the model store unless ``retrain``."""
    request = self.parse(coin=coin, model=model, prices=prices, horizon=horizon,
                         last_date=last_date, params=params, levels=levels, retrain=retrain,
                         use_store=use_store)
    return run_forecast(request, self.request.hostname or "unknown", self.model_store)


@shared_task(bind=True, base=ForecastTask, name=BATCH_TASK_NAME)
def forecast_batch(self: ForecastTask, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run many cheap forecasts (each as ``forecast`` takes them) in one message."""
    return run_batch(items, self.request.hostname or "unknown",
                     self.app.conf.get("crypto_ml_max_batch", 1000), self.parse, self.model_store)


@shared_task(bind=True, base=ForecastTask, name=PARTS_TASK_NAME, ignore_result=True,
             store_errors_even_if_ignored=True)
def forecast_parts(self: ForecastTask, parts: list[dict[str, Any]],
                   reply_to: str | None = None) -> dict[str, Any]:
    """Several callers' cheap batches in one message (the API coalesces concurrent requests):
    each part's results are stored under the part's own id, the result its caller waits on,
    so callers share a message, never a result, and published on the ``reply_to`` channel
    (the sender's, a result channel too). The message's own result (the count per part) is
    not stored, only its failure, which ends every part that has no result of its own; a
    message without ``reply_to`` (from an API of an earlier version, which waits for that
    result) gets it stored, and its parts' results published on their own channels."""
    checked = check_parts(parts, self.app.conf.get("crypto_ml_max_batch", 1000))
    channel = None if reply_to is None else self.backend.get_key_for_task(check_reply(reply_to))
    worker = self.request.hostname or "unknown"
    done: dict[str, Any] = {}
    for part_id, items in checked:
        done[part_id] = run_batch(items, worker, len(items), self.parse, self.model_store)
        self.log_results(self.request.id, done[part_id])
    counts = {"parts": {part_id: len(items) for part_id, items in checked}}
    if reply_to is None and self.request.id:
        done[self.request.id] = counts
    store_successes(self.backend, done, channel)
    return counts


def store_successes(backend: Any, results: dict[str, Any], channel: Any = None) -> None:
    """Store each task id's result as SUCCESS in one round trip: ``SET`` (with the results'
    expiry) and ``PUBLISH`` (on ``channel``, else on the key's own), as Celery's Redis backend
    stores one result, retried as it retries a store. Unlike ``store_result`` it does not read
    each key first: a part is computed once per message, and a redelivered message stores the
    same numbers."""
    def store() -> None:
        with backend.client.pipeline() as pipe:
            for task_id, result in results.items():
                key = backend.get_key_for_task(task_id)
                value = backend.encode({"status": states.SUCCESS, "result": result,
                                        "traceback": None, "children": [],
                                        "date_done": backend.app.now().isoformat(),
                                        "task_id": task_id})
                pipe.set(key, value, ex=backend.expires or None)
                pipe.publish(key if channel is None else channel, value)
            pipe.execute()

    backend.ensure(store, ())


@shared_task(bind=True, base=ForecastTask, name=TABLE_TASK_NAME)
def forecast_table(self: ForecastTask, **chunk: Any) -> dict[str, Any]:
    """Every model of a table run's chunk over its series (:mod:`crypto_ml.worker.chunks`)."""
    conf = self.app.conf
    if "values" not in chunk:  # stored beside the message
        chunk["values"] = self._riding_out_restarts(
            lambda: fetch_payload(self.app.backend.client, self.request.id))
    checked = parse_chunk(chunk, conf.get("crypto_ml_max_horizon", Settings.max_horizon),
                          conf.get("crypto_ml_max_series", Settings.max_series))
    return run_chunk(checked, self.request.hostname or "unknown",
                     binary=conf.result_serializer == "msgpack")
