"""Redis ACL users per role (crypto_ml/core/acl.py) on a real Redis with real processes: a full run
works under them with no refusal, each role is refused what it does not need, and a wrong
password stops a process at once with a message that names the user, not the password.

Each test runs on the embedded Redis 6.2 (the rules without selectors) and, where one is found
(``CRYPTO_ML_TEST_REDIS7``, or a ``redis-server`` 7 on PATH: .ci/run installs Debian's), on a
Redis 7 with the deployments' rules (selectors: each command only on its own keys)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from acl_discovery import acl_log, full_run, lacking, watched_cluster
from conftest import ROOT, run_cli
from deploy_support import redis7_server
from kombu.exceptions import OperationalError

from crypto_ml.core import acl
from crypto_ml.core.settings import Settings
from crypto_ml.dispatch.cluster import LocalCluster, redis_version
from crypto_ml.ops.processes import free_port, spawn, terminate, wait_until
from crypto_ml.worker.app import create_app
from crypto_ml.worker.requests import TASK_NAME

pytestmark = pytest.mark.integration
WRONG = "not-the-password-0123"
REDIS7 = redis7_server()
SERVERS = [pytest.param(None, id="redis6.2"),
           pytest.param(REDIS7, id="redis7", marks=pytest.mark.skipif(
               REDIS7 is None, reason="no redis-server 7 or later (CRYPTO_ML_TEST_REDIS7, or "
               "Debian's redis-server on PATH)"))]


@pytest.fixture(scope="module", params=SERVERS)
def server(request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    """A real redis-server with the shipped users (no workers: the tests play each role)."""
    cluster = LocalCluster(workers=1, redis_server=request.param)
    cluster.start_redis()
    yield cluster
    cluster.stop()


def is_redis6(cluster: LocalCluster) -> bool:
    return cluster.redis_server is None or redis_version(cluster.redis_server) < (7,)


def as_role(server: LocalCluster, role: str) -> redis.Redis:
    return redis.Redis.from_url(server.url_for(role), socket_connect_timeout=2)


@pytest.mark.slow
@pytest.mark.parametrize("redis_server", SERVERS)
def test_a_full_run_works_under_the_acls_with_no_refusal(price_data: Path, tmp_path: Path,
                                                         redis_server: str | None) -> None:
    with watched_cluster(acl.ROLES, tmp_path, redis_server=redis_server) as (cluster, recorder):
        done = full_run(cluster, price_data, tmp_path)
        with cluster.client() as admin:
            refusals = acl_log(admin)
    for what in ("send-tasks batched", "send-tasks single", "send-tasks table", "backtest"):
        run = done[what]
        assert isinstance(run, subprocess.CompletedProcess)
        assert run.returncode == 0, f"{what}: {run.stderr[-2000:]}"
    timed_out = done["send-tasks timeout"]
    assert isinstance(timed_out, subprocess.CompletedProcess)
    assert timed_out.returncode == 1  # gave up, revoked the rest (or they expired)
    assert "no result within" in timed_out.stderr or "REVOKED" in timed_out.stderr
    assert done["flower"] == [200] * 8 and done["exporter"] == 200
    # the API as the manager's user: waited, saved and polled (crypto_ml:run:*), ping, gauge
    assert done["api wait"] == 200 and done["api saved"] == (202, "done")
    assert done["api health"] == 200 and done["api metrics"] == 200
    health = done["worker health"]
    assert isinstance(health, subprocess.CompletedProcess) and health.returncode == 0
    assert refusals == [], refusals
    # connections too short-lived to map to a user (credential checks, the result waiter's
    # subscriptions, a stopping worker's last clean-up): each command one some role may run
    granted = {c.split("|")[0] for role in acl.ROLES.values() for c in role.commands} | {"auth"}
    command = re.compile(r'\] "([A-Za-z]+)"')
    odd = [line for line in recorder.unknown
           if (m := command.search(line)) is None or m.group(1).lower() not in granted]
    assert odd == [], odd[:5]
    for name in acl.SERVICE_ROLES:
        assert recorder.usage[name].count > 0, f"{name} did nothing"
        assert not any(lacking(acl.ROLES[name], recorder.usage[name]).values())


@pytest.mark.parametrize("user", list(acl.ROLES))
def test_no_user_may_flush_reconfigure_or_shut_down(server: LocalCluster, user: str) -> None:
    client = server.client() if user == acl.ADMIN else as_role(server, user)
    with client:
        for command in (("FLUSHALL",), ("FLUSHDB",), ("CONFIG", "GET", "maxmemory"),
                        ("CONFIG", "SET", "appendonly", "no"), ("DEBUG", "SLEEP", "0"),
                        ("SHUTDOWN", "NOSAVE"), ("MODULE", "LIST"), ("REPLICAOF", "NO", "ONE")):
            with pytest.raises(redis.exceptions.ResponseError) as refused:
                client.execute_command(*command)
            # Redis 7 refuses DEBUG and MODULE before the ACL (enable-debug-command and
            # enable-module-command are off by default)
            assert isinstance(refused.value, redis.exceptions.NoPermissionError) or (
                command[0] in ("DEBUG", "MODULE") and "not allowed" in str(refused.value)), \
                (command, refused.value)
        if user not in (acl.ADMIN, acl.BREAK_GLASS):  # they keep KEYS, SCAN and MONITOR
            for command in (("KEYS", "*"), ("ACL", "LIST"), ("ACL", "SETUSER", user, "+@all"),
                            ("SCAN", "0"), ("EVAL", "return 1", "0")):
                with pytest.raises(redis.exceptions.NoPermissionError):
                    client.execute_command(*command)
        assert client.ping()
    assert server.redis is not None and server.redis.poll() is None


def test_the_operator_reads_users_but_only_breakglass_changes_them(server: LocalCluster) -> None:
    with server.client() as operator:  # REDIS_PASSWORD: the health checks' user
        assert operator.execute_command("ACL", "WHOAMI") in (b"default", "default")
        assert operator.execute_command("ACL", "LIST") and operator.ping()
        operator.execute_command("ACL", "LOG", "RESET")
        for command in (("ACL", "SETUSER", "default", "+flushall"),  # undo its own denial
                        ("ACL", "SETUSER", "worker", ">another-password"),
                        ("ACL", "DELUSER", "flower"), ("ACL", "LOAD"), ("ACL", "SAVE")):
            with pytest.raises(redis.exceptions.NoPermissionError):
                operator.execute_command(*command)
        with pytest.raises(redis.exceptions.NoPermissionError):
            operator.execute_command("FLUSHALL")  # still denied
    with as_role(server, acl.BREAK_GLASS) as breakglass:  # rotation: a second password
        assert breakglass.execute_command("ACL", "SETUSER", "exporter", ">rotated-password")
    with redis.Redis(port=server.port, username="exporter", password="rotated-password") as new:
        assert new.llen("cpu") >= 0  # the new password works beside the old one


def test_the_exporter_reads_queue_lengths_and_cannot_publish_a_task(server: LocalCluster) -> None:
    with as_role(server, "exporter") as exporter:
        assert exporter.llen("cpu") >= 0 and exporter.llen("gpu\x06\x163") >= 0
        list(exporter.hscan_iter("unacked"))
        for command in (("LPUSH", "cpu", "{}"), ("RPUSH", "gpu", "{}"), ("DEL", "cpu"),
                        ("GET", "celery-task-meta-x"), ("PUBLISH", "/0.celery.pidbox", "x"),
                        ("HSET", "unacked", "t", "x"), ("SET", "crypto_ml:x", "1")):
            with pytest.raises(redis.exceptions.NoPermissionError):
                exporter.execute_command(*command)
    app = create_app(Settings().with_broker(server.url_for("exporter")))
    kwargs = {"coin": "x", "model": "linear", "prices": [1.0, 2.0, 3.0], "horizon": 1}
    with pytest.raises(OperationalError, match="no permissions"):
        app.send_task(TASK_NAME, kwargs=kwargs, retry=False)
    with server.client() as admin:
        assert admin.llen("cpu") == 0  # nothing was queued


def test_flower_cannot_read_or_delete_results_nor_touch_our_keys(server: LocalCluster) -> None:
    with server.client() as admin:
        admin.set("celery-task-meta-abc", "result")
        admin.set("crypto_ml:deliveries:abc", "1")
    with as_role(server, "flower") as flower:
        assert flower.llen("cpu") >= 0  # queue lengths on its broker page
        for command in (("DEL", "celery-task-meta-abc"), ("GET", "celery-task-meta-abc"),
                        ("MGET", "celery-task-meta-abc"), ("DEL", "crypto_ml:deliveries:abc"),
                        ("SET", "crypto_ml:x", "1"), ("HSET", "unacked", "t", "x"),
                        ("SUBSCRIBE", "celery-task-meta-abc"), ("PUBLISH", "other", "x")):
            with pytest.raises(redis.exceptions.NoPermissionError):
                flower.execute_command(*command)
    with server.client() as admin:
        assert admin.get("celery-task-meta-abc") == b"result"


def test_the_manager_cannot_write_results_or_act_as_a_worker(server: LocalCluster) -> None:
    with server.client() as admin:
        admin.set("celery-task-meta-abc", "result")
    with as_role(server, "manager") as manager:
        assert manager.get("celery-task-meta-abc") == b"result"  # reads results
        for command in (("SETEX", "celery-task-meta-abc", "10", "forged"),
                        ("HSET", "unacked", "t", "x"), ("INCRBY", "crypto_ml:deliveries:a", "1"),
                        ("LLEN", "w1@host.celery.pidbox"), ("SET", "other", "x")):
            with pytest.raises(redis.exceptions.NoPermissionError):
                manager.execute_command(*command)
    # and a worker cannot read keys outside its patterns
    with as_role(server, "worker") as worker, pytest.raises(redis.exceptions.NoPermissionError):
        worker.execute_command("GET", "other")


#: Operations an independent review found allowed (issue 25), and a few alike, each tried over
#: a raw connection as that user: Redis 7 refuses them all. The embedded 6.2 has no selectors,
#: so a role may run each of its commands on each of its keys: it still allows exactly those in
#: WIDER_ON_6 (docs/least-privilege.md) and refuses the rest.
OVERGRANTS = (
    ("flower", ("LPUSH", "cpu", "{}")),  # task injection with the dashboard's credentials
    ("flower", ("RPUSH", "gpu", "{}")),
    ("flower", ("RPUSH", "cpu\x06\x163", "{}")),
    ("flower", ("BRPOP", "cpu", "0.01")),
    ("flower", ("DEL", "gpu")),
    ("flower", ("SET", "cpu", "x")),
    ("flower", ("HDEL", "unacked", "t")),
    ("flower", ("ZADD", "unacked_index", "1", "t")),
    ("flower", ("DEL", "_kombu.binding.cpu")),
    ("flower", ("SADD", "_kombu.binding.gpu", "x")),
    ("manager", ("SET", "celery-task-meta-abc", "forged")),  # a forged result
    ("manager", ("GET", "crypto_ml:model:abc")),  # the model store is the workers'
    ("manager", ("SET", "crypto_ml:model:abc", "poison")),
    ("manager", ("SET", "crypto_ml:deliveries:abc", "0")),  # resetting the delivery limit
    ("manager", ("SET", "crypto_ml:worker:w1@host/1/a:alive", "1")),  # a fake live worker
    ("manager", ("BRPOP", "cpu", "0.01")),  # taking a task as a worker would
    ("manager", ("RPUSH", "cpu", "{}")),
    ("manager", ("DEL", "cpu")),
    ("manager", ("DEL", "unacked")),
    ("manager", ("HDEL", "unacked", "t")),
    ("manager", ("ZADD", "unacked_index", "1", "t")),
    ("manager", ("LPUSH", "x.reply.celery.pidbox", "forged reply")),
    ("manager", ("HSET", "crypto_ml:slots", "w1@host/1/a", "64 0")),  # inflating its own limit
    ("manager", ("DEL", "crypto_ml:slots")),
    ("manager", ("SET", "crypto_ml:slots", "x")),
)
WIDER_ON_6 = {("flower", "BRPOP", "cpu"), ("flower", "DEL", "gpu"),
              ("manager", "SET", "celery-task-meta-abc"),
              ("manager", "SET", "crypto_ml:deliveries:abc"), ("manager", "BRPOP", "cpu"),
              ("manager", "DEL", "cpu"), ("manager", "DEL", "unacked"),
              ("manager", "LPUSH", "x.reply.celery.pidbox"), ("manager", "DEL", "crypto_ml:slots"),
              ("manager", "SET", "crypto_ml:slots")}


def test_flower_and_the_manager_are_refused_what_a_review_found_them_allowed(
        server: LocalCluster) -> None:
    allowed = set()
    for user, command in OVERGRANTS:
        with as_role(server, user) as client:
            try:
                client.execute_command(*command)
            except redis.exceptions.NoPermissionError:
                continue
            allowed.add((user, *command[:2]))
    assert allowed == (WIDER_ON_6 if is_redis6(server) else set())
    with server.client() as admin:  # no task was queued, nothing of the workers' written
        assert admin.llen("cpu") == admin.llen("gpu") == admin.hlen("unacked") == 0
        assert not admin.exists("crypto_ml:model:abc", "crypto_ml:worker:w1@host/1/a:alive")
        admin.delete("celery-task-meta-abc", "crypto_ml:deliveries:abc",
                     "x.reply.celery.pidbox", "crypto_ml:slots")


@pytest.mark.slow
def test_the_plain_celery_worker_command_runs_as_the_worker_user(server: LocalCluster,
                                                                  tmp_path: Path) -> None:
    """``celery -A crypto_ml worker`` as the README gives it: gossip (celeryev.* queues,
    /0.celeryev/worker.*) and mingle (replies) included; a second worker syncs with the first."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CRYPTO_ML_")},
           "CRYPTO_ML_BROKER_URL": server.url_for("worker"), "TMPDIR": str(tmp_path)}
    with server.client() as admin:
        admin.execute_command("ACL", "LOG", "RESET")
    procs = []
    try:
        for i in (1, 2):
            log = tmp_path / f"worker{i}.log"
            procs.append(spawn([sys.executable, "-m", "celery", "-A", "crypto_ml", "worker",
                                "--hostname", f"plain{i}-{os.getpid()}@%h", "--concurrency", "1",
                                "--loglevel", "INFO"], log, env=env, cwd=ROOT))
            proc = procs[-1]
            wait_until(lambda log=log: " ready." in log.read_text(errors="replace"), 120,
                       f"plain worker {i} ready",
                       lambda proc=proc, log=log: None if proc.poll() is None
                       else log.read_text(errors="replace")[-2000:])
        second = (tmp_path / "worker2.log").read_text(errors="replace")
        assert "mingle: sync with 1 nodes" in second, second[-2000:]
    finally:
        for proc in procs:
            terminate(proc)
    for i in (1, 2):
        text = (tmp_path / f"worker{i}.log").read_text(errors="replace")
        assert "NoPermissionError" not in text and "NOPERM" not in text, text[-2000:]
    with server.client() as admin:
        assert acl_log(admin) == []


