"""`python -m crypto_ml.api` as a user runs it: no broker configured, so it starts the
embedded cluster; it serves forecasts, its /docs page renders in headless Chromium (which
lists every endpoint; a screenshot is saved), and SIGTERM stops it with the cluster."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
from api_support import write_coins
from conftest import CHROMIUM, ROOT, browse, hangups_heard

from crypto_ml.ops.processes import free_port, spawn, terminate, wait_until

pytestmark = pytest.mark.integration
ARTIFACTS = ROOT / "test-artifacts"
KEY = "test-key-0123456789"


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path


def call(url: str, body: dict[str, Any] | None = None, key: str | None = KEY,
         method: str | None = None, timeout: float = 120) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method or ("POST" if data else "GET"))
    request.add_header("Content-Type", "application/json")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def healthy(url: str) -> bool:
    try:
        return call(f"{url}/healthz", key=None)[0] == 200
    except OSError:
        return False


@contextlib.contextmanager
def embedded_server(folder: Path, coins: tuple[str, ...] = ("Alpha", "Beta"),
                    **env_vars: str) -> Iterator[Server]:
    """``python -m crypto_ml.api`` with no broker (so on its own embedded cluster), keys set,
    and ``env_vars`` (CRYPTO_ML_* settings) in its environment."""
    data = write_coins(folder / "prices", coins=coins)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTO_ML_")}
    env.update({"CRYPTO_ML_DATA_DIR": str(data), "CRYPTO_ML_API_KEYS": KEY,
                "CRYPTO_ML_API_JOBS_DIR": str(folder / "jobs"), **env_vars})
    log = folder / "api.log"
    proc = spawn([sys.executable, "-m", "crypto_ml.api", "--port", str(port), "--workers", "1"],
                 log, env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: healthy(url), 120, "the API and its embedded cluster",
                   lambda: f"exited: {log.read_text()}" if proc.poll() is not None else None)
        yield Server(proc, url, log)
    finally:
        terminate(proc)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with embedded_server(tmp_path_factory.mktemp("api-server")) as running:
        yield running


def test_serves_forecasts_on_the_embedded_cluster(server: Server) -> None:
    assert "no broker configured: running embedded" in server.log.read_text()
    status, body = call(f"{server.url}/v1/forecasts?wait=60",
                        {"coins": ["alpha"], "model": "linear", "horizon": 3})
    assert status == 200, body
    assert len(body["results"]["alpha"]["linear"]["forecast"]) == 3
    assert body["results"]["alpha"]["linear"]["worker"].startswith("local1-")
    assert call(f"{server.url}/v1/coins", key=None)[0] == 401



@pytest.mark.skipif(not CHROMIUM, reason="headless Chromium not installed "
                    "(apt-get install -y chromium; .ci/run does)")
def test_docs_page_lists_every_endpoint_in_headless_chromium(server: Server,
                                                             tmp_path: Path) -> None:
    import matplotlib.image

    page = browse(f"{server.url}/docs", tmp_path / "p1", "--dump-dom").stdout
    for method, path in [("post", "/v1/forecasts"), ("get", "/v1/forecasts/{run_id}"),
                         ("get", "/v1/coins"), ("get", "/v1/models"), ("get", "/healthz"),
                         ("get", "/metrics")]:
        assert 'id="operations-' in page
        assert f'data-path="{path}"' in page, path  # rendered by Swagger UI's JavaScript
        assert f"opblock-{method}" in page
    assert "crypto-ml forecasts" in page and "Authorize" in page
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "api-docs.png"
    shot.unlink(missing_ok=True)
    browse(f"{server.url}/docs", tmp_path / "p2", "--hide-scrollbars",
           "--window-size=1400,1300", f"--screenshot={shot}")
    image = matplotlib.image.imread(shot)[..., :3]
    assert image.shape[:2] == (1300, 1400)
    background = image[-5, -5]
    assert (abs(image - background).max(axis=2) > 0.2).mean() > 0.02  # text and boxes drawn


def test_a_body_that_stalls_gets_408_and_frees_its_connection(tmp_path: Path) -> None:
    # a client that sent its headers and part of its body held the request open for ever
    with embedded_server(tmp_path, CRYPTO_ML_API_BODY_SECONDS="1") as server:
        port = int(server.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as stalled:
            stalled.sendall(b"POST /v1/forecasts HTTP/1.1\r\nHost: x\r\n"
                            b"Authorization: Bearer " + KEY.encode() + b"\r\n"
                            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
                            b'{"coins": [')  # and then nothing
            answer = b""
            while chunk := stalled.recv(65536):  # until the server closes it (10 s at most)
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408") and b"connection: close" in head, answer
        assert json.loads(body)["detail"] == ("the request body did not arrive whole within 1 s "
                                              "(CRYPTO_ML_API_BODY_SECONDS)")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as huge:
            huge.sendall(b"POST /v1/forecasts HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Length: 50000000\r\n\r\n")
            answer = b""
            while chunk := huge.recv(65536):  # closed after the 413 (it was kept alive)
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 413") and b"connection: close" in answer, answer
        with partial_post(port):  # and the client goes: its route ran on an empty body (422)
            pass
        assert call(f"{server.url}/v1/forecasts?wait=60", {"coins": ["alpha"],
                                                           "model": "naive"})[0] == 200
        with socket.create_connection(("127.0.0.1", port), timeout=30) as kept:  # HEAD, GET
            kept.sendall(b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                         b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answers = b""
            while chunk := kept.recv(65536):
                answers += chunk
        assert answers.count(b"HTTP/1.1 200") == 2, answers  # both answered on one connection
        wait_until(lambda: 'status="499"' in read_metrics(server), 30, "the closed body counted")
        metrics = read_metrics(server)
        for status in ("408", "413", "499", "200"):  # under the route they were sent to
            assert f'method="POST",route="/v1/forecasts",status="{status}"' in metrics
        assert 'status="422"' not in metrics
        assert 'method="HEAD",route="/healthz",status="200"' in metrics  # it read GET
        assert "Traceback" not in server.log.read_text()


def read_metrics(server: Server) -> str:
    return str(urllib.request.urlopen(f"{server.url}/metrics", timeout=30).read().decode())


@contextlib.contextmanager
def partial_post(port: int) -> Iterator[socket.socket]:
    """A forecast POST whose body has begun to arrive, once the API is reading it (its
    ``100 Continue`` says so), and no more of it."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"POST /v1/forecasts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                     + KEY.encode() + b"\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\nExpect: 100-continue\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue"), "the body was not asked for"
        sock.sendall(b'{"coins": [')
        yield sock


