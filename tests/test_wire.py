"""Wire format: what the app sends and accepts, request validation, and refusal of pickle."""

from __future__ import annotations

import math
import pickle
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kombu import Connection, Producer
from kombu.serialization import dumps, loads

from crypto_ml.core.errors import ConfigError, InvalidTaskInput
from crypto_ml.core.results import result_meta
from crypto_ml.core.settings import Settings
from crypto_ml.dispatch.planning import plan_messages
from crypto_ml.dispatch.report import failure_reason
from crypto_ml.worker.app import celery_config, create_app
from crypto_ml.worker.requests import (
    ACCEPT_CONTENT,
    BATCH_TASK_NAME,
    TASK_NAME,
    ForecastRequest,
    run_batch,
    run_forecast,
)

SETTINGS = Settings(broker_url="redis://:secret@127.0.0.1:6379/0")


def test_config_accepts_json_and_msgpack_only() -> None:
    conf = celery_config(SETTINGS)
    assert conf["task_serializer"] == conf["result_serializer"] == "msgpack"
    for key in ("accept_content", "result_accept_content"):
        assert sorted(conf[key]) == ["application/json", "application/x-msgpack"]
    with pytest.raises(ConfigError, match="pickle"):
        Settings.from_env({"CRYPTO_ML_SERIALIZER": "pickle"})


def test_reliability_baseline() -> None:
    conf = celery_config(SETTINGS)
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
    assert conf["worker_prefetch_multiplier"] == 1 and conf["worker_disable_prefetch"]
    assert conf["task_soft_time_limit"] < conf["task_time_limit"]
    # live workers keep their messages visible by beating; the timeout is only a last resort
    assert conf["broker_transport_options"]["visibility_timeout"] > conf["task_time_limit"]
    assert conf["crypto_ml_dead_after_seconds"] == 10 and conf["crypto_ml_heartbeat_seconds"] == 2
    assert conf["result_expires"] > 0
    # pool processes are replaced for their memory, not every N tasks (a 1-2.5 s stall each)
    assert conf["worker_max_tasks_per_child"] is None
    assert conf["worker_max_memory_per_child"] == 3072 * 1024
    assert Settings.from_env({"CRYPTO_ML_MAX_CHILD_MEMORY_MB": "1536"}).max_child_memory_mb == 1536
    Settings(hard_time_limit=3600, soft_time_limit=3500, visibility_timeout=60)  # allowed now
    with pytest.raises(ConfigError, match="visibility"):
        Settings(visibility_timeout=15)
    with pytest.raises(ConfigError, match="HEARTBEAT"):
        Settings(heartbeat_seconds=6)


def test_task_events_are_off_unless_flower_is_there() -> None:
    """Events cost a PUBLISH each per task; Celery's STARTED store costs two round trips, so the
    app leaves it to ForecastTask (deep tasks only)."""
    quiet = celery_config(SETTINGS)
    assert not quiet["worker_send_task_events"] and not quiet["task_send_sent_event"]
    assert not quiet["task_track_started"]
    watched = celery_config(Settings.from_env({"CRYPTO_ML_BROKER_URL": SETTINGS.broker_url or "",
                                               "CRYPTO_ML_TASK_EVENTS": "1"}))
    assert watched["worker_send_task_events"] and watched["task_send_sent_event"]


def test_no_broker_is_an_error_not_a_default_host() -> None:
    with pytest.raises(ConfigError, match="CRYPTO_ML_BROKER_URL"):
        celery_config(Settings())


def test_deep_models_route_to_the_gpu_queue() -> None:
    app = create_app(SETTINGS)
    route = app.amqp.router.route
    for model, queue in [("naive", "cpu"), ("linear", "cpu"), ("lstm", "gpu"), ("gru", "gpu")]:
        options = route({}, TASK_NAME, (), {"model": model})
        assert options["queue"].name == queue


