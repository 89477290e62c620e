"""The API's routes, one router per concern; :func:`crypto_ml.api.app.create_app` mounts them.

Each builder takes what its routes use (settings, where runs go, the service that checks
bodies, the metrics, the table jobs) as arguments and returns an ``APIRouter``. The
forecast, job and data routes require an API key (``dependencies``); the operations
routes (``/healthz``, ``/metrics``) do not.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.params import Depends
from fastapi.responses import FileResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BeforeValidator
from starlette.responses import MalformedRangeHeader, RangeNotSatisfiable

from crypto_ml.core.errors import ConfigError, DataNotFound, JobConflict, OutputUnwritable
from crypto_ml.core.settings import Settings
from crypto_ml.dispatch.runs import renamed

from .answers import Answers
from .jobs import Jobs
from .metrics import ApiMetrics
from .schemas import (
    Accepted,
    Coins,
    ForecastBody,
    Health,
    JobAccepted,
    JobBody,
    JobStatus,
    Models,
    Problem,
    RunStatus,
    Unprocessable,
)
from .service import ForecastService, Invalid, Runs, model_infos

PARQUET = "application/vnd.apache.parquet"
BINARY = {"type": "string", "format": "binary"}
UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "missing or unknown API key"}}
#: A number as written in decimal (pydantic also reads Python's ``5_0``, as 50)
DECIMAL = re.compile(r"\s*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\s*")


def _decimal(value: Any) -> Any:
    if isinstance(value, str) and not DECIMAL.fullmatch(value):
        raise ValueError("wait is a number of seconds in decimal, like 2.5")
    return value


Wait = Annotated[float, Query(ge=0, description="seconds to wait for the results (at most "
                                                "CRYPTO_ML_API_MAX_WAIT)"),
                 BeforeValidator(_decimal)]


def _problems(described: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses: each status code's ``Problem`` body, described."""
    return {code: {"model": Problem, "description": text} for code, text in described.items()}


def _not_found(what: str) -> HTTPException:
    return HTTPException(404, f"no {what} (unknown, expired after CRYPTO_ML_RESULT_EXPIRES, "
                         "or made by an embedded cluster since restarted)")


#: A request body too large or too slow (the body middleware, :func:`~crypto_ml.api.bodies.body_cap`).
BODY_REFUSED: dict[int | str, dict[str, Any]] = {
    408: {"model": Problem, "description": "body not whole within CRYPTO_ML_API_BODY_SECONDS"},
    413: {"model": Problem, "description": "body too large"}}


class TableFile(FileResponse):
    """A job's Parquet file. A Range it can serve gets 206; any other (malformed, or past the
    end) is ignored and the whole file sent (200), as HTTP allows, so that every answer is one
    the API documents, never Starlette's plain-text 400 or 416."""

    @classmethod
    def _parse_range_header(cls, http_range: str, file_size: int) -> list[tuple[int, int]]:
        try:
            return super()._parse_range_header(http_range, file_size)
        except (MalformedRangeHeader, RangeNotSatisfiable):
            return []  # no range: the whole file


def forecast_answer(settings: Settings, runs: Runs, service: ForecastService,
                    metrics: ApiMetrics) -> Callable[[ForecastBody, float], Awaitable[Response]]:
    """What ``POST /v1/forecasts`` answers a valid body and ``wait`` (the FastAPI route's and
    :mod:`crypto_ml.api.fast_path`'s); a question asked before, from :mod:`.answers`."""
    answers = Answers(settings.api_answer_seconds)
    metrics.awaiting.set_function(lambda: answers.awaiting)

    async def reused(old_id: str, answer: bytes, wait: float) -> Response:
        run_id = uuid.uuid4().hex
        await runs.keep(run_id, again := renamed(answer, old_id, run_id))
        metrics.reused.inc()  # wait=0 on workers: a 202, as the question's first asking got
        if wait > 0 or runs.at_once:
            return Response(again, media_type="application/json")
        return _accepted(run_id)

    async def answer(body: ForecastBody, wait: float) -> Response:
        if wait > settings.api_max_wait:
            raise Invalid([{"loc": ["query", "wait"], "type": "value_error",
                            "msg": f"must be at most {settings.api_max_wait} "
                                   f"(CRYPTO_ML_API_MAX_WAIT), got {wait:g}"}])
        requests = await service.checked(body)
        key = answers.key(requests)
        async with answers.asking(key, wait) as asking:  # asked meanwhile: wait for that one
            if (kept := answers.get(key)) is not None:  # asked before: its answer, a new id
                return await reused(kept.run_id, kept.answer, wait)
            if (shared := asking.shared) is not None:  # asked at the same time (any answer)
                return await reused(shared.id, shared.encoded(), wait)
            run = await runs.submit(requests, listen=asking.left > 0)
            state = await runs.wait(run, asking.left)
            if state is not None:
                metrics.count_run(state)
                answers.put(key, state)
                asking.answered(state)
                return Response(state.encoded(), media_type="application/json")
        try:
            await runs.save(run)
        except Exception:  # the run could not be saved: withdraw it
            await runs.discard(run)
            raise
        return _accepted(run.id)

    return answer


