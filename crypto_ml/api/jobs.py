"""Table runs over HTTP: ``POST /v1/jobs`` forecasts a long table the server may read into
Parquet, ``GET /v1/jobs/{id}`` reports its progress, ``DELETE /v1/jobs/{id}`` cancels it.

A job is the table run of ``send-tasks --input T --output O`` (:func:`~crypto_ml.dispatch.
table_run.run_table`: same chunks, backpressure, resume and output layout), run by a thread
of the API process that accepted it, on the API's cluster. The input is a path inside the
data directory (``CRYPTO_ML_DATA_DIR``); the output goes to ``CRYPTO_ML_API_JOBS_DIR`` as
``<id>.parquet`` (and ``<id>.failures.parquet``): with several replicas, a folder they all
share (docs/deployment.md).

Every replica answers for every job: its record lives in Redis
(:mod:`crypto_ml.api.job_store`). The running replica writes the job's progress and a
heartbeat there at most every :data:`SYNC_SECONDS` (and at least every
``CRYPTO_ML_HEARTBEAT_SECONDS``), and reads the job's cancel flag, which ``DELETE`` on any
replica sets; the run then stops and its queued chunks are revoked. A job whose replica
stopped answering for ``3 * CRYPTO_ML_DEAD_AFTER_SECONDS`` is reported failed; one whose
replica shuts down (SIGTERM: a rollout, a scale-down) is stopped, its queued work revoked,
and recorded failed; so is one whose replica wakes from such a silence (a paused VM, a
network split), so that failed, once reported, is final. A failed job keeps its finished
chunks (the parts of its table run) while its record lives: POSTing the same body with
``"resume": "<its id>"`` starts a new job that takes them and computes only the rest, once
(the rename of the parts folder decides which job takes them: :mod:`crypto_ml.api.
job_files`) under a new run id, so that the old run, were its process only paused, ends
without touching it (that process stops its run when it sees the job was resumed). A
cancelled job's chunks go. What jobs left that nobody can resume any more (chunks,
half-joined outputs, S3 copies) is removed by a later ``POST``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from celery import Celery

from crypto_ml.core.errors import ConfigError, CryptoMLError, InvalidTable, OutputUnwritable
from crypto_ml.core.settings import Settings
from crypto_ml.data.table import Columns, TableSource
from crypto_ml.data.table_checks import as_given
from crypto_ml.dispatch.capacity import InFlight
from crypto_ml.dispatch.table_output import TableOutput, failures_path, held
from crypto_ml.dispatch.table_run import TablePlan, run_table
from crypto_ml.models import parse_fallback, parse_models, window_problem
from crypto_ml.worker.app import table_queue

from .inputs import BODY_COLUMNS, discard_copy, read_input
from .job_files import (
    finished_table,
    is_job_id,
    jobs_folder_problem,
    output_of,
    resumable,
    same_run,
    sweep,
    take_over,
)
from .job_store import JobRecords, JobStore, replica_id, status_of, stopped_error
from .schemas import JobBody, JobState

log = logging.getLogger(__name__)
#: A job's seconds without any outcome before its pending chunks count as failed.
JOB_TIMEOUT = 3600.0
#: Seconds between a replica's writes of its jobs' progress (and reads of their cancel flags).
SYNC_SECONDS = 0.5
#: Why a job stopped that another replica resumed while this process did not answer (paused).
UNANSWERED = "it did not answer in time"
#: Seconds a stopping replica waits for its jobs to revoke their queued work.
STOP_SECONDS = 5.0
class JobCancelled(Exception):
    """Raised inside a job's run to stop it (its pending chunks are revoked)."""


