"""The API's deployment files: a compose service on port 8000 with its keys from .env, and a
Kubernetes Deployment + Service + HPA with readiness on /healthz, job outputs on a volume the
replicas share (rendered, not run; the container tier runs them)."""

from __future__ import annotations

from pathlib import Path

from deploy_support import K8S, TEST_SECRETS, load_compose, render_kustomize


def test_compose_runs_the_api_on_port_8000_with_keys_from_the_env() -> None:
    api = load_compose({**TEST_SECRETS, "CRYPTO_ML_API_KEYS": "k1,k2"})["services"]["api"]
    assert api["command"] == ["python", "-m", "crypto_ml.api", "--host", "0.0.0.0",
                              "--port", "8000"]
    assert api["ports"] == ["8000:8000"]
    assert api["environment"]["CRYPTO_ML_API_KEYS"] == "k1,k2"
    assert api["environment"]["CRYPTO_ML_BROKER_URL"].startswith("redis://manager:")
    assert api["healthcheck"]["test"][-1] == "http://127.0.0.1:8000/healthz"
    assert api["depends_on"]["redis"]["condition"] == "service_healthy"


def test_k8s_api_deployment_service_and_autoscaler(tmp_path: Path) -> None:
    docs = render_kustomize(K8S, tmp_path)
    api = {d["kind"]: d for d in docs if d["metadata"]["name"] == "api"}
    assert set(api) == {"Deployment", "Service", "HorizontalPodAutoscaler", "NetworkPolicy"}
    pod = api["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "crypto-ml:0.1.0"
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    env = {e["name"]: e for e in container["env"]}
    assert env["CRYPTO_ML_API_KEYS"]["valueFrom"]["secretKeyRef"]["name"].startswith(
        "crypto-ml-secrets-")  # the generated secret, its hashed name resolved
    assert api["Service"]["spec"]["ports"][0]["port"] == 8000
    target = api["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "api")
    assert all(d["metadata"]["namespace"] == "crypto-ml" for d in api.values())
    assert api["Deployment"]["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == "api"


def test_job_outputs_go_to_a_volume_every_replica_shares(tmp_path: Path) -> None:
    compose = load_compose(TEST_SECRETS)
    api = compose["services"]["api"]
    jobs = Path(api["environment"]["CRYPTO_ML_API_JOBS_DIR"])
    assert jobs.is_absolute()
    mounts = [m.split(":") for m in api["volumes"]]  # short syntax: SOURCE:TARGET[:ro]
    (mount,) = (m for m in mounts if jobs.is_relative_to(m[1]))
    assert mount[0] in compose["volumes"] and mount[2:] == []  # a named volume, writable
    docs = render_kustomize(K8S, tmp_path)
    pod = next(d for d in docs if d["kind"] == "Deployment"
               and d["metadata"]["name"] == "api")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    jobs = Path(env["CRYPTO_ML_API_JOBS_DIR"])
    mount = next(m for m in container["volumeMounts"] if jobs.is_relative_to(m["mountPath"]))
    assert not mount.get("readOnly") and container["securityContext"]["readOnlyRootFilesystem"]
    claim = next(v for v in pod["volumes"] if v["name"] == mount["name"])[
        "persistentVolumeClaim"]["claimName"]
    pvc = next(d for d in docs if d["kind"] == "PersistentVolumeClaim"
               and d["metadata"]["name"] == claim)
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]  # shared by the HPA's replicas
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]
