"""A dead worker's tasks come back in seconds; a live worker's are never delivered twice.

Real Redis, real `celery worker` processes (LocalCluster), real signals. Each worker
beats in Redis and sweeps for dead workers (crypto_ml.worker.liveness).
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from pathlib import Path

import psutil
import pytest
from fault_helpers import (
    FAST_LIVENESS,
    app_for,
    cli_env,
    deliveries,
    finish,
    logs_with,
    start_cli,
    stop_consuming,
    wait_for_drained,
    wait_for_running,
    worker_logs,
    worker_process,
)

from crypto_ml.core import keys
from crypto_ml.dispatch.cluster import LocalCluster
from crypto_ml.dispatch.envelope import task_envelope
from crypto_ml.ops.processes import wait_until
from crypto_ml.worker.liveness import BEAT_GAP, Liveness, alive_key, held_key
from crypto_ml.worker.requests import TASK_NAME, ForecastRequest

pytestmark = pytest.mark.integration

LSTM = ("send-tasks", "--model", "lstm", "--max-points", "400", "--horizon", "5")
HOUR_LIMITS = {"CRYPTO_ML_SOFT_TIME_LIMIT": "3500", "CRYPTO_ML_HARD_TIME_LIMIT": "3600"}


def registered(cluster: LocalCluster, hostname: str) -> str:
    """The liveness id of the running worker named ``hostname`` (waits until it beats)."""
    found: list[str] = []

    def beating() -> bool:
        members = [m.decode() for m in cluster.client().smembers(keys.WORKERS)]
        found[:] = [m for m in members if m.startswith(f"{hostname}/")]
        return bool(found)

    wait_until(beating, 30, f"{hostname} beating")
    return found[0]


def liveness_keys(cluster: LocalCluster) -> list[str]:
    return sorted(k.decode() for k in cluster.client().scan_iter(match="crypto_ml:worker*"))


@pytest.mark.slow
def test_dead_worker_task_is_back_within_30_s_even_with_a_1_hour_limit(
        price_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    env = {**os.environ, **HOUR_LIMITS, "CRYPTO_ML_PRELOAD_KERAS": "1"}
    with LocalCluster(workers=2, env=env) as cluster:
        app = app_for(cluster)
        for name in cluster.worker_names:
            registered(cluster, name)
        cli = start_cli(*LSTM, "--epochs", "5", "--coins", "bitcoin", "--broker",
                        cluster.broker_url, "--output", str(out), "--timeout", "300",
                        data_dir=price_data, env=cli_env(price_data, **HOUR_LIMITS))
        victim = wait_for_running(app, training=True, cli=cli)
        dead = worker_process(cluster, victim.hostname)
        os.killpg(dead.pid, signal.SIGKILL)  # the whole worker dies: node lost, pod evicted
        killed = time.monotonic()

        code, _, stderr = finish(cli, timeout=120)
        recovered = time.monotonic() - killed
        assert code == 0, stderr
        result = json.loads(out.read_text())["results"]["bitcoin"]["lstm"]
        assert result["worker"] != victim.hostname
        logs = worker_logs(cluster)
        assert f"task {victim.task_id}: delivery 2 of at most 3" in logs
        assert "stopped beating" in logs and victim.task_id not in liveness_keys(cluster)
        print(f"kill -> result: {recovered:.1f} s (fit {result['fit_seconds']:.1f} s)")
        assert recovered < 30, f"took {recovered:.1f} s from the kill to the result"
        wait_for_drained(cluster)
        # the dead worker's keys are gone; only the survivor's remain
        survivor = next(n for n in cluster.worker_names if n != victim.hostname)
        members = [m.decode() for m in cluster.client().smembers(keys.WORKERS)]
        assert [m.split("/")[0] for m in members] == [survivor]


def test_reserved_but_not_started_task_of_a_dead_worker_comes_back(tmp_path: Path) -> None:
    # fast liveness (dead after 3 s of silence): what is tested is that the reserved message
    # comes back at all; the default's timing is the test above's
    with LocalCluster(workers=2, env={**os.environ, **HOUR_LIMITS, **FAST_LIVENESS}) as cluster:
        app = app_for(cluster)
        holder, other = cluster.worker_names
        stop_consuming(app, [other])
        holder_id = registered(cluster, holder)
        registered(cluster, other)
        proc = worker_process(cluster, holder)
        pool = psutil.Process(proc.pid).children()
        for child in pool:  # the pool process cannot start anything: the task stays reserved
            child.send_signal(signal.SIGSTOP)

        request = ForecastRequest("bitcoin", "linear", [float(x) for x in range(1, 200)], 3)
        sent = app.send_task(TASK_NAME, kwargs=request.as_kwargs())
        wait_until(lambda: cluster.client().hlen(held_key(holder_id)) == 1, 20,
                   "the holder recording the delivery")
        assert sent.state == "PENDING" and deliveries(app, sent.id) == 0  # never started
        os.killpg(proc.pid, signal.SIGKILL)
        killed = time.monotonic()
        assert app.control.add_consumer("cpu", destination=[other], reply=True)

        result = sent.get(timeout=30)
        assert result["worker"] == other and result["coin"] == "bitcoin"
        assert time.monotonic() - killed < 30
        assert deliveries(app, sent.id) == 1  # its first run
        wait_for_drained(cluster)
        assert not cluster.client().exists(alive_key(holder_id), held_key(holder_id))


@pytest.mark.slow
def test_task_longer_than_the_visibility_timeout_on_a_live_worker_runs_once(
        price_data: Path, tmp_path: Path) -> None:
    # the old rule (timeout above the hard limit) scaled down: a 6 s visibility timeout (the
    # least fast liveness allows), an LSTM whose pool process is held stopped mid-training for
    # over twice that (so the task outlasts the timeout on any machine, however fast it
    # trains), a second idle worker that would take a redelivery
    timeout = 6
    limits = {**HOUR_LIMITS, **FAST_LIVENESS, "CRYPTO_ML_VISIBILITY_TIMEOUT": str(timeout)}
    out = tmp_path / "run.json"
    with LocalCluster(workers=2, env={**os.environ, **limits}) as cluster:
        app = app_for(cluster)
        cli = start_cli(*LSTM, "--epochs", "10", "--coins", "bitcoin", "--broker",
                        cluster.broker_url, "--output", str(out), "--timeout", "300",
                        data_dir=price_data, env=cli_env(price_data, **limits))
        victim = wait_for_running(app, training=True, cli=cli)
        hold_stopped(victim.pid, seconds=2 * timeout + 1)
        code, _, stderr = finish(cli, timeout=280)
        assert code == 0, stderr
        fit = json.loads(out.read_text())["results"]["bitcoin"]["lstm"]["fit_seconds"]
        assert fit > 2 * timeout, f"the task ({fit:.1f} s) was not longer than twice the timeout"
        logs = worker_logs(cluster)
        assert logs.count(f"task {victim.task_id} done") == 1
        assert "delivery 2" not in logs and "stopped beating" not in logs
        assert logs.count(f"[{victim.task_id}] received") == 1  # delivered once, run once
        wait_for_drained(cluster)


def hold_stopped(pid: int, seconds: float) -> None:
    """Stop process ``pid`` for ``seconds``, then let it go on. What this waits for is time
    itself: the visibility timeout expiring while the task is still running."""
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        os.kill(pid, signal.SIGCONT)


def test_a_worker_sees_when_redis_lost_its_last_beat() -> None:
    # what decides whether a worker records its messages in unacked again (Liveness.beat)
    beat = Liveness(app=None, worker_id="w/1/ab", heartbeat_seconds=1, dead_after=3, held_ttl=60)
    assert not beat._lost_our_last_beat(None)  # the first beat: nothing written yet
    beat.last_beat, beat.last_written = time.monotonic(), "1700000002.5"
    assert not beat._lost_our_last_beat(b"1700000002.5")  # all there
    assert beat._lost_our_last_beat(None)  # a restart without persistence
    assert beat._lost_our_last_beat(b"1700000001.5")  # a failover lost the newest writes
    beat.last_beat = time.monotonic() - 3  # silent for dead_after: the key may have expired
    assert not beat._lost_our_last_beat(None)


def test_a_burst_of_deliveries_is_recorded_by_a_few_beats_not_one_each(
        cluster: LocalCluster) -> None:
    # under load a worker receives a message every few ms; each used to wake a whole beat
    # (a MULTI/EXEC of seven commands and a slots HSET), which cost its parent more than the
    # message did. Every delivery must still be recorded, soon after it came.
    held: dict[str, None] = {}
    beat = Liveness(app=app_for(cluster), worker_id=f"burst-{uuid.uuid4().hex}/1/00",
                    heartbeat_seconds=30, dead_after=60, held_ttl=60, holdings=lambda: dict(held))
    beat.start()
    try:
        wait_until(lambda: beat.beats == 1, 20, "the first beat")
        started = time.monotonic()
        for i in range(100):
            held[f"tag-{i}"] = None
            beat.wake()
            time.sleep(0.01)  # deliveries 10 ms apart (the pace, not a wait for a result)
        wait_until(lambda: cluster.client().hlen(held_key(beat.worker_id)) == 100, 10,
                   "every delivery recorded")
        elapsed = time.monotonic() - started
        assert 1 < beat.beats <= 2 + elapsed / BEAT_GAP + 1, (beat.beats, elapsed)
    finally:
        beat.stop()
    assert not cluster.client().exists(held_key(beat.worker_id))


def test_a_record_the_sweep_cannot_read_does_not_stop_it(cluster: LocalCluster) -> None:
    # a dead worker holds a message whose record in kombu's unacked hash is not what kombu
    # writes; it sorts before a second dead worker holding a real forecast, which must still be
    # given back and run (the sweep used to stop at the first record it could not read, for good)
    app, client = app_for(cluster), cluster.client()
    with app.connection_for_write() as conn:
        unacked, index = conn.default_channel.unacked_key, conn.default_channel.unacked_index_key
    request = ForecastRequest("bitcoin", "linear", [float(x) for x in range(1, 200)], 3)
    task_id = str(uuid.uuid4())
    queue, envelope = task_envelope(app, TASK_NAME, request.as_kwargs(), task_id, 300)
    message = json.loads(envelope)
    tag, bad_tag = message["properties"]["delivery_tag"], f"unreadable-{task_id}"
    bad, ghost = f"0-bad-{task_id}/1/00", f"1-ghost-{task_id}/1/00"
    delivered = time.time() - 1
    with client.pipeline() as pipe:
        pipe.hset(unacked, mapping={bad_tag: "not json", tag: json.dumps([message, "", queue])})
        pipe.zadd(index, {bad_tag: delivered, tag: delivered})
        pipe.hset(held_key(bad), bad_tag, repr(delivered))
        pipe.hset(held_key(ghost), tag, repr(delivered))
        pipe.sadd(keys.WORKERS, bad, ghost)
        pipe.execute()
    try:
        result = app.AsyncResult(task_id).get(timeout=30)
        assert result["coin"] == "bitcoin" and result["model"] == "linear"
        assert "could not give back task message " + bad_tag in logs_with(cluster, bad_tag)
        assert client.hget(unacked, bad_tag) == b"not json"  # left for an operator
        assert not client.sismember(keys.WORKERS, bad)  # its keys went all the same
    finally:
        with client.pipeline() as pipe:
            pipe.hdel(unacked, bad_tag, tag).zrem(index, bad_tag, tag)
            pipe.delete(held_key(bad), held_key(ghost)).srem(keys.WORKERS, bad, ghost)
            pipe.execute()
