"""The HTTP API on a real cluster (real Redis, two real celery workers): waiting and polling,
failures, health, metrics, broker down, and trained models reused from the model store,
shared with `send-tasks`."""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from api_support import client, closes, write_coins
from conftest import run_cli
from fault_helpers import stop_consuming

from crypto_ml.api.app import create_app
from crypto_ml.api.service import QueueRuns
from crypto_ml.core import sentinel
from crypto_ml.core.settings import Settings
from crypto_ml.dispatch.cluster import LocalCluster
from crypto_ml.models import get_model
from crypto_ml.ops.processes import free_port, wait_until
from crypto_ml.worker.app import create_app as celery_app

pytestmark = pytest.mark.integration
COINS = ("Alpha", "Beta", "Gamma", "Delta")
DEEP_WAIT = 300


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_coins(tmp_path_factory.mktemp("api-cluster") / "prices", coins=COINS)


@pytest.fixture(scope="module")
def api(cluster: LocalCluster, data: Path) -> Iterator[Any]:
    # every request forecast afresh (the tests ask some questions twice, in any order);
    # answers reused: test_a_question_asked_again_is_answered_without_a_message
    settings = Settings(data_dir=data, api_max_wait=DEEP_WAIT,
                        api_answer_seconds=0).with_broker(cluster.broker_url)
    runs = QueueRuns(celery_app(settings), settings)
    with client(create_app(settings, runs)) as api:  # one event loop for every request
        yield api
    runs.close()


def task_keys(cluster: LocalCluster) -> set[bytes]:
    with cluster.client() as redis_client:
        return set(redis_client.keys("celery-task-meta-*"))


def test_wait_gives_the_results_keeps_the_answer_and_frees_the_rest(
        api: Any, cluster: LocalCluster, data: Path) -> None:
    before = task_keys(cluster)
    reply = api.post("/v1/forecasts?wait=60", json={"coins": ["alpha", "beta"],
                                                    "model": "linear,naive", "horizon": 3})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["status"] == "done" and body["failed"] == {}
    for coin in ("alpha", "beta"):
        expected = get_model("linear").fit(closes(data, coin)).forecast(3)
        np.testing.assert_array_equal(body["results"][coin]["linear"]["forecast"], expected)
        assert body["results"][coin]["naive"]["worker"] in cluster.worker_names
    # results read and deleted (a shared message's own result by its coalescer, just after)
    wait_until(lambda: task_keys(cluster) <= before, 10, "every result key deleted")
    # the id answered can be read again, here or from another replica, until it expires
    assert api.get(f"/v1/forecasts/{body['id']}").json() == body
    with cluster.client() as redis_client:
        assert redis_client.ttl(f"crypto_ml:run:{body['id']}") > 0


def test_a_question_asked_again_is_answered_without_a_message(cluster: LocalCluster,
                                                             data: Path) -> None:
    """The default: the same question again gets the first answer, under an id of its own that
    any replica reads from the result backend; no message goes to the workers for it."""
    settings = Settings(data_dir=data).with_broker(cluster.broker_url)
    runs = QueueRuns(celery_app(settings), settings)
    body = {"coins": ["gamma"], "model": "linear,naive", "horizon": 4}
    try:
        with client(create_app(settings, runs)) as api:
            first = api.post("/v1/forecasts?wait=60", json=body)
            assert first.status_code == 200, first.text
            sent = runs.coalesced()
            again = api.post("/v1/forecasts?wait=60", json=body)
            assert again.status_code == 200, again.text
            assert runs.coalesced() == sent  # nothing sent for it
            assert again.json()["id"] != first.json()["id"]
            assert {**again.json(), "id": ""} == {**first.json(), "id": ""}
            assert "crypto_ml_api_answers_reused_total 1.0" in api.get("/metrics").text
            polled = api.post("/v1/forecasts", json=body)  # no wait: 202, as ever on workers
            assert polled.status_code == 202, polled.text
            read = api.get(polled.json()["status_url"]).json()  # already done
            assert {**read, "id": ""} == {**first.json(), "id": ""}
        replica = QueueRuns(celery_app(settings), settings)
        with client(create_app(settings, replica)) as other:
            assert other.get(f"/v1/forecasts/{again.json()['id']}").json() == again.json()
        replica.close()
        with cluster.client() as redis_client:
            assert redis_client.ttl(f"crypto_ml:run:{again.json()['id']}") > 0
    finally:
        runs.close()