def answer_of(sock: socket.socket) -> tuple[bytes, Any]:
    """The head and the JSON body of the answer on ``sock``, read until the server closes it."""
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return head, json.loads(body)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_stops_the_api_and_its_cluster(tmp_path: Path, sig: signal.Signals) -> None:
    """SIGHUP (its terminal closed) as SIGTERM: uvicorn's drain, then the cluster; it raised
    KeyboardInterrupt inside the event loop, with a traceback and no drain."""
    with hangups_heard(), embedded_server(tmp_path) as server:
        # a body still arriving is refused at once: it held the drain for its whole 10 s,
        # then was cancelled, with a traceback in the log and a 500
        with partial_post(int(server.url.rsplit(":", 1)[1])) as stalled:
            stop_and_check(server, sig)
            head, body = answer_of(stalled)
        assert head.startswith(b"HTTP/1.1 503") and b"connection: close" in head, head
        assert body == {"detail": "the server is stopping; send the request again"}


def test_the_api_stops_when_its_embedded_redis_dies(tmp_path: Path) -> None:
    # it answered 503 for good, the dead Redis a zombie, and a supervisor saw it running
    with embedded_server(tmp_path) as server:
        children = psutil.Process(server.proc.pid).children(recursive=True)
        redis = next(c for c in children if "redis-server" in " ".join(c.cmdline()))
        redis.kill()
        assert server.proc.wait(timeout=60) == 1
        _, alive = psutil.wait_procs(children, timeout=30)
        assert not alive
        log = server.log.read_text()
        assert "crypto-ml: error: the embedded cluster's Redis exited (code -9); the API " \
               "stops" in log and "Traceback" not in log, log


def stop_and_check(server: Server, sig: signal.Signals = signal.SIGTERM) -> None:
    children = psutil.Process(server.proc.pid).children(recursive=True)
    assert any("redis-server" in " ".join(c.cmdline()) for c in children)
    server.proc.send_signal(sig)
    assert server.proc.wait(timeout=60) == 0
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not alive
    log = server.log.read_text()
    assert "crypto-ml API stopped" in log and "Traceback" not in log, log
    assert not healthy(server.url)


@contextlib.contextmanager
def on_broker(cluster: Any, data: Path, log: Path) -> Iterator[Server]:
    """``python -m crypto_ml.api`` on ``cluster``'s broker (no keys), reading ``data``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTO_ML_")}
    env.update(CRYPTO_ML_DATA_DIR=str(data), CRYPTO_ML_BROKER_URL=cluster.broker_url)
    port = free_port()
    proc = spawn([sys.executable, "-m", "crypto_ml.api", "--port", str(port)], log, env=env,
                 cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: healthy(url), 60, "the API on the given broker",
                   lambda: f"exited: {log.read_text()}" if proc.poll() is not None else None)
        yield Server(proc, url, log)
    finally:
        terminate(proc)


def test_with_a_broker_it_queues_there_and_leaves_that_cluster_running(
        cluster: Any, tmp_path: Path) -> None:
    with on_broker(cluster, write_coins(tmp_path / "prices"), tmp_path / "api.log") as server:
        status, body = call(f"{server.url}/v1/forecasts?wait=60",
                            {"coins": ["beta"], "model": "naive"}, key=None)
        assert status == 200, body
        assert body["results"]["beta"]["naive"]["worker"] in cluster.worker_names
        assert "embedded" not in server.log.read_text()
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=60) == 0
    with cluster.client() as redis_client:
        assert redis_client.ping()  # the cluster it was given keeps running


def test_a_fifo_and_a_long_table_in_the_data_folder_neither_block_nor_get_read(
        cluster: Any, tmp_path: Path) -> None:
    # operators put job tables in the data folder. The coin loader read each whole file on the
    # event loop to find it held no prices (every route waited; a FIFO stalled the server for
    # good). Now a file's header decides, non-regular files are skipped, and a first read of
    # the folder runs off the event loop.
    data = write_coins(tmp_path / "prices")
    fifo = data / "incoming.parquet"
    os.mkfifo(fifo)
    # a long table whose rows are not even text: only its header may be read
    (data / "jobs.csv").write_bytes(b"unique_id,ds,y\n" + b"\xff\xfe\x00garbage\n" * 1000)
    try:
        with on_broker(cluster, data, tmp_path / "api.log") as server:
            status, body = call(f"{server.url}/v1/coins", key=None, timeout=30)
            assert (status, body) == (200, {"coins": ["alpha", "beta"]})
            assert "skipping jobs.csv: no Date or Close column" in server.log.read_text()
    finally:
        with contextlib.suppress(OSError):  # frees a reader stuck on the FIFO, if any
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
