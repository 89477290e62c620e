"""Concurrent runs' cheap forecasts share messages (crypto_ml.dispatch.coalesce): the rules
in-process, then on a real cluster: every run gets its own results, fewer messages than
runs, a message that fails as a whole ends each of its parts with its reason, and a
hostile part id is refused unread."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from crypto_ml.core.errors import BrokerUnavailable, InvalidTaskInput
from crypto_ml.core.settings import Settings
from crypto_ml.dispatch.coalesce import Coalescer
from crypto_ml.dispatch.runs import Run, RunQueue
from crypto_ml.dispatch.waiting import _Waiter
from crypto_ml.models import get_model
from crypto_ml.ops.processes import wait_until
from crypto_ml.worker.app import create_app
from crypto_ml.worker.requests import PARTS_TASK_NAME, ForecastRequest, check_parts


class FakeBroker:
    """What a Coalescer is given: publish records messages, watch keeps their callbacks."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.sent: list[tuple[str, list[str]]] = []  # (message id, its part ids)
        self.callbacks: dict[str, Any] = {}
        self.forgotten: list[str] = []
        self.lock = threading.Lock()

    def publish(self, message_id: str, kwargs: dict[str, Any]) -> None:
        if self.fail:
            raise ConnectionError("broker down")
        with self.lock:
            self.sent.append((message_id, [p["id"] for p in kwargs["parts"]]))

    def watch(self, message_id: str, callback: Any, timeout: float) -> None:
        self.callbacks[message_id] = callback

    def finish(self, message_id: str, status: str = "SUCCESS") -> None:
        self.callbacks.pop(message_id)(message_id, {"status": status, "result": None})


@pytest.fixture
def broker() -> FakeBroker:
    return FakeBroker()


@pytest.fixture
def make(broker: FakeBroker) -> Iterator[Any]:
    made: list[Coalescer] = []

    def build(**kwargs: Any) -> Coalescer:
        made.append(Coalescer(broker.publish, broker.watch, broker.forgotten.append, **kwargs))
        return made[-1]

    yield build
    for coalescer in made:
        coalescer.close()


def item(i: int) -> dict[str, Any]:
    return ForecastRequest(f"c{i}", "linear", [1.0, 2.0], 1).as_kwargs()


def test_an_idle_coalescer_sends_at_once_and_a_busy_one_shares_one_message(
        broker: FakeBroker, make: Any) -> None:
    coalescer = make(window=1)
    first = coalescer.submit("part-a", [item(0)])
    assert broker.sent == [(first, ["part-a"])]  # no waiting while nothing is in flight
    with ThreadPoolExecutor(3) as pool:
        later = [pool.submit(coalescer.submit, f"part-{c}", [item(1)]) for c in "bcd"]
        wait_until(lambda: coalescer.waiting == 3, 10, "three parts waiting for the window")
        assert len(broker.sent) == 1
        broker.finish(first)
        carriers = {f.result(timeout=10) for f in later}
    message, parts = broker.sent[1]
    assert carriers == {message} and sorted(parts) == ["part-b", "part-c", "part-d"]
    assert broker.forgotten == [first]  # a finished message's own result is deleted
    assert (coalescer.messages, coalescer.parts) == (2, 4)


def test_a_backlog_beyond_a_full_message_goes_to_the_broker_at_once(
        broker: FakeBroker, make: Any) -> None:
    coalescer = make(window=1, max_items=2)
    coalescer.submit("part-a", [item(0)])
    with ThreadPoolExecutor(3) as pool:
        later = [pool.submit(coalescer.submit, f"part-{c}", [item(1)]) for c in "bc"]
        sent = {f.result(timeout=10) for f in later}  # two items: a full message, sent anyway
    assert len(sent) == 1 and [sorted(parts) for _, parts in broker.sent] == [
        ["part-a"], ["part-b", "part-c"]]


def test_a_failed_message_stays_for_its_callers_and_frees_its_slot(
        broker: FakeBroker, make: Any) -> None:
    coalescer = make(window=1)
    first = coalescer.submit("part-a", [item(0)])
    broker.finish(first, "FAILURE")
    assert broker.forgotten == [] and coalescer.in_flight == 0
    coalescer.submit("part-b", [item(1)])  # the window is free again


def test_a_part_that_cannot_be_published_is_broker_unavailable(make: Any) -> None:
    down = FakeBroker(fail=True)
    coalescer = Coalescer(down.publish, down.watch, down.forgotten.append, window=2)
    try:
        with pytest.raises(BrokerUnavailable, match="nothing of this request was queued"):
            coalescer.submit("part-a", [item(0)])
        assert coalescer.in_flight == 0
    finally:
        coalescer.close()


