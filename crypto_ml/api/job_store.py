"""Table jobs' records in Redis, so that every API replica answers for every job.

Two keys per job, in the result backend beside the API's saved runs (``crypto_ml:run:<id>``),
each kept ``CRYPTO_ML_RESULT_EXPIRES`` after its last write:

* ``crypto_ml:job:<id>``: the record, JSON, written whole (``SET EX``) by the one replica
  running the job: ``status``, ``series``, ``done``, ``failed``, ``started`` and
  ``finished`` (unix time), ``error``, ``output``, ``failures_output``, ``replica``
  (``host:pid``), ``heartbeat`` (unix time of the write) and ``stale_after`` (seconds
  without a heartbeat after which that replica counts as gone);
* ``crypto_ml:job:<id>:cancel``: set by ``DELETE`` on any replica; the running one reads
  the flags of all its jobs in one ``MGET``;
* ``crypto_ml:job:<id>:resumed``: the id of the job that took this failed job's finished
  chunks (``"resume": "<id>"``; see :mod:`crypto_ml.api.job_files`).

Strings rather than a hash: the manager's Redis user already runs ``SET``, ``GET`` and
``MGET``, so the jobs' key pattern widens nothing on the embedded Redis 6.2, whose users get
every command of their role on every key of it (``HSET`` would reach ``unacked`` there).

A queued or running job whose heartbeat is older than its ``stale_after`` is reported as
failed: the process running it stopped (killed, evicted, its node lost) and nobody else
will finish it. The store writes nothing per series: :class:`~crypto_ml.api.jobs.Jobs`
hands it every job's progress at most a few times a second.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from crypto_ml.core import keys

CANCEL = ":cancel"  # the cancel flag's key: the record's and this
RESUMED = ":resumed"  # the key naming the job that resumed this one
ACTIVE = ("queued", "running")


def replica_id() -> str:
    """This API process: its host (the pod's name in Kubernetes) and pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


def stopped_error(replica: str, why: str) -> str:
    return f"the API process running this job ({replica}) stopped ({why})"


def _how_to_go_on(job_id: str, resumed_by: str | None) -> str:
    if resumed_by is not None:
        return f"resumed as job {resumed_by} (/v1/jobs/{resumed_by})"
    return (f'POST the same body with "resume": "{job_id}" to go on from its finished chunks '
            "(kept until its record expires)")


class JobStore:
    """Job records on ``client`` (a redis-py client), each kept ``ttl`` seconds."""

    def __init__(self, client: Any, ttl: int) -> None:
        self.client = client
        self.ttl = ttl

    def write(self, record: dict[str, Any]) -> None:
        """Create or replace the record of ``record["id"]``."""
        self.client.set(keys.JOB + record["id"], json.dumps(record), ex=self.ttl)

    def beat(self, records: list[dict[str, Any]], watched: list[str]
             ) -> tuple[set[str], dict[str, str]]:
        """Write ``records`` and read the cancel flags and resumers of ``watched``, in one
        round trip: the ids asked to stop, and ``{id: the job that resumed it}`` (a job this
        replica still runs, resumed elsewhere while this process did not answer)."""
        pipe = self.client.pipeline(transaction=False)
        for record in records:
            pipe.set(keys.JOB + record["id"], json.dumps(record), ex=self.ttl)
        if watched:
            pipe.mget([keys.JOB + job_id + flag for flag in (CANCEL, RESUMED)
                       for job_id in watched])
        replies = pipe.execute()  # the records' writes, even with no flag to read
        flags = replies[-1] if watched else []
        cancel, resumed = flags[:len(watched)], flags[len(watched):]
        return ({job_id for job_id, flag in zip(watched, cancel, strict=True) if flag},
                {job_id: json.loads(by) for job_id, by in zip(watched, resumed, strict=True)
                 if by})

    def resumed_by(self, job_id: str) -> str | None:
        """The job that resumed ``job_id``, if one did."""
        return _job_named(self.client.get(keys.JOB + job_id + RESUMED))

    def read(self, job_id: str) -> dict[str, Any] | None:
        """The record, or None for an unknown (or expired) id."""
        return _record(self.client.get(keys.JOB + job_id))

    def mark_resumed(self, job_id: str, by: str) -> None:
        """Say that job ``by`` took ``job_id``'s chunks (:mod:`crypto_ml.api.job_files`)."""
        self.client.set(keys.JOB + job_id + RESUMED, json.dumps(by), ex=self.ttl)

    def claim(self, job_id: str, by: str) -> str | None:
        """Mark ``job_id`` as resumed by job ``by`` unless it is marked already; None if this
        call did, else the job it names."""
        key = keys.JOB + job_id + RESUMED
        if self.client.set(key, json.dumps(by), ex=self.ttl, nx=True):
            return None
        return self.resumed_by(job_id) or ""

    def records(self, job_ids: list[str]) -> list[dict[str, Any] | None]:
        """The records of ``job_ids``, in one round trip (None for unknown or expired)."""
        raws = self.client.mget([keys.JOB + job_id for job_id in job_ids]) if job_ids else []
        return [_record(raw) for raw in raws]

class JobRecords:
    """What ``GET`` and ``DELETE /v1/jobs/{id}`` read and ask, on any replica, from the API's
    event loop: ``client()`` is the loop's :mod:`redis.asyncio` client."""

    def __init__(self, client: Callable[[], Any], ttl: int) -> None:
        self.client = client
        self.ttl = ttl

    async def read(self, job_id: str) -> dict[str, Any] | None:
        """The record, or None for an unknown (or expired) id."""
        return _record(await self.client().get(keys.JOB + job_id))

    async def read_with_flags(self, job_id: str) -> tuple[dict[str, Any] | None, bool, str | None]:
        """The record, whether a cancel was asked, and the job that resumed it, in one round
        trip."""
        raw, cancel, by = await self.client().mget([keys.JOB + job_id + flag
                                                    for flag in ("", CANCEL, RESUMED)])
        return _record(raw), bool(cancel), _job_named(by)

    async def cancel(self, job_id: str) -> tuple[dict[str, Any] | None, bool, str | None]:
        """Ask the replica running the job to stop it (if it is queued or running); as
        :meth:`read_with_flags` after that."""
        record, asked, by = await self.read_with_flags(job_id)
        if record is not None and record["status"] in ACTIVE and not asked:
            await self.client().set(keys.JOB + job_id + CANCEL, "1", ex=self.ttl)
            asked = True
        return record, asked, by


def _job_named(raw: bytes | None) -> str | None:
    """The job id a ``:resumed`` key holds (JSON text), or None."""
    return None if raw is None else str(json.loads(raw))


def _record(raw: bytes | None) -> dict[str, Any] | None:
    """A stored record; None for none, and for a flag read as a job ("<id>:cancel")."""
    record = None if raw is None else json.loads(raw)
    return record if isinstance(record, dict) else None


def status_of(record: dict[str, Any], now: float | None = None,
              resumed_by: str | None = None, cancel_asked: bool = False) -> dict[str, Any]:
    """A record as ``GET /v1/jobs/{id}`` answers it (a gone replica's job: failed; a failed
    job's error says how to go on: resume it, or the job that did; a queued or running one
    says whether a ``DELETE`` asked it to stop). Its rate counts the series it computed, not
    those it took from the job it resumed."""
    now = time.time() if now is None else now
    status, error = record["status"], record["error"]
    silent = now - record["heartbeat"]
    # the rate as of the record's last write (its done, at its heartbeat): against now it sank
    # while a dead replica's job still read running, then rose again as it turned failed
    end = record["finished"] or record["heartbeat"]
    if status in ACTIVE and silent > record["stale_after"]:
        status = "failed"
        error = stopped_error(record["replica"], f"no heartbeat for {silent:.0f} s")
    resumed_by = resumed_by if status == "failed" else None
    if status == "failed" and (record.get("resumable", True) or resumed_by is not None):
        error = f"{error}; {_how_to_go_on(record['id'], resumed_by)}"
    started = record["started"]
    series, done, failed = record["series"], record["done"], record["failed"]
    if status == "failed" and "unreturned" in record:  # (an older replica's record: as it was)
        failed += max(0, series - done - record["unreturned"])  # every series left unfinished
    rate = (done - record.get("resumed", 0)) / (end - started) if end > started else 0.0
    eta = (series - done) / rate if status == "running" and rate > 0 else None
    return {"id": record["id"], "status": status, "series": series, "done": done,
            "failed": failed, "series_per_second": round(rate, 1),
            "eta_seconds": None if eta is None else round(eta, 1),
            "output": record["output"], "failures_output": record["failures_output"],
            "error": error, "resumed_from": record.get("resumed_from"),
            "resumed": record.get("resumed", 0), "resumed_by": resumed_by,
            "cancel_requested": cancel_asked and status in ACTIVE}
