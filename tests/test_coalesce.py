"""Concurrent runs' cheap forecasts share messages (crypto_ml.dispatch.coalesce): the rules
in-process, then on a real cluster: every run gets its own results, fewer messages than
runs, a message that fails as a whole ends each of its parts with its reason, and a
hostile part id is refused unread. Everything runs on an asyncio event loop, as in the API."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from crypto_ml.core.errors import BrokerUnavailable, InvalidTaskInput
from crypto_ml.core.settings import Settings
from crypto_ml.dispatch.async_results import Waiter
from crypto_ml.dispatch.coalesce import Coalescer
from crypto_ml.dispatch.runs import Run, RunQueue
from crypto_ml.models import get_model
from crypto_ml.worker.app import create_app
from crypto_ml.worker.requests import (
    PARTS_TASK_NAME,
    ForecastRequest,
    check_parts,
    check_reply,
)


class FakeBroker:
    """What a Coalescer is given: publish records messages, watch keeps their callbacks."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.sent: list[tuple[str, list[str]]] = []  # (message id, its part ids)
        self.callbacks: dict[str, Any] = {}  # by message id

    async def publish(self, message_id: str, kwargs: dict[str, Any]) -> None:
        if self.fail:
            raise ConnectionError("broker down")
        self.sent.append((message_id, [p["id"] for p in kwargs["parts"]]))

    async def watch(self, part_ids: list[str], callback: Any, timeout: float,
                    ends: list[str]) -> None:
        (message_id,) = ends
        self.callbacks[message_id] = callback

    def finish(self, message_id: str) -> None:
        """The message is done with: its parts' results, or its own failure, arrived."""
        self.callbacks.pop(message_id)()

    def coalescer(self, **kwargs: Any) -> Coalescer:
        return Coalescer(self.publish, self.watch, **kwargs)


T = TypeVar("T")


def unit(test: T) -> T:
    """An in-process test on the event loop (anyio's pytest plugin), 30 s at most."""
    return pytest.mark.anyio(pytest.mark.timeout(30)(test))

def on_loop(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 30))


async def until(condition: Callable[[], bool]) -> None:
    """Let the loop run until ``condition`` holds (the test's time limit bounds it)."""
    while not condition():
        await asyncio.sleep(0)


def item(i: int) -> dict[str, Any]:
    return ForecastRequest(f"c{i}", "linear", [1.0, 2.0], 1).as_kwargs()


@unit
async def test_an_idle_coalescer_sends_at_once_and_a_busy_one_shares_one_message() -> None:
    broker = FakeBroker()
    coalescer = broker.coalescer(window=1)
    first = await coalescer.submit("part-a", [item(0)])
    assert broker.sent == [(first, ["part-a"])]  # no waiting while nothing is in flight
    later = [asyncio.create_task(coalescer.submit(f"part-{c}", [item(1)])) for c in "bcd"]
    await until(lambda: coalescer.waiting == 3)
    assert len(broker.sent) == 1
    broker.finish(first)
    carriers = set(await asyncio.gather(*later))
    message, parts = broker.sent[1]
    assert carriers == {message} and sorted(parts) == ["part-b", "part-c", "part-d"]
    assert (coalescer.messages, coalescer.parts) == (2, 4)
    await coalescer.close()


@unit
async def test_a_backlog_beyond_a_full_message_goes_to_the_broker_at_once() -> None:
    broker = FakeBroker()
    coalescer = broker.coalescer(window=1, max_items=2)
    await coalescer.submit("part-a", [item(0)])
    later = [coalescer.submit(f"part-{c}", [item(1)]) for c in "bc"]
    sent = set(await asyncio.gather(*later))  # two items: a full message, sent anyway
    assert len(sent) == 1 and [sorted(parts) for _, parts in broker.sent] == [
        ["part-a"], ["part-b", "part-c"]]
    await coalescer.close()


@unit
async def test_a_part_that_cannot_be_published_is_broker_unavailable() -> None:
    down = FakeBroker(fail=True)
    coalescer = down.coalescer(window=2)
    with pytest.raises(BrokerUnavailable, match="nothing of this request was queued"):
        await coalescer.submit("part-a", [item(0)])
    assert coalescer.in_flight == 0
    await coalescer.close()


