"""``POST /v1/forecasts``'s fast route (crypto_ml/api/fast_path.py) answers every request as the
documented FastAPI route alone does: the same status, the same headers that matter, the same
body (run ids and timings aside), for the requests it answers itself and for those it hands on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from api_support import client, write_coins
from fastapi.routing import APIRoute

from crypto_ml.api import fast_path
from crypto_ml.api.app import create_app
from crypto_ml.api.service import InProcessRuns
from crypto_ml.core.settings import Settings

KEY = "k-123"
GOOD = {"coins": ["alpha"], "model": "naive", "horizon": 3}
HEADERS = ("content-type", "www-authenticate", "allow")
VARYING = {"id", "status_url", "fit_seconds"}  # a run's id, a fit's time


def _apps(data: Path) -> tuple[Any, Any]:
    """The app as served, and the same app without its fast route."""
    settings = Settings(data_dir=data, api_keys=(KEY,), api_max_wait=5)
    served = create_app(settings, InProcessRuns())
    plain = create_app(settings, InProcessRuns())
    plain.router.routes = [r for r in plain.router.routes if type(r).__name__ != "_FastRoute"]
    assert len(plain.router.routes) == len(served.router.routes) - 1
    return client(served), client(plain)


def _steady(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _steady(v) for k, v in value.items() if k not in VARYING}
    if isinstance(value, list):
        return [_steady(v) for v in value]
    return value


def _answer(api: Any, query: str, body: bytes, headers: dict[str, str]) -> tuple[Any, ...]:
    reply = api.post(f"/v1/forecasts{query}", content=body, headers=headers)
    try:
        shown: Any = _steady(reply.json())
    except ValueError:
        shown = reply.text
    return (reply.status_code, shown, "location" in reply.headers,
            *(reply.headers.get(h) for h in HEADERS))


AUTH = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}
GOOD_BODY = json.dumps(GOOD).encode()
CASES = [
    ("", GOOD_BODY, AUTH),
    ("?wait=1.5", GOOD_BODY, AUTH),
    ("?wait=0", json.dumps({"series": {"s": [1.0, 2.0, 3.0, 4.0]}}).encode(), AUTH),
    ("?wait=9", GOOD_BODY, AUTH),  # above CRYPTO_ML_API_MAX_WAIT
    ("?wait=-1", GOOD_BODY, AUTH),
    ("?wait=abc", GOOD_BODY, AUTH),
    ("?wait=1e0", GOOD_BODY, AUTH),
    ("?wait=nan", GOOD_BODY, AUTH),
    ("?wait=1&wait=2", GOOD_BODY, AUTH),
    ("?wait=1&other=2", GOOD_BODY, AUTH),
    ("", GOOD_BODY, {"content-type": "application/json"}),
    ("", GOOD_BODY, {"authorization": "Bearer wrong", "content-type": "application/json"}),
    ("", GOOD_BODY, {"authorization": f"bearer {KEY}", "content-type": "application/json"}),
    ("", GOOD_BODY, {"authorization": f"Bearer  {KEY}", "content-type": "application/json"}),
    ("", GOOD_BODY, {"authorization": f"Basic {KEY}", "content-type": "application/json"}),
    ("", b"not json", AUTH),
    ("", b"", AUTH),
    ("", b"[]", AUTH),
    ("", b'{"coins": ["alpha"], "horizon": NaN}', AUTH),
    ("", b'{"coins": ["alpha"], "series": {"s": [1.0, 2.0]}}', AUTH),
    ("", b'{"coins": ["nosuch"]}', AUTH),
    ("", b'{"coins": ["alpha"], "model": "prophet"}', AUTH),
    ("", b'{"coins": ["alpha"], "unknown": 1}', AUTH),
    ("", b"[" * 5000 + b"]" * 5000, AUTH),
    ("", b"\xff\xfe", AUTH),
    ("", GOOD_BODY, {"authorization": f"Bearer {KEY}", "content-type": "text/plain"}),
    ("", GOOD_BODY, {"authorization": f"Bearer {KEY}", "content-type": "application/a/b+json"}),
]


@pytest.mark.parametrize(("query", "body", "headers"), CASES,
                         ids=[f"case{i}" for i in range(len(CASES))])
def test_the_fast_route_answers_as_the_fastapi_route_alone(
        tmp_path: Path, query: str, body: bytes, headers: dict[str, str]) -> None:
    served, plain = _apps(write_coins(tmp_path / "prices"))
    assert _answer(served, query, body, headers) == _answer(plain, query, body, headers)


def test_a_plain_request_is_answered_by_the_fast_route_and_counted_by_route(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    served, _ = _apps(write_coins(tmp_path / "prices"))
    handed_on: list[str] = []
    hand_on = fast_path._Delegate.__call__

    async def watched(self: Any, scope: dict[str, Any], receive: Any, send: Any) -> None:
        handed_on.append(scope["path"])
        await hand_on(self, scope, receive, send)

    monkeypatch.setattr(fast_path._Delegate, "__call__", watched)
    reply = served.post("/v1/forecasts?wait=2", json=GOOD, headers=AUTH)
    assert reply.status_code == 200 and reply.json()["results"]["alpha"]["naive"]["horizon"] == 3
    assert handed_on == []  # answered by the fast route
    assert served.post("/v1/forecasts", content=b"not json", headers=AUTH).status_code == 422
    assert handed_on == ["/v1/forecasts"]  # handed on: the FastAPI route named the error
    text = served.get("/metrics").text
    for status in ("200", "422"):
        assert (f'crypto_ml_api_requests_total{{method="POST",route="/v1/forecasts",'
                f'status="{status}"}} 1.0') in text


def test_the_fast_route_knows_every_input_of_the_fastapi_route(tmp_path: Path) -> None:
    """The fast route checks the key and reads ``wait`` and the body, nothing else: a new
    dependency, header or query parameter of the FastAPI route must be taken into it too
    (crypto_ml/api/fast_path.py), or it would be skipped for the requests it answers."""
    app = create_app(Settings(data_dir=write_coins(tmp_path / "prices")), InProcessRuns())

    def routes(within: list[Any]) -> list[APIRoute]:  # FastAPI wraps each included router
        return [found for route in within for found in (
            routes(route.original_router.routes) if hasattr(route, "original_router")
            else [route] if isinstance(route, APIRoute) else [])]

    [route] = [r for r in routes(app.routes) if r.path == "/v1/forecasts" and "POST" in r.methods]
    dependant = route.dependant
    assert [type(d.call).__name__ for d in dependant.dependencies] == ["KeyCheck"]
    assert [p.name for p in dependant.query_params] == ["wait"]
    assert [p.name for p in dependant.body_params] == ["body"]
    assert not (dependant.header_params or dependant.cookie_params or dependant.path_params)
