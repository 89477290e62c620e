"""Least privilege in the compose stack, for real: Redis publishes no port and sits only on the
internal ``backend`` network, a container outside that network cannot reach it, and every
service logs in as its own Redis ACL user (crypto_ml/core/acl.py), refused what it does not
need. The Kubernetes NetworkPolicies are checked by evaluation in tests/test_acl_deploy.py;
Docker networks are as far as one host can model them."""

from __future__ import annotations

import json
import re
import subprocess
from typing import Any

from crypto_ml.core import acl

from . import docker_support as ds

PROBE = ("import socket, sys\n"
         "try:\n"
         "    socket.create_connection((sys.argv[1], 6379), timeout=3).close()\n"
         "except OSError as exc:\n"
         "    print(type(exc).__name__, exc)\n"
         "    sys.exit(1)\n")


def networks(container: str) -> dict[str, Any]:
    return dict(ds.inspect(container)["NetworkSettings"]["Networks"])


def reach(image: str, network: str, host: str) -> subprocess.CompletedProcess[str]:
    """A throwaway container on ``network`` opening a TCP connection to ``host``:6379."""
    return ds.docker("run", "--rm", "--network", network, "--entrypoint", "python", image,
                     "-c", PROBE, host, timeout=120, check=False)


def test_redis_has_no_host_port_and_only_the_internal_network(stack: ds.Compose) -> None:
    backend, web = f"{stack.project}_backend", f"{stack.project}_web"
    [redis] = stack.containers("redis")
    assert set(networks(redis)) == {backend}
    assert not any(ds.inspect(redis)["NetworkSettings"]["Ports"].values())  # nothing published
    [info] = json.loads(ds.docker("network", "inspect", backend).stdout)
    assert info["Internal"] is True
    for container in stack.containers("worker"):
        assert set(networks(container)) == {backend}
    [flower] = stack.containers("flower")
    assert set(networks(flower)) == {backend, web}
    published = ds.inspect(flower)["NetworkSettings"]["Ports"]["5555/tcp"]
    assert published and published[0]["HostPort"] == "5555"


def test_a_container_outside_the_backend_network_cannot_reach_redis(
        stack: ds.Compose, bases: ds.BaseImages) -> None:
    backend = f"{stack.project}_backend"
    [redis] = stack.containers("redis")
    address = networks(redis)[backend]["IPAddress"]
    inside = reach(bases.python, backend, "redis")
    assert inside.returncode == 0, inside.stdout + inside.stderr  # the probe itself works
    for network in (f"{stack.project}_web", "bridge"):
        for host in ("redis", address):
            out = reach(bases.python, network, host)
            assert out.returncode == 1, f"{network} -> {host}: {out.stdout}{out.stderr}"


def test_every_service_logs_in_as_its_own_redis_user_and_is_refused_the_rest(
        stack: ds.Compose) -> None:
    [redis] = stack.containers("redis")

    def cli(*args: str, user: str = acl.ADMIN) -> subprocess.CompletedProcess[str]:
        password = stack.env[acl.ROLES[user].password_variable]
        return ds.docker("exec", "-e", f"REDISCLI_AUTH={password}", redis, "redis-cli",
                         "--user", user, *args, check=False)

    assert sorted(cli("acl", "users").stdout.split()) == sorted(acl.ROLES)
    clients = set(re.findall(r"\buser=(\S+)", cli("client", "list").stdout))
    assert {"worker", "flower"} <= clients  # the long-running services, each as itself
    for user in acl.ROLES:
        out = cli("flushall", user=user)
        assert "NOPERM" in out.stdout + out.stderr, (user, out.stdout)
    assert "NOPERM" in cli("lpush", "cpu", "{}", user="exporter").stdout
    assert "NOPERM" in cli("get", "celery-task-meta-x", user="flower").stdout
    assert cli("llen", "cpu", user="exporter").stdout.strip().isdigit()
    wrong = ds.docker("exec", "-e", "REDISCLI_AUTH=wrong", redis, "redis-cli", "--user",
                      "worker", "ping", check=False)
    assert "WRONGPASS" in wrong.stdout + wrong.stderr
