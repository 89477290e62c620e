"""Prometheus metrics of the API: requests, latency, queue depth, forecasts by model and
status, answers reused and awaited (:mod:`crypto_ml.api.answers`), and how concurrent
requests share messages (the coalescer's messages and parts).

Each app has its own registry (several apps in one process, as in tests, never
clash). Queue depth is read from the broker when ``/metrics`` is scraped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from crypto_ml.dispatch.runs import RunState

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


def http_only(app: ASGIApp, handle: ASGIApp) -> ASGIApp:
    """ASGI middleware: HTTP requests go to ``handle``, the rest (lifespan) straight to ``app``."""

    async def route(scope: Scope, receive: Receive, send: Send) -> None:
        await (handle if scope["type"] == "http" else app)(scope, receive, send)

    return route


class QueueDepth(Collector):
    """``crypto_ml_api_queue_depth{queue}``: tasks waiting or reserved, read at scrape time."""

    def __init__(self, read: Callable[[], dict[str, int]]) -> None:
        self.read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("crypto_ml_api_queue_depth",
                                   "Forecast tasks waiting or reserved by workers, per queue",
                                   labels=["queue"])
        try:
            for queue, depth in self.read().items():
                family.add_metric([queue], depth)
        except Exception as exc:  # a scrape must not fail with the broker
            log.warning("queue depth unavailable: %s", exc)
        yield family


class Coalesced(Collector):
    """``crypto_ml_api_coalesced_messages_total`` and ``..._parts_total``: messages of cheap
    forecasts the API sent, and the requests' parts they carried (parts / messages: how many
    requests shared a message on average)."""

    def __init__(self, read: Callable[[], tuple[int, int]]) -> None:
        self.read = read

    def collect(self) -> Iterator[CounterMetricFamily]:
        messages, parts = self.read()
        yield CounterMetricFamily("crypto_ml_api_coalesced_messages",
                                  "Messages of requests' cheap forecasts sent", value=messages)
        yield CounterMetricFamily("crypto_ml_api_coalesced_parts",
                                  "Requests' parts those messages carried", value=parts)


class ApiMetrics:
    """The registry and the metrics the API updates."""

    def __init__(self, queue_depth: Callable[[], dict[str, int]],
                 coalesced: Callable[[], tuple[int, int]] | None = None) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("crypto_ml_api_requests", "HTTP requests answered",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("crypto_ml_api_request_seconds", "HTTP request latency",
                                 ["method", "route"], buckets=BUCKETS, registry=self.registry)
        self.forecasts = Counter("crypto_ml_api_forecasts", "Forecasts finished, by model",
                                 ["model", "status"], registry=self.registry)
        self.reused = Counter("crypto_ml_api_answers_reused", "Forecast requests answered "
                              "with the answer of the same question asked before",
                              registry=self.registry)
        self.awaiting = Gauge("crypto_ml_api_answers_awaited", "Forecast requests waiting for "
                              "the answer of the same question, being answered for another",
                              registry=self.registry)
        self.registry.register(QueueDepth(queue_depth))
        if coalesced is not None:
            self.registry.register(Coalesced(coalesced))

    def count_run(self, state: RunState) -> None:
        """Count a finished run's forecasts once (ok or failed, by model)."""
        for by_model in state.results.values():
            for model in by_model:
                self.forecasts.labels(model, "ok").inc()
        for failures in state.failed.values():
            for model in failures:
                self.forecasts.labels(model, "failed").inc()

    def middleware(self, app: ASGIApp) -> ASGIApp:
        """ASGI middleware counting each HTTP request by route template and status."""

        async def counted(scope: Scope, receive: Receive, send: Send) -> None:
            started = time.perf_counter()
            method, status = scope["method"], 500  # the method asked (HEAD answers as GET)

            async def send_status(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await app(scope, receive, send_status)
            finally:
                route = getattr(scope.get("route"), "path", None) or "unmatched"
                self.requests.labels(method, route, str(status)).inc()
                self.latency.labels(method, route).observe(time.perf_counter() - started)

        return http_only(app, counted)
