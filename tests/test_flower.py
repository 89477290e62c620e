"""Flower on a real cluster: `cluster up --flower`, a `send-tasks` run, then Flower's API,
metrics and dashboard (in headless Chromium) must show every task of the run.

The run has 9 coins x 2 cheap models = 18 forecasts, more than 16, so the manager
batches them (2 per message, 9 messages): Flower shows batch and single tasks alike."""

from __future__ import annotations

import base64
import contextlib
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import CHROMIUM, ROOT, browse, on_a_terminal, run_cli, shown_lines

from crypto_ml.models import DEFAULT_MODEL
from crypto_ml.ops.processes import free_port, spawn, terminate, wait_until

pytestmark = pytest.mark.integration
ARTIFACTS = ROOT / "test-artifacts"
USER, PASSWORD = "ops", secrets.token_hex(8)
COINS = ["bitcoin", "ethereum", "litecoin", "ripple", "monero", "dash", "nem", "dogecoin",
         "bitshares"]
MODELS = ["linear", "naive"]
N_FORECASTS = len(COINS) * len(MODELS)
TASK_LINE = re.compile(r"task ([0-9a-f-]{36}) ok: coin=(\S+) model=(\S+) worker=(\S+) seconds=")


@dataclass
class Stack:
    """`python -m crypto_ml cluster up --flower` and one `send-tasks` run against it."""

    proc: subprocess.Popen[bytes]
    broker_url: str
    flower_url: str
    worker_url: str = ""
    watcher_url: str = ""  # Redis user flower's URL, as `cluster up` prints it
    exports: dict[str, str] = field(default_factory=dict)  # what `cluster up` says to export,
    # the broker URL aside (CRYPTO_ML_TASK_EVENTS=1 with Flower)
    run: subprocess.CompletedProcess[str] | None = None
    tasks: dict[str, list[tuple[str, str, str]]] = field(default_factory=dict)  # id: [(coin,
    # model, worker)], several for a batch message

    @property
    def workers(self) -> set[str]:
        return {w for items in self.tasks.values() for _, _, w in items}


def get(url: str, auth: tuple[str, str] | None = (USER, PASSWORD)) -> tuple[int, str]:
    request = urllib.request.Request(url)
    if auth:
        token = base64.b64encode(":".join(auth).encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def api(stack: Stack, path: str) -> Any:
    import json

    status, body = get(stack.flower_url + path)
    assert status == 200, body
    return json.loads(body)


@contextlib.contextmanager
def cluster_up(folder: Path, workers: int = 2) -> Iterator[Stack]:
    """``python -m crypto_ml cluster up --flower``, stopped (if still running) on the way out."""
    log = folder / "up.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CRYPTO_ML_", "FLOWER_"))}
    env.update(CRYPTO_ML_FLOWER_PORT=str(free_port()),
               CRYPTO_ML_FLOWER_BASIC_AUTH=f"{USER}:{PASSWORD}")
    proc = spawn([sys.executable, "-m", "crypto_ml", "cluster", "up", "--workers", str(workers),
                  "--flower"], log, env=env, cwd=ROOT)
    try:
        wait_until(lambda: "press Ctrl-C" in log.read_text(), 120, "cluster up --flower",
                   lambda: f"exited: {log.read_text()}" if proc.poll() is not None else None)
        text = log.read_text()
        broker = re.search(r"CRYPTO_ML_BROKER_URL='([^']+)'", text)
        flower = re.search(r"^flower: (http://\S+)$", text, re.MULTILINE)
        assert broker and flower, text
        roles = dict(re.findall(r"^  (\w+): (redis://\S+)$", text, re.MULTILINE))  # Redis users
        exports = dict(re.findall(r"^export (\w+)=(\w+)$", text, re.MULTILINE))
        yield Stack(proc, broker.group(1), flower.group(1),
                    worker_url=roles.get("worker", broker.group(1)),
                    watcher_url=roles["flower"], exports=exports)
    finally:
        terminate(proc)


