"""Kubernetes as far as one Docker host allows: render k8s/ and the KEDA overlay with
``kubectl kustomize``, then run each workload's container as the rendered manifest says
(image, command + args, env from the ConfigMap and Secret, workingDir, runAsUser/Group,
readOnlyRootFilesystem with its emptyDir /tmp, dropped capabilities, no privilege
escalation, CPU limit) on one network where a Redis container answers as ``redis``, the
Service name the manifests use.

Not Kubernetes itself: no kubelet, scheduler or Services. Probes run as the kubelet runs
them: exec probes with ``docker exec`` in the running container, httpGet probes as an HTTP
GET from outside to the container's address and port. Where the pinned Redis image cannot
be pulled, the Debian stand-in runs the StatefulSet's command instead.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from deploy_support import (
    OVERLAYS,
    SENTINEL_OVERLAY,
    ContainerRun,
    k8s_runs,
    pod_spec,
    render_kustomize,
)

from crypto_ml.core import acl
from crypto_ml.data_loader import CryptoLoader

from . import docker_support as ds


def container_spec(docs: list[dict[str, Any]], kind: str, name: str
                   ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(pod spec, first container) of one rendered workload."""
    [doc] = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    spec = pod_spec(doc)
    assert spec is not None
    return spec, spec["containers"][0]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    secrets_env = {**{r.password_variable: secrets.token_hex(16) for r in acl.ROLES.values()},
                   "FLOWER_BASIC_AUTH": f"admin:{secrets.token_hex(8)}"}
    work = tmp_path_factory.mktemp("kustomize")
    return {name: render_kustomize(path, work, secrets_env) for name, path in OVERLAYS.items()}


class Pods:
    """Containers started from rendered manifests on one Docker network."""

    def __init__(self, docs: list[dict[str, Any]], bases: ds.BaseImages) -> None:
        self.docs, self.bases = docs, bases
        self.network = f"crypto-ml-k8s-{secrets.token_hex(4)}"
        self.started: list[str] = []
        self.runs = {run.origin: run for run in k8s_runs(docs)}

    def docker_args(self, kind: str, name: str, volumes: dict[str, str] | None = None,
                    ordinal: int | None = None) -> tuple[list[str], ContainerRun, dict[str, Any]]:
        """``docker run`` arguments of the workload's first container; ``ordinal``: the
        StatefulSet pod it plays (host name ``NAME-N``, DNS ``NAME-N.SERVICE`` as well)."""
        spec, container = container_spec(self.docs, kind, name)
        run = self.runs[f"{kind}/{name}/{container['name']}"]
        pod_sc, sc = spec.get("securityContext", {}), container.get("securityContext", {})
        user = sc.get("runAsUser", pod_sc.get("runAsUser"))
        group = sc.get("runAsGroup", pod_sc.get("runAsGroup"))
        image = container["image"]
        if image.startswith("redis:") and self.bases.standin:
            image = self.bases.redis
        args = ["--network", self.network, "--network-alias", name]
        if ordinal is not None:
            [doc] = [d for d in self.docs if d["kind"] == kind and d["metadata"]["name"] == name]
            pod = f"{name}-{ordinal}"
            args += ["--hostname", pod, "--network-alias", f"{pod}.{doc['spec']['serviceName']}"]
        if user is not None:
            args += ["--user", f"{user}:{group}" if group is not None else str(user)]
        if container.get("workingDir"):
            args += ["--workdir", container["workingDir"]]
        if sc.get("readOnlyRootFilesystem"):
            args.append("--read-only")
        if sc.get("allowPrivilegeEscalation") is False:
            args += ["--security-opt", "no-new-privileges"]
        for cap in sc.get("capabilities", {}).get("drop", []):
            args += ["--cap-drop", cap]
        limits = container.get("resources", {}).get("limits", {})
        if "cpu" in limits:
            cpu = str(limits["cpu"])
            args += ["--cpus", str(int(cpu[:-1]) / 1000) if cpu.endswith("m") else cpu]
        if "memory" in limits:
            memory = str(limits["memory"])
            args += ["--memory", memory.replace("Gi", "g").replace("Mi", "m")]
        for key, value in run.env.items():
            args += ["-e", f"{key}={value}"]
        pod_volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for mount in container.get("volumeMounts", []):
            volume = pod_volumes.get(mount["name"], {})
            if "emptyDir" in volume:
                args += ["--tmpfs", f"{mount['mountPath']}:uid={user or 0},gid={group or 0}"]
            elif "configMap" in volume:  # its files, read-only, as the kubelet mounts them
                args += ["-v", f"{self.config_map(volume['configMap']['name'])}:"
                         f"{mount['mountPath']}:ro"]
            elif volumes and mount["name"] in volumes:
                mode = ":ro" if mount.get("readOnly") else ""
                args += ["-v", f"{volumes[mount['name']]}:{mount['mountPath']}{mode}"]
            else:  # a claim template: an anonymous volume
                args += ["-v", mount["mountPath"]]
        command = run.argv
        args += ["--entrypoint", command[0], image, *command[1:]]
        return args, run, container

    def config_map(self, name: str) -> str:
        """A host folder holding the ConfigMap's keys as files (world-readable, as mounted)."""
        [doc] = [d for d in self.docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == name]
        folder = Path(tempfile.mkdtemp(prefix=f"{self.network}-{name}-"))
        folder.chmod(0o755)
        for key, value in doc["data"].items():
            (folder / key).write_text(value)
            (folder / key).chmod(0o644)
        return str(folder)

    def start(self, kind: str, name: str, volumes: dict[str, str] | None = None,
              ordinal: int | None = None) -> tuple[str, ContainerRun, dict[str, Any]]:
        args, run, container = self.docker_args(kind, name, volumes, ordinal)
        cname = f"{self.network}-{name}" + ("" if ordinal is None else f"-{ordinal}")
        self.started.append(cname)
        ds.docker("run", "-d", "--name", cname, *args, timeout=120)
        return cname, run, container

    def run_to_completion(self, kind: str, name: str, volumes: dict[str, str],
                          timeout: float) -> tuple[int, str]:
        args, _run, _container = self.docker_args(kind, name, volumes)
        cname = f"{self.network}-{name}"
        self.started.append(cname)
        ds.docker("run", "-d", "--name", cname, *args, timeout=120)
        code = int(ds.docker("wait", cname, timeout=timeout).stdout.strip())
        return code, ds.logs(cname)

    def exec_probe(self, container: str, origin: str, probe: str) -> int:
        run = self.runs[f"{origin}:probe:{probe}"]
        return ds.docker("exec", container, *run.argv, check=False, timeout=120).returncode

    def http_probe(self, container: str, spec: dict[str, Any], probe: str) -> int:
        get = spec[probe]["httpGet"]
        ports = {p["name"]: p["containerPort"] for p in spec.get("ports", [])}
        port = ports.get(get["port"], get["port"])
        ip = ds.inspect(container)["NetworkSettings"]["Networks"][self.network]["IPAddress"]
        try:
            with urllib.request.urlopen(f"http://{ip}:{port}{get['path']}", timeout=5) as r:
                return int(r.status)
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return 0

    def url(self, container: str, port: int, path: str) -> str:
        ip = ds.inspect(container)["NetworkSettings"]["Networks"][self.network]["IPAddress"]
        return f"http://{ip}:{port}{path}"


