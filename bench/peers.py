"""The same forecast jobs run by the peers users know: Ray local tasks and joblib (loky).

Each peer gets the same work as the cluster: one fit-and-forecast per request, the
same worker count, one math thread per worker process, and a warm-up round first
(so TensorFlow's import is not timed, as it is not for the warm cluster). Each job
returns its wall seconds and the seconds its processes spent inside the fits, timed
as the workers time theirs (``fit_seconds``), so a run can tell a faster system from
faster fits.
"""

from __future__ import annotations

import os
import time
from typing import Any

from crypto_ml.core.settings import threads_env
from crypto_ml.models import get_model
from crypto_ml.worker.requests import ForecastRequest

ONE_THREAD = threads_env(cores=1, processes=1)


def fit_forecast(model: str, params: dict[str, Any], prices: list[float], horizon: int) -> float:
    """Fit and forecast once; the seconds it took in this (peer worker) process."""
    started = time.perf_counter()
    get_model(model, **params).fit(prices).forecast(horizon)
    return time.perf_counter() - started


def _args(r: ForecastRequest) -> tuple[Any, ...]:
    return (r.model, r.params, r.prices, r.horizon)


Job = tuple[float, float]  # (wall seconds, seconds spent inside the fits, summed)


def ray_job(requests: list[ForecastRequest], workers: int) -> Job | None:
    """Ray running every request on ``workers`` local worker processes (None: no Ray)."""
    try:
        import ray
    except ImportError:
        return None
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": ONE_THREAD})
    try:
        remote = ray.remote(fit_forecast)
        ray.get([remote.remote(*_args(r)) for r in requests[: 4 * workers]])  # warm-up
        started = time.perf_counter()
        results = ray.get([remote.remote(*_args(r)) for r in requests])
        seconds = time.perf_counter() - started
    finally:
        ray.shutdown()
    assert len(results) == len(requests)
    return seconds, sum(results)


def joblib_job(requests: list[ForecastRequest], workers: int) -> Job:
    """joblib's loky pool (reused after a warm-up) running every request."""
    from joblib import Parallel, delayed

    saved = {k: os.environ.get(k) for k in ONE_THREAD}
    os.environ.update(ONE_THREAD)  # loky's workers inherit it
    try:
        with Parallel(n_jobs=workers, backend="loky") as parallel:
            parallel(delayed(fit_forecast)(*_args(r)) for r in requests[: 4 * workers])
            started = time.perf_counter()
            results = parallel(delayed(fit_forecast)(*_args(r)) for r in requests)
            seconds = time.perf_counter() - started
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert len(results) == len(requests)
    return seconds, sum(results)