def test_a_part_ends_with_its_own_result_or_with_its_carriers_failure() -> None:
    waiter = _Waiter(["p1", "p2", "p3", "solo"], {"p1": "m1", "p2": "m1", "p3": "m2"})
    assert waiter.watched == {"p1", "p2", "p3", "solo", "m1", "m2"}
    waiter.deliver("m1", {"status": "SUCCESS", "result": {}})  # its parts' results tell
    waiter.deliver("p1", {"status": "SUCCESS", "result": []})
    assert waiter.missing == {"p2", "p3", "solo"}
    waiter.deliver("m2", {"status": "FAILURE", "result": "TooManyDeliveries"})
    assert waiter.missing == {"p2", "solo"} and waiter.metas["p3"]["status"] == "FAILURE"
    waiter.deliver("p2", {"status": "SUCCESS", "result": []})
    waiter.deliver("solo", {"status": "SUCCESS", "result": {}})
    assert waiter.done.is_set() and waiter.metas["p2"]["status"] == "SUCCESS"


@pytest.mark.parametrize("part_id", ["crypto_ml:run:x", "../x", "", None, 7,
                                     str(uuid.uuid4()) + "x"])
def test_a_part_id_must_be_a_task_id(part_id: Any) -> None:
    with pytest.raises(InvalidTaskInput, match="'parts'"):
        check_parts([{"id": part_id, "items": []}], 10)
    with pytest.raises(InvalidTaskInput, match="batch cap"):
        check_parts([{"id": str(uuid.uuid4()), "items": [item(0)] * 11}], 10)


# on a real cluster ---------------------------------------------------------------------------


@pytest.fixture
def queue(cluster: Any) -> Iterator[RunQueue]:
    settings = Settings().with_broker(cluster.broker_url)
    runs = RunQueue(create_app(settings), coalesce=1)
    yield runs
    runs.close()


def result_keys(cluster: Any) -> set[bytes]:
    with cluster.client() as redis_client:
        return set(redis_client.keys("celery-task-meta-*"))


@pytest.mark.integration
def test_concurrent_runs_share_messages_and_each_gets_its_own_results(
        cluster: Any, queue: RunQueue) -> None:
    before = result_keys(cluster)
    series = {f"s{i}": [100.0 + i + 0.5 * k + (k % 3) for k in range(40)] for i in range(16)}

    def one(name: str) -> dict[str, Any]:
        run = queue.submit([ForecastRequest(name, "linear", series[name], 3),
                            ForecastRequest(name, "naive", series[name], 3)])
        state = queue.wait(run, 60)
        assert state is not None and state.failed == {}
        return state.results

    with ThreadPoolExecutor(16) as pool:
        results = dict(zip(series, pool.map(one, series), strict=True))
    for name, closes in series.items():
        assert set(results[name]) == {name}  # its own forecasts, nobody else's
        for model in ("linear", "naive"):
            expected = get_model(model).fit(closes).forecast(3).tolist()
            assert results[name][name][model]["forecast"] == pytest.approx(expected, rel=1e-12)
    coalescer = queue.coalescer
    assert coalescer is not None and coalescer.parts == 16 and coalescer.messages < 16
    wait_until(lambda: result_keys(cluster) <= before, 10, "every result read and deleted")


@pytest.mark.integration
def test_a_message_that_fails_as_a_whole_ends_each_part_with_its_reason(
        cluster: Any, queue: RunQueue) -> None:
    part, message = str(uuid.uuid4()), str(uuid.uuid4())
    queue.app.send_task(PARTS_TASK_NAME, task_id=message, kwargs={"parts": [
        {"id": part, "items": [item(0)]}, {"id": "crypto_ml:run:hijack", "items": [item(1)]}]})
    run = Run("r1", {part: [("c0", "linear")]}, deadline=1e12, carriers={part: message})
    queue.save(run)
    state = queue.wait(run, 60)
    assert state is not None and state.status == "failed"
    assert "InvalidTaskInput" in state.failed["c0"]["linear"] and "UUID" in state.failed["c0"]["linear"]
    saved = queue.state("r1")  # a replica reading the saved run says the same
    assert saved is not None and saved.failed == state.failed
    with cluster.client() as redis_client:
        assert not redis_client.exists("celery-task-meta-crypto_ml:run:hijack")
        assert not redis_client.exists(f"celery-task-meta-{part}")  # nothing ran


def test_parts_waiting_when_the_api_stops_are_refused_not_lost(broker: FakeBroker) -> None:
    coalescer = Coalescer(broker.publish, broker.watch, broker.forgotten.append, window=1)
    coalescer.submit("part-a", [item(0)])
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(coalescer.submit, "part-b", [item(1)])
        wait_until(lambda: coalescer.waiting == 1, 10, "a part waiting for the window")
        coalescer.close()
        with pytest.raises(BrokerUnavailable, match="stopped before this request was queued"):
            waiting.result(timeout=10)
    with pytest.raises(BrokerUnavailable, match="stopping"):
        coalescer.submit("part-c", [item(2)])
    assert [parts for _, parts in broker.sent] == [["part-a"]]


@pytest.mark.integration
def test_a_watched_message_that_never_finishes_is_called_back_after_its_timeout(
        queue: RunQueue) -> None:
    called: list[tuple[str, Any]] = []
    queue.watcher().watch("never-sent", lambda task_id, meta: called.append((task_id, meta)), 0.2)
    wait_until(lambda: bool(called), 10, "the watch's timeout")
    assert called == [("never-sent", None)]
