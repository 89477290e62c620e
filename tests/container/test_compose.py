"""docker-compose.yml run for real: ``up -d --scale worker=3``, then ``run --rm manager``
over the real data set, Flower's auth and API, and the per-worker CPU limit."""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from table_support import random_walks

from crypto_ml.data_loader import CryptoLoader
from crypto_ml.models import default_max_points

from . import docker_support as ds
from .conftest import WORKERS

TASK_LINE = re.compile(r"task (\S+) ok: coin=(\S+) model=(\S+) worker=(\S+)")


def printed_forecasts(stdout: str) -> dict[str, list[float]]:
    lines = {}
    for line in stdout.splitlines():
        coin, _model, array = line.split(" ", 2)  # coin model [[f1 f2 ...]]
        lines[coin] = [float(x) for x in array.strip("[] ").split()]
    return lines


def finished_tasks(stderr: str) -> list[tuple[str, str, str, str]]:
    """(task id, coin, model, worker) of each forecast the manager logged as arrived (-v)."""
    return [m.groups() for m in TASK_LINE.finditer(stderr)]  # type: ignore[misc]


def http_get(url: str, auth: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


def test_every_service_is_healthy_redis_appends_caps_its_memory_and_wants_its_password(
        stack: ds.Compose) -> None:
    [redis] = stack.containers("redis")
    workers = stack.containers("worker")
    assert len(workers) == WORKERS
    # a worker another test of this stack restarted or scaled up reports healthy after its check
    ds.wait_healthy([redis, *workers, *stack.containers("flower")], timeout=300)
    cli = ("exec", redis, "redis-cli", "-e")
    # (CONFIG is denied even to the operator's user: crypto_ml/core/acl.py)
    assert "aof_enabled:1" in ds.docker(*cli, "info", "persistence").stdout
    memory = ds.docker(*cli, "info", "memory").stdout  # refuses writes before the kernel kills it
    assert "maxmemory_policy:noeviction" in memory
    limit = ds.inspect(redis)["HostConfig"]["Memory"]
    assert 0 < int(memory.split("maxmemory:")[1].split()[0]) <= limit // 2
    refused = ds.docker("exec", "-e", "REDISCLI_AUTH=", redis, "redis-cli", "-e", "ping",
                        check=False)
    assert refused.returncode != 0 and "NOAUTH" in refused.stdout + refused.stderr
    assert ds.inspect(redis)["Config"]["User"] == "999:1000"


def test_each_worker_gets_its_cpu_limit_and_sizes_its_pool_to_it(stack: ds.Compose) -> None:
    """cpus: ${CRYPTO_ML_WORKER_CPUS:-2} per worker; the worker's pool follows that quota."""
    cpus = int(stack.env["CRYPTO_ML_WORKER_CPUS"])  # 1 in this stack: 3 workers, 2 cores
    for container in stack.containers("worker"):
        info = ds.inspect(container)
        assert info["HostConfig"]["NanoCpus"] == cpus * 10**9
        assert f"cpu@{info['Config']['Hostname']} (cpu,gpu x{cpus})" in ds.logs(container)
    # the default, as a user without the variable gets it: 2 cores, so 2 pool processes
    # where the host has 2 or more
    saved = stack.env.pop("CRYPTO_ML_WORKER_CPUS")
    try:
        out = stack("run", "--rm", "--no-deps", "-T", "worker", "python", "workers/worker.py",
                    "start", "--role", "cpu", "--dry-run", timeout=300)
    finally:
        stack.env["CRYPTO_ML_WORKER_CPUS"] = saved
    [node] = json.loads(out.stdout)
    concurrency = int(node["command"][node["command"].index("--concurrency") + 1])
    assert concurrency == min(2, len(os.sched_getaffinity(0)))


def latest_results(stack: ds.Compose) -> dict[str, Any]:
    out = ds.docker("run", "--rm", "-v", f"{stack.volume('results')}:/results:ro",
                    "--entrypoint", "sh", ds.CPU_IMAGE, "-c",
                    "cat \"$(ls -t /results/forecasts-*.json | head -n 1)\"")
    return json.loads(out.stdout)


def test_manager_forecasts_every_coin_as_an_in_process_fit(stack: ds.Compose,
                                                           data_dir: Path) -> None:
    loader = CryptoLoader(data_dir)
    coins = loader.get_crypto_names()
    start = time.monotonic()
    run = stack.run_manager()  # the service's own command: send-tasks --model linear
    wall = time.monotonic() - start
    assert run.returncode == 0, run.stderr[-3000:]
    printed = printed_forecasts(run.stdout)
    assert sorted(printed) == coins
    report = latest_results(stack)
    assert report["failed"] == {} and sorted(report["results"]) == coins
    for coin in coins:
        prices = loader.get_prices(coin)
        prices = prices[~np.isnan(prices)]
        window = default_max_points("linear")  # the manager's default: the newest 200 closes
        prices = prices[-window:] if window else prices
        t = np.arange(len(prices))
        expected = np.polyval(np.polyfit(t, prices, 1), np.arange(len(prices), len(prices) + 10))
        expected = np.maximum(expected, 0.0)  # a price's forecast is floored at zero
        np.testing.assert_allclose(report["results"][coin]["linear"]["forecast"], expected,
                                   rtol=1e-9, err_msg=coin)
        np.testing.assert_allclose(printed[coin], expected, rtol=1e-6, atol=1e-8, err_msg=coin)
    workers = {r["linear"]["worker"] for r in report["results"].values()}
    hostnames = {ds.inspect(c)["Config"]["Hostname"] for c in stack.containers("worker")}
    assert workers <= {f"cpu@{h}" for h in hostnames} and len(workers) >= 2
    ds.record("compose", {"manager_run_wall_seconds": round(wall, 1),
                          "manager_forecasts": len(printed), "coins_in_data_set": len(coins),
                          "workers_that_forecast": len(workers)})


def test_flower_wants_its_password_and_lists_the_runs_tasks(stack: ds.Compose,
                                                            data_dir: Path) -> None:
    base, auth = "http://127.0.0.1:5555", stack.env["FLOWER_BASIC_AUTH"]
    assert http_get(base + "/")[0] == 401
    assert http_get(base + "/", auth="admin:wrong")[0] == 401
    assert http_get(base + "/", auth=auth)[0] == 200
    assert http_get(base + "/api/tasks")[0] == 401
    coins = ["bitcoin", "ethereum", "litecoin", "dogecoin"]
    # one message per coin: batching off (the manager batches cheap linear fits)
    run = stack.run_manager("send-tasks", "--model", "linear", "--coins", ",".join(coins),
                            "-v", env={"CRYPTO_ML_BATCH_SIZE": "1"})  # -v: a line per task
    assert run.returncode == 0, run.stderr[-3000:]
    task_ids = {task_id for task_id, *_ in finished_tasks(run.stderr)}
    assert len(task_ids) == len(coins)

    def listed() -> dict[str, Any] | None:
        status, body = http_get(base + "/api/tasks", auth=auth)
        assert status == 200
        tasks = json.loads(body)
        done = {t: tasks[t] for t in task_ids if tasks.get(t, {}).get("state") == "SUCCESS"}
        return done if len(done) == len(task_ids) else None

    tasks = ds.wait_for(listed, 60, "Flower listing the run's tasks as SUCCESS", interval=2)
    hostnames = {ds.inspect(c)["Config"]["Hostname"] for c in stack.containers("worker")}
    assert {t["worker"] for t in tasks.values()} <= {f"cpu@{h}" for h in hostnames}


def api_call(path: str, key: str | None, body: dict[str, Any] | None = None
             ) -> tuple[int, dict[str, Any] | str]:
    """``GET`` (or ``POST`` of ``body``) on the compose API's published port."""
    request = urllib.request.Request(f"http://127.0.0.1:8000{path}",
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            text = response.read().decode()
            is_json = response.headers.get_content_type() == "application/json"
            return response.status, json.loads(text) if is_json else text
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_api_service_serves_forecasts_with_its_keys(stack: ds.Compose, data_dir: Path,
                                                   tmp_path: Path) -> None:
    """``docker compose --profile api up -d api``: healthy, 401 without a key, forecasts of the
    mounted data with one, a table job written to its volume, and Prometheus metrics, all as
    the manager's Redis user."""
    key = secrets.token_hex(12)
    mounted = readable_copy(data_dir, tmp_path / "data")  # the real coins, and a long table
    table = random_walks(500, 40, seed=2)
    table.to_parquet(mounted / "walks.parquet", index=False)
    (mounted / "walks.parquet").chmod(0o644)
    stack.env.update(CRYPTO_ML_API_KEYS=key, CRYPTO_ML_DATA_HOST_DIR=str(mounted))
    stack("--profile", "api", "up", "-d", "--no-build", "--no-deps", "api", timeout=300)
    try:
        [api] = stack.containers("api")
        ds.wait_healthy([api], timeout=240)  # its HEALTHCHECK: /healthz, broker and workers
        body = {"coins": ["bitcoin", "ethereum"], "model": "linear", "horizon": 5}
        assert api_call("/v1/forecasts?wait=30", None, body)[0] == 401
        status, answer = api_call("/v1/forecasts?wait=30", key, body)
        assert status == 200, answer
        assert isinstance(answer, dict) and answer["status"] == "done" and not answer["failed"]
        for coin in body["coins"]:
            result = answer["results"][coin]["linear"]
            assert len(result["forecast"]) == 5 and set(result["intervals"]) == {"80", "95"}
        job_written_to_the_volume(stack, api, key, table)
        status, metrics = api_call("/metrics", None)
        assert status == 200 and 'crypto_ml_api_queue_depth{queue="cpu"}' in str(metrics)
    finally:
        stack.env["CRYPTO_ML_DATA_HOST_DIR"] = str(data_dir)
        stack("--profile", "api", "rm", "-s", "-f", "api", check=False)


def readable_copy(source: Path, target: Path) -> Path:
    """The price files of ``source`` in ``target``, readable by the containers' user."""
    target.mkdir(parents=True)
    for path in source.glob("*.csv"):
        shutil.copy(path, target / path.name)
        (target / path.name).chmod(0o644)
    for folder in (target, *target.parents[:2]):
        folder.chmod(folder.stat().st_mode | 0o755)
    return target


def job_written_to_the_volume(stack: ds.Compose, api: str, key: str,
                              table: pd.DataFrame) -> None:
    """``POST /v1/jobs`` of a table in the mounted data: done, its Parquet on the volume."""
    status, accepted = api_call("/v1/jobs", key, {"input": "walks.parquet", "model": "naive",
                                                  "horizon": 3})
    assert status == 202, accepted
    assert isinstance(accepted, dict)
    states: list[Any] = []
    ds.wait_for(lambda: states.append(api_call(accepted["status_url"], key)[1]) or
                states[-1]["status"] in ("done", "failed", "cancelled"), 120, "the job")
    final = states[-1]
    assert final["status"] == "done" and final["done"] == 500, final
    assert final["output"] == f"/results/jobs/{accepted['id']}.parquet"
    read = ("import pandas as p, sys; f = p.read_parquet(sys.argv[1]); "
            "print(len(f), f.unique_id.nunique(), f.groupby('unique_id').naive.first().sum())")
    out = ds.docker("exec", api, "python", "-c", read, final["output"]).stdout.split()
    last = table.groupby("unique_id")["y"].last()
    assert out[:2] == ["1500", "500"]  # 3 rows of each series; naive: each one's last value
    assert float(out[2]) == pytest.approx(float(last.sum()), rel=1e-12)
