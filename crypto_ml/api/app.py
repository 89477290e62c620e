"""The FastAPI application: API keys, body cap, error bodies and metrics around the routes
of :mod:`crypto_ml.api.routes`.

:func:`create_app` takes everything as arguments (settings, where runs go, the
service that checks bodies), so tests and benchmarks build it around any
:class:`~crypto_ml.api.service.Runs`; ``python -m crypto_ml.api`` builds it for
the configured or embedded cluster.
"""

from __future__ import annotations

import hmac
import json
import re
import sys
import warnings
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import anyio
import redis
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from kombu.exceptions import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

import crypto_ml
from crypto_ml.core.errors import BrokerUnavailable, DataNotFound
from crypto_ml.core.settings import Settings
from crypto_ml.dispatch.runs import RunQueue

from .bodies import BODY_METHODS, KEYED_BODIES, BodyDeadlines, Template, body_cap
from .fast_path import fast_forecasts
from .jobs import Jobs
from .metrics import ApiMetrics, Message, Receive, Scope, Send, http_only
from .problems import bounded
from .routes import data_routes, forecast_answer, forecast_routes, job_routes, operation_routes
from .service import ForecastService, Invalid, Runs

DOCS_STATIC = "/docs-static"
THREADS = 40  # the routes that stay blocking (jobs, /metrics) each hold a thread of the pool
DESCRIPTION = """Forecasts on the crypto-ml cluster (the same tasks, queues and workers as
`send-tasks`). POST a forecast, optionally waiting up to `wait` seconds for it; otherwise read
it at its `status_url`. Send `Authorization: Bearer <key>` when the server has
`CRYPTO_ML_API_KEYS`."""


#: What FastAPI answers (400) for a body it cannot decode, e.g. bytes that are not UTF-8.
PARSE_FAILED = "There was an error parsing the body"


def _unavailable(detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=503)


def _unprocessable(errors: list[dict[str, Any]]) -> JSONResponse:
    return JSONResponse({"detail": bounded(errors)}, status_code=422)


def key_first(app: Any, key_check: KeyCheck) -> Any:
    """ASGI middleware: a body sent to a keyed route without an accepted key gets 401 before
    the body is read (FastAPI parses a body before it solves the route's dependencies, so a
    body that was no JSON got 422 first)."""

    async def checked(scope: Scope, receive: Receive, send: Send) -> None:
        if key_check.keys and scope["method"] in BODY_METHODS and scope["path"] in KEYED_BODIES:
            try:
                await key_check(await BEARER(Request(scope)))
            except HTTPException as exc:
                scope["route"] = Template(scope["path"])
                await JSONResponse({"detail": exc.detail}, exc.status_code,
                                   headers=exc.headers)(scope, receive, send)
                return
        await app(scope, receive, send)

    return http_only(app, checked)


def add_docs(app: FastAPI) -> None:
    """``/docs`` (Swagger UI) and ``/redoc`` served from the fastapi-offline wheel's files, so
    the pages render on machines without internet access (FastAPI's default loads a CDN)."""
    import fastapi_offline

    app.mount(DOCS_STATIC, StaticFiles(directory=Path(fastapi_offline.__file__).parent / "static"),
              name="docs-static")

    @app.get("/docs", include_in_schema=False)
    async def swagger() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=app.openapi_url or "/openapi.json",
                                   title=f"{app.title} - docs",
                                   swagger_js_url=f"{DOCS_STATIC}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{DOCS_STATIC}/swagger-ui.css",
                                   swagger_favicon_url=f"{DOCS_STATIC}/favicon.png")

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url=app.openapi_url or "/openapi.json",
                              title=f"{app.title} - ReDoc",
                              redoc_js_url=f"{DOCS_STATIC}/redoc.standalone.js",
                              redoc_favicon_url=f"{DOCS_STATIC}/favicon.png",
                              with_google_fonts=False)


BEARER = HTTPBearer(auto_error=False, description="one of CRYPTO_ML_API_KEYS")


