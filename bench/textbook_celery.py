"""The textbook FastAPI + Celery forecast service, a peer of the API in bench/serve_peers.py.

    CRYPTO_ML_BROKER_URL=redis://... CRYPTO_ML_DATA_DIR=../shared/data/top100-2017 \\
        python -m uvicorn bench.textbook_celery:app --port 8001

What the tutorials show: a FastAPI route that sends the project's own Celery task
(``crypto_ml.forecast``, on the project's app: :func:`crypto_ml.worker.app.create_app`)
with ``.delay(...)`` and blocks on ``.get(timeout=30)``; a plain ``def`` route, so FastAPI
runs each request in its thread pool (Celery's result backend is per thread). The closes
are loaded once, at import; each request sends the model's default window of one coin's
closes with the task, as the API does. ``POST /forecast`` takes the API's body
(``{"coins": [coin], "model": "linear", "horizon": 10}``, one coin) and answers the task's
result (``coin``, ``forecast``, ``intervals``, ...).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

import crypto_ml.worker.tasks  # noqa: F401  (registers the project's tasks on every app)
from crypto_ml.core.settings import Settings
from crypto_ml.data.loader import CryptoLoader
from crypto_ml.models import default_max_points
from crypto_ml.worker.app import create_app
from crypto_ml.worker.requests import TASK_NAME, ForecastRequest

LEVELS = [80.0, 95.0]

celery_app = create_app(Settings.from_env())  # broker and result backend: CRYPTO_ML_BROKER_URL
forecast_task = celery_app.tasks[TASK_NAME]
_loader = CryptoLoader(Path(os.environ["CRYPTO_ML_DATA_DIR"]))
CLOSES = {c: _loader.get_closes(c)[1] for c in _loader.get_crypto_names()}

app = FastAPI(title="textbook FastAPI + Celery")


class Body(BaseModel):
    coins: list[str]
    model: str = "linear"
    horizon: int = 10


@app.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/forecast")
def forecast(body: Body) -> Any:
    if len(body.coins) != 1 or body.coins[0] not in CLOSES:
        raise HTTPException(404, f"one known coin, please: {body.coins!r}")
    coin = body.coins[0]
    request = ForecastRequest.parse(
        coin=coin, model=body.model, horizon=body.horizon, levels=LEVELS,
        prices=CLOSES[coin][-default_max_points(body.model):].tolist())
    return forecast_task.delay(**request.as_kwargs()).get(timeout=30)