@dataclass
class Job:
    """A job run by this process: its progress, as the run reports it."""

    id: str
    output: Path
    series: int
    status: JobState = "queued"
    done: int = 0
    failed: int = 0
    started: float = field(default_factory=time.time)
    finished: float | None = None
    error: str | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    stop_reason: str | None = None  # set when this process stops it (not a client's DELETE)
    settled: bool = False  # its final record is written: no more writes
    written: tuple[str, int, int, float] = ("", -1, -1, 0.0)  # status, done, failed, when
    resumed_from: str | None = None
    resumed: int = 0
    resumable: bool = True  # False: it failed as any run of its body would (refused chunks)
    run: dict[str, Any] = field(default_factory=dict)  # what it computes (a resume must match)

    unreturned: int = 0  # series of its chunks that did not come back (in failed, not done)

    def progress(self, done: int, failed: int) -> None:
        """A chunk ended: written (``done`` series, ``failed`` of them with a failed
        forecast), or not come back (no series done, all ``failed``)."""
        self.status = "running"
        self.done += done
        self.failed += failed
        self.unreturned += 0 if done else failed

    def skip(self, series: int, failed: int) -> None:
        """``series`` were written by the failed job this one resumes, ``failed`` failed."""
        self.resumed += series
        self.done += series
        self.failed += failed

    def check_cancel(self) -> None:
        if self.cancel.is_set():
            raise JobCancelled

    def record(self, replica: str, stale_after: float) -> dict[str, Any]:
        """Its record (:mod:`crypto_ml.api.job_store`), stamped now."""
        return {"id": self.id, "status": self.status, "series": self.series, "done": self.done,
                "failed": self.failed, "started": self.started, "finished": self.finished,
                "error": self.error, "output": str(self.output),
                "failures_output": str(failures_path(self.output)), "replica": replica,
                "heartbeat": time.time(), "stale_after": stale_after,
                "resumed_from": self.resumed_from, "resumed": self.resumed,
                "resumable": self.resumable, "run": self.run, "unreturned": self.unreturned}