@pytest.fixture(scope="module")
def pods(rendered: dict[str, list[dict[str, Any]]], cpu_image: ds.Build,
         bases: ds.BaseImages) -> Iterator[Pods]:
    running = Pods(rendered["keda"], bases)  # the KEDA overlay: the base plus queue-depth
    ds.docker("network", "create", running.network)
    try:
        redis, _run, _ = running.start("StatefulSet", "redis")
        ds.wait_for(lambda: running.exec_probe(redis, "StatefulSet/redis/redis",
                                               "readinessProbe") == 0, 120, "redis ready")
        yield running
    finally:
        ds.remove(*reversed(running.started))
        ds.docker("network", "rm", running.network, check=False)


def test_rendered_images_are_the_built_ones(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for docs in rendered.values():
        for kind, name in (("Deployment", "worker"), ("Job", "forecast"),
                           ("Deployment", "flower")):
            assert container_spec(docs, kind, name)[1]["image"] == ds.CPU_IMAGE


def test_redis_liveness_probe_passes(pods: Pods) -> None:
    [redis] = [c for c in pods.started if c.endswith("-redis")]
    assert pods.exec_probe(redis, "StatefulSet/redis/redis", "livenessProbe") == 0
    assert ds.docker("exec", "-e", "REDISCLI_AUTH=wrong", redis, "redis-cli", "-e", "ping",
                     check=False).returncode != 0


def test_worker_probes_pass_and_manager_job_completes(pods: Pods, data_dir: Path) -> None:
    worker, _run, spec = pods.start("Deployment", "worker")
    origin = "Deployment/worker/worker"
    ds.wait_for(lambda: " ready." in ds.logs(worker), 240, "the worker ready",
                died=lambda: None if ds.health(worker).endswith("running")
                else f"worker {ds.health(worker)}: {ds.logs(worker)[-1500:]}")
    probes = [p for p in ("livenessProbe", "readinessProbe") if "exec" in spec.get(p, {})]
    assert probes, "the worker has an exec probe"
    for probe in probes:
        assert pods.exec_probe(worker, origin, probe) == 0, probe
    code, log = pods.run_to_completion("Job", "forecast", {"data": str(data_dir)}, timeout=900)
    assert code == 0, log[-3000:]
    forecasts = [line for line in log.splitlines() if re.fullmatch(r"\S+ \S+ \[\[.*\]\]", line)]
    coins = CryptoLoader(data_dir).get_crypto_names()
    ds.record("k8s", {"job_forecast_exit_code": code, "job_forecasts": len(forecasts)})
    assert sorted(line.split()[0] for line in forecasts) == coins


def test_queue_depth_exporter_serves_its_metrics(pods: Pods) -> None:
    exporter, _run, spec = pods.start("Deployment", "queue-depth")
    ds.wait_for(lambda: pods.http_probe(exporter, spec, "readinessProbe") == 200, 120,
                "the exporter's readiness probe",
                died=lambda: None if ds.health(exporter).endswith("running")
                else ds.logs(exporter)[-1500:])
    assert pods.http_probe(exporter, spec, "livenessProbe") == 200
    with urllib.request.urlopen(pods.url(exporter, 9808, "/"), timeout=10) as response:
        body = json.loads(response.read())
    for queue in ("cpu", "gpu"):
        assert isinstance(body[queue]["total"], int) and body[queue]["total"] >= 0


def test_flower_probes_pass(pods: Pods) -> None:
    flower, run, spec = pods.start("Deployment", "flower")
    for probe in ("readinessProbe", "livenessProbe"):
        ds.wait_for(lambda p=probe: pods.http_probe(flower, spec, p) == 200, 120,
                    f"Flower's {probe}",
                    died=lambda: None if ds.health(flower).endswith("running")
                    else ds.logs(flower)[-1500:])
    auth = run.env["CRYPTO_ML_FLOWER_BASIC_AUTH"]
    request = urllib.request.Request(pods.url(flower, 5555, "/"))
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 401
    request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


def sentinel_cli(container: str, *args: str) -> str:
    """redis-cli against the Sentinel in ``container`` (its REDISCLI_AUTH: their password)."""
    return ds.docker("exec", container, "redis-cli", "-p", "26379", "-e", *args,
                     check=False).stdout


def replica_linked(sentinel: str) -> bool:
    """Whether the Sentinel knows one replica, and that replica's link to the master is up."""
    lines = sentinel_cli(sentinel, "sentinel", "replicas", "mymaster").split()
    fields = dict(zip(lines[::2], lines[1::2], strict=False))
    return fields.get("flags") == "slave" and fields.get("master-link-status") == "ok"


def test_sentinel_overlay_pods_find_their_master_replica_and_each_other(
        tmp_path: Path, bases: ds.BaseImages) -> None:
    """k8s/overlays/sentinel's data nodes and Sentinels, each started with its manifest's own
    command and env as the pod it is (host name, StatefulSet DNS name): the Sentinels agree on
    the master by its DNS name, see the replica and each other, and every connection on the
    master is its ACL user's."""
    running = Pods(render_kustomize(SENTINEL_OVERLAY, tmp_path), bases)
    ds.docker("network", "create", running.network)
    try:
        master, _, _ = running.start("StatefulSet", "redis", ordinal=0)
        ds.wait_for(lambda: running.exec_probe(master, "StatefulSet/redis/redis",
                                               "readinessProbe") == 0, 120, "master ready")
        running.start("StatefulSet", "redis-replica", ordinal=0)
        sentinels = [running.start("StatefulSet", "redis-sentinel", ordinal=i)[0]
                     for i in range(3)]
        for sentinel in sentinels:
            ds.wait_for(lambda s=sentinel: "OK 3 usable" in sentinel_cli(
                s, "sentinel", "ckquorum", "mymaster"), 120, f"{sentinel} sees a quorum")
            assert sentinel_cli(sentinel, "sentinel", "get-master-addr-by-name",
                                "mymaster").split()[0] == "redis-0.redis-nodes"
            ds.wait_for(lambda s=sentinel: replica_linked(s), 60, f"{sentinel} sees the replica")
        clients = ds.docker("exec", master, "redis-cli", "-e", "client", "list").stdout
        users = {f.split("=", 1)[1] for line in clients.splitlines()
                 for f in line.split() if f.startswith("user=")}
        assert {"replication", "sentinel"} <= users <= {"replication", "sentinel", "default"}
    finally:
        ds.remove(*reversed(running.started))
        ds.docker("network", "rm", running.network, check=False)
