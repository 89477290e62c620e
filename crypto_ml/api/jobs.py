"""Table runs over HTTP: ``POST /v1/jobs`` forecasts a long table the server may read into
Parquet, ``GET /v1/jobs/{id}`` reports its progress, ``DELETE /v1/jobs/{id}`` cancels it.

A job is the table run of ``send-tasks --input T --output O`` (:func:`~crypto_ml.dispatch.
table_run.run_table`: same chunks, backpressure, resume and output layout), run by a thread
of the API process on the API's cluster. The input is a path inside the data directory
(``CRYPTO_ML_DATA_DIR``); the output goes to ``CRYPTO_ML_API_JOBS_DIR`` as ``<id>.parquet``
(and ``<id>.failures.parquet``). A job lives in the process that runs it: another API
replica answers 404 for it, and a restart forgets it (its output, if finished, stays).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
from celery import Celery
from pydantic import BaseModel, ConfigDict, Field

from crypto_ml.core.errors import ConfigError, CryptoMLError
from crypto_ml.core.settings import Settings
from crypto_ml.data.table import Columns, TableSource
from crypto_ml.dispatch.table_output import TableOutput, failures_path
from crypto_ml.dispatch.table_run import TablePlan, default_in_flight, run_table
from crypto_ml.models import DEFAULT_HORIZON, DEFAULT_MODEL, parse_models
from crypto_ml.models.intervals import DEFAULT_LEVELS

from .schemas import Levels, Whole

log = logging.getLogger(__name__)
#: A job's seconds without any outcome before its pending chunks count as failed.
JOB_TIMEOUT = 3600.0
JobState = Literal["queued", "running", "done", "failed", "cancelled"]


class JobBody(BaseModel):
    """A long-format table (``unique_id, ds, y``) to forecast, as ``send-tasks --input``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    input: str = Field(min_length=1, description="a Parquet file, a folder of them or a CSV, "
                       "relative to the server's data directory (CRYPTO_ML_DATA_DIR)")
    model: str | list[str] = Field(DEFAULT_MODEL, description="a model name, a comma list or a list")
    horizon: Whole = Field(DEFAULT_HORIZON, ge=1, description="steps to forecast per series")
    levels: Levels = Field(list(DEFAULT_LEVELS),
                           description="prediction interval levels in percent")
    max_points: Whole | None = Field(None, ge=0, description="fit on the newest N values")
    id_col: str = Field("unique_id", min_length=1)
    time_col: str = Field("ds", min_length=1)
    value_col: str = Field("y", min_length=1)


class JobStatus(BaseModel):
    """Where a job stands; ``output`` is complete once ``status`` is ``done``."""

    id: str
    status: JobState
    series: int = Field(description="series in the input")
    done: int = Field(description="series finished (forecast or failed)")
    failed: int = Field(description="(series, model) pairs in the failures table")
    series_per_second: float
    eta_seconds: float | None
    output: str
    failures_output: str
    error: str | None = None


class JobAccepted(BaseModel):
    id: str
    status_url: str


class JobCancelled(Exception):
    """Raised inside a job's run to stop it (its pending chunks are revoked)."""


@dataclass
class Job:
    id: str
    output: Path
    series: int
    status: JobState = "queued"
    done: int = 0
    failed: int = 0
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    error: str | None = None
    cancel: threading.Event = field(default_factory=threading.Event)

    def progress(self, done: int, failed: int) -> None:
        self.status = "running"
        self.done += done
        self.failed += failed

    def check_cancel(self) -> None:
        if self.cancel.is_set():
            raise JobCancelled

    def to_json(self) -> dict[str, Any]:
        seconds = (self.finished or time.monotonic()) - self.started
        rate = self.done / seconds if seconds > 0 else 0.0
        left = self.series - self.done
        eta = None if self.status != "running" or not rate else left / rate
        return {"id": self.id, "status": self.status, "series": self.series, "done": self.done,
                "failed": self.failed, "series_per_second": round(rate, 1),
                "eta_seconds": None if eta is None else round(eta, 1),
                "output": str(self.output), "failures_output": str(failures_path(self.output)),
                "error": self.error}


class Jobs:
    """The table runs of one API process, on the cluster of ``app``."""

    def __init__(self, app: Celery, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def submit(self, body: JobBody) -> Job:
        """Check the body and the table (ConfigError naming what is wrong), start the run."""
        models = parse_models(body.model)
        if body.horizon > self.settings.max_horizon:
            raise ConfigError(f"horizon must be at most {self.settings.max_horizon} "
                              f"(CRYPTO_ML_MAX_HORIZON), got {body.horizon}")
        path = self._readable(body.input)
        try:
            source = TableSource(path, Columns(body.id_col, body.time_col, body.value_col))
            info = source.check()
        except (OSError, ValueError, pa.ArrowException) as exc:  # InvalidTable is not these
            raise ConfigError(f"cannot read input {body.input[:200]!r} as a long table "
                              f"({type(exc).__name__}: {str(exc)[:300]})") from None
        plan = TablePlan.of(models, body.horizon, body.levels, body.max_points)
        folder = self.settings.api_jobs_dir
        folder.mkdir(parents=True, exist_ok=True)
        job_id = uuid.uuid4().hex
        job = Job(job_id, folder / f"{job_id}.parquet", info.series)
        output = TableOutput(job.output, plan.describe(source))
        with self._lock:
            self._jobs[job.id] = job
        threading.Thread(target=self._run, args=(job, source, output, plan), daemon=True,
                         name=f"job-{job.id[:8]}").start()
        return job

    def _readable(self, given: str) -> Path:
        """``given`` inside the data directory, or ConfigError: the server reads nothing else."""
        root = self.settings.data_dir.resolve()
        try:
            path = (root / given).resolve()
            found = path.exists()
        except (OSError, ValueError) as exc:  # a NUL byte, a name too long...
            raise ConfigError(f"input {given[:200]!r} is not a usable path ({exc})") from None
        if not path.is_relative_to(root):
            raise ConfigError(f"input {given[:200]!r} is outside the server's data directory; "
                              "give a path relative to it (CRYPTO_ML_DATA_DIR)")
        if not found:
            raise ConfigError(f"no input {given[:200]!r} in the server's data directory")
        return path

    def _run(self, job: Job, source: TableSource, output: TableOutput, plan: TablePlan) -> None:
        try:
            summary = run_table(self.app, source, output, plan, job.progress, log.info,
                                job.check_cancel, JOB_TIMEOUT,
                                default_in_flight(self.settings.workers))
        except JobCancelled:
            job.status = "cancelled"
        except (CryptoMLError, OSError) as exc:  # the broker refused, a disk full...
            job.status, job.error = "failed", f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # a bug: say so in the job, keep the server up
            log.exception("job %s failed", job.id)
            job.status, job.error = "failed", f"{type(exc).__name__}: {exc}"
        else:
            job.failed = summary.failures
            if summary.chunks_failed:
                first = next(iter(summary.chunks_failed.values()))
                job.status = "failed"
                job.error = f"{len(summary.chunks_failed)} chunk(s) did not come back ({first})"
            else:
                job.status = "done"
        finally:
            job.finished = time.monotonic()

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def cancel(self, job_id: str) -> Job | None:
        job = self.get(job_id)
        if job is not None:
            job.cancel.set()
        return job

    def close(self) -> None:
        """Cancel every running job (the server stops)."""
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            job.cancel.set()