def test_the_same_question_asked_meanwhile_waits_for_the_answer_being_made(data: Path) -> None:
    """Questions that arrive while the same one is being answered (its message held in the
    broker: the worker takes none) send nothing: they wait, then get that answer."""
    with LocalCluster(workers=1) as cluster:
        settings = Settings(data_dir=data).with_broker(cluster.broker_url)
        runs = QueueRuns(celery_app(settings), settings)
        app, body = celery_app(settings), {"coins": ["delta"], "model": "linear", "horizon": 6}
        stop_consuming(app, cluster.worker_names)
        try:
            with client(create_app(settings, runs)) as api, ThreadPoolExecutor(4) as pool, \
                    cluster.client() as redis_client:
                first = pool.submit(api.post, "/v1/forecasts?wait=60", json=body)
                wait_until(lambda: redis_client.llen("cpu") == 1, 20, "the first one queued")
                others = [pool.submit(api.post, "/v1/forecasts?wait=60", json=body)
                          for _ in range(3)]
                wait_until(lambda: "crypto_ml_api_answers_awaited 3.0"
                           in api.get("/metrics").text, 20, "the others waiting for it")
                assert redis_client.llen("cpu") == 1  # nothing sent for them
                assert app.control.add_consumer("cpu", destination=cluster.worker_names,
                                                reply=True)
                replies = [call.result(timeout=60) for call in [first, *others]]
                assert [r.status_code for r in replies] == [200] * 4, replies[0].text
                assert len({r.json()["id"] for r in replies}) == 4
                assert all({**r.json(), "id": ""} == {**replies[0].json(), "id": ""}
                           for r in replies)
                assert "crypto_ml_api_answers_reused_total 3.0" in api.get("/metrics").text
                assert runs.coalesced()[1] <= 1  # one part (or one message of its own) sent
        finally:
            runs.close()


def test_no_wait_gives_202_and_any_replica_reads_the_status_url(api: Any, cluster: LocalCluster,
                                                                data: Path) -> None:
    reply = api.post("/v1/forecasts", json={"coins": ["beta"], "model": "linear", "horizon": 2})
    assert reply.status_code == 202, reply.text
    accepted = reply.json()
    assert accepted["status_url"] == f"/v1/forecasts/{accepted['id']}"
    assert reply.headers["location"] == accepted["status_url"]
    seen: list[str] = []

    def finished() -> bool:
        state = api.get(accepted["status_url"]).json()
        seen.append(state["status"])
        return state["status"] in ("done", "failed")

    wait_until(finished, 60, "the run to finish")
    assert set(seen) <= {"queued", "running", "done"} and seen[-1] == "done"
    final = api.get(accepted["status_url"]).json()
    assert final["results"]["beta"]["linear"]["horizon"] == 2
    settings = Settings(data_dir=data).with_broker(cluster.broker_url)
    other = QueueRuns(celery_app(settings), settings)  # another API process on the same Redis
    try:
        with client(create_app(settings, other)) as replica:
            assert replica.get(accepted["status_url"]).json() == final
    finally:
        other.close()
    with cluster.client() as redis_client:
        assert json.loads(redis_client.get(f"crypto_ml:run:{accepted['id']}"))["final"]
        assert redis_client.ttl(f"crypto_ml:run:{accepted['id']}") > 0


