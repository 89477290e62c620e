"""What table jobs keep in the shared jobs folder (``CRYPTO_ML_API_JOBS_DIR``), beside their
outputs: a failed job's finished chunks, handed to the job that resumes it; and the
clearing of what jobs left that nobody can resume any more.

A resume takes the old job's parts folder by renaming it (:meth:`~crypto_ml.dispatch.
table_output.TableOutput.take_parts`): the rename is what lets one job only have them (two
replicas racing, one rename succeeds), so it comes after the new job's record is written.
Just before it, the job marks the old one ``:resumed`` by itself unless a mark is there
(:meth:`~crypto_ml.api.job_store.JobStore.claim`); after it, the winner marks it so for good
(:meth:`~crypto_ml.api.job_store.JobStore.mark_resumed`). A job that finds no chunks to take
(the old job finished none, or another job renamed them) wins only by setting that mark
first, so it never starts the whole input again while another job holds the chunks. A
failure anywhere before the rename leaves the chunks where they were, for the next resume;
a mark naming a job that never took them (its POST failed after marking, or its replica
died) does not block one either, since the rename decides while the chunks are there.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from crypto_ml.core.errors import ConfigError, DataNotFound, JobConflict, OutputMismatch
from crypto_ml.core.paths import write_problem
from crypto_ml.dispatch.table_output import TableOutput, failures_path, run_differences

from .job_store import ACTIVE, JobStore, status_of

log = logging.getLogger(__name__)
JOB_ID = r"^[0-9a-f]{32}$"
_ID = re.compile(JOB_ID)
#: what a job leaves beside the outputs: its parts folder, its outputs half joined, the
#: lock file its run held (:func:`~crypto_ml.dispatch.table_output.held`)
_LEFT = re.compile(r"^\.([0-9a-f]{32})(?:\.parquet\.parts|\.parquet\.lock|(?:\.failures)?"
                   r"\.parquet(?:\.[0-9a-f]{12})?\.tmp)$")


def output_of(folder: Path, job_id: str, run: dict[str, Any]) -> TableOutput:
    """Job ``job_id``'s output (``<id>.parquet``, its parts beside it), for the run ``run``."""
    return TableOutput(folder / f"{job_id}.parquet", run)


def resumable(store: JobStore, folder: Path, old: str) -> dict[str, Any]:
    """The record of job ``old`` if it may be resumed (checked before the input is read):
    ConfigError when there is none, JobConflict when it did not fail or another job took
    its chunks."""
    record = store.read(old)
    if record is None:
        raise ConfigError(f"resume: no job {old!r} (unknown, or its record expired after "
                          "CRYPTO_ML_RESULT_EXPIRES, and its finished chunks with it)")
    status = status_of(record)["status"]
    if status != "failed":
        gone = ": a cancelled job's chunks are deleted" if status == "cancelled" else ""
        raise JobConflict(f"resume: job {old} is {status}; only a failed job can be "
                          f"resumed{gone}")
    if record.get("resumable") is False:
        raise JobConflict(f"resume: job {old} failed as any run of its body would (the "
                          "workers refused its chunks, or it never started): fix the body "
                          "and POST it without resume")
    by = store.resumed_by(old)
    if by is not None and not output_of(folder, old, {}).parts.exists():
        raise JobConflict(f"resume: job {old} was resumed already, as job {by} "
                          f"(/v1/jobs/{by})")
    return record


def same_run(record: dict[str, Any], output: TableOutput, earlier: TableOutput) -> bool:
    """Whether ``earlier`` (the old job's output) left chunks; ConfigError naming what
    differs when the old job (its record, its chunks' manifest) ran another body or input."""
    try:
        if "run" in record and (differ := run_differences(record["run"], output.run)):
            raise OutputMismatch(", ".join(differ))
        return output.held_by(earlier)
    except OutputMismatch as exc:
        raise ConfigError(f"resume: job {record['id']} ran another body or input; what "
                          f"differs: {exc}. POST the body it ran, or leave out resume") from None


