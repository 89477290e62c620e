"""``POST /v1/forecasts`` without FastAPI's per-request machinery, for what it would accept.

Under 32 clients, FastAPI's dependency solving, its request and response wrappers took about
a third of the API process's CPU per forecast request (py-spy), and that process is what
limits the API's throughput on a small machine. :func:`fast_forecasts` is a plain Starlette
route in front of the documented one: it answers a request itself only when the request is
plainly well-formed (an accepted key, or none needed; no query but ``wait`` as a plain
number; a JSON body that :class:`~crypto_ml.api.schemas.ForecastBody` validates) and hands
anything else, unchanged, to the FastAPI route, which answers it (401, 422...) as it always
has. The key is checked by the same dependency, and the answer made by the same coroutine,
as the FastAPI route's: the contract stays the FastAPI route's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

from fastapi.security import HTTPBearer
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import Message, Receive, Scope, Send

from .schemas import ForecastBody

#: Set in a request's scope that the FastAPI route is to answer: this route then matches none.
DELEGATED = "crypto_ml.delegated"
PLAIN_NUMBER = re.compile(r"[0-9]{1,9}(\.[0-9]{1,9})?")

Answer = Callable[[ForecastBody, float], Awaitable[Response]]
KeyCheck = Callable[[Any], Awaitable[None]]


class _FastRoute(Route):
    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope.get(DELEGATED):
            return Match.NONE, {}
        match, child = super().matches(scope)
        return match, {**child, "route": self}  # what the metrics label a request by


class _Delegate(Response):
    """Hands the request, with the body already read, to the routes after this one."""

    def __init__(self, body: bytes) -> None:
        self.raw = body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[DELEGATED] = True
        await scope["router"](scope, replaying(self.raw, receive), send)


def replaying(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives ``body``, read already, whole first, then what ``receive``
    gives (a disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def fast_forecasts(answer: Answer, bearer: HTTPBearer, key_check: KeyCheck) -> Route:
    """The route for ``POST /v1/forecasts`` to place before the FastAPI one (see the module)."""

    async def endpoint(request: Request) -> Response:
        raw = await request.body()
        wait = _plain_wait(request.scope.get("query_string", b""))
        try:  # the key first, as the FastAPI route: no body is read for a caller without one
            await key_check(await bearer(request))
        except HTTPException:
            return _Delegate(raw)  # the FastAPI route's 401
        body = _plain_body(raw) if wait is not None else None
        if body is None or wait is None:
            return _Delegate(raw)
        return await answer(body, wait)

    return _FastRoute("/v1/forecasts", endpoint, methods=["POST"], include_in_schema=False)


def _plain_wait(query: bytes) -> float | None:
    """``wait`` of a query that holds nothing else, as a plain number (0 without a query)."""
    if not query:
        return 0.0
    pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
    if len(pairs) != 1 or pairs[0][0] != "wait" or not PLAIN_NUMBER.fullmatch(pairs[0][1]):
        return None
    return float(pairs[0][1])


def _plain_body(raw: bytes) -> ForecastBody | None:
    """The body as FastAPI reads it (``json.loads``, then the model), or None."""
    try:
        return ForecastBody.model_validate(json.loads(raw), from_attributes=True)
    except (ValueError, ValidationError, RecursionError):
        return None
