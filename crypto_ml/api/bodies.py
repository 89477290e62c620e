"""Request bodies before any route runs: read whole, within a size cap and a deadline.

:func:`body_cap` reads a body once (the routes get it replayed): over the cap it is a 413,
not whole within the deadline a 408, both answered with ``Connection: close``. When the
server begins to stop, :class:`BodyDeadlines` ends the bodies still arriving at once with a
503 (they held the drain for its whole length, then were cancelled with a traceback and a
500). A client that closes its connection mid-body gets no route run on half a body.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from fastapi.responses import JSONResponse

from .fast_path import replaying
from .metrics import Receive, Scope, Send, http_only

BODY_METHODS = ("POST", "PUT", "PATCH")
#: Routes that take a body and a key: the key is checked before the body is read
KEYED_BODIES = ("/v1/forecasts", "/v1/jobs")
#: Counted for a client that closed its connection before its body arrived (nginx's code):
#: nobody reads the answer, and the route never ran
CLIENT_CLOSED = 499


class Template:
    """What the metrics read of a matched route: its path template."""

    def __init__(self, path: str) -> None:
        self.path = path


class BodyDeadlines:
    """The deadlines of the bodies being read; :meth:`stop` ends them all now."""

    def __init__(self, seconds: int) -> None:
        self.seconds = seconds
        self.stopping = False
        self._reading: set[asyncio.Timeout] = set()

    async def within(self, read: Awaitable[bytes | None]) -> bytes | None:
        """``await read`` or TimeoutError after ``seconds``, or as soon as the server stops."""
        async with asyncio.timeout(0 if self.stopping else self.seconds) as deadline:
            self._reading.add(deadline)
            try:
                return await read
            finally:
                self._reading.discard(deadline)

    def stop(self) -> None:
        """The server stops (on its event loop): no body still arriving is waited for."""
        self.stopping = True
        now = asyncio.get_running_loop().time()
        for deadline in self._reading:
            if not deadline.expired():  # one that just fired ends its read by itself
                deadline.reschedule(now)


def as_json(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """A body's headers saying JSON, whatever its content type said (FastAPI hands a body of
    another type, or of none, to the model as text, which no field takes): a JSON body is read
    as JSON, anything else is a 422 that names it as no JSON."""
    given = next((v for k, v in headers if k.lower() == b"content-type"), b"").lower()
    kind = given.split(b";")[0].strip()
    if kind == b"application/json" or (kind.startswith(b"application/") and kind.count(b"/") == 1
                                       and kind.endswith(b"+json")):
        return headers
    return [*((k, v) for k, v in headers if k.lower() != b"content-type"),
            (b"content-type", b"application/json")]


def body_cap(app: Any, limit: int, deadlines: BodyDeadlines) -> Any:
    """ASGI middleware, before any route runs: a request body over ``limit`` bytes gets 413;
    one that has not arrived whole within the deadline gets 408, or 503 once the server is
    stopping (a client that stalls, or trickles its body, holds the connection and the body
    read so far no longer). Headers have no such bound here (uvicorn has none): a proxy in
    front sets that one."""

    async def capped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] in BODY_METHODS:  # the same scope: the metrics read its route
            scope["headers"] = as_json(scope.get("headers") or [])
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        too_big = declared is not None and declared.isdigit() and int(declared) > limit
        coming = declared not in (None, b"0") or b"transfer-encoding" in headers
        try:  # a request without a body (a GET) pays for no timer
            body = None if too_big else await (deadlines.within(_read_body(receive, limit))
                                                if coming else _read_body(receive, limit))
        except TimeoutError:
            await _refuse(scope, receive, send, *_late(deadlines))
            return
        except _ClientGone:
            await _refuse(scope, receive, send, CLIENT_CLOSED, "the client closed the "
                          "connection before its request body arrived whole")
            return
        if body is None:
            await _refuse(scope, receive, send, 413, f"request body above the cap of {limit} "
                          "bytes (CRYPTO_ML_API_MAX_BODY)")
            return
        await app(scope, replaying(body, receive), send)

    return http_only(app, capped)


def _late(deadlines: BodyDeadlines) -> tuple[int, str]:
    if deadlines.stopping:
        return 503, "the server is stopping; send the request again"
    return 408, (f"the request body did not arrive whole within {deadlines.seconds} s "
                 "(CRYPTO_ML_API_BODY_SECONDS)")


async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, detail: str) -> None:
    """A body refused: the connection closed after the answer (the rest of the body would be
    read and dropped, and a client that goes on sending would hold the connection), counted
    under the route's path when it is one that takes a body."""
    if scope["path"] in KEYED_BODIES:
        scope["route"] = Template(scope["path"])
    await JSONResponse({"detail": detail}, status_code=status,
                       headers={"Connection": "close"})(scope, receive, send)


class _ClientGone(Exception):
    """The client closed its connection (an ``http.disconnect``) before its body was whole."""


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The request body, or None once it is over ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise _ClientGone
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if size > limit:
            return None
        if not message.get("more_body"):
            return b"".join(chunks)
