"""Flower, the Celery dashboard: how we start it, secure it, and what it shows of our tasks.

``crypto-ml flower`` runs ``celery -A crypto_ml flower`` with the
settings' port, address and basic auth (``CRYPTO_ML_FLOWER_*``); the local
cluster starts a :class:`FlowerProcess` with ``--flower``. Flower listening
anywhere but loopback without ``CRYPTO_ML_FLOWER_BASIC_AUTH`` is refused.
The password travels in the child's environment (``FLOWER_BASIC_AUTH``), never
on a command line that ``ps`` would show.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from crypto_ml.core.errors import ConfigError
from crypto_ml.core.settings import Settings
from crypto_ml.ops.processes import listen_problem, spawn, terminate, wait_until

LOOPBACK = ("127.0.0.1", "localhost", "::1")
READY_TIMEOUT = 60.0
#: The tasks page shows our readable kwargs (coin, model, horizon, n_points) and the worker.
TASKS_COLUMNS = "name,uuid,state,worker,kwargs,runtime,received,result"


def _label(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    prices = kwargs.get("prices")
    shown = {"coin": kwargs.get("coin"), "model": kwargs.get("model"),
             "horizon": kwargs.get("horizon"),
             "n_points": len(prices) if isinstance(prices, list) else None,
             "last_date": kwargs.get("last_date")}
    if kwargs.get("params"):
        shown["params"] = kwargs["params"]
    return shown


def send_options(kwargs: Mapping[str, Any], most: int = 8) -> dict[str, str]:
    """``argsrepr``/``kwargsrepr`` for ``send_task``: what events, Flower and logs show of a task.

    The real kwargs carry whole price lists; this shows coin, model, horizon and the
    number of points instead (a batch: its size and first ``most`` coin/model pairs).
    """
    items = kwargs.get("items")
    parts = kwargs.get("parts")
    if isinstance(parts, list):  # several callers' batches: shown as one
        items = [i for p in parts if isinstance(p, Mapping) for i in p.get("items") or []]
    if not isinstance(items, list):
        return {"argsrepr": "()", "kwargsrepr": repr(_label(kwargs))}
    pairs = [f"{i.get('coin')}/{i.get('model')}" for i in items if isinstance(i, Mapping)]
    more = f" +{len(pairs) - most} more" if len(pairs) > most else ""
    first = items[0] if items and isinstance(items[0], Mapping) else {}
    shown = {"batch": len(items), "forecasts": ", ".join(pairs[:most]) + more,
             "horizon": first.get("horizon")}
    return {"argsrepr": "()", "kwargsrepr": repr(shown)}


def flower_env(settings: Settings, base: Mapping[str, str]) -> dict[str, str]:
    """Environment for a Flower process: auth, columns, and the broker of ``settings``."""
    if settings.flower_address not in LOOPBACK and not settings.flower_basic_auth:
        raise ConfigError(
            f"refusing to expose Flower on {settings.flower_address} without authentication; "
            "set CRYPTO_ML_FLOWER_BASIC_AUTH=user:password (or listen on 127.0.0.1)")
    env = {k: v for k, v in base.items() if not k.startswith("FLOWER_")}
    env["FLOWER_TASKS_COLUMNS"] = TASKS_COLUMNS
    if settings.flower_basic_auth:
        env["FLOWER_BASIC_AUTH"] = settings.flower_basic_auth
    else:  # loopback only: let the local user's tools read the API without a password
        env["FLOWER_UNAUTHENTICATED_API"] = "true"
    if settings.broker_url:
        env["CRYPTO_ML_BROKER_URL"] = settings.broker_url
    return env


def check_listen(address: str, port: int) -> None:
    """ConfigError when Flower could not listen there (a port in use, an address this machine
    does not have): Flower itself would stop with a traceback."""
    if (why := listen_problem(address, port)) is not None:
        raise ConfigError(f"Flower cannot listen on {address}:{port} "
                          f"({why}); set CRYPTO_ML_FLOWER_PORT or "
                          "CRYPTO_ML_FLOWER_ADDRESS")


def flower_command(settings: Settings, extra: Sequence[str] = ()) -> list[str]:
    """``celery flower`` with ``extra`` options, then the port and address of the settings:
    given last, they win over any other way of setting them (tornado keeps the last)."""
    return [sys.executable, "-m", "celery", "-A", "crypto_ml", "flower", *extra,
            f"--port={settings.flower_port}", f"--address={settings.flower_address}"]


def _sees(url: str, workers: Sequence[str]) -> bool:
    """Flower answers and has had events from every worker (its unauthenticated /metrics)."""
    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=2) as reply:
            metrics = reply.read().decode()
    except (urllib.error.URLError, OSError):
        return False
    return all(f'flower_worker_online{{worker="{name}"}} 1.0' in metrics for name in workers)


class FlowerProcess:
    """One ``celery flower`` process for ``settings`` (its broker, port, address and auth)."""

    def __init__(self, settings: Settings, log_path: Path,
                 env: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self.log_path = log_path
        self.env = flower_env(settings, os.environ if env is None else env)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        host = self.settings.flower_address
        host = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
        return f"http://{host}:{self.settings.flower_port}"

    def died(self) -> str | None:
        """How Flower exited (its code and the last lines of its log), or None while it runs."""
        if self.proc is None or self.proc.poll() is None:
            return None
        tail = self.log_path.read_text(errors="replace").strip().splitlines()[-5:]
        return f"exited with code {self.proc.returncode}: " + " | ".join(tail)

    def start(self) -> FlowerProcess:
        self.proc = spawn(flower_command(self.settings), self.log_path, env=self.env)
        return self

    def wait_ready(self, workers: Sequence[str] = (), timeout: float = READY_TIMEOUT) -> None:
        """Until Flower answers and, so that no task event is missed, has heard from ``workers``."""
        wait_until(lambda: _sees(self.url, workers), timeout,
                   f"starting Flower on port {self.settings.flower_port}", self.died)

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc)
