"""Where a run's work goes: the configured broker, checked, or an embedded cluster.

:func:`open_cluster` makes that choice for every entry point that dispatches (the
command line's :class:`~crypto_ml.dispatch.manager.CryptoManager` and the HTTP API's
runs): with a broker configured it checks that the broker and the result backend
answer; without one it starts a local Redis and workers for the block and stops them
after. :func:`check_broker` is the one check of a configured broker.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import redis

from crypto_ml.core.errors import BrokerUnavailable
from crypto_ml.core.logins import auth_failure
from crypto_ml.core.sentinel import redis_client, redis_problem
from crypto_ml.core.settings import Settings
from crypto_ml.core.urls import safe_url
from crypto_ml.dispatch.cluster import LocalCluster

USE_YOUR_OWN = "set CRYPTO_ML_BROKER_URL to use your own cluster"
BACKEND_HINT = "fix CRYPTO_ML_RESULT_BACKEND, or unset it to keep results in the broker"


def check_broker(url: str, settings: Settings | None = None,
                 hint: str = "fix --broker / CRYPTO_ML_BROKER_URL, or unset it to run on the "
                 "embedded local cluster", what: str = "broker") -> None:
    """Raise BrokerUnavailable, naming the (password-free) URL and ending with ``hint``,
    unless Redis answers a ping (for ``sentinel://``: the master the sentinels name)."""
    settings = settings or Settings()
    try:
        redis_client(url, settings.sentinel_master, settings.sentinel_password,
                     socket_connect_timeout=3, socket_timeout=3).ping()
    except redis.AuthenticationError as exc:  # wrong user or password: no point waiting
        raise auth_failure(url, exc) from None
    except (redis.RedisError, OSError, ValueError) as exc:
        raise BrokerUnavailable(
            f"cannot reach the {what} at {safe_url(url)} ({redis_problem(exc)}); start Redis "
            f"there, {hint}") from None


def launch_embedded(settings: Settings, say: Callable[[str], None],
                    hint: str = USE_YOUR_OWN, **options: object) -> LocalCluster:
    """Spawn an embedded cluster's processes (Redis ready, workers starting), saying so."""
    cluster = LocalCluster(workers=settings.workers, **options)  # type: ignore[arg-type]
    say(f"no broker configured: running embedded (local redis-server + {cluster.n_workers} "
        f"celery worker(s)); {hint}")
    return cluster.launch()


@contextlib.contextmanager
def open_cluster(settings: Settings, say: Callable[[str], None] = print,
                 launched: LocalCluster | None = None, idle: Callable[[], bool] = lambda: False,
                 hint: str = USE_YOUR_OWN, **options: object
                 ) -> Iterator[tuple[Settings, LocalCluster | None]]:
    """``(settings whose broker answers, the embedded cluster or None)`` for the block.

    With a broker configured: that broker and the result backend, checked. Without: an
    embedded cluster (``launched`` if the caller spawned it early, else one of
    ``options``, announced with ``hint``), ready, and stopped when the block ends: at once if ``idle()`` says
    every result is in, after a warm shutdown otherwise, a cold one on Ctrl-C.
    """
    if settings.broker_url:
        check_broker(settings.broker_url, settings)
        if settings.backend_url != settings.broker_url:
            check_broker(settings.backend_url or "", settings, BACKEND_HINT, "result backend")
        yield settings, None
        return
    cluster = launched or launch_embedded(settings, say, hint, **options)
    try:
        cluster.start()
        yield settings.with_broker(cluster.broker_url), cluster
    except BaseException as exc:
        cluster.stop(graceful=not isinstance(exc, KeyboardInterrupt))
        raise
    cluster.stop(idle=idle())
