"""Trained deep models, saved once and reused: the model store.

A model declared ``stored`` (the deep ones) fitted for one (series, model, options,
data) is saved under a key that hashes exactly those four (every option's value, the
defaults filled in, so ``epochs=1`` given or left out names one entry; plus the store
format and package version). What it saves is the model's own
:class:`~crypto_ml.models.state.ModelState` (plain data: a JSON header and named
arrays, see :meth:`~crypto_ml.models.base.Forecaster.state`); the store packs it
into bytes and back and never looks inside. A later request with the same key
forecasts from the saved model without training; new data (a new last close, a
changed history) gives a new key, so it trains again; ``retrain`` forces a fit
and overwrites the entry. The key does not hold the horizon: one fit serves any.
An entry also keeps the last prediction made from it: the same horizon and levels are
read without loading the network (any worker answers in milliseconds, even one that has
never imported the deep-learning backend); any other runs the restored network (no
training) and saves its prediction. A shorter horizon is not cut from a longer path:
its conformal intervals come from its own walk-forward errors.

Where entries live (``CRYPTO_ML_MODEL_STORE``):

* unset or ``redis``: the result backend's Redis, each entry expiring after
  ``CRYPTO_ML_MODEL_STORE_TTL`` seconds (7 days);
* ``redis://...`` / ``rediss://...``: another Redis, same expiry; or ``sentinel://...``:
  the master that Sentinels name (``CRYPTO_ML_SENTINEL_MASTER``), found again after a
  failover, as for the broker;
* a directory (``/path`` or ``file:///path``): one ``<key>.npz`` file per entry,
  written atomically; entries older than the TTL are ignored and retrained;
* ``s3://bucket/prefix``: one object per entry in an S3-compatible bucket (AWS, MinIO,
  Ceph...), reached through boto3 with its usual configuration (``AWS_ACCESS_KEY_ID``,
  ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL_S3``); entries
  older than the TTL are ignored, as in a directory;
* ``off``: no store, every request trains.

An entry is one ``.npz`` archive (the state's arrays, named ``state_<name>``, and the
saved prediction's, plus a JSON header stored as bytes), read back with
``allow_pickle=False``: nothing in the store is ever unpickled. A store that fails
(Redis down, unreadable file, an entry of another format or model) is logged and the
model is trained as if there were no entry: the store only ever saves time, it never
fails a forecast. Only the workers read and write it, so ``send-tasks``, scheduled
jobs and the HTTP API share entries.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import json
import logging
import os
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
import redis
from redis.sentinel import MasterNotFoundError

from crypto_ml.core import keys
from crypto_ml.core.errors import ConfigError, CryptoMLError
from crypto_ml.core.sentinel import CONNECT_TIMEOUT, redis_client
from crypto_ml.core.settings import REDIS_STORES, Settings, model_store_problem
from crypto_ml.models.base import Forecaster
from crypto_ml.models.intervals import DEFAULT_LEVELS, Prediction, check_levels
from crypto_ml.models.state import ModelState

log = logging.getLogger(__name__)

FORMAT = 3  # 3: a state names the closes it was fitted on
try:  # a new release of the models never reads an older one's entries
    _VERSION = importlib.metadata.version("crypto-ml")
except importlib.metadata.PackageNotFoundError:  # pragma: no cover - run from a source tree
    _VERSION = "unknown"
#: An entry's arrays that are the model's state (the others hold the saved prediction).
_STATE = "state_"
DEFAULT_TTL = Settings.model_store_ttl
#: Errors a store may raise that must not fail a forecast (a truncated entry: the last three).
_STORE_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, KeyError, CryptoMLError,
                                                  zipfile.BadZipFile, EOFError, zlib.error,
                                                  redis.RedisError)


class StoreUnavailable(CryptoMLError):
    """A model store could not be read or written (the forecast trains instead)."""


class ModelStore(Protocol):
    """Bytes by key; ``get`` returns None for a missing or expired entry."""

    def get(self, key: str) -> bytes | None: ...

    def put(self, key: str, blob: bytes) -> None: ...


class RedisModelStore:
    """Entries as Redis strings ``crypto_ml:model:<key>`` expiring after ``ttl`` seconds."""

    def __init__(self, client: redis.Redis, ttl: int = DEFAULT_TTL) -> None:
        self.client = client
        self.ttl = ttl

    def get(self, key: str) -> bytes | None:
        try:
            value = self.client.get(keys.MODEL + key)
        except MasterNotFoundError:
            raise _no_master() from None
        return bytes(value) if value is not None else None  # type: ignore[arg-type]

    def put(self, key: str, blob: bytes) -> None:
        try:
            self.client.set(keys.MODEL + key, blob, ex=self.ttl)
        except MasterNotFoundError:
            raise _no_master() from None


def _no_master() -> StoreUnavailable:
    """redis-py's own words print the whole client, password fields and all."""
    return StoreUnavailable("no Sentinel of the sentinel:// store names its master; check the "
                            "URL, CRYPTO_ML_SENTINEL_MASTER and that the Sentinels run")