def _accepted(run_id: str) -> Response:
    url = f"/v1/forecasts/{run_id}"
    return JSONResponse({"id": run_id, "status_url": url}, status_code=202,
                        headers={"Location": url})


def forecast_routes(runs: Runs, answer: Callable[[ForecastBody, float], Awaitable[Response]],
                    metrics: ApiMetrics, authorized: Sequence[Depends]) -> APIRouter:
    """``POST /v1/forecasts`` (answered by ``answer``) and ``GET /v1/forecasts/{id}``."""
    router = APIRouter(dependencies=authorized, tags=["forecasts"])

    @router.post("/v1/forecasts", summary="Forecast coins or your own series",
                 responses={200: {"model": RunStatus, "description": "finished within wait"},
                            202: {"model": Accepted, "description": "queued; poll status_url"},
                            **UNAUTHORIZED, **BODY_REFUSED,
                            422: {"model": Unprocessable,
                                  "description": "a field is invalid; the body names it"},
                            503: {"model": Problem,
                                  "description": "broker down: nothing was queued"}})
    async def post_forecast(body: ForecastBody, wait: Wait = 0) -> Response:
        # the well-formed requests are answered in front of this route (api/fast_path.py),
        # which reads these inputs alone: a new one goes there too
        return await answer(body, wait)

    @router.get("/v1/forecasts/{run_id}", summary="A forecast run's status and results",
                response_model=RunStatus,
                responses={**UNAUTHORIZED,
                           404: {"model": Problem, "description": "no such run (or expired)"},
                           503: {"model": Problem, "description": "result backend unreachable"}})
    async def get_forecast(run_id: str) -> Response:
        state = await runs.state(run_id)
        if state is None:
            raise _not_found(f"forecast run {run_id[:100]!r}")
        if state.fresh:
            metrics.count_run(state)
        return Response(state.encoded(), media_type="application/json")

    return router


