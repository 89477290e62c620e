"""The FastAPI application: routes, API keys, body cap, error bodies and metrics.

:func:`create_app` takes everything as arguments (settings, where runs go, the
service that checks bodies), so tests and benchmarks build it around any
:class:`~crypto_ml.api.service.Runs`; ``python -m crypto_ml.api`` builds it for
the configured or embedded cluster.
"""

from __future__ import annotations

import hmac
import warnings
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import anyio
import redis
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from kombu.exceptions import OperationalError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

import crypto_ml
from crypto_ml.core.errors import BrokerUnavailable, ConfigError, DataNotFound
from crypto_ml.core.settings import Settings

from .jobs import JobAccepted, JobBody, Jobs, JobStatus
from .metrics import ApiMetrics, Message, Receive, Scope, Send, http_only
from .problems import bounded
from .schemas import Accepted, Coins, ForecastBody, Health, Models, Problem, RunStatus, Unprocessable
from .service import ForecastService, Invalid, Runs, model_infos

DOCS_STATIC = "/docs-static"
THREADS = 40  # the routes that stay blocking (jobs, /metrics) each hold a thread of the pool
DESCRIPTION = """Forecasts on the crypto-ml cluster (the same tasks, queues and workers as
`send-tasks`). POST a forecast, optionally waiting up to `wait` seconds for it; otherwise read
it at its `status_url`. Send `Authorization: Bearer <key>` when the server has
`CRYPTO_ML_API_KEYS`."""


#: What FastAPI answers (400) for a body it cannot decode, e.g. bytes that are not UTF-8.
PARSE_FAILED = "There was an error parsing the body"
UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "missing or unknown API key"}}


def _unavailable(detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=503)


def _unprocessable(errors: list[dict[str, Any]]) -> JSONResponse:
    return JSONResponse({"detail": bounded(errors)}, status_code=422)


def body_cap(app: Any, limit: int) -> Any:
    """ASGI middleware: a request body over ``limit`` bytes gets 413 before any route runs."""

    async def capped(scope: Scope, receive: Receive, send: Send) -> None:
        declared = dict(scope.get("headers") or []).get(b"content-length")
        too_big = declared is not None and declared.isdigit() and int(declared) > limit
        chunks: list[bytes] = []
        size = 0
        while not too_big:
            message = await receive()
            if message["type"] != "http.request":
                chunks = []
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            too_big = size > limit
            if not message.get("more_body"):
                break
        if too_big:
            reply = JSONResponse({"detail": f"request body above the cap of {limit} bytes "
                                  "(CRYPTO_ML_API_MAX_BODY)"}, status_code=413)
            await reply(scope, receive, send)
            return
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await app(scope, replay, send)

    return http_only(app, capped)