def test_failures_on_workers_are_listed_with_their_reason(api: Any) -> None:
    bad = [100.0] * 30 + [-1.0] + [100.0] * 30  # lstm needs positive closes: the worker says so
    short = api.post("/v1/forecasts?wait=60", json={"series": {"bad": bad, "short": [1.0, 2.0]},
                                                    "model": "lstm"})
    assert short.status_code == 422  # "short" is too short for lstm: nothing was queued
    reason = "InvalidTaskInput: prices must be positive for the p/p0 - 1 normalisation"
    alone = api.post("/v1/forecasts?wait=60", json={"series": {"bad": bad}, "model": "lstm"})
    assert alone.status_code == 200
    assert alone.json()["status"] == "failed" and alone.json()["results"] == {}
    assert alone.json()["failed"] == {"bad": {"lstm": reason}}
    mixed = api.post("/v1/forecasts?wait=60", json={"series": {"bad": bad},
                                                    "model": "naive,lstm"}).json()
    assert mixed["status"] == "done" and mixed["failed"] == {"bad": {"lstm": reason}}
    assert mixed["results"]["bad"]["naive"]["forecast"] == [100.0] * 10


def test_health_metrics_and_queue_depth(api: Any, cluster: LocalCluster) -> None:
    health = api.get("/healthz")
    assert health.status_code == 200
    assert health.json()["broker"] and set(health.json()["workers"]) == set(cluster.worker_names)
    api.post("/v1/forecasts?wait=60", json={"coins": ["alpha"], "model": "naive"})
    text = api.get("/metrics").text
    assert 'crypto_ml_api_forecasts_total{model="naive",status="ok"}' in text
    # a one-coin request's cheap forecast travels as a part of a shared message
    counted = dict(re.findall(r"^(crypto_ml_api_coalesced_\w+_total) (\S+)$", text, re.M))
    messages = float(counted["crypto_ml_api_coalesced_messages_total"])
    assert float(counted["crypto_ml_api_coalesced_parts_total"]) >= messages >= 1

    def drained() -> bool:  # a finished task is acknowledged a moment after its result
        text = api.get("/metrics").text
        return all(f'crypto_ml_api_queue_depth{{queue="{q}"}} 0.0' in text for q in ("cpu", "gpu"))

    wait_until(drained, 30, "the queues to drain")


def test_broker_down_is_503_and_nothing_is_accepted(data: Path) -> None:
    settings = Settings(data_dir=data).with_broker(f"redis://127.0.0.1:{free_port()}/0")
    runs = QueueRuns(celery_app(settings), settings)
    try:
        with client(create_app(settings, runs)) as down:
            broker_down_answers(down)
    finally:
        runs.close()


