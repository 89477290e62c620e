"""The cheapest forecast server we could write, for bench/serve_ceiling.py: a bare Starlette
app, one process, that fits the project's linear model in its request handler.

    CRYPTO_ML_DATA_DIR=../shared/data/top100-2017 python -m uvicorn bench.bare_forecast:app

No body validation, no API keys, no metrics, no queue, no Redis: what is left of any forecast
request once everything optional is gone. ``GET /v1/models`` answers the API's model list
(its floor route, same bytes); ``POST /forecast`` takes the API's body (one coin) and answers
as the Ray Serve deployment of bench/serve_peers.py does (``coin``, ``forecast``,
``intervals``), fitted on the model's default window of closes, loaded once at import.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from crypto_ml.api.service import model_infos
from crypto_ml.data.loader import CryptoLoader
from crypto_ml.models import default_max_points, get_model

MODEL, HORIZON, LEVELS = "linear", 10, (80.0, 95.0)

_loader = CryptoLoader(Path(os.environ["CRYPTO_ML_DATA_DIR"]))
_window = default_max_points(MODEL)
CLOSES = {c: _loader.get_closes(c)[1][-_window:].tolist() for c in _loader.get_crypto_names()}
MODELS = json.dumps({"models": model_infos()}).encode()


async def models(_: Request) -> Response:
    return Response(MODELS, media_type="application/json")


async def forecast(request: Request) -> Response:
    coin = json.loads(await request.body())["coins"][0]
    prediction = get_model(MODEL).fit(CLOSES[coin]).predict(HORIZON, LEVELS)
    answer = {"coin": coin, "forecast": prediction.forecast.tolist(),
              "intervals": prediction.intervals_json()}
    return Response(json.dumps(answer).encode(), media_type="application/json")


app = Starlette(routes=[Route("/v1/models", models), Route("/forecast", forecast, methods=["POST"]),
                        Route("/healthz", models)])
