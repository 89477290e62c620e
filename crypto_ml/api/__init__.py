"""The HTTP API: forecasts on the cluster for applications (``python -m crypto_ml.api``).

* :mod:`crypto_ml.api.app`: the FastAPI app (routes, API keys, body cap, metrics);
* :mod:`crypto_ml.api.schemas`: request and response bodies;
* :mod:`crypto_ml.api.service`: body checks and where runs go (cluster or in-process);
* :mod:`crypto_ml.api.metrics`: Prometheus metrics;
* :mod:`crypto_ml.api.__main__`: the command (embedded cluster when no broker is set).

Dispatch goes through :mod:`crypto_ml.runs` (submit now, read later) over the same
tasks and queues as ``send-tasks``; nothing here knows model internals.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from crypto_ml.api.app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from crypto_ml.api.app import create_app

        return create_app
    raise AttributeError(f"module 'crypto_ml.api' has no attribute {name!r}")
