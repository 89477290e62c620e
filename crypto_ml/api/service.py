"""What the HTTP API does, without HTTP: check a forecast body into task requests, and run them.

:class:`ForecastService` turns a :class:`~crypto_ml.api.schemas.ForecastBody`
into :class:`~crypto_ml.worker.requests.ForecastRequest` objects, or raises
:class:`Invalid` listing every problem by field, before anything is queued.
Runs go to one of two backends with one interface:

* :class:`QueueRuns`: the cluster, through :class:`~crypto_ml.dispatch.runs.RunQueue`
  (same tasks, queues and workers as ``send-tasks``);
* :class:`InProcessRuns`: the same model code called in the API process, for
  measuring what the queue costs per request (``python -m crypto_ml.api --in-process``).
"""

from __future__ import annotations

import asyncio
import collections
import json
import math
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import redis
from celery import Celery

from crypto_ml.core.errors import CoinNotFound, CryptoMLError, DataNotFound
from crypto_ml.core.sentinel import redis_client
from crypto_ml.core.settings import Settings
from crypto_ml.data.loader import CryptoLoader
from crypto_ml.data.names import coin_id
from crypto_ml.dispatch.report import RunReport
from crypto_ml.dispatch.runs import Run, RunQueue, RunState, final_state
from crypto_ml.models import (
    HEAVY,
    PARAMS,
    default_max_points,
    get_model,
    model_names,
    window_problem,
)
from crypto_ml.ops.queue_depth import queue_depths
from crypto_ml.worker.app import CPU_QUEUE, GPU_QUEUE
from crypto_ml.worker.model_store import ModelStore
from crypto_ml.worker.requests import ITEM_ERRORS, ForecastRequest, item_error, run_forecast

from .problems import MAX_PROBLEMS, too_many
from .schemas import ForecastBody

REFRESH_SECONDS = 5.0  # how often the data folder is checked for new or changed files
HEALTH_CACHE_SECONDS = 5.0


class Invalid(CryptoMLError, ValueError):
    """A request body with problems: ``errors`` as FastAPI reports them (loc, msg, type)."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors))
        self.errors = errors


def problem(loc: Sequence[str | int], msg: str) -> dict[str, Any]:
    return {"loc": ["body", *loc], "msg": msg, "type": "value_error"}


def _stamp(path: Path) -> tuple[str, float, int] | None:
    """What tells a file's change: name, mtime and size (None: it cannot be stat'ed, e.g. a
    dangling link or a symlink loop, which then cannot hide the others' changes)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return path.name, st.st_mtime, st.st_size


class CoinData:
    """Closes of the data folder's coins, parsed once and re-read when a file changes. Reads
    of files go one at a time (``_reading``), in the caller's thread: the routes call them in
    a worker thread unless :meth:`ready` says the answer is in memory."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._lock = threading.Lock()
        self._reading = threading.Lock()
        self._loader = CryptoLoader(data_dir)
        self._signature: tuple[tuple[str, float, int], ...] | None = None
        self._checked = 0.0
        self._prices: dict[str, tuple[list[float], str | None]] = {}

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked < REFRESH_SECONDS:
            return
        self._checked = now
        try:
            paths = sorted(self.data_dir.iterdir()) if self.data_dir.is_dir() else [self.data_dir]
        except OSError:
            paths = []
        signature = tuple(filter(None, map(_stamp, paths)))
        if signature != self._signature:
            self._signature = signature
            self._loader = CryptoLoader(self.data_dir)
            self._prices = {}

    def ready(self, coins: Iterable[str]) -> bool:
        """Whether :meth:`prices` answers each of ``coins`` from memory, reading no file."""
        with self._lock:
            self._refresh()
            return all(coin_id(coin) in self._prices for coin in coins)

    def names(self) -> list[str]:
        with self._lock:
            self._refresh()
            loader = self._loader
        with self._reading:
            return loader.get_crypto_names()

    def prices(self, coin: str) -> tuple[list[float], str | None]:
        """The coin's closes (NaNs dropped), oldest first, and the date of the last one."""
        with self._lock:
            self._refresh()
            cached = self._prices.get(coin)
            loader = self._loader
        if cached is None:
            with self._reading:
                frame = loader.get_df(coin).dropna(subset=["Close"])
            last = frame["Date"].iloc[-1].date().isoformat() if len(frame) else None
            cached = (frame["Close"].astype(float).tolist(), last)
            with self._lock:
                self._prices[coin] = cached
        return cached


def model_list(spec: str | list[str]) -> list[str]:
    """The body's model names, in any case (as the command line and jobs take them), once."""
    names = spec.split(",") if isinstance(spec, str) else spec
    return list(dict.fromkeys(n.strip().lower() for n in names if n.strip()))