@pytest.fixture(scope="module")
def stack(price_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One cluster and one send-tasks run against it, shared by the tests that only look."""
    with cluster_up(tmp_path_factory.mktemp("cluster-up")) as stack:
        stack.run = run_cli("send-tasks", "--broker", stack.broker_url, "--coins",
                            ",".join([*COINS, "100_list"]), "--model", ",".join(MODELS),
                            "-v", data_dir=price_data, timeout=300, env=stack.exports)
        for task_id, coin, model, worker in TASK_LINE.findall(stack.run.stderr):
            stack.tasks.setdefault(task_id, []).append((coin, model, worker))
        yield stack


def test_run_shows_task_lines_progress_and_summary(stack: Stack) -> None:
    run = stack.run
    assert run is not None and run.returncode == 1, run and run.stderr  # 100_list failed
    assert len(run.stdout.strip().splitlines()) == N_FORECASTS
    assert sorted((c, m) for items in stack.tasks.values() for c, m, _ in items) == \
        sorted((c, m) for c in COINS for m in MODELS)
    assert len(stack.tasks) < N_FORECASTS  # batched
    err = run.stderr
    total = N_FORECASTS + 2
    assert f"progress: {total}/{total} finished: {N_FORECASTS} done, 2 failed, 0 running, " \
        "0 queued" in err
    assert "\r" not in err  # not a terminal: plain lines, no bar
    assert f"summary: {len(COINS)} coin(s) ok, 1 failed" in err
    assert "failed: 100_list linear: CoinNotFound: cannot read the price file of coin " \
        "'100_list': 100 List.csv: no Date or Close column" in err
    for model in MODELS:
        assert re.search(rf"^  {model}: {len(COINS)} fit\(s\), [\d.]+ s in all, "
                         r"slowest \w+ [\d.]+ s, on CPU$", err, re.MULTILINE)
    workers = re.search(r"^  workers: (.*)$", err, re.MULTILINE)
    assert workers
    assert sum(int(n) for n in re.findall(r"\((\d+)\)", workers.group(1))) == N_FORECASTS


def settled(stack: Stack) -> int:
    """How many tasks Flower lists, once it lists this run's and shows every one as SUCCESS
    (events reach it a moment after the results, and another test may have just run some)."""
    listed: dict[str, Any] = {}

    def all_succeeded() -> bool:
        listed.clear()
        listed.update(api(stack, "/api/tasks"))
        return set(stack.tasks) <= set(listed) and all(
            t.get("state") == "SUCCESS" for t in listed.values())

    wait_until(all_succeeded, 30, "Flower showing every task as SUCCESS")
    return len(listed)


def test_flower_api_lists_every_task_with_success_and_its_worker(stack: Stack) -> None:
    assert stack.tasks
    workers = api(stack, "/api/workers?refresh=1")
    assert len(workers) == 2 and all("crypto_ml.forecast" in w["registered"]
                                     for w in workers.values())
    settled(stack)
    assert stack.exports == {"CRYPTO_ML_TASK_EVENTS": "1"}  # what cluster up --flower says
    tasks = api(stack, "/api/tasks")
    names = set()
    for task_id, items in stack.tasks.items():
        task = tasks[task_id]
        names.add(task["name"])
        assert {task["worker"]} == {w for _, _, w in items} and task["worker"] in workers
        assert task["sent"] is not None  # the task-sent event: seen from the moment it queued
        assert len(task["kwargs"]) < 250  # labels, not thousands of prices
        if task["name"] == "crypto_ml.forecast_batch":
            assert f"'batch': {len(items)}" in task["kwargs"]
            assert all(f"{coin}/{model}" in task["kwargs"] for coin, model, _ in items)
        else:
            [(coin, model, _)] = items
            assert f"'coin': '{coin}'" in task["kwargs"] and f"'model': '{model}'" in task["kwargs"]
            assert "'n_points': " in task["kwargs"]
    assert "crypto_ml.forecast_batch" in names


def test_flower_refuses_requests_without_the_password(stack: Stack) -> None:
    for path in ("/api/tasks", "/api/workers", "/tasks", "/"):
        assert get(stack.flower_url + path, auth=None)[0] == 401
        assert get(stack.flower_url + path, auth=(USER, "wrong"))[0] == 401
    assert get(stack.flower_url + "/api/tasks")[0] == 200


def test_flower_metrics_count_the_run_for_prometheus(stack: Stack) -> None:
    status, metrics = get(stack.flower_url + "/metrics", auth=None)  # scrapers need no login
    assert status == 200

    def count(event: str) -> float:
        pattern = (rf'^flower_events_total{{task="crypto_ml\.forecast(?:_batch)?",type="{event}",'
                   r'worker="[^"]+"} ([\d.]+)$')
        return sum(float(v) for v in re.findall(pattern, metrics, re.MULTILINE))

    events = ("task-sent", "task-received", "task-started", "task-succeeded")

    def counted() -> bool:  # a test just before may have run tasks whose events still arrive
        nonlocal metrics
        metrics = get(stack.flower_url + "/metrics", auth=None)[1]
        return all(count(event) == n for event in events)

    n = settled(stack)  # this run's, and any other test's, all successful
    assert n >= len(stack.tasks)
    wait_until(counted, 30, f"Flower's /metrics counting the events of its {n} tasks")
    for worker in stack.workers:
        assert f'flower_worker_online{{worker="{worker}"}} 1.0' in metrics
        assert re.search(rf'^flower_task_runtime_seconds_count{{task="[\w.]+",worker="{worker}"}}',
                         metrics, re.MULTILINE)


def test_running_count_reads_started_tasks_from_the_real_backend(stack: Stack) -> None:
    from crypto_ml.core.progress import Progress
    from crypto_ml.core.settings import Settings
    from crypto_ml.worker.app import create_app

    app = create_app(Settings().with_broker(stack.worker_url))  # it stores a result: a worker
    started, queued = f"started-{secrets.token_hex(4)}", f"queued-{secrets.token_hex(4)}"
    app.backend.store_result(started, {"pid": 1, "hostname": "w@h"}, "STARTED")
    try:
        import io

        progress = Progress(io.StringIO(), tty=True)
        progress.on_sent(app, started, "bitcoin", "lstm")
        progress.on_sent(app, queued, "dash", "lstm")
        progress.on_wait()
        assert progress.running == 1 and "0 done, 0 failed, 1 running, 1 queued" in \
            progress.status()
    finally:
        app.backend.forget(started)


def test_flower_launcher_watches_a_configured_broker(stack: Stack, tmp_path: Path) -> None:
    # --broker, as every other command takes it (compose and k8s set CRYPTO_ML_BROKER_URL)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CRYPTO_ML_", "FLOWER_"))}
    env.update(CRYPTO_ML_FLOWER_PORT=str(port), CRYPTO_ML_FLOWER_ADDRESS="0.0.0.0",
               CRYPTO_ML_FLOWER_BASIC_AUTH="ops2:pw2")
    proc = spawn([sys.executable, "-m", "crypto_ml", "flower", "--broker", stack.watcher_url],
                 tmp_path / "flower.log", env=env, cwd=ROOT)
    try:
        url = f"http://127.0.0.1:{port}"

        def lists_workers() -> bool:
            try:
                status, body = get(url + "/api/workers?refresh=1", auth=("ops2", "pw2"))
            except OSError:
                return False
            return status == 200 and all(w in body for w in stack.workers)

        wait_until(lists_workers, 60, "python -m crypto_ml flower listing the workers",
                   lambda: (tmp_path / "flower.log").read_text() if proc.poll() else None)
        assert get(url + "/api/workers", auth=None)[0] == 401
        shown = " ".join(psutil.Process(proc.pid).cmdline())  # Flower, after the exec
        assert "ops2:pw2" not in shown and "--broker" not in shown  # no password in `ps`
    finally:
        terminate(proc)


def test_progress_bar_redraws_on_a_terminal(stack: Stack, price_data: Path) -> None:
    stdout, screen, rc = on_a_terminal(["send-tasks", "--broker", stack.broker_url, "--coins",
                                        ",".join(COINS[:3]), "--model", "linear"], price_data,
                                       stack.exports)
    assert rc == 0
    bars = re.findall(r"\r(\[[#-]+\] [^\r\n]*)", screen)  # each drawing of the bar
    assert bars and all("finished:" in bar and "ETA" in bar for bar in bars), screen
    # the bar is wiped before the summary: no line the user sees is left with a bar on it
    assert not [line for line in shown_lines(screen) if "finished:" in line], screen
    assert screen.rstrip().splitlines()[-1].startswith("  workers: ")
    assert len(stdout.splitlines()) == 3


def test_embedded_flower_json_logs_and_plot(price_data: Path, tmp_path: Path) -> None:
    import json

    port, plot = free_port(), tmp_path / "forecast.png"
    run = run_cli("send-tasks", "--flower", "--workers", "1", "--coins", "bitcoin,dash,100_list",
                  "--log-format", "json", "-v", "--plot", str(plot), data_dir=price_data,
                  env={"CRYPTO_ML_FLOWER_PORT": str(port)}, timeout=300)
    assert run.returncode == 1, run.stderr  # 100_list: a ranking, not a price file
    assert sorted(line.split()[0] for line in run.stdout.splitlines()) == ["bitcoin", "dash"]
    records = [json.loads(line) for line in run.stderr.splitlines()]  # every line is JSON
    messages = [r["message"] for r in records]
    assert f"flower: http://127.0.0.1:{port} (stops when this run ends)" in messages
    tasks = [r for r in records if r.get("status") == "ok" and r["logger"] == "crypto_ml.manager"]
    assert sorted(r["coin"] for r in tasks) == ["bitcoin", "dash"]
    assert all(r["task_id"] and r["model"] == DEFAULT_MODEL and "@" in r["worker"] and
               r["seconds"] >= 0 for r in tasks)
    summary = next(r for r in records if r["logger"] == "crypto_ml.summary")
    assert summary["coins_ok"] == ["bitcoin", "dash"]
    assert "CoinNotFound" in summary["coins_failed"]["100_list"][DEFAULT_MODEL]
    assert summary["models"][DEFAULT_MODEL]["fits"] == 2 and len(summary["workers"]) == 1
    assert any(m.startswith(f"plot: {plot} (2 panel(s)") for m in messages) and plot.stat().st_size
    with pytest.raises(OSError):  # Flower went away with the run
        get(f"http://127.0.0.1:{port}/healthcheck", auth=None)


def test_workers_write_json_log_lines_for_collectors(price_data: Path) -> None:
    import json

    from crypto_ml.core.settings import Settings
    from crypto_ml.dispatch.cluster import LocalCluster
    from crypto_ml.worker.app import create_app

    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTO_ML_")}
    with LocalCluster(workers=1, env={**env, "CRYPTO_ML_LOG_FORMAT": "json"}) as cluster:
        app = create_app(Settings().with_broker(cluster.broker_url))
        sent = app.send_task("crypto_ml.forecast", kwargs={"coin": "bitcoin", "model": "naive",
                                                           "prices": [1.0, 2.0], "horizon": 2})
        sent.get(timeout=60)
        log = cluster.workdir / "worker1.log"

        def task_line() -> dict[str, Any] | None:
            for line in log.read_text().splitlines():
                if line.startswith("{") and json.loads(line).get("task_id") == sent.id:
                    return dict(json.loads(line))
            return None

        wait_until(lambda: task_line() is not None, 10, "the worker's JSON task line")
        entry = task_line()
        assert entry is not None and entry["logger"] == "crypto_ml.worker.tasks"
        assert (entry["coin"], entry["model"], entry["status"]) == ("bitcoin", "naive", "ok")
        assert entry["worker"] == cluster.worker_names[0] and entry["seconds"] >= 0


# the dashboard in a real browser ---------------------------------------------------------------


@pytest.mark.skipif(not CHROMIUM, reason="headless Chromium not installed "
                    "(apt-get install -y chromium; .ci/run does)")
def test_dashboard_shows_workers_and_tasks_in_headless_chromium(stack: Stack,
                                                                tmp_path: Path) -> None:
    import matplotlib.image

    base = stack.flower_url.replace("http://", f"http://{USER}:{PASSWORD}@")
    workers_page = browse(f"{base}/workers", tmp_path / "p1", "--dump-dom").stdout
    for worker in stack.workers:
        assert worker in workers_page
    tasks_page = browse(f"{base}/tasks", tmp_path / "p2", "--dump-dom").stdout
    n = settled(stack)  # this run's and the terminal test's, all successful
    assert n <= 15  # one page of the tasks table
    assert f"Showing 1 to {n} of {n} tasks" in tasks_page  # rendered by the page's JavaScript
    for task_id, items in stack.tasks.items():
        assert task_id in tasks_page
        assert all(coin in tasks_page and worker in tasks_page for coin, _, worker in items)
    assert re.findall(r'<span class="badge[^"]*">([A-Z]+)</span>', tasks_page) == ["SUCCESS"] * n

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "flower-tasks.png"
    shot.unlink(missing_ok=True)
    browse(f"{base}/tasks", tmp_path / "p3", "--hide-scrollbars", "--window-size=1600,1100",
           f"--screenshot={shot}")
    image = matplotlib.image.imread(shot)[..., :3]
    assert image.shape[:2] == (1100, 1600)
    background = image[-5, -5]
    assert (abs(image - background).max(axis=2) > 0.2).mean() > 0.02  # text and table drawn


# the stack stops as a whole (its own, so the shared one serves the other tests in any order) ---

def test_sigterm_stops_the_cluster_and_flower(tmp_path: Path) -> None:
    import redis

    with cluster_up(tmp_path, workers=1) as stack:
        stack.proc.send_signal(signal.SIGTERM)
        assert stack.proc.wait(timeout=60) == 0
    with pytest.raises(OSError):
        get(stack.flower_url + "/healthcheck", auth=None)
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(stack.broker_url, socket_connect_timeout=1).ping()


def test_the_launcher_takes_broker_out_of_flowers_own_options() -> None:
    from crypto_ml.cli.flower import take_broker
    from crypto_ml.core.errors import ConfigError

    assert take_broker(["--broker", "redis://a/0", "--max-tasks=10"]) == (
        "redis://a/0", ["--max-tasks=10"])
    assert take_broker(["--broker=redis://a/0", "--broker=redis://b/0"]) == ("redis://b/0", [])
    assert take_broker(["--purge-offline-workers=60"]) == (None, ["--purge-offline-workers=60"])
    with pytest.raises(ConfigError, match="--broker needs a Redis URL"):
        take_broker(["--broker"])


@pytest.mark.parametrize(("option", "says"), [
    ("--address=0.0.0.0", "--address is set by CRYPTO_ML_FLOWER_ADDRESS here, where it is "
     "checked (a login off 127.0.0.1, a free port)"),
    ("--port=1", "--port is set by CRYPTO_ML_FLOWER_PORT here"),
    ("--basic_auth=a:b", "--basic_auth is set by CRYPTO_ML_FLOWER_BASIC_AUTH here"),
    ("--unix-socket=/tmp/f", "--unix-socket is set by CRYPTO_ML_FLOWER_ADDRESS and"),
    ("---address=0.0.0.0", "---address is set by CRYPTO_ML_FLOWER_ADDRESS"),  # tornado: address
    ("--conf=mine.py", "--conf is set by the CRYPTO_ML_FLOWER_ settings"),
])
def test_flower_options_the_settings_own_are_refused_not_passed_through(
        option: str, says: str, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Passed through, they came after the checked settings and won: --address=0.0.0.0 served
    Flower on every interface with no login, which CRYPTO_ML_FLOWER_ADDRESS is refused."""
    from crypto_ml.cli import main

    monkeypatch.setenv("CRYPTO_ML_BROKER_URL", f"redis://127.0.0.1:{free_port()}/0")
    assert main(["flower", "--max-tasks=10", option]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith(f"crypto-ml: error: {says}")


@pytest.mark.parametrize(("option", "says"), [
    # Flower's int() of it: a traceback through celery, click and tornado, exit 1
    ("--max-tasks=abc", "Flower's --max-tasks cannot take 'abc' (invalid literal for int()"),
    ("--purge-offline-workers=soon", "Flower's --purge-offline-workers cannot take 'soon'"),
    # tornado printed its whole help and Flower stopped; or a typo went unsaid
    ("--max-task=10", "Flower has no option --max-task (crypto-ml flower -h lists them)"),
    # a value left out: tornado's Error, no ValueError, and its traceback (a review)
    ("--max-tasks", "Flower's --max-tasks: Option 'max-tasks' requires a value (write "
                    "--max-tasks=VALUE)"),
])
def test_a_flower_option_flower_cannot_read_is_one_line_before_it_starts(
        option: str, says: str, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from crypto_ml.cli import main

    monkeypatch.setenv("CRYPTO_ML_BROKER_URL", f"redis://127.0.0.1:{free_port()}/0")
    assert main(["flower", "--max_tasks=10", "--natural-time=True", option]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith(f"crypto-ml: error: {says}")


@pytest.mark.parametrize(("options", "says"), [
    (["--max-tasks", "10000"], "write --max-tasks=10000"),
    (["--max_tasks=10", "x"], "and 'x' is none"),
])
def test_a_flower_option_value_given_apart_is_one_line_not_flowers_traceback(
        options: list[str], says: str, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from crypto_ml.cli import main

    monkeypatch.setenv("CRYPTO_ML_BROKER_URL", f"redis://127.0.0.1:{free_port()}/0")
    assert main(["flower", *options]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Flower takes its options as --name=value" in err
    assert says in err


@pytest.mark.integration  # a command in a subprocess
def test_flower_on_a_port_in_use_stops_with_one_line(cluster: Any, tmp_path: Path) -> None:
    # Flower itself stopped with a traceback (Address already in use)
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        run = run_cli("flower", "--broker", cluster.broker_url, data_dir=tmp_path, timeout=60,
                      env={"CRYPTO_ML_FLOWER_PORT": str(port),
                           "CRYPTO_ML_FLOWER_ADDRESS": "127.0.0.1"})
    assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr
    assert f"Flower cannot listen on 127.0.0.1:{port}" in run.stderr


@pytest.mark.integration  # a command in a subprocess
def test_cluster_up_with_flower_on_a_port_in_use_stops_with_one_line_before_starting(
        tmp_path: Path) -> None:
    # it started Redis and the workers, then said Flower's traceback in one line and left
    # the cluster's folder (its logs, the Redis users' file) behind without saying where
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        run = run_cli("cluster", "up", "--workers", "1", "--flower", data_dir=tmp_path,
                      timeout=120, env={"CRYPTO_ML_FLOWER_PORT": str(port),
                                        "TMPDIR": str(scratch)})
    assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr
    assert f"Flower cannot listen on 127.0.0.1:{port} (Address already in use); set " \
           "CRYPTO_ML_FLOWER_PORT" in run.stderr
    assert list(scratch.iterdir()) == []


def test_send_tasks_flower_on_a_port_in_use_is_one_line_before_any_cluster(
        price_data: Path) -> None:
    # it said the embedded cluster's notice, then refused the port
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        run = run_cli("send-tasks", "--flower", "--coins", "bitcoin", data_dir=price_data,
                      timeout=60, env={"CRYPTO_ML_FLOWER_PORT": str(port)})
    assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr
    assert f"Flower cannot listen on 127.0.0.1:{port} (Address already in use)" in run.stderr
    assert run.stdout == ""


def test_flower_for_a_broker_that_does_not_answer_stops_with_one_line(tmp_path: Path) -> None:
    # celery flower itself would log "trying again" forever; nothing listens on this port
    run = run_cli("flower", "--broker", f"redis://flower:pw@127.0.0.1:{free_port()}/0",
                  data_dir=tmp_path, timeout=60)
    assert run.returncode == 2, run.stderr
    assert run.stderr.count("\n") == 1 and "cannot reach the broker" in run.stderr
    assert "flower:pw" not in run.stderr and "unset it" not in run.stderr
    # the manager's URL, which `cluster up` says to export, cannot read Flower's events
    run = run_cli("flower", "--broker", "redis://manager:pw@127.0.0.1:1/0", data_dir=tmp_path,
                  timeout=60)
    assert run.returncode == 2 and "give user flower's URL" in run.stderr, run.stderr
