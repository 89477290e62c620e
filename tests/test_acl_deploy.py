"""Least privilege in the deployment files: the shipped Redis ACL templates are crypto_ml/core/acl.py's,
every compose service and Kubernetes workload connects as its own Redis user, Redis sits on an
internal compose network, and the rendered NetworkPolicies allow exactly the documented traffic
(checked by evaluating them as the NetworkPolicy API defines, for each pair of workloads)."""

from __future__ import annotations

import base64
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
from deploy_support import (
    OVERLAYS,
    ROOT,
    SENTINEL_COMPOSE_FILE,
    SENTINEL_OVERLAY,
    TEST_SECRETS,
    k8s_runs,
    load_compose,
    local_acl_template,
    pod_spec,
    redis7_server,
    redis_binary,
    render_kustomize,
)

from crypto_ml.core import acl
from crypto_ml.core.sentinel import sentinel_command
from crypto_ml.core.settings import Settings
from crypto_ml.core.urls import parse
from crypto_ml.ops.processes import free_port, terminate, wait_until
from crypto_ml.worker.app import celery_config

NAMESPACE = "crypto-ml"
REDIS_ARGS = ("--appendonly", "yes", "--appendfsync", "everysec", "--dir", "/data",
              "--maxmemory", "1gb", "--maxmemory-policy", "noeviction")
#: workload (compose service or Deployment/Job name) -> the Redis user it must connect as
USER_OF = {"worker": "worker", "gpu-worker": "worker", "flower": "flower", "forecast": "manager",
           "forecast-daily": "manager", "manager": "manager", "queue-depth": "exporter",
           "api": "manager"}
Pod = tuple[str, Mapping[str, str]]  # (namespace, labels)
API: Pod = (NAMESPACE, {"app.kubernetes.io/name": "api", "app.kubernetes.io/component": "api"})
INGRESS: Pod = ("ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"})
PROMETHEUS: Pod = ("monitoring", {"app.kubernetes.io/name": "prometheus"})
KEDA: Pod = ("keda", {"app": "keda-operator"})
DNS: Pod = ("kube-system", {"k8s-app": "kube-dns"})
STRANGER: Pod = (NAMESPACE, {"app.kubernetes.io/name": "debug-shell"})
ELSEWHERE: Pod = ("default", {"app.kubernetes.io/name": "worker"})  # right label, wrong namespace


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    work = tmp_path_factory.mktemp("kustomize")
    return {name: render_kustomize(path, work) for name, path in OVERLAYS.items()}


# --- the ACL definition and its shipped copies -----------------------------------------

def test_shipped_templates_are_generated_from_crypto_ml_acl() -> None:
    for path in acl.SHIPPED_TEMPLATES:
        assert path.read_text() == acl.template(), \
            f"{path.relative_to(ROOT)} is stale: run `python -m crypto_ml.core.acl`"
    for path in acl.SHIPPED_SENTINEL_TEMPLATES:
        assert path.read_text() == acl.template(acl.SENTINEL_ROLES), \
            f"{path.relative_to(ROOT)} is stale: run `python -m crypto_ml.core.acl`"
    # only the Sentinel option's data nodes have a user that may run SLAVEOF
    assert "+slaveof" not in acl.template() and "+slaveof" in acl.template(acl.SENTINEL_ROLES)


def test_no_role_gets_an_administrative_command_or_every_key() -> None:
    for name in acl.SERVICE_ROLES:
        role = acl.ROLES[name]
        assert not set(role.commands) & set(acl.ROLES_NEVER), name
        assert not any(c.startswith("@") for c in role.commands), name
        assert "*" not in role.keys and "*" not in role.channels, name
        assert role.rules()[0] == "resetkeys" and "-@all" in role.rules()
    assert set(acl.DENIED_TO_ALL) >= {"flushall", "flushdb", "config", "debug", "shutdown"}
    assert all(f"-{c}" in acl.ROLES[acl.ADMIN].rules() for c in acl.DENIED_TO_ALL)
    with pytest.raises(ValueError, match="printable"):
        acl.Role("x", "", (acl.Grant((), ("cpu\x06\x16*",)),), ()).rules()