def add_docs(app: FastAPI) -> None:
    """``/docs`` (Swagger UI) and ``/redoc`` served from the fastapi-offline wheel's files, so
    the pages render on machines without internet access (FastAPI's default loads a CDN)."""
    import fastapi_offline

    app.mount(DOCS_STATIC, StaticFiles(directory=Path(fastapi_offline.__file__).parent / "static"),
              name="docs-static")

    @app.get("/docs", include_in_schema=False)
    def swagger() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=app.openapi_url or "/openapi.json",
                                   title=f"{app.title} - docs",
                                   swagger_js_url=f"{DOCS_STATIC}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{DOCS_STATIC}/swagger-ui.css",
                                   swagger_favicon_url=f"{DOCS_STATIC}/favicon.png")

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
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
    cluster_app = getattr(runs, "app", None)
    jobs = Jobs(cluster_app, settings) if cluster_app is not None else None
    metrics = ApiMetrics(runs.queue_depth, getattr(runs, "coalesced", None))
    require_key = KeyCheck(settings.api_keys)

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
    authorized = [Depends(require_key)]

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
                                    "msg": "the body is not JSON text in UTF-8"}])
        return await http_exception_handler(request, exc)

    @app.exception_handler(BrokerUnavailable)
    async def no_broker(_: Request, exc: BrokerUnavailable) -> JSONResponse:
        return _unavailable(str(exc))

    @app.exception_handler(redis.RedisError)
    @app.exception_handler(OperationalError)
    async def redis_down(_: Request, exc: Exception) -> JSONResponse:
        return _unavailable(f"the broker or result backend is unreachable "
                            f"({type(exc).__name__}); try again later")

    @app.exception_handler(DataNotFound)
    async def no_data(_: Request, exc: DataNotFound) -> JSONResponse:
        return _unavailable(str(exc))

    @app.post("/v1/forecasts", dependencies=authorized, tags=["forecasts"],
              summary="Forecast coins or your own series",
              responses={200: {"model": RunStatus, "description": "finished within wait"},
                         202: {"model": Accepted, "description": "queued; poll status_url"},
                         **UNAUTHORIZED,
                         413: {"model": Problem, "description": "body too large"},
                         422: {"model": Unprocessable,
                               "description": "a field is invalid; the body names it"},
                         503: {"model": Problem,
                               "description": "broker down: nothing was queued"}})
    async def post_forecast(body: ForecastBody,
                      wait: Annotated[float, Query(ge=0, description="seconds to wait for "
                                                   "the results (at most "
                                                   "CRYPTO_ML_API_MAX_WAIT)")] = 0) -> Response:
        if wait > settings.api_max_wait:
            raise Invalid([{"loc": ["query", "wait"], "type": "value_error",
                            "msg": f"must be at most {settings.api_max_wait} "
                                   f"(CRYPTO_ML_API_MAX_WAIT), got {wait:g}"}])
        run = await runs.submit(service.requests_for(body), listen=wait > 0)
        state = await runs.wait(run, wait)
        if state is not None:
            metrics.count_run(state)
            return Response(state.encoded(), media_type="application/json")
        try:
            await runs.save(run)
        except Exception:  # the run could not be saved: withdraw it
            await runs.discard(run)
            raise
        url = f"/v1/forecasts/{run.id}"
        return JSONResponse({"id": run.id, "status_url": url}, status_code=202,
                            headers={"Location": url})

    @app.get("/v1/forecasts/{run_id}", dependencies=authorized, tags=["forecasts"],
             summary="A forecast run's status and results", response_model=RunStatus,
             responses={**UNAUTHORIZED,
                        404: {"model": Problem, "description": "no such run (or expired)"},
                        503: {"model": Problem, "description": "result backend unreachable"}})
    async def get_forecast(run_id: str) -> Response:
        state = await runs.state(run_id)
        if state is None:
            raise HTTPException(404, f"no forecast run {run_id!r} (unknown, or expired after "
                                "CRYPTO_ML_RESULT_EXPIRES)")
        if state.fresh:
            metrics.count_run(state)
        return Response(state.encoded(), media_type="application/json")

    def job_or_404(job_id: str, found: dict[str, Any] | None) -> dict[str, Any]:
        if found is None:
            raise HTTPException(404, f"no job {job_id!r} (unknown, or expired after "
                                "CRYPTO_ML_RESULT_EXPIRES)")
        return found

    def cluster_jobs() -> Jobs:
        if jobs is None:
            raise HTTPException(503, "jobs run on a cluster; this server runs forecasts "
                                "in-process (--in-process)")
        return jobs

    @app.post("/v1/jobs", dependencies=authorized, tags=["jobs"], status_code=202,
              summary="Forecast a long table of the data directory into Parquet",
              response_model=JobAccepted,
              responses={**UNAUTHORIZED,
                         422: {"model": Unprocessable,
                               "description": "the body or the table is invalid; named"},
                         503: {"model": Problem,
                               "description": "no cluster, or an s3:// input unreachable"}})
    def post_job(body: JobBody) -> Response:
        try:
            job = cluster_jobs().submit(body)
        except DataNotFound:  # S3 unreachable: 503, try again
            raise
        except ConfigError as exc:  # a bad path, table or model: the caller's to fix
            raise Invalid([{"loc": ["body"], "msg": str(exc), "type": "value_error"}]) from None
        url = f"/v1/jobs/{job.id}"
        return JSONResponse({"id": job.id, "status_url": url}, status_code=202,
                            headers={"Location": url})

    # one route for both methods: a 405's Allow header then names both (schemathesis checks)
    @app.api_route("/v1/jobs/{job_id}", methods=["GET", "DELETE"], dependencies=authorized,
                   tags=["jobs"], response_model=JobStatus,
                   summary="GET: a job's progress and output; DELETE: cancel it (its queued "
                   "work is revoked)",
                   responses={**UNAUTHORIZED,
                              404: {"model": Problem, "description": "no such job (or expired)"},
                              503: {"model": Problem,
                                    "description": "no cluster, or its Redis unreachable"}})
    def job(job_id: str, request: Request) -> dict[str, Any]:
        running = cluster_jobs()  # any replica: the record is in the result backend
        found = running.cancel(job_id) if request.method == "DELETE" else running.get(job_id)
        return job_or_404(job_id, found)

    @app.get("/v1/coins", dependencies=authorized, tags=["data"], response_model=Coins,
             summary="Coin ids of the data directory",
             responses={**UNAUTHORIZED, 503: {"model": Problem, "description": "no data"}})
    async def coins() -> dict[str, Any]:
        return {"coins": service.coins.names()}

    @app.get("/v1/models", dependencies=authorized, tags=["data"], response_model=Models,
             summary="Models, their queue and options", responses=UNAUTHORIZED)
    async def models() -> dict[str, Any]:
        return {"models": model_infos()}

    @app.get("/healthz", tags=["operations"], response_model=Health,
             summary="Broker reachable and workers online (503 otherwise)",
             responses={503: {"model": Health}})
    async def healthz() -> Response:
        state = await runs.health()
        return JSONResponse(state, status_code=200 if state["status"] == "ok" else 503)

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics",
             response_class=Response)
    def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    _document_caps(app, settings)
    app.state.metrics = metrics
    app.state.runs = runs
    app.add_middleware(_Wrap, wrap=lambda inner: body_cap(inner, settings.api_max_body))
    app.add_middleware(_Wrap, wrap=metrics.middleware)
    return app


def _document_caps(app: FastAPI, settings: Settings) -> None:
    """The OpenAPI description states this server's caps (horizon, closes per series,
    wait), so that a body valid by the schema is refused only for what the schema cannot
    say: an unknown coin or model, or a series too short for its model."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            with warnings.catch_warnings():  # one function serves GET and DELETE of a job
                warnings.filterwarnings("ignore", "Duplicate Operation ID", UserWarning)
                spec = generate()
            job = spec["paths"]["/v1/jobs/{job_id}"]
            job["get"]["operationId"], job["delete"]["operationId"] = "get_job", "cancel_job"
            body = spec["components"]["schemas"]["ForecastBody"]["properties"]
            body["horizon"]["maximum"] = settings.max_horizon
            body["series"]["additionalProperties"]["maxItems"] = settings.max_series
            for parameter in spec["paths"]["/v1/forecasts"]["post"]["parameters"]:
                if parameter["name"] == "wait":
                    parameter["schema"]["maximum"] = settings.api_max_wait
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]


class _Wrap:
    """Adapter: a function ``wrap(app) -> app`` as a Starlette middleware class."""

    def __init__(self, app: Any, wrap: Callable[[Any], Any]) -> None:
        self.app = wrap(app)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)