class Jobs:
    """The table runs of one API process, on the cluster of ``app``; their records in the
    result backend, where every replica reads them: this process's job threads through
    ``app``'s client, its routes through ``backend()``, the event loop's redis.asyncio
    client."""

    def __init__(self, app: Celery, settings: Settings, backend: Callable[[], Any]) -> None:
        self.app = app
        self.settings = settings
        self.store = JobStore(app.backend.client, settings.result_expires)
        self.records = JobRecords(backend, settings.result_expires)
        self.replica = replica_id()
        self.stale_after = 3.0 * settings.dead_after_seconds
        self._jobs: dict[str, tuple[Job, threading.Thread]] = {}
        self._lock = threading.Lock()  # _jobs, and each record write against the others
        self._stop = threading.Event()
        self._syncer: threading.Thread | None = None

    def submit(self, body: JobBody) -> Job:
        """Check the body and the table (ConfigError naming what is wrong; JobConflict when
        the job to resume cannot be), start the run."""
        models = parse_models(body.model)
        fallback = (None if body.fallback_model is None
                    else parse_fallback(body.fallback_model, models))
        if (why := self.settings.horizon_problem(body.horizon)) is not None:
            raise ConfigError(f"horizon {why}")
        fitted = [*models, *([fallback] if fallback else [])]
        if why := window_problem(body.max_points, fitted, None, bool(body.levels), whole="0"):
            raise ConfigError(f"max_points {why}")  # as send-tasks --input: before any work
        job_id = uuid.uuid4().hex
        folder = self.settings.api_jobs_dir
        if (why := jobs_folder_problem(folder)) is not None:  # the server's to mend: 503
            log.error("POST /v1/jobs: %s", why)  # the caller is not told the server's paths
            raise OutputUnwritable("the server cannot keep job outputs now (its jobs folder, "
                                   "CRYPTO_ML_API_JOBS_DIR, cannot be written); its operator "
                                   "must mend it")
        copy = folder / "inputs" / job_id  # an s3:// input's local copy, deleted at the end
        if body.resume:  # before the input is read: it may be a long copy
            resumable(self.store, folder, body.resume)
        source, info, state = read_input(body.input, Columns(body.id_col, body.time_col,
                                                             body.value_col),
                                         self.settings.data_dir, copy, folder)
        plan = TablePlan.of(models, body.horizon, body.levels, body.max_points,
                            fallback=fallback)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            sweep(self.store, folder, self.settings.result_expires)
            job = Job(job_id, folder / f"{job_id}.parquet", info.series,
                      run={**plan.describe(source), **state})
            output = output_of(folder, job_id, job.run)
            if body.resume:
                self._resume(body.resume, job, output)
            else:
                self.store.write(job.record(self.replica, self.stale_after))  # before any GET
        except BaseException:
            discard_copy(copy)
            raise
        thread = threading.Thread(target=self._run, args=(job, source, output, plan, copy),
                                  daemon=True, name=f"job-{job.id[:8]}")
        with self._lock:
            self._jobs[job.id] = (job, thread)
            self._start_syncer()
        thread.start()
        return job

    def _resume(self, old: str, job: Job, output: TableOutput) -> None:
        """Record ``job`` as resuming the failed job ``old`` and give it ``old``'s finished
        chunks (ConfigError, JobConflict or DataNotFound, the chunks left where they were,
        when it cannot)."""
        record = resumable(self.store, self.settings.api_jobs_dir, old)
        earlier = output_of(self.settings.api_jobs_dir, old, output.run)
        kept = same_run(record, output, earlier)
        job.resumed_from = old
        self.store.write(job.record(self.replica, self.stale_after))

        def not_started(why: str) -> None:
            job.status, job.error, job.finished = "failed", f"not started: {why}", time.time()
            job.resumable = False
            self.store.write(job.record(self.replica, self.stale_after))

        take_over(self.store, old, job.id, output, earlier, kept, not_started)

    def _run(self, job: Job, source: TableSource, output: TableOutput, plan: TablePlan,
             copy: Path) -> None:
        try:  # the lock a send-tasks run to the same file respects, till the parts go
            with held(output.out, "job output"):
                status, error = self._outcome(job, source, output, plan)
                if status == "cancelled":  # a failed job keeps its chunks, to be resumed
                    output.discard()
        except ConfigError:  # another run writes the file (said without the server's path)
            status, error = "failed", "not started: another run is writing its output file"
        else:
            if status == "failed":  # resumed while this process stalled? (its parts are gone)
                with contextlib.suppress(redis.RedisError):
                    if self.store.resumed_by(job.id) is not None:
                        error = stopped_error(self.replica, UNANSWERED)
        discard_copy(copy)
        job.status, job.error, job.finished = status, error, time.time()  # then it is seen
        self._settle(job)

    def _outcome(self, job: Job, source: TableSource, output: TableOutput, plan: TablePlan
                 ) -> tuple[JobState, str | None]:
        """Run the job; its final status and error. ``failed`` stays what the progress
        counted: series, as while it ran."""
        try:
            summary = run_table(self.app, source, output, plan, job.progress, log.info,
                                job.check_cancel, JOB_TIMEOUT,
                                InFlight(self.app, self.settings.workers,
                                         table_queue(m.model for m in plan.models)),
                                on_skip=job.skip,
                                check_lost_every=self.settings.lost_check_seconds)
        except JobCancelled:
            if job.stop_reason:
                return "failed", stopped_error(self.replica, job.stop_reason)
            return "cancelled", None
        except (CryptoMLError, OSError, redis.RedisError) as exc:  # the broker refused...
            if isinstance(exc, InvalidTable):  # the input itself: a resume reads it alike
                job.resumable = False
            return "failed", self._in_body_words(job, source, f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # a bug: say so in the job, keep the server up
            log.exception("job %s failed", job.id)
            return "failed", f"{type(exc).__name__}: {exc}"
        if summary.chunks_failed:
            first = next(iter(summary.chunks_failed.values()))
            job.resumable = summary.retry_helps()
            fix = "" if job.resumable else ": fix the body, it would fail the same way again"
            return "failed", (f"{len(summary.chunks_failed)} chunk(s) did not come back "
                              f"({first}); no output was written{fix}")
        return "done", None

    def _in_body_words(self, job: Job, source: TableSource, message: str) -> str:
        """A run's error as the body put it: its input as given, no path of the server's."""
        given = str(job.run.get("input", ""))
        message = as_given(message, f"input {given[:200]!r}", Path(source.path), given,
                           BODY_COLUMNS)
        for root in {str(self.settings.data_dir), str(self.settings.data_dir.resolve())}:
            message = message.replace(f"{root}/", "")
        return message

    def _settle(self, job: Job) -> None:
        """Write the job's final record (retried by the syncer if Redis is away now)."""
        with self._lock:
            try:
                self.store.write(job.record(self.replica, self.stale_after))
            except redis.RedisError as exc:
                log.warning("job %s: could not record its end yet (%s)", job.id, exc)
                return
            job.settled = True
            self._jobs.pop(job.id, None)

    # -- the syncer: every job's progress out, cancel flags in -------------------------------

    def _start_syncer(self) -> None:
        if self._syncer is None or not self._syncer.is_alive():
            self._syncer = threading.Thread(target=self._sync_loop, daemon=True,
                                            name="jobs-sync")
            self._syncer.start()

    def _sync_loop(self) -> None:
        while not self._stop.wait(SYNC_SECONDS):
            try:
                self.sync()
            except redis.RedisError as exc:  # heartbeats lapse; they resume with Redis
                log.warning("could not record the jobs' progress (%s)", exc)
            except Exception:  # a bug: say so, keep beating (silence reads as a dead replica)
                log.exception("could not record the jobs' progress")

    def sync(self) -> None:
        """One round trip: the progress of jobs that moved (or whose heartbeat is due) out,
        every running job's cancel flag in; final records that failed to write, again."""
        with self._lock:
            jobs = [job for job, _ in self._jobs.values()]
            if not jobs:
                return
            now = time.time()
            running = [job for job in jobs if job.finished is None]
            for job in [job for job in running if self._stalled(job, now)]:
                running.remove(job)  # readers have said failed since: it ends so, resumable
                job.stop_reason = f"it did not answer for {now - job.written[3]:.0f} s"
                job.cancel.set()
            due = [(job, job.record(self.replica, self.stale_after)) for job in running
                   if self._due(job, now)]
            updates = [record for _, record in due]
            updates += [job.record(self.replica, self.stale_after)
                        for job in jobs if job.finished is not None]
            cancelled, resumed = self.store.beat(updates, [job.id for job in running])
            for job, record in due:  # what was written, though the run may have moved since
                job.written = (record["status"], record["done"], record["failed"], now)
            for job in jobs:
                if job.finished is not None:
                    job.settled = True
                    self._jobs.pop(job.id, None)
                elif job.id in resumed:  # taken over while this process did not answer
                    job.stop_reason = UNANSWERED
                    job.cancel.set()
                elif job.id in cancelled:
                    job.cancel.set()

    def _stalled(self, job: Job, now: float) -> bool:
        """Whether the job's last heartbeat is older than ``stale_after`` (this process was
        paused, or cut off from Redis): every replica then reports it failed, so it may not
        come back to life."""
        return 0 < job.written[3] < now - self.stale_after

    def _due(self, job: Job, now: float) -> bool:
        status, done, failed, when = job.written
        return ((job.status, job.done, job.failed) != (status, done, failed)
                or now - when >= self.settings.heartbeat_seconds)

    # -- any replica -------------------------------------------------------------------------

    async def get(self, job_id: str) -> dict[str, Any] | None:
        """The job's status, from its record: whichever replica runs it."""
        return self._status(*await self.records.read_with_flags(job_id))

    async def cancel(self, job_id: str) -> dict[str, Any] | None:
        """Ask the replica running the job to stop it; its status, or None if unknown."""
        return self._status(*await self.records.cancel(job_id))

    async def table(self, job_id: str, table: str) -> Path | None:
        """A done job's ``output`` or ``failures`` file (as :func:`~crypto_ml.api.job_files.
        finished_table`)."""
        record = await self.records.read(job_id) if is_job_id(job_id) else None
        return finished_table(record, self.settings.api_jobs_dir, job_id, table)

    @staticmethod
    def _status(record: dict[str, Any] | None, cancel_asked: bool,
                resumed_by: str | None) -> dict[str, Any] | None:
        return None if record is None else status_of(record, resumed_by=resumed_by,
                                                     cancel_asked=cancel_asked)

    def close(self) -> None:
        """The server stops: stop every job it runs, revoking their queued work, and record
        them failed (a client may POST them again, to any replica)."""
        with self._lock:
            running = list(self._jobs.values())
        for job, _ in running:
            job.stop_reason = "it was shut down"
            job.cancel.set()
        deadline = time.monotonic() + STOP_SECONDS
        for _, thread in running:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._stop.set()
        for job, _ in running:
            if not job.settled and job.finished is None:  # its run did not stop in time
                job.status, job.finished = "failed", time.time()
                job.error = stopped_error(self.replica, job.stop_reason or "it was shut down")
                self._settle(job)
