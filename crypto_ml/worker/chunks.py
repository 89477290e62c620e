"""What crosses the wire for a table run: a chunk of many series, and its forecasts.

A chunk message (task ``crypto_ml.forecast_table``, always msgpack) carries the
series of one chunk of a long table as one float64 buffer and their lengths,
not as a list per series: a million series pack and unpack at memory speed.
The buffer travels beside the message: the sender stores it in Redis under the
task's id (:func:`payload_key`) and the worker reads it from there
(:func:`fetch_payload`), because the broker's envelope would base64 it, wrap it
in JSON and copy it again into its list of taken messages (a message may still
carry it inline, as ``values``). The worker checks it here (:func:`parse_chunk`)
before any model runs; the buffer is read with ``numpy.frombuffer`` as float64,
nothing else. The result
holds, per model, ``mean`` and ``lo-<level>`` / ``hi-<level>``, each ``rows * horizon``
float64 values (NaN where a series failed): bytes when results travel as msgpack, a
list of floats when they travel as JSON; and the failures by row. A chunk may name a
``fallback`` model (statsforecast's ``fallback_model``): a series a model fails on gets the
fallback's forecast in that model's columns, and its failure reads :data:`FILLED` first.
The manager knows which series each row is (:mod:`crypto_ml.dispatch.table_run`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from crypto_ml.core import keys
from crypto_ml.core.errors import InvalidTaskInput
from crypto_ml.models import PARAMS, model_class
from crypto_ml.models.batch import BatchPrediction, predict_batch
from crypto_ml.models.intervals import check_levels, level_key

TABLE_TASK_NAME = "crypto_ml.forecast_table"
#: The largest chunk a worker accepts: 64 MiB of closes.
MAX_CHUNK_VALUES = 8 * 1024 * 1024
#: How a chunk whose stored values are gone fails (its sender stores them again and resends).
VALUES_GONE = "its values are no longer in Redis"
#: How the failure of a series that the fallback model forecast instead begins (+ its name).
FILLED = "filled by fallback "


def payload_key(task_id: str) -> str:
    """The Redis key of the values of chunk task ``task_id``, stored beside its message."""
    return keys.PAYLOAD + task_id


def fetch_payload(client: Any, task_id: str) -> bytes:
    """The values stored beside chunk task ``task_id``; InvalidTaskInput when they are gone."""
    values = client.get(payload_key(task_id))
    if values is None:
        raise _bad(f"{VALUES_GONE} (freed once its run read this chunk's result, so a late "
                   "duplicate finds none; or lost with a restart of Redis): its run stores them "
                   "again and resends it once; if the run has stopped, run the table again: it "
                   "resumes where it stopped")
    return bytes(values)


def _bad(problem: str) -> InvalidTaskInput:
    return InvalidTaskInput(f"invalid table chunk: {problem}")


@dataclass(frozen=True)
class ModelSpec:
    """One model of a chunk: its name, options and history window (0: all)."""

    model: str
    params: dict[str, Any]
    max_points: int


@dataclass(frozen=True)
class Chunk:
    """A checked chunk message."""

    models: tuple[ModelSpec, ...]
    horizon: int
    levels: tuple[float, ...]
    series: list[np.ndarray]
    fallback: ModelSpec | None = None


def _spec(m: ModelSpec) -> dict[str, Any]:
    return {"model": m.model, "params": m.params, "max_points": m.max_points}


def chunk_kwargs(models: Sequence[ModelSpec], horizon: int, levels: Sequence[float],
                 lengths: np.ndarray, values: np.ndarray, fallback: ModelSpec | None = None
                 ) -> dict[str, Any]:
    """The task's keyword arguments for the series ``values`` cut at ``lengths``."""
    kwargs = {"models": [_spec(m) for m in models],
              "horizon": horizon, "levels": list(levels),
              "lengths": np.asarray(lengths, dtype=np.int64).tolist(),
              "values": np.ascontiguousarray(values, dtype="<f8").tobytes()}
    if fallback is not None:
        kwargs["fallback"] = _spec(fallback)
    return kwargs


def _models(raw: object, field: str = "models") -> tuple[ModelSpec, ...]:
    if not isinstance(raw, list) or not raw or not all(isinstance(m, dict) for m in raw):
        raise _bad(f"'{field}' must be a non-empty list of {{model, params, max_points}}")
    specs = []
    for item in raw:
        name, params, window = item.get("model"), item.get("params") or {}, item.get("max_points")
        if not isinstance(name, str) or name not in PARAMS:
            raise _bad(f"unknown model {name!r}; choose one of {', '.join(PARAMS)}")
        if not isinstance(params, dict) or set(params) - PARAMS[name]:
            raise _bad(f"model {name!r} does not take {sorted(set(params) - PARAMS[name])}")
        if isinstance(window, bool) or not isinstance(window, int) or window < 0:
            raise _bad(f"'max_points' of {name!r} must be an integer >= 0, got {window!r}")
        specs.append(ModelSpec(name, dict(params), window))
    return tuple(specs)


