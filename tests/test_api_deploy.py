"""The API's deployment files: a compose service on port 8000 with its keys from .env, and a
Kubernetes Deployment + Service + HPA with readiness on /healthz (rendered, not run; the
container tier runs them)."""

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