def test_redis7_rules_give_each_command_only_its_own_keys_and_redis6_their_union() -> None:
    manager, flower = acl.ROLES["manager"], acl.ROLES["flower"]
    rules = " ".join(manager.rules())
    # Redis 7: results only read and freed, a run's end only SET, the queues only published to
    assert "(~celery-task-meta-* ~crypto_ml:deliveries:* +get +mget +exists +del)" in rules
    assert "(~crypto_ml:closed:* +set)" in rules and "(%R~unacked +hvals +hscan)" in rules
    assert "(~cpu ~cpu??[0-9] ~gpu ~gpu??[0-9] +lpush +llen +lrange)" in rules
    assert "(%R~cpu %R~cpu??[0-9] %R~gpu %R~gpu??[0-9] +llen)" in " ".join(flower.rules())
    for role in (manager, flower):
        assert not {"rpush", "hdel", "hset", "setex", "incrby", "zrange"} & set(role.commands)
        assert not any(k.startswith(("crypto_ml:model", "crypto_ml:worker", "unacked_"))
                       for k in role.keys), role.name
        old = role.rules(redis6=True)  # 6.2: no selectors, no read-only keys, the union
        assert not any(r.startswith(("(", "%")) for r in old)
        assert {f"~{k}" for k in role.keys} <= set(old)
        assert {f"+{c}" for c in role.commands} <= set(old)
    assert "lpush" not in flower.commands and "set" not in flower.commands
    assert acl.template(redis6=True) != acl.template()


def test_only_the_worker_runs_the_restore_sweep() -> None:
    """kombu's ack emulation (its sweep writes the queues) is off for the manager and Flower."""
    def url(user: str) -> str:
        return f"redis://{user}:pw@redis:6379/0"

    assert acl.restores_unacked(url("worker")) and acl.restores_unacked("redis://redis:6379/0")
    assert acl.restores_unacked(url("someone-else"))  # not ours: kombu's default
    assert not acl.restores_unacked(url("manager")) and not acl.restores_unacked(url("flower"))
    for user, sweeps in (("worker", True), ("manager", False), ("flower", False)):
        transport = celery_config(Settings().with_broker(url(user)))["broker_transport_options"]
        assert transport["ack_emulation"] is sweeps, user


def test_the_start_script_turns_the_template_into_hashes_that_redis_accepts(
        tmp_path: Path) -> None:
    """The containers' start command, run here with the shipped template and test secrets on
    a Redis 7 where one is found (its rules have selectors), else the template's 6.2 rendering
    on the embedded 6.2."""
    port = free_port()
    argv = acl.redis_command("--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--dir", str(tmp_path))
    redis7 = redis7_server()
    template = ROOT / "docker" / "redis-users.acl" if redis7 else local_acl_template(tmp_path)
    argv = [str(template) if a == acl.TEMPLATE_PATH else
            str(tmp_path / "users.acl") if a == acl.ACL_PATH else a for a in argv]
    server = Path(redis7 or redis_binary("redis-server"))
    env = {**os.environ, **TEST_SECRETS, "PATH": f"{server.parent}:{os.environ['PATH']}"}
    missing = subprocess.run(argv, env={k: v for k, v in env.items()
                                        if k != "REDIS_FLOWER_PASSWORD"},
                             capture_output=True, text=True, timeout=30)
    assert missing.returncode != 0 and "set REDIS_FLOWER_PASSWORD" in missing.stderr
    with open(tmp_path / "redis.log", "wb") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # its own group: terminate() ends it
    try:
        def up() -> bool:
            try:
                return bool(redis.Redis(port=port, password=TEST_SECRETS["REDIS_PASSWORD"]).ping())
            except redis.RedisError:
                return False

        wait_until(up, 20, "redis-server started by the start script",
                   lambda: None if proc.poll() is None else (tmp_path / "redis.log").read_text())
        written = (tmp_path / "users.acl").read_text()
        assert oct((tmp_path / "users.acl").stat().st_mode & 0o777) == "0o600"
        for name, role in acl.ROLES.items():
            password = TEST_SECRETS[role.password_variable]
            assert password not in written and acl.password_hash(password) in written
            with redis.Redis(port=port, username=name, password=password) as client:
                assert client.ping()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port, username="worker", password="wrong").ping()
        with pytest.raises(redis.AuthenticationError):  # no user is passwordless
            redis.Redis(port=port).ping()
    finally:
        terminate(proc)


