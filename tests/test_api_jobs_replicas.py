"""Table jobs behind a load balancer: four ``python -m crypto_ml.api`` processes (replicas
A, B, C and D) on one real cluster (Redis with its ACL users, two celery workers), logged in
as the manager's user, sharing a data folder and a jobs folder. A job POSTed to A is followed
to the end on B; a job of A is cancelled through B and A's run stops; a job of C, whose
process is killed, and one of D, which is shut down (SIGTERM, as a scale-down does), are
reported failed by B, saying so; each is then resumed on B, which computes only the chunks
they had not finished. A job of E, whose process is paused (SIGSTOP) until B resumes it, is
stopped by E when it wakes, and B's job finishes as soon as it would have."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import redis
import redis.asyncio as aioredis
from acl_discovery import acl_log
from api_support import client, write_coins
from conftest import ROOT
from deploy_support import redis7_server
from table_support import random_walks, write_parquet
from test_api_jobs import queued
from test_api_server import KEY, Server, call, healthy

from crypto_ml.api.app import create_app
from crypto_ml.api.job_files import output_of, resumable, take_over
from crypto_ml.api.job_store import JobRecords, JobStore, status_of
from crypto_ml.api.service import InProcessRuns
from crypto_ml.core import keys
from crypto_ml.core.errors import JobConflict
from crypto_ml.core.settings import Settings
from crypto_ml.dispatch.cluster import LocalCluster
from crypto_ml.dispatch.table_output import TableOutput
from crypto_ml.models import DEFAULT_HORIZON, get_model
from crypto_ml.ops.processes import free_port, spawn, terminate, wait_until

pytestmark = pytest.mark.integration
SMALL, LONG = 400, 3000
ENDED = ("done", "failed", "cancelled")


@pytest.fixture(scope="module")
def replicas(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[dict[str, Server]]:
    """A to E, started together; heartbeats every second, a replica silent for 6 s gone."""
    folder = tmp_path_factory.mktemp("api-replicas")
    data = write_coins(folder / "prices")
    write_parquet(random_walks(SMALL, 40, seed=3), data / "small.parquet")
    write_parquet(random_walks(LONG, 60, seed=5), data / "long.parquet")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTO_ML_")}
    env.update(CRYPTO_ML_BROKER_URL=cluster.url_for("manager"), CRYPTO_ML_DATA_DIR=str(data),
               CRYPTO_ML_API_KEYS=KEY, CRYPTO_ML_API_JOBS_DIR=str(folder / "jobs"),
               CRYPTO_ML_HEARTBEAT_SECONDS="1", CRYPTO_ML_DEAD_AFTER_SECONDS="2")
    servers: dict[str, Server] = {}
    with contextlib.ExitStack() as stack:
        for name in "ABCDE":
            port, log = free_port(), folder / f"api-{name}.log"
            proc = spawn([sys.executable, "-m", "crypto_ml.api", "--port", str(port)], log,
                         env=env, cwd=ROOT)
            stack.callback(terminate, proc)
            servers[name] = Server(proc, f"http://127.0.0.1:{port}", log)
        for name, server in servers.items():
            wait_until(lambda s=server: healthy(s.url), 120, f"replica {name} answering",
                       lambda s=server: None if s.proc.poll() is None
                       else f"exited: {s.log.read_text()[-2000:]}")
        yield servers


def state(server: Server, job_id: str) -> dict[str, Any]:
    status, body = call(f"{server.url}/v1/jobs/{job_id}")
    assert status == 200, body
    return body


def post(server: Server, body: dict[str, Any]) -> str:
    status, accepted = call(f"{server.url}/v1/jobs", body)
    assert status == 202, accepted
    return str(accepted["id"])


def long_job(server: Server, observer: Server) -> str:
    """A long ets job POSTed to ``server``, once ``observer`` sees its first chunk back."""
    job_id = post(server, {"input": "long.parquet", "model": "ets"})
    wait_until(lambda: state(observer, job_id)["done"] > 0, 60,
               "the job's first chunk, seen from another replica")
    return job_id


def record(cluster: LocalCluster, job_id: str) -> dict[str, Any]:
    with cluster.client() as admin:
        return dict(json.loads(admin.get(f"crypto_ml:job:{job_id}")))


def test_a_job_posted_to_one_replica_is_followed_on_another(
        replicas: dict[str, Server], cluster: LocalCluster) -> None:
    a, b = replicas["A"], replicas["B"]
    job_id = post(a, {"input": "small.parquet", "model": "naive", "horizon": 3})
    seen: list[dict[str, Any]] = []
    wait_until(lambda: seen.append(state(b, job_id)) or seen[-1]["status"] in ENDED, 60,
               "the job to finish, seen from B")
    final = seen[-1]
    assert final["status"] == "done" and final["done"] == SMALL and final["failed"] == 0, final
    assert state(a, job_id) == final  # one record, whichever replica reads it
    assert record(cluster, job_id)["replica"].endswith(f":{a.proc.pid}")  # A ran it
    with cluster.client() as admin:
        assert 0 < admin.ttl(f"crypto_ml:job:{job_id}") <= 86400
    got = pd.read_parquet(str(final["output"]))
    assert len(got) == SMALL * 3 and got["unique_id"].nunique() == SMALL
    assert got["naive"].notna().all()


def test_delete_on_another_replica_stops_the_run_and_revokes_its_work(
        replicas: dict[str, Server], cluster: LocalCluster) -> None:
    a, b = replicas["A"], replicas["B"]
    before = _stored_values(cluster)  # what other jobs left (a killed replica's, to expire)
    job_id = long_job(a, b)
    status, reply = call(f"{b.url}/v1/jobs/{job_id}", method="DELETE")
    assert status == 200 and reply["id"] == job_id and reply["cancel_requested"], reply
    if reply["status"] == "running":  # until A reads the flag, every replica says it was asked
        assert state(a, job_id)["cancel_requested"] or state(a, job_id)["status"] in ENDED
    wait_until(lambda: state(a, job_id)["status"] in ENDED, 30, "A's run to stop")
    final = state(b, job_id)
    assert final["status"] == "cancelled" and final["done"] < LONG, final
    assert final["cancel_requested"] is False, final  # it has stopped: nothing is pending
    assert record(cluster, job_id)["replica"].endswith(f":{a.proc.pid}")
    assert not Path(str(final["output"])).exists()
    wait_until(lambda: queued(a) == 0, 30, "the job's queued chunks revoked or done")
    assert state(b, job_id) == final  # A's run wrote nothing more
    # the values stored beside the chunks it revoked are freed with them
    wait_until(lambda: _stored_values(cluster) <= before, 30, "the revoked chunks' values freed")
    assert call(f"{b.url}/v1/jobs/nosuchjob", method="DELETE")[0] == 404


def _stored_values(cluster: LocalCluster) -> set[bytes]:
    return set(cluster.client().scan_iter(keys.pattern(keys.PAYLOAD)))


@pytest.mark.slow
def test_a_job_whose_replica_is_killed_is_reported_failed_by_another(
        replicas: dict[str, Server], cluster: LocalCluster) -> None:
    b, c = replicas["B"], replicas["C"]
    job_id = long_job(c, b)
    os.killpg(c.proc.pid, signal.SIGKILL)  # no shutdown: its record is left "running"
    c.proc.wait(10)
    assert record(cluster, job_id)["status"] == "running"
    wait_until(lambda: state(b, job_id)["status"] != "running", 20, "B to see C gone")
    final = state(b, job_id)
    assert final["status"] == "failed" and final["done"] + final["failed"] >= LONG, final
    assert f"({record(cluster, job_id)['replica']}) stopped (no heartbeat for" in final["error"]
    assert f'POST the same body with "resume": "{job_id}"' in final["error"]
    # resumed on B: the chunks C finished are taken, the rest computed, each series once
    again = post(b, {"input": "long.parquet", "model": "ets", "resume": job_id})
    wait_until(lambda: state(b, again)["status"] in ENDED, 120, "the resumed job to end")
    resumed = state(b, again)
    assert resumed["status"] == "done" and resumed["done"] == LONG, resumed
    assert resumed["resumed_from"] == job_id and final["done"] <= resumed["resumed"] < LONG
    got = pd.read_parquet(str(resumed["output"]))
    assert len(got) == LONG * DEFAULT_HORIZON and not got.duplicated(["unique_id", "ds"]).any()
    assert got["unique_id"].nunique() == LONG and got["ets"].notna().all()
    walks = random_walks(LONG, 60, seed=5)
    for sid in ("s000000", f"s{LONG // 2:06d}", f"s{LONG - 1:06d}"):  # C's chunks and B's
        closes = walks.loc[walks["unique_id"] == sid, "y"].to_numpy()
        want = get_model("ets").fit(closes).predict(DEFAULT_HORIZON).forecast
        np.testing.assert_allclose(got.loc[got["unique_id"] == sid, "ets"], want, rtol=1e-9)
    assert not list(Path(str(final["output"])).parent.glob(f".{job_id}.parquet.parts"))


def test_a_replica_shutting_down_stops_its_jobs_and_records_them_failed(
        replicas: dict[str, Server], cluster: LocalCluster) -> None:
    b, d = replicas["B"], replicas["D"]
    job_id = long_job(d, b)
    terminate(d.proc)  # SIGTERM: the server stops its jobs, then exits
    assert d.proc.returncode == 0, d.log.read_text()[-2000:]
    final = state(b, job_id)  # at once: no heartbeat to wait for
    assert final["status"] == "failed" and final["done"] < LONG, final
    assert final["done"] + final["failed"] >= LONG, final  # what it will not finish: failed
    assert "stopped (it was shut down); POST the same body with" in final["error"], final
    wait_until(lambda: queued(b) == 0, 30, "the stopped job's queued chunks revoked or done")
    # another body cannot take its chunks; the same one can, once
    status, reply = call(f"{b.url}/v1/jobs", {"input": "long.parquet", "model": "ets",
                                              "horizon": 3, "resume": job_id})
    assert status == 422 and "what differs: horizon. POST" in reply["detail"][0]["msg"], reply
    again = post(b, {"input": "long.parquet", "model": "ets", "resume": job_id})
    status, reply = call(f"{b.url}/v1/jobs", {"input": "long.parquet", "model": "ets",
                                              "resume": job_id})
    assert status == 409 and f"resumed already, as job {again}" in reply["detail"], reply
    wait_until(lambda: state(b, again)["done"] > 0, 60, "the resumed job under way")
    assert state(b, again)["resumed"] >= final["done"] > 0
    assert call(f"{b.url}/v1/jobs/{again}", method="DELETE")[0] == 200  # cancelled, it goes
    wait_until(lambda: state(b, again)["status"] in ENDED, 30, "the resumed job to stop")
    status, reply = call(f"{b.url}/v1/jobs", {"input": "long.parquet", "model": "ets",
                                              "resume": again})
    assert status == 409 and "is cancelled" in reply["detail"], reply
    wait_until(lambda: queued(b) == 0, 30, "the resumed job's queued chunks revoked or done")


def test_what_ended_jobs_left_goes_with_a_later_post(replicas: dict[str, Server]) -> None:
    a = replicas["A"]
    first = post(a, {"input": "small.parquet", "model": "naive", "horizon": 3})
    wait_until(lambda: state(a, first)["status"] in ENDED, 60, "the job to finish")
    jobs = Path(str(state(a, first)["output"])).parent
    expired, recorded, missing = (jobs / f".{job_id}.parquet.parts"
                                  for job_id in ("e" * 32, first, "f" * 32))
    half_joined = jobs / f".{'e' * 32}.failures.parquet.tmp"
    lock = jobs / f".{'e' * 32}.parquet.lock"  # every job left one
    ended_copy, fresh_copy = jobs / "inputs" / first, jobs / "inputs" / ("d" * 32)
    for folder in (expired, recorded, missing, ended_copy, fresh_copy):
        folder.mkdir(parents=True)
        (folder / "chunk-00000000.arrow").write_bytes(b"")
    half_joined.write_bytes(b"")
    lock.write_bytes(b"")
    day_ago = time.time() - 86400 - 60  # CRYPTO_ML_RESULT_EXPIRES: nothing touched them since
    for path in (expired, half_joined, lock):
        os.utime(path, (day_ago, day_ago))
    try:
        post(a, {"input": "small.parquet", "model": "naive", "horizon": 3})
        assert not expired.exists() and not half_joined.exists() and not ended_copy.exists()
        assert not lock.exists()
        assert recorded.exists()  # a job of a live record: kept
        assert missing.exists() and fresh_copy.exists()  # no record, but touched of late
    finally:
        for folder in (recorded, missing, fresh_copy):
            shutil.rmtree(folder)


@pytest.mark.slow
def test_a_job_resumed_while_its_replica_was_paused_goes_on_when_it_wakes(
        replicas: dict[str, Server], cluster: LocalCluster) -> None:
    b, e = replicas["B"], replicas["E"]
    job_id = long_job(e, b)
    e.proc.send_signal(signal.SIGSTOP)  # a frozen VM, a network split: not dead
    try:
        wait_until(lambda: state(b, job_id)["status"] == "failed", 30, "B to see E silent")
        again = post(b, {"input": "long.parquet", "model": "ets", "resume": job_id})
    finally:
        e.proc.send_signal(signal.SIGCONT)
    wait_until(lambda: state(b, again)["status"] in ENDED, 120, "the resumed job to end")
    resumed = state(b, again)
    assert resumed["status"] == "done" and resumed["done"] == LONG, resumed
    got = pd.read_parquet(str(resumed["output"]))
    assert len(got) == LONG * DEFAULT_HORIZON and not got.duplicated(["unique_id", "ds"]).any()
    wait_until(lambda: record(cluster, job_id)["finished"] is not None, 30, "E to stop its run")
    old = state(b, job_id)
    assert old["status"] == "failed" and old["resumed_by"] == again, old
    assert old["error"].endswith(f"resumed as job {again} (/v1/jobs/{again})"), old
    assert str(Path(str(resumed["output"])).parent) not in old["error"]  # no server path
    wait_until(lambda: queued(b) == 0, 30, "the paused run's queued chunks revoked or done")


def test_a_job_reported_failed_while_its_replica_was_paused_stays_failed_when_it_wakes(
        replicas: dict[str, Server], cluster: LocalCluster) -> None:
    # the outside probe saw failed (its replica silent), then running, then done: a client
    # that took failed at its word had POSTed the body again, or given up
    a, e = replicas["A"], replicas["E"]  # E lives on (C is killed, D stopped elsewhere)
    job_id = long_job(e, a)
    e.proc.send_signal(signal.SIGSTOP)
    try:
        wait_until(lambda: state(a, job_id)["status"] == "failed", 30, "A to see E silent")
    finally:
        e.proc.send_signal(signal.SIGCONT)
    seen: list[dict[str, Any]] = []
    wait_until(lambda: seen.append(state(a, job_id)) or record(cluster, job_id)["finished"]
               is not None, 30, "E to stop its run")
    seen.append(state(a, job_id))
    assert {s["status"] for s in seen} == {"failed"}, [s["status"] for s in seen]
    final = seen[-1]
    assert final["done"] < LONG and "did not answer for" in final["error"], final
    assert f'POST the same body with "resume": "{job_id}"' in final["error"], final
    wait_until(lambda: queued(a) == 0, 30, "the stopped run's queued chunks revoked or done")


@pytest.mark.parametrize(("resume", "code", "words"), [
    ("0" * 32, 422, "no job '00000000000000000000000000000000'"),
    ("../../etc", 422, "should match pattern"),
    ("done", 409, "is done; only a failed job can be resumed"),
])
def test_only_a_failed_job_can_be_resumed(replicas: dict[str, Server], resume: str, code: int,
                                          words: str) -> None:
    a = replicas["A"]
    if resume == "done":
        resume = post(a, {"input": "small.parquet", "model": "naive", "horizon": 3})
        wait_until(lambda: state(a, resume)["status"] in ENDED, 60, "the job to finish")
    status, reply = call(f"{a.url}/v1/jobs", {"input": "small.parquet", "model": "naive",
                                              "horizon": 3, "resume": resume})
    assert status == code and words in json.dumps(reply), reply


def routes_read(url: str, call: Any) -> Any:
    """``call(records)`` on a JobRecords over a redis.asyncio client, as the routes read."""
    async def on_loop() -> Any:
        async with aioredis.Redis.from_url(url) as client:
            return await call(JobRecords(lambda: client, 60))
    return asyncio.run(on_loop())


@pytest.mark.parametrize("server", [None, pytest.param(redis7_server(), marks=pytest.mark.skipif(
    redis7_server() is None, reason="no redis-server 7 or later"))], ids=["redis6.2", "redis7"])
def test_the_manager_user_may_keep_job_records_and_nothing_near_them(server: str | None) -> None:
    """The job store's every command as the manager's Redis user, on the embedded 6.2 and on a
    Redis 7 (each grant its own selector, as deployed): no refusal in the ACL LOG."""
    cluster = LocalCluster(workers=1, redis_server=server)
    cluster.start_redis()
    try:
        with redis.Redis.from_url(cluster.url_for("manager")) as manager:
            store = JobStore(manager, 60)
            job = {"id": "j1", "status": "running", "series": 10, "done": 4, "failed": 0,
                   "started": 1.0, "finished": None, "error": None, "output": "/o.parquet",
                   "failures_output": "/o.failures.parquet", "replica": "h:1",
                   "heartbeat": 2.0, "stale_after": 30.0}
            store.write(job)
            assert store.beat([{**job, "done": 5}], []) == (set(), {})  # a write, no flag
            assert store.read("j1") == {**job, "done": 5}
            assert store.beat([job], ["j1"]) == (set(), {})
            url = cluster.url_for("manager")
            assert routes_read(url, lambda r: r.read_with_flags("j1")) == (job, False, None)
            assert routes_read(url, lambda r: r.cancel("j1")) == (job, True, None)
            assert store.beat([], ["j1"]) == ({"j1"}, {})
            assert routes_read(url, lambda r: r.cancel("j1")) == (job, True, None)  # once is asked
            assert routes_read(url, lambda r: r.read("j1:cancel")) is None
            assert status_of(job, now=3.0, cancel_asked=True)["cancel_requested"] is True
            ended = {**job, "status": "cancelled", "finished": 2.5}
            assert status_of(ended, now=3.0, cancel_asked=True)["cancel_requested"] is False
            assert store.read("j1:cancel") is None and store.read("j2") is None
            assert store.claim("j1", "j3") is None and store.claim("j1", "j4") == "j3"
            assert store.beat([], ["j1", "j2"]) == ({"j1"}, {"j1": "j3"})
            assert store.read("j1:resumed") is None and store.records(["j1", "j2"]) == [job, None]
            assert store.resumed_by("j1") == "j3" and store.resumed_by("j2") is None
            store.mark_resumed("j1", "j5")
            assert store.resumed_by("j1") == "j5"
            # 6 left at 4 series/s: its 4 done by its last heartbeat, 1 s after it started
            assert status_of(job, now=3.0)["eta_seconds"] == 1.5
            assert status_of(job, now=9.0)["eta_seconds"] == 1.5  # it grew as the clock ran
            resumed = status_of({**job, "resumed": 2}, now=3.0)  # 2 of its 4 taken, not computed
            assert (resumed["series_per_second"], resumed["eta_seconds"]) == (2.0, 3.0)
            with cluster.client() as admin:
                assert acl_log(admin) == []
                assert 0 < admin.ttl("crypto_ml:job:j1") <= 60
            with pytest.raises(redis.exceptions.NoPermissionError):
                manager.execute_command("HSET", "unacked", "t", "x")  # no hash command
    finally:
        cluster.stop()


def failed_with_chunks(store: JobStore, folder: Path, old: str, run: dict[str, Any]
                       ) -> TableOutput:
    """Job ``old`` recorded as failed, its parts folder (with the run's manifest) left."""
    store.write({"id": old, "status": "failed", "series": 9, "done": 4, "failed": 0,
                 "started": 1.0, "finished": 2.0, "error": "x", "output": "o.parquet",
                 "failures_output": "o.failures.parquet", "replica": "h:1",
                 "heartbeat": time.time(), "stale_after": 30.0, "run": run})
    earlier = output_of(folder, old, run)
    earlier.done_chunks()
    return earlier


def test_only_the_job_that_renames_a_failed_job_s_chunks_takes_them(
        cluster: LocalCluster, tmp_path: Path) -> None:
    """The rename decides between resumes, not the mark: a mark naming a job that never took
    the chunks (its POST failed after it) blocks no later resume; a resume that loses the
    rename is recorded as never started and answered 409."""
    store = JobStore(cluster.client(), 60)
    old, ghost, first, second = "a" * 32, "b" * 32, "c" * 32, "d" * 32
    run = {"input": "t.parquet", "horizon": 3}
    earlier = failed_with_chunks(store, tmp_path, old, run)
    store.mark_resumed(old, ghost)  # a resume whose POST died after marking
    assert resumable(store, tmp_path, old)["id"] == old
    unstarted: list[str] = []
    output = output_of(tmp_path, first, run)
    take_over(store, old, first, output, earlier, True, unstarted.append)
    assert output.parts.is_dir() and not earlier.parts.exists() and unstarted == []
    assert store.resumed_by(old) == first
    with pytest.raises(JobConflict, match=f"was resumed already, as job {first}"):
        resumable(store, tmp_path, old)
    late = output_of(tmp_path, second, run)  # passed the checks before the first renamed
    with pytest.raises(JobConflict, match=f"took job {old}'s finished chunks first: job {first}"):
        take_over(store, old, second, late, earlier, True, unstarted.append)
    assert unstarted == [f"another job took job {old}'s finished chunks first"]
    assert output.parts.is_dir() and not late.parts.exists()
    refused = {**store.read(old), "id": first, "resumable": False}  # its chunks were refused
    store.write(refused)
    with pytest.raises(JobConflict, match="fix the body and POST it without resume"):
        resumable(store, tmp_path, first)


def test_an_in_process_server_has_no_jobs_and_says_why(tmp_path: Path) -> None:
    api = client(create_app(Settings(data_dir=write_coins(tmp_path)), InProcessRuns()))
    replies = [api.post("/v1/jobs", json={"input": "x.parquet"}), api.get("/v1/jobs/x"),
               api.delete("/v1/jobs/x")]
    assert [r.status_code for r in replies] == [503] * 3
    assert all("--in-process" in r.json()["detail"] for r in replies)


def test_a_resume_that_comes_just_after_the_rename_is_refused_not_run_afresh(
        cluster: LocalCluster, tmp_path: Path) -> None:
    """A resume that finds no chunks (another job renamed them a moment ago and has not
    marked the old job yet) must lose to that job, not start the whole input again (an
    outside probe got two 202s from 8 concurrent resumes)."""
    store = JobStore(cluster.client(), 60)
    old, first, second = (uuid.uuid4().hex for _ in range(3))  # ids no other test uses
    run = {"input": "t.parquet", "horizon": 3}
    earlier = failed_with_chunks(store, tmp_path, old, run)
    output, late = output_of(tmp_path, first, run), output_of(tmp_path, second, run)
    unstarted: list[str] = []
    rename = output.take_parts

    def renamed_then_another_arrives(parts_of: TableOutput) -> None:
        rename(parts_of)
        assert not late.held_by(earlier)  # no chunks left for it to take
        with pytest.raises(JobConflict, match=f"took job {old}'s finished chunks first"):
            take_over(store, old, second, late, earlier, False, unstarted.append)

    output.take_parts = renamed_then_another_arrives  # type: ignore[method-assign]
    take_over(store, old, first, output, earlier, True, unstarted.append)
    assert store.resumed_by(old) == first and output.parts.is_dir()
    assert unstarted == [f"another job took job {old}'s finished chunks first"]