def _wrong(url: str, password: str) -> str:
    assert password in url
    return url.replace(password, WRONG)


def test_a_wrong_password_stops_each_process_at_once_without_printing_it(
        server: LocalCluster, price_data: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTO_ML_")}
    runs: dict[str, tuple[float, subprocess.CompletedProcess[str]]] = {}
    started = time.monotonic()
    manager_url = _wrong(server.url_for("manager"), server.passwords["manager"])
    cli = run_cli("send-tasks", "--coins", "bitcoin", "--broker", manager_url,
                  data_dir=price_data, timeout=60)
    runs["manager"] = (time.monotonic() - started, cli)
    commands = {  # name: (role, command)
        "worker": ("worker", [sys.executable, "-m", "celery", "-A", "crypto_ml", "worker",
                              "--concurrency", "1", "--without-mingle", "--without-gossip"]),
        "exporter": ("exporter", [sys.executable, "-m", "crypto_ml", "queue-depth", "--port",
                                  str(free_port())]),
        "flower": ("flower", [sys.executable, "-m", "crypto_ml", "flower"]),
        "manager job": ("manager", [sys.executable, "manager/job.py", "--broker-wait", "300",
                                    "send-tasks", "--coins", "bitcoin"]),  # no 300 s wait
    }
    for name, (role, argv) in commands.items():
        url = _wrong(server.url_for(role), server.passwords[role])
        started = time.monotonic()
        out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=90,
                             env={**env, "CRYPTO_ML_BROKER_URL": url, "TMPDIR": str(tmp_path),
                                  "CRYPTO_ML_DATA_DIR": str(price_data),
                                  "CRYPTO_ML_FLOWER_PORT": str(free_port())})
        runs[name] = (time.monotonic() - started, out)
    for name, (seconds, out) in runs.items():
        role = name.split()[0]
        text = out.stdout + out.stderr
        assert out.returncode == 2, f"{name}: {text[-1500:]}"
        assert f"refused user '{role}'" in text, f"{name}: {text[-1500:]}"
        assert ROLES_VARIABLE[role] in text
        assert WRONG not in text and server.passwords[role] not in text
        assert seconds < 30, f"{name} took {seconds:.0f} s to give up"
        assert "Traceback" not in out.stderr


