"""The Sentinel option of compose run for real, as docs/deployment.md tells a user:
``-f docker-compose.yml -f docker-compose.sentinel.yml`` (a master, a replica, three
Sentinels). A ``send-tasks`` run whose master is SIGKILLed mid-run still ends with every
forecast exactly once and exit 0; the Sentinels promote the replica; every process is logged
in to the master as its own ACL user (workers, manager, the replica, the Sentinels), never as
``default``, and the new master's ACL log stays empty.

Flower and the API are left out: both publish a host port that the main stack of this tier
(tests/container/conftest.py) holds."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from deploy_support import ROOT

from crypto_ml.data_loader import CryptoLoader

from . import docker_support as ds
from .conftest import PROJECT
from .test_compose import finished_tasks, printed_forecasts

SENTINEL_FILE = ROOT / "docker-compose.sentinel.yml"
SENTINEL_STANDIN = ds.HERE / "compose.sentinel-standin.yml"
SENTINELS = ("sentinel-0", "sentinel-1", "sentinel-2")
DATA_NODES = ("redis", "redis-replica")
WORKERS = 2


def one(stack: ds.Compose, service: str) -> str:
    [container] = stack.containers(service)
    return container


def cli(container: str, *args: str, port: int = 6379) -> str:
    """redis-cli in ``container`` (its REDISCLI_AUTH: the operator, or the Sentinels' password)."""
    return ds.docker("exec", container, "redis-cli", "-p", str(port), "-e", *args).stdout


def master_address(stack: ds.Compose) -> str:
    """The master's address as the first Sentinel names it now."""
    out = cli(one(stack, "sentinel-0"), "sentinel", "get-master-addr-by-name", "mymaster",
              port=26379)
    return out.split()[0] if out.strip() else ""


def address(container: str) -> str:
    networks = ds.inspect(container)["NetworkSettings"]["Networks"]
    [backend] = [n for name, n in networks.items() if name.endswith("backend")]
    return str(backend["IPAddress"])


def dispatching(container: str) -> bool:
    """Whether a run has published work on the Redis in ``container``: forecasts queued or
    done (so the manager is past its start-up checks of the broker and the backend)."""
    queued = cli(container, "llen", "cpu").strip()
    return (queued.isdigit() and int(queued) > 0) or bool(
        cli(container, "--scan", "--pattern", "celery-task-meta-*").strip())


def users(container: str) -> dict[str, int]:
    """User -> connections of the Redis in ``container`` (CLIENT LIST)."""
    count: dict[str, int] = {}
    for line in cli(container, "client", "list").splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        count[fields["user"]] = count.get(fields["user"], 0) + 1
    return count


@pytest.fixture(scope="module")
def sentinel_stack(cpu_image: ds.Build, bases: ds.BaseImages, compose_env: dict[str, str],
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[ds.Compose]:
    command = ds.compose_command()
    work = tmp_path_factory.mktemp("sentinel-compose")
    standin = [*bases.compose_overrides(), SENTINEL_STANDIN] if bases.standin else []
    env = {**compose_env, **{k: secrets.token_hex(16) for k in (
        "REDIS_REPLICATION_PASSWORD", "REDIS_SENTINEL_PASSWORD", "CRYPTO_ML_SENTINEL_PASSWORD")}}
    stack = ds.Compose(command, [ds.compose_file_for(command, work), SENTINEL_FILE, *standin],
                       f"{PROJECT}-sentinel", env)
    stack("down", "-v", "--remove-orphans", timeout=300, check=False)
    try:
        start = time.monotonic()
        stack("up", "-d", "--no-build", "--scale", f"worker={WORKERS}", *DATA_NODES,
              *SENTINELS, "worker", timeout=600)
        ds.wait_healthy([one(stack, s) for s in (*DATA_NODES, *SENTINELS)], timeout=180)
        for worker in stack.containers("worker"):
            ds.wait_for(lambda w=worker: " ready." in ds.logs(w), 240, f"{worker} ready",
                        died=lambda w=worker: None if ds.health(w).endswith("running")
                        else ds.logs(w)[-1500:])
        ds.record("sentinel", {"stack_ready_seconds": round(time.monotonic() - start, 1)})
        yield stack
    finally:
        for service in (*DATA_NODES, *SENTINELS, "worker"):
            for container in stack.containers(service):
                (work / f"{container}.log").write_text(ds.logs(container))
        print(f"[container tier] sentinel stack logs in {work}")
        stack("down", "-v", "--remove-orphans", "-t", "10", timeout=600, check=False)


def test_sentinels_see_the_master_its_replica_and_each_other(
        sentinel_stack: ds.Compose) -> None:
    replica = address(one(sentinel_stack, "redis-replica"))
    for name in SENTINELS:
        sentinel = one(sentinel_stack, name)
        assert cli(sentinel, "sentinel", "get-master-addr-by-name", "mymaster",
                   port=26379).split()[0] == address(one(sentinel_stack, "redis"))
        # a Sentinel learns the replica and its peers from the master's INFO and hello
        # messages, seconds after it is up: wait for both, then require them
        ds.wait_for(lambda s=sentinel: replica in cli(s, "sentinel", "replicas", "mymaster",
                                                      port=26379), 60, f"{name} seeing the replica")
        ds.wait_for(lambda s=sentinel: "OK 3 usable Sentinels" in cli(
            s, "sentinel", "ckquorum", "mymaster", port=26379), 60, f"{name} seeing its peers")
        refused = ds.docker("exec", "-e", "REDISCLI_AUTH=wrong", sentinel, "redis-cli", "-p",
                            "26379", "-e", "ping", check=False)
        assert refused.returncode != 0  # the Sentinels want their password too


def test_master_killed_mid_run_every_forecast_once_and_each_role_as_its_user(
        sentinel_stack: ds.Compose, data_dir: Path) -> None:
    stack = sentinel_stack
    coins = CryptoLoader(data_dir).get_crypto_names()  # every coin: the run lasts seconds
    master, replica = one(stack, "redis"), one(stack, "redis-replica")
    # one message per coin, so that the run lasts and each forecast is its own task
    manager = stack.popen("run", "--rm", "-T", "-e", "CRYPTO_ML_BATCH_SIZE=1", "manager",
                          "send-tasks", "--model", "arima", "-v")
    try:
        # the run is under way: its work is published and the manager is logged in to the
        # master (a kill during the manager's start-up checks fails the run before it starts)
        seen = ds.wait_for(lambda: dispatching(master) and (u := users(master)).get("manager")
                           and u, 120, "the manager dispatching on the master", interval=0.2)
        assert manager.poll() is None, "the run ended before the fault"
        killed = time.monotonic()
        ds.docker("kill", "-s", "KILL", master)
        promoted = address(replica)
        # down-after 5 s, then the vote; a Sentinel that a loaded host delays by 2 s enters
        # TILT mode and sits out 30 s, so allow for that on a 2-core CI machine
        ds.wait_for(lambda: master_address(stack) == promoted, 120,
                    "the Sentinels promoting the replica", interval=0.2)
        promotion = time.monotonic() - killed
        stdout, stderr = manager.communicate(timeout=300)
    finally:
        if manager.poll() is None:
            manager.kill()
            manager.communicate()
    assert manager.returncode == 0, stderr[-3000:]
    assert sorted(printed_forecasts(stdout)) == coins
    assert sorted(coin for _, coin, _, _ in finished_tasks(stderr)) == coins
    # before the kill: every process on the master was logged in as its own user
    assert seen.get("default", 0) <= 1, seen  # at most this check's own redis-cli
    assert seen["worker"] >= WORKERS and seen["manager"] >= 1, seen
    assert seen["replication"] == 1 and seen["sentinel"] >= len(SENTINELS), seen
    # after the failover: the workers came back to the new master as themselves
    now = ds.wait_for(lambda: (u := users(replica)).get("worker", 0) >= WORKERS and u, 60,
                      "the workers logged in to the new master")
    assert now.get("sentinel", 0) >= len(SENTINELS), now
    assert cli(replica, "acl", "log").strip() == "", cli(replica, "acl", "log")
    ds.record("sentinel", {"promotion_seconds": round(promotion, 1),
                           "forecasts": len(coins), "exit_code": manager.returncode,
                           "users_on_master": seen, "users_on_new_master": now})