def job_routes(jobs: Jobs | None, authorized: Sequence[Depends]) -> APIRouter:
    """``POST /v1/jobs``, and ``GET`` / ``DELETE /v1/jobs/{id}``: table runs on the cluster."""
    router = APIRouter(dependencies=authorized, tags=["jobs"])

    def cluster_jobs() -> Jobs:
        if jobs is None:
            raise HTTPException(503, "jobs run on a cluster; this server runs forecasts "
                                "in-process (--in-process)")
        return jobs

    @router.post("/v1/jobs", status_code=202, response_model=JobAccepted,
                 summary="Forecast a long table of the data directory into Parquet",
                 responses={**UNAUTHORIZED, **BODY_REFUSED,
                            409: {"model": Problem,
                                  "description": "resume names a job that did not fail, or "
                                                 "one already resumed"},
                            422: {"model": Unprocessable,
                                  "description": "the body or the table is invalid, or resume "
                                                 "names an unknown job or one of another body "
                                                 "or input; named"},
                            503: {"model": Problem,
                                  "description": "no cluster, an s3:// input unreachable, or "
                                                 "the jobs folder unwritable"}})
    async def post_job(body: JobBody) -> Response:
        try:  # it reads the table's metadata (a file, or S3): off the event loop
            job = await asyncio.to_thread(cluster_jobs().submit, body)
        except DataNotFound:  # S3 unreachable: 503, try again
            raise
        except JobConflict as exc:  # the job to resume is running, done or taken
            raise HTTPException(409, str(exc)) from None
        except OutputUnwritable as exc:  # the jobs folder: the server's to mend
            raise HTTPException(503, str(exc)) from None
        except ConfigError as exc:  # a bad path, table or model: the caller's to fix
            raise Invalid([{"loc": ["body"], "msg": str(exc), "type": "value_error"}]) from None
        url = f"/v1/jobs/{job.id}"
        return JSONResponse({"id": job.id, "status_url": url}, status_code=202,
                            headers={"Location": url})

    # one route for both methods: a 405's Allow header then names both (schemathesis checks)
    @router.api_route("/v1/jobs/{job_id}", methods=["GET", "DELETE"], response_model=JobStatus,
                      summary="GET: a job's progress and output; DELETE: cancel it (its queued "
                      "work is revoked)",
                      responses={**UNAUTHORIZED,
                                 404: {"model": Problem,
                                       "description": "no such job (or expired)"},
                                 503: {"model": Problem,
                                       "description": "no cluster, or its Redis unreachable"}})
    async def job(job_id: str, request: Request) -> dict[str, Any]:
        running = cluster_jobs()  # any replica: the record is in the result backend
        found = await (running.cancel(job_id) if request.method == "DELETE"
                       else running.get(job_id))
        if found is None:
            raise _not_found(f"job {job_id[:100]!r}")
        return found

    def serving(table: str) -> Callable[[str], Awaitable[FileResponse]]:
        async def serve(job_id: str) -> FileResponse:
            return await table_file(job_id, table)
        return serve

    async def table_file(job_id: str, table: str) -> FileResponse:
        try:
            path = await cluster_jobs().table(job_id, table)
        except JobConflict as exc:
            raise HTTPException(409, str(exc)) from None
        except DataNotFound as exc:
            raise HTTPException(410, str(exc)) from None
        if path is None:
            raise _not_found(f"job {job_id[:100]!r}")
        suffix = "" if table == "output" else ".failures"
        return TableFile(path, media_type=PARQUET, filename=f"{job_id}{suffix}.parquet")

    for table, what in (("output", "forecasts, in the layout of `send-tasks --output`"),
                        ("failures", "failures table (unique_id, model, error)")):
        router.add_api_route(
            f"/v1/jobs/{{job_id}}/{table}", serving(table),
            methods=["GET", "HEAD"], response_class=TableFile, name=f"job_{table}",
            summary=f"A done job's {what}, as Parquet",
            responses={200: {"content": {PARQUET: {"schema": BINARY}},
                            "description": "the Parquet file"},
                       206: {"content": {PARQUET: {"schema": BINARY}},
                             "description": "the bytes a Range header asked for (a Range "
                                            "that cannot be served is ignored: 200)"},
                       **UNAUTHORIZED, **_problems({
                           404: "no such job (or expired)", 409: "the job is not done",
                           410: "the file was removed from the jobs folder",
                           503: "no cluster, or its Redis unreachable"})})
    return router


def data_routes(service: ForecastService, authorized: Sequence[Depends]) -> APIRouter:
    """``GET /v1/coins`` and ``GET /v1/models``."""
    router = APIRouter(dependencies=authorized, tags=["data"])

    @router.get("/v1/coins", response_model=Coins, summary="Coin ids of the data directory",
                responses={**UNAUTHORIZED, 503: {"model": Problem, "description": "no data"}})
    async def coins() -> dict[str, Any]:
        return {"coins": await asyncio.to_thread(service.coins.names)}  # may parse files

    @router.get("/v1/models", response_model=Models, summary="Models, their queue and options",
                responses=UNAUTHORIZED)
    async def models() -> dict[str, Any]:
        return {"models": model_infos()}

    return router


def operation_routes(runs: Runs, metrics: ApiMetrics) -> APIRouter:
    """``GET /healthz`` and ``GET /metrics``, open to probes and scrapers."""
    router = APIRouter(tags=["operations"])

    @router.get("/healthz", response_model=Health,
                summary="Broker reachable and workers online (503 otherwise)",
                responses={503: {"model": Health}})
    async def healthz() -> Response:
        state = await runs.health()
        return JSONResponse(state, status_code=200 if state["status"] == "ok" else 503)

    @router.get("/metrics", summary="Prometheus metrics", response_class=Response)
    def prometheus() -> Response:  # in the thread pool, once a scrape: the queue depth's
        # collector reads the broker with a blocking client, as prometheus_client collects
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return router