class ForecastService:
    """Checks forecast bodies against the data and the settings' caps."""

    def __init__(self, settings: Settings, coins: CoinData | None = None) -> None:
        self.settings = settings
        self.coins = coins or CoinData(settings.data_dir)

    async def checked(self, body: ForecastBody) -> list[ForecastRequest]:
        """:meth:`requests_for` on the event loop when every coin's closes are in memory, else
        in a worker thread (a first read parses files; the server answers others meanwhile)."""
        if self.coins.ready(body.coins or ()):
            return self.requests_for(body)
        return await asyncio.to_thread(self.requests_for, body)

    def requests_for(self, body: ForecastBody) -> list[ForecastRequest]:
        """One request per (series, model), or Invalid naming every problem found."""
        errors: list[dict[str, Any]] = []
        models = self._models(body, errors)
        if (why := self.settings.horizon_problem(body.horizon)) is not None:
            errors.append(problem(["horizon"], why))
        series = self._series(body, errors)
        if errors:
            raise Invalid(errors)
        requests = []
        for (loc, name, closes, last) in series:
            for model, params, min_points in models:
                window = default_max_points(model) if body.max_points is None else body.max_points
                prices = closes[-window:] if window else closes
                need = max(min_points, 2 if body.levels else 1)  # intervals: a daily change
                if len(prices) < need:
                    why = ("" if need == min_points else " to size its prediction intervals "
                           "(levels: [] for none)")
                    errors.append(problem(loc, f"{name!r} has {len(prices)} usable closes; "
                                          f"model {model!r} needs at least {need}{why}"))
                    continue
                requests.append(ForecastRequest(name, model, prices, body.horizon, last, params,
                                                levels=tuple(body.levels), retrain=body.retrain))
        if errors:
            raise Invalid(errors)
        return requests

    def _models(self, body: ForecastBody,
                errors: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any], int]]:
        names = model_list(body.model)
        if not names:
            errors.append(problem(["model"], f"no model given; choose from "
                                  f"{', '.join(model_names())}"))
        unknown = set(body.params).difference(*(PARAMS[n] for n in names if n in PARAMS))
        if unknown:
            errors.append(problem(["params"], f"no model of {', '.join(names)} takes "
                                  f"{', '.join(sorted(unknown))}"))
        models = []
        for name in names:
            if name not in PARAMS:
                errors.append(problem(["model"], f"unknown model {name!r}; choose from "
                                      f"{', '.join(model_names())}"))
                continue
            params = {k: v for k, v in body.params.items() if k in PARAMS[name]}
            try:
                min_points = get_model(name, **params).min_points
            except (*ITEM_ERRORS, TypeError) as exc:
                errors.append(problem(["params"], f"{name}: {exc}"))
                continue
            models.append((name, params, min_points))
        if models and (why := window_problem(body.max_points, [m for m, _, _ in models],
                                             body.params, bool(body.levels), whole="0")):
            errors.append(problem(["max_points"], why))  # as send-tasks and POST /v1/jobs
        return models

    def _series(self, body: ForecastBody, errors: list[dict[str, Any]]
                ) -> list[tuple[list[str | int], str, list[float], str | None]]:
        cap = self.settings.max_series
        out: list[tuple[list[str | int], str, list[float], str | None]] = []
        for name, closes in (body.series or {}).items():
            loc: list[str | int] = ["series", name]
            bad = next((i for i, p in enumerate(closes) if not math.isfinite(p)), None)
            if not name.strip():
                errors.append(problem(loc, "a series needs a non-empty name"))
            elif bad is not None:
                errors.append(problem([*loc, bad], f"item {bad} is {closes[bad]}; send only "
                                      "finite closes (drop NaNs first)"))
            elif len(closes) > cap:
                errors.append(problem(loc, f"{len(closes)} closes is above the cap of {cap} "
                                      "(CRYPTO_ML_MAX_SERIES)"))
            else:
                out.append((loc, name, closes, None))
        seen: set[str] = set()
        for i, given in enumerate(body.coins or []):
            coin = coin_id(given)  # any case and spacing, as the command line takes them:
            if coin in seen:  # one forecast a coin, under its id
                continue
            seen.add(coin)
            if len(errors) >= MAX_PROBLEMS:  # enough to act on; checking the rest costs
                errors.append(too_many())
                break
            try:
                prices, last = self.coins.prices(coin)
            except (CoinNotFound, DataNotFound) as exc:  # in an HTTP client's words
                errors.append(problem(["coins", i], str(exc).replace(
                    "with CryptoLoader().get_crypto_names()", "with GET /v1/coins")))
                continue
            out.append((["coins", i], coin, prices, last))
        return out