# --- compose -----------------------------------------------------------------------------

def test_compose_services_connect_as_their_own_redis_user() -> None:
    services = load_compose(TEST_SECRETS)["services"]
    redis_service = services["redis"]
    assert redis_service["command"] == acl.redis_command(*REDIS_ARGS)
    assert "./docker/redis-users.acl:/etc/crypto-ml/redis-users.acl:ro" in redis_service["volumes"]
    for role in acl.ROLES.values():
        assert redis_service["environment"][role.password_variable] == \
            TEST_SECRETS[role.password_variable]
    for name, service in services.items():
        url = (service.get("environment") or {}).get("CRYPTO_ML_BROKER_URL")
        if url is None:
            continue
        user = USER_OF[name]
        parts = urlsplit(url)
        assert (parts.username, parts.password) == (
            user, TEST_SECRETS[acl.ROLES[user].password_variable]), name


def test_compose_keeps_redis_on_an_internal_network_and_publishes_only_flower() -> None:
    compose = load_compose(TEST_SECRETS)
    assert compose["networks"]["backend"]["internal"] is True
    services = compose["services"]
    assert "ports" not in services["redis"] and services["redis"]["networks"] == ["backend"]
    published = {name for name, service in services.items() if service.get("ports")}
    assert published <= {"flower", "api"} and "flower" in published
    for name, service in services.items():
        assert "backend" in service["networks"], name  # everyone reaches Redis this way
        if name not in published:
            assert service["networks"] == ["backend"], f"{name} has a way out"


# --- Kubernetes: users ---------------------------------------------------------------------

