"""The Celery application: broker, wire format, reliability and routing, all from Settings.

``celery -A crypto_ml worker`` finds :data:`crypto_ml.app`, built here from the
environment on first access. The manager and the embedded cluster build their
own with :func:`create_app` and an explicit :class:`~crypto_ml.core.settings.Settings`.
"""

from __future__ import annotations

import functools
import logging
import os
import ssl
from collections.abc import Iterable
from typing import Any

from celery import Celery, current_app, signals
from kombu import Queue

from crypto_ml.core.acl import WORKER as WORKER_ROLE
from crypto_ml.core.acl import restores_unacked
from crypto_ml.core.errors import BrokerAuthFailed, ConfigError
from crypto_ml.core.logins import check_credentials, wrong_user
from crypto_ml.core.logs import use_format
from crypto_ml.core.sentinel import CONNECT_TIMEOUT, SOCKET_TIMEOUT, link_options, transport_options
from crypto_ml.core.settings import Settings, threads_env
from crypto_ml.models import HEAVY
from crypto_ml.models.rnn import warm_up
from crypto_ml.models.statistical import warm_up as warm_up_statistical
from crypto_ml.worker import acks, imports, liveness
from crypto_ml.worker.chunks import TABLE_TASK_NAME
from crypto_ml.worker.requests import ACCEPT_CONTENT, BATCH_TASK_NAME, PARTS_TASK_NAME, TASK_NAME

CPU_QUEUE, GPU_QUEUE = "cpu", "gpu"


def route_task(name: str, args: Any, kwargs: Any, options: Any, task: Any = None,
               **kw: Any) -> dict[str, str] | None:
    """Deep models go to the ``gpu`` queue, everything else to ``cpu``."""
    if name in (BATCH_TASK_NAME, PARTS_TASK_NAME):
        return {"queue": CPU_QUEUE}
    if name == TABLE_TASK_NAME:
        models = [m.get("model") for m in (kwargs or {}).get("models") or [] if isinstance(m, dict)]
        return {"queue": table_queue(models)}
    if name != TASK_NAME:
        return None
    model = (kwargs or {}).get("model")
    return {"queue": GPU_QUEUE if model in HEAVY else CPU_QUEUE}


def table_queue(models: Iterable[Any]) -> str:
    """The queue of a table chunk of ``models``: ``gpu`` when a deep model is among them."""
    return GPU_QUEUE if set(models) & HEAVY else CPU_QUEUE