@unit
async def test_parts_that_came_while_the_broker_hung_are_refused_with_it_not_after(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # a Redis that stopped answering: each message waited a socket timeout in turn, so the
    # fourth of four concurrent requests had its 503 after four of them
    import crypto_ml.dispatch.coalesce as coalesce
    monkeypatch.setattr(coalesce, "SOCKET_TIMEOUT", 0.2)
    hung = FakeBroker()
    tries = []

    async def publish(message_id: str, kwargs: dict[str, Any]) -> None:
        tries.append(message_id)
        await asyncio.Event().wait()  # no answer, ever
    coalescer = Coalescer(publish, hung.watch, window=4)
    first = asyncio.ensure_future(coalescer.submit("part-a", [item(0)]))
    await until(lambda: bool(tries))
    later = [asyncio.ensure_future(coalescer.submit(f"part-{c}", [item(1)])) for c in "bcd"]
    for part in (first, *later):
        with pytest.raises(BrokerUnavailable, match="TimeoutError"):
            await part
    assert len(tries) == 1 and coalescer.waiting == 0
    await coalescer.close()


@unit
async def test_parts_waiting_when_the_api_stops_are_refused_not_lost() -> None:
    broker = FakeBroker()
    coalescer = broker.coalescer(window=1)
    await coalescer.submit("part-a", [item(0)])
    waiting = asyncio.create_task(coalescer.submit("part-b", [item(1)]))
    await until(lambda: coalescer.waiting == 1)
    await coalescer.close()
    with pytest.raises(BrokerUnavailable, match="stopped before this request was queued"):
        await waiting
    with pytest.raises(BrokerUnavailable, match="stopping"):
        await coalescer.submit("part-c", [item(2)])
    assert [parts for _, parts in broker.sent] == [["part-a"]]


@unit
async def test_a_part_ends_with_its_own_result_or_with_its_carriers_failure() -> None:
    waiter = Waiter(["p1", "p2", "p3", "solo"])
    assert waiter.carried_by({"p1": "m1", "p2": "m1", "p3": "m2"}) == {"m1", "m2"}
    assert waiter.watched == {"p1", "p2", "p3", "solo", "m1", "m2"}
    waiter.deliver("m1", {"status": "SUCCESS", "result": {}})  # its parts' results tell
    waiter.deliver("p1", {"status": "SUCCESS", "result": []})
    assert waiter.missing == {"p2", "p3", "solo"}
    waiter.deliver("m2", {"status": "FAILURE", "result": "TooManyDeliveries"})
    assert waiter.missing == {"p2", "solo"} and waiter.metas["p3"]["status"] == "FAILURE"
    waiter.deliver("p2", {"status": "SUCCESS", "result": []})
    waiter.deliver("solo", {"status": "SUCCESS", "result": {}})
    assert waiter.done.is_set() and waiter.metas["p2"]["status"] == "SUCCESS"


@pytest.mark.parametrize("reply_to", ["celery-task-meta-x", "crypto-ml-hub-", "crypto-ml-hub-"
                                      + "0" * 31, "crypto-ml-hub-" + "A" * 32, None, 7, ["x"]])
def test_a_reply_channel_must_be_a_hubs_home(reply_to: Any) -> None:
    """Workers publish a message's results on its ``reply_to``: never on another channel."""
    with pytest.raises(InvalidTaskInput, match="'reply_to'"):
        check_reply(reply_to)
    assert check_reply("crypto-ml-hub-" + uuid.uuid4().hex).startswith("crypto-ml-hub-")


@pytest.mark.parametrize("part_id", ["crypto_ml:run:x", "../x", "", None, 7,
                                     str(uuid.uuid4()) + "x"])
def test_a_part_id_must_be_a_task_id(part_id: Any) -> None:
    with pytest.raises(InvalidTaskInput, match="'parts'"):
        check_parts([{"id": part_id, "items": []}], 10)
    with pytest.raises(InvalidTaskInput, match="batch cap"):
        check_parts([{"id": str(uuid.uuid4()), "items": [item(0)] * 11}], 10)


# on a real cluster ---------------------------------------------------------------------------


def on_cluster(cluster: Any, test: Callable[[RunQueue], Awaitable[None]]) -> None:
    """Run ``test`` with a RunQueue (coalescing window 1) on the cluster, on one event loop."""
    settings = Settings().with_broker(cluster.broker_url)
    runs = RunQueue(create_app(settings), settings, coalesce=1)

    async def body() -> None:
        try:
            await test(runs)
        finally:
            await runs.aclose()

    on_loop(body)


def result_keys(cluster: Any) -> set[bytes]:
    with cluster.client() as redis_client:
        return set(redis_client.keys("celery-task-meta-*"))


@pytest.mark.integration
def test_concurrent_runs_share_messages_and_each_gets_its_own_results(cluster: Any) -> None:
    before = result_keys(cluster)
    series = {f"s{i}": [100.0 + i + 0.5 * k + (k % 3) for k in range(40)] for i in range(16)}

    async def one(queue: RunQueue, name: str) -> dict[str, Any]:
        run = await queue.submit([ForecastRequest(name, "linear", series[name], 3),
                                  ForecastRequest(name, "naive", series[name], 3)])
        state = await queue.wait(run, 20)
        assert state is not None and state.failed == {}
        return state.results

    async def test(queue: RunQueue) -> None:
        results = dict(zip(series, await asyncio.gather(*(one(queue, n) for n in series)),
                           strict=True))
        for name, closes in series.items():
            assert set(results[name]) == {name}  # its own forecasts, nobody else's
            for model in ("linear", "naive"):
                expected = get_model(model).fit(closes).forecast(3).tolist()
                assert results[name][name][model]["forecast"] == pytest.approx(expected,
                                                                               rel=1e-12)
        assert queue.coalesced()[1] == 16 and queue.coalesced()[0] < 16
        await until_async(lambda: result_keys(cluster) <= before)  # every result deleted

    on_cluster(cluster, test)


async def until_async(condition: Callable[[], bool]) -> None:
    """Wait for a condition outside the loop (Redis's keys); the outer wait_for bounds it."""
    while not condition():
        await asyncio.sleep(0.05)


@pytest.mark.integration
def test_a_message_that_fails_as_a_whole_ends_each_part_with_its_reason(cluster: Any) -> None:
    async def test(queue: RunQueue) -> None:
        part, message = str(uuid.uuid4()), str(uuid.uuid4())
        run = Run("r1", {part: [("c0", "linear")]}, deadline=1e12, carriers={part: message})
        run.waiter = await queue._loop().hub.expect([part])
        await queue._loop().hub.carry(run.waiter, run.carriers)
        await queue.save(run)
        queue.app.send_task(PARTS_TASK_NAME, task_id=message, kwargs={"parts": [
            {"id": part, "items": [item(0)]},
            {"id": "crypto_ml:run:hijack", "items": [item(1)]}]})
        state = await queue.wait(run, 20)
        assert state is not None and state.status == "failed"
        reason = state.failed["c0"]["linear"]
        assert "InvalidTaskInput" in reason and "UUID" in reason
        saved = await queue.state("r1")  # a replica reading the saved run says the same
        assert saved is not None and saved.failed == state.failed
        with cluster.client() as redis_client:
            assert not redis_client.exists("celery-task-meta-crypto_ml:run:hijack")
            assert not redis_client.exists(f"celery-task-meta-{part}")  # nothing ran

    on_cluster(cluster, test)


@pytest.mark.integration
def test_a_message_without_reply_to_stores_its_own_result_as_before(cluster: Any) -> None:
    """A shared message from an API of an earlier version (no ``reply_to``: it waits for the
    message's own result) still gets that result, and its part its own."""
    app = create_app(Settings().with_broker(cluster.broker_url))
    part, message = str(uuid.uuid4()), str(uuid.uuid4())
    sent = app.send_task(PARTS_TASK_NAME, task_id=message,
                         kwargs={"parts": [{"id": part, "items": [item(0)]}]})
    assert sent.get(timeout=30) == {"parts": {part: 1}}
    (result,) = app.AsyncResult(part).get(timeout=30)
    assert result["coin"] == "c0" and len(result["forecast"]) == 1


@pytest.mark.integration
def test_a_message_is_done_with_once_its_parts_or_its_own_failure_arrive(cluster: Any) -> None:
    """What frees a coalescer's slot: every part's result, else the message's failure, else
    the timeout; once each, and nothing stays subscribed afterwards."""
    async def test(queue: RunQueue) -> None:
        hub, backend = queue._loop().hub, queue.app.backend
        ids = {name: str(uuid.uuid4()) for name in ("p1", "p2", "m1", "p3", "m2")}
        called: list[str] = []

        def done(name: str) -> Callable[[], None]:
            return lambda: called.append(name)

        await hub.watch([ids["p1"], ids["p2"]], done("parts"), 30, [ids["m1"]])
        await hub.watch([ids["p3"]], done("failure"), 30, [ids["m2"]])
        await hub.watch([str(uuid.uuid4())], done("timeout"), 0.2, [str(uuid.uuid4())])
        backend.store_result(ids["p1"], [], "SUCCESS")
        await until(lambda: called == ["timeout"])  # one part of two: not yet
        backend.store_result(ids["p2"], [], "SUCCESS")
        backend.mark_as_failure(ids["m2"], TimeoutError("hard time limit"))
        await until(lambda: sorted(called) == ["failure", "parts", "timeout"])
        backend.store_result(ids["p3"], [], "SUCCESS")  # after its message's end: ignored
        await asyncio.sleep(0.2)
        assert sorted(called) == ["failure", "parts", "timeout"]
        await until(lambda: not hub._listeners)  # every subscription dropped

    on_cluster(cluster, test)


@pytest.mark.integration
def test_results_are_awaited_on_pub_sub_not_by_polling(cluster: Any) -> None:
    """With the safety sweep an hour away, results still arrive: their messages wake it. The
    parts' results come on the hub's home channel, with no subscription per request."""
    async def test(queue: RunQueue) -> None:
        queue._loop().hub.sweep_seconds = 3600.0
        runs = [await queue.submit([ForecastRequest(f"c{i}", "linear", [1.0, 2.0, 3.0], 2)])
                for i in range(3)]
        with cluster.client() as redis_client:  # parts come on the hub's one home channel
            channels = set(redis_client.pubsub_channels("celery-task-meta-*"))
        hub = queue._loop().hub
        assert hub.key(hub.reply_to) in channels
        assert not channels & {hub.key(task_id) for run in runs for task_id in run.tasks}
        states = [await queue.wait(run, 20) for run in runs]
        assert all(s is not None and s.status == "done" for s in states)

    on_cluster(cluster, test)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.integration
def test_the_window_follows_the_task_slots_of_the_live_workers(cluster: Any) -> None:
    # unset CRYPTO_ML_API_COALESCE: one message per task slot of the workers that beat (4 until
    # known), read again every few seconds, so a worker that joins (kubectl scale, KEDA) shares
    # the load; a worker with 6 slots is planted beside the cluster's 2 single-process workers
    settings = Settings().with_broker(cluster.broker_url)
    runs = RunQueue(create_app(settings), settings)
    joined = f"joined-{uuid.uuid4()}/1/00"
    series = [100.0 + 0.5 * k + (k % 3) for k in range(40)]

    async def forecast() -> None:
        run = await runs.submit([ForecastRequest("s", "linear", series, 3)])
        state = await runs.wait(run, 20)
        assert state is not None and state.failed == {} and "linear" in state.results["s"]

    async def body() -> None:
        try:
            await forecast()
            assert runs.coalescer is not None and runs.coalescer.window == cluster.n_workers
            with cluster.client() as redis_client:
                redis_client.hset("crypto_ml:slots", joined, f"6 {time.time() + 60!r} cpu,gpu")
            while runs.coalescer.window != cluster.n_workers + 6:
                await forecast()
                await asyncio.sleep(0.2)
        finally:
            with cluster.client() as redis_client:
                redis_client.hdel("crypto_ml:slots", joined)
            await runs.aclose()

    on_loop(body)