@pytest.mark.parametrize("reader", ["json", "msgpack"])
@pytest.mark.parametrize("writer", ["json", "msgpack"])
def test_a_result_is_read_whichever_format_its_worker_wrote(writer: str, reader: str) -> None:
    """A manager set to one CRYPTO_ML_SERIALIZER reads the results of workers set to the other
    (a stored result carries no content type)."""
    stored = create_app(replace(SETTINGS, serializer=writer)).backend.encode(
        {"status": "SUCCESS", "result": {"forecast": [1.5, 2.0]}, "task_id": "t1"})
    read = result_meta(create_app(replace(SETTINGS, serializer=reader)), stored)
    assert read["status"] == "SUCCESS" and read["result"] == {"forecast": [1.5, 2.0]}


@pytest.mark.parametrize("stored", [
    b"\x00\xffjunk", b"{not json", b"[1, 2]", b"\x93\x01\x02\x03", b'{"a": 1}',
    b'{"status": "FAILURE", "result": {"exc_type": "system", "exc_module": "os", '
    b'"exc_message": ["id"]}}',  # no exception class: Celery refuses to build it
])
def test_a_stored_result_that_is_no_workers_is_a_failure_not_a_traceback(stored: bytes) -> None:
    meta = result_meta(create_app(SETTINGS), stored)
    assert meta["status"] == "FAILURE"
    assert failure_reason(meta).startswith("its stored result is unreadable (")
    assert "not a crypto-ml worker's JSON or msgpack" in failure_reason(meta)


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
def test_request_and_result_round_trip(serializer: str) -> None:
    request = ForecastRequest("bitcoin", "linear", [1.0, 2.5, 3.25], 2, "2017-09-22")
    ctype, enc, body = dumps(request.as_kwargs(), serializer=serializer)
    again = ForecastRequest.parse(**loads(body, ctype, enc, accept=ACCEPT_CONTENT))
    assert again == request
    result = run_forecast(again, worker="w1@host")
    ctype, enc, body = dumps(result, serializer=serializer)
    decoded = loads(body, ctype, enc, accept=ACCEPT_CONTENT)
    assert decoded == result and decoded["forecast"] == pytest.approx([4.5, 5.625])
    assert set(decoded) == {"coin", "model", "horizon", "forecast", "last_date", "n_points",
                            "fit_seconds", "worker", "device", "intervals", "interval_method"}
    assert set(decoded["intervals"]) == {"80", "95"}  # the default levels
    for band in decoded["intervals"].values():
        assert all(lo <= f <= up for lo, f, up in zip(band["lower"], decoded["forecast"],
                                                       band["upper"], strict=True))


@pytest.mark.parametrize(("change", "argument"), [
    ({"prices": "1,2,3"}, "prices"),
    ({"prices": [1.0, math.nan, 2.0]}, "prices"),
    ({"prices": [1.0, math.inf]}, "prices"),
    ({"prices": [1.0, "2"]}, "prices"),
    ({"horizon": -1}, "horizon"),
    ({"horizon": 10_000}, "horizon"),
    ({"horizon": 2.5}, "horizon"),
    ({"model": "prophet"}, "model"),
    ({"coin": 7}, "coin"),
    ({"params": {"epochs": 1}}, "params"),
    ({"levels": [80, 100]}, "levels"),
    ({"levels": ["wide"]}, "levels"),
    ({"levels": 95}, "levels"),
])
def test_bad_arguments_are_named(change: dict[str, Any], argument: str) -> None:
    kwargs: dict[str, Any] = {"coin": "c", "model": "linear", "prices": [1.0, 2.0], "horizon": 3}
    kwargs.update(change)
    with pytest.raises(InvalidTaskInput, match=f"'{argument}'"):
        ForecastRequest.parse(**kwargs)


def test_series_above_the_cap_is_refused() -> None:
    with pytest.raises(InvalidTaskInput, match="cap"):
        ForecastRequest.parse(coin="c", model="naive", prices=list(np.ones(11)), horizon=1,
                              max_series=10)


