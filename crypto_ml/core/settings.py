"""Every setting of crypto-ml, read from the environment in one place.

The environment is read only by :meth:`Settings.from_env`, which the edges call
(the CLI, the Celery app, the embedded cluster). Library code receives a
``Settings`` or plain arguments. The table below is the single list of knobs.

========================================  ==========================  =========================================
Variable                                   Default                     Meaning
========================================  ==========================  =========================================
``CRYPTO_ML_DATA_DIR``                     ``data/crypto``             Folder of per-coin CSV files.
``CRYPTO_ML_CACHE_DIR``                    ``~/.cache/crypto-ml``      Parsed price files, reused while the files are
                                                                       unchanged (size, mtime); ``off``: no cache.
``CRYPTO_ML_BROKER_URL``                   (unset: embedded cluster)   Redis broker: ``redis://``, ``rediss://`` or
                                                                       ``sentinel://h1:26379;sentinel://h2:26379``, with
                                                                       the Redis user of this process's role:
                                                                       ``redis://worker:PASSWORD@host:6379/0``
                                                                       (users: :mod:`crypto_ml.core.acl`).
``CRYPTO_ML_RESULT_BACKEND``               the broker URL              Where task results are stored (not used
                                                                       with a command's ``--broker``).
``CRYPTO_ML_SENTINEL_MASTER``              ``mymaster``                Master name for ``sentinel://`` URLs.
``CRYPTO_ML_SENTINEL_PASSWORD``            (unset)                     Password of the sentinels themselves.
``CRYPTO_ML_SERIALIZER``                   ``msgpack``                 Wire format: ``msgpack`` (compact, fast) or ``json``.
``CRYPTO_ML_SOFT_TIME_LIMIT``              ``300``                     Seconds before a task gets SoftTimeLimitExceeded.
``CRYPTO_ML_HARD_TIME_LIMIT``              ``360``                     Seconds before the pool kills the task's process.
``CRYPTO_ML_VISIBILITY_TIMEOUT``           hard limit + 60             Last-resort net: seconds before a message held
                                                                       by no live, beating worker is redelivered.
``CRYPTO_ML_HEARTBEAT_SECONDS``            ``2``                       How often each worker beats (and sweeps).
``CRYPTO_ML_DEAD_AFTER_SECONDS``           ``10``                      Silence after which a worker is dead and its
                                                                       tasks are delivered again.
``CRYPTO_ML_MAX_DELIVERIES``               ``3``                       Runs before a redelivery fails a task.
``CRYPTO_ML_LOST_CHECK_SECONDS``           ``15``                      How often the manager looks for task messages the
                                                                       broker lost; one missing in two looks in a row
                                                                       is sent again (:mod:`crypto_ml.dispatch.lost`).
``CRYPTO_ML_RESULT_EXPIRES``               ``86400``                   Seconds a result stays in the backend.
``CRYPTO_ML_MAX_HORIZON``                  ``365``                     Largest forecast horizon a task accepts.
``CRYPTO_ML_MAX_SERIES``                   ``100000``                  Longest price series a task accepts.
``CRYPTO_ML_BATCH_SIZE``                   ``64``                      Cheap forecasts per message (1: no batching).
``CRYPTO_ML_MAX_BATCH``                    ``1000``                    Largest batch a worker accepts.
``CRYPTO_ML_PRELOAD_KERAS``                ``0``                       1: each pool process loads Keras and builds the
                                                                       networks when it starts, not at its first deep task.
``CRYPTO_ML_PRELOAD_STATISTICAL``          ``0``                       1: each worker compiles ets/theta/arima (numba) at
                                                                       start, not at its first such task (4-9 s).
``CRYPTO_ML_WORKERS``                      number of CPU cores         Worker processes of the embedded cluster.
``CRYPTO_ML_MAX_CHILD_MEMORY_MB``          ``3072``                    A pool process whose resident memory is above
                                                                       this after a task is replaced by a fresh one.
``CRYPTO_ML_FLOWER_PORT``                  ``5555``                    Port of the Flower we start.
``CRYPTO_ML_FLOWER_ADDRESS``               ``127.0.0.1``               Flower's address; others need auth.
``CRYPTO_ML_FLOWER_BASIC_AUTH``            (unset: no auth)            Flower login, ``user:pw[,u2:pw2]``.
``CRYPTO_ML_LOG_FORMAT``                   ``text``                    Log lines as ``text`` or ``json``.
``CRYPTO_ML_TASK_EVENTS``                  ``0``                       1: workers send task events and the manager
                                                                       task-sent events (for Flower; a running Flower
                                                                       also turns workers' events on, within 5 s).
``CRYPTO_ML_MODEL_STORE``                  (unset: result backend)     Where trained deep models are kept: ``redis``,
                                                                       ``redis://...``, ``sentinel://...``,
                                                                       ``s3://...``, a directory, or ``off``.
``CRYPTO_ML_MODEL_STORE_TTL``              ``604800``                  Seconds a stored model is reused (7 days).
``CRYPTO_ML_API_KEYS``                     (unset: no auth)            HTTP API keys, comma-separated (Bearer tokens).
``CRYPTO_ML_API_MAX_WAIT``                 ``60``                      Largest ``wait=S`` the HTTP API accepts.
``CRYPTO_ML_API_MAX_BODY``                 ``2000000``                 Largest HTTP request body, in bytes.
``CRYPTO_ML_API_BODY_SECONDS``             ``30``                      Seconds a request body may take to arrive
                                                                       whole (then 408, and the connection is
                                                                       closed; headers are a proxy's to bound).
``CRYPTO_ML_API_COALESCE``                 (unset: auto)               Messages of an API process in flight before
                                                                       concurrent requests' cheap forecasts share
                                                                       one; unset: one per task slot of the live
                                                                       workers (read every 5 s; 4 until known);
                                                                       0: one message per request.
``CRYPTO_ML_API_ANSWER_SECONDS``           ``300``                     Seconds an API process answers a cheap
                                                                       forecast asked again (same closes, model,
                                                                       options) with its answer; 0: never.
``CRYPTO_ML_API_JOBS_DIR``                 ``crypto-ml-jobs``          Where ``POST /v1/jobs`` writes its outputs.
========================================  ==========================  =========================================
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import cast

from crypto_ml.core.errors import ConfigError
from crypto_ml.core.urls import is_sentinel, parse

DEFAULT_DATA_DIR = Path("data/crypto")
SERIALIZERS = ("json", "msgpack")
TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off")
LOG_FORMATS = ("text", "json")
#: Seconds a run waits for its forecasts unless told (``--timeout``), and its tasks' expiry.
DEFAULT_TIMEOUT = 3600.0
#: The longest wait a run takes (30 days): a task's expiry past Python's dates broke the publish
MAX_TIMEOUT = 30 * 86400.0
#: Seconds the default visibility timeout leaves above the hard time limit.
VISIBILITY_MARGIN = 60


ENV_PREFIX = "CRYPTO_ML_"
NO_CACHE = ("none", *FALSE)


def env_name(field_name: str) -> str:
    """The environment variable of a :class:`Settings` field: ``CRYPTO_ML_`` + its name."""
    return ENV_PREFIX + field_name.upper()


def _int(name: str, raw: str, minimum: int = 1, maximum: int | None = None) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer; set it to a whole number") from None
    if value < minimum:
        raise ConfigError(f"{name}={value} must be {'positive' if minimum == 1 else f'at least {minimum}'}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name}={value} must be at most {maximum}")
    return value


def check_timeout(timeout: float | None, name: str = "timeout") -> float | None:
    """``timeout``, or ConfigError unless it is None or seconds above 0, at most MAX_TIMEOUT."""
    if timeout is None:
        return None
    if (isinstance(timeout, bool) or not isinstance(timeout, numbers.Real)
            or not 0 < cast(float, timeout) <= MAX_TIMEOUT):  # NaN, 10**400 too
        raise ConfigError(f"{name} must be a number of seconds above 0, at most "
                          f"{MAX_TIMEOUT:.0f} (30 days), or None; got {timeout!r}")
    return timeout


def comma_list(text: str) -> list[str]:
    """``"a, b,,c"`` as ``["a", "b", "c"]``: every comma-separated list of names (API keys,
    ``--coins``, a Python caller's coins) is read this way."""
    return [item.strip() for item in text.split(",") if item.strip()]


def coin_list(spec: str | None) -> list[str] | None:
    """``--coins a,b`` as a list (:func:`comma_list`); None (no ``--coins``) for every coin. A ``--coins`` that
    names none (``""``, ``,``: an empty shell variable, say) is an error, not every coin."""
    if spec is None:
        return None
    names = comma_list(spec)
    if not names:
        raise ConfigError(f"--coins {spec!r} names no coin; leave --coins out for every coin")
    return names


def _bool(name: str, raw: str) -> bool:
    if raw.lower() not in TRUE + FALSE:
        raise ConfigError(f"{name}={raw!r} is neither on nor off; set it to 1 or 0")
    return raw.lower() in TRUE


def _cache_dir(raw: str) -> Path | None:
    return None if raw.lower() in NO_CACHE else Path(raw)


def _default_cache_dir(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_CACHE_HOME", "").strip() or str(Path(env.get("HOME", "~")) / ".cache")
    return Path(base).expanduser() / "crypto-ml"


#: Fields whose variable is not read by its type alone (see :func:`_parse`).
_SPECIAL: dict[str, Callable[[str], object]] = {
    "cache_dir": _cache_dir,
    "log_format": str.lower,
    "serializer": str.lower,  # JSON and json alike, as the log format
    "api_keys": lambda raw: tuple(comma_list(raw)),
    "api_coalesce": lambda raw: _int(env_name("api_coalesce"), raw, minimum=0),
    "api_answer_seconds": lambda raw: _int(env_name("api_answer_seconds"), raw, minimum=0),
    "flower_port": lambda raw: _int(env_name("flower_port"), raw, maximum=65535),
}


def _parse(name: str, kind: str, raw: str) -> object:
    """The value of field ``name`` (annotated ``kind``) from its non-empty variable."""
    if name in _SPECIAL:
        return _SPECIAL[name](raw)
    if kind == "int":
        return _int(env_name(name), raw)
    if kind == "bool":
        return _bool(env_name(name), raw)
    if kind.startswith("Path"):
        return Path(raw)
    return raw


def _valid_auth(spec: str) -> bool:
    pairs = [pair.partition(":") for pair in spec.split(",")]
    return all(user and sep and password for user, sep, password in pairs)


#: The URL schemes a model store may name (else a directory, ``redis`` or ``off``)
#: model stores in a Redis (``sentinel://`` finds the master as the broker's URL does)
REDIS_STORES = ("redis://", "rediss://", "unix://", "sentinel://")
STORE_SCHEMES = (*REDIS_STORES, "s3://", "file://")


def model_store_problem(spec: str | None) -> str | None:
    """Why ``CRYPTO_ML_MODEL_STORE`` names no store (:mod:`crypto_ml.worker.model_store`), or
    None: checked where settings are read, so a wrong one stops a run before any work."""
    spec = (spec or "redis").strip()
    if spec.startswith("s3://") and not spec.removeprefix("s3://").partition("/")[0]:
        return f"CRYPTO_ML_MODEL_STORE={spec!r}: name a bucket, s3://BUCKET/prefix"
    if "://" in spec and not spec.startswith(STORE_SCHEMES):  # the rest may hold a password
        return (f"CRYPTO_ML_MODEL_STORE={spec.partition('://')[0]}://...: use redis, "
                "redis://..., sentinel://..., s3://BUCKET/prefix, a directory or file:///path, "
                "or off")
    if spec.startswith(REDIS_STORES):
        return _redis_url_problem(spec)
    return None


def _redis_url_problem(url: str) -> str | None:
    """Why redis-py cannot use ``url`` (a port that is no number...); the URL, which may hold
    a password, is not shown."""
    from redis.connection import parse_url  # lazy: settings load where redis is not needed

    try:
        parse(url) if is_sentinel(url) else parse_url(url)  # a list only of sentinels
    except (ValueError, ConfigError) as exc:
        return (f"CRYPTO_ML_MODEL_STORE is no Redis URL ({exc}); give "
                "redis://[USER:PASSWORD@]HOST:PORT/DB or sentinel://HOST:PORT[;...]")
    return None


@dataclass(frozen=True)
class Settings:
    """Configuration of one crypto-ml process; see the module docstring for each field."""

    data_dir: Path = DEFAULT_DATA_DIR
    cache_dir: Path | None = None  # None: no cache (from_env defaults it to ~/.cache/crypto-ml)
    broker_url: str | None = None
    result_backend: str | None = None
    sentinel_master: str = "mymaster"
    sentinel_password: str | None = field(default=None, repr=False)
    serializer: str = "msgpack"
    soft_time_limit: int = 300
    hard_time_limit: int = 360
    visibility_timeout: int = hard_time_limit + VISIBILITY_MARGIN  # from_env: follows the hard limit
    heartbeat_seconds: int = 2
    dead_after_seconds: int = 10
    max_deliveries: int = 3
    lost_check_seconds: int = 15
    result_expires: int = 86400
    max_horizon: int = 365
    max_series: int = 100_000
    batch_size: int = 64
    max_batch: int = 1000
    preload_keras: bool = False
    preload_statistical: bool = False
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    max_child_memory_mb: int = 3072
    flower_port: int = 5555
    flower_address: str = "127.0.0.1"
    flower_basic_auth: str | None = field(default=None, repr=False)
    log_format: str = "text"
    task_events: bool = False
    model_store: str | None = None
    model_store_ttl: int = 7 * 86400
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    api_max_wait: int = 60
    api_max_body: int = 2_000_000
    api_body_seconds: int = 30
    api_coalesce: int | None = None  # None: the live workers' task slots
    api_answer_seconds: int = 300
    api_jobs_dir: Path = Path("crypto-ml-jobs")

    def __post_init__(self) -> None:
        if self.log_format not in LOG_FORMATS:
            raise ConfigError(f"CRYPTO_ML_LOG_FORMAT={self.log_format!r} is unknown; use one of "
                              f"{', '.join(LOG_FORMATS)}")
        if self.flower_basic_auth is not None and not _valid_auth(self.flower_basic_auth):
            raise ConfigError("CRYPTO_ML_FLOWER_BASIC_AUTH must be user:password[,user2:password2]"
                              " with neither part empty")
        if self.serializer not in SERIALIZERS:
            raise ConfigError(f"CRYPTO_ML_SERIALIZER={self.serializer!r} is not allowed (only "
                              f"formats that cannot run code); use one of {', '.join(SERIALIZERS)}")
        if (why := model_store_problem(self.model_store)) is not None:
            raise ConfigError(why)
        if self.hard_time_limit <= self.soft_time_limit:
            raise ConfigError(f"CRYPTO_ML_HARD_TIME_LIMIT={self.hard_time_limit} must be above "
                              f"CRYPTO_ML_SOFT_TIME_LIMIT={self.soft_time_limit}")
        if self.dead_after_seconds < 2 * self.heartbeat_seconds:
            raise ConfigError("CRYPTO_ML_DEAD_AFTER_SECONDS must be at least twice "
                              "CRYPTO_ML_HEARTBEAT_SECONDS, or a live worker looks dead")
        if self.visibility_timeout < 2 * self.dead_after_seconds:
            raise ConfigError(
                f"CRYPTO_ML_VISIBILITY_TIMEOUT={self.visibility_timeout} must be at least twice "
                f"CRYPTO_ML_DEAD_AFTER_SECONDS={self.dead_after_seconds}, or a live worker's tasks "
                "are delivered twice: raise the visibility timeout"
            )

    @property
    def backend_url(self) -> str | None:
        """The result backend: explicit, else the broker."""
        return self.result_backend or self.broker_url

    def horizon_problem(self, horizon: int) -> str | None:
        """Why ``horizon`` is more than the workers accept (said the same by every entry
        point, each naming its own option), or None."""
        if horizon > self.max_horizon:
            return f"must be at most {self.max_horizon} (CRYPTO_ML_MAX_HORIZON), got {horizon}"
        return None

    def window_problem(self, closes: int) -> str | None:
        """Why a window of ``closes`` is more than workers of these settings accept, or None."""
        if closes > self.max_series:
            return (f"{closes} closes is above CRYPTO_ML_MAX_SERIES={self.max_series} (here, and "
                    "on workers that share this setting): fit on fewer (--max-points, "
                    "max_points) or raise it")
        return None

    def with_broker(self, url: str | None) -> Settings:
        """A copy pointing at another broker (and its default result backend)."""
        if url is None:
            return self
        return replace(self, broker_url=url, result_backend=None)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read every ``CRYPTO_ML_*`` variable once: each field's variable is
        :func:`env_name` of it, and an unset or empty one leaves the field's default."""
        env = os.environ if env is None else env
        values: dict[str, object] = {"cache_dir": _default_cache_dir(env)}
        for f in fields(cls):
            raw = env.get(env_name(f.name), "").strip()
            if raw:
                values[f.name] = _parse(f.name, str(f.type), raw)
        if "visibility_timeout" not in values:  # follows the hard limit unless set
            hard = cast(int, values.get("hard_time_limit", cls.hard_time_limit))
            values["visibility_timeout"] = hard + VISIBILITY_MARGIN
        return cls(**values)  # type: ignore[arg-type]


#: Math libraries' thread-pool sizes, set per worker process so that processes share the cores.
THREAD_VARS = ("TF_NUM_INTRAOP_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
               "MKL_NUM_THREADS")


def threads_env(cores: int, processes: int) -> dict[str, str]:
    """Math-library thread counts that share ``cores`` among ``processes`` pool processes
    (the one place these counts are set: worker containers, embedded workers, benchmarks)."""
    per_process = str(max(1, cores // max(1, processes)))
    return {**dict.fromkeys(THREAD_VARS, per_process), "TF_NUM_INTEROP_THREADS": "1"}


_cached: Settings | None = None


def get_settings() -> Settings:
    """The process's settings, read from the environment on first use only.

    Only entry points (the command line, the Celery app of ``celery -A crypto_ml``,
    the historical ``crypto_ml.manager`` / ``crypto_ml.data_loader`` classes) call
    this; library classes take a ``Settings`` argument."""
    global _cached
    if _cached is None:
        _cached = Settings.from_env()
    return _cached