class KeyCheck:
    """Dependency: ``Authorization: Bearer <key>`` with one of ``keys`` (none: open)."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        self.keys = [k.encode() for k in keys]

    async def __call__(self, credentials: Annotated[HTTPAuthorizationCredentials | None,
                                                    Depends(BEARER)]) -> None:
        # a coroutine: FastAPI would run a plain function in its thread pool, per request
        if not self.keys:
            return
        given = (credentials.credentials if credentials else "").encode()
        if not any(hmac.compare_digest(given, key) for key in self.keys):
            raise HTTPException(401, "missing or unknown API key; send Authorization: Bearer "
                                "<key>", headers={"WWW-Authenticate": "Bearer"})


def create_app(settings: Settings, runs: Runs,
               service: ForecastService | None = None) -> FastAPI:
    """The API for ``runs`` (cluster or in-process), checking bodies with ``service``; table
    jobs (``/v1/jobs``) run on the cluster of ``runs``, when it has one."""
    service = service or ForecastService(settings)
    jobs = Jobs(runs.app, settings, runs.backend) if isinstance(runs, RunQueue) else None
    metrics = ApiMetrics(runs.queue_depth, getattr(runs, "coalesced", None))
    key_check = KeyCheck(settings.api_keys)
    authorized = [Depends(key_check)]
    answer = forecast_answer(settings, runs, service, metrics)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        anyio.to_thread.current_default_thread_limiter().total_tokens = THREADS
        yield
        await runs.aclose()
        if jobs is not None:
            jobs.close()

    app = FastAPI(title="crypto-ml forecasts", version=crypto_ml.__version__,
                  description=DESCRIPTION, lifespan=lifespan, docs_url=None, redoc_url=None)
    add_docs(app)
    add_error_handlers(app, settings.data_dir)
    app.router.routes.append(fast_forecasts(answer, BEARER, key_check))  # before the next
    app.include_router(forecast_routes(runs, answer, metrics, authorized))
    app.include_router(job_routes(jobs, authorized))
    app.include_router(data_routes(service, authorized))
    app.include_router(operation_routes(runs, metrics))
    _document_caps(app, settings)
    app.state.metrics = metrics
    app.state.runs = runs
    app.state.bodies = bodies = BodyDeadlines(settings.api_body_seconds)
    app.add_middleware(_Wrap, wrap=lambda inner: key_first(inner, key_check))
    app.add_middleware(_Wrap, wrap=lambda inner: body_cap(inner, settings.api_max_body, bodies))
    app.add_middleware(_Wrap, wrap=head_as_get)
    app.add_middleware(_Wrap, wrap=metrics.middleware)  # outermost: it sees HEAD as HEAD
    return app


def head_as_get(app: Any) -> Any:
    """ASGI middleware: HEAD answers as GET does, without the body (HTTP: a server that takes GET
    takes HEAD); FastAPI's routes take GET alone, so HEAD got 405."""

    async def head(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "HEAD":
            await app(scope, receive, send)
            return

        async def bodiless(message: Message) -> None:
            await send({**message, "body": b""} if message["type"] == "http.response.body"
                       else message)

        inner = {**scope, "method": "GET"}  # uvicorn reads its own scope's method: HEAD
        try:
            await app(inner, receive, bodiless)
        finally:  # what the metrics read of it
            if "route" in inner:
                scope["route"] = inner["route"]

    return http_only(app, head)


def _with_head(allow: str) -> str:
    """A 405's ``Allow`` naming HEAD wherever it names GET (:func:`head_as_get` answers it)."""
    methods = [m.strip() for m in allow.split(",") if m.strip()]
    return ", ".join([*methods, "HEAD"]) if "GET" in methods and "HEAD" not in methods \
        else allow


def add_error_handlers(app: FastAPI, data_dir: Path) -> None:
    """Every error as a JSON body: 422 in FastAPI's shape (a body that cannot be parsed too),
    503 when the broker, the result backend or the data is unreachable (never naming where
    the server keeps its data, ``data_dir``)."""
    hidden = re.compile("|".join(
        rf"(?<![\w/.]){re.escape(path)}(?=[/\s;,:)'\"]|$)" for path in sorted(
            {str(data_dir.resolve()), *([str(data_dir)] if "/" in str(data_dir) else [])},
            key=len, reverse=True)))

    @app.exception_handler(Invalid)
    async def invalid(_: Request, exc: Invalid) -> JSONResponse:
        return _unprocessable(exc.errors)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _unprocessable(list(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 400 and exc.detail == PARSE_FAILED:  # as any other bad body
            return _unprocessable([{"loc": ["body"], "type": "json_invalid",
                                    "msg": _unparsed(exc.__cause__)}])
        if exc.status_code == 405 and exc.headers and "Allow" in exc.headers:
            exc = StarletteHTTPException(405, exc.detail, headers={
                **exc.headers, "Allow": _with_head(exc.headers["Allow"])})
        return await http_exception_handler(request, exc)

    @app.exception_handler(BrokerUnavailable)
    @app.exception_handler(DataNotFound)
    async def unavailable(_: Request, exc: Exception) -> JSONResponse:
        return _unavailable(hidden.sub("the server's data directory", str(exc)))

    @app.exception_handler(redis.RedisError)
    @app.exception_handler(OperationalError)
    async def redis_down(_: Request, exc: Exception) -> JSONResponse:
        return _unavailable(f"the broker or result backend is unreachable "
                            f"({type(exc).__name__}); try again later")


def _unparsed(cause: BaseException | None) -> str:
    """Why a body could not be parsed: not UTF-8 JSON, or valid JSON holding an integer
    longer than Python converts (``sys.get_int_max_str_digits``)."""
    if isinstance(cause, RecursionError):
        return "the body nests arrays or objects deeper than this server reads; no field needs it"
    if isinstance(cause, ValueError) and not isinstance(cause, UnicodeError) \
            and "digits" in str(cause):
        return (f"a number in the body has more than {sys.get_int_max_str_digits()} digits; "
                "no field takes one that large")
    return "the body is not JSON text in UTF-8"


def _document_caps(app: FastAPI, settings: Settings) -> None:
    """The OpenAPI description states this server's caps (horizon, closes per series,
    wait), so that a body valid by the schema is refused only for what the schema cannot
    say: an unknown coin or model, or a series too short for its model."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            with warnings.catch_warnings():  # one function serves GET and DELETE of a job,
                warnings.filterwarnings("ignore", "Duplicate Operation ID", UserWarning)
                spec = generate()  # and GET and HEAD of its tables
            job = spec["paths"]["/v1/jobs/{job_id}"]
            job["get"]["operationId"], job["delete"]["operationId"] = "get_job", "cancel_job"
            for table in ("output", "failures"):
                methods = spec["paths"][f"/v1/jobs/{{job_id}}/{table}"]
                methods["get"]["operationId"] = f"get_job_{table}"
                methods["head"]["operationId"] = f"head_job_{table}"
            body = spec["components"]["schemas"]["ForecastBody"]["properties"]
            body["horizon"]["maximum"] = settings.max_horizon
            spec["components"]["schemas"]["JobBody"]["properties"]["horizon"]["maximum"] = \
                settings.max_horizon
            if not settings.api_keys:
                _keyless(spec)
            _no_impossible_422(spec)
            body["series"]["additionalProperties"]["maxItems"] = settings.max_series
            for parameter in spec["paths"]["/v1/forecasts"]["post"]["parameters"]:
                if parameter["name"] == "wait":
                    parameter["schema"]["maximum"] = settings.api_max_wait
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]


def _keyless(spec: dict[str, Any]) -> None:
    """A server without API keys: no route asks for one, and none answers 401."""
    spec["components"].pop("securitySchemes", None)
    for methods in spec["paths"].values():
        for operation in methods.values():
            operation.pop("security", None)
            operation.get("responses", {}).pop("401", None)


def _no_impossible_422(spec: dict[str, Any]) -> None:
    """FastAPI lists a 422 on every route with a parameter; a route with no body whose only
    parameters are plain strings in the path cannot give one, so its 422 goes."""
    for methods in spec["paths"].values():
        for operation in methods.values():
            plain = all(p["in"] == "path" and set(p["schema"]) <= {"type", "title"}
                        and p["schema"].get("type") == "string"
                        for p in operation.get("parameters", []))
            if plain and "requestBody" not in operation:
                operation.get("responses", {}).pop("422", None)
    if "/HTTPValidationError" not in json.dumps(spec["paths"]):  # FastAPI's 422 body: unused
        for name in ("HTTPValidationError", "ValidationError"):
            spec["components"]["schemas"].pop(name, None)


class _Wrap:
    """Adapter: a function ``wrap(app) -> app`` as a Starlette middleware class."""

    def __init__(self, app: Any, wrap: Callable[[Any], Any]) -> None:
        self.app = wrap(app)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)