@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_k8s_workloads_connect_as_their_own_redis_user(
        rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    docs = rendered[overlay]
    seen = set()
    for run in k8s_runs(docs):
        url = run.env.get("CRYPTO_ML_BROKER_URL")
        if url is None or ":probe:" in run.origin:
            continue
        name = run.origin.split("/")[1]
        user = USER_OF[name]
        parts = urlsplit(url)
        assert (parts.username, parts.password) == (
            user, TEST_SECRETS[acl.ROLES[user].password_variable]), run.origin
        seen.add(user)
    assert seen == ({"worker", "manager", "flower", "exporter"} if overlay == "keda"
                    else {"worker", "manager", "flower"})
    redis_run = next(r for r in k8s_runs(docs) if r.origin == "StatefulSet/redis/redis")
    assert redis_run.argv == acl.redis_command(*REDIS_ARGS)
    for role in acl.ROLES.values():
        assert redis_run.env[role.password_variable] == TEST_SECRETS[role.password_variable]
    config = next(d for d in docs if d["kind"] == "ConfigMap"
                  and d["metadata"]["name"].startswith("redis-acl"))
    assert config["data"] == {"redis-users.acl": acl.template()}
    statefulset = next(d for d in docs if d["kind"] == "StatefulSet")
    volumes = {v["name"]: v for v in statefulset["spec"]["template"]["spec"]["volumes"]}
    assert volumes["acl"]["configMap"]["name"] == config["metadata"]["name"]
    assert volumes["tmp"]["emptyDir"]["medium"] == "Memory"  # the ACL file never hits a disk


def test_keda_reads_queue_lengths_as_the_exporter(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["keda"]
    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    auth = next(d for d in docs if d["kind"] == "TriggerAuthentication")
    refs = {r["parameter"]: r for r in auth["spec"]["secretTargetRef"]}
    username = secrets[refs["username"]["name"]]["data"][refs["username"]["key"]]
    assert base64.b64decode(username).decode() == "exporter"
    assert refs["password"]["key"] == "REDIS_EXPORTER_PASSWORD"
    assert refs["password"]["name"] in secrets


# --- Kubernetes: NetworkPolicies -----------------------------------------------------------

def _selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        ok = {"In": key in labels and labels[key] in values,
              "NotIn": key not in labels or labels[key] not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}[op]
        if not ok:
            return False
    return True


def _peer(peer: Mapping[str, Any], pod: Pod, policy_ns: str) -> bool:
    namespace, labels = pod
    if "ipBlock" in peer:
        return False  # no ipBlock rules here
    ns_sel, pod_sel = peer.get("namespaceSelector"), peer.get("podSelector")
    if ns_sel is None and namespace != policy_ns:
        return False
    if ns_sel is not None and not _selects(ns_sel, {"kubernetes.io/metadata.name": namespace}):
        return False
    return pod_sel is None or _selects(pod_sel, labels)


def _port(rule: Mapping[str, Any], port: int | str, protocol: str) -> bool:
    ports = rule.get("ports")
    return not ports or any(p.get("protocol", "TCP") == protocol and p.get("port") in (port, None)
                            for p in ports)


def allowed(docs: list[dict[str, Any]], src: Pod, dst: Pod, port: int | str,
            protocol: str = "TCP") -> bool:
    """Would the rendered NetworkPolicies let ``src`` open ``port`` on ``dst``?"""
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]

    def side(pod: Pod, kind: str, key: str, other: Pod) -> bool:
        namespace, labels = pod
        mine = [p for p in policies if namespace == NAMESPACE
                and _selects(p["spec"]["podSelector"], labels)
                and kind in p["spec"].get("policyTypes", ["Ingress"])]
        if not mine:
            return True  # no policy isolates this pod in that direction
        peers_key = "to" if key == "egress" else "from"
        return any(_port(rule, port, protocol) and
                   any(_peer(peer, other, NAMESPACE) for peer in rule.get(peers_key) or [{}])
                   for p in mine for rule in p["spec"].get(key) or [])

    return side(src, "Egress", "egress", dst) and side(dst, "Ingress", "ingress", src)


def workloads(docs: list[dict[str, Any]]) -> dict[str, Pod]:
    """Every workload of the namespace as the pod it runs: name -> (namespace, labels)."""
    out = {}
    for doc in docs:
        if pod_spec(doc) is None:
            continue
        template = (doc["spec"]["jobTemplate"]["spec"]["template"] if doc["kind"] == "CronJob"
                    else doc["spec"]["template"])
        out[doc["metadata"]["name"]] = (NAMESPACE, template["metadata"]["labels"])
    return out


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_network_policies_deny_by_default_and_let_each_client_reach_redis(
        rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    docs = rendered[overlay]
    deny = next(d for d in docs if d["kind"] == "NetworkPolicy"
                and d["metadata"]["name"] == "default-deny")
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    pods = workloads(docs)
    redis_pod = pods["redis"]
    clients = {name for run in k8s_runs(docs) if "CRYPTO_ML_BROKER_URL" in run.env
               for name in [run.origin.split("/")[1]]}
    assert clients >= {"worker", "gpu-worker", "flower", "forecast", "forecast-daily"}
    for name, pod in pods.items():
        assert allowed(docs, pod, DNS, 53, "UDP"), f"{name} cannot resolve names"
        assert not allowed(docs, pod, ("default", {"app": "anything"}), 443), f"{name} gets out"
        if name != "redis":
            assert allowed(docs, pod, redis_pod, 6379) == (name in clients), name
    assert allowed(docs, API, redis_pod, 6379)
    for outsider in (STRANGER, ELSEWHERE, INGRESS, PROMETHEUS, DNS):
        assert not allowed(docs, outsider, redis_pod, 6379), outsider
    assert allowed(docs, KEDA, redis_pod, 6379) == (overlay == "keda")  # its redis trigger


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_flower_api_and_exporter_take_connections_only_from_the_documented_sources(
        rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    docs = rendered[overlay]
    pods = workloads(docs)
    for target, port in ((pods["flower"], 5555), (API, "http")):
        assert allowed(docs, INGRESS, target, port) and allowed(docs, PROMETHEUS, target, port)
        for outsider in (STRANGER, ELSEWHERE, KEDA, pods["worker"], pods["redis"],
                         ("monitoring", {"app.kubernetes.io/name": "grafana"})):
            assert not allowed(docs, outsider, target, port), (outsider, target)
    if overlay == "keda":
        exporter = pods["queue-depth"]
        assert allowed(docs, KEDA, exporter, 9808) and allowed(docs, PROMETHEUS, exporter, 9808)
        for outsider in (STRANGER, INGRESS, pods["worker"], pods["flower"]):
            assert not allowed(docs, outsider, exporter, 9808), outsider


# --- the Sentinel option ---------------------------------------------------------------------

SENTINEL_DATA_ARGS = (*REDIS_ARGS, "--masteruser", "replication", "--masterauth",
                      TEST_SECRETS["REDIS_REPLICATION_PASSWORD"])


def _sentinel_url_user(url: str) -> str:
    hosts, password, _db, user = parse(url)
    assert len(hosts) == 3 and user is not None
    assert password == TEST_SECRETS[acl.ROLES[user].password_variable]
    return user


def test_sentinel_compose_override_logs_every_role_in_as_its_user() -> None:
    services = load_compose(TEST_SECRETS, SENTINEL_COMPOSE_FILE)["services"]
    assert services["redis"]["command"] == acl.redis_command(*SENTINEL_DATA_ARGS)
    assert services["redis-replica"]["command"] == acl.redis_command(
        *SENTINEL_DATA_ARGS, "--replicaof", "redis", "6379")
    for node in ("redis", "redis-replica"):
        assert "./docker/redis-sentinel-users.acl:/etc/crypto-ml/redis-users.acl:ro" in \
            services[node]["volumes"]
        for role in acl.SENTINEL_ROLES.values():
            assert services[node]["environment"][role.password_variable] == \
                TEST_SECRETS[role.password_variable]
    for i in range(3):
        sentinel = services[f"sentinel-{i}"]
        assert sentinel["command"] == sentinel_command("/data/sentinel.conf")
        assert sentinel["hostname"] == f"sentinel-{i}"
    for name in ("worker", "gpu-worker", "flower", "api", "manager"):
        env = services[name]["environment"]
        assert _sentinel_url_user(env["CRYPTO_ML_BROKER_URL"]) == USER_OF[name], name
        assert env["CRYPTO_ML_SENTINEL_PASSWORD"] == TEST_SECRETS["CRYPTO_ML_SENTINEL_PASSWORD"]


def test_sentinel_overlay_logs_every_role_in_as_its_user(tmp_path: Path) -> None:
    docs = render_kustomize(SENTINEL_OVERLAY, tmp_path)
    runs = {run.origin: run for run in k8s_runs(docs)}
    assert runs["StatefulSet/redis/redis"].argv == acl.redis_command(*SENTINEL_DATA_ARGS)
    assert runs["StatefulSet/redis-replica/redis"].argv == acl.redis_command(
        *SENTINEL_DATA_ARGS, "--replicaof", "redis-0.redis-nodes", "6379")
    sentinel = runs["StatefulSet/redis-sentinel/sentinel"]
    assert sentinel.argv == sentinel_command("/data/sentinel.conf")
    assert sentinel.env["SENTINEL_MASTER_HOST"] == "redis-0.redis-nodes"
    config = next(d for d in docs if d["kind"] == "ConfigMap"
                  and d["metadata"]["name"].startswith("redis-acl"))
    assert config["data"] == {"redis-users.acl": acl.template(acl.SENTINEL_ROLES)}
    seen = set()
    for run in runs.values():
        url = run.env.get("CRYPTO_ML_BROKER_URL")
        if url is None or ":probe:" in run.origin:
            continue
        seen.add(user := _sentinel_url_user(url))
        assert user == USER_OF[run.origin.split("/")[1]], run.origin
        assert run.env["CRYPTO_ML_SENTINEL_PASSWORD"] == \
            TEST_SECRETS["CRYPTO_ML_SENTINEL_PASSWORD"]
    assert seen == {"worker", "manager", "flower"}
    pods = workloads(docs)
    for client in ("worker", "flower", "forecast"):
        for node in ("redis", "redis-replica"):
            assert allowed(docs, pods[client], pods[node], 6379), (client, node)
        assert allowed(docs, pods[client], pods["redis-sentinel"], 26379), client
    assert allowed(docs, API, pods["redis-sentinel"], 26379)
    assert allowed(docs, pods["redis-sentinel"], pods["redis-sentinel"], 26379)
    for node in ("redis", "redis-replica"):
        assert allowed(docs, pods["redis-sentinel"], pods[node], 6379)
    assert allowed(docs, pods["redis-replica"], pods["redis"], 6379)
    assert allowed(docs, pods["redis"], pods["redis-replica"], 6379)  # after a failover
    for outsider in (STRANGER, ELSEWHERE, INGRESS):
        assert not allowed(docs, outsider, pods["redis-sentinel"], 26379), outsider
        assert not allowed(docs, outsider, pods["redis-replica"], 6379), outsider