def _series(lengths: object, values: object, max_series: int) -> list[np.ndarray]:
    if not isinstance(values, bytes | bytearray) or len(values) % 8:
        raise _bad("'values' must be float64 bytes (send the chunk with msgpack)")
    if len(values) > 8 * MAX_CHUNK_VALUES:
        raise _bad(f"{len(values) // 8} values is above the cap of {MAX_CHUNK_VALUES}")
    if not isinstance(lengths, list) or not all(
            isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= max_series
            for n in lengths):
        raise _bad(f"'lengths' must be a list of integers between 0 and {max_series}")
    flat = np.frombuffer(values, dtype="<f8")
    if sum(lengths) != len(flat):
        raise _bad(f"'lengths' add up to {sum(lengths)}, but 'values' holds {len(flat)}")
    ends = np.cumsum(lengths)
    return [flat[end - n : end] for n, end in zip(lengths, ends.tolist(), strict=True)]


def parse_chunk(kwargs: dict[str, Any], max_horizon: int, max_series: int) -> Chunk:
    """Check a chunk message; InvalidTaskInput naming the first bad argument."""
    horizon = kwargs.get("horizon")
    if isinstance(horizon, bool) or not isinstance(horizon, int) or not 1 <= horizon <= max_horizon:
        raise _bad(f"'horizon' must be an integer between 1 and {max_horizon}, got {horizon!r}")
    fallback = kwargs.get("fallback")
    return Chunk(_models(kwargs.get("models")), horizon, check_levels(kwargs.get("levels") or []),
                 _series(kwargs.get("lengths"), kwargs.get("values"), max_series),
                 None if fallback is None else _models([fallback], "fallback")[0])


def _floats(matrix: np.ndarray, binary: bool) -> list[float] | bytes:
    flat = np.ascontiguousarray(matrix, dtype="<f8").reshape(-1)
    return flat.tobytes() if binary else flat.tolist()


def result_names(levels: Sequence[float]) -> list[str]:
    """The columns a chunk's result holds per model: ``mean``, then ``lo-<level>`` and
    ``hi-<level>`` for each level."""
    return ["mean"] + [f"{side}-{level_key(lv)}" for lv in levels for side in ("lo", "hi")]


def column(values: list[float] | bytes) -> np.ndarray:
    """A result column as float64, whichever way it travelled."""
    if isinstance(values, bytes | bytearray):
        return np.frombuffer(values, dtype="<f8")
    return np.asarray(values, dtype=np.float64)


def _predict(spec: ModelSpec, series: list[np.ndarray], chunk: Chunk) -> BatchPrediction:
    """``spec``'s model over ``series`` (each cut to its window)."""
    if spec.max_points:
        series = [s[-spec.max_points:] for s in series]
    return predict_batch(model_class(spec.model), series, chunk.horizon, chunk.levels,
                         spec.params)


def _fill(out: BatchPrediction, fallback: ModelSpec, chunk: Chunk) -> None:
    """The rows of ``out`` that failed, forecast by ``fallback`` instead where it can; their
    reasons say so (:data:`FILLED`), or that the fallback failed too."""
    rows = sorted(out.errors)
    instead = _predict(fallback, [chunk.series[row] for row in rows], chunk)
    for i, row in enumerate(rows):
        if i in instead.errors:
            out.errors[row] += f"; the fallback {fallback.model} failed too: {instead.errors[i]}"
            continue
        out.forecast[row] = instead.forecast[i]
        for key, (lower, upper) in instead.bands.items():
            out.bands[key][0][row], out.bands[key][1][row] = lower[i], upper[i]
        out.errors[row] = f"{FILLED}{fallback.model}: {out.errors[row]}"


def run_chunk(chunk: Chunk, worker: str, binary: bool = False) -> dict[str, Any]:
    """Every model of ``chunk`` over its series: the result, its columns float64 bytes when
    ``binary`` (a msgpack result backend) and lists of floats otherwise (JSON)."""
    started = time.perf_counter()
    result = _result(chunk, lambda spec: _predict(spec, chunk.series, chunk), binary)
    return {**result, "fit_seconds": round(time.perf_counter() - started, 6), "worker": worker}


def failed_result(chunk: Chunk, reason: str) -> dict[str, Any]:
    """The result of a chunk whose message failed as a whole for ``reason`` (past the time
    limit, its worker lost): every model failed on every series, which the fallback model,
    if any, forecasts instead (the sender runs it: cheap, and rare)."""
    def failed(spec: ModelSpec) -> BatchPrediction:
        n, h = len(chunk.series), chunk.horizon
        return BatchPrediction(np.full((n, h), np.nan),
                               {level_key(lv): (np.full((n, h), np.nan), np.full((n, h), np.nan))
                                for lv in chunk.levels}, dict.fromkeys(range(n), reason))

    return _result(chunk, failed, binary=False)


def _result(chunk: Chunk, predict: Callable[[ModelSpec], BatchPrediction], binary: bool
            ) -> dict[str, Any]:
    forecasts: dict[str, dict[str, list[float] | bytes]] = {}
    errors: list[list[Any]] = []
    for spec in chunk.models:
        out = predict(spec)
        if chunk.fallback is not None and out.errors and chunk.fallback.model != spec.model:
            _fill(out, chunk.fallback, chunk)
        columns = {"mean": _floats(out.forecast, binary)}
        for level in chunk.levels:
            lower, upper = out.bands[level_key(level)]
            columns[f"lo-{level_key(level)}"] = _floats(lower, binary)
            columns[f"hi-{level_key(level)}"] = _floats(upper, binary)
        forecasts[spec.model] = columns
        errors += [[row, spec.model, reason] for row, reason in sorted(out.errors.items())]
    return {"rows": len(chunk.series), "forecasts": forecasts, "errors": errors}
