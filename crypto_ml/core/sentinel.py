"""Redis Sentinel for the broker and the result backend.

A URL ``sentinel://[:PASSWORD@]HOST:PORT[/DB];sentinel://[:PASSWORD@]HOST2:PORT2;...``
lists the sentinels (not the master); the master is found by name
(``CRYPTO_ML_SENTINEL_MASTER``, default ``mymaster``) and found again after a
failover. kombu and Celery read that name from the transport options built here; the
manager's broker check, the queue-depth exporter and the HTTP API ask the sentinels with
:func:`redis_client` (:func:`async_redis_client` on asyncio). The password in the URL is
the master's; sentinels that require their own set ``CRYPTO_ML_SENTINEL_PASSWORD``.
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.sentinel import MasterNotFoundError, Sentinel

from crypto_ml.core.errors import ConfigError
from crypto_ml.core.urls import is_sentinel, parse, safe_url

#: Seconds a Celery process (worker, manager) waits on a silent Redis connection before it
#: drops it and connects again. TCP alone waits out its retransmission backoff: a link cut
#: for 60 s then healed carries data again only about 100 s after the cut.
SOCKET_TIMEOUT = 10
CONNECT_TIMEOUT = 5


def client_timeouts() -> dict[str, Any]:
    """redis-py's options for :data:`SOCKET_TIMEOUT` and :data:`CONNECT_TIMEOUT`: a command to
    a Redis that stopped answering (paused, cut off) fails instead of waiting for good."""
    return {"socket_timeout": SOCKET_TIMEOUT, "socket_connect_timeout": CONNECT_TIMEOUT,
            "socket_keepalive": True}


def link_options() -> dict[str, Any]:
    """kombu's transport options for :func:`client_timeouts`.

    A blocking command times out; the connection kombu's event loop waits on (BRPOP, where
    no socket timeout applies) is dropped once its reply is ``health_check_interval``
    overdue, checked that often: within about 11 s of silence."""
    return {**client_timeouts(), "health_check_interval": 5}


def transport_options(url: str | None, master: str, password: str | None) -> dict[str, Any]:
    """Transport options kombu (broker) and Celery (backend) need for ``url``; {} unless
    it is a sentinel URL."""
    if not is_sentinel(url):
        return {}
    # the sentinels are asked again after every reconnect: a connection to one of them needs
    # the same timeouts (redis-py gives them none once sentinel_kwargs is set)
    sentinel_kwargs: dict[str, Any] = {"socket_timeout": SOCKET_TIMEOUT,
                                       "socket_connect_timeout": CONNECT_TIMEOUT}
    if password:
        sentinel_kwargs["password"] = password
    return {"master_name": master, "sentinel_kwargs": sentinel_kwargs}


def redis_problem(exc: BaseException) -> str:
    """A Redis error said short and safe: redis-py's "no master" error prints every client it
    tried, passwords and all."""
    if isinstance(exc, MasterNotFoundError):
        return "no Sentinel there names the master; check the URL and CRYPTO_ML_SENTINEL_MASTER"
    return f"{exc}"[:300]


def redis_client(url: str, master: str, sentinel_password: str | None = None,
                 **kwargs: Any) -> redis.Redis:
    """A client of the Redis behind ``url``: the current master for a sentinel URL."""
    client: redis.Redis = _client(redis.Redis, Sentinel, url, master, sentinel_password, kwargs)
    return client


def async_redis_client(url: str, master: str, sentinel_password: str | None = None,
                       **kwargs: Any) -> aioredis.Redis:
    """:func:`redis_client` for asyncio code (the HTTP API): the same URLs, Sentinel too."""
    client: aioredis.Redis = _client(aioredis.Redis, AsyncSentinel, url, master,
                                     sentinel_password, kwargs)
    return client


def _client(redis_class: Any, sentinel_class: Any, url: str, master: str,
            sentinel_password: str | None, kwargs: dict[str, Any]) -> Any:
    try:
        return _connect(redis_class, sentinel_class, url, master, sentinel_password, kwargs)
    except ValueError as exc:  # redis-py's: no such scheme, a port that is no number...
        raise ConfigError(f"{safe_url(url)} is no Redis URL ({exc}); give redis://[USER:"
                          "PASSWORD@]HOST:PORT/DB, rediss://... or sentinel://...") from None


def _connect(redis_class: Any, sentinel_class: Any, url: str, master: str,
             sentinel_password: str | None, kwargs: dict[str, Any]) -> Any:
    if not is_sentinel(url):
        return redis_class.from_url(url, **kwargs)
    hosts, password, db, username = parse(url)
    sentinel_kwargs = {k: v for k, v in kwargs.items() if k.startswith("socket_")}
    if sentinel_password:
        sentinel_kwargs["password"] = sentinel_password
    sentinels = sentinel_class(hosts, sentinel_kwargs=sentinel_kwargs, **kwargs)
    return sentinels.master_for(master, username=username, password=password, db=db)


#: ``sh -c`` script of the shipped Sentinel containers (docker-compose.sentinel.yml,
#: k8s/overlays/sentinel): writes the Sentinel's config file (argument 1) from the environment
#: unless one is there (the Sentinel rewrites it with what it learns: the current master after
#: a failover, the other Sentinels), then runs ``redis-server FILE --sentinel``. Quorum 2 of
#: three; the Sentinel logs in to the data nodes as the ACL user ``sentinel``
#: (REDIS_SENTINEL_PASSWORD) and clients log in to it with CRYPTO_ML_SENTINEL_PASSWORD.
#: Announces its host name (plus SENTINEL_DOMAIN) instead of an address that changes.
SENTINEL_START = (
    'set -eu; conf="$1"; umask 077; name="${CRYPTO_ML_SENTINEL_MASTER:-mymaster}"; '
    'if [ ! -s "$conf" ]; then printf "%s\\n" "port 26379" "dir $(dirname "$conf")" '
    '"sentinel resolve-hostnames yes" "sentinel announce-hostnames yes" '
    '"sentinel announce-ip $(hostname)${SENTINEL_DOMAIN:-}" '
    '"requirepass ${CRYPTO_ML_SENTINEL_PASSWORD:?set CRYPTO_ML_SENTINEL_PASSWORD}" '
    '"sentinel sentinel-pass ${CRYPTO_ML_SENTINEL_PASSWORD}" '
    '"sentinel monitor $name ${SENTINEL_MASTER_HOST:?set SENTINEL_MASTER_HOST} 6379 2" '
    '"sentinel auth-user $name sentinel" '
    '"sentinel auth-pass $name ${REDIS_SENTINEL_PASSWORD:?set REDIS_SENTINEL_PASSWORD}" '
    '"sentinel down-after-milliseconds $name ${SENTINEL_DOWN_AFTER_MS:-5000}" '
    '"sentinel failover-timeout $name 60000" > "$conf"; fi; '
    'exec redis-server "$conf" --sentinel')


def sentinel_command(conf: str) -> list[str]:
    """A Sentinel container's command: :data:`SENTINEL_START` with its config file ``conf``."""
    return ["sh", "-c", SENTINEL_START, "sentinel-start", conf]