class Runs(Protocol):
    """Where the API's runs go; every method runs on the server's event loop."""

    at_once: bool  # whether a run has finished when submit returns (in-process)

    async def submit(self, requests: Sequence[ForecastRequest], listen: bool = True) -> Run: ...

    async def wait(self, run: Run, timeout: float) -> RunState | None: ...

    async def save(self, run: Run) -> None: ...

    async def keep(self, run_id: str, answer: bytes) -> None: ...

    async def discard(self, run: Run) -> None: ...

    async def state(self, run_id: str) -> RunState | None: ...

    async def health(self) -> dict[str, Any]: ...

    def queue_depth(self) -> dict[str, int]: ...

    def close(self) -> None: ...

    async def aclose(self) -> None: ...


class QueueRuns(RunQueue):
    """Runs on the cluster of ``app``, plus its health and queue depth."""

    def __init__(self, app: Celery, settings: Settings, expires: float = 3600.0,
                 coalesce: int | None = None) -> None:
        super().__init__(app, settings, expires, coalesce)
        #: the master, for a sentinel:// URL; read by /metrics (prometheus_client is blocking)
        self.broker = redis_client(settings.broker_url or "", settings.sentinel_master,
                                   settings.sentinel_password, socket_connect_timeout=2,
                                   socket_timeout=2)
        self._health: tuple[float, dict[str, Any]] | None = None

    async def health(self) -> dict[str, Any]:
        """Broker reachable and workers answering a ping; cached for a few seconds."""
        if self._health and time.monotonic() - self._health[0] < HEALTH_CACHE_SECONDS:
            return self._health[1]
        try:
            await asyncio.wait_for(self._loop().broker.ping(), 2)
        except (redis.RedisError, OSError, TimeoutError) as exc:
            state = {"status": "unavailable", "broker": False, "workers": [],
                     "detail": f"broker unreachable ({type(exc).__name__})"}
        else:
            state = await asyncio.to_thread(self._ping_workers)
        self._health = (time.monotonic(), state)
        return state

    def _ping_workers(self) -> dict[str, Any]:
        """A control broadcast (kombu's blocking I/O, in a thread: once per cache period)."""
        detail: str | None = None
        try:
            replies = self.app.control.ping(timeout=0.5)
        except Exception as exc:  # kombu's connection errors vary
            replies, detail = [], f"ping failed ({type(exc).__name__})"
        else:
            detail = None if replies else "no worker answered a ping"
        workers = sorted(name for reply in replies for name in reply)
        return {"status": "ok" if workers else "unavailable", "broker": True,
                "workers": workers, "detail": detail}

    def queue_depth(self) -> dict[str, int]:
        depths = queue_depths(self.broker, [CPU_QUEUE, GPU_QUEUE])
        return {queue: d["total"] for queue, d in depths.items()}

    def close(self) -> None:
        self.broker.close()


class InProcessRuns:
    """Runs executed at once in the API process: no broker, no workers (benchmarks, dev)."""

    at_once = True  # every run has finished when submit returns: wait=0 gets a 200

    def __init__(self, store: ModelStore | None = None, most: int = 10_000) -> None:
        import sklearn.linear_model  # noqa: F401 - as workers do: not on the first request

        self.store = store
        self._states: collections.OrderedDict[str, RunState] = collections.OrderedDict()
        self.most = most  # runs kept, the oldest dropped first

    async def submit(self, requests: Sequence[ForecastRequest], listen: bool = True) -> Run:
        run = Run(uuid.uuid4().hex, {}, math.inf)
        report = RunReport()
        for request in requests:
            try:
                report.add_result(run_forecast(request, "in-process", self.store))
            except ITEM_ERRORS as exc:
                failure = item_error(request.as_kwargs(), exc)
                report.add_failure(request.coin, request.model, failure["error"])
        self._remember(final_state(run.id, report))
        return run

    async def keep(self, run_id: str, answer: bytes) -> None:
        kept = json.loads(answer)
        self._remember(RunState(run_id, kept["status"], kept["results"], kept["failed"],
                                _encoded=answer))

    def _remember(self, state: RunState) -> None:
        self._states[state.id] = state
        while len(self._states) > self.most:
            self._states.popitem(last=False)

    async def wait(self, run: Run, timeout: float) -> RunState | None:
        return self._states.get(run.id)

    async def save(self, run: Run) -> None:
        pass

    async def discard(self, run: Run) -> None:
        self._states.pop(run.id, None)

    async def state(self, run_id: str) -> RunState | None:
        return self._states.get(run_id)

    async def health(self) -> dict[str, Any]:
        return {"status": "ok", "broker": False, "workers": ["in-process"], "detail": None}

    def queue_depth(self) -> dict[str, int]:
        return {}

    def close(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


def model_infos() -> list[dict[str, Any]]:
    """Every model with its queue, options and whether its fits are stored."""
    return [{"name": name, "queue": "gpu" if name in HEAVY else "cpu",
             "params": sorted(PARAMS[name]), "stored": name in HEAVY} for name in model_names()]