class DirectoryModelStore:
    """Entries as ``<dir>/<key>.npz``; an entry older than ``ttl`` seconds counts as missing."""

    def __init__(self, root: Path, ttl: int = DEFAULT_TTL) -> None:
        self.root = root
        self.ttl = ttl

    def get(self, key: str) -> bytes | None:
        path = self.root / f"{key}.npz"
        try:
            if time.time() - path.stat().st_mtime > self.ttl:
                return None
            return path.read_bytes()
        except FileNotFoundError:
            return None

    def put(self, key: str, blob: bytes) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(blob)
            os.replace(tmp, self.root / f"{key}.npz")  # readers see the old file or the new one
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


class S3ModelStore:
    """Entries as objects ``s3://<bucket>/<prefix>/<key>.npz`` of any S3-compatible store;
    an object older than ``ttl`` seconds counts as missing (a bucket lifecycle rule can
    delete them). S3 errors (no such bucket, refused credentials, endpoint down) raise
    :class:`StoreUnavailable` naming the bucket, so the forecast trains instead."""

    def __init__(self, client: Any, bucket: str, prefix: str = "", ttl: int = DEFAULT_TTL,
                 clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.ttl = ttl
        self.clock = clock

    def _name(self, key: str) -> str:
        return f"{self.prefix}/{key}.npz" if self.prefix else f"{key}.npz"

    def _unavailable(self, exc: Exception) -> StoreUnavailable:
        return StoreUnavailable(f"model store s3://{self.bucket}/{self.prefix}: {exc}; check the "
                                "bucket, the AWS_* credentials and AWS_ENDPOINT_URL_S3")

    def get(self, key: str) -> bytes | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            reply = self.client.get_object(Bucket=self.bucket, Key=self._name(key))
            with reply["Body"] as body:  # closed unread when expired: the connection is freed
                if self.clock() - reply["LastModified"].timestamp() > self.ttl:
                    return None
                return bytes(body.read())
        except self.client.exceptions.NoSuchKey:
            return None
        except (BotoCoreError, ClientError) as exc:
            raise self._unavailable(exc) from None

    def put(self, key: str, blob: bytes) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:  # one PUT: readers see the old object or the new one, never a part
            self.client.put_object(Bucket=self.bucket, Key=self._name(key), Body=blob)
        except (BotoCoreError, ClientError) as exc:
            raise self._unavailable(exc) from None


def s3_client() -> Any:
    """A boto3 S3 client configured the AWS way: credentials, region and endpoint from boto3's
    own chain (``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL_S3`` for MinIO and the like, ...),
    with short timeouts so that a store that is down costs seconds, not minutes."""
    import boto3  # lazy: only workers configured with an s3:// store pay for its import
    from botocore.config import Config

    return boto3.client("s3", config=Config(connect_timeout=5, read_timeout=30,
                                            retries={"max_attempts": 2}))


def open_store(spec: str | None, backend_client: redis.Redis | None,
               ttl: int = DEFAULT_TTL, sentinel_master: str = Settings.sentinel_master,
               sentinel_password: str | None = None) -> ModelStore | None:
    """The store ``spec`` names (see the module docstring); None when it is ``off``.

    ``backend_client`` is the result backend's Redis client, the default store; the
    Sentinel options serve a ``sentinel://`` store.
    """
    if (why := model_store_problem(spec)) is not None:
        raise ConfigError(why)
    spec = (spec or "redis").strip()
    if spec.lower() in ("off", "none", "0", "false"):
        return None
    if spec.lower() == "redis":
        return RedisModelStore(backend_client, ttl) if backend_client is not None else None
    if spec.startswith(REDIS_STORES):
        client = redis_client(spec, sentinel_master, sentinel_password,
                              socket_connect_timeout=CONNECT_TIMEOUT)
        return RedisModelStore(client, ttl)
    if spec.startswith("s3://"):
        bucket, _, prefix = spec.removeprefix("s3://").partition("/")
        return S3ModelStore(s3_client(), bucket, prefix, ttl)
    return DirectoryModelStore(Path(spec.removeprefix("file://")), ttl)


def store_key(series: str, model: str, params: Mapping[str, Any],
              prices: Sequence[float]) -> str:
    """The entry of a model fitted on ``prices`` of ``series`` with ``params``: a sha256 hex."""
    data = hashlib.sha256(np.asarray(prices, dtype="<f8").tobytes()).hexdigest()
    spec = {"format": FORMAT, "version": _VERSION, "series": series,
            "model": model, "params": dict(sorted(params.items())), "data": data}
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()


# an entry: a model's state and the prediction made from it, as bytes -------------------------


def _pack(header: dict[str, Any], arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    raw = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    np.savez(buffer, __header__=raw, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def _unpack(blob: bytes) -> tuple[ModelState, dict[str, Any], dict[str, np.ndarray]]:
    """An entry's model state, and its header and arrays (those of the saved prediction)."""
    with np.load(io.BytesIO(blob), allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    header = json.loads(arrays.pop("__header__").tobytes().decode())
    if header.get("format") != FORMAT:
        raise ValueError(f"model store entry of format {header.get('format')}, not {FORMAT}")
    own = {name.removeprefix(_STATE): arrays.pop(name) for name in list(arrays)
           if name.startswith(_STATE)}
    return ModelState.from_plain(header["state"], own), header, arrays


def export_state(model: Forecaster, prediction: Prediction | None = None) -> bytes:
    """A fitted model's state (:meth:`~crypto_ml.models.base.Forecaster.state`) as one
    ``.npz`` blob, with the ``prediction`` (forecast path and interval bounds) it has made,
    if given."""
    state = model.state()
    header: dict[str, Any] = {"format": FORMAT, "state": state.meta()}
    arrays = {_STATE + name: array for name, array in state.arrays.items()}
    if prediction is not None:
        arrays["forecast"] = np.asarray(prediction.forecast, dtype=np.float64)
        header["prediction"] = {"bands": list(prediction.bands), "method": prediction.method}
        for key, (lower, upper) in prediction.bands.items():
            arrays[f"lower_{key}"] = np.asarray(lower, dtype=np.float64)
            arrays[f"upper_{key}"] = np.asarray(upper, dtype=np.float64)
    return _pack(header, arrays)


def restore_state(model: Forecaster, blob: bytes, prices: Sequence[float]) -> None:
    """Make an unfitted ``model`` (built with the entry's options) forecast as when it was
    saved, fitted on ``prices`` (the series the entry's key was made from)."""
    model.restore(_unpack(blob)[0], prices)


class Answer(NamedTuple):
    """A forecast and the store's part in it."""

    prediction: Prediction
    #: whether it came from the store (None: the store played no part, for cheap models or
    #: without a store)
    from_store: bool | None
    #: why its fit could not be saved (the next request trains again), or None
    unsaved: str | None = None


def forecast_with_store(model: Forecaster, store: ModelStore | None, *, series: str,
                        prices: Sequence[float], horizon: int,
                        levels: Sequence[float] = DEFAULT_LEVELS,
                        retrain: bool = False) -> Answer:
    """``model``'s prediction (forecast and intervals at ``levels``) of ``horizon`` closes
    after ``prices``, whether it came from the store, and why its fit was not saved.

    An entry answers without training: the same horizon and levels as it holds are read
    from it (no deep-learning backend needed, so any worker answers at once); any other
    request is computed by the network restored from its weights, and saved. A fit (a
    miss, ``retrain``, or an unusable entry) is always saved.
    """
    if store is None or not model.stored:
        model.fit(prices, coin=series)
        return Answer(model.predict(horizon, levels), None)
    key = store_key(series, model.name, model.option_values(), prices)  # defaults filled
    levels = check_levels(levels)
    if not retrain:
        try:
            blob = store.get(key)
            if blob is not None:
                state, header, arrays = _unpack(blob)
                model.restore(state, prices)  # no backend loaded: only a forecast loads it
                stored = _stored_prediction(header, arrays, horizon, levels)
                if stored is not None:
                    return Answer(stored, True)
                prediction = model.predict(horizon, levels)
                return Answer(prediction, True, _save(store, key, model, prediction))
        except _STORE_ERRORS as exc:
            log.warning("model store: entry %s unusable (%s: %s); training instead", key[:12],
                        type(exc).__name__, exc)
    model.fit(prices, coin=series)
    prediction = model.predict(horizon, levels)
    return Answer(prediction, False, _save(store, key, model, prediction))


def _stored_prediction(header: dict[str, Any], arrays: dict[str, np.ndarray], horizon: int,
                       levels: tuple[float, ...]) -> Prediction | None:
    """The entry's saved prediction if it was made for this horizon and these levels."""
    path = arrays.get("forecast")
    saved = header.get("prediction")
    if path is None or saved is None or len(path) != horizon:
        return None
    if tuple(float(key) for key in saved["bands"]) != levels:  # keys are the levels, sorted
        return None
    bands = {key: (arrays[f"lower_{key}"], arrays[f"upper_{key}"]) for key in saved["bands"]}
    return Prediction(path.copy(), bands, str(saved["method"]))


def _save(store: ModelStore, key: str, model: Forecaster, prediction: Prediction
          ) -> str | None:
    """Save the fit; why it could not be, or None."""
    try:
        store.put(key, export_state(model, prediction))
    except _STORE_ERRORS as exc:
        log.warning("model store: could not save %s (%s: %s)", key[:12], type(exc).__name__, exc)
        # one reason for every fit it refused alike: no temporary file's name, no path
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)[:200]
        return f"{type(exc).__name__}: {why}"
    return None


