"""A job's status as ``GET /v1/jobs/{id}`` answers it, from its record (pure code): once it
has failed, every series it did not finish counts in ``failed``."""

from __future__ import annotations

from typing import Any

import pytest

from crypto_ml.api.job_store import status_of


def record(**fields: Any) -> dict[str, Any]:
    return {"id": "j", "status": "running", "series": 600, "done": 0, "failed": 0,
            "unreturned": 0, "started": 1.0, "finished": None, "error": None,
            "output": "/o.parquet", "failures_output": "/o.failures.parquet",
            "replica": "h:1", "heartbeat": 2.0, "stale_after": 30.0, **fields}


@pytest.mark.parametrize(("fields", "failed"), [
    # shut down before any chunk came back: all 600 will not be finished
    ({"status": "failed", "finished": 2.0, "error": "stopped"}, 600),
    # its replica went silent: 400 done (10 of them with a failed forecast), 200 never will be
    ({"done": 400, "failed": 10}, 210),
    # it ended with chunks that did not come back (counted as they failed): nothing more
    ({"status": "failed", "finished": 2.0, "error": "x", "done": 500, "failed": 105,
      "unreturned": 100}, 105),
    # a client's cancel is no failure; a running or done job counts what ended so far
    ({"status": "cancelled", "finished": 2.0, "done": 100, "failed": 1}, 1),
    ({"heartbeat": 99.0, "done": 100, "failed": 1}, 1),
    ({"status": "done", "finished": 2.0, "done": 600, "failed": 3}, 3),
])
def test_a_failed_job_counts_every_series_it_did_not_finish(fields: dict[str, Any],
                                                            failed: int) -> None:
    status = status_of(record(**fields), now=100.0)
    assert status["failed"] == failed, status
    assert status["done"] == fields.get("done", 0) and status["series"] == 600


def test_a_record_of_an_older_replica_reads_as_it_was_written() -> None:
    # no unreturned key: its failed may hold the chunks that did not come back already, so
    # nothing is added that might count them twice (a rolling upgrade)
    old = record(status="failed", finished=2.0, error="x", done=500, failed=100)
    del old["unreturned"]
    assert status_of(old, now=100.0)["failed"] == 100