def test_a_bad_item_fails_alone_in_its_batch() -> None:
    good = ForecastRequest("a", "linear", [1.0, 2.0, 3.0], 1).as_kwargs()
    short = {**good, "coin": "b", "prices": [1.0]}
    odd = {**good, "coin": "c", "horizon": "ten"}
    results = run_batch([good, short, odd, {"coin": "d"}], "w", 10, ForecastRequest.parse)
    assert results[0]["forecast"] == pytest.approx([4.0])
    assert results[1]["error"].startswith("SeriesTooShort") and "'b'" in results[1]["error"]
    assert "'horizon'" in results[2]["error"] and results[2]["coin"] == "c"
    assert results[3]["error"].startswith("InvalidTaskInput") and results[3]["coin"] == "d"
    with pytest.raises(InvalidTaskInput, match="batch cap"):
        run_batch([good] * 11, "w", 10, ForecastRequest.parse)


def test_cheap_forecasts_are_batched_and_deep_ones_sent_alone_longest_first() -> None:
    cheap = [ForecastRequest(f"c{i}", "linear", [1.0, 2.0], 1) for i in range(100)]
    deep = [ForecastRequest(f"d{n}", "lstm", [1.0] * n, 1) for n in (60, 90, 70)]
    messages = plan_messages(deep + cheap, batch_size=64)
    assert [m.task for m in messages[:3]] == [TASK_NAME] * 3
    assert [m.items[0][0] for m in messages[:3]] == ["d90", "d70", "d60"]
    batches = messages[3:]
    assert {m.task for m in batches} == {BATCH_TASK_NAME} and len(batches) >= 4
    assert sorted(i for m in batches for i in m.items) == sorted((r.coin, "linear") for r in cheap)
    singles = plan_messages(cheap, batch_size=1)
    assert len(singles) == 100 and {m.task for m in singles} == {TASK_NAME}


class _Exploit:
    """Unpickling this would create a file: proof that a payload was executed."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.path,))


@pytest.mark.integration
def test_worker_refuses_a_pickle_message_and_keeps_serving(cluster: Any, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    body = pickle.dumps(((), {"coin": "x", "model": "naive", "prices": [1.0], "horizon": 1,
                              "payload": _Exploit(marker)}, {}))
    headers = {"lang": "py", "task": TASK_NAME, "id": "evil-1", "argsrepr": "", "kwargsrepr": ""}
    app = create_app(Settings().with_broker(cluster.broker_url))
    queue = app.amqp.queues["cpu"]
    with Connection(cluster.broker_url) as conn:
        Producer(conn).publish(body, routing_key=queue.routing_key, exchange=queue.exchange,
                               declare=[queue], content_type="application/x-python-serialize",
                               content_encoding="binary", headers=headers)
    ok = app.send_task(TASK_NAME, kwargs={"coin": "y", "model": "naive", "prices": [1.0, 2.0],
                                          "horizon": 1})
    assert ok.get(timeout=60)["forecast"] == [2.0]  # the worker still serves
    assert not marker.exists()
    assert app.AsyncResult("evil-1").state == "PENDING"  # never executed
    logs = "".join(p.read_text() for p in Path(cluster.workdir).glob("worker*.log"))
    assert "untrusted content" in logs and "x-python-serialize" in logs


def test_each_model_is_sent_its_own_default_window(price_data: Path) -> None:
    """No --max-points: 200 closes for most models, the whole history where the backtest
    found that more history helps; 0 sends everything; levels travel with each request."""
    from crypto_ml.data.loader import CryptoLoader
    from crypto_ml.dispatch.manager import CryptoManager
    from crypto_ml.dispatch.report import RunReport
    from crypto_ml.models import default_max_points

    loader = CryptoLoader(price_data)
    manager = CryptoManager(loader=loader)
    n = len(loader.get_prices("bitcoin"))
    models = ["naive", "ets", "lstm", "gru", "gru_ret"]
    sent = {r.model: r for r in manager.build_requests(models, ["bitcoin"], 10, None, {},
                                                       RunReport(), levels=(90,))}
    for model in models:
        window = default_max_points(model)
        assert len(sent[model].prices) == (min(window, n) if window else n)
        assert sent[model].levels == (90.0,)
    assert {m for m in models if default_max_points(m) == 0} == {"gru", "gru_ret"}
    whole = manager.build_requests(["naive"], ["bitcoin"], 10, 0, {}, RunReport())
    assert len(whole[0].prices) == n > 200 and whole[0].levels == (80.0, 95.0)