def take_over(store: JobStore, old: str, new: str, output: TableOutput, earlier: TableOutput,
              kept: bool, not_started: Callable[[str], None]) -> None:
    """Give job ``new`` (its record written) the chunks of ``old``; JobConflict when another
    job took them first, after ``not_started(why)`` has recorded ``new`` as never run."""
    try:
        if kept:  # marked before the rename: a job that finds no chunks then sees the mark
            store.claim(old, new)  # (a mark already there, maybe stale: the rename decides)
            output.take_parts(earlier)  # FileNotFoundError: another job renamed them first
        won = kept or store.claim(old, new) is None  # no chunks to rename: the mark decides
    except FileNotFoundError:
        won = False
    except OSError as exc:  # the shared folder refused: nothing moved
        not_started(f"could not take job {old}'s chunks")
        raise DataNotFound(f"resume: could not take job {old}'s finished chunks "
                           f"({exc.strerror or type(exc).__name__}); POST again") from None
    if not won:
        taken = f"another job took job {old}'s finished chunks first"
        not_started(taken)
        by = store.resumed_by(old)
        raise JobConflict(f"resume: {taken}" + (f": job {by} (/v1/jobs/{by})" if by else ""))
    if kept:
        try:
            store.mark_resumed(old, new)
        except redis.RedisError as exc:  # the chunks are the new job's: it runs all the same
            log.warning("job %s took job %s's chunks but could not say so (%s)", new, old, exc)


def sweep(store: JobStore, folder: Path, expires: int) -> None:
    """Remove what jobs left that nobody can run or resume any more: the finished chunks
    (``.<id>.parquet.parts``), lock files, half-joined outputs and S3 copies (``inputs/<id>``) of jobs
    whose records expired and that nothing touched for as long as a record lives (a running
    job whose record a Redis restart dropped writes its chunks still); and the S3 copies of
    jobs recorded as ended (a resume copies its input again). Never fails a POST."""
    try:
        found = [(m.group(1), p) for p in folder.iterdir() if (m := _LEFT.fullmatch(p.name))]
        copies = folder / "inputs"
        if copies.is_dir():
            found += [(p.name, p) for p in copies.iterdir() if is_job_id(p.name)]
        ids = sorted({job_id for job_id, _ in found})
        records = dict(zip(ids, store.records(ids), strict=True))
    except (OSError, redis.RedisError) as exc:
        log.warning("could not look for what ended jobs left in %s (%s)", folder, exc)
        return
    expired_before = time.time() - expires
    for job_id, path in found:
        record = records[job_id]
        ended = record is not None and record["status"] not in ACTIVE  # as stored: a paused
        try:  # replica's job reads failed, but may yet go on
            if ((record is None and path.stat().st_mtime < expired_before)
                    or (ended and path.parent == copies)):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        except FileNotFoundError:  # another replica's POST removed it first
            continue
        except OSError as exc:
            log.warning("could not remove %s (%s)", path, exc)


def finished_table(record: dict[str, Any] | None, folder: Path, job_id: str, table: str
                   ) -> Path | None:
    """The file of a done job's ``table`` (``output``, the forecasts; ``failures``, its
    failures table), found in ``folder`` by the job's id, never by a path its ``record``
    holds; None for an unknown (or expired) job; JobConflict while the job is not done, and
    DataNotFound when its file is no longer in the folder."""
    if record is None:
        return None
    status = status_of(record)["status"]
    what = "output" if table == "output" else "failures table"
    if status in ACTIVE:
        raise JobConflict(f"job {job_id} is {status}: its {what} is there once it is done")
    if status != "done":
        raise JobConflict(f"job {job_id} is {status}: it has no {what}"
                          + ("; its status says how to resume it" if status == "failed" else ""))
    out = folder / f"{job_id}.parquet"
    path = out if table == "output" else failures_path(out)
    if not path.is_file():
        raise DataNotFound(f"job {job_id}'s {table} is no longer in the jobs folder "
                           "(CRYPTO_ML_API_JOBS_DIR); POST the job again")
    return path


def jobs_folder_problem(folder: Path, make: bool = True) -> str | None:
    """Why the server cannot keep its jobs' outputs in ``folder`` (CRYPTO_ML_API_JOBS_DIR),
    or None (:func:`~crypto_ml.core.paths.write_problem`). ``make``: the folder is made when
    missing; else (at start) its nearest folder that is there is tried instead."""
    try:
        if make:
            folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        why: object = exc.strerror or exc
    else:
        if (found := write_problem(folder)) is None:
            return None
        why = found[1]
    return f"the server's jobs folder {folder} (CRYPTO_ML_API_JOBS_DIR) cannot be written ({why})"


def is_job_id(text: str) -> bool:
    """Whether ``text`` has the shape of a job's id (one a job folder may bear)."""
    return _ID.fullmatch(text) is not None