def test_a_redis_that_stops_answering_or_dies_is_503_not_a_hang(
        data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A paused Redis (a stopped VM, a cut link) answers nothing: each route fails after the
    socket timeout (2 s here) with a 503, the job routes too; a Redis that dies after the API
    used it gets its 503 at once (no revoke waits for it to come back)."""
    monkeypatch.setattr(sentinel, "SOCKET_TIMEOUT", 2)
    cluster = LocalCluster(workers=1)
    cluster.start_redis()  # no worker: nothing needs to run
    settings = Settings(data_dir=data).with_broker(cluster.broker_url)
    runs = QueueRuns(celery_app(settings), settings)
    try:
        with client(create_app(settings, runs)) as api:
            assert api.post("/v1/forecasts", json={"coins": ["alpha"]}).status_code == 202
            assert api.get(f"/v1/jobs/{'0' * 32}").status_code == 404
            assert cluster.redis is not None
            cluster.redis.send_signal(signal.SIGSTOP)
            try:
                with ThreadPoolExecutor(3) as pool:
                    calls = [pool.submit(timed, api.get, f"/v1/jobs/{'0' * 32}"),
                             pool.submit(timed, api.get, f"/v1/jobs/{'0' * 32}/output"),
                             pool.submit(timed, api.post, "/v1/forecasts", json={"coins": ["beta"]})]
                    answers = [c.result() for c in calls]
            finally:
                cluster.redis.send_signal(signal.SIGCONT)
            assert [code for code, _ in answers] == [503] * 3, answers
            assert max(took for _, took in answers) < 10
            cluster.redis.kill()
            cluster.redis.wait()
            code, took = timed(api.post, "/v1/forecasts", json={"coins": ["beta"]})
            assert code == 503 and took < 5, (code, took)
    finally:
        runs.close()
        cluster.stop()


def timed(call: Any, *args: Any, **kwargs: Any) -> tuple[int, float]:
    started = time.monotonic()
    return call(*args, **kwargs).status_code, time.monotonic() - started


def broker_down_answers(down: Any) -> None:
    reply = down.post("/v1/forecasts?wait=5", json={"coins": ["alpha"]})
    assert reply.status_code == 503, reply.text
    assert "nothing of this request was queued" in reply.json()["detail"]
    assert down.post("/v1/forecasts", json={"coins": ["nosuch"]}).status_code == 422
    assert down.get("/v1/forecasts/someid").status_code == 503
    health = down.get("/healthz")
    assert health.status_code == 503 and health.json()["broker"] is False


def deep(api: Any, body: dict[str, Any]) -> dict[str, Any]:
    reply = api.post(f"/v1/forecasts?wait={DEEP_WAIT}", json={"horizon": 5, **body})
    assert reply.status_code == 200, reply.text
    (by_model,) = reply.json()["results"].values()
    (result,) = by_model.values()
    return dict(result)


def test_a_stored_lstm_is_reused_without_training(api: Any, cluster: LocalCluster,
                                                  data: Path) -> None:
    body = {"coins": ["delta"], "model": "lstm", "params": {"epochs": 1, "window": 10}}
    first = deep(api, body)
    assert first["from_store"] is False
    second = deep(api, body)
    assert second["from_store"] is True  # forecast from the stored weights: no fit
    assert second["forecast"] == first["forecast"]
    longer = deep(api, {**body, "horizon": 8})  # past the stored path: the stored network runs
    assert longer["from_store"] is True and longer["forecast"][:5] == first["forecast"]
    with cluster.client() as redis_client:
        keys = redis_client.keys("crypto_ml:model:*")
        assert keys and all(0 < redis_client.ttl(k) <= 7 * 86400 for k in keys)
    assert deep(api, {**body, "retrain": True})["from_store"] is False
    newer = [*closes(data, "delta"), closes(data, "delta")[-1] * 1.01]  # a new day's close
    assert deep(api, {"series": {"delta": newer}, "model": "lstm",
                      "params": body["params"]})["from_store"] is False
    assert deep(api, {"series": {"delta": newer}, "model": "lstm",
                      "params": body["params"]})["from_store"] is True


def test_send_tasks_and_the_api_share_stored_models(api: Any, cluster: LocalCluster,
                                                    data: Path, tmp_path: Path) -> None:
    def send(*extra: str) -> dict[str, Any]:
        out = tmp_path / "out.json"
        run = run_cli("send-tasks", "--broker", cluster.broker_url, "--model", "lstm",
                      "--coins", "gamma", "--epochs", "1", "--output", str(out), *extra,
                      data_dir=data, timeout=DEEP_WAIT)
        assert run.returncode == 0, run.stderr
        return dict(json.loads(out.read_text())["results"]["gamma"]["lstm"])

    trained = send()
    assert trained["from_store"] is False
    from_api = deep(api, {"coins": ["gamma"], "model": "lstm", "params": {"epochs": 1}})
    assert from_api["from_store"] is True
    assert from_api["forecast"] == trained["forecast"][:5]  # one fit serves any horizon
    assert send()["from_store"] is True
    assert send("--retrain")["from_store"] is False