def test_another_users_url_stops_a_worker_and_the_exporter_naming_the_one_to_give(
        server: LocalCluster, price_data: Path, tmp_path: Path) -> None:
    """The manager's URL (which `cluster up` says to export) given to a worker, and Flower's to
    queue-depth: one line naming the user to use, exit 2, before any work (a worker failed on
    its first key with 87 lines of traceback; queue-depth answered every scrape 503)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTO_ML_")}
    cases = {"worker": ("manager", [sys.executable, "-m", "celery", "-A", "crypto_ml", "worker",
                                    "--concurrency", "1", "--without-mingle", "--without-gossip"]),
             "exporter": ("flower", [sys.executable, "-m", "crypto_ml", "queue-depth", "--port",
                                     str(free_port())])}
    for wanted, (given, argv) in cases.items():
        out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=90,
                             env={**env, "CRYPTO_ML_BROKER_URL": server.url_for(given),
                                  "TMPDIR": str(tmp_path), "CRYPTO_ML_DATA_DIR": str(price_data)})
        text = out.stdout + out.stderr
        assert out.returncode == 2, f"{wanted}: {text[-1500:]}"
        assert f"user {wanted}'s" in text and "Traceback" not in text, text[-1500:]
        assert server.passwords[given] not in text


ROLES_VARIABLE = {name: role.password_variable for name, role in acl.ROLES.items()}