def _tls_options(url: str) -> dict[str, Any] | None:
    """``rediss://`` URLs verify the server's certificate unless the URL says otherwise."""
    if url.startswith("rediss://") and "ssl_cert_reqs" not in url:
        return {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    return None


UNACKED_MUTEX_SECONDS = 30


def restore_sweep_seconds(visibility_timeout: int) -> int:
    """How often a worker looks for tasks of dead workers to redeliver: 1 to 10 s."""
    return max(1, min(10, visibility_timeout // 10))


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings for crypto-ml; see the README's reliability section."""
    if not settings.broker_url:
        raise ConfigError(
            "no broker configured: set CRYPTO_ML_BROKER_URL=redis://host:6379/0, "
            "or start a local cluster with `crypto-ml cluster up` and use the URL it prints"
        )
    transport = {
        "visibility_timeout": settings.visibility_timeout,
        # Sweep for tasks of dead workers every few seconds (kombu's default
        # scans once per 100 s), so redelivery comes within visibility_timeout + sweep.
        "unacked_restore_interval": restore_sweep_seconds(settings.visibility_timeout),
        "unacked_restore_throttle": 1,
        # the lock each restore sweep takes: one left by a worker killed mid-sweep stops
        # every sweep until it expires (kombu's default: 300 s); a sweep takes milliseconds
        "unacked_mutex_expire": UNACKED_MUTEX_SECONDS,
        # Only a consumer of the task queues (the worker's Redis user, or an unknown one)
        # keeps what it takes in ``unacked`` and runs that sweep. The manager, the API and
        # Flower consume only control replies and events (acknowledged at once), and their
        # Redis users may not write a task queue (crypto_ml/core/acl.py).
        "ack_emulation": restores_unacked(settings.broker_url),
        # a worker cut off the network finds out within seconds and connects again once the
        # link heals (core/sentinel.py: link_options)
        **link_options(),
        **transport_options(settings.broker_url, settings.sentinel_master,
                            settings.sentinel_password),
    }
    return {
        "broker_url": settings.broker_url,
        "result_backend": settings.backend_url,
        "broker_use_ssl": _tls_options(settings.broker_url),
        "redis_backend_use_ssl": _tls_options(settings.backend_url or ""),
        "broker_transport_options": transport,
        "result_backend_transport_options": transport_options(
            settings.backend_url, settings.sentinel_master, settings.sentinel_password),
        "redis_socket_connect_timeout": CONNECT_TIMEOUT,
        # Celery's default is 120 s: a worker storing a result over a cut link would wait
        # that long (the retransmission backoff, nearly as long) before trying again
        "redis_socket_timeout": SOCKET_TIMEOUT,
        "redis_socket_keepalive": True,
        "broker_connection_retry_on_startup": True,
        "task_serializer": settings.serializer,
        "result_serializer": settings.serializer,
        "event_serializer": "json",
        "accept_content": ACCEPT_CONTENT,
        "result_accept_content": ACCEPT_CONTENT,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # take a message only when a pool process is free: no hoarding (README: reliability)
        "worker_disable_prefetch": True,
        "task_soft_time_limit": settings.soft_time_limit,
        "task_time_limit": settings.hard_time_limit,
        "result_expires": settings.result_expires,
        # A worker whose Redis restarts keeps its result and stores it once Redis
        # is back (20 retries with back-off: about 100 s), and keeps running its task.
        "result_backend_always_retry": True,
        "result_backend_max_retries": 20,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "task_queues": (Queue(CPU_QUEUE), Queue(GPU_QUEUE)),
        "task_default_queue": CPU_QUEUE,
        "task_routes": (route_task,),
        # STARTED is stored by ForecastTask.before_start, for deep tasks only: Celery's own
        # costs two Redis round trips per task, a third of a cheap task's time
        "task_track_started": False,
        # events cost a PUBLISH each (about 1 ms a cheap task); deployments with Flower turn
        # them on, and a running Flower turns workers' on itself (control: enable_events)
        "task_send_sent_event": settings.task_events,
        "worker_send_task_events": settings.task_events,
        # a pool process is replaced when its memory has grown (a leak in a deep model's
        # backend), not every N tasks: replacing one stalled its worker 1-2.5 s, every 500
        # cheap tasks (a few seconds apart under API load: the p99; README: Performance)
        "worker_max_tasks_per_child": None,
        "worker_max_memory_per_child": settings.max_child_memory_mb * 1024,  # KiB
        "worker_hijack_root_logger": True,
        "crypto_ml_max_horizon": settings.max_horizon,
        "crypto_ml_max_series": settings.max_series,
        "crypto_ml_max_batch": settings.max_batch,
        "crypto_ml_preload_keras": settings.preload_keras,
        "crypto_ml_preload_statistical": settings.preload_statistical,
        # a pool process that preloads Keras needs longer than the default 4 s to report up
        "worker_proc_alive_timeout": 120.0 if settings.preload_keras else 4.0,
        "crypto_ml_max_deliveries": settings.max_deliveries,
        "crypto_ml_model_store_secret": settings.model_store,  # its URL may hold a password:
        # Celery masks a *SECRET* key where it lists the conf (inspect conf, Flower)
        "crypto_ml_model_store_ttl": settings.model_store_ttl,
        # a sentinel:// store's master (Celery's conf listings mask *PASS* keys)
        "crypto_ml_sentinel_master": settings.sentinel_master,
        "crypto_ml_sentinel_password": settings.sentinel_password,
        "crypto_ml_log_format": settings.log_format,
        "crypto_ml_heartbeat_seconds": settings.heartbeat_seconds,
        "crypto_ml_dead_after_seconds": settings.dead_after_seconds,
    }


def create_app(settings: Settings) -> Celery:
    """A Celery app configured from ``settings``, with the forecast task registered."""
    app = Celery("crypto_ml", include=["crypto_ml.worker.tasks"])
    app.conf.update(celery_config(settings))
    return app


@functools.cache
def default_app() -> Celery:
    """The app of ``celery -A crypto_ml``, configured from the environment once."""
    return create_app(Settings.from_env())


@signals.worker_init.connect
def _refuse_wrong_credentials(sender: Any = None, **_: Any) -> None:
    """Stop a worker at once when Redis refuses its user or password (Celery would retry
    forever), or when its URL is another of our users' (the manager's, which ``cluster up``
    says to export: Celery would fail on the first key it may not touch, with a traceback); the
    message names the user, never the password."""
    url = getattr(getattr(sender, "app", None), "conf", {}).get("broker_url")
    try:
        if url and (why := wrong_user(url, WORKER_ROLE, "take the workers' queues")):
            raise BrokerAuthFailed(why)
        check_credentials(url) if url else None
    except BrokerAuthFailed as exc:
        logging.getLogger("crypto_ml.worker").critical("crypto-ml: error: %s", exc)
        raise SystemExit(2) from None


@signals.worker_init.connect
def _free_prefetch_on_failed_acks(**_: Any) -> None:
    """See :mod:`crypto_ml.worker.acks`: a worker cut off from Redis mid-ack serves again."""
    acks.install()


@signals.worker_init.connect
def _warm_up_statistical(sender: Any = None, **_: Any) -> None:
    """With CRYPTO_ML_PRELOAD_STATISTICAL=1, fit each statsforecast model once in the worker
    parent, so every forked pool process has numba's code compiled (a pool process's first ets,
    theta or arima task would otherwise pay 4-9 s: see bench/warmup.py). Off by default: the
    embedded cluster of a linear run should not pay it."""
    conf = getattr(getattr(sender, "app", None), "conf", None)
    if conf is not None and conf.get("crypto_ml_preload_statistical"):
        warm_up_statistical()


@signals.worker_init.connect
def _import_deep_dependencies(sender: Any = None, **_: Any) -> None:
    """In the parent of a worker that serves the gpu queue, import scikit-learn (with SciPy and
    pandas), which Keras loads too, so that every forked pool process has them and a deep
    task's first run does not pay for them. A cpu-only worker (the embedded cluster of a cheap
    run) skips this: about 1 s of CPU per worker, and the cheap models need none of it."""
    queues = getattr(getattr(getattr(sender, "app", None), "amqp", None), "queues", None)
    consuming = set(getattr(queues, "consume_from", None) or ())
    if consuming and GPU_QUEUE not in consuming:
        return
    import sklearn.linear_model  # noqa: F401  (lazy: only worker parents pay for it)


@signals.worker_init.connect
def _share_cores(sender: Any = None, **_: Any) -> None:
    """Before the pool forks, give each child an equal share of the cores for its math threads
    (variables already set, e.g. by the worker container's entry point, win)."""
    concurrency = getattr(sender, "concurrency", None) or 1
    for var, value in threads_env(os.cpu_count() or 1, int(concurrency)).items():
        os.environ.setdefault(var, value)


@signals.worker_process_init.connect
def _whole_imports(**_: Any) -> None:
    """In each pool process, a soft time limit waits for an import under way to finish
    (:mod:`crypto_ml.worker.imports`): no module is left half-initialised for later tasks."""
    imports.install()


@signals.worker_process_init.connect
def _preload_keras(**_: Any) -> None:
    """In each new pool process (never the forking parent), load Keras if configured to."""
    if current_app.conf.get("crypto_ml_preload_keras"):
        warm_up()


@signals.worker_ready.connect
def _start_heartbeat(sender: Any = None, **_: Any) -> None:
    """The worker beats in Redis and redelivers dead workers' tasks (crypto_ml.worker.liveness)."""
    pool, controller = getattr(sender, "pool", None), getattr(sender, "controller", None)
    queues = getattr(getattr(sender.app, "amqp", None), "queues", None)

    def slots() -> int:  # an autoscaling worker's ceiling, as Celery's own limit takes it
        return int(getattr(controller, "max_concurrency", None)
                   or getattr(pool, "num_processes", None) or 1)

    liveness.start(sender.app, sender.hostname, slots,
                   ",".join(sorted(getattr(queues, "consume_from", None) or ())))


@signals.task_received.connect
def _record_delivery(**_: Any) -> None:
    liveness.wake()


@signals.worker_shutdown.connect
def _stop_heartbeat(**_: Any) -> None:
    liveness.stop()


@signals.after_setup_logger.connect
@signals.after_setup_task_logger.connect
def _log_format(logger: logging.Logger | None = None, **_: Any) -> None:
    """Workers write JSON log lines when the app's settings say ``log_format=json``."""
    if logger is not None:
        use_format(logger, current_app.conf.get("crypto_ml_log_format", "text"))
