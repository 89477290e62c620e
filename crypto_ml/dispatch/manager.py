"""The manager: one forecast task per (coin, model), dispatched at once, collected as they finish.

>>> CryptoManager().send_tasks(model="linear", coins=["bitcoin"])   # doctest: +SKIP
bitcoin [[1524.89418917 1525.92441381 ...]]

With no broker configured (no ``broker_url`` in the settings, no ``app``) the manager starts a
:class:`~crypto_ml.dispatch.cluster.LocalCluster` (real Redis, real workers) for the run and
stops it afterwards (and stops the run if that Redis exits: :class:`ClusterLost`). Messages are
planned by :mod:`~crypto_ml.dispatch.planning`; results are kept in a
:class:`~crypto_ml.dispatch.report.RunReport`. The command line is :mod:`crypto_ml.cli`.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np
from celery import Celery

from crypto_ml.core.errors import ClusterLost, ConfigError, CryptoMLError
from crypto_ml.core.logs import log_task
from crypto_ml.core.settings import DEFAULT_TIMEOUT, Settings, check_timeout, comma_list
from crypto_ml.data.loader import CryptoLoader
from crypto_ml.data.names import coin_id
from crypto_ml.dispatch.capacity import InFlight
from crypto_ml.dispatch.cluster import LocalCluster
from crypto_ml.dispatch.connect import launch_embedded, open_cluster
from crypto_ml.dispatch.engine import Dispatcher, no_result
from crypto_ml.dispatch.planning import Message, plan_messages
from crypto_ml.dispatch.report import (
    INTERRUPTED,
    NullObserver,
    RunObserver,
    RunReport,
    add_meta,
    format_forecast,
)
from crypto_ml.models import (
    DEFAULT_HORIZON,
    DEFAULT_MODEL,
    HEAVY,
    PARAMS,
    check_horizon,
    check_option_names,
    check_option_values,
    check_window,
    default_max_points,
    parse_models,
)
from crypto_ml.models.intervals import DEFAULT_LEVELS, check_levels
from crypto_ml.worker.app import CPU_QUEUE, create_app, table_queue
from crypto_ml.worker.requests import ForecastRequest

if TYPE_CHECKING:  # table runs import pyarrow and pandas: only when one runs
    from crypto_ml.data.table import TableSource
    from crypto_ml.data.table_loader import TableLoader
    from crypto_ml.dispatch.table_output import TableOutput
    from crypto_ml.dispatch.table_run import TablePlan, TableSummary


CLI_HINT = "set CRYPTO_ML_BROKER_URL or --broker redis://HOST:6379/0 to use your own cluster"
PYTHON_HINT = "set CRYPTO_ML_BROKER_URL=redis://HOST:6379/0 to use your own cluster"


def checked_call(coins: str | Sequence[str] | None, timeout: float | None
                 ) -> list[str] | None:
    """A Python caller's ``coins`` as a list (a string is a comma list, as ``--coins``; None
    every coin; empty: an error), or ConfigError; the timeout positive."""
    check_timeout(timeout)
    if coins is None:
        return None
    if isinstance(coins, bytes) or not isinstance(coins, str | Iterable):
        raise ConfigError(f"coins must be a list of names or ids, a comma list, or None for "
                          f"every coin, got {type(coins).__name__} {coins!r:.80}")
    names = comma_list(coins) if isinstance(coins, str) else list(coins)
    if not names:
        raise ConfigError("coins is empty; pass None for every coin")
    if not all(isinstance(name, str) for name in names):
        raise ConfigError(f"coins must be names or ids (text), got {names!r}")
    return list(dict.fromkeys(names))


class CryptoManager:
    """Dispatches forecasts over the broker and collects them.

    ``settings`` default to :class:`Settings`' defaults (the environment is read by the entry
    points, which pass theirs); ``loader`` defaults to a :class:`CryptoLoader` of the settings'
    data directory; ``app`` to a Celery app for the settings' broker, or to an embedded local
    cluster when none is configured. ``out`` receives one line per forecast and ``err`` one
    line per failure and the notices.
    """

    def __init__(self, loader: CryptoLoader | TableLoader | None = None, app: Celery | None = None,
                 settings: Settings | None = None, out: TextIO | None = None,
                 err: TextIO | None = None, observer: RunObserver | None = None,
                 cluster_options: Mapping[str, Any] | None = None, hint: str = PYTHON_HINT) -> None:
        self.observer: RunObserver = observer or NullObserver()
        self.cluster_options = dict(cluster_options or {})  # e.g. flower=Settings(...)
        self.settings = settings or Settings()  # defaults only: the edges read the environment
        self.loader: CryptoLoader | TableLoader = loader or CryptoLoader(self.settings.data_dir,
                                                cache_dir=self.settings.cache_dir)
        self.app = app
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.stop_requested = threading.Event()
        self.last_report: RunReport | None = None
        #: one ``failed:`` line on ``err`` per failure; the command line lists them in its summary
        self.say_failures = True
        self._launched: LocalCluster | None = None  # embedded cluster starting while data loads
        self._embedded: LocalCluster | None = None  # the embedded cluster a dispatch runs on
        self._idle = False  # the last dispatch left nothing running or queued
        self.hint = hint  # how the embedded cluster's notice says to use one's own

    def _say(self, line: str) -> None:
        print(line, file=self.err, flush=True)

    @contextlib.contextmanager
    def connected(self) -> Iterator[Celery]:
        """The app to run on: given, configured, or an embedded cluster started for the run
        (:func:`~crypto_ml.dispatch.connect.open_cluster`)."""
        if self.app is not None:
            yield self.app
            return
        launched, self._launched = self._launched, None
        self._idle = False
        with open_cluster(self.settings, self._say, launched, lambda: self._idle, self.hint,
                          **self._cluster_options()) as (settings, cluster):
            if cluster is not None and cluster.flower_url:
                self._say(f"flower: {cluster.flower_url} (stops when this run ends)")
                settings = replace(settings, task_events=True)
            self._embedded = cluster
            try:
                yield create_app(settings)
            finally:
                self._embedded = None

    def _cluster_options(self, models: Sequence[str] | None = None) -> dict[str, Any]:
        """The embedded cluster's options; for ``models`` that are all cheap, workers of the
        cpu queue only (they start faster)."""
        options = dict(self.cluster_options)
        if models is not None and not set(models) & HEAVY:
            options.setdefault("queues", (CPU_QUEUE,))
        return options

    def _launch_early(self, models: Sequence[str]) -> None:
        """With no app and no broker: spawn the embedded cluster now, so that Redis and the
        workers start while the data loads (:meth:`connected` then waits for them)."""
        if self.app is None and not self.settings.broker_url and self._launched is None:
            self._launched = launch_embedded(self.settings, self._say, self.hint,
                                             **self._cluster_options(models))

    def _drop_launched(self) -> None:
        """Stop an early-launched cluster that no dispatch used (nothing to send, an error)."""
        if self._launched is not None:
            self._launched.stop(idle=True)
            self._launched = None

    def build_requests(self, models: Sequence[str], coins: Sequence[str] | None, horizon: int,
                       max_points: int | None, params: dict[str, Any],
                       report: RunReport, *, retrain: bool = False,
                       levels: Sequence[float] = DEFAULT_LEVELS) -> list[ForecastRequest]:
        """One request per (coin, model); coins that cannot be read are failed in ``report``.

        Each model is fitted on the newest ``max_points`` closes; None: the model's own
        default (200 for most, see :func:`~crypto_ml.models.default_max_points`); 0: all.
        """
        levels = check_levels(levels)
        windows = {m: default_max_points(m) if max_points is None else max_points for m in models}
        if coins and isinstance(self.loader, CryptoLoader):
            # each coin by its id, once, however written (``Bitcoin Cash``: bitcoin_cash); a
            # table's series keep their exact ids
            coins = list(dict.fromkeys(coin_id(c) for c in coins))
        names = list(coins) if coins else self.loader.get_crypto_names()
        requests = []
        for coin in names:
            try:
                dates, closes = self.loader.get_closes(coin)
            except CryptoMLError as exc:
                for model in models:
                    report.add_failure(coin, model, f"{type(exc).__name__}: {exc}")
                continue
            last = str(dates[-1].astype("datetime64[D]")) if len(dates) else None
            for model in models:
                prices = (closes[-windows[model]:] if windows[model] else closes).tolist()
                if (why := self.settings.window_problem(len(prices))) is not None:
                    report.add_failure(coin, model, f"ConfigError: {why}")  # a worker would refuse it
                    continue
                accepted = {k: v for k, v in params.items() if k in PARAMS[model]}
                requests.append(ForecastRequest(coin, model, prices, horizon, last, accepted,
                                                levels, retrain))
        return requests

    def run(self, models: str | Sequence[str] = DEFAULT_MODEL,
            coins: str | Sequence[str] | None = None, horizon: int = DEFAULT_HORIZON,
            max_points: int | None = None, epochs: int | None = None,
            timeout: float | None = DEFAULT_TIMEOUT,
            on_result: Callable[[dict[str, Any]], None] | None = None,
            retrain: bool = False, levels: Sequence[float] = DEFAULT_LEVELS,
            known_only: bool = False) -> RunReport:
        """Dispatch every (coin, model) at once and collect results as they finish.

        ``max_points``: fit on the newest N closes; None for each model's default (200
        closes for all but the deep models), 0 for the whole history. ``levels``: the
        prediction intervals each result carries (percent; empty for none). ``known_only``: a
        coin the data folder does not name is CoinNotFound before any work, not its failure.

        Each task expires ``timeout`` seconds after it is sent, so if this manager
        dies, workers discard its leftover tasks instead of running them for nobody.
        Deep models already fitted on the same data come from the model store
        (:mod:`crypto_ml.worker.model_store`) unless ``retrain``.
        """
        names = parse_models(models)
        horizon = check_horizon(horizon)  # a plain int (numpy's is no message's)
        coins = checked_call(coins, timeout)
        max_points = check_window(max_points, names, intervals=bool(check_levels(levels)))
        if (why := self.settings.horizon_problem(horizon)) is not None:
            raise ConfigError(f"horizon {why}")
        if epochs is not None:  # a deep model's option: refused where no model takes it
            epochs = int(epochs) if isinstance(epochs, np.integer) else epochs
            check_option_names(names, ["epochs"])
            check_option_values(names, {"epochs": epochs}, "model {!r}")
        if known_only and coins and isinstance(self.loader, CryptoLoader):  # a typo: refused
            self.loader.check_known(coins)  # before any work, as on the command line
        report = self.last_report = RunReport()  # filled as they arrive: what an interrupt left
        started = time.perf_counter()
        params = {} if epochs is None else {"epochs": epochs}  # None: each model's default
        self._launch_early(names)  # Redis and the workers start while the data loads
        try:
            requests = self.build_requests(names, coins, horizon, max_points, params, report,
                                           retrain=retrain, levels=levels)
        except BaseException:
            self._drop_launched()
            raise
        for coin, by_model in report.failed.items():
            for model, reason in by_model.items():
                self.observer.on_done(None, coin, model, None, reason)
                if self.say_failures:
                    self._say(f"failed: {coin} {model}: {reason}")
        printer = on_result or functools.partial(self._print_result, show_model=len(names) > 1)
        self.dispatch(requests, timeout, printer, report)
        report.wall_seconds = time.perf_counter() - started
        return report

    def run_table(self, source: TableSource, output: TableOutput, plan: TablePlan,
                  on_progress: Callable[[int, int], None] = lambda done, failed: None,
                  timeout: float | None = DEFAULT_TIMEOUT, in_flight: int | None = None,
                  on_skip: Callable[[int, int], None] | None = None) -> TableSummary:
        """Forecast a checked long table into ``output`` (:mod:`crypto_ml.dispatch.table_run`):
        at most ``in_flight`` messages at a time (default: twice the live workers' task
        slots, :mod:`crypto_ml.dispatch.capacity`)."""
        from crypto_ml.dispatch.table_run import already_written, run_table  # lazy: pyarrow

        written = already_written(source, output)  # or OutputMismatch: no cluster for either
        if written is not None:
            return written
        names = [m.model for m in plan.models]
        self._launch_early(names)
        queue = table_queue(names)
        try:
            with self.connected() as app:
                summary = run_table(app, source, output, plan, on_progress, self._say,
                                    self._tick, timeout,
                                    in_flight or InFlight(app, self.settings.workers, queue),
                                    on_skip,
                                    self.settings.lost_check_seconds)
                self._idle = True
        finally:
            self._drop_launched()
        return summary

    @contextlib.contextmanager
    def session(self) -> Iterator[CryptoManager]:
        """Keep one connection (or one embedded cluster) open across several runs."""
        if self.app is not None:
            yield self
            return
        with self.connected() as app:
            self.app = app
            try:
                yield self
            finally:
                self.app = None

    def dispatch(self, requests: list[ForecastRequest], timeout: float | None = DEFAULT_TIMEOUT,
                 on_result: Callable[[dict[str, Any]], None] = lambda result: None,
                 report: RunReport | None = None) -> RunReport:
        """Send prepared requests and collect them into ``report`` (a new one by default)."""
        report = RunReport() if report is None else report
        try:
            if requests:
                with self.connected() as app:
                    self._dispatch_and_collect(app, requests, report, timeout, on_result)
        finally:
            self._drop_launched()
        return report

    def _dispatch_and_collect(self, app: Celery, requests: list[ForecastRequest],
                              report: RunReport, timeout: float | None,
                              on_result: Callable[[dict[str, Any]], None]) -> None:
        def on_sent(task_id: str, message: Message) -> None:
            for coin, model in message.items:
                self.observer.on_sent(app, task_id, coin, model)
            self._check_stop()

        engine = Dispatcher(app, self._say, self._tick, self.settings.lost_check_seconds)
        try:
            for done in engine.run(plan_messages(requests, self.settings.batch_size), timeout,
                                   on_sent=on_sent):
                if done.meta is None:
                    for coin, model in done.message.items:
                        self._fail(report, coin, model, no_result(timeout), done.task_id)
                else:
                    self._record(report, done.message.items, done.meta, on_result, done.task_id)
        except (ClusterLost, KeyboardInterrupt) as exc:  # what had not arrived never will
            lost = isinstance(exc, ClusterLost)
            sent = {item: task_id for task_id, m in engine.pending.items() for item in m.items}
            failed = report.fail_rest([*sent, *((r.coin, r.model) for r in requests)],
                                      str(exc) if lost else INTERRUPTED)
            if not lost:
                raise  # kept in the report alone: the command line writes it to --output
            self._say(f"crypto-ml: error: {exc}")
            for coin, model in failed:
                self._said_failure(coin, model, str(exc), sent.get((coin, model), ""))
        finally:
            self._idle = not engine.pending

    def request_stop(self) -> None:
        """Ask a running dispatch to stop at its next poll (safe from a signal handler: a
        KeyboardInterrupt raised by a signal can be swallowed in a ``__del__``, this flag not)."""
        self.stop_requested.set()

    def _check_stop(self) -> None:
        if self.stop_requested.is_set():
            raise KeyboardInterrupt

    def _tick(self) -> None:
        self.observer.on_wait()
        self._check_stop()
        if self._embedded is not None and (why := self._embedded.lost()) is not None:
            raise ClusterLost(f"{why}; the run stops: run it again")

    def _record(self, report: RunReport, items: list[tuple[str, str]], meta: dict[str, Any],
                on_result: Callable[[dict[str, Any]], None], task_id: str) -> None:
        def done(result: dict[str, Any]) -> None:
            self.observer.on_done(task_id, result["coin"], result["model"], result, None)
            log_task(task_id, result["coin"], result["model"], result=result)
            on_result(result)

        add_meta(report, items, meta, done,
                 lambda coin, model, reason: self._said_failure(coin, model, reason, task_id))

    def _fail(self, report: RunReport, coin: str, model: str, reason: str, task_id: str) -> None:
        report.add_failure(coin, model, reason)
        self._said_failure(coin, model, reason, task_id)

    def _said_failure(self, coin: str, model: str, reason: str, task_id: str) -> None:
        self.observer.on_done(task_id, coin, model, None, reason)
        log_task(task_id, coin, model, reason=reason)
        if self.say_failures:
            self._say(f"failed: {coin} {model}: {reason}")

    def _print_result(self, result: dict[str, Any], show_model: bool = False) -> None:
        model = result["model"] if show_model else None
        print(format_forecast(result["coin"], np.asarray(result["forecast"]), model),
              file=self.out, flush=True)

    def send_tasks(self, model: str | Sequence[str] = DEFAULT_MODEL,
                   coins: str | Sequence[str] | None = None, horizon: int = DEFAULT_HORIZON,
                   max_points: int | None = None, epochs: int | None = None,
                   timeout: float | None = DEFAULT_TIMEOUT,
                   levels: Sequence[float] = DEFAULT_LEVELS) -> dict[str, Any]:
        """Forecast every coin (or ``coins``) and print one line each.

        Returns ``{coin: np.ndarray}`` for one model, ``{coin: {model: np.ndarray}}``
        for several. Failures are printed and kept in :attr:`last_report`, whose
        results also hold each forecast's ``intervals`` at ``levels``.
        """
        names = parse_models(model)
        report = self.run(names, coins, horizon, max_points, epochs, timeout, levels=levels,
                          known_only=True)
        if len(names) == 1:
            return report.forecasts(names[0])
        return {coin: {m: np.asarray(r["forecast"]) for m, r in by_model.items()}
                for coin, by_model in report.results.items()}
